"""The shipped demo checkpoint: strict load, pinned sha256, and it really inpaints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import models
from models.presets import FACES32_SHA256
from service.faces import EVAL_SEEDS, face
from training.masks import eye_mask


@pytest.fixture(scope="module")
def faces32():
    return models.load_preset("faces32")  # strict keys, weights_only, sha256 checked


def test_checkpoint_is_pinned_and_loads_strictly(faces32):
    path = models.get_preset("faces32").bundled_path
    assert models.sha256_of(path) == FACES32_SHA256
    assert path.stat().st_size <= 25 * 1024 * 1024
    state = models.read_state_dict(path)
    assert list(state) == list(faces32.unet.state_dict())


def blurred_fill(image: torch.Tensor, keep: torch.Tensor, iterations: int = 200) -> torch.Tensor:
    """Baseline: repeatedly blur and paste the known pixels back (harmonic fill)."""
    kernel = torch.ones(3, 1, 3, 3) / 9
    x = torch.where(keep > 0.5, image, image[keep.expand_as(image) > 0.5].mean())
    for _ in range(iterations):
        x = torch.where(keep > 0.5, image, F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=3))
    return x


def test_masked_eye_is_filled_better_than_a_blurred_fill(faces32):
    seeds = list(EVAL_SEEDS[:6])
    images, keeps = [], []
    for s in seeds:
        img, p = face(s)
        images.append(torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 127.5 - 1)
        keeps.append(torch.from_numpy(eye_mask(p))[None])
    image, keep = torch.stack(images), torch.stack(keeps)
    out = models.inpaint(faces32.unet, faces32.diffusion, image, keep, t_T=50, jump_length=5, jump_n_sample=2, seed=0)
    unknown = keep.expand_as(image) < 0.5
    ours = (out - image).abs()[unknown].mean()
    baseline = (blurred_fill(image, keep) - image).abs()[unknown].mean()
    assert ours < 0.8 * baseline, (float(ours), float(baseline))
    assert torch.equal(out[~unknown], image[~unknown])
