"""Real photos of any size and shape: plans, modes, exact unmasked pixels, bounded seams."""

from __future__ import annotations

import io

import numpy as np
import torch
import pytest
from PIL import Image

from models.sampler_settings import RePaintSettings
from worker import blending, encoding, geometry
from worker.params import JobParams
from worker.runtime import JobInputError, Runtime
from worker.settings import WorkerSettings


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A photograph stand-in: smooth light, some objects and sensor noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    base = np.stack([120 + 80 * np.sin(3 * xx + c) * np.cos(2 * yy + c) for c in (0, 1, 2)], -1)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.2)
        base[((xx - cx) ** 2 + (yy - cy) ** 2) < r * r] = rng.uniform(0, 255, 3)
    base += rng.normal(0, 6, base.shape)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def box_mask(width, height, box) -> np.ndarray:
    fill = np.zeros((height, width), dtype=bool)
    x0, y0, x1, y1 = box
    fill[y0:y1, x0:x1] = True
    return fill


@pytest.fixture(scope="module")
def runtime():
    return Runtime(WorkerSettings(model="tiny", device="cpu"))


def test_small_mask_gets_a_crop_around_it_inside_the_image():
    fill = box_mask(4000, 3000, (1000, 800, 1100, 900))
    p = geometry.plan(4000, 3000, fill, 256)
    assert p.strategy == "crop" and p.side == 256
    x0, y0, x1, y1 = p.box
    assert 0 <= x0 <= 1000 and x1 >= 1100 and 0 <= y0 <= 800 and y1 >= 900 and x1 <= 4000 and y1 <= 3000


def test_border_touching_mask_shifts_the_crop_inside():
    fill = box_mask(640, 480, (600, 0, 640, 30))
    p = geometry.plan(640, 480, fill, 256)
    assert p.strategy == "crop" and p.box[2] == 640 and p.box[1] == 0


def test_mask_spanning_the_image_gets_the_padded_resize():
    fill = box_mask(300, 1000, (0, 100, 300, 900))
    p = geometry.plan(300, 1000, fill, 256)
    assert p.strategy == "resize" and p.side == 1000 and p.box == (-350, 0, 650, 1000)
    assert geometry.plan(300, 1000, fill, 256, "crop").strategy == "crop"


def test_padding_is_unknown_for_the_model():
    img = photo(300, 100)
    fill = box_mask(300, 100, (10, 10, 20, 20))
    p = geometry.plan(300, 100, fill, 32, "resize")
    _, keep = geometry.model_input(img, fill, p)
    assert not keep[0].any() and not keep[-1].any()  # padded rows above and below
    assert keep[16].sum() > 20


def test_the_band_is_one_in_the_mask_and_fades_to_zero_outside_it():
    fill = box_mask(50, 50, (10, 10, 40, 40))
    w = blending.band_weights(fill, 4)
    assert (w[fill] == 1).all()
    assert 1 > w[25, 9] > w[25, 7] > w[25, 6] > 0 and w[25, 5] == 0  # 4 px to the left: 9, 8, 7, 6
    assert (w[:5] == 0).all() and (w[45:] == 0).all()
    assert (blending.band_weights(fill, 0) == fill).all()


CASES = [  # (size, mode, mask box, strategy)
    ((640, 480), "RGB", (100, 100, 160, 150), "auto"),
    ((480, 640), "RGBA", (0, 0, 40, 40), "auto"),
    ((1600, 400), "L", (1500, 300, 1600, 400), "crop"),
    ((300, 1000), "RGB", (0, 50, 300, 950), "auto"),
    ((256, 256), "P", (50, 50, 200, 200), "resize"),
    ((200, 120), "I;16", (20, 20, 60, 60), "auto"),
    ((300, 200), "LA", (100, 50, 180, 120), "resize"),
    ((900, 600), "RGB", (400, 250, 520, 330), "resize"),  # a small mask, the whole photo to 32 px
]
BLEND, DILATE = 3, 2


def in_mode(img: Image.Image, mode: str) -> Image.Image:
    size = img.size
    if mode == "RGBA":
        img = img.convert("RGBA")
        img.putalpha(Image.fromarray((np.arange(size[0] * size[1]) % 251).reshape(size[1], size[0]).astype(np.uint8)))
        return img
    if mode == "P":
        return img.quantize(64)
    if mode == "I;16":
        return Image.fromarray(np.asarray(img.convert("L")).astype(np.uint16) * 257)
    return img.convert(mode)


