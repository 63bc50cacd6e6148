"""Our RePaint loop against diffusers' RePaintPipeline, on the same network, side by side.

    python -m bench.against_diffusers [--models tiny faces32] [--batch 1 8] [--threads 2] \
        [--steps 50 --jump-length 5 --jump-n-sample 3 | --paper] [--repeats 2] [--json FILE]

The authors' code (RePaint on guided-diffusion) is not a package and cannot be fetched on the
machines this project runs on; diffusers' RePaintPipeline, a port of it, is the implementation
our users would otherwise pick. Both run the same network with the same weights: our `tiny` or
`faces32` UNet, which diffusers sees through a thin adapter (its `.sample` is the network's noise
estimate; the learned-variance channels, which diffusers' RePaint does not use, are dropped).
So the network's cost is the same on both sides and what differs is each sampler's loop: its
schedule, re-noising, posterior and how it batches. A third row times the network alone at the
same batch (`network only`): the floor both loops sit above.

Counted per row: network evaluations (a hook on the network, times the batch), seconds per image
and evaluations per second; the best of `--repeats` timed runs after a short warm-up, the three
taken in turns so that a slow spell of the machine (a VM's neighbours) falls on all alike. The
allocator is set as the worker sets it (worker.allocator) for all rows. Measured one after the
other in one process: compare rows of one run only, and name the machine with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch

import models
from worker.allocator import reuse_tensor_blocks


class DiffusersView(torch.nn.Module):
    """Our UNet as diffusers' pipelines call a UNet2DModel: `unet(x, t).sample`, `.dtype`, `.device`."""

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet
        self.config = SimpleNamespace(sample_size=None, in_channels=3)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def forward(self, x: torch.Tensor, t) -> SimpleNamespace:
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
        return SimpleNamespace(sample=self.unet(x, t)[:, :3])


class Counter:
    """Network evaluations, one per sample per forward pass."""

    def __init__(self, unet: torch.nn.Module):
        self.evaluations = 0
        unet.register_forward_hook(self._count)

    def _count(self, _module, inputs, _output) -> None:
        self.evaluations += inputs[0].shape[0]


def inputs(size: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    keep = torch.zeros(batch, 1, size, size)
    keep[..., : size // 2] = 1  # the left half known, as bench.sampler
    return image, keep


def ours(loaded, image, keep, schedule, seed: int) -> None:
    steps, jump_length, jump_n_sample = schedule
    models.inpaint(loaded.unet, loaded.diffusion, image, keep, t_T=steps, jump_length=jump_length,
                   jump_n_sample=jump_n_sample, seed=seed)


def make_diffusers(loaded):
    from diffusers import RePaintPipeline, RePaintScheduler

    # Its defaults are the presets' process: 1,000 steps, linear betas from 1e-4 to 0.02.
    scheduler = RePaintScheduler(num_train_timesteps=1000, beta_schedule="linear")
    # diffusers warns, at every call, that the pipeline's own preprocessing is deprecated.
    warnings.filterwarnings("ignore", message="The preprocess method is deprecated", category=FutureWarning)
    pipe = RePaintPipeline(unet=DiffusersView(loaded.unet), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)

    def run(image, keep, schedule, seed: int) -> None:
        steps, jump_length, jump_n_sample = schedule
        pipe(image=image, mask_image=keep, num_inference_steps=steps, jump_length=jump_length,
             jump_n_sample=jump_n_sample, generator=torch.Generator().manual_seed(seed), output_type="np")

    return run


def network_only(loaded, image, evaluations_per_image: int):
    """The network alone, as many passes at this batch as a loop makes for one batch of images,
    on noise at timesteps across the schedule (what a loop feeds it)."""
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(1))
    timesteps = [torch.full((image.shape[0],), (i * 997) % 1000, dtype=torch.long) for i in range(evaluations_per_image)]

    def run(image, keep, schedule, seed: int) -> None:
        with torch.inference_mode():
            for t in timesteps:
                loaded.unet(noise, t)

    return run


def time_rows(runs: dict, counter: Counter, image, keep, schedule, repeats: int) -> list[dict]:
    """Each implementation's best of `repeats`, taken in turns (A, B, C, A, B, C, ...) so that a
    slow spell of the machine falls on all of them alike."""
    for run in runs.values():
        run(image, keep, (10, 10, 1), 0)  # warm-up: kernels and allocator
    best = {name: float("inf") for name in runs}
    evaluations = {}
    for r in range(repeats):
        for name, run in runs.items():
            counter.evaluations = 0
            t0 = time.perf_counter()
            run(image, keep, schedule, r)
            best[name] = min(best[name], time.perf_counter() - t0)
            evaluations[name] = counter.evaluations
    batch = image.shape[0]
    return [{"implementation": name, "batch": batch, "evaluations_per_image": evaluations[name] // batch,
             "seconds_per_image": round(best[name] / batch, 3),
             "image_evaluations_per_second": round(evaluations[name] / best[name], 1)} for name in runs]


def measure(model: str, batch: int, schedule, repeats: int) -> list[dict]:
    loaded = models.load_preset(model)
    loaded.unet.eval()
    counter = Counter(loaded.unet)
    image, keep = inputs(loaded.preset.image_size, batch)
    per_image = models.count_model_evaluations(models.jump_schedule(schedule[0], jump_length=schedule[1],
                                                                    jump_n_sample=schedule[2]))
    runs = {"ours (repaint-server)": lambda *a: ours(loaded, *a),
            "diffusers RePaintPipeline": make_diffusers(loaded),
            "network only": network_only(loaded, image, per_image)}
    rows = time_rows(runs, counter, image, keep, schedule, repeats)
    for row in rows:
        row.update(model=model, schedule="/".join(map(str, schedule)))
        print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict], args) -> str:
    out = [f"Schedule {rows[0]['schedule']}, float32, {args.threads} torch threads. Machine: {platform.machine()}, "
           f"{platform.processor() or 'unknown CPU'}, {os.cpu_count()} cores.", "",
           "| model | batch | implementation | evaluations per image | s per image | evaluations/s | vs network only |",
           "|---|---|---|---|---|---|---|"]
    floor = {(r["model"], r["batch"]): r["image_evaluations_per_second"] for r in rows
             if r["implementation"] == "network only"}
    for r in rows:
        share = r["image_evaluations_per_second"] / floor[(r["model"], r["batch"])]
        out.append(f"| {r['model']} | {r['batch']} | {r['implementation']} | {r['evaluations_per_image']} | "
                   f"{r['seconds_per_image']} | {r['image_evaluations_per_second']} | {share:.0%} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny", "faces32"])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--jump-length", type=int, default=5)
    parser.add_argument("--jump-n-sample", type=int, default=3)
    parser.add_argument("--paper", action="store_true", help="the paper's 250/10/10 (2,410 evaluations)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    reuse_tensor_blocks()
    schedule = (250, 10, 10) if args.paper else (args.steps, args.jump_length, args.jump_n_sample)
    rows = []
    for model in args.models:
        for batch in args.batch:
            rows += measure(model, batch, schedule, args.repeats)
            if args.json:  # as they come: a long run stopped half-way keeps what it measured
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(rows, indent=1))
    print(table(rows, args))
    return rows


if __name__ == "__main__":
    main()
