"""The worker's speed settings (worker.speed, worker.cuda_graphs): what `auto` picks on each
device, that bucket padding changes no result, and that the fast CUDA precision keeps fidelity.

The precision checks run on the CPU (bfloat16 autocast exists there too): the GPU computes the
same function in the same number format, with other kernels. Tests marked `cuda` run only where
a GPU is present (the device tool's machine); CI has none.
"""

from __future__ import annotations

import copy
import dataclasses
import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

import models
from models.sampler_settings import RePaintSettings
from service.examples import example_for
from tests.conftest import face_and_mask, golden_tiny_unet, load_reference, png_bytes
from worker import speed
from worker.params import JobParams
from worker.runtime import Runtime
from worker.settings import WorkerSettings

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# ---- what `auto` picks ---------------------------------------------------------------------

def test_auto_on_cpu_is_plain_float32_as_the_golden_tests_run():
    plan = speed.plan_for(WorkerSettings(), CPU, models.get_preset("faces32"), 8)
    assert plan == speed.SpeedPlan(dtype=torch.float32, autocast=None, channels_last=False, buckets=(),
                                   cuda_graphs=False, compile=False)


@pytest.mark.parametrize("bf16", [True, False])
def test_auto_on_cuda_is_what_measured_fastest(monkeypatch, bf16):
    """docs/gpu.md: half-precision autocast, compiled, CUDA graphs, batch buckets; channels-last
    measured slower, so it stays off."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    plan = speed.plan_for(WorkerSettings(), CUDA, models.get_preset("celeba256"), 16)
    assert plan.dtype == torch.float32 and plan.autocast == (torch.bfloat16 if bf16 else torch.float16)
    assert plan.buckets == (1, 2, 4, 8, 16) and plan.cuda_graphs and plan.compile and not plan.channels_last


def test_auto_on_cuda_keeps_the_reference_fp16_layout_for_use_fp16_confs(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    preset = models.get_preset("imagenet256")
    preset = dataclasses.replace(preset, conf={**preset.conf, "use_fp16": True})
    plan = speed.plan_for(WorkerSettings(), CUDA, preset, 16)
    assert plan.dtype == torch.float16 and plan.autocast is None  # half weights: no autocast on top


def test_explicit_settings_win_over_auto(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    settings = WorkerSettings(autocast="none", channels_last=True, batch_buckets="off", dtype="float32",
                              cuda_graphs=False, compile=False)
    plan = speed.plan_for(settings, CUDA, models.get_preset("celeba256"), 16)
    assert (plan.dtype, plan.autocast, plan.channels_last, plan.buckets, plan.cuda_graphs, plan.compile) == \
        (torch.float32, None, True, (), False, False)
    cpu = speed.plan_for(WorkerSettings(autocast="bfloat16", channels_last=True, batch_buckets="2,4"), CPU,
                         models.get_preset("tiny"), 8)
    assert (cpu.autocast, cpu.channels_last, cpu.buckets) == (torch.bfloat16, True, (2, 4, 8))


@pytest.mark.parametrize("value", ["", "auto"])
def test_auto_and_empty_mean_the_device_decides(monkeypatch, value):
    """docker-compose passes unset variables as empty strings; the docs call the default `auto`."""
    for name in ("COMPILE", "CUDA_GRAPHS", "BATCH_BUCKETS", "AUTOCAST", "DTYPE"):
        monkeypatch.setenv(f"REPAINT_{name}", value)
    settings = WorkerSettings()
    assert settings.compile is None and settings.cuda_graphs is None
    assert settings.batch_buckets == settings.autocast == settings.dtype == "auto"


def test_environment_variables_reach_the_settings(monkeypatch):
    monkeypatch.setenv("REPAINT_CHANNELS_LAST", "")  # compose passes unset variables as empty strings
    monkeypatch.setenv("REPAINT_COMPILE", "")
    monkeypatch.setenv("REPAINT_BATCH_BUCKETS", "1,8")
    monkeypatch.setenv("REPAINT_CUDA_GRAPHS", "false")
    settings = WorkerSettings()
    assert settings.channels_last is False and settings.compile is None  # the defaults
    assert settings.batch_buckets == "1,8" and settings.cuda_graphs is False


def test_cuda_graphs_on_the_cpu_is_a_config_error():
    with pytest.raises(models.ConfigError, match="REPAINT_CUDA_GRAPHS needs a CUDA device"):
        speed.plan_for(WorkerSettings(cuda_graphs=True), CPU, models.get_preset("tiny"), 8)


@pytest.mark.parametrize("text,expected", [
    ("auto", (1, 2, 4, 8, 16)), ("off", ()), ("1,2,4,8,16", (1, 2, 4, 8, 16)), ("4, 2", (2, 4, 16)),
    ("1,64", (1, 16)),  # sizes above max_batch are dropped; max_batch itself is always one
])
def test_buckets_parse(text, expected):
    assert speed.parse_buckets(text, max_batch=16, device=CUDA) == expected


def test_auto_buckets_include_a_max_batch_that_is_no_power_of_two():
    assert speed.parse_buckets("auto", max_batch=12, device=CUDA) == (1, 2, 4, 8, 12)


@pytest.mark.parametrize("text", ["big", "0,4", ","])
def test_bad_buckets_are_a_config_error(text):
    with pytest.raises(models.ConfigError, match="REPAINT_BATCH_BUCKETS"):
        speed.parse_buckets(text, max_batch=16, device=CUDA)


def test_every_pass_runs_at_a_bucket_size_and_within_the_cap():
    buckets = (1, 2, 4, 8, 16)
    assert [speed.bucket_for(n, buckets) for n in (1, 3, 5, 9, 16)] == [1, 4, 8, 16, 16]
    # Above the largest bucket: several passes, each at a bucket's size (no new shape to compile).
    assert speed.passes_for(17, buckets) == [(16, 16), (1, 1)]
    assert speed.passes_for(40, buckets) == [(16, 16), (16, 16), (8, 8)]
    # Under a cap of 12 (not a bucket), nothing pads past it: 9 samples run as 8 + 1, not as 16 or 9.
    assert speed.passes_for(9, buckets, cap=12) == [(8, 8), (1, 1)] and speed.passes_for(7, buckets, cap=12) == [(7, 8)]
    # A lone job larger than the scheduler's limit (after running out of memory) runs in passes of the limit.
    assert speed.passes_for(8, buckets, cap=4) == [(4, 4), (4, 4)]
    # Eager (no buckets): split by the cap only, unpadded.
    assert speed.passes_for(7, (), cap=3) == [(3, 3), (3, 3), (1, 1)] and speed.passes_for(7, ()) == [(7, 7)]
    assert speed.passes_for(0, buckets) == []


# ---- padding changes no result ---------------------------------------------------------------

@pytest.fixture(scope="module")
def golden_tiny():
    """The tiny network with the reference's weights (tests/data/reference)."""
    return golden_tiny_unet()


