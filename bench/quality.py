"""Quality against cost: each sampler at several network-evaluation budgets, on held-out faces,
every number with its confidence interval.

    python -m bench.quality frontier --faces 16         # the candidates, on the selection faces
    python -m bench.quality frontier --faces 16 --only "ddnm 100" --formula authors --append
    python -m bench.quality check --faces 16            # presets vs the baseline, on other faces
    python -m bench.quality report --out docs/          # docs/quality.md and docs/quality_frontier.png

Every setting sees the same faces, masks and seeds (model: faces32, our demo checkpoint): case k of
a run is seeded k in every setting, so two settings are compared case by case. The `frontier` run
uses the selection faces and masks, from which the presets are chosen; `check` runs the presets
and the 250-step baseline on other faces and other masks. Metrics per mask family:
- masked MAE: mean absolute error inside the mask against the ground truth, in 0..255 levels;
- feature error: for each face feature (left eye, right eye, mouth) whose disc is at least half
  masked, the distance between the mean colour the model painted there and the feature's true
  colour (from the generator's parameters), in 0..255 levels: did it paint an eye of the
  right colour in the right place?
Intervals are 95% t-intervals over faces. Each face is masked once in every family, so the face
is the unit: a setting's mean over families is the mean over faces of each face's mean over the
families, and two settings are compared by the interval of their per-face difference (paired:
same faces, masks and seeds). "A beats B" means that interval lies wholly below zero; otherwise
the two are within the noise.

`--formula` runs DDNM's update with one of FORMULAS (ours before issue 26, the authors', the
steps between) instead of models/samplers/ddnm.py, so that each departure from the authors' code
is measured on the same cases; without it the module runs, and the row records which formula it
matched. Results go to bench/results/quality_*.jsonl, a line per setting as it finishes, so a
long run can be read while it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import models
from models.diffusion import predict_eps_from_xstart, predict_xstart
from models.sampler_settings import DDNMSettings, RePaintSettings, SamplerSettings, settings_from_record
from service.faces import EVAL_SEEDS, face
from training.masks import FAMILIES, keep_mask

RESULTS = Path(__file__).parent / "results"
FRONTIER_FILE = RESULTS / "quality_frontier.jsonl"
CHECK_FILE = RESULTS / "quality_check.jsonl"
TIMING_FILE = RESULTS / "timing.json"

# Mask families grouped by what they ask of a sampler: large regions to invent, thin gaps to
# bridge, and sparse known pixels to interpolate between.
GROUPS = {"large": ("wide", "half", "expand"), "thin": ("narrow", "every_second_line"),
          "sparse": ("super_resolution",)}

# The candidates: each sampler at budgets of about 50, 100, 250, 500 and more evaluations.
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
    ("ddnm 100 travel 10x2", DDNMSettings(steps=100, travel_length=10, travel_repeat=2)),
    ("ddnm 250", DDNMSettings(steps=250)),
    ("ddnm 100 travel 10x3", DDNMSettings(steps=100, travel_length=10, travel_repeat=3)),
    ("ddnm 100 travel 10x5", DDNMSettings(steps=100, travel_length=10, travel_repeat=5)),
    ("ddnm 500", DDNMSettings(steps=500)),
    ("ddnm 250 travel 10x3", DDNMSettings(steps=250, travel_length=10, travel_repeat=3)),
    ("ddnm 1000", DDNMSettings(steps=1000)),
    ("ddnm 250 travel 10x10", DDNMSettings(steps=250, travel_length=10, travel_repeat=10)),
)
BASELINE = "repaint 250"

# The budgets the presets are chosen within (network evaluations per image; None: any cost).
BUDGETS = {"fast": 100, "balanced": 500, "best": None}

# DDNM's update, by name: ours before issue 26, the authors' (wyhuai/DDNM, functions/svd_ddnm.py,
# `ddnm_diffusion`) and the step between; docs/samplers.md compares them line by line. A name
# ending in "+travel" re-noises the unprojected estimate when it time-travels, as the authors' code
# does (without it: the projected one, the known pixels travelling with the truth).
STEPS = {
    "clip+eps": "x0 clipped to [-1, 1]; the DDIM step's eps recomputed from the clipped x0 (ours before issue 26)",
    "clip": "x0 clipped to [-1, 1] before the projection; the DDIM step takes the network's eps",
    "authors": "x0 not clipped; the DDIM step takes the network's eps (the authors' step)",
}
FORMULAS = {**STEPS, **{f"{k}+travel": f"{v}; time travel re-noises the unprojected x0" for k, v in STEPS.items()}}
# The formula the presets are chosen with, and that models/samplers/ddnm.py implements after issue 26.
FORMULA = "clip"

# Selection and check sets: other faces and other masks.
SELECTION = {"face_offset": 0, "mask_seed": 1000}
CHECK = {"face_offset": 1000, "mask_seed": 5000}

# Two-sided 95% quantiles of Student's t by degrees of freedom (a larger df uses the next lower entry).
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
         10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101,
         19: 2.093, 20: 2.086, 24: 2.064, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


def interval(values) -> tuple[float, float]:
    """(mean, half-width of its 95% t-interval) of independent values."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return float(v.mean()), float("nan")
    t = _T975[max(df for df in _T975 if df <= len(v) - 1)]
    return float(v.mean()), float(t * v.std(ddof=1) / np.sqrt(len(v)))


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

    def score(self, pixels: np.ndarray) -> tuple[dict[str, dict[str, float]], dict[str, list[float]]]:
        """Per family: the means ({"mae", "feature"}), and the masked MAE of each face in order."""
        per_family, per_case = {}, {}
        for family in FAMILIES:
            maes, feats = [], []
            for k, (f, i) in enumerate(self.cases):
                if f != family:
                    continue
                unknown = self.keeps[k, 0].numpy() < 0.5
                truth = self.faces[i][0].astype(np.float64)
                maes.append(float(np.abs(pixels[k].astype(np.float64) - truth)[unknown].mean()))
                feats += feature_error(pixels[k], self.keeps[k, 0].numpy(), self.faces[i][1])
            per_family[family] = {"mae": float(np.mean(maes)), "feature": float(np.mean(feats)) if feats else None}
            per_case[family] = maes
        return per_family, per_case


