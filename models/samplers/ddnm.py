"""DDNM (Wang, Yu and Zhang, "Zero-Shot Image Restoration Using Denoising Diffusion Null-Space
Model", ICLR 2023) for masks, with a DDIM step and optional time travel.

At a reverse step from index a to a - 1 (levels abar_a, abar_{a-1}), for each sample:
    eps     = eps_theta(x_a, a)                                    (the network's noise)
    x0_hat  = (x_a - sqrt(1 - abar_a) eps) / sqrt(abar_a)
    x0_bar  = m * y + (1 - m) * clip(x0_hat, -1, 1)               (range-null-space projection; A = mask)
    x_{a-1} = sqrt(abar_{a-1}) x0_bar + sqrt(1 - abar_{a-1}) (eta z + sqrt(1 - eta^2) eps)
as the authors' code (wyhuai/DDNM, functions/svd_ddnm.py) takes its DDIM step (eta: the share of
fresh noise, 0.85 there). The clip is our one departure from that code, kept by measurement: without
it the `expand` masks came out 6.5% worse on faces32 (docs/samplers.md). At the last
step abar_{-1} = 1 and the result is x0_bar. Time travel (a move up from a to b > a) re-noises the
latest projected estimate: x_b = sqrt(abar_b) x0_bar + sqrt(1 - abar_b) z, then the stretch is
redone. With class-conditional models and a noisy classifier, eps is guided as in guided-diffusion's
DDIM (eps - sqrt(1 - abar_a) * scale * grad log p(y | x_a)).
"""

from __future__ import annotations

from typing import Callable, ClassVar

import torch

from ..diffusion import COEFFICIENTS, predict_eps_from_xstart, predict_xstart, predict_xstart_from_eps
from ..guidance import classifier_gradient
from ..sample_batch import SampleBatch, SampleState
from ..sampler_settings import DDNMSettings
from . import Rows, Sampler

_SQRT_AC = COEFFICIENTS.index("sqrt_ac")
_SQRT_1M_AC = COEFFICIENTS.index("sqrt_1m_ac")


class DDNM(Sampler):
    settings: ClassVar[type[DDNMSettings]] = DDNMSettings

    def move_up(self, batch: SampleBatch, slot: int, state: SampleState) -> None:
        """Time travel: straight to the top of the climb, re-noising the projected estimate."""
        while state.next > state.current:
            state.position += 1
        row = state.rows[state.current]
        noise = state.randn(batch.x.shape[1:], batch.device)
        batch.x[slot] = row[_SQRT_AC] * batch.pred_xstart[slot] + row[_SQRT_1M_AC] * noise

    def network_input(self, rows: Rows) -> torch.Tensor:
        """x_a itself: DDNM puts the known pixels into the estimate, not into the network's input."""
        rows.scratch["noise"] = rows.noise()
        return rows.take(rows.batch.x)

    def update(self, rows: Rows, x_in: torch.Tensor, model_output: torch.Tensor, *, classifier: Callable | None,
               clip_denoised: bool) -> tuple[torch.Tensor, torch.Tensor]:
        batch, c = rows.batch, rows.c
        # The network's own noise goes into the DDIM step (as the authors' code); only the estimate
        # that the known pixels are projected into is clipped (measured: docs/samplers.md).
        x0 = predict_xstart(batch.diffusion, model_output, x_in, c, clip_denoised=False)
        eps = predict_eps_from_xstart(x_in, x0, c)
        y = rows.labels
        if classifier is not None and y is not None and any(s.params.classifier_scale for s in rows.states):
            eps = eps - c["sqrt_1m_ac"] * classifier_gradient(classifier, x_in, c["timestep"], y, c["guidance"])
            x0 = predict_xstart_from_eps(x_in, eps, c)
        if clip_denoised and batch.diffusion.clip_range is not None:
            x0 = x0.clamp(-batch.diffusion.clip_range, batch.diffusion.clip_range)
        x0 = torch.where(rows.take(batch.keep), rows.take(batch.gt), x0)
        eta = torch.tensor([[s.params.sampler.eta] for s in rows.states], dtype=torch.float64)
        mix = torch.cat([eta, (1 - eta ** 2).sqrt()], dim=1).to(torch.float32).to(batch.device).view(-1, 2, 1, 1, 1)
        x_next = c["sqrt_ac_prev"] * x0 + c["sqrt_1m_ac_prev"] * (mix[:, 0] * rows.scratch["noise"] + mix[:, 1] * eps)
        return x_next, x0
