"""One forward pass of the UNet, every way the worker can run it, on the device at hand.

    python -m bench.gpu [--model celeba256] [--checkpoint FILE] [--device auto] \
        [--batches 1 2 4 8 16 32] [--variants fp32 bf16 ...] [--repeats 20] [--time-budget 420] \
        [--peak half=989,tf32=495] [--json bench/results/gpu.json] [--markdown docs/gpu.md]

Builds the model's architecture (random weights unless --checkpoint names its weights: speed
does not depend on them) and times one forward pass for each variant and batch size, as memory
allows. A variant is a precision and some switches:

- `fp32`: float32 weights and activations (cuDNN's convolutions may use TF32, torch's default);
- `bf16`: float32 weights under bfloat16 autocast (the worker's CUDA default);
- `fp16ref`: the reference's `use_fp16` layout: the torso's convolutions in float16, the rest float32;
- `+cl` channels-last memory format; `+sdpa` / `+matmul` the attention kernel (default: the
  device's, SDPA on GPUs); `+graphs` the worker's CUDA graph replay (worker.cuda_graphs);
  `+compile` the worker's torch.compile (worker.compiling; inductor, frozen weights); `+tune`
  cuDNN's benchmark mode (each convolution's algorithm timed once per shape).

For each: the median seconds of a pass (CUDA events on a GPU), the model FLOPs per second
(counted with torch's FLOP counter, so every variant is credited with the same useful work),
their share of the device's dense peak for the variant's precision (a table of common GPUs,
`--peak` to set it), the peak memory, the relative L2 difference of the output from `fp32` at
the first batch size on the same inputs, and the paper setting's projected images per hour (2,410 network
evaluations per image, the whole GPU on one batch size). On a CPU the same code runs on the
`tiny` architecture and small batches, so CI keeps it working; CPU figures say little of GPUs.

A benchmark, not a test: report ratios measured side by side in one run, and absolute figures
with the device named.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import models
from models.nn import set_attention_kernel
from worker.params import PAPER_EVALUATIONS

# Dense (no sparsity) peak TFLOP/s from the vendors' datasheets: `half` the bf16/fp16 tensor
# cores with float32 accumulation, `tf32` the tensor cores' float32 mode, `fp32` plain CUDA
# cores. Matched against torch.cuda.get_device_name(), most specific first.
PEAKS: list[tuple[str, dict[str, float]]] = [
    (r"H100.*PCIe", {"half": 756.0, "tf32": 378.0, "fp32": 51.2}),
    (r"H100|H200|GH200", {"half": 989.4, "tf32": 494.7, "fp32": 66.9}),
    (r"A100", {"half": 312.0, "tf32": 156.0, "fp32": 19.5}),
    (r"L40S", {"half": 362.1, "tf32": 183.0, "fp32": 91.6}),
    (r"L40\b", {"half": 181.0, "tf32": 90.5, "fp32": 90.5}),
    (r"\bL4\b", {"half": 121.0, "tf32": 60.0, "fp32": 30.3}),
    (r"A10G", {"half": 70.0, "tf32": 35.0, "fp32": 31.2}),
    (r"\bA10\b", {"half": 125.0, "tf32": 62.5, "fp32": 31.2}),
    (r"RTX 4090", {"half": 165.2, "tf32": 82.6, "fp32": 82.6}),
    (r"RTX A6000", {"half": 154.8, "tf32": 77.4, "fp32": 38.7}),
    (r"RTX A5000", {"half": 111.1, "tf32": 55.6, "fp32": 27.8}),
    (r"RTX 3090", {"half": 71.0, "tf32": 35.6, "fp32": 35.6}),
    (r"V100", {"half": 125.0, "tf32": 15.7, "fp32": 15.7}),
    (r"\bT4\b", {"half": 65.0, "tf32": 8.1, "fp32": 8.1}),
]

DEFAULT_VARIANTS = {
    "cuda": ["fp32", "bf16", "fp16ref", "bf16+cl", "bf16+matmul", "bf16+tune", "bf16+graphs", "fp16ref+graphs",
             "bf16+compile", "bf16+graphs+compile"],
    "cpu": ["fp32", "fp32+cl", "fp32+sdpa", "bf16", "fp16ref"],
}
# What REPAINT_* `auto` runs on CUDA (worker.speed), batches padded to buckets; for confs with
# use_fp16 it is fp16ref+graphs+compile.
WORKER_DEFAULT = "bf16+graphs+compile"


@dataclass(frozen=True)
class Variant:
    name: str
    precision: str          # fp32 | bf16 | fp16ref
    channels_last: bool
    attention: str          # auto | sdpa | matmul
    graphs: bool
    compile: bool
    tune: bool = False

    @classmethod
    def parse(cls, name: str) -> "Variant":
        precision, *flags = name.split("+")
        unknown = set(flags) - {"cl", "sdpa", "matmul", "graphs", "compile", "tune"}
        if precision not in ("fp32", "bf16", "fp16ref") or unknown or ("sdpa" in flags and "matmul" in flags):
            raise argparse.ArgumentTypeError(f"unknown variant {name!r}: a precision (fp32, bf16, fp16ref) and any "
                                             f"of +cl, +sdpa or +matmul, +graphs, +compile, +tune")
        return cls(name=name, precision=precision, channels_last="cl" in flags,
                   attention="sdpa" if "sdpa" in flags else "matmul" if "matmul" in flags else "auto",
                   graphs="graphs" in flags, compile="compile" in flags, tune="tune" in flags)

    @property
    def peak_kind(self) -> str:
        """Which datasheet rate bounds it: half-precision tensor cores, or TF32 (cuDNN runs
        float32 convolutions as TF32 by default)."""
        if self.precision != "fp32":
            return "half"
        return "tf32" if torch.backends.cudnn.allow_tf32 else "fp32"


def device_peaks(device: torch.device, override: str | None) -> dict[str, float]:
    peaks: dict[str, float] = {}
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peaks = next((dict(p) for pattern, p in PEAKS if re.search(pattern, name)), {})
    if override:
        for part in override.split(","):
            kind, _, value = part.partition("=")
            if kind.strip() not in ("half", "tf32", "fp32") or not value:
                raise SystemExit(f"--peak takes half=TFLOPS,tf32=TFLOPS,fp32=TFLOPS; got {part!r}")
            peaks[kind.strip()] = float(value)
    return peaks


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def count_flops(conf: dict, batch: int = 1) -> int:
    """Model FLOPs of one forward pass (torch's counter: 2 per multiply-add of convolutions,
    matmuls and attention), on the meta device: no memory, no arithmetic."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        net = models.build_unet(conf)
        size = net.config.image_size
        x, t = torch.zeros(batch, net.config.in_channels, size, size), torch.zeros(batch, dtype=torch.long)
        y = torch.zeros(batch, dtype=torch.long) if net.config.num_classes is not None else None
    with FlopCounterMode(display=False) as counter:
        net(x, t, y)
    return counter.get_total_flops()


