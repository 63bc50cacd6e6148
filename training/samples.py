"""Unconditional samples of the demo model beside training faces, as one image.

    python -m training.samples --out docs/faces32_samples.png [--checkpoint runs/faces32/ema.pt]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import models

from service.faces import face_batch


def sample_grid(checkpoint: str | None, n: int = 16, steps: int = 250, seed: int = 0) -> np.ndarray:
    loaded = models.load_preset("faces32", checkpoint=checkpoint)
    size = loaded.preset.image_size
    blank = torch.zeros(n, 3, size, size)
    unknown = torch.zeros(n, 1, size, size)  # nothing known: plain generation
    out = models.inpaint(loaded.unet, loaded.diffusion, blank, unknown, t_T=steps, jump_length=10,
                         jump_n_sample=1, seed=seed)
    samples = ((out + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    training = face_batch(range(n), size).transpose(0, 2, 3, 1)
    rows = [np.concatenate(list(batch), axis=1) for batch in (samples[: n // 2], samples[n // 2:],
                                                             training[: n // 2], training[n // 2:])]
    return np.concatenate(rows, axis=0)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--out", type=Path, default=Path("docs/faces32_samples.png"))
    args = parser.parse_args(argv)
    grid = sample_grid(args.checkpoint)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.Resampling.NEAREST).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
