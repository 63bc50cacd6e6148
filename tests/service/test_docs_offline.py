"""/docs (Swagger UI) and /redoc render with no network but the API's: their assets ship in a package.

The real API runs (as `repaint api` runs it, with API keys on) and Chromium opens both pages with every
request to any other host aborted and recorded. Chromium reaches the API by a made-up host name mapped to
127.0.0.1, as users of a cluster would, not by 127.0.0.1 itself: front-end code may treat loopback specially
(Swagger UI's validator badge, which calls validator.swagger.io, is skipped for localhost and 127.0.0.1), so a
loopback address could hide a leak.

The pages also carry a same-origin Content-Security-Policy, so the browser sends nothing elsewhere; what
the pages ask for is recorded too, and must be nothing: not even ReDoc's footer logo, which its bundle names
on another host (the bundle served names an inline image instead: service/api_docs.py), and no console
error.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.procs import ROOT, ApiProcess

SCREENSHOTS = ROOT / "docs" / "screenshots"
HOST = "repaint-docs.internal"  # what an air-gapped cluster's users type; resolved by Chromium to 127.0.0.1
API_KEY = "docs-test-key"


@pytest.fixture(scope="module")
def api(redis_server):
    api = ApiProcess(redis_server.url, REPAINT_API_KEYS=API_KEY)
    yield api
    api.stop()


def test_pages_are_open_local_and_out_of_the_schema(api):
    with httpx.Client(base_url=api.url, timeout=10) as http:
        assert http.get("/models").status_code == 401  # keys are on ...
        for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):  # ... and the pages need none
            r = http.get(path)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), path
        for path in ("/docs", "/redoc"):
            assert "default-src 'self'" in http.get(path).headers["content-security-policy"]
        pages = http.get("/docs").text + http.get("/redoc").text
        for foreign in ("cdn.jsdelivr.net", "unpkg.com", "fonts.googleapis.com", "fastapi.tiangolo.com"):
            assert foreign not in pages
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc-offline.standalone.js", "favicon.png"):
            assert f'"/docs-assets/{asset}"' in pages
            r = http.get(f"/docs-assets/{asset}")
            assert r.status_code == 200 and len(r.content) > 1000, asset
        paths = http.get("/openapi.json").json()["paths"]
        assert "/inpaint" in paths
        assert not [p for p in paths if p.startswith(("/docs", "/redoc"))]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--no-proxy-server", f"--host-resolver-rules=MAP {HOST} 127.0.0.1"])
        yield browser
        browser.close()


class Offline:
    """A page on the API where every request to another host is aborted. Records, per foreign URL:
    `attempted` (the page asked for it), `routed` (it got past the browser towards the network, where the
    route aborted it), `failures` (why each failed), plus uncaught page errors."""

    def __init__(self, browser, api, path: str):
        self.host = f"{HOST}:{api.port}"
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.attempted, self.routed, self.failures, self.errors = [], [], {}, []
        self.page.on("request", lambda r: self.attempted.append(r.url) if self.foreign(r.url) else None)
        self.page.on("requestfailed", lambda r: self.failures.__setitem__(r.url, r.failure))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.console_errors: list[str] = []  # a request the page's policy refused shows up here
        self.page.on("console", lambda m: self.console_errors.append(m.text) if m.type == "error" else None)
        self.page.route("**/*", self.only_the_api)
        self.page.goto(f"http://{self.host}{path}", wait_until="load")

    def foreign(self, url: str) -> bool:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https", "ws", "wss") and parts.netloc != self.host

    def only_the_api(self, route) -> None:
        if self.foreign(route.request.url):
            self.routed.append(route.request.url)
            route.abort()
        else:
            route.continue_()


@pytest.fixture()
def offline(browser, api):
    pages = []
    yield lambda path: pages.append(Offline(browser, api, path)) or pages[-1]
    for o in pages:
        o.page.close()


def test_swagger_ui_renders_offline(offline):
    o = offline("/docs")
    o.page.wait_for_selector(".opblock", timeout=15_000)
    operations = o.page.eval_on_selector_all(".opblock", """blocks => blocks.map(b =>
        b.querySelector('.opblock-summary-method').textContent + ' ' +
        b.querySelector('.opblock-summary-path').getAttribute('data-path'))""")
    assert {"POST /inpaint", "GET /jobs/{job_id}", "GET /models"} <= set(operations), operations
    assert "repaint-server" in o.page.locator(".info .title").inner_text()
    o.page.wait_for_load_state("networkidle")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    o.page.screenshot(path=str(SCREENSHOTS / "docs-offline-swagger.png"))
    assert o.attempted == [] and o.routed == [] and o.errors == [] and o.console_errors == []


def test_redoc_renders_offline(offline):
    o = offline("/redoc")
    heading = o.page.locator("h2", has_text="Queue an inpainting job")
    heading.wait_for(timeout=15_000)
    assert o.page.locator("h2", has_text="Job status and progress").count() == 1
    o.page.wait_for_load_state("networkidle")
    heading.scroll_into_view_if_needed()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    o.page.screenshot(path=str(SCREENSHOTS / "docs-offline-redoc.png"))
    assert o.attempted == [] and o.routed == [] and o.errors == [], (o.attempted, o.failures)
    assert o.console_errors == []
