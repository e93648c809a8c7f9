"""GET /openapi.json (the API description) and /docs (Swagger UI, from a PyPI package's assets).

The description is the hand-kept ``api/openapi.json``; tests/unit/test_openapi.py checks
that it names every route and method the app serves. Swagger UI's files come from the
installed ``swagger-ui-bundle-v2`` package, so the page works with no internet access.
"""

from __future__ import annotations

import importlib.resources
import json

import falcon

from ..errors import NotFound

# Swagger UI's files the page needs, and their content types; nothing else is served.
ASSETS = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui-standalone-preset.js": "text/javascript; charset=utf-8",
    "favicon-16x16.png": "image/png",
    "favicon-32x32.png": "image/png",
}

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>modaclouds-batch API</title>
  <link rel="stylesheet" href="/docs/swagger-ui.css">
  <link rel="icon" type="image/png" href="/docs/favicon-32x32.png" sizes="32x32">
  <style>body { margin: 0; }</style>
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({
      url: "/openapi.json",
      dom_id: "#swagger-ui",
      layout: "BaseLayout",
      deepLinking: true,
      persistAuthorization: true,
      displayRequestDuration: true,
      validatorUrl: null,
      // "Try it out" sends every form field, an unchosen file as an empty blob: send only what was filled in.
      requestInterceptor: (request) => {
        if (request.body instanceof FormData) {
          for (const [name, value] of [...request.body.entries()]) {
            if (value === "" || (value instanceof Blob && value.size === 0)) request.body.delete(name);
          }
        }
        return request;
      }
    });
  </script>
</body>
</html>
"""


def swagger_ui_dir():
    """The folder of Swagger UI's files inside the installed package."""
    from swagger_ui_bundle import swagger_ui_path

    return swagger_ui_path


def core_description() -> dict:
    """The hand-kept description of the core (MODAClouds) routes; dialects add theirs."""
    return json.loads(importlib.resources.files(__package__).joinpath("openapi.json").read_text(encoding="utf-8"))


class OpenAPIResource:
    def __init__(self, description: dict):
        self.body = json.dumps(description, indent=1).encode()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self.body


class DocsPageResource:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_HTML
        resp.text = PAGE


class DocsAssetResource:
    def __init__(self):
        self.folder = swagger_ui_dir()

    def on_get(self, req: falcon.Request, resp: falcon.Response, asset: str) -> None:
        if asset not in ASSETS:
            raise NotFound(f"no asset {asset!r}; the docs page is at /docs")
        resp.content_type = ASSETS[asset]
        resp.cache_control = ["public", "max-age=86400"]
        resp.data = self.folder.joinpath(asset).read_bytes()
