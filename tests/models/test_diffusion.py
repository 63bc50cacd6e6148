"""Golden tests of the diffusion math and the jump schedule against the reference data."""

from __future__ import annotations

import pytest
import torch

import models
from models.diffusion import MeanType, VarianceType, beta_schedule
from tests.conftest import load_reference

TABLES = ("betas", "log_betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
          "sqrt_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
          "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1",
          "posterior_mean_coef2")

OFFICIAL_DIFFUSION = {"diffusion_steps": 1000, "noise_schedule": "linear", "learn_sigma": True,
                      "use_kl": False, "predict_xstart": False, "rescale_timesteps": False,
                      "rescale_learned_sigmas": False}


@pytest.mark.parametrize("key", ["250", "100", "1000"])
def test_coefficient_tables_match_reference(key):
    ref = load_reference("diffusion_coefficients.json")["respacings"][key]
    diffusion = models.build_diffusion({**OFFICIAL_DIFFUSION, "timestep_respacing": ref["timestep_respacing"]})
    schedule = diffusion.schedule(None)
    assert list(schedule.timestep_map) == ref["timestep_map"]
    for name in TABLES:
        torch.testing.assert_close(getattr(schedule, name), torch.tensor(ref[name], dtype=torch.float64),
                                   rtol=1e-10, atol=0, msg=lambda m: f"{name}: {m}")


def test_respacing_by_step_count_equals_the_conf_respacing():
    diffusion = models.build_diffusion({**OFFICIAL_DIFFUSION, "timestep_respacing": "250"})
    ref = load_reference("diffusion_coefficients.json")["respacings"]["100"]
    assert list(diffusion.schedule(100).timestep_map) == ref["timestep_map"]


def test_space_timesteps_rounds_half_to_even():
    assert models.space_timesteps(1000, "25")[4] == 166  # 4 * 41.625 = 166.5
    assert models.space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert len(models.space_timesteps(1000, "10,20,30")) == 60


@pytest.mark.parametrize("case", ["", "case2_"])
def test_p_mean_variance_matches_reference(case):
    ref = load_reference("p_mean_variance_case.pt")
    diffusion = models.build_diffusion({**OFFICIAL_DIFFUSION, "timestep_respacing": "250"})
    received = []

    def dummy(x, t, y=None):
        received.append(t)
        return ref[case + "model_output"]

    out = diffusion.p_mean_variance(dummy, ref[case + "x_t"], ref[case + "t"])
    assert torch.equal(received[0], ref[case + "model_received_timesteps"])
    for key in ("mean", "variance", "log_variance", "pred_xstart"):
        torch.testing.assert_close(out[key], ref[case + key], atol=1e-5, rtol=1e-5)


def test_modes_from_conf():
    assert models.build_diffusion(OFFICIAL_DIFFUSION).var_type == VarianceType.LEARNED_RANGE
    fixed = models.build_diffusion({**OFFICIAL_DIFFUSION, "learn_sigma": False})
    assert fixed.var_type == VarianceType.FIXED_LARGE and fixed.mean_type == MeanType.EPSILON
    small = models.build_diffusion({**OFFICIAL_DIFFUSION, "learn_sigma": False, "sigma_small": True})
    assert small.var_type == VarianceType.FIXED_SMALL
    assert models.build_diffusion({**OFFICIAL_DIFFUSION, "predict_xstart": True}).mean_type == MeanType.START_X


def test_cosine_schedule_is_bounded_and_increasing():
    betas = beta_schedule("cosine", 1000)
    assert betas.shape == (1000,) and float(betas.max()) <= 0.999 and float(betas.min()) > 0
    assert bool((betas[1:] >= betas[:-1]).all())


def test_forward_noising_statistics():
    diffusion = models.build_diffusion({**OFFICIAL_DIFFUSION, "timestep_respacing": "250"})
    x0 = torch.full((1, 3, 64, 64), 0.5)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    xt = diffusion.q_sample(x0, torch.tensor([100]), noise)
    ac = float(diffusion.schedule(None).alphas_cumprod[100])
    torch.testing.assert_close(xt, ac**0.5 * x0 + (1 - ac) ** 0.5 * noise)


@pytest.mark.parametrize("entry", load_reference("jump_schedules.json")["schedules"],
                         ids=lambda e: ",".join(str(v) for v in e["params"].values()))
def test_jump_schedule_matches_reference(entry):
    p = entry["params"]
    times = models.jump_schedule(**p)
    assert times == entry["times"]
    assert models.count_model_evaluations(times) == entry["num_reverse_transitions"]


def test_jump_schedule_rejects_nonsense():
    with pytest.raises(ValueError, match="jump_length"):
        models.jump_schedule(250, jump_length=0, jump_n_sample=10)