def base_network(model: str, checkpoint: str | None) -> torch.nn.Module:
    preset = models.get_preset(model)
    net = models.build_unet(preset.conf)
    if checkpoint:
        models.load_weights(net, models.read_state_dict(checkpoint), what=f"checkpoint {checkpoint}", config=net.config)
    else:
        models.randomize_weights(net, 0)
    return net.eval().requires_grad_(False)


def build(variant: Variant, base: torch.nn.Module, device: torch.device, sizes: int = 6):
    """(callable network, autocast dtype or None) for one variant, on a copy of `base`."""
    from worker import compiling
    from worker.cuda_graphs import GraphedNetwork

    torch.backends.cudnn.benchmark = variant.tune
    net = copy.deepcopy(base).to(device)
    if variant.precision == "fp16ref":
        net.convert_torso(torch.float16)
    if variant.channels_last:
        net = net.to(memory_format=torch.channels_last)
    set_attention_kernel(net, variant.attention)
    autocast = torch.bfloat16 if variant.precision == "bf16" else None
    runner = net
    if variant.compile:
        # As the worker compiles on CUDA: one static graph per batch size (its buckets).
        runner = compiling.compile_per_batch_size(net, sizes=sizes)
    if variant.graphs:
        runner = GraphedNetwork(runner)
    return runner, autocast


def inputs(conf, batch: int, device: torch.device, seed: int) -> tuple:
    g = torch.Generator().manual_seed(seed)
    size = conf.image_size
    x = torch.randn(batch, conf.in_channels, size, size, generator=g).to(device)
    t = torch.randint(0, 1000, (batch,), generator=g).to(device)
    y = torch.randint(0, conf.num_classes, (batch,), generator=g).to(device) if conf.num_classes else None
    return x, t, y


