"""The gateway's side of the pool: its client config and its IDTOKEN.

The token names the pool identity (``batch@gateway.local``) and is signed with the key
the collector creates at its first start, so it can only be made once the pool has run.
It is limited to READ, WRITE and ADMINISTRATOR: submit, spool, act on, query and retrieve
jobs, and (for the infrastructure API, which admins use through the gateway) drain and
undrain startds; no DAEMON or NEGOTIATOR rights.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from pathlib import Path

from .commands import run
from .config import EVENT_LOG_NAME, render_client_config
from .errors import PoolError
from .layout import MAIN_NODE, PoolLayout

log = logging.getLogger(__name__)

TOKEN_AUTHZ = ("READ", "WRITE", "ADMINISTRATOR")


def write_private(path: Path, text: str) -> None:
    """Write ``text`` readable by its owner only (HTCondor ignores a token others can read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_client_config(layout: PoolLayout, collector_port: int, address: str, job_lease_seconds: int) -> None:
    layout.client_config.parent.mkdir(parents=True, exist_ok=True)
    layout.client_config.write_text(
        render_client_config(collector_port=collector_port, token_dir=layout.client_token_dir,
                             address=address, job_lease_seconds=job_lease_seconds,
                             event_log=layout.log_dir() / EVENT_LOG_NAME),
        encoding="utf-8")


def read_token(layout: PoolLayout) -> str | None:
    try:
        text = layout.client_token.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return text or None


def token_scopes(text: str) -> set[str]:
    """The authorizations an IDTOKEN (a JWT) carries, from its ``scope`` claim."""
    try:
        payload = text.strip().split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return set()
    return {s.removeprefix("condor:/") for s in str(claims.get("scope", "")).split()}


def token_is_current(layout: PoolLayout) -> bool:
    """A token exists, was made after the signing key (a new key voids old tokens), and
    carries every authorization the gateway needs now."""
    try:
        fresh = layout.client_token.stat().st_mtime >= layout.signing_key.stat().st_mtime
    except FileNotFoundError:
        return False
    return fresh and set(TOKEN_AUTHZ) <= token_scopes(read_token(layout) or "")


def wait_for_signing_key(layout: PoolLayout, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not layout.signing_key.exists():
        if time.monotonic() > deadline:
            raise PoolError(f"the collector made no pool signing key ({layout.signing_key}) "
                            f"within {timeout:.0f} s; read {layout.log_dir(MAIN_NODE) / 'CollectorLog'}")
        time.sleep(0.2)


def ensure_token(runtime, layout: PoolLayout, identity: str, say, timeout: float = 30) -> None:
    """Make the gateway's token unless a current one exists. Needs a started collector."""
    if read_token(layout) and token_is_current(layout):
        return
    wait_for_signing_key(layout, timeout)
    text = create_token(runtime, layout, identity, TOKEN_AUTHZ, "the gateway's token")
    write_private(layout.client_token, text + "\n")
    say(f"wrote the gateway's token for {identity} to {layout.client_token}")


def create_token(runtime, layout: PoolLayout, identity: str, authz, what: str) -> str:
    """A new IDTOKEN for ``identity`` limited to ``authz``, signed with the pool's key."""
    argv = ["condor_token_create", "-identity", identity]
    for level in authz:
        argv += ["-authz", level]
    text = run(runtime.command(argv), f"creating {what} (condor_token_create)",
               env=runtime.env(layout.daemon_config(MAIN_NODE))).strip()
    if not text:
        raise PoolError("condor_token_create printed no token")
    return text
