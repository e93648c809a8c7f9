"""Which Debian mirror to build the root filesystem from: the one the host already uses.

A host that installs its own packages from some mirror (often a local proxy or snapshot
on machines without internet) can reach that mirror; a hard-coded host name might not
be reachable. Parsing is pure (text in, URL out) so it is unit-tested on sample files.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)

# Suite names of the Debian archive proper (codenames and aliases). A stanza carrying one
# of them, without a "-updates"/"-security"/"-backports" suffix, is the main archive.
DEBIAN_SUITES = frozenset(
    {
        "stable", "oldstable", "oldoldstable", "testing", "unstable", "sid", "experimental",
        "stretch", "buster", "bullseye", "bookworm", "trixie", "forky", "duke",
    }
)


def _is_main_debian_suite(suite: str, codename: str | None) -> bool:
    return suite == codename or suite in DEBIAN_SUITES


def mirrors_from_deb822(text: str, codename: str | None = None) -> list[str]:
    """URIs of enabled ``deb`` stanzas for a main Debian suite, in file order."""
    found: list[str] = []
    for stanza in _deb822_stanzas(text):
        types = stanza.get("types", "").split()
        suites = stanza.get("suites", "").split()
        if "deb" not in types or stanza.get("enabled", "yes").lower() == "no":
            continue
        if any(_is_main_debian_suite(s, codename) for s in suites):
            found.extend(stanza.get("uris", "").split())
    return found


def _deb822_stanzas(text: str) -> Iterable[dict[str, str]]:
    """Paragraphs of ``Field: value`` lines; continuation lines start with a blank."""
    stanza: dict[str, str] = {}
    last: str | None = None
    for raw in text.splitlines():
        line = raw.rstrip()
        if line.startswith("#"):
            continue
        if not line.strip():
            if stanza:
                yield stanza
            stanza, last = {}, None
            continue
        if line[0] in " \t" and last:
            stanza[last] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if sep:
            last = name.strip().lower()
            stanza[last] = value.strip()
    if stanza:
        yield stanza


def mirrors_from_one_line(text: str, codename: str | None = None) -> list[str]:
    """URIs of ``deb [options] URI suite component...`` lines for a main Debian suite."""
    found: list[str] = []
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):
            # Options may contain blanks: skip up to the word that closes the bracket.
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 2 and _is_main_debian_suite(words[1], codename):
            found.append(words[0])
    return found


def find_debian_mirror(sources: Iterable[tuple[str, str]], codename: str | None = None) -> str | None:
    """The first main-archive mirror in ``(file name, text)`` pairs, or None.

    ``.sources`` files are deb822, anything else the one-line format. URLs are returned
    without a trailing slash.
    """
    for name, text in sources:
        parse = mirrors_from_deb822 if name.endswith(".sources") else mirrors_from_one_line
        for uri in parse(text, codename):
            if uri.startswith(("http://", "https://", "file:/")):
                return uri.rstrip("/")
    return None


def host_apt_sources(root: Path = Path("/")) -> list[tuple[str, str]]:
    """The host's apt source files as ``(name, text)``: sources.list.d first, then sources.list.

    Files apt itself ignores (``*.disabled``, ``*.save``...) are left out.
    """
    etc = root / "etc" / "apt"
    paths = sorted((etc / "sources.list.d").glob("*.sources")) + sorted(
        (etc / "sources.list.d").glob("*.list")
    )
    paths.append(etc / "sources.list")
    out = []
    for path in paths:
        try:
            out.append((path.name, path.read_text(encoding="utf-8", errors="replace")))
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("cannot read apt source %s: %s", path, exc)
    return out


def host_codename(root: Path = Path("/")) -> str | None:
    """VERSION_CODENAME from os-release, to recognise the host's own suite."""
    try:
        text = (root / "etc" / "os-release").read_text(encoding="utf-8")
    except OSError as exc:
        log.info("no os-release under %s: %s", root, exc)
        return None
    for line in text.splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip().strip('"') or None
    return None
