"""Gaussian diffusion math: beta schedules, respacing, forward noising, the reverse-step posterior.

Tables are float64 and indexed by the *respaced* index i = 0..N-1; the network is fed the
original timestep `timestep_map[i]`. Per-sample coefficients are looked up in float64 and cast
to float32 before they touch the float32 tensors, as the reference does.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Mapping, Sequence

import torch

from .config import ConfigError, DiffusionConfig, diffusion_config, space_timesteps


class MeanType(str, enum.Enum):
    EPSILON = "epsilon"   # the network predicts the noise
    START_X = "start_x"   # the network predicts x_0
    VELOCITY = "v"        # the network predicts v = sqrt(abar) eps - sqrt(1 - abar) x_0 (diffusers' v_prediction)


class VarianceType(str, enum.Enum):
    LEARNED_RANGE = "learned_range"  # interpolate log(beta) and log(posterior variance)
    LEARNED = "learned"              # the network outputs the log variance
    FIXED_LARGE = "fixed_large"      # beta_t (with the posterior variance at t = 0)
    FIXED_SMALL = "fixed_small"      # the posterior variance


def beta_schedule(name: str, num_steps: int) -> torch.Tensor:
    """Named beta schedules of DDPM (linear) and Improved DDPM (cosine), float64 [num_steps]."""
    if name == "linear":
        scale = 1000 / num_steps
        return torch.linspace(scale * 0.0001, scale * 0.02, num_steps, dtype=torch.float64)
    if name == "cosine":
        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = [min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), 0.999)
                 for i in range(num_steps)]
        return torch.tensor(betas, dtype=torch.float64)
    raise ConfigError(f"unknown beta schedule {name!r}")


@dataclass(frozen=True)
class Schedule:
    """Coefficient tables of one (possibly respaced) process, float64, indexed by respaced index."""

    timestep_map: tuple[int, ...]
    betas: torch.Tensor
    alphas_cumprod: torch.Tensor = field(init=False)
    alphas_cumprod_prev: torch.Tensor = field(init=False)
    sqrt_alphas_cumprod: torch.Tensor = field(init=False)
    sqrt_one_minus_alphas_cumprod: torch.Tensor = field(init=False)
    sqrt_recip_alphas_cumprod: torch.Tensor = field(init=False)
    sqrt_recipm1_alphas_cumprod: torch.Tensor = field(init=False)
    posterior_variance: torch.Tensor = field(init=False)
    posterior_log_variance_clipped: torch.Tensor = field(init=False)
    posterior_mean_coef1: torch.Tensor = field(init=False)
    posterior_mean_coef2: torch.Tensor = field(init=False)
    log_betas: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        b = self.betas
        assert b.dtype == torch.float64 and b.ndim == 1 and len(b) == len(self.timestep_map)
        assert bool(((b > 0) & (b <= 1)).all()), "betas must lie in (0, 1]"
        alphas = 1.0 - b
        ac = torch.cumprod(alphas, 0)
        ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
        post_var = b * (1.0 - ac_prev) / (1.0 - ac)
        # The posterior variance is 0 at index 0; its log is clipped to the next value.
        post_log_var = torch.log(torch.cat([post_var[1:2], post_var[1:]])) if len(b) > 1 \
            else torch.log(b)
        values = dict(
            alphas_cumprod=ac,
            alphas_cumprod_prev=ac_prev,
            sqrt_alphas_cumprod=ac.sqrt(),
            sqrt_one_minus_alphas_cumprod=(1.0 - ac).sqrt(),
            sqrt_recip_alphas_cumprod=(1.0 / ac).sqrt(),
            sqrt_recipm1_alphas_cumprod=(1.0 / ac - 1).sqrt(),
            posterior_variance=post_var,
            posterior_log_variance_clipped=post_log_var,
            posterior_mean_coef1=b * ac_prev.sqrt() / (1.0 - ac),
            posterior_mean_coef2=(1.0 - ac_prev) * alphas.sqrt() / (1.0 - ac),
            log_betas=torch.log(b),
        )
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __len__(self) -> int:
        return len(self.timestep_map)


# Per-step coefficients the sampler needs, in the order of `Diffusion.coefficient_rows`.
# `sqrt_ac_prev` and `sqrt_1m_ac_prev` are the levels one index down (1 and 0 below index 0): where
# a deterministic (DDIM-style) step lands.
COEFFICIENTS = ("timestep", "sqrt_recip_ac", "sqrt_recipm1_ac", "coef1", "coef2",
                "min_log", "max_log", "fixed_log_var", "sqrt_ac", "sqrt_1m_ac", "beta",
                "sqrt_ac_prev", "sqrt_1m_ac_prev")


@dataclass(frozen=True, kw_only=True)
class Diffusion:
    """A base diffusion process plus the modes of its network; respaced views are cached.

    `default_steps` is the number of sampling steps of the conf's `timestep_respacing`.
    `clip_range`: x_0 estimates are clipped to [-clip_range, clip_range] (None: not clipped, for
    models whose scheduler says `clip_sample: false`).
    """

    config: DiffusionConfig
    mean_type: MeanType
    var_type: VarianceType
    clip_range: float | None = 1.0

    @property
    def base_betas(self) -> torch.Tensor:
        return base_betas(self.config)

    @property
    def default_steps(self) -> int:
        return len(self.schedule(None))

    def schedule(self, steps: int | None) -> Schedule:
        """The process respaced to `steps` sampling steps (None: the conf's own respacing)."""
        spec = self.config.timestep_respacing if steps is None else str(steps)
        return _respaced(self.config, spec)

    def coefficient_rows(self, steps: int) -> list[tuple[float, ...]]:
        """Row i holds the COEFFICIENTS at respaced index i of the `steps` schedule."""
        return _coefficient_rows(self, steps if steps != self.default_steps else None)

    def coefficients(self, t: torch.Tensor, steps: int | None = None) -> dict[str, torch.Tensor]:
        """Coefficients at respaced indices t [N] of the `steps` schedule, as [N x 1 x 1 x 1]."""
        rows = self.coefficient_rows(steps or self.default_steps)
        return gather_coefficients([rows[int(i)] for i in t.tolist()], t.device)

    def p_mean_variance(self, model, x_t: torch.Tensor, t: torch.Tensor, *, steps: int | None = None,
                        y: torch.Tensor | None = None, clip_denoised: bool = True) -> dict[str, torch.Tensor]:
        """p(x_{t-1} | x_t) at respaced indices t; the model receives the original timesteps."""
        c = self.coefficients(t, steps)
        return p_mean_variance(self, model(x_t, c["timestep"], y), x_t, c, clip_denoised=clip_denoised)

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, *,
                 steps: int | None = None) -> torch.Tensor:
        """Forward noising to respaced indices t."""
        return q_sample(x_start, noise, self.coefficients(t, steps))


