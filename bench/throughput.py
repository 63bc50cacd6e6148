"""Service throughput: real Redis, API and one worker; continuous batching against max_batch=1.

    python -m bench.throughput [--device cpu|cuda] [--model tiny|celeba256] [--checkpoint FILE] \
        [--concurrency 1 8 32] [--rounds 2] [--steps 50 --jump-length 5 --jump-n-sample 3 | --paper] \
        [--config batched: --config unbatched:REPAINT_MAX_BATCH=1 ...] [--time-budget S] \
        [--json FILE] [--out docs/throughput.md] [--against-sampler]

Each worker configuration (`--config LABEL:VAR=VALUE,...`, environment for the worker; default:
the worker's own defaults, then max_batch=1) gets a fresh Redis, API and worker. For each
concurrency c, c client threads each submit a job, follow it over Server-Sent Events to its
end and submit the next, until `rounds * c` jobs are done. Reports images per minute and per
hour, p50/p95 latency (submit to final status, seen by the client), the worker's sample
evaluations per second, and from those the paper setting's projected images per hour (2,410
evaluations each: the worker's cost per evaluation does not depend on the schedule), measured
side by side in one run.

`--device cuda` defaults to the celeba256 architecture (the official 256 px ADM UNet) with
random weights written to a temporary checkpoint (speed does not depend on the weights) and the
paper's jumps over 25 steps (25/10/10, 205 evaluations) so that a run fits a short GPU lease;
`--paper` runs the paper setting itself.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

from service.client import RepaintClient
from tests.conftest import face_and_mask, png_bytes
from tests.procs import ApiProcess, RedisServer, WorkerProcess
from worker.params import PAPER_EVALUATIONS, count_evaluations


def run_level(client_url: str, n_jobs: int, concurrency: int, fields: dict, image_size: int) -> dict:
    latencies: list[float] = []
    lock = threading.Lock()
    remaining = [n_jobs]
    failures = []

    def client_loop(seed: int) -> None:
        image, mask = (png_bytes(x) for x in face_and_mask(size=image_size, seed=seed))
        # Clients follow their jobs over Server-Sent Events: polling clients would take CPU
        # from the worker on a small machine and skew the comparison.
        with RepaintClient(client_url, timeout=60) as client:
            while True:
                with lock:
                    if remaining[0] == 0:
                        return
                    remaining[0] -= 1
                t0 = time.perf_counter()
                job = client.wait(client.submit(image, mask, **fields)["id"])
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    if job["status"] != "succeeded":
                        failures.append(job)

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    latencies.sort()
    evaluations = count_evaluations(fields["steps"], fields["jump_length"], fields["jump_n_sample"])
    evals_per_second = n_jobs * evaluations / wall
    return {
        "concurrency": concurrency, "jobs": n_jobs, "failed": len(failures), "wall_seconds": round(wall, 2),
        "images_per_minute": round(60 * n_jobs / wall, 2),
        "images_per_hour": round(3600 * n_jobs / wall, 1),
        "latency_p50_s": round(statistics.median(latencies), 2),
        "latency_p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 2),
        "sample_evaluations_per_second": round(evals_per_second, 1),
        "paper_images_per_hour": round(3600 * evals_per_second / PAPER_EVALUATIONS, 1),
    }


def random_checkpoint(model: str, folder: str) -> str:
    """The model's architecture with seeded random weights, saved where the worker reads weights."""
    import torch

    import models

    net = models.randomize_weights(models.build_unet(models.get_preset(model).conf), 0)
    path = os.path.join(folder, f"{model}-random.pt")
    torch.save(net.state_dict(), path)
    return path


def wait_for_compilation(redis, worker_name: str, timeout: float) -> str:
    """The worker's REPAINT_COMPILE state once it is no longer compiling (its heartbeat reports
    it): levels measured while the worker still serves eagerly would mix two speeds."""
    from worker import jobs

    key, t0, state = f"rq:worker:{worker_name}", time.monotonic(), None
    while time.monotonic() - t0 < timeout:
        raw = redis.hget(key, jobs.WORKER_COMPILE_FIELD)
        state = raw.decode() if raw else None
        if state is not None and state != "compiling":
            return state
        time.sleep(1.0)
    return f"{state or 'unknown'} after {timeout:.0f}s"


