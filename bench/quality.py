"""Quality against cost: every sampler at several network-evaluation budgets, on held-out faces.

    python -m bench.quality frontier --faces 4          # the candidates, on the selection faces
    python -m bench.quality check --faces 8             # presets vs the baseline, on other faces
    python -m bench.quality report --out docs/          # docs/quality.md and docs/quality_frontier.png

Every setting sees the same faces, masks and seeds (model: faces32, our demo checkpoint). The
`frontier` run uses the selection faces and masks, from which the presets were chosen; `check`
runs the presets and the 250-step baseline on other faces and other masks. Metrics per mask family:
- masked MAE: mean absolute error inside the mask against the ground truth, in 0..255 levels;
- feature error: for each face feature (left eye, right eye, mouth) whose disc is at least half
  masked, the distance between the mean colour the model painted there and the feature's true
  colour (from the generator's parameters), in 0..255 levels: did it paint an eye of the
  right colour in the right place?
Results go to bench/results/*.jsonl, one line per setting, so a long run can be read while it runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import models
from models.sampler_settings import DDNMSettings, RePaintSettings, SamplerSettings, settings_from_record
from service.faces import EVAL_SEEDS, face
from training.masks import FAMILIES, keep_mask

RESULTS = Path(__file__).parent / "results"

# Mask families grouped by what they ask of a sampler: large regions to invent, thin gaps to
# bridge, and sparse known pixels to interpolate between.
GROUPS = {"large": ("wide", "half", "expand"), "thin": ("narrow", "every_second_line"),
          "sparse": ("super_resolution",)}

# The candidates: each sampler at budgets of about 50, 100, 250, 500 and 2,410 evaluations.
FRONTIER: tuple[tuple[str, SamplerSettings], ...] = (
    ("repaint 25/5/2", RePaintSettings(steps=25, jump_length=5, jump_n_sample=2)),
    ("repaint 50", RePaintSettings(steps=50, jump_n_sample=1)),
    ("repaint 40/5/2", RePaintSettings(steps=40, jump_length=5, jump_n_sample=2)),
    ("repaint 50/10/2", RePaintSettings(steps=50, jump_length=10, jump_n_sample=2)),
    ("repaint 100", RePaintSettings(steps=100, jump_n_sample=1)),
    ("repaint 250", RePaintSettings(steps=250, jump_n_sample=1)),
    ("repaint 100/10/3", RePaintSettings(steps=100, jump_length=10, jump_n_sample=3)),
    ("repaint 100/10/5", RePaintSettings(steps=100, jump_length=10, jump_n_sample=5)),
    ("repaint 250/10/2", RePaintSettings(steps=250, jump_length=10, jump_n_sample=2)),
    ("repaint 500", RePaintSettings(steps=500, jump_n_sample=1)),
    ("repaint 250/10/10 from 100", RePaintSettings(steps=250, jump_length=10, jump_n_sample=10,
                                                   start_resampling=100)),
    ("repaint 250/10/10 (paper)", RePaintSettings(steps=250, jump_length=10, jump_n_sample=10)),
    ("ddnm 50", DDNMSettings(steps=50)),
    ("ddnm 25 travel 5x3", DDNMSettings(steps=25, travel_length=5, travel_repeat=3)),
    ("ddnm 50 travel 10x2", DDNMSettings(steps=50, travel_length=10, travel_repeat=2)),
    ("ddnm 100", DDNMSettings(steps=100)),
    ("ddnm 100 eta 0.5", DDNMSettings(steps=100, eta=0.5)),
    ("ddnm 250", DDNMSettings(steps=250)),
    ("ddnm 100 travel 10x3", DDNMSettings(steps=100, travel_length=10, travel_repeat=3)),
    ("ddnm 100 travel 10x5", DDNMSettings(steps=100, travel_length=10, travel_repeat=5)),
    ("ddnm 500", DDNMSettings(steps=500)),
    ("ddnm 250 travel 10x10", DDNMSettings(steps=250, travel_length=10, travel_repeat=10)),
)
BASELINE = "repaint 250"

# Selection and check sets: other faces and other masks.
SELECTION = {"face_offset": 0, "mask_seed": 1000}
CHECK = {"face_offset": 1000, "mask_seed": 5000}


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


class Cases:
    """n faces per mask family, one batch holding every case."""

    def __init__(self, n_faces: int, face_offset: int, mask_seed: int, size: int):
        self.faces = [face(s, size) for s in EVAL_SEEDS[face_offset:face_offset + n_faces]]
        self.cases = [(f, i) for f in FAMILIES for i in range(n_faces)]
        self.images = torch.from_numpy(np.stack([self.faces[i][0] for _, i in self.cases])
                                       ).permute(0, 3, 1, 2).float() / 127.5 - 1
        self.keeps = torch.from_numpy(np.stack([keep_mask(f, size, seed=mask_seed + i) for f, i in self.cases]))[:, None]

    def score(self, pixels: np.ndarray) -> dict[str, dict[str, float]]:
        per_family = {}
        for family in FAMILIES:
            maes, feats = [], []
            for k, (f, i) in enumerate(self.cases):
                if f != family:
                    continue
                unknown = self.keeps[k, 0].numpy() < 0.5
                truth = self.faces[i][0].astype(np.float64)
                maes.append(np.abs(pixels[k].astype(np.float64) - truth)[unknown].mean())
                feats += feature_error(pixels[k], self.keeps[k, 0].numpy(), self.faces[i][1])
            per_family[family] = {"mae": float(np.mean(maes)), "feature": float(np.mean(feats)) if feats else None}
        return per_family


def run(which: str, settings, n_faces: int, out: Path, checkpoint: str | None = None, seed: int = 0,
        grid: Path | None = None, append: bool = False) -> list[dict]:
    loaded = models.load_preset("faces32", checkpoint=checkpoint)
    split = SELECTION if which == "frontier" else CHECK
    cases = Cases(n_faces, split["face_offset"], split["mask_seed"], loaded.preset.image_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not append:
        out.write_text("")
    rows, outputs = [], {}
    for label, sampler in settings:
        t0 = time.perf_counter()
        result = models.inpaint(loaded.unet, loaded.diffusion, cases.images, cases.keeps, sampler=sampler, seed=seed)
        seconds = time.perf_counter() - t0
        pixels = to_uint8(result)
        outputs[label] = pixels
        row = {"label": label, "settings": sampler.to_record(), "evaluations": sampler.evaluations,
               "seconds_per_image": seconds / len(cases.cases), "families": cases.score(pixels),
               "faces": n_faces, "split": which, "machine": machine()}
        rows.append(row)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{label}: {sampler.evaluations} evaluations, {seconds:.0f}s, mean MAE {mean_mae(row):.2f}",
              file=sys.stderr, flush=True)
    if grid is not None:
        write_grid(grid, cases, outputs)
    return rows


def timing(n_faces: int, out: Path, checkpoint: str | None = None, evaluations: int = 40, repeats: int = 3) -> dict:
    """Seconds per network evaluation of each sampler at the frontier's batch size, side by side
    in one run (the frontier's own clocks are not comparable: a long run shares the machine)."""
    loaded = models.load_preset("faces32", checkpoint=checkpoint)
    cases = Cases(n_faces, SELECTION["face_offset"], SELECTION["mask_seed"], loaded.preset.image_size)
    samplers = {"repaint": RePaintSettings(steps=evaluations, jump_n_sample=1), "ddnm": DDNMSettings(steps=evaluations)}
    best = {name: float("inf") for name in samplers}
    for _ in range(repeats):  # interleaved, so that a busy moment hits both
        for name, sampler in samplers.items():
            t0 = time.perf_counter()
            models.inpaint(loaded.unet, loaded.diffusion, cases.images, cases.keeps, sampler=sampler, seed=0)
            best[name] = min(best[name], (time.perf_counter() - t0) / evaluations / len(cases.cases))
    result = {"seconds_per_evaluation_per_image": best, "batch": len(cases.cases), "machine": machine()}
    out.write_text(json.dumps(result) + "\n")
    return result


def describe(settings: SamplerSettings) -> str:
    """The settings that differ from the sampler's defaults, e.g. `ddnm 100, eta 0.5`."""
    default = type(settings)()
    shown = [f"{settings.name} {settings.steps}"]
    if settings.name == "repaint":
        shown[0] += f"/{settings.jump_length}/{settings.jump_n_sample}"
    shown += [f"{k} {v}" for k, v in settings.to_record().items()
              if k not in ("sampler", "steps", "jump_length", "jump_n_sample") and v != getattr(default, k)]
    return ", ".join(shown)


def machine() -> str:
    """The CPU's model name and the threads torch uses (the GPU's name when one is used)."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {torch.get_num_threads()} torch threads"


def mean_mae(row: dict, families=FAMILIES) -> float:
    return float(np.mean([row["families"][f]["mae"] for f in families]))


def group_mae(row: dict) -> dict[str, float]:
    return {g: mean_mae(row, fams) for g, fams in GROUPS.items()}


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def choose_presets(rows: list[dict], budgets=(("fast", 100), ("balanced", 500), ("best", None))) -> dict[str, dict]:
    """The setting with the lowest mean masked MAE within each preset's evaluation budget."""
    chosen = {}
    for name, budget in budgets:
        within = [r for r in rows if budget is None or r["evaluations"] <= budget]
        chosen[name] = min(within, key=mean_mae)
    return chosen


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 1 + len(GROUPS), figsize=(4.2 * (1 + len(GROUPS)), 4), sharex=True)
    panels = [("all six families", FAMILIES)] + [(f"{g}: {', '.join(f)}", f) for g, f in GROUPS.items()]
    for ax, (title, families) in zip(axes, panels):
        for sampler, marker in (("repaint", "o"), ("ddnm", "s")):
            pts = sorted((r["evaluations"], mean_mae(r, families), r["label"]) for r in rows
                         if r["settings"]["sampler"] == sampler)
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=sampler)
            # The frontier: the best error reached at or below each cost.
            best, line = float("inf"), []
            for x, y, _ in pts:
                if y < best:
                    best = y
                    line.append((x, y))
            ax.step([p[0] for p in line], [p[1] for p in line], where="post", alpha=0.5)
        ax.set_xscale("log")
        ticks = [50, 100, 250, 500, 1000, 2410]
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("network evaluations per image")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("masked MAE (0..255, lower is better)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(frontier: list[dict], check: list[dict], out_dir: Path, presets: dict[str, dict],
           clock: dict | None = None) -> str:
    n_sel, n_chk = frontier[0]["faces"], (check[0]["faces"] if check else 0)
    lines = ["# Inpainting quality against cost", "",
             f"Model `faces32` (our demo checkpoint). Masked MAE is the mean absolute error inside the mask against the "
             f"ground truth, in 0..255 levels; lower is better. Made with `python -m bench.quality frontier --faces "
             f"{n_sel}`, `python -m bench.quality check --faces {n_chk}` and `python -m bench.quality report` on "
             f"{frontier[0]['machine']}.", "",
             "## The frontier", "",
             f"Every candidate on the same {n_sel} selection faces per mask family, the same masks and seeds. "
             "Groups: " + "; ".join(f"**{g}** = {', '.join(f)}" for g, f in GROUPS.items()) + ".", "",
             "![frontier](quality_frontier.png)", "",
             "| setting | evaluations | " + " | ".join(FAMILIES) + " | mean | large | thin | sparse | s/image |",
             "|---|---|" + "---|" * (len(FAMILIES) + 5)]
    per_eval = (clock or {}).get("seconds_per_evaluation_per_image", {})
    for r in sorted(frontier, key=lambda r: (r["settings"]["sampler"] != "repaint", r["evaluations"])):
        fam = [r["families"][f]["mae"] for f in FAMILIES]
        g = group_mae(r)
        cost = per_eval.get(r["settings"]["sampler"])
        lines.append(f"| {r['label']} | {r['evaluations']} | " + " | ".join(f"{v:.1f}" for v in fam)
                     + f" | {mean_mae(r):.2f} | {g['large']:.2f} | {g['thin']:.2f} | {g['sparse']:.2f} | "
                     + ("-" if cost is None else f"{cost * r['evaluations']:.2f}") + " |")
    if clock:
        lines += ["", "Seconds per image: evaluations times the seconds one evaluation of each sampler takes per "
                      f"image in a batch of {clock['batch']}, measured side by side in one run "
                      f"(`python -m bench.quality timing`) on {clock['machine']}: "
                  + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in per_eval.items())
                  + ". Both samplers cost one network evaluation per step; the sampler's own arithmetic is "
                    "small beside it."]
    lines += ["", "Feature error (the colour painted on a masked eye or mouth against its true colour; '-' where no "
                  "case of the family masks a feature):", "",
              "| setting | evaluations | " + " | ".join(FAMILIES) + " |", "|---|---|" + "---|" * len(FAMILIES)]
    for r in sorted(frontier, key=lambda r: (r["settings"]["sampler"] != "repaint", r["evaluations"])):
        vals = [r["families"][f]["feature"] for f in FAMILIES]
        lines.append(f"| {r['label']} | {r['evaluations']} | "
                     + " | ".join("-" if v is None else f"{v:.1f}" for v in vals) + " |")
    lines += ["", "Which sampler wins each family, at each budget (lowest masked MAE among the settings at or "
                  "below the budget):", "", "| budget | " + " | ".join(FAMILIES) + " |",
              "|---|" + "---|" * len(FAMILIES)]
    for budget in (50, 100, 250, 500, 2410):
        within = [r for r in frontier if r["evaluations"] <= budget]
        cells = []
        for f in FAMILIES:
            best = min(within, key=lambda r: r["families"][f]["mae"])
            cells.append(f"{best['settings']['sampler']} ({best['families'][f]['mae']:.1f})")
        lines.append(f"| ≤ {budget} | " + " | ".join(cells) + " |")
    lines += ["", "## The presets", "",
              "Each preset is the candidate with the lowest mean masked MAE within its budget on the selection faces:",
              "", "| preset | budget | chosen | evaluations | mean MAE (selection) |", "|---|---|---|---|---|"]
    for name, budget in (("fast", "≤ 100"), ("balanced", "≤ 500"), ("best", "any")):
        r = presets[name]
        lines.append(f"| `{name}` | {budget} | {r['label']} | {r['evaluations']} | {mean_mae(r):.2f} |")
    if check:
        lines += ["", "## Checked on other faces and masks", "",
                  f"The presets and the baseline (`{BASELINE}`, no resampling) on {n_chk} other faces per family, "
                  "with other masks (none of them seen when choosing):", "",
                  "| setting | evaluations | " + " | ".join(FAMILIES) + " | large | thin | sparse | mean |",
                  "|---|---|" + "---|" * (len(FAMILIES) + 4)]
        for r in check:
            g = group_mae(r)
            lines.append(f"| {r['label']} | {r['evaluations']} | "
                         + " | ".join(f"{r['families'][f]['mae']:.1f}" for f in FAMILIES)
                         + f" | {g['large']:.2f} | {g['thin']:.2f} | {g['sparse']:.2f} | {mean_mae(r):.2f} |")
        base = next((r for r in check if r["label"] == BASELINE), None)
        if base is not None:
            lines.append("")
            for r in check:
                if r is base:
                    continue
                worse = [g for g, v in group_mae(r).items() if v > group_mae(base)[g]]
                families = [f for f in FAMILIES if r["families"][f]["mae"] > base["families"][f]["mae"]]
                lines.append(f"- {r['label']}, {r['evaluations']} evaluations: "
                             + ("no worse than the baseline in every family group" if not worse else
                                f"worse than the baseline in {', '.join(worse)}")
                             + (" and in every family" if not families else f" (worse in {', '.join(families)})")
                             + f"; mean {mean_mae(r):.2f} against {mean_mae(base):.2f}.")
        lines += ["", "![check grid](quality_grid.png)", "",
                  "Grid (check faces): per mask family one face; columns: the input with the mask in grey, then each "
                  "setting in the order of the table, then the ground truth."]
    return "\n".join(lines) + "\n"


