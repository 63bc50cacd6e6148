"""Quality table: RePaint on held-out procedural faces under the paper's six mask families.

    python -m bench.quality --faces 8 --out docs/   [--checkpoint models/weights/faces32.pt]

Every setting sees the same faces, masks and seeds. Metrics per mask family:
- masked MAE: mean absolute error inside the mask against the ground truth, in 0..255 levels;
- feature error: for each face feature (left eye, right eye, mouth) whose disc is at least half
  masked, the distance between the mean colour the model painted there and the feature's true
  colour (from the generator's parameters), in 0..255 levels: did it paint an eye of the
  right colour in the right place?
Writes docs/quality.md (the table and the command) and docs/quality_grid.png.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import models
from training.faces import EVAL_SEEDS, face
from training.masks import FAMILIES, keep_mask

# (label, steps, jump_length, jump_n_sample)
SETTINGS = (
    ("no resampling 100", 100, 10, 1),
    ("no resampling 250", 250, 10, 1),
    ("50/5/3", 50, 5, 3),
    ("100/10/5", 100, 10, 5),
    ("paper 250/10/10", 250, 10, 10),
)


def feature_discs(p, size: int):
    """(mask of the disc, true colour) for the left eye, right eye and mouth."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    out = []
    for cx, cy in p.eye_centres():
        out.append(((xx - cx) ** 2 + (yy - cy) ** 2 <= (0.8 * p.eye_r) ** 2, p.eye_colour))
    mouth = ((xx - p.head_cx) / (0.8 * p.mouth_w)) ** 2 + ((yy - p.mouth_y) / max(0.8 * p.mouth_h, 0.5)) ** 2 <= 1
    out.append((mouth, p.mouth_colour))
    return out


def feature_error(result: np.ndarray, keep: np.ndarray, p) -> list[float]:
    errors = []
    for disc, colour in feature_discs(p, result.shape[0]):
        if disc.sum() and (keep[disc] < 0.5).mean() >= 0.5:
            painted = result[disc].astype(np.float64).mean(axis=0)
            errors.append(float(np.abs(painted - np.array(colour, dtype=np.float64)).mean()))
    return errors


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def run(checkpoint: str | None, n_faces: int, out_dir: Path, settings=SETTINGS, seed: int = 0) -> str:
    loaded = models.load_preset("faces32", checkpoint=checkpoint)
    size = loaded.preset.image_size
    faces = [face(s, size) for s in EVAL_SEEDS[:n_faces]]
    cases = [(f, i) for f in FAMILIES for i in range(n_faces)]  # one batch holds every case
    images = torch.from_numpy(np.stack([faces[i][0] for _, i in cases])).permute(0, 3, 1, 2).float() / 127.5 - 1
    keeps = torch.from_numpy(np.stack([keep_mask(f, size, seed=1000 + i) for f, i in cases]))[:, None]
    rows, outputs = [], {}
    for label, steps, jl, jn in settings:
        t0 = time.perf_counter()
        result = models.inpaint(loaded.unet, loaded.diffusion, images, keeps, t_T=steps, jump_length=jl,
                                jump_n_sample=jn, seed=seed)
        seconds = time.perf_counter() - t0
        pixels = to_uint8(result)
        outputs[label] = pixels
        evaluations = models.count_model_evaluations(models.jump_schedule(steps, jl, jn))
        per_family = {}
        for family in FAMILIES:
            maes, feats = [], []
            for k, (f, i) in enumerate(cases):
                if f != family:
                    continue
                unknown = keeps[k, 0].numpy() < 0.5
                truth = faces[i][0].astype(np.float64)
                maes.append(np.abs(pixels[k].astype(np.float64) - truth)[unknown].mean())
                feats += feature_error(pixels[k], keeps[k, 0].numpy(), faces[i][1])
            per_family[family] = (float(np.mean(maes)), float(np.mean(feats)) if feats else float("nan"))
        rows.append((label, evaluations, seconds, per_family))
        print(f"{label}: {evaluations} evaluations, {seconds:.0f}s", file=sys.stderr, flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_grid(out_dir / "quality_grid.png", faces, cases, keeps, outputs)
    text = table(rows, n_faces)
    (out_dir / "quality.md").write_text(text)
    return text


def table(rows, n_faces: int) -> str:
    lines = ["# Inpainting quality on held-out procedural faces", "",
             f"Model `faces32` (our demo checkpoint), {n_faces} held-out faces per mask family, the same masks and "
             f"seeds for every setting. Made with `python -m bench.quality --faces {n_faces} --out docs/` on "
             f"{platform.machine()} ({torch.get_num_threads()} threads). Lower is better; levels are 0..255.", "",
             "Masked MAE (mean absolute error inside the mask against the ground truth):", "",
             "| setting | evaluations | " + " | ".join(FAMILIES) + " | mean |",
             "|---|---|" + "---|" * (len(FAMILIES) + 1)]
    for label, evals, _, fam in rows:
        vals = [fam[f][0] for f in FAMILIES]
        lines.append(f"| {label} | {evals} | " + " | ".join(f"{v:.1f}" for v in vals) + f" | {np.mean(vals):.1f} |")
    lines += ["", "Feature error (mean colour painted on a masked eye or mouth against its true colour; "
                  "'-' where no family case masks a feature):", "",
              "| setting | evaluations | " + " | ".join(FAMILIES) + " | mean |",
              "|---|---|" + "---|" * (len(FAMILIES) + 1)]
    for label, evals, _, fam in rows:
        vals = [fam[f][1] for f in FAMILIES]
        shown = " | ".join("-" if np.isnan(v) else f"{v:.1f}" for v in vals)
        lines.append(f"| {label} | {evals} | {shown} | {np.nanmean(vals):.1f} |")
    lines += ["", "Seconds per setting for the whole batch (" + ", ".join(
        f"{label}: {seconds:.0f}s" for label, _, seconds, _ in rows) + ").", "",
              "![grid](quality_grid.png)", "",
              "Grid: per mask family one face; columns: input with the mask in grey, then each setting in the "
              "order of the table, then the ground truth."]
    return "\n".join(lines) + "\n"


def write_grid(path: Path, faces, cases, keeps, outputs) -> None:
    tiles_rows = []
    for family in FAMILIES:
        k = next(j for j, (f, i) in enumerate(cases) if f == family)
        truth = faces[cases[k][1]][0]
        keep = keeps[k, 0].numpy()[..., None] > 0.5
        masked = np.where(keep, truth, 128).astype(np.uint8)
        tiles = [masked] + [outputs[label][k] for label in outputs] + [truth]
        tiles_rows.append(np.concatenate([np.pad(t, ((1, 1), (1, 1), (0, 0)), constant_values=255) for t in tiles], 1))
    grid = np.concatenate(tiles_rows, 0)
    Image.fromarray(grid).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.Resampling.NEAREST).save(path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="default: the shipped faces32 checkpoint")
    parser.add_argument("--faces", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args(argv)
    print(run(args.checkpoint, args.faces, args.out))


if __name__ == "__main__":
    main()