def time_passes(run, args: tuple, device: torch.device, repeats: int, warm_up: int) -> float:
    """Median seconds of one pass, after warm-up passes (autotuning, compilation, capture)."""
    for _ in range(warm_up):
        run(*args)
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run(*args)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            run(*args)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_variant(variant: Variant, base, conf, device, batches, args, flops_per_sample, peaks, reference,
                  deadline: float) -> tuple[list[dict], torch.Tensor | None]:
    """(rows, the fp32 reference output) for one variant at every batch size."""
    rows = []
    if variant.graphs and device.type != "cuda":
        return [skipped(variant, "CUDA graphs need a CUDA device")], reference
    if time.monotonic() > deadline:
        return [skipped(variant, "time budget spent")], reference
    try:
        run, autocast = build(variant, base, device, sizes=len(batches))
    except Exception as exc:  # noqa: BLE001 - one variant failing must not lose the others
        return [skipped(variant, f"{type(exc).__name__}: {exc}")], reference
    context = (lambda: torch.autocast(device.type, dtype=autocast, cache_enabled=False)) if autocast else None

    def forward(x, t, y):
        if context is None:
            return run(x, t, y)
        with context():
            return run(x, t, y)

    with torch.inference_mode():
        # Fidelity against fp32 on the same inputs (relative L2 of the output), at the first
        # batch size asked for (a compiled variant compiles once for it).
        x, t, y = inputs(conf, batches[0], device, seed=123)
        try:
            out = forward(x, t, y).float()
            diff = None if reference is None else float((out - reference).norm() / reference.norm())
        except Exception as exc:  # noqa: BLE001
            return [skipped(variant, f"{type(exc).__name__}: {exc}")], reference
        if variant.name == "fp32" and reference is None:
            reference = out
            diff = 0.0
        for batch in batches:
            row = {"variant": variant.name, "batch": batch}
            if time.monotonic() > deadline:
                rows.append({**row, "skipped": "time budget spent"})
                continue
            try:
                if hasattr(run, "reset"):
                    run.reset()  # CUDA graphs captured again inside the measurement: their memory counts
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                seconds = time_passes(forward, inputs(conf, batch, device, seed=batch), device,
                                      repeats=args.repeats, warm_up=args.warm_up)
            except torch.OutOfMemoryError:
                rows.append({**row, "skipped": "out of memory"})
                break  # larger batches will not fit either
            except Exception as exc:  # noqa: BLE001
                rows.append({**row, "skipped": f"{type(exc).__name__}: {exc}".splitlines()[0][:200]})
                break
            tflops = flops_per_sample * batch / seconds / 1e12
            peak = peaks.get(variant.peak_kind)
            rows.append({
                **row, "seconds_per_pass": seconds, "tflops": tflops,
                "peak_share": None if peak is None else tflops / peak, "peak_kind": variant.peak_kind,
                "peak_memory_gib": (torch.cuda.max_memory_allocated(device) / 2**30) if device.type == "cuda" else None,
                "rel_diff_vs_fp32": diff,
                "paper_images_per_hour": 3600 * batch / (PAPER_EVALUATIONS * seconds),
            })
            print(json.dumps(rows[-1]), flush=True)
    del run
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows, reference