class ClipShare:
    """How often a clip to [-1, 1] would act: the share of the clean estimate's values (unknown
    pixels) outside the range, by noise level t / T of the network's timestep."""

    EDGES = (0.0, 0.1, 0.3, 0.6, 1.0)

    def __init__(self):
        self.outside = np.zeros(len(self.EDGES) - 1)
        self.total = np.zeros(len(self.EDGES) - 1)

    def add(self, level: torch.Tensor, x0: torch.Tensor, unknown: torch.Tensor, limit: float) -> None:
        outside = ((x0.abs() > limit) & unknown).flatten(1).sum(1).double().cpu().numpy()
        total = unknown.flatten(1).sum(1).double().cpu().numpy()
        bins = np.clip(np.searchsorted(self.EDGES, level.double().cpu().numpy(), side="right") - 1,
                       0, len(self.outside) - 1)
        np.add.at(self.outside, bins, outside)
        np.add.at(self.total, bins, total)

    def summary(self) -> dict[str, float | None]:
        return {f"{lo:g}-{hi:g}": (float(o / t) if t else None)
                for lo, hi, o, t in zip(self.EDGES[:-1], self.EDGES[1:], self.outside, self.total)}


def _network_input(rows) -> torch.Tensor:
    """DDNM's input: x_a itself; the step's fresh noise is drawn first, one draw per sample."""
    rows.scratch["noise"] = rows.noise()
    return rows.take(rows.batch.x)


