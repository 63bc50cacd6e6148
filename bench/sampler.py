"""Sampler benchmark: per-image time and network evaluations per second for one preset.

    python -m bench.sampler --preset tiny --device cpu --dtype float32 --batch 1 \
        --steps 250 --jump-length 10 --jump-n-sample 10 [--compile] [--channels-last] [--malloc glibc]

Times the whole RePaint loop (schedule, re-noising, network, posterior) on random images with
a half-image mask, after a short warm-up. A benchmark, not a test: report ratios measured side
by side in one run, and absolute numbers only with the machine named.

The allocator is set as the worker sets it (`worker.allocator.reuse_tensor_blocks`), so that this
is the worker's own loop without the service around it; `--malloc glibc` leaves glibc's adaptive
thresholds instead (run one batch size per process then: what they settle on depends on what
was freed first).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

import models
from worker.allocator import reuse_tensor_blocks

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def prepare(preset: str, device: str, dtype: str, *, channels_last: bool, compile: bool, checkpoint=None):
    loaded = models.load_preset(preset, checkpoint=checkpoint, device=device, dtype=DTYPES[dtype])
    net = loaded.unet
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # weights are constants at inference: fold them
        net = torch.compile(net)
    return loaded, net


def run(preset: str = "tiny", device: str = "cpu", dtype: str = "float32", batch: int = 1, steps: int = 250,
        jump_length: int = 10, jump_n_sample: int = 10, channels_last: bool = False, compile: bool = False,
        repeats: int = 1, checkpoint=None) -> dict:
    loaded, net = prepare(preset, device, dtype, channels_last=channels_last, compile=compile,
                          checkpoint=checkpoint)
    size = loaded.preset.image_size
    g = torch.Generator().manual_seed(0)
    image = (torch.rand(batch, 3, size, size, generator=g) * 2 - 1).to(device)
    keep = torch.zeros(batch, 1, size, size, device=device)
    keep[..., : size // 2] = 1
    if channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    # Warm-up: kernels, allocator and (with --compile) compilation, on a short schedule.
    t0 = time.perf_counter()
    models.inpaint(net, loaded.diffusion, image, keep, t_T=10, jump_length=10, jump_n_sample=1, seed=0)
    warmup = time.perf_counter() - t0
    evaluations = models.count_model_evaluations(models.jump_schedule(steps, jump_length=jump_length, jump_n_sample=jump_n_sample))
    times = []
    for r in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        models.inpaint(net, loaded.diffusion, image, keep, t_T=steps, jump_length=jump_length,
                       jump_n_sample=jump_n_sample, seed=r)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    best = min(times)
    return {
        "preset": preset, "device": device, "dtype": dtype, "batch": batch, "compile": compile,
        "channels_last": channels_last, "schedule": f"{steps}/{jump_length}/{jump_n_sample}",
        "evaluations_per_image": evaluations, "seconds_per_batch": round(best, 3),
        "seconds_per_image": round(best / batch, 3),
        "evaluations_per_second": round(evaluations / best, 1),
        "image_evaluations_per_second": round(evaluations * batch / best, 1),
        "warmup_seconds": round(warmup, 1), "threads": torch.get_num_threads(),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
                   + (f", {torch.cuda.get_device_name()}" if device.startswith("cuda") else ""),
    }


def peak_rss_mib() -> float | None:
    """This process's peak resident memory so far (ru_maxrss: KiB on Linux)."""
    import resource

    if platform.system() != "Linux":
        return None
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--jump-length", type=int, default=10)
    parser.add_argument("--jump-n-sample", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--malloc", choices=["worker", "glibc"], default="worker",
                        help="the worker's allocator thresholds (default) or glibc's adaptive ones")
    args = parser.parse_args(argv)
    if args.malloc == "worker":
        reuse_tensor_blocks()
    if args.threads:
        torch.set_num_threads(args.threads)
    for batch in args.batch:
        result = run(args.preset, args.device, args.dtype, batch, args.steps, args.jump_length,
                     args.jump_n_sample, args.channels_last, args.compile, args.repeats, args.checkpoint)
        print(json.dumps({**result, "malloc": args.malloc, "peak_rss_mib": peak_rss_mib()}), flush=True)


if __name__ == "__main__":
    main()