def profile(variant: Variant, base, device: torch.device, batch: int, rows: int = 25) -> str:
    """The operators that take the time of one pass (after warm-up), as torch.profiler tables them."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    run, autocast = build(variant, base, device)
    args = inputs(base.config, batch, device, seed=1)
    context = (lambda: torch.autocast(device.type, dtype=autocast, cache_enabled=False)) if autocast else None

    def once():
        if context is None:
            return run(*args)
        with context():
            return run(*args)

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.inference_mode():
        for _ in range(3):
            once()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        with torch_profile(activities=activities) as prof:
            once()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    return f"profile of {variant.name} at batch {batch}:\n" + prof.key_averages().table(sort_by=sort, row_limit=rows)


def skipped(variant: Variant, why: str) -> dict:
    row = {"variant": variant.name, "batch": None, "skipped": why.splitlines()[0][:200] if why else "failed"}
    print(json.dumps(row), flush=True)
    return row


def fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def markdown(report: dict) -> str:
    lines = [f"Device: **{report['device']}**; torch {report['torch']}"
             + (f", CUDA {report['cuda']}" if report.get("cuda") else "") + f". Model: `{report['model']}` "
             f"architecture ({report['weights']}), {report['flops_per_sample'] / 1e12:.3f} TFLOP per sample "
             f"per pass. Peaks (dense TFLOP/s): "
             + (", ".join(f"{k} {v:g}" for k, v in report["peaks"].items()) or "unknown (set --peak)")
             + f". Paper setting: {PAPER_EVALUATIONS:,} passes per image. Run {report['date']}.", "",
             "| variant | batch | ms / pass | TFLOP/s | share of peak | peak memory GiB | rel. diff vs fp32 "
             "| paper images / hour |", "|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['variant']} | {r['batch'] or 'all'} | skipped: {r['skipped']} | | | | | |")
            continue
        name = f"**{r['variant']}** (worker default)" if r["variant"] == report["worker_default"] else r["variant"]
        lines.append(f"| {name} | {r['batch']} | {r['seconds_per_pass'] * 1000:.2f} | {r['tflops']:.3g} | "
                     f"{fmt(r['peak_share'], '.1%')} ({r['peak_kind']}) | {fmt(r['peak_memory_gib'], '.2f')} | "
                     f"{fmt(r['rel_diff_vs_fp32'], '.1e')} | {r['paper_images_per_hour']:.1f} |")
    best = max((r for r in report["rows"] if "skipped" not in r), key=lambda r: r["paper_images_per_hour"],
               default=None)
    if best:
        lines += ["", f"Fastest: `{best['variant']}` at batch {best['batch']}: "
                  f"{best['paper_images_per_hour']:.0f} paper-setting images per hour "
                  f"({best['seconds_per_pass'] * 1000:.1f} ms per pass of {best['batch']} samples)."]
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- bench.gpu results: begin -->", "<!-- bench.gpu results: end -->"


def write_markdown(path: Path, text: str) -> None:
    """Between the markers of an existing page (the rest of it is prose), else the whole file."""
    block = f"{BEGIN}\n{text}{END}"
    if path.exists() and BEGIN in path.read_text() and END in path.read_text():
        page = path.read_text()
        page = page[:page.index(BEGIN)] + block + page[page.index(END) + len(END):]
    else:
        page = block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default=None, help="architecture (default: celeba256 on CUDA, tiny on CPU)")
    parser.add_argument("--checkpoint", default=None, help="the model's weights (default: random weights)")
    parser.add_argument("--batches", type=int, nargs="+", default=None,
                        help="default: 1 2 4 8 16 32 on CUDA, 1 2 4 on CPU")
    parser.add_argument("--variants", type=Variant.parse, nargs="+", default=None)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warm-up", type=int, default=3)
    parser.add_argument("--time-budget", type=float, default=600.0,
                        help="seconds; passes not started by then are reported as skipped")
    parser.add_argument("--peak", default=None, help="dense peak TFLOP/s, e.g. half=989,tf32=495,fp32=67")
    parser.add_argument("--profile", metavar="VARIANT:BATCH", default=None,
                        help="first print the kernels that take the time of one such pass (torch.profiler)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args(argv)

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    kind = "cuda" if device.type == "cuda" else "cpu"
    model = args.model or ("celeba256" if kind == "cuda" else "tiny")
    batches = args.batches or ([1, 2, 4, 8, 16, 32] if kind == "cuda" else [1, 2, 4])
    variants = args.variants or [Variant.parse(v) for v in DEFAULT_VARIANTS[kind]]
    variants.sort(key=lambda v: v.name != "fp32")  # fp32 first: the others are compared with it
    deadline = time.monotonic() + args.time_budget

    conf = models.get_preset(model).conf
    flops = count_flops(conf)
    base = base_network(model, args.checkpoint)
    peaks = device_peaks(device, args.peak)
    report = {"device": device_name(device), "torch": torch.__version__, "cuda": torch.version.cuda if kind == "cuda"
              else None, "model": model, "weights": f"weights {args.checkpoint}" if args.checkpoint else "random weights",
              "flops_per_sample": flops, "peaks": peaks, "date": time.strftime("%Y-%m-%d"),
              "worker_default": WORKER_DEFAULT, "rows": []}
    if args.profile:
        name, _, batch = args.profile.partition(":")
        print(profile(Variant.parse(name), base, device, int(batch or 1)), flush=True)
    reference = None
    for variant in variants:
        rows, reference = bench_variant(variant, base, base.config, device, batches, args, flops, peaks, reference,
                                        deadline)
        report["rows"] += rows
        if args.json:  # after every variant: a run stopped from outside keeps what it measured
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=1) + "\n")
    text = markdown(report)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.markdown:
        write_markdown(args.markdown, text)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
