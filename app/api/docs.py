"""API documentation served by the service itself: Swagger UI from a Python package's files,
not a public CDN, so ``/docs`` works on a lab network with no internet.

The Swagger UI bundle comes from the ``fastapi-swagger`` wheel (its ``resources`` folder, a
recent Swagger UI 5 that reads OpenAPI 3.1); the page and its start-up script are ours.
ReDoc is not offered: no package ships its bundle.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

logger = logging.getLogger(__name__)

DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{title} · API</title>
  <link rel="stylesheet" href="docs-assets/swagger-ui.css">
  <link rel="icon" type="image/png" href="docs-assets/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="docs-assets/swagger-ui-bundle.js"></script>
  <script src="static/docs/init.js"></script>
</body>
</html>
"""


def swagger_assets() -> Path | None:
    """The folder holding swagger-ui-bundle.js and swagger-ui.css, if the package is there."""
    spec = importlib.util.find_spec("fastapi_swagger")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "resources"
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


def install_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI from local files); nothing if the assets are not installed."""
    assets = swagger_assets()
    if assets is None:
        logger.warning("fastapi-swagger is not installed: /docs is off (/openapi.json still is)")
        return
    app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")
    page = DOCS_PAGE.format(title=app.title)

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(page)
