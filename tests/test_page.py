"""The web page in a real browser (Debian's Chromium, driven by Playwright) against the real API and a
`tiny` or `faces32` worker: each state is checked in the DOM and saved to docs/screenshots/page-<state>.png.
The page's drawing statistic (how much an upload looks like faces32's pictures) is mirrored here in Python,
and its threshold checked on faces and photographs."""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw
from redis import Redis

from tests.procs import ROOT, ApiProcess, WorkerProcess, wait_until

SHOTS = ROOT / "docs" / "screenshots"
MODULES = ROOT / "service" / "static" / "js"
WIDE = (480, 240)
# Long enough (460 evaluations) to see the job running with a live estimate, which the server only
# serves past a third of the evaluations (custom RePaint parameters).
RUNNING = {"param-steps": "100", "param-jump-length": "10", "param-jump-n-sample": "5"}


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Debian's chromium is needed for the page test (apt-get install chromium)")
    return path


@contextlib.contextmanager
def browser_page(playwright):
    """A page in Debian's Chromium, and the list its JavaScript errors are collected in."""
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 820})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            yield page, errors
        finally:
            browser.close()


def in_module(page, module: str, expression: str, arg=None):
    """`expression` evaluated in the page, with its module service/static/js/<module>.js as `m` (the
    instance the page runs: a module loads once per URL) and `arg` as `arg`."""
    return page.evaluate(f"async (arg) => {{ const m = await import('/static/js/{module}.js'); return {expression}; }}",
                         arg)


@dataclass
class Service:
    """The API's address, and the Redis and the worker behind it (for a test that breaks them)."""

    url: str
    redis: Redis
    worker: WorkerProcess


@pytest.fixture()
def service(redis_server, redis_db):
    api = ApiProcess(redis_server.url)
    worker = WorkerProcess(redis_server.url, "page", REPAINT_PREVIEW_INTERVAL="0.3").wait_ready(redis_db)
    yield Service(api.url, redis_db, worker)
    worker.stop()
    api.stop()


PAGE_KEY = "page-key"


@pytest.fixture()
def keyed_service(redis_server, redis_db):
    """The API with an API key required (the worker talks to Redis only and needs none)."""
    api = ApiProcess(redis_server.url, REPAINT_API_KEYS=PAGE_KEY)
    worker = WorkerProcess(redis_server.url, "page-keyed", REPAINT_PREVIEW_INTERVAL="0.3").wait_ready(redis_db)
    yield api
    worker.stop()
    api.stop()


@pytest.fixture()
def faces32_service(redis_server, redis_db):
    """What `make serve` serves: faces32 (with a worker), plus tiny and places256 to switch to."""
    api = ApiProcess(redis_server.url, REPAINT_MODEL="faces32", REPAINT_MODELS="tiny,places256")
    worker = WorkerProcess(redis_server.url, "page-faces32", model="faces32").wait_ready(redis_db)
    yield api
    worker.stop()
    api.stop()


def landscape(size=WIDE) -> Image.Image:
    """A wide picture with something to paint out: sky, hills, a sun and a house."""
    w, h = size
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    for y in range(h):
        t = y / h
        draw.line([(0, y), (w, y)], fill=(int(90 + 120 * t), int(150 + 80 * t), 235))
    draw.ellipse((w * 0.75, h * 0.1, w * 0.87, h * 0.34), fill=(255, 214, 90))
    draw.polygon([(0, h * 0.7), (w * 0.3, h * 0.45), (w * 0.6, h * 0.68), (w, h * 0.5), (w, h), (0, h)],
                 fill=(70, 140, 70))
    draw.rectangle((w * 0.42, h * 0.5, w * 0.58, h * 0.78), fill=(190, 80, 60))
    draw.polygon([(w * 0.4, h * 0.5), (w * 0.5, h * 0.33), (w * 0.6, h * 0.5)], fill=(110, 50, 40))
    return image


def box(page, selector: str) -> dict:
    return page.locator(selector).bounding_box()


def assert_same_box(a: dict, b: dict, tolerance: float = 1.0) -> None:
    assert all(abs(a[k] - b[k]) <= tolerance for k in ("x", "y", "width", "height")), (a, b)


# Laptop screens the page must fit: what a job shows under the box stays in view there.
SCREENS = [{"width": 1280, "height": 900}, {"width": 1366, "height": 768}]


def assert_in_view(page, *selectors: str) -> None:
    """Each element shown and wholly inside the viewport, with the page scrolled to the top: seen
    without scrolling."""
    page.evaluate("window.scrollTo(0, 0)")
    screen = page.viewport_size
    for selector in selectors:
        b = box(page, selector)
        assert b is not None, f"{selector} is not shown"
        assert b["x"] >= 0 and b["y"] >= 0 and b["x"] + b["width"] <= screen["width"] \
            and b["y"] + b["height"] <= screen["height"], (selector, b, screen)


def to_screen(canvas_box: dict, x: float, y: float) -> tuple[float, float]:
    """Screen coordinates of image pixel (x, y) in the (unzoomed) box."""
    return (canvas_box["x"] + x * canvas_box["width"] / WIDE[0], canvas_box["y"] + y * canvas_box["height"] / WIDE[1])


def stroke(page, start: tuple[float, float], *moves: tuple[tuple[float, float], int]) -> None:
    """One brush stroke with the mouse: press at `start` (screen coordinates), move through each
    (point, steps) in turn, release."""
    page.mouse.move(*start)
    page.mouse.down()
    for point, steps in moves:
        page.mouse.move(*point, steps=steps)
    page.mouse.up()

def paint_line(page, image_width: int, brush: int, start: tuple[float, float], end: tuple[float, float], *,
               steps: int) -> dict:
    """A brush stroke between two points in image pixels (of an image `image_width` wide, shown
    unzoomed); returns the page's bounding box of the mask (maskBox)."""
    image = box(page, "#image-canvas")
    scale = image["width"] / image_width
    page.evaluate(SET_RANGE, ["brush", brush])
    stroke(page, (image["x"] + start[0] * scale, image["y"] + start[1] * scale),
           ((image["x"] + end[0] * scale, image["y"] + end[1] * scale), steps))
    return in_module(page, "notices", "m.maskBox()")



PAINTED_IN_COLUMN = """(x) => {
  const c = document.getElementById('mask-canvas');
  const d = c.getContext('2d').getImageData(x, 0, 1, c.height).data;
  const rows = [];
  for (let y = 0; y < c.height; y++) if (d[4 * y + 3] > 127) rows.push(y);
  return rows;
}"""
PAINTED_PIXELS = """() => {
  const c = document.getElementById('mask-canvas');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 3; i < d.length; i += 4) if (d[i] > 127) n++;
  return n;
}"""
SET_RANGE = """([id, value]) => {
  const el = document.getElementById(id);
  el.value = String(value);
  el.dispatchEvent(new Event('input', {bubbles: true}));
}"""



def shown_result_size(page) -> tuple[int, int]:
    """Wait until the result image is shown and loaded; its natural (width, height)."""
    page.wait_for_selector("#result-image:not([hidden])", timeout=60_000)
    page.wait_for_function("document.querySelector('#result-image').complete"
                           " && document.querySelector('#result-image').naturalWidth > 0")
    return tuple(page.evaluate("[document.querySelector('#result-image').naturalWidth,"
                               " document.querySelector('#result-image').naturalHeight]"))