def base_betas(config: DiffusionConfig) -> torch.Tensor:
    """The unrespaced betas of a process, float64 [diffusion_steps]."""
    if config.betas is not None:
        return torch.tensor(config.betas, dtype=torch.float64)
    return beta_schedule(config.noise_schedule, config.diffusion_steps)


@lru_cache(maxsize=64)
def _respaced(config: DiffusionConfig, spec: str) -> Schedule:
    betas = base_betas(config)
    if not spec:
        return Schedule(tuple(range(config.diffusion_steps)), betas)
    kept = space_timesteps(config.diffusion_steps, spec)
    base_ac = torch.cumprod(1.0 - betas, 0)
    betas, last = [], 1.0
    for i in kept:
        # Respaced betas keep the cumulative products of the kept steps.
        ac = float(base_ac[i])
        betas.append(1.0 - ac / last)
        last = ac
    return Schedule(tuple(kept), torch.tensor(betas, dtype=torch.float64))


@lru_cache(maxsize=64)
def _coefficient_rows(diffusion: Diffusion, steps: int | None) -> list[tuple[float, ...]]:
    s = diffusion.schedule(steps)
    # FIXED_LARGE uses beta_t, with the posterior variance at index 0 for a better log-likelihood.
    large_var = torch.cat([s.posterior_variance[1:2], s.betas[1:]])
    fixed_log = (torch.log(large_var) if diffusion.var_type == VarianceType.FIXED_LARGE
                 else s.posterior_log_variance_clipped)
    timesteps = torch.tensor(s.timestep_map, dtype=torch.float64)
    if diffusion.config.rescale_timesteps:
        # Networks trained with rescaled timesteps always see the 0..1000 range.
        timesteps = timesteps * (1000.0 / diffusion.config.diffusion_steps)
    columns = [timesteps, s.sqrt_recip_alphas_cumprod,
               s.sqrt_recipm1_alphas_cumprod, s.posterior_mean_coef1, s.posterior_mean_coef2,
               s.posterior_log_variance_clipped, s.log_betas, fixed_log, s.sqrt_alphas_cumprod,
               s.sqrt_one_minus_alphas_cumprod, s.betas, s.alphas_cumprod_prev.sqrt(),
               (1.0 - s.alphas_cumprod_prev).sqrt()]
    return [tuple(row) for row in torch.stack(columns, 1).tolist()]


