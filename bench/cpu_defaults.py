"""CPU defaults, chosen by measurement: eager, channels-last and compiled, per model and batch.

    python -m bench.cpu_defaults [--models tiny faces32] [--batch 1 8] [--threads 2] \
        [--steps 250 --jump-length 10 --jump-n-sample 10] [--out docs/cpu-defaults.md]

For each model, variant and batch size, one fresh process runs `bench.sampler` (the
paper's schedule by default: 2,410 evaluations per image); compiled variants start with an empty
inductor cache, as a new worker on a new machine does. Reported per row: the set-up before the
first pass (for `compile`: compilation and warm-up; what a worker's first job would wait for if
it waited), seconds per image and evaluations per second, and the time to a first paper-setting
image at batch 1 (set-up plus one image). Measured one after the other in one run: compare rows
of one run only, and name the machine with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

# Every variant runs with the worker's allocator thresholds (worker.allocator) except
# "eager, glibc malloc", which leaves glibc's adaptive ones: the allocator's share, side by side.
VARIANTS = {"eager": [], "eager, glibc malloc": ["--malloc", "glibc"], "channels-last": ["--channels-last"],
            "compile": ["--compile"]}


def measure(model: str, variant: str, batch: int, args) -> list[dict]:
    command = [sys.executable, "-m", "bench.sampler", "--preset", model, "--steps", str(args.steps),
               "--jump-length", str(args.jump_length), "--jump-n-sample", str(args.jump_n_sample),
               "--threads", str(args.threads), "--batch", str(batch), "--repeats", str(args.repeats),
               *VARIANTS[variant]]
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}  # cold, as on a new machine
        out = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    for row in rows:
        row.update(model=model, variant=variant)
        print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict], args) -> str:
    out = [f"Schedule {args.steps}/{args.jump_length}/{args.jump_n_sample}, float32, {args.threads} torch "
           f"threads. Machine: {platform.machine()}, {platform.processor() or 'unknown CPU'}, "
           f"{os.cpu_count()} cores.", "",
           "| model | variant | batch | set-up s (first pass) | s per image | evaluations/s (all samples) "
           "| first image at batch 1 s | peak RSS MiB |", "|---|---|---|---|---|---|---|---|"]
    first = {(r["model"], r["variant"]): r["warmup_seconds"] + r["seconds_per_image"]
             for r in rows if r["batch"] == 1}
    for r in rows:
        out.append(f"| {r['model']} | {r['variant']} | {r['batch']} | {r['warmup_seconds']} | "
                   f"{r['seconds_per_image']} | {r['image_evaluations_per_second']} | "
                   f"{first.get((r['model'], r['variant']), float('nan')):.1f} | {r.get('peak_rss_mib') or 'n/a'} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny", "faces32"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--jump-length", type=int, default=10)
    parser.add_argument("--jump-n-sample", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per cell (the best counts)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = []
    for model in args.models:
        for variant in args.variants:
            for batch in args.batch:
                rows += measure(model, variant, batch, args)
            if args.json:  # as they come: a long run stopped half-way keeps what it measured
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(rows, indent=1))
    text = table(rows, args)
    print(text)
    if args.out:
        args.out.write_text(text)
    return rows


if __name__ == "__main__":
    main()
