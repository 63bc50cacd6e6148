"""The web page in a real browser (Debian's Chromium, driven by Playwright) against the real API and a
`tiny` worker: each state is checked in the DOM and saved to docs/screenshots/page-<state>.png."""

from __future__ import annotations

import shutil

import httpx
import pytest
from PIL import Image, ImageDraw

from tests.procs import ROOT, ApiProcess, WorkerProcess

SHOTS = ROOT / "docs" / "screenshots"
WIDE = (480, 240)
# Long enough (460 evaluations) to see the job running with a live estimate, which the server only
# serves past a third of the evaluations (custom RePaint parameters).
RUNNING = {"param-steps": "100", "param-jump-length": "10", "param-jump-n-sample": "5"}


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Debian's chromium is needed for the page test (apt-get install chromium)")
    return path


@pytest.fixture()
def service(redis_server, redis_db):
    api = ApiProcess(redis_server.url)
    worker = WorkerProcess(redis_server.url, "page", REPAINT_PREVIEW_INTERVAL="0.3").wait_ready(redis_db)
    yield api
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


def to_screen(canvas_box: dict, x: float, y: float) -> tuple[float, float]:
    """Screen coordinates of image pixel (x, y) in the (unzoomed) box."""
    return (canvas_box["x"] + x * canvas_box["width"] / WIDE[0], canvas_box["y"] + y * canvas_box["height"] / WIDE[1])


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
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 820})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(service.url + "/")

            # Empty: the models' notes and the presets in the API's words (balanced is chosen first).
            page.wait_for_function("document.querySelector('#model').options.length > 0")
            page.wait_for_function("document.querySelector('#model-notes').textContent.includes('worker')")
            assert "Tiny random-weight" in page.text_content("#model-notes")
            assert "1 worker" in page.text_content("#model-notes")
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
            page.mouse.move(*to_screen(image, 140, 60))
            page.mouse.down()
            page.mouse.move(*to_screen(image, 340, 60), steps=10)
            page.mouse.up()
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
            page.mouse.move(*to_screen(image, 226, 150))
            page.mouse.down()
            page.mouse.move(*to_screen(image, 254, 172), steps=6)
            page.mouse.move(*to_screen(image, 236, 186), steps=4)
            page.mouse.up()
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
            page.mouse.move(stage["x"] + stage["width"] * 0.7, stage["y"] + stage["height"] * 0.5)
            page.mouse.down()
            page.mouse.move(stage["x"] + stage["width"] * 0.5, stage["y"] + stage["height"] * 0.5, steps=4)
            page.mouse.up()
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
        finally:
            browser.close()


def test_the_page_asks_for_an_api_key_and_sends_it_everywhere(keyed_service, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    SHOTS.mkdir(parents=True, exist_ok=True)
    landscape().save(tmp_path / "wide.png")
    api = httpx.Client(base_url=keyed_service.url, headers={"Authorization": f"Bearer {PAGE_KEY}"}, timeout=30)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 820})
            errors, responses, saved = [], [], [False]
            page.on("pageerror", lambda e: errors.append(str(e)))
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
            page.mouse.move(*to_screen(image, 226, 150))
            page.mouse.down()
            page.mouse.move(*to_screen(image, 254, 172), steps=6)
            page.mouse.up()
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

            after = [r for r in responses if r["saved"]]
            assert not [r for r in after if r["status"] == 401], after
            for path in ("/models", "/inpaint", f"/jobs/{job_id}", f"/jobs/{job_id}/preview", f"/jobs/{job_id}/result"):
                hits = [r for r in after if r["path"].split("?")[0] == path]
                assert hits and all(r["auth"] == f"Bearer {PAGE_KEY}" for r in hits), (path, hits)

            # Forgotten: the next request is refused and the field comes back.
            page.click("#forget-key")
            page.wait_for_selector("#key-panel:not([hidden])")
            assert page.is_hidden("#key-status")
            assert page.evaluate("localStorage.getItem('repaint.apiKey')") is None
            assert not errors, errors
        finally:
            browser.close()


# Settings whose evaluation counts the page computes as models/schedule.py does.
SCHEDULES = [
    {"steps": 250, "jump_length": 10, "jump_n_sample": 10},
    {"steps": 1000, "jump_length": 1, "jump_n_sample": 100},
    {"steps": 97, "jump_length": 7, "jump_n_sample": 3, "n_sample": 2, "jump2_length": 3, "jump2_n_sample": 2,
     "jump3_length": 2, "jump3_n_sample": 2, "start_resampling": 60},
    {"steps": 50, "jump_length": 4, "jump_n_sample": 1, "n_sample": 3, "start_resampling": 20},
]


def test_the_page_runs_a_custom_sampler_and_shows_its_settings(service, tmp_path):
    from models.schedule import count_model_evaluations, jump_schedule

    playwright = pytest.importorskip("playwright.sync_api")
    SHOTS.mkdir(parents=True, exist_ok=True)
    landscape().save(tmp_path / "wide.png")
    listing = httpx.get(f"{service.url}/models").json()
    ddnm = next(s for s in listing["samplers"] if s["name"] == "ddnm")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 820})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(service.url + "/")
            page.wait_for_function("document.querySelector('#model-notes').textContent.includes('worker')")

            # The page counts evaluations as the service does.
            for settings in SCHEDULES:
                steps = settings["steps"]
                expected = count_model_evaluations(jump_schedule(steps, **{k: v for k, v in settings.items() if k != "steps"}))
                assert page.evaluate("(s) => scheduleEvaluations(s.steps, s)", settings) == expected, settings

            page.set_input_files("#file", str(tmp_path / "wide.png"))
            page.wait_for_selector("#stage:not(.empty)")
            image = box(page, "#image-canvas")
            page.evaluate(SET_RANGE, ["brush", 44])
            page.mouse.move(*to_screen(image, 226, 150))
            page.mouse.down()
            page.mouse.move(*to_screen(image, 254, 172), steps=6)
            page.mouse.up()

            # Custom: the RePaint form has the model's defaults, its rare parameters folded under "more".
            page.select_option("#preset", "custom")
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

            # Sent: the sampler and its own fields only; the job runs them and the page says so.
            fields = page.evaluate("async () => [...(await jobForm()).keys()]")
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
            assert not errors, errors
        finally:
            browser.close()
