"""Run a docs page's shell examples as printed, and check the status codes its comments promise.

A page's ```sh blocks form one session (variables carry over from block to block). Each
command's comment starts with the statuses its curl calls answer: `# 201 ...`, `# 200+`
for a loop that polls, `# 200* 410` for polls that end in a 410. The session runs with
`curl` wrapped to log every status, and `$TOKEN` set to the test client's token (the pages
send it, as their readers do).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from .gateway import REPO, Client

DOCS_HOST = "http://localhost:5000"
_BLOCK = re.compile(r"```sh\n(.*?)```", re.DOTALL)
_TOKEN = re.compile(r"^(\d{3})([+*]?)$")

WRAPPER = r"""
set -eu
curl() {
    command curl -sS -D "$CURL_HEADERS" "$@"
    awk '/^HTTP\//{code=$2} END{print code}' "$CURL_HEADERS" >> "$CURL_STATUSES"
}
"""


def session(page: str, section: str | None = None) -> str:
    """The page's sh blocks; with ``section`` (a heading's text), only those under that
    heading, up to the next heading of the same or a higher level."""
    text = (REPO / page).read_text(encoding="utf-8")
    if section is not None:
        text = _section(text, section)
        assert text, f"{page} has no heading {section!r}"
    return "\n".join(_BLOCK.findall(text))


def _section(text: str, title: str) -> str:
    """The lines under the heading ``title`` (lines in fenced blocks are never headings)."""
    kept: list[str] = []
    level = None
    fenced = False
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            fenced = not fenced
        heading = None if fenced else re.match(r"^(#+) (.*)$", line.rstrip("\n"))
        if heading and level is not None and len(heading.group(1)) <= level:
            break
        if level is not None:
            kept.append(line)
        elif heading and heading.group(2) == title:
            level = len(heading.group(1))
    return "".join(kept)


def expected_statuses(script: str) -> str:
    """A regex of the statuses, in order, that the comments promise."""
    parts = []
    for line in script.splitlines():
        code, sep, comment = line.partition("  # ")
        if not sep:
            continue
        for word in comment.split():
            match = _TOKEN.match(word)
            if not match:
                break
            status, repeat = match.groups()
            parts.append(f"(?:{status} ){repeat}" if repeat else f"{status} ")
    return "".join(parts)


def run_page(page: str, client: Client, cwd: Path, timeout: float = 300.0, section: str | None = None) -> str:
    """Run the page's session (or one section's) against the client's gateway; returns its output."""
    script = session(page, section)
    assert script.strip(), f"{page} has no sh examples"
    statuses = cwd / "statuses"
    statuses.write_text("")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "CURL_HEADERS": str(cwd / "headers"),
           "CURL_STATUSES": str(statuses), "TOKEN": client.http.headers.get("Authorization", "").removeprefix("Bearer ")}
    done = subprocess.run(["bash", "-c", WRAPPER + script.replace(DOCS_HOST, client.url)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{page}: the examples failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    seen = " ".join(statuses.read_text().split()) + " "
    wanted = expected_statuses(script)
    assert re.fullmatch(wanted, seen), f"{page}: statuses {seen!r}, the comments promise {wanted!r}\n{done.stdout}"
    return done.stdout
