"""HTTP resources for /pool and /workers (admin-only)."""

from __future__ import annotations

import falcon

from ..errors import InvalidRequest
from ..infra.service import InfraService
from .bodies import json_object


class PoolResource:
    def __init__(self, infra: InfraService):
        self.infra = infra

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.infra.summary(req.context.actor)


class WorkersResource:
    def __init__(self, infra: InfraService):
        self.infra = infra

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.infra.workers(req.context.actor)

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = json_object(req)
        params = body.get("params") or {}
        if not isinstance(params, dict):
            raise InvalidRequest("params must be a JSON object", field="params")
        provider = body.get("provider") or "local"
        if not isinstance(provider, str):
            raise InvalidRequest("provider must be a provider's name, such as local", field="provider")
        record = self.infra.provision(req.context.actor, provider, params, req.context.request_id)
        resp.status = falcon.HTTP_202
        resp.location = "/workers/requests"
        resp.media = record


class WorkerRequestsResource:
    def __init__(self, infra: InfraService):
        self.infra = infra

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        limit = req.get_param_as_int("limit", min_value=1, max_value=1000, default=100)
        resp.media = self.infra.requests(req.context.actor, limit)


class WorkerResource:
    def __init__(self, infra: InfraService):
        self.infra = infra

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        resp.media = self.infra.worker(req.context.actor, name)

    def on_delete(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        resp.status = falcon.HTTP_202
        resp.media = self.infra.retire(req.context.actor, name, req.context.request_id)


class WorkerDrainResource:
    def __init__(self, infra: InfraService):
        self.infra = infra

    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        body = json_object(req)
        how = body.get("how")  # null or absent: the query string's, else graceful
        if how is None:
            how = req.get_param("how", default="graceful")
        if not isinstance(how, str):
            raise InvalidRequest("how must be a string: graceful (default), quick or fast", field="how")
        resp.status = falcon.HTTP_202
        resp.media = self.infra.drain(req.context.actor, name, how, req.context.request_id)


class WorkerUndrainResource:
    def __init__(self, infra: InfraService):
        self.infra = infra

    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        resp.status = falcon.HTTP_202
        resp.media = self.infra.undrain(req.context.actor, name, req.context.request_id)