def test_padded_rows_are_run_and_dropped(golden_tiny):
    seen = []

    def net(x, t, y=None):
        seen.append(x.shape[0])
        return golden_tiny(x, t, y)

    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(3, 3, 32, 32, generator=g), torch.tensor([5, 500, 999])
    with torch.inference_mode():
        padded = speed.BucketedPasses(net, (1, 2, 4, 8))(x, t)
        alone = golden_tiny(x, t)
    assert seen == [4] and padded.shape == alone.shape
    # Rows are independent: padding changes nothing beyond float32 rounding of another batch size.
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)


def test_buckets_change_no_inpainting_result():
    """Three samples in flight run as a batch of 4 with buckets; the results equal those of a
    batch of 3 (same seeds, same noise) to within one 8-bit level."""
    image, mask = face_and_mask(seed=2)
    params = JobParams(seed=7, num_samples=3, sampler=RePaintSettings(steps=20, jump_length=5, jump_n_sample=2))
    plain = Runtime(WorkerSettings(model="tiny", device="cpu"))
    widths = []

    def compile_fn(net):  # stands in for torch.compile: padding applies to compiled networks
        return lambda x, t, y=None: widths.append(x.shape[0]) or net(x, t, y)

    bucketed = Runtime(WorkerSettings(model="tiny", device="cpu", batch_buckets="1,2,4,8", compile=True),
                       compile_fn=compile_fn)
    bucketed.compiler.join()
    assert bucketed.speed.buckets == (1, 2, 4, 8) and bucketed.compile_state == "compiled"
    widths.clear()  # the warm-up's passes
    a = [decode(png) for png in plain.inpaint(png_bytes(image), png_bytes(mask), params)]
    b = [decode(png) for png in bucketed.inpaint(png_bytes(image), png_bytes(mask), params)]
    assert set(widths) == {4}
    for x, y in zip(a, b):
        assert np.abs(x - y).max() <= 1