def _formula_update(formula: str, share: ClipShare | None, rows, x_in: torch.Tensor, model_output: torch.Tensor, *,
                    classifier=None, clip_denoised: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """DDNM's step from a to a - 1 by the named formula (FORMULAS); unguided."""
    if classifier is not None and any(s.params.classifier_scale for s in rows.states):
        raise NotImplementedError("the bench's formulas take no classifier guidance (faces32 has no classes)")
    batch, c = rows.batch, rows.c
    keep = rows.take(batch.keep)
    limit = batch.diffusion.clip_range if clip_denoised else None
    x0 = predict_xstart(batch.diffusion, model_output, x_in, c, clip_denoised=False)
    eps = predict_eps_from_xstart(x_in, x0, c)  # the network's own eps (through x0: any mean type)
    if share is not None:
        share.add(c["timestep"].flatten() / batch.diffusion.config.diffusion_steps, x0, ~keep, limit or 1.0)
    step = formula.removesuffix("+travel")
    if step in ("clip+eps", "clip") and limit is not None:
        x0 = x0.clamp(-limit, limit)
        if step == "clip+eps":
            eps = predict_eps_from_xstart(x_in, x0, c)
    x0_bar = torch.where(keep, rows.take(batch.gt), x0)
    eta = torch.tensor([[s.params.sampler.eta] for s in rows.states], dtype=torch.float64)
    mix = torch.cat([eta, (1 - eta ** 2).sqrt()], dim=1).to(torch.float32).to(batch.device).view(-1, 2, 1, 1, 1)
    x_next = c["sqrt_ac_prev"] * x0_bar + c["sqrt_1m_ac_prev"] * (mix[:, 0] * rows.scratch["noise"] + mix[:, 1] * eps)
    # The estimate a later time travel re-noises: the projected one, or the authors' unprojected one.
    return x_next, (x0 if formula.endswith("+travel") else x0_bar)


@contextlib.contextmanager
def ddnm_formula(formula: str | None, share: ClipShare | None = None):
    """Run DDNM's step by the named formula (None: models/samplers/ddnm.py as it is)."""
    if formula is None:
        yield
        return
    if formula not in FORMULAS:
        raise ValueError(f"unknown formula {formula!r}; known: {sorted(FORMULAS)}")
    from models.samplers import sampler_for

    math = sampler_for(DDNMSettings)
    # Instance attributes shadow the class's methods; putting back what was there restores them.
    saved = {name: vars(math)[name] for name in ("network_input", "update") if name in vars(math)}
    math.network_input = _network_input
    math.update = functools.partial(_formula_update, formula, share)
    try:
        yield
    finally:
        del math.network_input, math.update
        for name, value in saved.items():
            setattr(math, name, value)


def implemented_formula(loaded) -> str:
    """Which of FORMULAS models/samplers/ddnm.py computes, from a short run with time travel on
    six cases ('other' if none matches)."""
    cases = Cases(1, SELECTION["face_offset"], SELECTION["mask_seed"], loaded.preset.image_size)
    sampler = DDNMSettings(steps=6, travel_length=2, travel_repeat=2)

    def inpaint():
        return models.inpaint(loaded.unet, loaded.diffusion, cases.images, cases.keeps, sampler=sampler, seed=0)

    implemented = inpaint()
    for name in FORMULAS:
        with ddnm_formula(name):
            if torch.allclose(inpaint(), implemented, atol=1e-4):
                return name
    return "other"


def run(which: str, settings, n_faces: int, out: Path, checkpoint: str | None = None, seed: int = 0,
        grid: Path | None = None, append: bool = False, formula: str | None = None) -> list[dict]:
    loaded = models.load_preset("faces32", checkpoint=checkpoint)
    split = SELECTION if which == "frontier" else CHECK
    cases = Cases(n_faces, split["face_offset"], split["mask_seed"], loaded.preset.image_size)
    implemented = implemented_formula(loaded) if formula is None and any(s.name == "ddnm" for _, s in settings) else None
    out.parent.mkdir(parents=True, exist_ok=True)
    if not append:
        out.write_text("")
    rows, outputs = [], {}
    for label, sampler in settings:
        share = ClipShare() if formula is not None and sampler.name == "ddnm" else None
        t0 = time.perf_counter()
        with ddnm_formula(formula if sampler.name == "ddnm" else None, share):
            result = models.inpaint(loaded.unet, loaded.diffusion, cases.images, cases.keeps, sampler=sampler,
                                    seed=seed)
        seconds = time.perf_counter() - t0
        pixels = to_uint8(result)
        outputs[label] = pixels
        families, per_case = cases.score(pixels)
        row = {"label": label, "settings": sampler.to_record(), "evaluations": sampler.evaluations,
               "formula": (formula or implemented) if sampler.name == "ddnm" else None,
               "seconds_per_image": seconds / len(cases.cases), "families": families, "cases": per_case,
               "clip_share": share.summary() if share is not None else None,
               "faces": n_faces, "split": which, "machine": machine()}
        rows.append(row)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{shown(row)}: {sampler.evaluations} evaluations, {seconds:.0f}s, mean MAE {mean_mae(row):.2f}",
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
    """The CPU's model name, its cores and the threads torch uses."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} cores), {torch.get_num_threads()} torch threads"


# Statistics over a result row. `row["cases"][family]` holds the masked MAE of each face, in the
# same face order in every row of a run.

def per_face(row: dict, families=FAMILIES) -> np.ndarray:
    """Each face's masked MAE, averaged over `families`."""
    return np.mean([row["cases"][f] for f in families], axis=0)


def mean_mae(row: dict, families=FAMILIES) -> float:
    return float(per_face(row, families).mean())


def mae_interval(row: dict, families=FAMILIES) -> tuple[float, float]:
    return interval(per_face(row, families))


def paired(a: dict, b: dict, families=FAMILIES) -> tuple[float, float]:
    """Mean and 95% half-width of a - b, face by face (same faces, masks and seeds)."""
    assert a["faces"] == b["faces"] and a["split"] == b["split"], (shown(a), shown(b))
    return interval(per_face(a, families) - per_face(b, families))


def log_face(row: dict, families=FAMILIES) -> np.ndarray:
    """Each face's mean, over `families`, of the log of its masked MAE."""
    return np.mean([np.log(np.maximum(row["cases"][f], 1e-6)) for f in families], axis=0)


def relative(a: dict, b: dict, families=FAMILIES) -> tuple[float, float, float]:
    """a's error relative to b's, each family weighted alike: the geometric mean over faces and
    families of a's masked MAE over b's, minus 1, with its 95% interval (low, high); paired."""
    assert a["faces"] == b["faces"] and a["split"] == b["split"], (shown(a), shown(b))
    m, h = interval(log_face(a, families) - log_face(b, families))
    return float(np.expm1(m)), float(np.expm1(m - h)), float(np.expm1(m + h))


def beats(a: dict, b: dict) -> bool:
    """a's error is lower than b's beyond the noise: the paired relative interval lies below zero."""
    return relative(a, b)[2] < 0


def geo_mae(row: dict) -> float:
    """The geometric mean masked MAE over faces and families (what `relative` compares)."""
    return float(np.exp(log_face(row).mean()))


def group_mae(row: dict) -> dict[str, float]:
    return {g: mean_mae(row, fams) for g, fams in GROUPS.items()}


def shown(row: dict) -> str:
    """A row's label, with its DDNM formula when it is not the one the presets are chosen with."""
    f = row.get("formula")
    return row["label"] if f in (None, FORMULA) else f"{row['label']} [{f}]"


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def candidates(rows: list[dict]) -> list[dict]:
    """The frontier rows presets are chosen from: RePaint's and DDNM's by FORMULA, each setting once
    (the latest run of it)."""
    latest = {}
    for r in rows:
        if r.get("formula") in (None, FORMULA):
            latest[json.dumps(r["settings"], sort_keys=True)] = r
    return list(latest.values())


def unbeaten(rows: list[dict]) -> list[dict]:
    return [r for r in rows if not any(beats(o, r) for o in rows if o is not r)]


def choose_presets(rows: list[dict]) -> dict[str, dict | None]:
    """`fast` and `balanced`: the cheapest candidate within the budget that no other candidate
    within it beats beyond the noise. `best`: the cheapest candidate, at any cost, that beats
    `balanced` beyond the noise and is itself not beaten; None when none beats `balanced`."""
    rows = candidates(rows)
    cost = (lambda r: (r["evaluations"], geo_mae(r)))
    chosen: dict[str, dict | None] = {}
    for name in ("fast", "balanced"):
        within = [r for r in rows if r["evaluations"] <= BUDGETS[name]]
        chosen[name] = min(unbeaten(within), key=cost)
    better = [r for r in rows if beats(r, chosen["balanced"])]
    chosen["best"] = min(unbeaten(better), key=cost) if better else None
    return chosen


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 1 + len(GROUPS), figsize=(4.2 * (1 + len(GROUPS)), 4), sharex=True)
    panels = [("all six families", FAMILIES)] + [(f"{g}: {', '.join(f)}", f) for g, f in GROUPS.items()]
    for ax, (title, families) in zip(axes, panels):
        for sampler, marker in (("repaint", "o"), ("ddnm", "s")):
            pts = sorted((r["evaluations"], *mae_interval(r, families)) for r in rows
                         if r["settings"]["sampler"] == sampler)
            if not pts:
                continue
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], fmt=marker,
                        capsize=2, label=sampler)
            # The frontier: the best mean reached at or below each cost.
            best, line = float("inf"), []
            for x, y, _ in pts:
                if y < best:
                    best = y
                    line.append((x, y))
            ax.step([p[0] for p in line], [p[1] for p in line], where="post", alpha=0.5)
        ax.set_xscale("log")
        ticks = [t for t in (50, 100, 250, 500, 1000, 2410) if t <= max(r["evaluations"] for r in rows) * 1.5]
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("network evaluations per image")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("masked MAE (0..255, lower is better)\nmean and 95% interval over faces")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _pm(mean: float, half: float, digits: int = 2) -> str:
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def _signed(mean: float, half: float) -> str:
    return f"{mean:+.2f} ± {half:.2f}"


