"""bench.gpu runs on the CPU in CI (the same code as on a GPU, on the tiny architecture), and
its FLOP count is the one the GPU figures rest on."""

from __future__ import annotations

import json

import pytest

import models
from bench import gpu


def test_celeba256_forward_is_2_24_tflop():
    """One 256x256 pass of the official architecture: 2.24 TFLOP (counted on the meta device),
    the figure the GPU targets are derived from; FLOPs grow linearly with the batch."""
    conf = models.get_preset("celeba256").conf
    one = gpu.count_flops(conf)
    assert 2.23e12 < one < 2.25e12
    assert gpu.count_flops(conf, batch=3) == 3 * one


def test_variants_parse_and_refuse_nonsense():
    v = gpu.Variant.parse("bf16+cl+graphs")
    assert (v.precision, v.channels_last, v.graphs, v.compile, v.attention) == ("bf16", True, True, False, "auto")
    assert gpu.Variant.parse("fp32+matmul").attention == "matmul"
    for bad in ("fp8", "bf16+fast", "fp32+sdpa+matmul"):
        with pytest.raises(Exception, match="unknown variant"):
            gpu.Variant.parse(bad)


def test_peaks_by_device_name_and_override():
    assert gpu.device_peaks(gpu.torch.device("cpu"), None) == {}
    assert gpu.device_peaks(gpu.torch.device("cpu"), "half=100,tf32=50") == {"half": 100.0, "tf32": 50.0}
    names = {"NVIDIA H100 80GB HBM3": 989.4, "NVIDIA H100 PCIe": 756.0, "NVIDIA H200": 989.4,
             "NVIDIA A100-SXM4-80GB": 312.0, "NVIDIA L4": 121.0, "NVIDIA L40S": 362.1, "NVIDIA RTX A5000": 111.1}
    for name, half in names.items():
        peaks = next(p for pattern, p in gpu.PEAKS if gpu.re.search(pattern, name))
        assert peaks["half"] == half, name


def test_cpu_run_writes_json_and_markdown(tmp_path):
    page = tmp_path / "gpu.md"
    page.write_text(f"# Prose kept\n\n{gpu.BEGIN}\nold table\n{gpu.END}\n\nMore prose.\n")
    report = gpu.main(["--device", "cpu", "--batches", "1", "2", "--repeats", "1", "--warm-up", "1",
                       "--variants", "fp32", "bf16", "fp16ref+cl", "bf16+graphs",
                       "--peak", "half=1,tf32=1", "--json", str(tmp_path / "gpu.json"), "--markdown", str(page)])
    assert json.loads((tmp_path / "gpu.json").read_text()) == json.loads(json.dumps(report))
    measured = {(r["variant"], r["batch"]): r for r in report["rows"] if "skipped" not in r}
    assert set(measured) == {(v, b) for v in ("fp32", "bf16", "fp16ref+cl") for b in (1, 2)}
    for r in measured.values():
        assert r["seconds_per_pass"] > 0 and r["tflops"] > 0 and r["peak_share"] == r["tflops"]
        assert r["paper_images_per_hour"] == pytest.approx(3600 * r["batch"] / (2410 * r["seconds_per_pass"]))
    # Half precision differs from float32, a little: bfloat16 more than the float16 layout.
    assert 0 < measured[("fp16ref+cl", 1)]["rel_diff_vs_fp32"] < measured[("bf16", 1)]["rel_diff_vs_fp32"] < 0.05
    assert [r["skipped"] for r in report["rows"] if "skipped" in r] == ["CUDA graphs need a CUDA device"]
    text = page.read_text()
    assert text.startswith("# Prose kept") and text.endswith("More prose.\n") and "old table" not in text
    assert "| fp16ref+cl | 2 |" in text and "| bf16+graphs | all | skipped: CUDA graphs need a CUDA device" in text


def test_time_budget_reports_what_it_skipped(tmp_path):
    report = gpu.main(["--device", "cpu", "--batches", "1", "--variants", "fp32", "--time-budget", "0"])
    assert report["rows"] == [{"variant": "fp32", "batch": None, "skipped": "time budget spent"}]
