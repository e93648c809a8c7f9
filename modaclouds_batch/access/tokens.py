"""API tokens: random, shown once, stored only as a hash, with owner, role and expiry.

Who may mint and revoke, and the audit entry each leaves, are decided here, so the HTTP API,
the CLI (which works on the database directly) and the gateway's own local admin token all
follow one rule."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from ..errors import InvalidRequest, NotFound, NotYours, Unauthorized
from ..store import Store
from ..timefmt import now_iso, parse_iso, to_iso
from .audit import AuditLog
from .identity import ROLES, Actor, check_user_name

TOKEN_PREFIX = "mcb_"


def hash_token(token: str) -> str:
    # Tokens carry 256 random bits, so a fast hash is enough: no guessing to slow down.
    return hashlib.sha256(token.encode()).hexdigest()


class TokenService:
    def __init__(self, store: Store, audit: AuditLog):
        self.store = store
        self.audit = audit

    def create(self, owner: str, role: str = "user", *, expires_in: float | None = None,
               expires_at: str | None = None, label: str | None = None, by: Actor | None = None,
               request_id: str | None = None, client: str | None = None) -> tuple[str, dict[str, Any]]:
        """Returns (the token, its record). The token itself is never stored or shown again.

        ``by`` is who asks (an admin); None is the gateway itself (its local admin token).
        Either way the new token is audited, with ``client`` naming where the request came
        from when it was not an HTTP request (the CLI)."""
        if by is not None:
            self.require_may_create(by)
        check_user_name(owner)
        if role not in ROLES:
            raise InvalidRequest(f"role must be one of {', '.join(ROLES)}", field="role")
        if expires_in is not None:
            if expires_in <= 0:
                raise InvalidRequest("expires_in must be a positive number of seconds", field="expires_in")
            expires_at = to_iso(datetime.now(timezone.utc) + timedelta(seconds=expires_in))
        elif expires_at is not None:
            try:
                expires_at = to_iso(parse_iso(expires_at))
            except ValueError:
                raise InvalidRequest("expires_at must be an ISO-8601 time", field="expires_at") from None
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        record = {
            "id": str(uuid.uuid4()), "owner": owner, "role": role, "token_hash": hash_token(token),
            "label": label, "created_at": now_iso(), "expires_at": expires_at,
        }
        self.store.insert_token(record)
        self.audit.record(by, "token.create", record["id"], request_id=request_id, client=client,
                          detail={"owner": owner, "role": role})
        return token, {k: v for k, v in record.items() if k != "token_hash"}

    @staticmethod
    def require_may_create(actor: Actor) -> None:
        """Only admins mint tokens (:class:`Forbidden` otherwise): checked before a request's body is read."""
        actor.require_admin("creating API tokens")

    def authenticate(self, token: str) -> Actor:
        """The token's actor, its last use recorded; :class:`Unauthorized` if it is not valid now."""
        record = self._valid_record(token)
        self.store.touch_token(record["id"], now_iso())
        return Actor(record["owner"], record["role"])

    def verify(self, token: str) -> Actor:
        """As :meth:`authenticate`, writing nothing: for checks made before a request is read."""
        record = self._valid_record(token)
        return Actor(record["owner"], record["role"])

    def is_valid(self, token: str) -> bool:
        try:
            self._valid_record(token)
        except Unauthorized:
            return False
        return True

    def _valid_record(self, token: str) -> dict[str, Any]:
        record = self.store.token_by_hash(hash_token(token))
        if record is None:
            raise Unauthorized("unknown API token; check the Authorization: Bearer header")
        if record["revoked_at"]:
            raise Unauthorized("this API token was revoked; ask an admin for a new one")
        if record["expires_at"] and record["expires_at"] <= now_iso():
            raise Unauthorized("this API token has expired; ask an admin for a new one")
        return record

    def list(self, actor: Actor, owner: str | None = None) -> list[dict[str, Any]]:
        if not actor.is_admin:
            owner = actor.user
        return self.store.list_tokens(owner)

    def revoke(self, actor: Actor, token_id: str, *, request_id: str | None = None,
               client: str | None = None) -> None:
        visible = {t["id"] for t in self.list(actor)}
        message = f"no active token {token_id} that you may revoke"
        if token_id not in visible and any(t["id"] == token_id for t in self.store.list_tokens()):
            raise NotYours(message, target=token_id)
        if token_id not in visible or not self.store.revoke_token(token_id, now_iso()):
            raise NotFound(message)
        self.audit.record(actor, "token.revoke", token_id, request_id=request_id, client=client)