def write_grid(path: Path, cases: Cases, outputs) -> None:
    tiles_rows = []
    for family in FAMILIES:
        k = next(j for j, (f, i) in enumerate(cases.cases) if f == family)
        truth = cases.faces[cases.cases[k][1]][0]
        keep = cases.keeps[k, 0].numpy()[..., None] > 0.5
        masked = np.where(keep, truth, 128).astype(np.uint8)
        tiles = [masked] + [outputs[label][k] for label in outputs] + [truth]
        tiles_rows.append(np.concatenate([np.pad(t, ((1, 1), (1, 1), (0, 0)), constant_values=255) for t in tiles], 1))
    grid = np.concatenate(tiles_rows, 0)
    Image.fromarray(grid).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.Resampling.NEAREST).save(path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("frontier", "check", "timing", "report"))
    parser.add_argument("--checkpoint", default=None, help="default: the shipped faces32 checkpoint")
    parser.add_argument("--faces", type=int, default=4, help="faces per mask family")
    parser.add_argument("--only", default=None, help="frontier: comma-separated labels to run; "
                        "check: comma-separated preset names")
    parser.add_argument("--append", action="store_true", help="add to the results instead of starting anew")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args(argv)
    frontier_file, check_file = RESULTS / "frontier.jsonl", RESULTS / "check.jsonl"
    timing_file = RESULTS / "timing.json"
    if args.what == "frontier":
        settings = [s for s in FRONTIER if args.only is None or s[0] in args.only.split(",")]
        run("frontier", settings, args.faces, frontier_file, args.checkpoint, append=args.append)
    elif args.what == "timing":
        print(timing(args.faces, RESULTS / "timing.json", args.checkpoint))
    elif args.what == "check":
        from worker.presets import PRESETS

        # The baseline, then each preset's setting once, named for every preset that uses it.
        names: dict[SamplerSettings, list[str]] = {}
        for name, preset in PRESETS.items():
            names.setdefault(settings_from_record(preset.to_record()), []).append(name)
        settings = [(BASELINE, dict(FRONTIER)[BASELINE])]
        for chosen, used_by in names.items():
            if args.only is None or set(used_by) & set(args.only.split(",")):
                label = ("preset " if len(used_by) == 1 else "presets ") + " and ".join(used_by)
                settings.append((f"{label} ({describe(chosen)})", chosen))
        if args.append:  # settings already checked are not run again
            done = {json.dumps(r["settings"], sort_keys=True) for r in read(check_file)}
            settings = [s for s in settings if json.dumps(s[1].to_record(), sort_keys=True) not in done]
        run("check", settings, args.faces, check_file, args.checkpoint, append=args.append,
            grid=None if args.append else args.out / "quality_grid.png")
    else:
        frontier = read(frontier_file)
        check = read(check_file) if check_file.exists() else []
        clock = json.loads(timing_file.read_text()) if timing_file.exists() else None
        plot(frontier, args.out / "quality_frontier.png")
        text = report(frontier, check, args.out, choose_presets(frontier), clock)
        (args.out / "quality.md").write_text(text)
        print(text)


if __name__ == "__main__":
    main()
