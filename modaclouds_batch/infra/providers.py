"""Where extra capacity comes from: pluggable providers of execute nodes.

A provider starts a worker (an HTCondor execute node that joins the pool) and retires
one it started. ``command`` runs an operator's executable; ``local`` (registered by the
app when the gateway manages its own pool) starts another startd on this machine.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any, Protocol

from ..errors import BackendRefused


class Provider(Protocol):
    name: str

    def provision(self, params: dict[str, Any]) -> str:
        """Start one worker; returns its name as it will appear in /workers."""

    def retire(self, worker: str) -> None:
        """Stop a worker this provider started (after the gateway drained it)."""


class CommandProvider:
    """Runs ``EXECUTABLE provision|retire`` with a JSON document on stdin.

    ``provision`` gets ``{"params": {...}, "collector": "host:port"}`` and must print
    ``{"name": "<worker name>"}``; ``retire`` gets ``{"name": ...}``. A non-zero exit
    is a failure whose stderr is recorded. The executable typically creates a VM that
    joins the pool with a token the operator issued for it.
    """

    name = "command"

    def __init__(self, executable: str, collector: str, timeout: float = 600.0):
        self.executable = executable
        self.collector = collector
        self.timeout = timeout

    def _run(self, action: str, document: dict[str, Any]) -> dict[str, Any]:
        try:
            done = subprocess.run(
                [self.executable, action], input=json.dumps(document), capture_output=True, text=True,
                timeout=self.timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BackendRefused(f"provider command {self.executable} {action} failed: {exc}") from exc
        if done.returncode != 0:
            raise BackendRefused(
                f"provider command {self.executable} {action} exited {done.returncode}: {done.stderr.strip()[-500:]}")
        try:
            return json.loads(done.stdout or "{}")
        except json.JSONDecodeError as exc:
            raise BackendRefused(f"provider command {action} printed no JSON: {done.stdout[-200:]!r}") from exc

    def provision(self, params: dict[str, Any]) -> str:
        answer = self._run("provision", {"params": params, "collector": self.collector})
        if not isinstance(answer.get("name"), str) or not answer["name"]:
            raise BackendRefused("provider command provision printed no worker name ({\"name\": ...})")
        return answer["name"]

    def retire(self, worker: str) -> None:
        self._run("retire", {"name": worker})
