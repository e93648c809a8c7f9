#!/usr/bin/env python3
"""Count the words of the files in the job's input tarball; write counts.json.

The launcher unpacks the input into the working directory and gives the path of the
archive itself in MODACLOUDS_BATCH_INPUT. The archive says which files came as input;
their words are read from it (and each file is also found, unpacked, in the working
directory). counts.json lands in MODACLOUDS_BATCH_OUTPUT, the `output` artifact.
"""

import collections
import json
import os
import sys
import tarfile
from pathlib import Path


def count_words(archive: str) -> tuple[dict[str, int], collections.Counter]:
    per_file: dict[str, int] = {}
    total: collections.Counter = collections.Counter()
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            if not member.isfile():
                continue
            name = os.path.normpath(member.name)
            words = tar.extractfile(member).read().decode("utf-8", "replace").split()
            per_file[name] = len(words)
            total.update(words)
            unpacked = "unpacked here" if Path(name).is_file() else "NOT in the working directory"
            print(f"  {name}: {len(words)} words ({unpacked})")
    return per_file, total


def main(argv: list[str]) -> int:
    print("arguments:", json.dumps(argv))
    archive = os.environ.get("MODACLOUDS_BATCH_INPUT")
    if archive:
        print(f"input archive: {archive}")
        per_file, total = count_words(archive)
    else:
        print("no input was given (submit with -F job-input=@texts.tar.gz): nothing to count", file=sys.stderr)
        per_file, total = {}, collections.Counter()
    result = {
        "arguments": argv,
        "files": per_file,
        "words": sum(total.values()),
        "counts": dict(total.most_common()),
    }
    out = Path(os.environ["MODACLOUDS_BATCH_OUTPUT"]) / "counts.json"
    out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(f"counted {result['words']} words in {len(per_file)} files -> {out.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
