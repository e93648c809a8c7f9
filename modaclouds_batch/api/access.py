"""HTTP resources for tokens, quotas, per-user limits and the audit log, plus authentication."""

from __future__ import annotations

import falcon

from ..access.audit import AuditLog
from ..access.identity import LOCAL_ACTOR, check_user_name
from ..access.quota import QuotaService
from ..access.tokens import TokenService
from ..errors import Forbidden, InvalidRequest, Unauthorized
from .bodies import json_object
from ..timefmt import parse_iso, to_iso

# Routes anyone may call: liveness and the API description.
PUBLIC_PATHS = ("/", "/health", "/openapi.json", "/docs")
# A token lives at most a century (longer overflows the calendar).
MAX_TOKEN_SECONDS = 100 * 365 * 24 * 3600


def is_public(path: str) -> bool:
    path = path.rstrip("/") or "/"
    return path in PUBLIC_PATHS or path.startswith("/docs/")


class Authenticate:
    """Sets ``req.context.actor`` from the bearer token; with auth off, the local admin.

    Behind the guard (api/guard.py) the token was checked already and the actor comes with
    the request; without it (a bare falcon app) it is checked here.
    """

    def __init__(self, tokens: TokenService, enabled: bool):
        self.tokens = tokens
        self.enabled = enabled

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource, params) -> None:
        if not self.enabled or is_public(req.path):
            req.context.actor = LOCAL_ACTOR if not self.enabled else None
            return
        checked = req.env.get(ACTOR_KEY)
        if checked is not None:
            req.context.actor = checked
            return
        header = req.get_header("Authorization") or ""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("this gateway needs an API token: send Authorization: Bearer <token>")
        req.context.actor = self.tokens.authenticate(token.strip())


# Where the guard (api/guard.py) leaves the actor it checked.
ACTOR_KEY = "modaclouds_batch.actor"
TOKEN_FIELDS = {"owner", "role", "expires_in", "expires_at", "label"}


class TokensResource:
    def __init__(self, tokens: TokenService, minting: bool = True):
        self.tokens = tokens
        # With auth off every caller is the local admin: a token minted then would outlive it.
        self.minting = minting

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.tokens.list(req.context.actor, req.get_param("owner"))

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        actor = req.context.actor
        if not self.minting:
            raise Forbidden("tokens are not minted while auth is off (every caller is the local admin); "
                            "turn auth on, or use `modaclouds-batch token create` on the gateway's host")
        self.tokens.require_may_create(actor)
        body = json_object(req)
        unknown = sorted(set(body) - TOKEN_FIELDS)
        if unknown:
            raise InvalidRequest(f"unknown field '{unknown[0]}'; POST /tokens takes {', '.join(sorted(TOKEN_FIELDS))}",
                                 field=unknown[0])
        if body.get("expires_in") is not None and body.get("expires_at") is not None:
            raise InvalidRequest("give expires_in or expires_at, not both", field="expires_at")
        expires_in = body.get("expires_in")
        if expires_in is not None and (isinstance(expires_in, bool) or not isinstance(expires_in, (int, float))
                                       or not 0 < expires_in <= MAX_TOKEN_SECONDS):  # NaN fails too
            raise InvalidRequest(f"expires_in must be a number of seconds, 0 < expires_in <= {MAX_TOKEN_SECONDS}",
                                 field="expires_in")
        for key in ("expires_at", "label"):
            if body.get(key) is not None and not isinstance(body[key], str):
                raise InvalidRequest(f"{key} must be a string", field=key)
        token, record = self.tokens.create(
            body.get("owner"), body.get("role", "user"), expires_in=expires_in,
            expires_at=body.get("expires_at"), label=body.get("label"), by=actor,
            request_id=req.context.request_id,
        )
        resp.status = falcon.HTTP_201
        resp.location = f"/tokens/{record['id']}"
        resp.media = {**record, "token": token}


class TokenResource:
    def __init__(self, tokens: TokenService):
        self.tokens = tokens

    def on_delete(self, req: falcon.Request, resp: falcon.Response, token_id: str) -> None:
        self.tokens.revoke(req.context.actor, token_id, request_id=req.context.request_id)
        resp.status = falcon.HTTP_204


class QuotaResource:
    """How many more jobs the caller may start now (seed 000's 'is there a free slot')."""

    def __init__(self, quota: QuotaService):
        self.quota = quota

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.quota.status(req.context.actor)


class UserLimitsResource:
    def __init__(self, quota: QuotaService):
        self.quota = quota

    def on_get(self, req: falcon.Request, resp: falcon.Response, user: str) -> None:
        actor = req.context.actor
        if actor.user != user:
            actor.require_admin("another user's limits")
        resp.media = {"user": check_user_name(user), "limits": self.quota.limits_for(user)}

    def on_put(self, req: falcon.Request, resp: falcon.Response, user: str) -> None:
        self.quota.require_may_set(req.context.actor)
        check_user_name(user)
        limits = self.quota.set_limits(req.context.actor, user, json_object(req),
                                       request_id=req.context.request_id)
        resp.media = {"user": user, "limits": limits}


class AuditResource:
    def __init__(self, audit: AuditLog):
        self.audit = audit

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        since = req.get_param("since")
        if since is not None:
            try:
                since = to_iso(parse_iso(since))
            except ValueError:
                raise InvalidRequest("since must be an ISO-8601 time", field="since") from None
        resp.media = self.audit.entries(
            req.context.actor, user=req.get_param("actor"), action=req.get_param("action"), since=since,
            limit=req.get_param_as_int("limit", min_value=1, max_value=10_000, default=100),
            outcome=req.get_param("outcome"),
        )