def test_the_page_paints_follows_the_job_and_compares_the_result(service, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    SHOTS.mkdir(parents=True, exist_ok=True)
    landscape().save(tmp_path / "wide.png")
    landscape((240, 480)).save(tmp_path / "tall.png")
    with browser_page(playwright) as (page, errors):
        page.goto(service.url + "/")

        # Empty: the models' notes and the presets in the API's words (balanced is chosen first).
        page.wait_for_function("document.querySelector('#model').options.length > 0")
        page.wait_for_function("document.querySelector('#model-notes').textContent.includes('worker')")
        assert "Tiny random-weight" in page.text_content("#model-description")
        assert "1 worker" in page.text_content("#model-notes")
        assert "random weights" in page.text_content("#model-domain")
        listing = httpx.get(f"{service.url}/models").json()
        presets = page.eval_on_selector_all("#preset option", "os => os.map(o => o.textContent)")
        assert presets[0] == "model default — repaint, 2,410 evaluations", presets  # tiny: 250/10/10
        assert presets[-1] == "custom…"
        for name, preset in listing["presets"].items():
            assert f"{name} — {preset['sampler']}, {preset['evaluations']:,} evaluations" in presets, presets
        balanced = listing["presets"]["balanced"]
        assert page.input_value("#preset") == "balanced"
        assert f"{balanced['evaluations']:,} network evaluations per sample" in page.text_content("#cost")
        assert page.is_visible("text=Ctrl") and page.is_visible(".shortcuts")
        page.screenshot(path=str(SHOTS / "page-empty.png"))

        # A wide image: the box takes its aspect ratio, so the image fills it (no empty strip).
        page.set_input_files("#file", str(tmp_path / "wide.png"))
        page.wait_for_selector("#stage:not(.empty)")
        stage, image = box(page, "#stage"), box(page, "#image-canvas")
        assert_same_box(stage, image)
        assert abs(image["width"] / image["height"] - 2.0) < 0.01, image
        assert image["width"] > 700, image  # as large as the column allows
        page.screenshot(path=str(SHOTS / "page-image.png"))

        # The brush is in image pixels: a 10 px stroke marks a band about 10 image pixels high.
        page.evaluate(SET_RANGE, ["brush", 10])
        assert page.text_content("#brush-size") == "10"
        stroke(page, to_screen(image, 140, 60), (to_screen(image, 340, 60), 10))
        rows = page.evaluate(PAINTED_IN_COLUMN, 240)
        assert 9 <= len(rows) <= 11 and abs(sum(rows) / len(rows) - 60) <= 1, rows
        assert page.evaluate(PAINTED_IN_COLUMN, 120) == []  # left of the stroke (its round end is 135)
        # The outline follows the pointer at the brush's true size on screen.
        page.mouse.move(*to_screen(image, 250, 150))
        cursor = box(page, "#brush-cursor")
        scale = image["width"] / WIDE[0]
        assert abs(cursor["width"] - 10 * scale) <= 1.5, (cursor, scale)
        assert abs(cursor["x"] + cursor["width"] / 2 - to_screen(image, 250, 150)[0]) <= 1.5

        # A second, larger stroke over the house; undo and redo it with the keyboard.
        one_stroke = page.evaluate(PAINTED_PIXELS)
        page.evaluate(SET_RANGE, ["brush", 44])
        stroke(page, to_screen(image, 226, 150), (to_screen(image, 254, 172), 6),
               (to_screen(image, 236, 186), 4))
        two_strokes = page.evaluate(PAINTED_PIXELS)
        assert two_strokes > one_stroke + 44 * 44
        # (Undo replays the strokes kept: antialiased joints may differ by a few pixels.)
        page.keyboard.press("Control+z")
        assert abs(page.evaluate(PAINTED_PIXELS) - one_stroke) <= 0.02 * one_stroke
        page.keyboard.press("Control+Shift+z")
        assert abs(page.evaluate(PAINTED_PIXELS) - two_strokes) <= 0.02 * two_strokes
        page.keyboard.press("]")
        assert int(page.text_content("#brush-size")) > 44
        page.keyboard.press("[")
        assert page.text_content("#brush-size") == "44"
        page.mouse.move(*to_screen(image, 330, 120))
        assert page.is_visible("#brush-cursor")
        page.screenshot(path=str(SHOTS / "page-mask.png"))

        # The API's refusals are shown from its JSON detail.
        page.select_option("#preset", "custom")
        assert page.input_value("#sampler") == "repaint"
        for field, value in {"param-steps": "1000", "param-jump-length": "1", "param-jump-n-sample": "100"}.items():
            page.fill(f"#{field}", value)
        assert "99,901 network evaluations" in page.text_content("#cost")
        page.click("#submit")
        page.wait_for_selector("#error:not([hidden])")
        refusal = page.text_content("#error")
        assert "network evaluations per sample" in refusal and "limit" in refusal, refusal

        # Running: progress in evaluations, and the live estimate in the image's box.
        for field, value in RUNNING.items():
            page.fill(f"#{field}", value)
        assert "460 network evaluations per sample" in page.text_content("#cost")
        page.mouse.move(*to_screen(image, 330, 120))  # the brush outline in the screenshot
        with page.expect_response("**/inpaint") as submitted:
            page.click("#submit")
        assert submitted.value.status == 202
        params = httpx.get(f"{service.url}/jobs/{submitted.value.json()['id']}").json()["params"]
        assert params["sampler"] == "repaint", params
        assert (params["steps"], params["jump_length"], params["jump_n_sample"]) == (100, 10, 5), params
        page.wait_for_function("document.querySelector('#job-settings').textContent.includes('460')")
        assert page.text_content("#job-settings").startswith("repaint · steps 100 · jump length 10 · jump n sample 5 —")
        page.wait_for_selector("#preview-image:not([hidden])", timeout=60_000)
        page.wait_for_function("document.querySelector('#status-line').textContent.includes('evaluations')")
        assert page.evaluate("document.querySelector('#progress').value") >= 1 / 3
        assert_same_box(box(page, "#preview-image"), image)
        preview = page.evaluate("[document.querySelector('#preview-image').naturalWidth,"
                                " document.querySelector('#preview-image').naturalHeight]")
        assert tuple(preview) == WIDE, f"the preview is {preview}, the upload {WIDE}"
        page.screenshot(path=str(SHOTS / "page-running.png"))

        # The result at the image's size, in the same box, with the before/after split half-way.
        natural = shown_result_size(page)
        assert tuple(natural) == WIDE
        assert_same_box(box(page, "#result-image"), box(page, "#image-canvas"))
        assert_same_box(box(page, "#result-image"), stage)
        # Download: the bytes the API serves, under a readable name.
        job_id = submitted.value.json()["id"]
        assert page.get_attribute("#download", "href").startswith("blob:")
        with page.expect_download() as download:
            page.click("#download")
        assert download.value.suggested_filename == f"repaint-{job_id[:8]}-1.png"
        assert open(download.value.path(), "rb").read() == httpx.get(f"{service.url}/jobs/{job_id}/result").content
        page.evaluate(SET_RANGE, ["compare", 50])
        line = box(page, "#compare-line")
        assert abs(line["x"] - (image["x"] + image["width"] / 2)) <= 3, line
        assert "50%" in page.evaluate("getComputedStyle(document.querySelector('#result-image')).clipPath")
        page.mouse.move(image["x"] + image["width"] * 0.8, image["y"] + 10)  # off the handle
        page.screenshot(path=str(SHOTS / "page-result.png"))
        page.keyboard.press("b")
        assert page.get_attribute("#toggle", "aria-pressed") == "true"
        page.keyboard.press("b")
        assert page.evaluate("document.querySelector('#compare').value") == "50"

        # Zoomed: buttons, then Ctrl+wheel; the box keeps its place, the image grows inside it.
        page.click("#zoom-in")
        page.click("#zoom-in")
        zoomed = box(page, "#content")
        assert abs(zoomed["width"] / stage["width"] - 2.25) < 0.02, zoomed
        page.mouse.move(stage["x"] + stage["width"] / 2, stage["y"] + stage["height"] / 2)
        page.keyboard.down("Control")
        page.mouse.wheel(0, -120)
        page.keyboard.up("Control")
        page.wait_for_function(f"document.querySelector('#content').getBoundingClientRect().width > {zoomed['width'] + 1}")
        assert_same_box(box(page, "#stage"), stage)
        assert_same_box(box(page, "#result-image"), box(page, "#image-canvas"))
        # Panning: a plain drag on the result scrolls it.
        before = page.evaluate("document.querySelector('#viewport').scrollLeft")
        stroke(page, (stage["x"] + stage["width"] * 0.7, stage["y"] + stage["height"] * 0.5),
               ((stage["x"] + stage["width"] * 0.5, stage["y"] + stage["height"] * 0.5), 4))
        assert page.evaluate("document.querySelector('#viewport').scrollLeft") > before + 50
        page.screenshot(path=str(SHOTS / "page-zoomed.png"))
        page.click("#zoom-fit")
        assert_same_box(box(page, "#content"), stage)

        # A tall image: the box takes its aspect ratio too.
        page.set_input_files("#file", str(tmp_path / "tall.png"))
        page.wait_for_function("document.querySelector('#image-canvas').width === 240")
        tall = box(page, "#stage")
        assert abs(tall["width"] / tall["height"] - 0.5) < 0.01, tall
        assert_same_box(box(page, "#image-canvas"), tall)
        assert page.is_hidden("#result-image") and page.get_attribute("#view-edit", "aria-selected") == "true"
        # Without API keys on the server, nothing about keys shows.
        assert page.is_hidden("#key-panel") and page.is_hidden("#key-status")
        assert not errors, errors


def test_the_page_asks_for_an_api_key_and_sends_it_everywhere(keyed_service, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    SHOTS.mkdir(parents=True, exist_ok=True)
    landscape().save(tmp_path / "wide.png")
    api = httpx.Client(base_url=keyed_service.url, headers={"Authorization": f"Bearer {PAGE_KEY}"}, timeout=30)
    with browser_page(playwright) as (page, errors):
        responses, saved = [], [False]
        page.on("response", lambda r: responses.append(
            {"path": r.url.removeprefix(keyed_service.url), "status": r.status, "saved": saved[0],
             "auth": r.request.headers.get("authorization")}))
        # The first event stream ends early, as a dropped connection would: the page opens it again.
        event_streams = []

        def drop_first_stream(route):
            event_streams.append(route.request.headers.get("authorization"))
            if len(event_streams) == 1:
                route.fulfill(status=200, headers={"Content-Type": "text/event-stream"},
                              body='id: 1\nevent: status\ndata: {"status":"queued","position":0}\n\n')
            else:
                route.continue_()

        page.route("**/jobs/*/events", drop_first_stream)
        page.goto(keyed_service.url + "/")

        # The first 401 (the models) brings up the key field; nothing else about keys shows yet.
        page.wait_for_selector("#key-panel:not([hidden])")
        first_401 = next(r for r in responses if r["status"] == 401)
        assert first_401["path"] == "/models" and first_401["auth"] is None, first_401
        assert "needs an API key" in page.text_content("#key-why")
        assert "localStorage" in page.text_content("#key-note")
        assert page.get_attribute("#api-key", "type") == "password"
        assert page.is_hidden("#key-status")

        # Paint and submit without a key: refused, and the submission waits for one.
        page.set_input_files("#file", str(tmp_path / "wide.png"))
        page.wait_for_selector("#stage:not(.empty)")
        image = box(page, "#image-canvas")
        page.evaluate(SET_RANGE, ["brush", 44])
        stroke(page, to_screen(image, 226, 150), (to_screen(image, 254, 172), 6))
        with page.expect_response("**/inpaint") as refused:
            page.click("#submit")
        assert refused.value.status == 401
        assert page.is_visible("#key-panel") and page.is_disabled("#submit")
        page.fill("#api-key", "not-the-key")
        page.mouse.move(*to_screen(image, 330, 120))
        page.screenshot(path=str(SHOTS / "page-api-key.png"))

        # A wrong key is refused in turn, and the field says so.
        page.press("#api-key", "Enter")
        page.wait_for_function("document.querySelector('#key-why').textContent.includes('refused')")
        assert page.is_visible("#key-panel") and page.is_disabled("#submit")
        assert any(r["status"] == 401 and r["auth"] == "Bearer not-the-key" for r in responses), responses
        page.fill("#api-key", PAGE_KEY)

        # Saved: the models load and the job is sent again, with the quality the form then shows.
        with page.expect_response(lambda r: r.url.endswith("/inpaint") and r.status == 202) as submitted:
            saved[0] = True
            page.click("#key-form button[type=submit]")
        job_id = submitted.value.json()["id"]
        assert page.is_hidden("#key-panel") and page.is_visible("#key-status")
        assert page.evaluate("localStorage.getItem('repaint.apiKey')") == PAGE_KEY
        params = api.get(f"/jobs/{job_id}").json()["params"]
        balanced = api.get("/models").json()["presets"]["balanced"]
        assert params["preset"] == "balanced" and params["sampler"] == balanced["sampler"], params
        assert {k: params[k] for k in balanced["settings"]} == balanced["settings"], params
        assert params["evaluations_per_sample"] == balanced["evaluations"], params

        # Followed live through the key-carrying stream: progress and the live estimate.
        page.wait_for_selector("#preview-image:not([hidden])", timeout=60_000)
        page.wait_for_function("document.querySelector('#status-line').textContent.includes('evaluations')")
        assert len(event_streams) >= 2 and all(a == f"Bearer {PAGE_KEY}" for a in event_streams), event_streams
        assert page.evaluate("document.querySelector('#preview-image').src").startswith("blob:")

        # The result at full size, and its download.
        natural = shown_result_size(page)
        assert tuple(natural) == WIDE
        assert_same_box(box(page, "#result-image"), box(page, "#image-canvas"))
        assert page.text_content("#status-line") == "Done."
        with page.expect_download() as download:
            page.click("#download")
        assert download.value.suggested_filename == f"repaint-{job_id[:8]}-1.png"
        assert open(download.value.path(), "rb").read() == api.get(f"/jobs/{job_id}/result").content

        # Reloaded: the key is remembered, nothing asks for it.
        page.reload()
        page.wait_for_function("document.querySelector('#model-notes').textContent.includes('worker')")
        assert page.is_hidden("#key-panel") and page.is_visible("#key-status")

        # The model's example comes with the key too.
        page.wait_for_selector("#try-example:not([hidden])")
        page.click("#try-example")
        page.wait_for_function("document.querySelector('#image-canvas').width === 128")
        assert page.evaluate(PAINTED_PIXELS) > 0 and page.is_enabled("#submit")

        after = [r for r in responses if r["saved"]]
        assert not [r for r in after if r["status"] == 401], after
        for path in ("/models", "/models/tiny/example", "/inpaint", f"/jobs/{job_id}", f"/jobs/{job_id}/preview",
                     f"/jobs/{job_id}/result"):
            hits = [r for r in after if r["path"].split("?")[0] == path]
            assert hits and all(r["auth"] == f"Bearer {PAGE_KEY}" for r in hits), (path, hits)

        # Forgotten: the next request is refused and the field comes back.
        page.click("#forget-key")
        page.wait_for_selector("#key-panel:not([hidden])")
        assert page.is_hidden("#key-status")
        assert page.evaluate("localStorage.getItem('repaint.apiKey')") is None
        assert not errors, errors


def test_the_page_modules_import_in_one_direction():
    """The page's ES modules (service/static/js/) import one another without a cycle, as the Python
    packages do (tests/test_imports.py), and each starts by saying what it is for."""
    imports = {}
    for path in sorted(MODULES.glob("*.js")):
        text = path.read_text()
        assert text.startswith("// "), path.name
        imports[path.name] = set(re.findall(r'(?:from|import)\s+"\./([\w-]+\.js)"', text))
    assert not {dep for deps in imports.values() for dep in deps} - imports.keys()
    left = dict(imports)
    while ready := [name for name, deps in left.items() if not deps & left.keys()]:
        for name in ready:
            del left[name]
    assert not left, f"modules in or above an import cycle: {sorted(left)}"


# Settings whose evaluation counts the page computes as models/schedule.py does.
SCHEDULES = [
    {"steps": 250, "jump_length": 10, "jump_n_sample": 10},
    {"steps": 1000, "jump_length": 1, "jump_n_sample": 100},
    {"steps": 97, "jump_length": 7, "jump_n_sample": 3, "n_sample": 2, "jump2_length": 3, "jump2_n_sample": 2,
     "jump3_length": 2, "jump3_n_sample": 2, "start_resampling": 60},
    {"steps": 50, "jump_length": 4, "jump_n_sample": 1, "n_sample": 3, "start_resampling": 20},
]


def test_the_page_runs_a_custom_sampler_and_shows_its_settings(service, tmp_path):
    """The form from GET /models alone (a sampler the page never heard of, the default sampler); then
    the model breaking under it: a worker elsewhere that could not start it, then none that can."""
    from models.sampler_settings import NEUTRAL_SCHEDULE, settings_class
    from models.schedule import count_model_evaluations, jump_schedule
    from worker import startup

    playwright = pytest.importorskip("playwright.sync_api")
    SHOTS.mkdir(parents=True, exist_ok=True)
    landscape().save(tmp_path / "wide.png")
    listing = httpx.get(f"{service.url}/models").json()
    ddnm = next(s for s in listing["samplers"] if s["name"] == "ddnm")
    with browser_page(playwright) as (page, errors):
        # A sampler the page has never heard of, added to the service's own listing as its default: its
        # controls and its evaluation count must come from GET /models alone (checked below).
        page.route("**/models", with_throwaway_sampler)
        page.goto(service.url + "/")
        page.wait_for_function("document.querySelector('#model-notes').textContent.includes('worker')")

        # The page counts evaluations as the service does.
        for settings in SCHEDULES:
            steps = settings["steps"]
            expected = count_model_evaluations(jump_schedule(steps, **{k: v for k, v in settings.items() if k != "steps"}))
            arguments = {**NEUTRAL_SCHEDULE, **{k: v for k, v in settings.items() if k != "steps"}}
            assert in_module(page, "schedule", "m.scheduleEvaluations(arg.steps, arg.arguments)",
                             {"steps": steps, "arguments": arguments}) == expected, settings
        # And each sampler's, from its `schedule` in GET /models.
        for sampler in listing["samplers"]:
            defaults = {param["name"]: param["default"] for param in sampler["parameters"]}
            assert in_module(page, "schedule", "m.samplerEvaluations(arg.sampler, arg.defaults)",
                             {"sampler": sampler, "defaults": defaults}) == \
                settings_class(sampler["name"])(**defaults).evaluations, sampler["name"]

        page.set_input_files("#file", str(tmp_path / "wide.png"))
        page.wait_for_selector("#stage:not(.empty)")
        image = box(page, "#image-canvas")
        page.evaluate(SET_RANGE, ["brush", 44])
        stroke(page, to_screen(image, 226, 150), (to_screen(image, 254, 172), 6))

        # The model default is the listing's `default_sampler` (the throwaway, listed last) with its own
        # defaults (it takes no model's); custom starts from it too.
        default = throwaway_evaluations({"steps": 40, "hops": 3})
        assert page.text_content("#preset option[value='']") == f"model default — throwaway, {default:,} evaluations"
        page.select_option("#preset", "custom")
        assert page.input_value("#sampler") == "throwaway"

        # Custom RePaint: the model's defaults, its rare parameters folded under "more".
        page.select_option("#sampler", "repaint")
        assert page.input_value("#param-steps") == "250" and page.input_value("#param-jump-length") == "10"
        assert page.is_hidden("#param-start-resampling")
        page.click("#more-params summary")
        assert page.is_visible("#param-start-resampling")
        assert "2,410 network evaluations per sample" in page.text_content("#cost")

        # DDNM: its own parameters from GET /models, with their descriptions; an out-of-range value is named.
        page.select_option("#sampler", "ddnm")
        names = page.eval_on_selector_all("#custom input", "is => is.map(i => i.name)")
        assert names == [param["name"] for param in ddnm["parameters"]], names
        eta = next(param for param in ddnm["parameters"] if param["name"] == "eta")
        assert page.input_value("#param-eta") == str(eta["default"])
        assert eta["description"] in page.get_attribute("#param-eta", "data-hint")
        page.fill("#param-eta", "1.5")
        assert page.text_content("#cost") == "eta must be at most 1."
        assert page.get_attribute("#param-eta", "aria-invalid") == "true"
        page.fill("#param-steps", "10")
        page.fill("#param-eta", "0.5")
        assert page.text_content("#cost") == "ddnm: 10 network evaluations per sample."
        page.focus("#param-eta")
        assert eta["description"] in page.text_content("#param-hint")
        page.screenshot(path=str(SHOTS / "page-sampler.png"))

        # The throwaway sampler: its parameters as controls (the advanced one under "more"), its own
        # defaults (it takes no model's), and the count its schedule gives, as Python counts it.
        page.select_option("#sampler", "throwaway")
        names = page.eval_on_selector_all("#custom input", "is => is.map(i => i.name)")
        assert names == ["steps", "hops", "wiggle"], names
        assert page.locator("#params #param-hops").count() == 1
        assert page.locator("#more-params-list #param-wiggle").count() == 1 and page.is_visible("#more-params")
        assert (page.input_value("#param-steps"), page.input_value("#param-hops")) == ("40", "3")
        settings = {"steps": 61, "hops": 7, "wiggle": 0.25}
        for name, value in settings.items():
            page.fill(f"#param-{name}", str(value))
        expected = throwaway_evaluations(settings)
        assert page.text_content("#cost") == f"throwaway: {expected:,} network evaluations per sample."
        page.select_option("#sampler", "ddnm")  # as it was typed
        assert page.text_content("#cost") == "ddnm: 10 network evaluations per sample."

        # Sent: the sampler and its own fields only; the job runs them and the page says so.
        fields = in_module(page, "jobs", "[...(await m.jobForm()).keys()]")
        assert fields == ["image", "mask", "model", "sampler", "steps", "eta", "travel_length", "travel_repeat",
                          "num_samples"], fields
        with page.expect_response("**/inpaint") as submitted:
            page.click("#submit")
        assert submitted.value.status == 202, submitted.value.text()
        params = httpx.get(f"{service.url}/jobs/{submitted.value.json()['id']}").json()["params"]
        assert (params["sampler"], params["steps"], params["eta"]) == ("ddnm", 10, 0.5), params
        assert "preset" not in params and "jump_length" not in params, params
        assert params["evaluations_per_sample"] == 10, params
        page.wait_for_function("document.querySelector('#job-settings').textContent.includes('ddnm')")
        assert page.text_content("#job-settings").startswith("ddnm · steps 10 · eta 0.5 · travel length 1 · "
                                                             "travel repeat 1 — 10 evaluations per sample")
        shown_result_size(page)

        # A worker elsewhere could not start tiny, this one serves it: a quiet word, the reason folded.
        startup.record(service.redis, "tiny", "gpu-box-2", "load", "cannot read /weights/tiny.pt: truncated")
        in_module(page, "models", "m.loadModels()")
        assert page.text_content("#model-notes .failures summary") == "1 other worker could not start it"
        assert "gpu-box-2 (loading, since " in page.text_content("#model-notes .failures")
        assert "cannot read /weights/tiny.pt: truncated" in page.text_content("#model-notes .failures")
        assert page.is_hidden("#model-unavailable") and page.is_enabled("#submit") and page.is_visible("#try-example")

        # Then this worker goes, and fails to start again: no worker can take tiny's jobs. A job sent
        # from the form as it was is refused (503) with the reason, which the page shows; the form
        # then says it of the model, and takes no job for it. (Until the job is sent, the page's
        # periodic refresh of GET /models gets the listing of before: it must not learn it first.)
        before = page.evaluate("fetch('/models').then((r) => r.json())")
        sent = []
        page.unroute("**/models")
        page.route("**/models", lambda route: with_throwaway_sampler(route) if sent else route.fulfill(json=before))
        page.route("**/inpaint", lambda route: (sent.append(True), route.continue_()))
        service.worker.stop()
        startup.record(service.redis, "tiny", "page", "self-test", "RuntimeError: the self-test pass gave NaN")
        wait_until(lambda: "tiny" in httpx.get(f"{service.url}/models").json()["unavailable"], 10, "tiny refused")
        reason = httpx.get(f"{service.url}/models").json()["unavailable"]["tiny"]["reason"]
        assert "self-test" in reason and "0 live worker(s)" in reason, reason
        with page.expect_response("**/inpaint") as refused:
            page.click("#submit")
        assert refused.value.status == 503 and refused.value.json()["detail"] == reason
        page.wait_for_selector("#model-unavailable:not([hidden])")
        assert page.text_content("#error") == reason
        assert page.text_content("#model-unavailable") == f"Cannot take jobs: {reason}"
        assert page.text_content("#model option:checked") == "tiny (unavailable)"
        assert page.is_disabled("#submit") and page.get_attribute("#submit", "title") == reason
        assert page.is_hidden("#try-example") and page.text_content("#model-notes") == ""

        # Opened afresh: the same, and no example offered, in the column or in the empty box.
        page.reload()
        page.wait_for_selector("#model-unavailable:not([hidden])")
        assert page.text_content("#model-unavailable") == f"Cannot take jobs: {reason}"
        assert page.is_hidden("#try-example") and "example" not in page.inner_text("#stage .placeholder")
        page.set_input_files("#file", str(tmp_path / "wide.png"))
        page.wait_for_selector("#stage:not(.empty)")
        image = box(page, "#image-canvas")
        stroke(page, to_screen(image, 226, 150), (to_screen(image, 254, 172), 6))
        assert page.is_disabled("#submit") and page.is_hidden("#notices")
        page.mouse.move(10, 10)
        page.screenshot(path=str(SHOTS / "page-model-broken.png"))

        # A listing with no model to serve still names the ones it cannot, with why.
        page.unroute("**/models")
        page.route("**/models", without_models)
        in_module(page, "models", "m.loadModels()")
        page.wait_for_function("document.querySelector('#model-info').hidden")
        assert page.eval_on_selector_all("#model option", "os => os.map(o => o.textContent)") == ["tiny (unavailable)"]
        assert page.text_content("#model-unavailable") == f"Cannot take jobs: {reason}"
        assert page.is_disabled("#submit") and page.is_hidden("#try-example")
        assert not errors, errors


def throwaway_parameter(name: str, default: int | float, *, minimum: int | float = 1, advanced: bool = False) -> dict:
    return {"name": name, "type": "number" if isinstance(default, float) else "integer", "default": default,
            "minimum": minimum, "maximum": None, "description": f"{name}, for the test", "advanced": advanced}


THROWAWAY_SAMPLER = {
    "name": "throwaway", "description": "a sampler only tests/test_page.py knows",
    "parameters": [throwaway_parameter("steps", 40), throwaway_parameter("wiggle", 0.5, minimum=0.0, advanced=True),
                   throwaway_parameter("hops", 3)],
    "schedule": {"n_sample": 1, "jump_length": "hops", "jump_n_sample": 2, "jump2_length": 1, "jump2_n_sample": 1,
                 "jump3_length": 1, "jump3_n_sample": 1, "start_resampling": 100_000_000},
    "takes_model_defaults": False,
}


def throwaway_evaluations(settings: dict) -> int:
    """Evaluations per sample of THROWAWAY_SAMPLER with `settings`, its schedule resolved as
    models/sampler_settings.py `SamplerSettings.times` resolves a sampler's."""
    from models.schedule import count_model_evaluations, jump_schedule

    arguments = {arg: settings[source] if isinstance(source, str) else source
                 for arg, source in THROWAWAY_SAMPLER["schedule"].items()}
    return count_model_evaluations(jump_schedule(settings["steps"], **arguments))


def with_throwaway_sampler(route):
    """GET /models as the service answers it, with THROWAWAY_SAMPLER added to `samplers` (last) and
    made the `default_sampler`."""
    response = route.fetch()
    listing = response.json()
    listing["samplers"].append(THROWAWAY_SAMPLER)
    listing["default_sampler"] = THROWAWAY_SAMPLER["name"]
    route.fulfill(response=response, json=listing)


def without_models(route):
    """GET /models as the service answers it, less its `models`: as it answers when it can describe
    none of the models it is asked to serve (a folder it cannot read); they stay under `unavailable`."""
    response = route.fetch()
    listing = response.json()
    listing["models"] = []
    route.fulfill(response=response, json=listing)


# ---------------------------------------------------------------- the drawing statistic
#
# `pictureStatistics` of service/static/js/notices.js, mirrored: how much a picture looks like a
# flat-coloured drawing. The page tells users of a model not trained on photographs (faces32) that their
# upload looks like a photograph when `flat` < DRAWING_FLAT, or that it is mostly grey when
# `colour` < DRAWING_COLOUR.

LOOK_SIDE, FLAT_LEVELS, EDGE_LEVELS, GREY_LEVELS = 128, 1.5, 12, 16
DRAWING_FLAT, DRAWING_COLOUR = 0.65, 0.4
# Measured by test_the_drawing_statistic_calibration (faces: 100 held-out seeds at 32 to 512 px and the
# example; photos: scikit-image's, as they are, as JPEG and resized from 64 to 3000 px), (min, max):
CALIBRATION = {
    "faces": {"flat": (0.850, 0.996), "colour": (0.761, 1.0)},
    "colour photos": {"flat": (0.014, 0.449)},
    "grey photos": {"flat": (0.023, 0.836), "colour": (0.0, 0.047)},
}
ROCKET = ROOT / "tests" / "data" / "rocket.jpg"  # public domain (CC0), tests/data/rocket.md


def picture_statistics(rgb: np.ndarray) -> dict | None:
    """{flat, colour} of an [H x W x 3] uint8 picture, as the page computes them (None: too small)."""
    h, w = rgb.shape[:2]
    k = max(1, math.ceil(max(w, h) / LOOK_SIDE))
    hh, ww = h // k, w // k
    if min(hh, ww) < 8:
        return None
    sums = rgb[:hh * k, :ww * k, :3].astype(np.int64).reshape(hh, k, ww, k, 3).sum((1, 3))
    n = k * k
    centre = sums[1:-1, 1:-1]
    lap = np.abs(4 * centre - sums[:-2, 1:-1] - sums[2:, 1:-1] - sums[1:-1, :-2] - sums[1:-1, 2:]).max(-1)
    flat = int((lap <= FLAT_LEVELS * n).sum())
    soft = int(((lap > FLAT_LEVELS * n) & (lap <= EDGE_LEVELS * n)).sum())
    coloured = (sums.max(-1) - sums.min(-1)) > GREY_LEVELS * n
    return {"flat": flat / max(flat + soft, 1), "colour": float(coloured.mean())}


def looks_like_a_drawing(stats: dict) -> bool:
    return stats["flat"] >= DRAWING_FLAT and stats["colour"] >= DRAWING_COLOUR


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=quality)
    return Image.open(io.BytesIO(out.getvalue())).convert("RGB")


def resized(image: Image.Image, longest: int) -> Image.Image:
    f = longest / max(image.size)
    return image.resize((max(1, round(image.width * f)), max(1, round(image.height * f))), Image.Resampling.LANCZOS)


def cloudy_pier(seed: int, size=(640, 427), noise: float = 3.0) -> Image.Image:
    """A photograph-like picture without a photograph: a sky gradient with fractal clouds over a
    textured pier, sensor noise, JPEG. (Flat share 0.07 to 0.33 over seeds, sizes and noise.)"""
    w, h = size
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, h)[:, None, None]
    sky = np.array([70, 110, 170]) * (1 - y) + np.array([190, 200, 215]) * y
    clouds = np.zeros((h, w))
    for octave in range(1, 7):
        n = 2 ** octave + 1
        layer = Image.fromarray(rng.random((n, n)).astype(np.float32), "F").resize((w, h), Image.Resampling.BICUBIC)
        clouds += np.asarray(layer) / 1.7 ** octave
    clouds = (clouds - clouds.min()) / (clouds.max() - clouds.min())
    picture = sky * (1 - 0.6 * clouds[..., None]) + 235 * 0.6 * clouds[..., None]
    rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]
    pier = (rows > 0.7 * h) | ((np.abs(cols - 0.5 * w) < 0.03 * w) & (rows > 0.45 * h))
    grain = Image.fromarray(rng.random((h // 4 + 1, w // 16 + 1)).astype(np.float32), "F")
    wood = 60 + 40 * np.asarray(grain.resize((w, h), Image.Resampling.BICUBIC))
    picture = np.where(pier[..., None], np.stack([wood * 1.1, wood * 0.85, wood * 0.6], -1), picture)
    picture = picture + rng.normal(0, noise, picture.shape)
    return jpeg(Image.fromarray(np.clip(picture + 0.5, 0, 255).astype(np.uint8)), 85)


def held_out_faces(seeds, sizes):
    from service.examples import FACE_UPSCALE, face_example
    from service.faces import face

    for seed in seeds:
        for size in sizes:
            yield f"face {seed} at {size} px", Image.fromarray(face(seed, size)[0])
    yield "the faces32 example", face_example(32 * FACE_UPSCALE, 32).image


def test_the_drawing_statistic_separates_faces_from_photos():
    """The threshold keeps its margin on both sides: held-out faces (what faces32 knows) look like
    drawings, a real photograph (the calibration's most drawing-like one) and generated cloudy skies
    do not, whatever their size or compression."""
    from service.faces import EVAL_SEEDS

    faces = {name: picture_statistics(np.asarray(img))
             for name, img in held_out_faces(EVAL_SEEDS[:30], (32, 48, 64, 128, 256))}
    lowest = min(faces, key=lambda name: faces[name]["flat"])
    assert faces[lowest]["flat"] >= DRAWING_FLAT + 0.15, (lowest, faces[lowest])
    assert min(f["colour"] for f in faces.values()) >= DRAWING_COLOUR + 0.3
    assert faces["the faces32 example"]["flat"] > 0.95

    rocket = Image.open(ROCKET).convert("RGB")
    photos = {"rocket": rocket, "rocket, JPEG 60": jpeg(rocket, 60), "rocket, JPEG 30": jpeg(rocket, 30)}
    photos.update({f"rocket at {n} px": resized(rocket, n) for n in (64, 128, 256, 1024, 3000)})
    photos.update({f"cloudy pier {seed}, {size}": cloudy_pier(seed, size) for seed in range(3)
                   for size in ((640, 427), (200, 150), (1500, 1000))})
    measured = {name: picture_statistics(np.asarray(img)) for name, img in photos.items()}
    highest = max(measured, key=lambda name: measured[name]["flat"])
    assert measured[highest]["flat"] <= DRAWING_FLAT - 0.15, (highest, measured[highest])
    assert not any(looks_like_a_drawing(m) for m in measured.values())
    assert abs(measured["rocket"]["flat"] - CALIBRATION["colour photos"]["flat"][1]) < 0.01, measured["rocket"]


def test_the_drawing_statistic_says_too_small_for_tiny_pictures():
    assert picture_statistics(np.zeros((7, 400, 3), np.uint8)) is None
    one_colour = picture_statistics(np.full((40, 40, 3), (200, 40, 40), np.uint8))
    assert one_colour == {"flat": 1.0, "colour": 1.0}


SKIMAGE_DATA = os.environ.get("REPAINT_SKIMAGE_DATA")  # the skimage/data folder of a scikit-image wheel


@pytest.mark.skipif(not SKIMAGE_DATA, reason="set REPAINT_SKIMAGE_DATA to the skimage/data folder of an unzipped "
                    "scikit-image wheel (pip download scikit-image --no-deps) to rerun the calibration")
def test_the_drawing_statistic_calibration():
    """The numbers in CALIBRATION (and the LOOK comment in service/static/js/notices.js), measured again on
    real photographs: scikit-image's sample photographs (CC0 or public domain; not a dependency of this project)."""
    from service.faces import EVAL_SEEDS

    colour_photos = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                     "retina.jpg", "ihc.png"]
    # Grey, or nearly (the Hubble deep field is black sky); the motion-blurred clock is flat nearly everywhere.
    grey_photos = ["camera.png", "moon.png", "coins.png", "grass.png", "gravel.png", "brick.png", "clock_motion.png",
                   "hubble_deep_field.jpg"]

    def variants(name):
        image = Image.open(Path(SKIMAGE_DATA) / name).convert("RGB")
        yield image
        for quality in (90, 60, 30):
            yield jpeg(image, quality)
        for longest in (64, 96, 128, 256, 1024, 3000):
            yield resized(image, longest)
            yield jpeg(resized(image, longest), 75)

    def extremes(stats, key):
        return round(min(s[key] for s in stats), 3), round(max(s[key] for s in stats), 3)

    faces = [picture_statistics(np.asarray(img)) for _, img in
             held_out_faces(EVAL_SEEDS[:100], (32, 48, 64, 128, 256, 512))]
    colour = [picture_statistics(np.asarray(img)) for name in colour_photos for img in variants(name)]
    grey = [picture_statistics(np.asarray(img)) for name in grey_photos for img in variants(name)]
    measured = {"faces": {"flat": extremes(faces, "flat"), "colour": extremes(faces, "colour")},
                "colour photos": {"flat": extremes(colour, "flat")},
                "grey photos": {"flat": extremes(grey, "flat"), "colour": extremes(grey, "colour")}}
    print(measured)
    assert measured == CALIBRATION
    assert all(looks_like_a_drawing(f) for f in faces) and not any(looks_like_a_drawing(p) for p in colour + grey)


def page_statistics(page) -> dict | None:
    """The page's drawing statistic of the image it shows."""
    return in_module(page, "notices", "m.pictureStatistics(document.getElementById('image-canvas'))")


PAINTED_MASK = """() => {
  const c = document.getElementById('mask-canvas');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let bits = '';
  for (let i = 3; i < d.length; i += 4) bits += d[i] > 127 ? '1' : '0';
  return bits;
}"""
# (width, height, mask box, model size, framing, strategy): the page's plan must be the worker's.
PLANS = [(3000, 2000, (1200, 800, 1500, 1000), 32, "whole", "auto"),
         (3000, 2000, (1200, 800, 1500, 1000), 256, "region", "auto"), (640, 427, (0, 0, 400, 300), 256, "region", "auto"), (640, 427, (600, 10, 640, 40), 32, "region", "crop"),
         (100, 900, (10, 10, 90, 500), 256, "region", "crop"), (640, 427, (10, 10, 20, 20), 32, "region", "resize"),
         (129, 77, (5, 5, 6, 6), 256, "region", "auto")]


def notices(page) -> str:
    return page.text_content("#notices")


def test_the_page_says_what_each_model_knows_and_what_to_expect(faces32_service, tmp_path):
    """faces32 as `make serve` serves it: what it was trained on, where its weights come from, and,
    before anything runs, that a photograph or a large picture will not give what the user expects;
    then "Try an example" gives it a picture it knows, and that runs."""
    from service.faces import EVAL_SEEDS, face
    from worker.geometry import plan

    playwright = pytest.importorskip("playwright.sync_api")
    SHOTS.mkdir(parents=True, exist_ok=True)
    service = faces32_service
    models = {m["name"]: m for m in httpx.get(f"{service.url}/models").json()["models"]}
    example = httpx.get(f"{service.url}/models/faces32/example").json()
    # PNGs decode to the same pixels in Pillow and Chromium: the page's statistic can be compared exactly.
    pictures = {"face128.png": Image.fromarray(face(EVAL_SEEDS[7], 128)[0]),
                "face256.png": Image.fromarray(face(EVAL_SEEDS[8], 256)[0]),
                "pier.png": cloudy_pier(0, (700, 500), noise=0)}
    for name, picture in pictures.items():
        picture.save(tmp_path / name)
    shutil.copy(ROCKET, tmp_path / "rocket.jpg")
    Image.open(ROCKET).resize((3000, 2000), Image.Resampling.LANCZOS).save(tmp_path / "large.jpg", quality=85)
    with browser_page(playwright) as (page, errors):
        page.goto(service.url + "/")
        page.wait_for_function("document.querySelector('#model-notes').textContent.includes('worker')")

        # What the model knows and its size, in view; where its weights come from, one click away.
        assert page.input_value("#model") == "faces32"
        domain = page.text_content("#model-domain")
        assert models["faces32"]["domain"] in domain and "Works at 32×32 px: it sees the whole picture" in domain
        assert page.is_hidden("#model-provenance") and page.is_hidden("#model-licence")
        page.click("#model-origin summary")
        assert models["faces32"]["provenance"] in page.text_content("#model-provenance")
        assert models["faces32"]["licence"] in page.text_content("#model-terms") and page.is_visible("#model-terms")
        # A non-commercial licence is in view without a click or a hover.
        page.select_option("#model", "places256")
        assert page.is_visible("#model-licence") and "non-commercial use only" in page.text_content("#model-licence")
        assert "Works at 256×256 px: it sees a square around the mask" in page.text_content("#model-domain")
        page.select_option("#model", "faces32")
        assert page.is_hidden("#model-licence")
        page.wait_for_selector("#try-example:not([hidden])")

        # The page fits pictures to models as the worker does.
        for width, height, (x0, y0, x1, y1), size, framing, strategy in PLANS:
            fill = np.zeros((height, width), bool)
            fill[y0:y1, x0:x1] = True
            expected = plan(width, height, fill, size, strategy, framing)
            got = in_module(page, "notices", "m.modelPlan(...arg)", [size, framing, strategy, width, height,
                                                                    {"x0": x0, "y0": y0, "x1": x1, "y1": y1}])
            assert (got["strategy"], got["side"]) == (expected.strategy, expected.side), (width, height, got, expected)

        # A held-out face at 4x: what faces32 knows, at the example's scale. Nothing to say.
        page.set_input_files("#file", str(tmp_path / "face128.png"))
        page.wait_for_function("document.querySelector('#image-canvas').width === 128")
        for name in pictures:  # the page's statistic is the Python mirror's, to the last bit
            page.set_input_files("#file", str(tmp_path / name))
            page.wait_for_function(f"document.querySelector('#image-canvas').width === {pictures[name].width}")
            assert page_statistics(page) == picture_statistics(np.asarray(pictures[name])), name
            text = notices(page)
            if name == "face128.png":
                assert text == "" and page.is_hidden("#notices")
            elif name == "face256.png":  # no domain notice; drawn at 8x, so the size one
                assert "photograph" not in text and "one model pixel per 8.0×8.0 image pixels" in text, text
            else:
                assert "This looks like a photograph" in text, text

        # A photograph: the domain notice and the size notice, before anything runs.
        page.set_input_files("#file", str(tmp_path / "rocket.jpg"))
        page.wait_for_function("document.querySelector('#image-canvas').width === 640")
        text = notices(page)
        assert "This looks like a photograph. faces32 was not trained on photographs" in text, text
        assert "noise-like colour" in text and "try the example" in text and "(45% of its smooth areas" in text
        assert "Much larger than the model. faces32 works at 32×32 px and sees the whole picture: this 640×427 " \
               "image is scaled down and the fill scaled back up (one model pixel per 20×20 image pixels)" in text
        assert page.is_enabled("#try-example")
        # Over a lens flare, as the user who reported it did: the notice counts the mask's model pixels.
        flare = paint_line(page, 640, 30, (360, 392), (372, 402), steps=3)
        longer = max(flare["x1"] - flare["x0"], flare["y1"] - flare["y0"])
        assert f"your mask, {longer} px across, is filled with about 2 px of detail" in notices(page), notices(page)
        # Right under the button (which stays where it was: nothing moves under the pointer).
        submit, first = box(page, "#submit"), box(page, "#notices .notice:first-child")
        assert 0 <= first["y"] - (submit["y"] + submit["height"]) <= 20, (first, submit)
        page.set_viewport_size({"width": 1280, "height": 1100})  # the whole column: info and notices
        page.mouse.move(10, 10)
        page.screenshot(path=str(SHOTS / "page-model-info.png"))
        page.click("#model-origin summary")  # folded again

        # Run anyway, on laptop screens: with both notices in the column, the job's progress and Cancel
        # are in view under the box while it runs, the before/after slider and Download once it is done.
        # (DDNM: 200 steps, canceled; then 10.)
        page.select_option("#preset", "custom")
        page.select_option("#sampler", "ddnm")
        page.fill("#param-steps", "200")
        page.click("#submit")
        page.wait_for_function("document.querySelector('#progress').value >= 0.05")
        for screen in SCREENS:
            page.set_viewport_size(screen)
            assert page.locator("#notices .notice").count() == 2
            assert_in_view(page, "#stage", "#progress", "#status-line", "#cancel")
        page.screenshot(path=str(SHOTS / "page-running-1366x768.png"))
        page.click("#cancel")
        page.wait_for_function("document.querySelector('#status-line').textContent === 'Canceled.'")
        assert page.is_hidden("#cancel") and page.get_attribute("#view-edit", "aria-selected") == "true"
        page.fill("#param-steps", "10")
        page.click("#submit")
        shown_result_size(page)
        for screen in reversed(SCREENS):
            page.set_viewport_size(screen)
            assert page.locator("#notices .notice").count() == 2 and page.is_hidden("#run-tools")
            assert_in_view(page, "#stage", "#compare", "#toggle", "#download", "#continue")
        page.screenshot(path=str(SHOTS / "page-result-1280x900.png"))
        page.set_viewport_size({"width": 1280, "height": 820})
        page.keyboard.press("Control+z")

        # Switched after the upload: the notices follow the model. tiny says nothing of its domain; a
        # model of photographs has nothing to say of a photograph, only of its scale once there is a mask.
        page.select_option("#model", "tiny")
        assert notices(page) == ""
        page.select_option("#model", "places256")
        assert notices(page) == ""
        painted = paint_line(page, 640, 40, (100, 150), (500, 150), steps=8)
        longer = max(painted["x1"] - painted["x0"], painted["y1"] - painted["y0"])
        assert 435 <= longer <= 445, painted
        # A 440 px mask: no square with context fits in 427 px, so the whole picture is scaled to 256 px.
        text = notices(page)
        assert "Much larger" not in text  # 640 / 256 = 2.5 image pixels per model pixel
        page.select_option("#model", "faces32")
        text = notices(page)
        assert "This looks like a photograph." in text
        assert f"your mask, {longer} px across, is filled with about {round(longer / 20)} px of detail" in text, text
        page.keyboard.press("Control+z")

        # A large picture: the scale, from the whole-picture rule of faces32.
        page.set_input_files("#file", str(tmp_path / "large.jpg"))
        page.wait_for_function("document.querySelector('#image-canvas').width === 3000")
        text = notices(page)
        assert "this 3,000×2,000 image is scaled down and the fill scaled back up (one model pixel per 94×94 " \
               "image pixels)" in text, text
        # On a model of scenes, a large mask: a crop around it, scaled down to 256 px.
        page.select_option("#model", "places256")
        b = paint_line(page, 3000, 200, (1000, 1000), (1700, 1000), steps=8)
        fill = np.zeros((2000, 3000), bool)
        fill[b["y0"]:b["y1"], b["x0"]:b["x1"]] = True
        expected = plan(3000, 2000, fill, 256, "auto", "region")
        longer, per = max(b["x1"] - b["x0"], b["y1"] - b["y0"]), expected.side / 256
        assert expected.strategy == "crop" and per > 4, expected
        assert f"places256 works at 256×256 px: it crops a {expected.side:,} px square around the mask and scales " \
               f"it down, so your mask, {longer:,} px across, is filled with about {round(longer / per)} px of detail " \
               f"and scaled up (one model pixel per {per:.1f}×{per:.1f} image pixels)" in notices(page), notices(page)
        page.select_option("#model", "faces32")

        # Try an example: the picture and its mask, exactly as the API gives them; nothing to warn of.
        page.click("#try-example")
        page.wait_for_function("document.querySelector('#image-canvas').width === 128")
        mask = np.asarray(data_url_image(example["mask"])) > 127
        assert page.evaluate(PAINTED_MASK) == "".join("1" if v else "0" for v in mask.ravel())
        assert page_statistics(page) == picture_statistics(np.asarray(data_url_image(example["image"]).convert("RGB")))
        assert notices(page) == ""
        note = page.text_content("#example-note")
        assert page.is_visible("#example-note") and note.startswith("Example for faces32: a held-out procedural face")
        assert "the mask hides the eye on the left of the picture" in note and "strategy=resize" in note
        assert page.is_enabled("#submit") and page.is_enabled("#undo")
        page.mouse.move(10, 10)
        page.screenshot(path=str(SHOTS / "page-example.png"))
        # On a model of photographs, a drawing gets a milder note, and the example's fields stay home.
        page.select_option("#model", "places256")
        assert notices(page).startswith("This looks like a flat-coloured drawing. places256 was trained on photographs")
        assert page.locator("#notices .notice.mild").count() == 1
        assert "Made for faces32, not for places256." in page.text_content("#example-note")
        assert "strategy" not in in_module(page, "jobs", "[...(await m.jobForm()).keys()]")
        page.select_option("#model", "faces32")

        # It runs, with the example's fields (cheap settings: DDNM, 10 steps).
        page.select_option("#preset", "custom")
        page.select_option("#sampler", "ddnm")
        page.fill("#param-steps", "10")
        fields = in_module(page, "jobs",
                           "[...(await m.jobForm()).entries()].filter(([k]) => k !== 'image' && k !== 'mask')")
        assert ["strategy", "resize"] in fields and ["model", "faces32"] in fields, fields
        with page.expect_response("**/inpaint") as submitted:
            page.click("#submit")
        assert submitted.value.status == 202, submitted.value.text()
        assert shown_result_size(page) == (128, 128)
        for screen in SCREENS:  # a square picture, and the example's caption under the box too
            page.set_viewport_size(screen)
            assert_in_view(page, "#stage", "#example-note", "#compare", "#download")
        page.set_viewport_size({"width": 1280, "height": 820})
        job = httpx.get(f"{service.url}/jobs/{submitted.value.json()['id']}").json()
        assert job["status"] == "succeeded" and job["plan"]["strategy"] == "resize", job
        assert (job["params"]["sampler"], job["params"]["steps"]) == ("ddnm", 10)

        # Another image is not the example: its fields are no longer sent.
        page.set_input_files("#file", str(tmp_path / "face128.png"))
        page.wait_for_function("document.querySelector('#example-note').hidden")
        fields = in_module(page, "jobs", "[...(await m.jobForm()).keys()]")
        assert "strategy" not in fields
        assert not errors, errors


def data_url_image(url: str) -> Image.Image:
    import base64

    assert url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