def _rel(a: dict, b: dict, families=FAMILIES) -> str:
    m, lo, hi = relative(a, b, families)
    d = 2 if max(abs(lo), abs(hi)) < 0.02 else 1  # small differences get a digit more
    return f"{m:+.{d}%} ({lo:+.{d}%} to {hi:+.{d}%})"


def _verdict(a: dict, b: dict) -> str:
    _, lo, hi = relative(a, b)
    return "lower beyond the noise" if hi < 0 else ("higher beyond the noise" if lo > 0 else "within the noise")


def formula_section(frontier: list[dict]) -> list[str]:
    """The DDNM settings run with more than one formula, each formula against FORMULA's row."""
    by_setting: dict[str, dict[str, dict]] = {}
    for r in frontier:
        if r.get("formula"):
            by_setting.setdefault(json.dumps(r["settings"], sort_keys=True), {})[r["formula"]] = r
    compared = {k: v for k, v in by_setting.items() if len(v) > 1}
    if not compared:
        return []
    edges = next(r["clip_share"] for v in compared.values() for r in v.values() if r.get("clip_share"))
    lines = ["## DDNM's update against the authors' code", "",
             "The same settings, faces, masks and seeds with each formula of the DDNM step "
             "([samplers](samplers.md#against-the-authors-code) compares them line by line):", ""]
    lines += [f"- `{name}`: {text}" for name, text in FORMULAS.items() if any(name in v for v in compared.values())]
    lines += ["", f"Each formula against `{FORMULA}` at the same setting, paired: the relative error (each family "
                  "weighted alike) and the difference of the mean masked MAE in levels; negative is lower error. "
                  "The last columns give the share of the network's clean-estimate values (unknown pixels) "
                  "outside [-1, 1] by noise level t/T: how often a clip acts.", "",
              f"| setting | formula | evaluations | mean MAE | relative to `{FORMULA}` | verdict | levels | expand, levels | "
              + " | ".join(f"outside, t/T {k}" for k in edges) + " |",
              "|---|---|---|---|---|---|---|---|" + "---|" * len(edges)]
    for variants in compared.values():
        base = variants.get(FORMULA)
        for name in FORMULAS:
            r = variants.get(name)
            if r is None:
                continue
            if base is None or r is base:
                diffs = ["-"] * 4
            else:
                diffs = [_rel(r, base), _verdict(r, base), _signed(*paired(r, base)),
                         _signed(*paired(r, base, ("expand",)))]
            share = r.get("clip_share") or {}
            lines.append(f"| {r['label']} | `{name}` | {r['evaluations']} | {_pm(*mae_interval(r))} | "
                         + " | ".join(diffs) + " | "
                         + " | ".join("-" if share.get(k) is None else f"{share[k]:.1%}" for k in edges) + " |")
    return lines + [""]


