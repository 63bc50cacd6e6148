"""RePaint (Lugmayr et al., CVPR 2022, Algorithm 1): merge, denoise, and resample by re-noising.

At a reverse step from index a (level abar_a), for each sample:
    x_known   = sqrt(abar_a) x0 + sqrt(1 - abar_a) z'     (the original, noised to x_a's level)
    x_in      = m * x_known + (1 - m) * x_a                (from the second step on; m = keep mask)
    x_{a-1}   ~ N(mu_theta(x_in, a), Sigma_theta(x_in, a)) (the model's ancestral step)
and a move up from a to a + 1 (a resampling jump) is one forward-diffusion step:
    x_{a+1}   = sqrt(1 - beta_{a+1}) x_a + sqrt(beta_{a+1}) z.
The order of random draws per sample (step noise, then z') is the reference's, so seeded results
match it; the golden and oracle tests in tests/models pin this.
"""

from __future__ import annotations

from typing import Callable, ClassVar

import torch

from ..diffusion import COEFFICIENTS, p_mean_variance
from ..guidance import classifier_gradient
from ..sample_batch import SampleBatch, SampleState
from ..sampler_settings import RePaintSettings
from . import Rows, Sampler

_BETA = COEFFICIENTS.index("beta")


class RePaint(Sampler):
    settings: ClassVar[type[RePaintSettings]] = RePaintSettings

    def move_up(self, batch: SampleBatch, slot: int, state: SampleState) -> None:
        """Forward moves a -> a + 1 up to the next reverse step: x <- sqrt(1 - b) x + sqrt(b) z."""
        while state.next > state.current:
            beta = state.rows[state.current + 1][_BETA]
            noise = state.randn(batch.x.shape[1:], batch.device)
            batch.x[slot] = (1 - beta) ** 0.5 * batch.x[slot] + beta ** 0.5 * noise
            state.position += 1

    def network_input(self, rows: Rows) -> torch.Tensor:
        """x_a with the known pixels replaced by the original noised to x_a's level (lines 4-6)."""
        batch, c = rows.batch, rows.c
        rows.scratch["noise"] = rows.noise()
        x = rows.take(batch.x)
        fresh = [s.evaluations == 0 for s in rows.states]
        # The reference merges from the second step on (the first x is noise everywhere), and noises
        # the known region to the level of the *input* x_t (alphas_cumprod[a]).
        if not all(fresh):
            shape = batch.x.shape[1:]
            gt_noise = torch.stack([torch.zeros(shape, device=batch.device) if f else s.randn(shape, batch.device)
                                    for s, f in zip(rows.states, fresh)])
            known = c["sqrt_ac"] * rows.take(batch.gt) + c["sqrt_1m_ac"] * gt_noise
            merge = rows.take(batch.keep)
            if any(fresh):
                merge = merge & (c["first"] < 0.5)
            x = torch.where(merge, known, x)
        return x

    def update(self, rows: Rows, x_in: torch.Tensor, model_output: torch.Tensor, *, classifier: Callable | None,
               clip_denoised: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The ancestral step x_{a-1} ~ p_theta(x_{a-1} | x_in), classifier-guided where asked."""
        c = rows.c
        out = p_mean_variance(rows.batch.diffusion, model_output, x_in, c, clip_denoised=clip_denoised)
        mean = out["mean"]
        y = rows.labels
        if classifier is not None and y is not None and any(s.params.classifier_scale for s in rows.states):
            gradient = classifier_gradient(classifier, x_in, c["timestep"], y, c["guidance"])
            mean = mean.float() + out["variance"] * gradient
        sample = mean + c["nonzero"] * torch.exp(0.5 * out["log_variance"]) * rows.scratch["noise"]
        return sample, out["pred_xstart"]
