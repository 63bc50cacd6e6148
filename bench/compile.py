"""REPAINT_COMPILE at start: serve eagerly while compiling in the background, against the rest.

    python -m bench.compile [--preset faces32] [--steps 50 --jump-length 5 --jump-n-sample 3] \
        [--batches 1 8] [--repeats 20] [--threads N]

Three worker runtimes, each in a fresh process with an empty inductor cache (a cold start),
one after the other in one run:
- `eager`: REPAINT_COMPILE off;
- `background`: REPAINT_COMPILE on, as the worker now runs it: the first job is served eagerly
  while a thread compiles, and passes switch to the compiled network once it is warm;
- `blocking`: REPAINT_COMPILE on, the first job waiting for the compilation (the worker's
  behaviour before background compilation).
For each: seconds from building the runtime (weights loaded, self-test pass, as `repaint worker`
starts) to the first job's result, when the compiled network was ready, and the median seconds
of one forward pass at each batch size on the network the runtime then uses. A benchmark, not a
test: report ratios measured side by side in one run, and absolute numbers with the machine named.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

SCENARIOS = ("eager", "background", "blocking")


def run_scenario(kind: str, preset: str, steps: int, jump_length: int, jump_n_sample: int,
                 batches: list[int], repeats: int) -> dict:
    import torch

    from models.sampler_settings import RePaintSettings
    from tests.conftest import face_and_mask, png_bytes
    from worker.params import JobParams
    from worker.runtime import Runtime
    from worker.settings import WorkerSettings

    image, mask = (png_bytes(x) for x in face_and_mask(seed=0))
    params = JobParams(seed=0, sampler=RePaintSettings(steps=steps, jump_length=jump_length,
                                                       jump_n_sample=jump_n_sample))
    t0 = time.perf_counter()
    runtime = Runtime(WorkerSettings(model=preset, device="cpu", compile=kind != "eager"))
    runtime.self_test()
    if kind == "blocking":
        runtime.compiler.join()
    passes = []
    runtime.inpaint(image, mask, params, progress=lambda *_: passes.append(runtime.compile_state))
    first_result = time.perf_counter() - t0
    compiled_after = None
    if runtime.compiler is not None:
        runtime.compiler.join()
        compiled_after = time.perf_counter() - t0 if kind == "background" else runtime.compiler.seconds
    per_pass = {}
    net = runtime.network()
    with torch.inference_mode():
        for n in batches:
            inputs = runtime._example_inputs(n)
            for _ in range(3):
                net(*inputs)
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                net(*inputs)
                times.append(time.perf_counter() - t)
            per_pass[n] = statistics.median(times)
    return {
        "scenario": kind, "first_result_s": round(first_result, 1),
        "compiled_after_s": None if compiled_after is None else round(compiled_after, 1),
        "passes_of_first_job_compiled": sum(s == "compiled" for s in passes), "passes_of_first_job": len(passes),
        "state": runtime.compile_state,
        "seconds_per_pass": {str(n): round(s, 4) for n, s in per_pass.items()},
        "threads": torch.get_num_threads(),
    }


def table(rows: list[dict], batches: list[int]) -> str:
    head = ("| scenario | first result (s) | compiled network ready (s) | passes of the first job compiled | "
            + " | ".join(f"s/pass, batch {n}" for n in batches) + " |")
    lines = [head, "|" + "---|" * (4 + len(batches))]
    for r in rows:
        ready = "-" if r["compiled_after_s"] is None else f"{r['compiled_after_s']}"
        lines.append(f"| {r['scenario']} | {r['first_result_s']} | {ready} | "
                     f"{r['passes_of_first_job_compiled']} of {r['passes_of_first_job']} | "
                     + " | ".join(f"{r['seconds_per_pass'][str(n)]:.4f}" for n in batches) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="faces32")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--jump-length", type=int, default=5)
    parser.add_argument("--jump-n-sample", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    parser.add_argument("--threads", type=int, default=None,
                        help="REPAINT_TORCH_THREADS of the runtimes (default: torch's, all cores)")
    parser.add_argument("--child", choices=SCENARIOS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    settings = (args.preset, args.steps, args.jump_length, args.jump_n_sample, args.batches, args.repeats)
    if args.child:
        print(json.dumps(run_scenario(args.child, *settings)), flush=True)
        return
    rows = []
    for kind in args.scenarios:
        with tempfile.TemporaryDirectory() as cache:  # a cold start: nothing compiled before
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
            if args.threads:
                env["REPAINT_TORCH_THREADS"] = str(args.threads)
            out = subprocess.run([sys.executable, "-m", "bench.compile", "--child", kind, "--preset", args.preset,
                                  "--steps", str(args.steps), "--jump-length", str(args.jump_length),
                                  "--jump-n-sample", str(args.jump_n_sample), "--repeats", str(args.repeats),
                                  "--batches", *map(str, args.batches)],
                                 env=env, check=True, capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    print()
    print(f"Preset {args.preset}, first job {args.steps}/{args.jump_length}/{args.jump_n_sample}, one sample, "
          f"CPU, {rows[0]['threads']} torch threads; machine: {platform.machine()}, {os.cpu_count()} cores.")
    print()
    print(table(rows, args.batches))


if __name__ == "__main__":
    main()
