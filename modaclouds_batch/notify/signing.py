"""Webhook signing secrets, one set per user (Standard Webhooks), and the signatures they make.

Every user (``anonymous`` too, on a gateway without auth) has a secret of their own, made
the first time it is needed (their first notification, or ``GET /webhooks/secret``), so
a receiver can tell its owner's notifications from anyone else's. Rotating it keeps the
old one signing for ``webhook_secret_overlap_seconds``: Standard Webhooks lets a request
carry several space-separated signatures, and a receiver accepts any one it can verify,
so it can switch secrets without missing a notification.

The operator's ``webhook_secret``, when set, adds one more signature to every
notification, so receivers set up before per-user secrets keep verifying. It is shared
by all users: a receiver that verifies with it cannot tell users apart.
"""

from __future__ import annotations

import base64
import logging
import secrets
from datetime import datetime, timedelta, timezone
from typing import Any

from standardwebhooks import Webhook

from ..access.identity import Actor
from ..store import Store
from ..timefmt import to_iso

log = logging.getLogger(__name__)
# Standard Webhooks asks for at least 24 random bytes; 32 is what its own tools make.
SECRET_BYTES = 32
SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


class WebhookSecrets:
    """Reads, rotates and signs with users' secrets; a user only ever sees their own."""

    def __init__(self, store: Store, overlap_seconds: float, global_secret: str | None = None, audit=None):
        self.store = store
        self.overlap_seconds = max(0.0, float(overlap_seconds))
        # Checked here, at start-up: a malformed operator secret fails loudly, not at the first send.
        self._global = Webhook(global_secret) if global_secret else None
        self.audit = audit

    def current(self, actor: Actor) -> dict[str, Any]:
        """The caller's current secret (made now if they have none), for GET /webhooks/secret."""
        return _view(self.store.webhook_secrets(actor.user, _now(), new_secret))

    def rotate(self, actor: Actor, request_id: str | None = None) -> dict[str, Any]:
        """A new secret for the caller; the old one keeps signing for the overlap."""
        now = datetime.now(timezone.utc)
        until = to_iso(now + timedelta(seconds=self.overlap_seconds))
        rows = self.store.rotate_webhook_secret(actor.user, to_iso(now), until, new_secret)
        view = _view(rows)
        if self.audit is not None:
            self.audit.record(actor, "webhook_secret.rotate", actor.user,
                              detail={"previous_valid_until": view.get("previous_valid_until")},
                              request_id=request_id)
        log.info("webhook secret of %s rotated; the previous one signs until %s", actor.user,
                 view.get("previous_valid_until"))
        return view

    def signature(self, owner: str, msg_id: str, moment: datetime, body: str) -> str | None:
        """The ``webhook-signature`` header: one ``v1,...`` per secret that signs for ``owner``
        now (theirs, then the operator's), space-separated; None when there is none."""
        signers = [Webhook(row["secret"]) for row in self.store.webhook_secrets(owner, _now(), new_secret)] \
            if owner else []
        if self._global is not None:
            signers.append(self._global)
        return " ".join(signer.sign(msg_id, moment, body) for signer in signers) or None

    @property
    def global_secret_set(self) -> bool:
        return self._global is not None


def _now() -> str:
    return to_iso(datetime.now(timezone.utc))


def _view(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What the owner sees: the current secret, and until when a previous one still signs."""
    current = next(row for row in rows if row["valid_until"] is None)
    view = {"secret": current["secret"], "created_at": current["created_at"]}
    previous = [row["valid_until"] for row in rows if row["valid_until"] is not None]
    if previous:
        view["previous_valid_until"] = max(previous)
    return view
