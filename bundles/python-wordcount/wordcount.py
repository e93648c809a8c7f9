"""Count words in the files the job's input tarball brought (unpacked into the working dir)."""

import collections
import json
import os
import sys
from pathlib import Path

print("arguments:", sys.argv[1:])
print("input archive:", os.environ.get("MODACLOUDS_BATCH_INPUT", "(none)"))
ours = {"run.sh", "wordcount.py"}
counts = collections.Counter()
files = 0
for path in sorted(Path(".").rglob("*")):
    if path.is_file() and path.name not in ours:
        files += 1
        counts.update(path.read_text(errors="replace").split())
result = {"files": files, "words": sum(counts.values()), "counts": dict(counts.most_common())}
out = Path(os.environ["MODACLOUDS_BATCH_OUTPUT"]) / "counts.json"
out.write_text(json.dumps(result, indent=2, sort_keys=True))
print(f"counted {result['words']} words in {files} files -> {out.name}")
