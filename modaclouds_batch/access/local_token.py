"""The local admin token: written once to a 0600 file in the gateway's home, as Jupyter does.

A laptop user runs `modaclouds-batch serve` and the CLI, the Python client and the README's
curl lines find the token in that file; nobody has to turn authentication off.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .tokens import TokenService, hash_token

log = logging.getLogger(__name__)
LOCAL_ADMIN = "admin"
LABEL = "local admin token"


def ensure_local_admin_token(tokens: TokenService, path: Path) -> bool:
    """Make sure ``path`` holds a token this gateway knows; True when one was minted now.

    A file whose token the database no longer knows (a new database) gets a new token; a
    token an admin revoked or let expire is left revoked (delete the file for a new one).
    """
    path = Path(path)
    if path.exists():
        current = path.read_text(encoding="utf-8").strip()
        if tokens.store.token_by_hash(hash_token(current)) is not None:
            if not tokens.is_valid(current):
                log.warning("the local admin token in %s is revoked or expired; delete the file "
                            "and restart for a new one", path)
            return False
    secret, record = tokens.create(LOCAL_ADMIN, "admin", label=f"{LABEL} ({path})")
    _write_private(path, secret + "\n")
    log.info("minted the local admin token %s (owner %s) in %s", record["id"], LOCAL_ADMIN, path)
    return True


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only, replacing it atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(partial, path)
