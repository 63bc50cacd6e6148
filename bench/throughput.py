"""Service throughput: real Redis, API and one worker; batching on against max_batch=1.

    python -m bench.throughput [--jobs 16] [--concurrency 1 2 4 8] [--max-batch 8] \
        [--steps 50 --jump-length 5 --jump-n-sample 3] [--compile] [--out docs/throughput.md]

For each worker configuration (max_batch=N, then max_batch=1), for each concurrency c, c client
threads each submit a job, poll it to the end and submit the next, until `--jobs` jobs are done.
Clients follow their jobs over Server-Sent Events. Reports images per minute, p50/p95 job
latency (submit to final status, seen by the client)
and the worker's sample evaluations per second, measured side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import threading
import time
from pathlib import Path

from service.client import RepaintClient
from tests.conftest import face_and_mask, png_bytes
from tests.procs import ApiProcess, RedisServer, WorkerProcess
from worker.params import count_evaluations


def run_level(client_url: str, n_jobs: int, concurrency: int, fields: dict) -> dict:
    latencies: list[float] = []
    lock = threading.Lock()
    remaining = [n_jobs]
    failures = []

    def client_loop(seed: int) -> None:
        image, mask = (png_bytes(x) for x in face_and_mask(seed=seed))
        # Clients follow their jobs over Server-Sent Events: polling clients would take CPU
        # from the worker on a small machine and skew the comparison.
        with RepaintClient(client_url) as client:
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
    return {
        "concurrency": concurrency, "jobs": n_jobs, "failed": len(failures), "wall_seconds": round(wall, 2),
        "images_per_minute": round(60 * n_jobs / wall, 1),
        "latency_p50_s": round(statistics.median(latencies), 2),
        "latency_p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 2),
        "sample_evaluations_per_second": round(n_jobs * evaluations / wall, 1),
    }


def run_config(max_batch: int, args) -> list[dict]:
    redis = RedisServer().start()
    api = worker = None
    try:
        api = ApiProcess(redis.url)
        extra = {"REPAINT_MAX_BATCH": str(max_batch), "REPAINT_TORCH_THREADS": str(args.threads)}
        if args.compile:
            extra["REPAINT_COMPILE"] = "true"
        worker = WorkerProcess(redis.url, f"bench-{max_batch}", **extra).wait_ready(redis.client(), timeout=300)
        fields = {"steps": args.steps, "jump_length": args.jump_length, "jump_n_sample": args.jump_n_sample}
        # Warm-up (and compilation with --compile) outside the measurement, at several batch sizes.
        run_level(api.url, max(2, max_batch // 2), max(1, max_batch // 2), fields)
        rows = []
        for c in args.concurrency:
            row = {"max_batch": max_batch, **run_level(api.url, args.jobs, c, fields)}
            print(json.dumps(row), flush=True)
            rows.append(row)
        return rows
    finally:
        for proc in (worker, api):
            if proc is not None:
                proc.stop()
        redis.stop()


def table(rows: list[dict], args) -> str:
    evaluations = count_evaluations(args.steps, args.jump_length, args.jump_n_sample)
    out = [f"Schedule {args.steps}/{args.jump_length}/{args.jump_n_sample} ({evaluations} evaluations per image), "
           f"model `tiny` (32x32), {args.jobs} jobs per row, worker torch threads: {args.threads}, "
           f"compile: {args.compile}. Machine: {platform.machine()}, {platform.processor() or 'unknown CPU'}, "
           f"{__import__('os').cpu_count()} cores.", "",
           "| max_batch | concurrency | images/min | p50 latency s | p95 latency s | sample evals/s |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['max_batch']} | {r['concurrency']} | {r['images_per_minute']} | {r['latency_p50_s']} | "
                   f"{r['latency_p95_s']} | {r['sample_evaluations_per_second']} |")
    by = {(r["max_batch"], r["concurrency"]): r for r in rows}
    out.append("")
    for c in args.concurrency:
        on, off = by.get((args.max_batch, c)), by.get((1, c))
        if on and off:
            out.append(f"- concurrency {c}: batching gives {on['images_per_minute'] / off['images_per_minute']:.2f}x "
                       f"the images per minute of max_batch=1")
    return "\n".join(out) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--jump-length", type=int, default=5)
    parser.add_argument("--jump-n-sample", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = run_config(args.max_batch, args) + run_config(1, args)
    text = table(rows, args)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
