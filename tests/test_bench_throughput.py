"""bench.throughput end to end on the CPU (real Redis, API and worker processes), as CI can run it;
`--device cuda` runs the same code with the celeba256 architecture."""

from __future__ import annotations

import json

import pytest

from bench import throughput


def test_configs_parse():
    assert throughput.parse_config("graphs:REPAINT_CUDA_GRAPHS=true,REPAINT_MAX_BATCH=32") == \
        ("graphs", {"REPAINT_CUDA_GRAPHS": "true", "REPAINT_MAX_BATCH": "32"})
    assert throughput.parse_config("defaults:") == ("defaults", {})
    with pytest.raises(Exception, match="LABEL:REPAINT_VAR"):
        throughput.parse_config("x:MAX_BATCH=3")


@pytest.mark.slow  # a benchmark smoke run: the default run keeps the suite under 10 minutes
def test_batched_and_unbatched_side_by_side(tmp_path):
    out, js = tmp_path / "throughput.md", tmp_path / "throughput.json"
    rows = throughput.main(["--concurrency", "2", "--rounds", "1", "--steps", "4", "--jump-length", "2",
                            "--jump-n-sample", "1", "--threads", "1", "--config", "batched:REPAINT_MAX_BATCH=2",
                            "--config", "unbatched:REPAINT_MAX_BATCH=1", "--out", str(out), "--json", str(js)])
    assert [(r["config"], r["concurrency"], r["jobs"], r["failed"]) for r in rows] == \
        [("batched", 2, 2, 0), ("unbatched", 2, 2, 0)]
    for r in rows:
        assert r["images_per_hour"] == pytest.approx(60 * r["images_per_minute"], rel=0.01)
        # 4 evaluations per image here; the projection scales the worker's rate to 2,410.
        assert r["paper_images_per_hour"] == pytest.approx(3600 * r["sample_evaluations_per_second"] / 2410, rel=0.01)
        assert 0 < r["latency_p50_s"] <= r["latency_p95_s"]
        assert r["compile"] == "eager"  # REPAINT_COMPILE is off on the CPU unless asked for
    text = out.read_text()
    assert "| batched | 2 |" in text and "| unbatched | 2 |" in text
    assert "concurrency 2: `batched` gives" in text and "the images per minute of `unbatched`" in text
    assert json.loads(js.read_text())["schedule"] == [4, 2, 1]
