"""The sampler seam: reference jump schedules with every level, DDNM's update, mixed batches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import models
from models.sampler_settings import SETTINGS, DDNMSettings, RePaintSettings, SettingsError
from models.samplers import Sampler, sampler_for
from models.sampling import SampleBatch, SampleParams, step
from models.schedule import ScheduleTooLong, count_model_evaluations, jump_schedule

from tests.models.test_repaint import DIFFUSION, NoiseOracle, _images

LEVELS = json.loads((Path(__file__).parents[1] / "data" / "jump_schedules_levels.json").read_text())


@pytest.mark.parametrize("entry", LEVELS["schedules"], ids=lambda e: ",".join(f"{k}={v}" for k, v in e["params"].items()))
def test_every_jump_level_and_start_resampling_match_the_reference_generator(entry):
    times = jump_schedule(**entry["params"])
    assert times == entry["times"]
    assert count_model_evaluations(times) == entry["num_reverse_transitions"]


def test_repaint_settings_give_the_reference_schedule():
    p = LEVELS["schedules"][3]["params"]
    settings = RePaintSettings(steps=p["t_T"], **{k: v for k, v in p.items() if k != "t_T"})
    assert settings.times() == LEVELS["schedules"][3]["times"]
    assert settings.evaluations == LEVELS["schedules"][3]["num_reverse_transitions"]


def test_a_schedule_is_never_built_past_its_bound():
    with pytest.raises(ScheduleTooLong):
        jump_schedule(250, jump_n_sample=10**6, max_length=10_000)
    settings = RePaintSettings(jump_n_sample=1000, jump2_length=5, jump2_n_sample=1000)
    with pytest.raises(SettingsError, match="need more than 50,000 network evaluations per sample; the limit is 5,000"):
        settings.evaluations_within(5000)
    assert RePaintSettings().evaluations_within(2410) == 2410


def test_settings_check_their_own_rules():
    with pytest.raises(SettingsError, match="eta must be at most 1.0"):
        DDNMSettings(eta=1.01)
    with pytest.raises(SettingsError, match="jump_length must be at least 1"):
        RePaintSettings(jump_length=0)
    with pytest.raises(SettingsError, match="must be an integer"):
        RePaintSettings(steps=2.5)
    with pytest.raises(SettingsError, match="must be an integer"):
        DDNMSettings(travel_repeat=True)


def test_every_registered_sampler_s_settings_name_its_math():
    for name, cls in SETTINGS.items():
        math = sampler_for(name)
        assert isinstance(math, Sampler) and type(math).settings is cls
        assert sampler_for(cls()) is math  # one instance per sampler


@pytest.mark.parametrize("settings", [DDNMSettings(steps=50), DDNMSettings(steps=50, eta=0.0),
                                      DDNMSettings(steps=40, eta=1.0),
                                      DDNMSettings(steps=30, travel_length=5, travel_repeat=3)],
                         ids=["eta0.85", "eta0", "eta1", "time-travel"])
def test_ddnm_with_an_exact_noise_oracle_gives_the_target_back(settings):
    image, target, keep = _images()
    oracle = NoiseOracle(target)
    out = models.inpaint(oracle, DIFFUSION, image, keep, sampler=settings, seed=3)
    unknown = keep.expand_as(out) < 0.5
    assert (out - target)[unknown].abs().max() < 1e-4
    assert torch.equal(out[~unknown], image[~unknown])
    assert len(oracle.calls) == settings.evaluations


def test_ddnm_step_is_projection_then_ddim():
    """One step from index a with a constant-noise "network", computed by hand from the paper's
    formulas: x0 = (x - sqrt(1 - ac) e) / sqrt(ac), clipped; known pixels from the image; then
    x' = sqrt(ac_prev) x0 + sqrt(1 - ac_prev) (eta z + sqrt(1 - eta^2) e), with the network's own e
    (as the authors' code; only the projected estimate is clipped)."""
    image, _, keep = _images(n=1, size=8)
    eps_value = 0.3
    model = lambda x, t, y=None: torch.cat([torch.full_like(x, eps_value), torch.zeros_like(x)], 1)
    settings = DDNMSettings(steps=10, eta=0.6)
    with torch.inference_mode():
        batch = SampleBatch(DIFFUSION, image, keep, [SampleParams(seed=5, sampler=settings)])
        x_t = batch.x.clone()
        replay = torch.Generator().manual_seed(5)
        torch.randn(x_t.shape[1:], generator=replay)  # x_T
        z = torch.randn(x_t.shape[1:], generator=replay)
        step(model, batch)
    s = DIFFUSION.schedule(10)
    ac, ac_prev = float(s.alphas_cumprod[9]), float(s.alphas_cumprod[8])
    x0 = ((x_t - (1 - ac) ** 0.5 * eps_value) / ac ** 0.5).clamp(-1, 1)
    assert (x0.abs() == 1).any()  # the clip matters in this step: the test tells the two formulas apart
    eps = torch.full_like(x_t, eps_value)
    x0 = torch.where(keep.expand_as(image) > 0.5, image, x0)
    expected = ac_prev ** 0.5 * x0 + (1 - ac_prev) ** 0.5 * (0.6 * z + 0.8 * eps)
    torch.testing.assert_close(batch.x, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batch.pred_xstart, x0, atol=1e-6, rtol=0)


def test_ddnm_time_travel_renoises_the_projected_estimate_and_redoes_the_stretch():
    image, target, keep = _images(n=1, size=8)
    oracle = NoiseOracle(target)
    settings = DDNMSettings(steps=12, travel_length=3, travel_repeat=2)
    models.inpaint(oracle, DIFFUSION, image, keep, sampler=settings, seed=0)
    timestep_map = DIFFUSION.schedule(12).timestep_map
    visited = [int(t) for _, t in oracle.calls]
    times = settings.times()
    assert visited == [timestep_map[a] for a, b in zip(times, times[1:]) if b < a]
    assert len(visited) > 12


def test_samples_of_different_samplers_share_a_pass_and_get_what_they_get_alone():
    image, _, keep = _images(n=3, size=32)
    m = models.load_preset("tiny")
    params = [SampleParams(seed=1, sampler=DDNMSettings(steps=20, travel_length=3, travel_repeat=2)),
              SampleParams(seed=2, sampler=RePaintSettings(steps=12, jump_length=3, jump_n_sample=2)),
              SampleParams(seed=3, sampler=DDNMSettings(steps=15, eta=0.5))]

    def run(rows):
        with torch.inference_mode():
            batch = SampleBatch(m.diffusion, image[rows], keep[rows], [params[i] for i in rows])
            evaluations = passes = 0
            while not batch.done:
                evaluations += step(m.unet, batch)
                passes += 1
            return batch.result(), evaluations, passes

    shared, evaluations, passes = run([0, 1, 2])
    assert evaluations == sum(p.sampler.evaluations for p in params)
    assert passes == max(p.sampler.evaluations for p in params)  # one pass serves every sampler
    for i in range(3):
        alone, _, _ = run([i])
        # float32 kernels differ with the batch's size; 5e-4 is far below a level (2/255).
        torch.testing.assert_close(shared[i], alone[0], atol=5e-4, rtol=0)
        known = keep[i].expand_as(alone[0]) > 0.5
        assert torch.equal(shared[i][known], image[i][known])


@pytest.mark.parametrize("settings", [RePaintSettings(steps=20, jump_length=3, jump_n_sample=2),
                                      DDNMSettings(steps=12, travel_length=3, travel_repeat=2)], ids=["repaint", "ddnm"])
def test_a_step_retried_after_out_of_memory_draws_the_same_noise(settings):
    """A worker that runs out of memory retries the pass (with a smaller batch): the retried step
    must reuse the noise the failed one drew, or the seeded result would depend on the failure."""
    image, _, keep = _images(n=2, size=32)
    m = models.load_preset("tiny")
    params = [SampleParams(seed=s, sampler=settings) for s in (42, 43)]
    failures = iter([False, True, False, False, True, True] + [False] * 1000)

    def flaky(x, t, y=None):
        if next(failures):
            raise torch.OutOfMemoryError("simulated: out of memory")
        return m.unet(x, t, y)

    with torch.inference_mode():
        clean = SampleBatch(m.diffusion, image, keep, params)
        while not clean.done:
            step(m.unet, clean)
        retried = SampleBatch(m.diffusion, image, keep, params)
        oom = 0
        while not retried.done:
            try:
                step(flaky, retried)
            except torch.OutOfMemoryError:
                oom += 1
    assert oom == 3
    assert torch.equal(retried.result(), clean.result())