def gather_coefficients(rows: Sequence[tuple[float, ...]], device: torch.device,
                        extra: Mapping[str, Sequence[float]] | None = None) -> dict[str, torch.Tensor]:
    """Stack per-sample rows (and `extra` per-sample columns) into [N x 1 x 1 x 1] float32 tensors.

    One host-to-device copy per step, from pinned memory on GPUs, so the copy does not make the
    host wait for the device. Coefficients are looked up in float64 and rounded to float32, as
    the reference does.
    """
    extra = dict(extra or {})
    table = torch.tensor(rows, dtype=torch.float64)
    if extra:
        table = torch.cat([table, torch.tensor(list(zip(*extra.values())), dtype=torch.float64)], dim=1)
    table = table.to(torch.float32)
    if device.type == "cuda":
        table = table.pin_memory()
    table = table.to(device, non_blocking=True)
    names = list(COEFFICIENTS) + list(extra)
    out = {name: table[:, k].view(-1, 1, 1, 1) for k, name in enumerate(names)}
    if all(float(r[0]).is_integer() for r in rows):
        # Network timesteps as int64, as the reference feeds them (exact: they are below 2^24).
        out["timestep"] = table[:, 0].round().to(torch.int64)
    else:
        out["timestep"] = table[:, 0]
    return out


def q_sample(x_start: torch.Tensor, noise: torch.Tensor, c: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Forward noising q(x_t | x_0) = N(sqrt(ac_t) x_0, (1 - ac_t) I)."""
    return c["sqrt_ac"] * x_start + c["sqrt_1m_ac"] * noise


def predict_xstart_from_eps(x_t: torch.Tensor, eps: torch.Tensor, c: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return c["sqrt_recip_ac"] * x_t - c["sqrt_recipm1_ac"] * eps


def predict_eps_from_xstart(x_t: torch.Tensor, x_start: torch.Tensor, c: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return (c["sqrt_recip_ac"] * x_t - x_start) / c["sqrt_recipm1_ac"]


def q_posterior_mean(x_start: torch.Tensor, x_t: torch.Tensor, c: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean of q(x_{t-1} | x_t, x_0)."""
    return c["coef1"] * x_start + c["coef2"] * x_t


def predict_xstart(diffusion: Diffusion, model_output: torch.Tensor, x_t: torch.Tensor,
                   c: Mapping[str, torch.Tensor], *, clip_denoised: bool = True) -> torch.Tensor:
    """The network's estimate of x_0 (its variance channels, if any, are ignored)."""
    return _xstart(diffusion, model_output[:, : x_t.shape[1]], x_t, c, clip_denoised)


def _xstart(diffusion: Diffusion, mean_output: torch.Tensor, x_t: torch.Tensor, c: Mapping[str, torch.Tensor],
            clip_denoised: bool) -> torch.Tensor:
    if diffusion.mean_type == MeanType.EPSILON:
        pred_xstart = predict_xstart_from_eps(x_t, mean_output, c)
    elif diffusion.mean_type == MeanType.VELOCITY:
        pred_xstart = c["sqrt_ac"] * x_t - c["sqrt_1m_ac"] * mean_output
    else:
        pred_xstart = mean_output
    if clip_denoised and diffusion.clip_range is not None:
        pred_xstart = pred_xstart.clamp(-diffusion.clip_range, diffusion.clip_range)
    return pred_xstart


def p_mean_variance(diffusion: Diffusion, model_output: torch.Tensor, x_t: torch.Tensor,
                    c: Mapping[str, torch.Tensor], *, clip_denoised: bool = True) -> dict[str, torch.Tensor]:
    """Mean, variance and x_0 estimate of p(x_{t-1} | x_t) from the network's output.

    model_output: [N x (2C if the variance is learned else C) x H x W]; x_t: [N x C x H x W].
    """
    n, ch = x_t.shape[:2]
    if diffusion.var_type in (VarianceType.LEARNED, VarianceType.LEARNED_RANGE):
        assert model_output.shape == (n, 2 * ch, *x_t.shape[2:]), model_output.shape
        model_output, var_values = model_output.split(ch, dim=1)
        if diffusion.var_type == VarianceType.LEARNED:
            log_variance = var_values
        else:
            frac = (var_values + 1) / 2
            log_variance = frac * c["max_log"] + (1 - frac) * c["min_log"]
    else:
        assert model_output.shape == x_t.shape, model_output.shape
        log_variance = c["fixed_log_var"].expand_as(x_t)
    pred_xstart = _xstart(diffusion, model_output, x_t, c, clip_denoised)
    return {
        "mean": q_posterior_mean(pred_xstart, x_t, c),
        "variance": torch.exp(log_variance),
        "log_variance": log_variance,
        "pred_xstart": pred_xstart,
    }


def make_diffusion(config: DiffusionConfig) -> Diffusion:
    if config.learn_sigma:
        var_type = VarianceType.LEARNED_RANGE
    else:
        var_type = VarianceType.FIXED_SMALL if config.sigma_small else VarianceType.FIXED_LARGE
    return Diffusion(config=config,
                     mean_type=MeanType.START_X if config.predict_xstart else MeanType.EPSILON,
                     var_type=var_type)


def build_diffusion(conf: Mapping[str, Any]) -> Diffusion:
    """A Diffusion from the diffusion keys of an official conf (other keys are ignored)."""
    return make_diffusion(diffusion_config(conf))