def test_passes_split_over_the_cap_give_the_same_result(golden_tiny):
    """Seven samples under a limit of 4 run as two passes (4 and 3 padded to 4), with the result
    of one pass of seven."""
    seen = []

    def net(x, t, y=None):
        seen.append(x.shape[0])
        return golden_tiny(x, t, y)

    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(7, 3, 32, 32, generator=g), torch.tensor([5, 90, 200, 333, 500, 777, 999])
    with torch.inference_mode():
        split = speed.BucketedPasses(net, (1, 2, 4), cap=4)(x, t)
        alone = golden_tiny(x, t)
    assert seen == [4, 4]
    torch.testing.assert_close(split, alone, atol=1e-5, rtol=1e-5)


def test_padding_carries_class_labels(golden_tiny):
    seen = []

    def net(x, t, y=None):
        seen.append((x.shape[0], t.tolist(), y.tolist()))
        return x

    x, t, y = torch.zeros(3, 3, 8, 8), torch.tensor([5, 6, 7]), torch.tensor([10, 11, 12])
    assert speed.BucketedPasses(net, (4,))(x, t, y).shape[0] == 3
    assert seen == [(4, [5, 6, 7, 5], [10, 11, 12, 10])]


def test_padding_only_where_fixed_shapes_pay():
    """Eager passes are not padded (more work, nothing reused); compiled ones are, once the
    background compilation has compiled every bucket."""
    eager = Runtime(WorkerSettings(model="tiny", device="cpu", batch_buckets="1,2,4"))
    assert eager.speed.buckets == (1, 2, 4, 8) and eager.network() is eager.net
    compiled = Runtime(WorkerSettings(model="tiny", device="cpu", batch_buckets="1,2,4", compile=True, max_batch=4),
                       compile_fn=lambda net: (lambda *args: net(*args)))
    assert compiled.compiler.batch_sizes == (1, 2, 4)  # every bucket warmed up before the switch
    compiled.compiler.join()
    net = compiled.network(cap=2)
    assert isinstance(net, speed.BucketedPasses) and net.cap == 2 and net.net is compiled.compiler.ready


