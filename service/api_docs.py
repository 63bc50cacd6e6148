"""Swagger UI (/docs) and ReDoc (/redoc) served without a CDN, for air-gapped clusters.

FastAPI's own pages load their JavaScript, CSS, favicon and (ReDoc) Google Fonts from the internet, so
they are blank where there is none. The assets here come from the `fastapi-offline` package, which ships
Swagger UI's and ReDoc's bundles as package data; we serve its static folder under /docs-assets and use
FastAPI's own page builders pointed at it. Create the app with `docs_url=None, redoc_url=None` and call
`install_docs(app)`. The pages are open (no API key) and left out of the OpenAPI schema, as FastAPI's are.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
ASSETS_URL = "/docs-assets"
# swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js and favicon.png.
ASSETS = Path(fastapi_offline.__file__).parent / "static"

# The pages may load nothing from other origins. Inline scripts and styles are FastAPI's page and the
# bundles' own; ReDoc's search runs in a blob: worker.
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'")


# ReDoc 2 always shows an "API docs by Redocly" footer whose <img> comes from cdn.redoc.ly (no option turns it
# off). The policy above would block it, with an error in the console; the bundle we serve names a blank
# inline image instead, so the page asks no other host for anything.
REDOCLY_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
BLANK_SVG = "data:image/svg+xml,%3Csvg xmlns=%22http://www.w3.org/2000/svg%22/%3E"
REDOC_BUNDLE = "redoc-offline.standalone.js"


def _redoc_bundle() -> Response:
    """ReDoc's bundle with its footer logo inline (read once per process, about 1 MB)."""
    global _REDOC_CACHE
    if _REDOC_CACHE is None:
        code = (ASSETS / "redoc.standalone.js").read_text(encoding="utf-8")
        if REDOCLY_LOGO not in code:  # a new ReDoc: the test of the page's requests tells what it asks for
            raise RuntimeError(f"redoc.standalone.js no longer names {REDOCLY_LOGO}")
        _REDOC_CACHE = code.replace(REDOCLY_LOGO, BLANK_SVG).encode()
    return Response(_REDOC_CACHE, media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"})


_REDOC_CACHE: bytes | None = None


def _same_origin_only(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = DOCS_CSP
    return page


def install_docs(app: FastAPI) -> None:
    """Add /docs, its OAuth2 redirect page, /redoc and the /docs-assets files they load."""
    if app.docs_url or app.redoc_url:
        raise RuntimeError("create the app with docs_url=None, redoc_url=None: install_docs serves the pages")
    if not app.openapi_url:
        return
    openapi_url = app.openapi_url
    # Before the mount: a route of its own for the rewritten bundle.
    app.add_api_route(f"{ASSETS_URL}/{REDOC_BUNDLE}", _redoc_bundle, include_in_schema=False)
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS), name="docs-assets")

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        redirect = app.swagger_ui_oauth2_redirect_url
        return _same_origin_only(get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            oauth2_redirect_url=root + redirect if redirect else None,
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters=app.swagger_ui_parameters,
        ))

    if app.swagger_ui_oauth2_redirect_url:
        @app.get(app.swagger_ui_oauth2_redirect_url, include_in_schema=False)
        async def swagger_ui_redirect() -> HTMLResponse:
            return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return _same_origin_only(get_redoc_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/{REDOC_BUNDLE}",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        ))