def inpaint(runtime, img: Image.Image, fill: np.ndarray, strategy: str, **fields) -> bytes:
    image_png, mask_png = io.BytesIO(), io.BytesIO()
    img.save(image_png, format="PNG")
    Image.fromarray(fill.astype(np.uint8) * 255).save(mask_png, format="PNG")
    params = JobParams(seed=0, sampler=RePaintSettings(steps=5, jump_length=5, jump_n_sample=1), strategy=strategy, blend=BLEND,
                       mask_dilate=DILATE, **fields)
    (out_png,) = runtime.inpaint(image_png.getvalue(), mask_png.getvalue(), params)
    return out_png


@pytest.mark.parametrize("size, mode, box, strategy", CASES)
def test_results_keep_size_mode_and_every_pixel_beyond_the_band(runtime, size, mode, box, strategy):
    img = in_mode(photo(*size, seed=size[0]), mode)
    fill = box_mask(*size, box)
    out = Image.open(io.BytesIO(inpaint(runtime, img, fill, strategy)))
    assert out.size == img.size and out.mode == img.mode
    grown = geometry.dilate(fill, DILATE)
    beyond = blending.band_weights(grown, BLEND) == 0
    before, after = np.asarray(img), np.asarray(out)
    assert (before[beyond] == after[beyond]).all(), "a pixel beyond the band changed"
    assert (before[grown] != after[grown]).any(), "nothing was painted"
    if mode in ("RGBA", "LA"):
        assert (before[..., -1][~grown] == after[..., -1][~grown]).all() and (after[..., -1][grown] == 255).all()


@pytest.mark.parametrize("size, mode, box, strategy", CASES)
def test_nothing_under_the_mask_shows_in_the_result(runtime, size, mode, box, strategy):
    """Object removal: what the mask hid (after mask_dilate) must not change a single pixel."""
    img = in_mode(photo(*size, seed=size[0]), mode)
    fill = box_mask(*size, box)
    hidden = geometry.dilate(fill, DILATE)
    other = np.array(img)
    rng = np.random.default_rng(1)
    other[hidden] = rng.integers(0, 256 if other.dtype == np.uint8 else 65536, other[hidden].shape).astype(other.dtype)
    other_img = Image.fromarray(other) if img.mode != "P" else img.copy()
    if img.mode == "P":
        other_img.putdata(list(other.reshape(-1)))
    assert not np.array_equal(np.asarray(other_img), np.asarray(img))
    assert inpaint(runtime, img, fill, strategy) == inpaint(runtime, other_img, fill, strategy)


def test_jpeg_and_webp_outputs_keep_the_upload_s_size(runtime):
    img = photo(120, 90)
    mask = Image.fromarray(box_mask(120, 90, (30, 30, 60, 60)).astype(np.uint8) * 255)
    buf, mbuf = io.BytesIO(), io.BytesIO()
    img.save(buf, format="PNG")
    mask.save(mbuf, format="PNG")
    for fmt, magic in (("jpeg", b"\xff\xd8"), ("webp", b"RIFF")):
        params = JobParams(seed=0, sampler=RePaintSettings(steps=5, jump_length=5, jump_n_sample=1), output_format=fmt)
        (data,) = runtime.inpaint(buf.getvalue(), mbuf.getvalue(), params)
        assert data.startswith(magic) and Image.open(io.BytesIO(data)).size == (120, 90)


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_sixteen_bit_images_are_scaled_not_clipped_in_8_bit_formats(fmt, mode):
    grey = np.asarray(photo(64, 48).convert("L"))
    wide = Image.fromarray(grey.astype(np.uint16) * 257)  # the same picture on 16-bit levels
    if mode == "I":
        wide = wide.convert("I")
    decoded = np.asarray(Image.open(io.BytesIO(encoding.encode(wide, fmt))).convert("L")).astype(int)
    # Clipping at 255 would turn almost every pixel white; scaling keeps the picture (lossy codecs
    # move levels a little).
    assert np.abs(decoded - grey).mean() < 3 and (decoded < 250).mean() > 0.9


def test_the_worker_refuses_outputs_its_encoder_cannot_write(runtime):
    wide = Image.new("RGB", (16384, 2), (10, 20, 30))
    mask = Image.new("L", (16384, 2), 0)
    mask.paste(255, (0, 0, 10, 2))
    image_png, mask_png = io.BytesIO(), io.BytesIO()
    wide.save(image_png, format="PNG")
    mask.save(mask_png, format="PNG")
    params = JobParams(seed=0, sampler=RePaintSettings(steps=5, jump_length=5, jump_n_sample=1), output_format="webp")
    # Before sampling, not after (the API refuses it at submit; a worker checks again).
    with pytest.raises(JobInputError, match="webp results can be at most 16383"):
        runtime.prepare(image_png.getvalue(), mask_png.getvalue(), params)