def peak_rss_mib(pid: int) -> float | None:
    """The process's peak resident memory so far (VmHWM), where /proc has it."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def run_config(label: str, env: dict, args, deadline: float) -> list[dict]:
    redis = RedisServer().start()
    api = worker = None
    try:
        api = ApiProcess(redis.url, REPAINT_MODEL=args.model)
        extra = {"REPAINT_DEVICE": args.device, "REPAINT_LOG_LEVEL": "WARNING", **env}
        if args.device == "cpu":
            extra.setdefault("REPAINT_TORCH_THREADS", str(args.threads))
        else:
            extra["REPAINT_TORCH_THREADS"] = str(args.threads or os.cpu_count())
        if args.checkpoint:
            extra["REPAINT_CHECKPOINT"] = args.checkpoint
        worker = WorkerProcess(redis.url, f"bench-{label}", model=args.model, **extra).wait_ready(
            redis.client(), timeout=600)
        compile_state = wait_for_compilation(redis.client(), worker.name, timeout=900)
        fields = {"steps": args.steps, "jump_length": args.jump_length, "jump_n_sample": args.jump_n_sample,
                  "sampler": "repaint"}
        # Warm-up outside the measurement: every batch size the levels reach (cuDNN's choices,
        # compilation with REPAINT_COMPILE, CUDA graph capture with REPAINT_CUDA_GRAPHS).
        warm = min(max(args.concurrency), int(env.get("REPAINT_MAX_BATCH", args.default_max_batch)))
        run_level(api.url, max(2, warm), max(1, warm), fields, args.image_size)
        rows = []
        for c in args.concurrency:
            row = {"config": label, "concurrency": c, "compile": compile_state}
            if time.monotonic() > deadline:
                rows.append({**row, "skipped": "time budget spent"})
            else:
                row.update(run_level(api.url, args.rounds * c, c, fields, args.image_size))
                row["worker_peak_rss_mib"] = peak_rss_mib(worker.proc.pid)
                rows.append(row)
            print(json.dumps(rows[-1]), flush=True)
        return rows
    finally:
        for proc in (worker, api):
            if proc is not None:
                proc.stop()
        redis.stop()


def table(rows: list[dict], args) -> str:
    evaluations = count_evaluations(args.steps, args.jump_length, args.jump_n_sample)
    device = args.device_name
    out = [f"Schedule {args.steps}/{args.jump_length}/{args.jump_n_sample} ({evaluations} evaluations per image), "
           f"model `{args.model}` ({args.image_size}x{args.image_size}"
           f"{', random weights' if args.random_weights else ''}), {args.rounds} job(s) per client per row. "
           f"Device: {device}. Worker configurations: "
           + "; ".join(f"`{label}` ({', '.join(f'{k}={v}' for k, v in env.items()) or 'the defaults'})"
                       for label, env in args.configs) + ".", "",
           "| config | concurrency | images/min | images/hour | p50 latency s | p95 latency s | sample evals/s "
           "| paper images/hour (projected) | worker peak RSS MiB |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            out.append(f"| {r['config']} | {r['concurrency']} | skipped: {r['skipped']} | | | | | | |")
            continue
        failed = f" ({r['failed']} of {r['jobs']} jobs failed)" if r["failed"] else ""
        out.append(f"| {r['config']} | {r['concurrency']} | {r['images_per_minute']}{failed} | {r['images_per_hour']} | "
                   f"{r['latency_p50_s']} | {r['latency_p95_s']} | {r['sample_evaluations_per_second']} | "
                   f"{r['paper_images_per_hour']} | {r.get('worker_peak_rss_mib') or 'n/a'} |")
    by = {(r["config"], r["concurrency"]): r for r in rows if "skipped" not in r}
    labels = [label for label, _ in args.configs]
    base = next((label for label, env in args.configs if env.get("REPAINT_MAX_BATCH") == "1"), None)
    out.append("")
    for label in labels:
        if label == base or base is None:
            continue
        for c in args.concurrency:
            on, off = by.get((label, c)), by.get((base, c))
            if on and off:
                out.append(f"- concurrency {c}: `{label}` gives {on['images_per_minute'] / off['images_per_minute']:.2f}x "
                           f"the images per minute of `{base}`")
    return "\n".join(out) + "\n"


def _batch_and_threads(env: dict, args) -> tuple[int, int | None]:
    threads = env.get("REPAINT_TORCH_THREADS")
    return int(env.get("REPAINT_MAX_BATCH", args.default_max_batch)), int(threads) if threads else args.threads


def _level_batch(env: dict, concurrency: int, args) -> tuple[int, int | None]:
    """The batch a level fills (one sample per client's job, at most max_batch) and its threads."""
    batch, threads = _batch_and_threads(env, args)
    return min(batch, concurrency), threads


def bare_sampler(args) -> dict[tuple[int, int | None], dict]:
    """bench.sampler at the batch each level fills (min(concurrency, max_batch)) and each
    configuration's torch threads (same model, weights, schedule, device), in a process of its
    own as the worker is: {(batch, threads): its result}."""
    import subprocess
    import sys

    wanted: dict[int | None, set[int]] = {}
    for _, env in args.configs:
        for c in args.concurrency:
            batch, threads = _level_batch(env, c, args)
            wanted.setdefault(threads, set()).add(batch)
    results = {}
    for threads, batches in wanted.items():
        command = [sys.executable, "-m", "bench.sampler", "--preset", args.model, "--device", args.device,
                   "--steps", str(args.steps), "--jump-length", str(args.jump_length),
                   "--jump-n-sample", str(args.jump_n_sample), "--repeats", "2", "--batch", *map(str, sorted(batches))]
        if threads:
            command += ["--threads", str(threads)]
        if args.checkpoint:
            command += ["--checkpoint", args.checkpoint]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("{"):
                r = json.loads(line)
                print(json.dumps(r), flush=True)
                results[(r["batch"], threads)] = r
    return results


def against_sampler(rows: list[dict], bare: dict, args) -> str:
    """The service's sample evaluations per second as a share of the bare sampler's at the batch
    the level fills and the configuration's threads, for each level."""
    if not bare:
        return ""
    out = ["", "Against the bare sampler (`bench.sampler`, same model, schedule and torch threads, this run):", "",
           "| config | concurrency | service evals/s | bare sampler evals/s (batch, threads) | service / bare |",
           "|---|---|---|---|---|"]
    envs = dict(args.configs)
    for r in rows:
        if "skipped" in r:
            continue
        batch, threads = _level_batch(envs[r["config"]], r["concurrency"], args)
        reference = bare[(batch, threads)]["image_evaluations_per_second"]
        out.append(f"| {r['config']} | {r['concurrency']} | {r['sample_evaluations_per_second']} | "
                   f"{reference} ({batch}, {threads or 'default'}) | {r['sample_evaluations_per_second'] / reference:.0%} |")
    return "\n".join(out) + "\n"


def parse_config(text: str) -> tuple[str, dict]:
    label, _, assignments = text.partition(":")
    env = {}
    for part in filter(None, (p.strip() for p in assignments.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.startswith("REPAINT_"):
            raise argparse.ArgumentTypeError(f"--config takes LABEL:REPAINT_VAR=VALUE,...; got {text!r}")
        env[key] = value
    if not label:
        raise argparse.ArgumentTypeError(f"--config needs a label: {text!r}")
    return label, env


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--model", default=None, help="default: tiny on cpu, celeba256 on cuda")
    parser.add_argument("--checkpoint", default=None,
                        help="the model's weights (default: random weights for models without bundled ones)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=None, help="default: 1 2 4 8 (cpu), 1 8 32")
    parser.add_argument("--rounds", type=int, default=None, help="jobs per client thread (default: 2 cpu, 1 cuda)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--jump-length", type=int, default=None)
    parser.add_argument("--jump-n-sample", type=int, default=None)
    parser.add_argument("--paper", action="store_true", help="the paper's 250/10/10")
    parser.add_argument("--threads", type=int, default=None, help="worker torch threads (default: 2 on cpu)")
    parser.add_argument("--config", dest="configs", type=parse_config, action="append", default=None)
    parser.add_argument("--compile", action="store_true", help="REPAINT_COMPILE=true in every configuration")
    parser.add_argument("--time-budget", type=float, default=3600.0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--against-sampler", action="store_true",
                        help="also time the bare sampler (bench.sampler) at the batch each level fills, same "
                             "model, schedule and threads, in this run, and report the service's share of it")
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    args.model = args.model or ("celeba256" if cuda else "tiny")
    schedule = (250, 10, 10) if args.paper else ((25, 10, 10) if cuda else (50, 5, 3))
    args.steps = args.steps or schedule[0]
    args.jump_length = args.jump_length or schedule[1]
    args.jump_n_sample = args.jump_n_sample or schedule[2]
    args.concurrency = args.concurrency or ([1, 8, 32] if cuda else [1, 2, 4, 8])
    args.rounds = args.rounds or (1 if cuda else 2)
    args.threads = args.threads or (None if cuda else 2)
    args.default_max_batch = "16" if cuda else "8"
    args.configs = args.configs or [("batched", {} if cuda else {"REPAINT_MAX_BATCH": "8"}),
                                    ("unbatched", {"REPAINT_MAX_BATCH": "1"})]
    if args.compile:
        args.configs = [(label, {**env, "REPAINT_COMPILE": "true"}) for label, env in args.configs]

    import models

    preset = models.get_preset(args.model)
    args.image_size = preset.image_size
    args.random_weights = False
    if cuda:
        import torch

        args.device_name = torch.cuda.get_device_name(0)
    else:
        args.device_name = f"CPU ({platform.machine()}, {platform.processor() or 'unknown'}, {os.cpu_count()} cores)"
    deadline = time.monotonic() + args.time_budget
    with tempfile.TemporaryDirectory() as folder:
        if not args.checkpoint and preset.bundled is None and preset.random_init_seed is None:
            args.checkpoint = random_checkpoint(args.model, folder)
            args.random_weights = True
        rows = []
        for label, env in args.configs:
            if time.monotonic() > deadline:
                rows += [{"config": label, "concurrency": c, "skipped": "time budget spent"} for c in args.concurrency]
                continue
            rows += run_config(label, env, args, deadline)
        bare = bare_sampler(args) if args.against_sampler else {}
    text = table(rows, args) + against_sampler(rows, bare, args)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": args.device_name, "model": args.model, "rows": rows,
                                         "schedule": [args.steps, args.jump_length, args.jump_n_sample],
                                         "bare_sampler": list(bare.values())}, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return rows


if __name__ == "__main__":
    main()
