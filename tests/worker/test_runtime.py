"""The resident runtime: PNG in, PNG out, known pixels exact, sizes and labels checked."""

from __future__ import annotations

import io

import numpy as np
import torch
import pytest
from PIL import Image

from tests.conftest import face_and_mask, png_bytes
from models.sampler_settings import RePaintSettings
from worker.blending import band_weights
from worker.params import JobParams
from worker.runtime import JobInputError, Runtime
from worker.settings import WorkerSettings


@pytest.fixture(scope="module")
def runtime():
    return Runtime(WorkerSettings(model="tiny", device="cpu"))


def test_runtime_inpaints_png_and_keeps_known_pixels(runtime):
    image, mask = face_and_mask(seed=4)
    steps = []
    outs = runtime.inpaint(png_bytes(image), png_bytes(mask),
                           JobParams(seed=1, sampler=RePaintSettings(steps=10, jump_length=5, jump_n_sample=2), num_samples=2),
                           progress=lambda i, n, x0: steps.append((i, n)))
    assert len(outs) == 2 and outs[0] != outs[1]
    assert steps[-1] == (15, 15)
    known = band_weights(np.asarray(mask) >= 128, 2) == 0  # the default band: 2 px at this scale
    for png in outs:
        out = np.asarray(Image.open(io.BytesIO(png)))
        assert out.shape == (32, 32, 3)
        assert (out[known] == np.asarray(image)[known]).all()


def test_runtime_refuses_labels_for_unconditional_models(runtime):
    image, mask = face_and_mask()
    with pytest.raises(JobInputError, match="not class-conditional"):
        runtime.inpaint(png_bytes(image), png_bytes(mask),
                        JobParams(seed=1, sampler=RePaintSettings(steps=5, jump_length=5, jump_n_sample=1), class_label=3))


def test_describe_is_what_the_api_needs(runtime):
    d = runtime.describe()
    assert d["name"] == "tiny" and d["image_size"] == 32 and d["class_cond"] is False
    assert d["defaults"] == {"steps": 250, "jump_length": 10, "jump_n_sample": 10, "n_sample": 1, "classifier_scale": 0.0}


@pytest.mark.parametrize("model", ["tiny", "faces32"])
def test_every_shipped_model_passes_the_self_test(model):
    Runtime(WorkerSettings(model=model, device="cpu")).self_test()


def test_self_test_runs_one_forward_pass_before_any_job(runtime):
    runtime.self_test()  # a working device: no error

    class Broken(torch.nn.Module):
        def forward(self, *args, **kwargs):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    net, runtime.net = runtime.net, Broken()
    try:
        with pytest.raises(RuntimeError, match="illegal memory access"):
            runtime.self_test()
    finally:
        runtime.net = net


def test_a_pass_never_holds_more_samples_than_the_schedulers_limit():
    """A job of four samples under a limit of two (a lone job larger than the limit, or one left
    after running out of memory) runs over passes of two, with the samples of one pass of four."""
    image, mask = face_and_mask(seed=5)
    params = JobParams(seed=2, num_samples=4, sampler=RePaintSettings(steps=5, jump_length=5, jump_n_sample=1))
    runtime = Runtime(WorkerSettings(model="tiny", device="cpu", max_batch=2))
    eager = runtime.net
    widths = []

    def counting(x, t, y=None):
        widths.append(x.shape[0])
        return eager(x, t, y)

    prepared = runtime.prepare(png_bytes(image), png_bytes(mask), params)
    results = {}
    for cap in (2, None):
        widths.clear()
        runtime.net = counting  # what `network()` serves eagerly
        with torch.inference_mode():
            batch = runtime.new_batch()
            states = runtime.add_samples(batch, prepared, params)
            while not batch.done:
                runtime.step(batch, cap=cap)
        results[cap] = runtime.result(batch, states)
        assert max(widths) == (2 if cap == 2 else 4)
    torch.testing.assert_close(results[2], results[None], atol=1e-4, rtol=1e-4)
