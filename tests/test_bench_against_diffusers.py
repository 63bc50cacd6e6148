"""bench.against_diffusers on a short schedule: both loops run the same network and make the same
number of network evaluations, so the rows compare the loops and nothing else."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("diffusers")  # the optional extra; CI installs it

from bench import against_diffusers  # noqa: E402


def test_both_loops_make_the_same_evaluations_on_the_same_network(tmp_path):
    js = tmp_path / "rows.json"
    rows = against_diffusers.main(["--models", "tiny", "--batch", "2", "--steps", "6", "--jump-length", "3",
                                   "--jump-n-sample", "2", "--threads", "1", "--repeats", "1", "--json", str(js)])
    by = {r["implementation"]: r for r in rows}
    assert set(by) == {"ours (repaint-server)", "diffusers RePaintPipeline", "network only"}
    import models

    expected = models.count_model_evaluations(models.jump_schedule(6, jump_length=3, jump_n_sample=2))
    assert expected > 6  # the schedule jumps back: more evaluations than steps
    assert [by[name]["evaluations_per_image"] for name in sorted(by)] == [expected] * 3
    assert all(r["batch"] == 2 and r["image_evaluations_per_second"] > 0 for r in rows)
    assert json.loads(js.read_text()) == rows


def test_diffusers_sees_the_noise_estimate_at_every_sample_s_timestep():
    import torch

    import models

    loaded = models.load_preset("tiny")
    view = against_diffusers.DiffusersView(loaded.unet.eval())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = view(x, torch.tensor(700)).sample
        assert out.shape == (2, 3, 32, 32)
        assert torch.equal(out, loaded.unet(x, torch.tensor([700, 700]))[:, :3])