def report(frontier: list[dict], check: list[dict], presets: dict[str, dict | None],
           clock: dict | None = None) -> str:
    rows = candidates(frontier)
    n_sel, n_chk = rows[0]["faces"], (check[0]["faces"] if check else 0)
    lines = ["# Inpainting quality against cost", "",
             f"Model `faces32` (our demo checkpoint). Masked MAE is the mean absolute error inside the mask against the "
             f"ground truth, in 0..255 levels; lower is better. Made with `python -m bench.quality frontier --faces "
             f"{n_sel} --formula {FORMULA}` (and the other formulas below), "
             + (f"`python -m bench.quality check --faces {n_chk} --formula {FORMULA}`, " if check else "")
             + f"`python -m bench.quality report` on {rows[0]['machine']} (shared with other work while it ran).", "",
             f"Every number is over {n_sel} faces per mask family"
             + (f" (the check: {n_chk} other faces)" if check else "") + ", with its 95% interval (Student's t over "
             "faces; each face is masked once in each family, so the face is the unit). Two settings are compared "
             "face by face on the same masks and seeds, which is much tighter than two intervals side by side, and "
             "on the *relative* error: the geometric mean, over faces and families, of one setting's masked MAE "
             "over the other's. Each family weighs alike there. On `faces32` the plain mean over families does not "
             "separate DDNM settings: it is mostly `expand` (about 50 levels against 3 for the thin masks), whose error "
             "varies from face to face by tens of levels, so its paired interval is wider than any difference "
             "between candidates (shown, in levels, beside the relative one). A setting *beats* another when the "
             "paired relative interval lies wholly below zero; otherwise the two are *within the noise*.", ""]
    lines += formula_section(frontier)
    lines += ["## The frontier", "",
              f"Every candidate on the same {n_sel} selection faces per mask family, the same masks and seeds; DDNM "
              f"with the `{FORMULA}` formula. Groups: "
              + "; ".join(f"**{g}** = {', '.join(f)}" for g, f in GROUPS.items()) + ".", "",
              "![frontier](quality_frontier.png)", ""]
    if not any(r["settings"]["sampler"] == "repaint" for r in rows):
        lines += ["RePaint's candidates were not run again here: on the 4 faces per family of the frontier before "
                  "issue 26 (`bench/results/frontier.jsonl`) DDNM had the lower masked MAE in every family at every "
                  "budget. The check below compares RePaint at 250 steps with the presets on 16 other faces.", ""]
    lines += ["Bars: the 95% interval of each mean on its own. The presets are decided on paired differences "
              "(below), which separate much smaller ones; the geometric mean is what the relative error compares.", "",
              "| setting | evaluations | " + " | ".join(FAMILIES) + " | mean | geometric mean | s/image |",
              "|---|---|" + "---|" * (len(FAMILIES) + 3)]
    per_eval = (clock or {}).get("seconds_per_evaluation_per_image", {})
    order = sorted(rows, key=lambda r: (r["settings"]["sampler"] != "repaint", r["evaluations"]))
    for r in order:
        cost = per_eval.get(r["settings"]["sampler"])
        lines.append(f"| {r['label']} | {r['evaluations']} | "
                     + " | ".join(_pm(*interval(r["cases"][f]), digits=1) for f in FAMILIES)
                     + f" | {_pm(*mae_interval(r))} | {geo_mae(r):.2f} | "
                     + ("-" if cost is None else f"{cost * r['evaluations']:.2f}") + " |")
    if clock:
        lines += ["", "Seconds per image: evaluations times the seconds one evaluation of each sampler takes per "
                      f"image in a batch of {clock['batch']}, measured side by side in one run "
                      f"(`python -m bench.quality timing`) on {clock['machine']}, with the machine to itself: "
                  + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in per_eval.items())
                  + ". Both samplers cost one network evaluation per step; the sampler's own arithmetic is "
                    "small beside it. (The frontier's own clocks are not used: it ran on a shared machine.)"]
    lines += ["", "Feature error (the colour painted on a masked eye or mouth against its true colour, mean over "
                  "the features masked; '-' where no case of the family masks a feature):", "",
              "| setting | evaluations | " + " | ".join(FAMILIES) + " |", "|---|---|" + "---|" * len(FAMILIES)]
    for r in order:
        vals = [r["families"][f]["feature"] for f in FAMILIES]
        lines.append(f"| {r['label']} | {r['evaluations']} | "
                     + " | ".join("-" if v is None else f"{v:.1f}" for v in vals) + " |")
    if len({r["settings"]["sampler"] for r in rows}) > 1:
        lines += ["", "Which sampler wins each family, at each budget (lowest masked MAE among the settings at or "
                      "below the budget):", "", "| budget | " + " | ".join(FAMILIES) + " |",
                  "|---|" + "---|" * len(FAMILIES)]
        for budget in sorted({50, 100, 250, 500, max(r["evaluations"] for r in rows)}):
            within = [r for r in rows if r["evaluations"] <= budget]
            cells = []
            for f in FAMILIES:
                best = min(within, key=lambda r: r["families"][f]["mae"])
                cells.append(f"{best['settings']['sampler']} ({best['families'][f]['mae']:.1f})")
            lines.append(f"| ≤ {budget} | " + " | ".join(cells) + " |")
    lines += presets_section(rows, presets)
    if check:
        lines += check_section(check)
    return "\n".join(lines) + "\n"


