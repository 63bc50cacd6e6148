"""Classifier guidance (Dhariwal & Nichol, 2021): the gradient of a noisy classifier's log-probability."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def classifier_gradient(classifier: Callable, x: torch.Tensor, t: torch.Tensor,
                        y: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """scale * grad_x log p(y | x_t) for [N x C x H x W] x, [N] timesteps and labels, [N x 1 x 1 x 1] scale."""
    with torch.inference_mode(False), torch.enable_grad():
        x_in = x.detach().clone().requires_grad_(True)
        log_probs = F.log_softmax(classifier(x_in, t.clone()).float(), dim=-1)
        selected = log_probs[torch.arange(len(y), device=y.device), y.clone()]
        return torch.autograd.grad(selected.sum(), x_in)[0] * scale.clone()