def test_previews_show_the_estimate_in_the_image_at_a_bounded_size(runtime):
    img = photo(2000, 1000)
    fill = box_mask(2000, 1000, (900, 400, 1100, 600))
    image_png, mask_png = io.BytesIO(), io.BytesIO()
    img.save(image_png, format="PNG")
    Image.fromarray(fill.astype(np.uint8) * 255).save(mask_png, format="PNG")
    params = JobParams(seed=0, sampler=RePaintSettings(steps=5, jump_length=5, jump_n_sample=1))
    prepared = runtime.prepare(image_png.getvalue(), mask_png.getvalue(), params)
    pixels = runtime._model_pixels(torch.zeros(1, 3, 32, 32), prepared)[0]  # mid-grey where the model fills
    preview = np.asarray(Image.open(io.BytesIO(runtime.preview_png(pixels, prepared, params))))
    assert preview.shape == (512, 1024, 3)
    small = np.asarray(img.resize((1024, 512), Image.Resampling.BILINEAR)).astype(int)
    far = np.ones((512, 1024), bool)
    far[150:362, 400:624] = False  # the mask (460..564 x 205..307 here) and its band
    assert np.abs(preview[far].astype(int) - small[far]).max() <= 1  # the image itself around it
    assert np.abs(preview[256, 512].astype(int) - 128).max() <= 1     # the estimate in place


def test_auto_shows_face_models_the_whole_face():
    """A crop around an eye would show a model of whole faces half a face, zoomed."""
    fill = box_mask(128, 128, (30, 30, 60, 60))
    assert geometry.plan(128, 128, fill, 32, "auto").strategy == "crop"
    assert geometry.plan(128, 128, fill, 32, "auto", framing="whole").strategy == "resize"
    assert geometry.plan(128, 128, fill, 32, "crop", framing="whole").strategy == "crop"  # asked for


def test_a_palette_image_with_a_transparent_colour_is_filled_opaque(runtime):
    """Filled pixels mapped to a palette could land on its transparent entry: such uploads
    are kept as RGBA, and the fill is opaque."""
    from service.uploads import open_image, prepare

    img = photo(64, 64).quantize(31)
    indices = np.array(img)
    indices[16:48, 16:48] = 31  # the hole: a transparent palette entry
    holed = Image.frombytes("P", img.size, indices.tobytes())
    holed.putpalette(img.getpalette()[:93] + [0, 0, 0])
    holed.info["transparency"] = 31
    sent = io.BytesIO()
    holed.save(sent, format="PNG", transparency=31)
    # No mask: the transparent pixels are the region to fill. The bytes are stored as sent.
    prepared = prepare(sent.getvalue(), open_image(sent.getvalue(), "image", 10**6), None)
    assert prepared.mode == "RGBA"
    params = JobParams(seed=0, sampler=RePaintSettings(steps=5, jump_length=5, jump_n_sample=1))
    for seed in range(3):
        (out_png,) = runtime.inpaint(prepared.image_bytes, prepared.mask_png, JobParams(**{**params.__dict__, "seed": seed}))
        assert (np.asarray(Image.open(io.BytesIO(out_png)))[16:48, 16:48, 3] == 255).all()


def test_previews_are_encoded_without_torch_so_their_thread_starts_no_openmp_team(runtime):
    """A torch op on a thread other than the serving one starts a second OpenMP team; libgomp,
    then counting more threads than cores, has the serving team sleep and wake at every parallel
    region (the service ran 2x slower than the bare sampler at 2 threads). The reporter's thread
    therefore gets pixels (Runtime.estimate_pixels, on the serving thread) and runs no torch op."""
    import os
    import threading

    img, fill = photo(200, 100), box_mask(200, 100, (80, 30, 120, 70))
    image_png, mask_png = io.BytesIO(), io.BytesIO()
    img.save(image_png, format="PNG")
    Image.fromarray(fill.astype(np.uint8) * 255).save(mask_png, format="PNG")
    params = JobParams(seed=0, sampler=RePaintSettings(steps=5, jump_length=5, jump_n_sample=1))
    prepared = runtime.prepare(image_png.getvalue(), mask_png.getvalue(), params)
    batch = runtime.new_batch()
    samples = runtime.add_samples(batch, prepared, params)
    pixels = runtime.estimate_pixels(batch, samples[:1], [prepared])[0]  # on the serving thread
    assert isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8 and pixels.shape == (32, 32, 3)

    def threads() -> int:
        return len(os.listdir("/proc/self/task"))

    counted = {}

    def reporter_thread():
        before = threads()
        runtime.preview_png(pixels, prepared, params)
        counted["started"] = threads() - before

    torch.set_num_threads(2)
    t = threading.Thread(target=reporter_thread)
    t.start()
    t.join()
    assert counted["started"] == 0, f"encoding a preview started {counted['started']} thread(s)"