def test_sdpa_and_matmul_attention_agree(golden_tiny):
    """The two attention kernels compute the same function (the GPU default is SDPA's fused kernels)."""
    from models.nn import set_attention_kernel

    net = copy.deepcopy(golden_tiny)
    io_ = load_reference("tiny_unet_A_io.pt")
    with torch.inference_mode():
        matmul = set_attention_kernel(net, "matmul")(io_["x"], io_["t"])
        sdpa = set_attention_kernel(net, "sdpa")(io_["x"], io_["t"])
    torch.testing.assert_close(sdpa, matmul, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(matmul, io_["out"], atol=1e-5, rtol=1e-5)


def decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


# ---- fidelity of the fast precision -------------------------------------------------------------

def test_bfloat16_autocast_stays_close_to_float32_on_the_golden_network(golden_tiny):
    """The reference's own tiny network and inputs (outputs of mean magnitude 0.44). Measured on
    a 2-core x86-64 CPU: max |diff| 0.045, mean 0.0071, relative (L2) 0.016: bfloat16's 8-bit
    mantissa (relative step 0.0078) through 20 layers. Stated tolerance: relative 0.03, mean 0.015."""
    io_ = load_reference("tiny_unet_A_io.pt")
    with torch.inference_mode():
        ref = golden_tiny(io_["x"], io_["t"])
        with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
            out = golden_tiny(io_["x"], io_["t"])
    assert out.dtype == torch.float32  # the network hands back float32 whatever it computed in
    torch.testing.assert_close(ref, io_["out"], atol=1e-5, rtol=1e-5)
    assert float((out - ref).norm() / ref.norm()) < 0.03
    assert float((out - ref).abs().mean()) < 0.015


def test_bfloat16_inpainting_on_faces32_is_within_a_level_of_float32():
    """A whole RePaint run (50/5/3, 140 network evaluations, two samples) on the faces32 example
    (a held-out face, one eye masked), bfloat16 autocast against float32, same seeds. Measured:
    mean |diff| over the filled pixels 0.1 of 255 levels, max 1 level (also at the paper's
    250/10/10: mean 0.11-0.14, max 1); pixels outside the mask are the upload's in both."""
    ex = example_for("faces32", 32)
    image, mask = png_bytes(ex.image), png_bytes(ex.mask)
    params = JobParams(seed=0, num_samples=2, strategy="resize",
                       sampler=RePaintSettings(steps=50, jump_length=5, jump_n_sample=3))
    full = [decode(p) for p in Runtime(WorkerSettings(model="faces32", device="cpu", autocast="none"))
            .inpaint(image, mask, params)]
    half = [decode(p) for p in Runtime(WorkerSettings(model="faces32", device="cpu", autocast="bfloat16"))
            .inpaint(image, mask, params)]
    hole = np.asarray(ex.mask) > 127
    # Far from the hole (past the dilation and the blend band) every pixel is the upload's.
    far = np.asarray(ex.mask.filter(ImageFilter.MaxFilter(33))) < 128
    for a, b in zip(full, half):
        diff = np.abs(a - b)
        assert (diff[far] == 0).all()
        assert diff[hole].mean() < 1.0 and diff[hole].max() <= 8


# ---- on a GPU (the device tool's machine; skipped in CI) -----------------------------------------

@cuda
def test_cuda_graph_replays_equal_eager_passes(golden_tiny):
    from worker.cuda_graphs import GraphedNetwork

    net = copy.deepcopy(golden_tiny).to("cuda")
    graphed = GraphedNetwork(net)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
        for n in (4, 2, 4):
            x = torch.randn(n, 3, 32, 32, device="cuda")
            t = torch.randint(0, 1000, (n,), device="cuda")
            torch.testing.assert_close(graphed(x, t), net(x, t), atol=1e-2, rtol=1e-2)
    assert graphed.failed is None and len(graphed.graphs) == 2


@cuda
def test_cuda_defaults_and_graphs_inpaint_like_float32():
    ex = example_for("faces32", 32)
    image, mask = png_bytes(ex.image), png_bytes(ex.mask)
    params = JobParams(seed=0, num_samples=3, strategy="resize",
                       sampler=RePaintSettings(steps=50, jump_length=5, jump_n_sample=3))
    full = Runtime(WorkerSettings(model="faces32", device="cuda", autocast="none", batch_buckets="off",
                                  cuda_graphs=False, compile=False))
    fast = Runtime(WorkerSettings(model="faces32", device="cuda", compile=False))  # graphs on by default
    assert fast.speed.autocast is not None and fast.speed.buckets and fast.speed.cuda_graphs
    hole = np.asarray(ex.mask) > 127
    for a, b in zip(full.inpaint(image, mask, params), fast.inpaint(image, mask, params)):
        diff = np.abs(decode(a) - decode(b))
        assert diff[hole].mean() < 1.0 and diff[hole].max() <= 8
    assert fast._graphed is not None and fast._graphed.failed is None and fast._graphed.graphs