def presets_section(rows: list[dict], presets: dict[str, dict | None]) -> list[str]:
    lines = ["", "## The presets", "",
             "`fast` and `balanced`: the cheapest candidate within the budget that no other candidate within it beats "
             "beyond the noise. `best`: kept only if some candidate, at any cost, beats `balanced` beyond the noise "
             "(then the cheapest such one that nothing beats). Within each budget, each candidate against the "
             "lowest error there, paired on the selection faces (relative error with its interval, and the "
             "difference of the plain mean in levels):"]
    for name in ("fast", "balanced"):
        within = sorted((r for r in rows if r["evaluations"] <= BUDGETS[name]), key=lambda r: r["evaluations"])
        leader = min(within, key=geo_mae)
        lines += ["", f"**`{name}`** (≤ {BUDGETS[name]} evaluations):", "",
                  "| setting | evaluations | mean MAE | relative to the lowest | levels | beaten beyond the noise by |",
                  "|---|---|---|---|---|---|"]
        for r in within:
            by = [o["label"] for o in within if o is not r and beats(o, r)]
            lines.append(f"| {r['label']}{' (chosen)' if r is presets[name] else ''} | {r['evaluations']} | "
                         f"{_pm(*mae_interval(r))} | "
                         + ("lowest | -" if r is leader else f"{_rel(r, leader)} | {_signed(*paired(r, leader))}")
                         + " | " + (", ".join(by) or "none") + " |")
    balanced = presets["balanced"]
    dearer = sorted((r for r in rows if r is not balanced and r["evaluations"] > balanced["evaluations"]),
                    key=lambda r: r["evaluations"])
    lines += ["", f"**`best`**: every costlier candidate against `balanced` ({balanced['label']}), paired:", "",
              "| setting | evaluations | mean MAE | relative | large | thin | sparse | levels | verdict |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in dearer:
        lines.append(f"| {r['label']} | {r['evaluations']} | {_pm(*mae_interval(r))} | {_rel(r, balanced)} | "
                     + " | ".join(_rel(r, balanced, f) for f in GROUPS.values())
                     + f" | {_signed(*paired(r, balanced))} | {_verdict(r, balanced)} |")
    if not dearer:
        lines.append("| (none measured) | | | | | | | | |")
    lines += ["", "Chosen:", "", "| preset | budget | setting | evaluations | mean MAE (selection) |",
              "|---|---|---|---|---|"]
    for name in ("fast", "balanced", "best"):
        r = presets[name]
        budget = "any" if BUDGETS[name] is None else f"≤ {BUDGETS[name]}"
        if r is None:
            lines.append(f"| `{name}` | {budget} | none: no candidate beats `balanced` beyond the noise | - | - |")
        else:
            lines.append(f"| `{name}` | {budget} | {r['label']} | {r['evaluations']} | {_pm(*mae_interval(r))} |")
    return lines


def check_section(check: list[dict]) -> list[str]:
    n_chk = check[0]["faces"]
    formula = next((r["formula"] for r in check if r.get("formula")), None)
    lines = ["", "## Checked on other faces and masks", "",
             f"The presets and the baseline (`{BASELINE}`, no resampling) on {n_chk} other faces per family, "
             "with other masks (none of them seen when choosing)"
             + (f"; DDNM with the `{formula}` formula" if formula else "") + ":", "",
             "| setting | evaluations | " + " | ".join(FAMILIES) + " | mean MAE | geometric mean |",
             "|---|---|" + "---|" * (len(FAMILIES) + 2)]
    for r in check:
        lines.append(f"| {r['label']} | {r['evaluations']} | "
                     + " | ".join(_pm(*interval(r["cases"][f]), digits=1) for f in FAMILIES)
                     + f" | {_pm(*mae_interval(r))} | {geo_mae(r):.2f} |")
    base = next((r for r in check if r["label"] == BASELINE), None)
    if base is not None:
        lines += ["", "Each preset against the baseline, paired (negative: lower error than the baseline):", "",
                  "| setting | evaluations | relative | large | thin | sparse | levels |", "|---|---|---|---|---|---|---|"]
        for r in check:
            if r is not base:
                lines.append(f"| {r['label']} | {r['evaluations']} | {_rel(r, base)} | "
                             + " | ".join(f"{relative(r, base, f)[0]:+.1%}" for f in GROUPS.values())
                             + f" | {_signed(*paired(r, base))} |")
    ddnm = [r for r in check if r["settings"]["sampler"] == "ddnm"]
    if len(ddnm) > 1:
        lines += ["", "The presets against each other, paired:", ""]
        for i, a in enumerate(ddnm):
            for b in ddnm[i + 1:]:
                lines.append(f"- {b['label']} against {a['label']}: {_rel(b, a)}, {_signed(*paired(b, a))} levels "
                             f"({_verdict(b, a)}).")
    lines += ["", "![check grid](quality_grid.png)", "",
              "Grid (check faces): per mask family one face; columns: the input with the mask in grey, then each "
              "setting in the order of the table, then the ground truth."]
    return lines


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
    parser.add_argument("--faces", type=int, default=16, help="faces per mask family")
    parser.add_argument("--only", default=None, help="frontier: comma-separated labels to run; "
                        "check: comma-separated preset names")
    parser.add_argument("--formula", choices=sorted(FORMULAS), default=None,
                        help="run DDNM's step by this formula (default: models/samplers/ddnm.py as it is)")
    parser.add_argument("--append", action="store_true", help="add to the results instead of starting anew")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args(argv)
    if args.what == "frontier":
        only = None if args.only is None else args.only.split(",")
        unknown = set(only or ()) - {label for label, _ in FRONTIER}
        if unknown:
            parser.error(f"unknown frontier labels: {sorted(unknown)}")
        settings = [s for s in FRONTIER if only is None or s[0] in only]
        run("frontier", settings, args.faces, FRONTIER_FILE, args.checkpoint, append=args.append,
            formula=args.formula)
    elif args.what == "timing":
        print(timing(args.faces, TIMING_FILE, args.checkpoint))
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
            done = {json.dumps(r["settings"], sort_keys=True) for r in read(CHECK_FILE)}
            settings = [s for s in settings if json.dumps(s[1].to_record(), sort_keys=True) not in done]
        run("check", settings, args.faces, CHECK_FILE, args.checkpoint, append=args.append,
            grid=None if args.append else args.out / "quality_grid.png", formula=args.formula)
    else:
        frontier = read(FRONTIER_FILE)
        check = read(CHECK_FILE) if CHECK_FILE.exists() else []
        clock = json.loads(TIMING_FILE.read_text()) if TIMING_FILE.exists() else None
        plot(candidates(frontier), args.out / "quality_frontier.png")
        text = report(frontier, check, choose_presets(frontier), clock)
        (args.out / "quality.md").write_text(text)
        print(text)


if __name__ == "__main__":
    main()
