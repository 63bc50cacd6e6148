"""Sizing Redis and the API: what a job takes in Redis while it waits and once it has finished,
by image size and format, and the API's peak memory for N concurrent large uploads.

    python -m bench.sizing [--quick] [--parts redis,api] [--api-env VAR=VALUE ...] [--out FILE.json]

Real processes on loopback, as `bench.load` starts them (Redis with compose's settings, the API,
workers of the `tiny` model: it makes real results at the upload's size). Uploads are synthetic
photographs (`bench.load.synthetic_photo`: smooth colour, texture and grain), the mask their
middle ninth. Memory is Redis's own count per key (MEMORY USAGE: values at their allocator size
class, with key and encoding overhead):

  queued job   = inputs (the upload as sent, the 1-bit mask PNG) + record + RQ's job hash + events
  finished job = results + record + RQ's job hash + events (the inputs and the preview are
                 freed; the "preview left" column checks that none is)

The API's peak RSS (VmHWM) is measured on a fresh process per row, for N concurrent uploads of
the 4000x3000 JPEG at two REPAINT_PIXEL_BUDGET values (`--api-env` adds to those processes'
environment, e.g. MALLOC_MMAP_THRESHOLD_=1048576); those jobs are canceled afterwards.
Prints Markdown tables and writes JSON (bench/results/sizing-<host>.json or --out).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import httpx

from bench.load import (ROOT, Stack, Tally, auth, budget_env, encoded, finished_bytes, machine, queued_bytes,
                        rect_mask, say, synthetic_photo, upload_peak, wait_all_final)

SIZES = [(512, 512), (1024, 1024), (2048, 1536), (4000, 3000)]
INPUTS = ["jpeg", "png"]
OUTPUTS = [("png", 1), ("png", 4), ("jpeg", 1), ("jpeg", 4)]   # (output_format, num_samples)
JOB = {"steps": "5", "jump_length": "5", "jump_n_sample": "1"}
MB = 1e6


def upload(photo, fmt: str) -> dict:
    ext = "jpg" if fmt == "jpeg" else "png"
    return {"image": (f"photo.{ext}", encoded(photo, fmt)), "mask": ("mask.png", rect_mask(*photo.size))}


def redis_per_job(sizes: list[tuple[int, int]], workers: int, timeout: float) -> dict:
    """One job per (size, input format) with 1 PNG result, and per size with a JPEG upload each
    further (output format, samples): measured while all wait, then after workers finished them."""
    stack = Stack()
    tally = Tally()
    queued, finished = [], []
    try:
        # A 4000x3000 photograph is about 19 MB as a PNG: under the default 20 MiB upload limit,
        # raised here so that a larger encoder output cannot turn a row into a 413.
        api = stack.api(REPAINT_MAX_UPLOAD_BYTES=str(64 * 1024 * 1024))
        jobs_made = []   # (size, input format, output format, samples, job id, bytes sent)
        with httpx.Client(base_url=api.url, timeout=300) as client:
            for size in sizes:
                photo = synthetic_photo(*size, seed=size[0])
                files = {fmt: upload(photo, fmt) for fmt in INPUTS}
                for fmt in INPUTS:
                    for out_fmt, n in OUTPUTS:
                        if fmt != "jpeg" and (out_fmt, n) != ("png", 1):
                            continue   # the results do not depend on how the upload was encoded
                        r = tally.post(client, "tenant-a", files[fmt],
                                       {**JOB, "output_format": out_fmt, "num_samples": str(n)})
                        if r.status_code != 202:
                            raise RuntimeError(f"{size} {fmt}: {r.status_code} {r.text}")
                        sent = sum(len(content) for _, content in files[fmt].values())
                        jobs_made.append((size, fmt, out_fmt, n, r.json()["id"], sent))
                say("sizing", f"{size[0]}x{size[1]}: queued {sum(1 for j in jobs_made if j[0] == size)} jobs")
        for size, fmt, out_fmt, n, job_id, sent in jobs_made:
            if (out_fmt, n) == ("png", 1):
                queued.append({"width": size[0], "height": size[1], "input_format": fmt, "bytes_sent": sent,
                               **queued_bytes(stack.redis, job_id)})
        t0 = time.perf_counter()
        for i in range(workers):
            stack.worker(f"sizing-{i}", wait=False)
        for w in stack.workers:
            w.wait_ready(stack.redis, timeout=120)
        ended = wait_all_final(stack.redis, [j[4] for j in jobs_made], timeout)
        say("sizing", f"{workers} worker(s) finished {ended['jobs']} jobs in {time.perf_counter() - t0:.0f} s: {ended}")
        for size, fmt, out_fmt, n, job_id, sent in jobs_made:
            finished.append({"width": size[0], "height": size[1], "input_format": fmt, "output_format": out_fmt,
                             "num_samples": n, **finished_bytes(stack.redis, job_id, n)})
    finally:
        errors = stack.close()
    return {"queued": queued, "finished": finished, "ended": ended, "log_errors": errors,
            "codes": dict(tally.codes), "http_5xx": tally.http_5xx}


def api_peaks(size: tuple[int, int], counts: list[int], budgets: list[int], env: dict) -> dict:
    """The API's peak RSS for N concurrent uploads of a `size` JPEG, one fresh API per row; the
    jobs are canceled afterwards (no worker: only the API is measured)."""
    photo = synthetic_photo(*size, seed=0)
    files = upload(photo, "jpeg")
    data = {**JOB, "output_format": "jpeg"}
    stack = Stack()
    tally = Tally()
    rows = []
    try:
        plan = [(budget, n) for budget in budgets for n in counts]
        apis = [stack.api(wait=False, **budget_env(budget), **env) for budget, _ in plan]
        for api in apis:
            api.wait_up()
        for (budget, n), api in zip(plan, apis):
            row = {"budget_pixels": budget, **upload_peak(api, files, n, data, tally)}
            row.pop("ids")
            rows.append(row)
            say("sizing", f"budget {budget / MB:.0f} MP, {n} concurrent {size[0]}x{size[1]} JPEG uploads: "
                          f"peak RSS {row['peak_rss_mib']} MiB ({row['rss_before_mib']} before), {row['codes']}")
        # Nothing is left waiting: the jobs are canceled (DELETE), their inputs freed.
        canceler = stack.api()
        with httpx.Client(base_url=canceler.url, timeout=60) as client:
            for job_id in tally.accepted:
                client.delete(f"/jobs/{job_id}", headers=auth("tenant-a"))
        ended = wait_all_final(stack.redis, tally.accepted, 60)
    finally:
        errors = stack.close()
    return {"image": f"{size[0]}x{size[1]} JPEG q90", "image_bytes": len(files["image"][1]), "env": env, "rows": rows,
            "ended": ended, "log_errors": errors, "codes": dict(tally.codes), "http_5xx": tally.http_5xx}


def finished_without_preview(f: dict) -> int:
    return f["total"] - f["preview_left"]


def tables(report: dict) -> str:
    out = []
    if "redis" in report:
        per_job = report["redis"]
        out += ["Redis memory per queued job (inputs + record + RQ hash + events):", "",
                "| image | upload | bytes sent | queued job in Redis | of which inputs | record + RQ hash + events |",
                "|---|---|---|---|---|---|"]
        for q in per_job["queued"]:
            out.append(f"| {q['width']}x{q['height']} | {q['input_format'].upper()} | {q['bytes_sent'] / MB:.2f} MB | "
                       f"{q['total'] / MB:.2f} MB | {q['inputs'] / MB:.2f} MB | "
                       f"{(q['record'] + q['rq_hash'] + q['events']) / 1e3:.1f} kB |")
        out += ["", "Redis memory per finished job (results + record + RQ hash + events), by output format and "
                    "num_samples, JPEG upload; and any preview left behind (none: freed with the inputs):", "",
                "| image | " + " | ".join(f"{fmt.upper()} x{n}" for fmt, n in OUTPUTS) + " | preview left |",
                "|---|" + "---|" * (len(OUTPUTS) + 1)]
        for w, h in report["sizes"]:
            cells = []
            for fmt, n in OUTPUTS:
                match = [f for f in per_job["finished"] if (f["width"], f["height"], f["input_format"],
                                                            f["output_format"], f["num_samples"])
                         == (w, h, "jpeg", fmt, n)]
                cells.append(f"{finished_without_preview(match[0]) / MB:.2f} MB" if match else "-")
            previews = [f["preview_left"] for f in per_job["finished"] if (f["width"], f["height"]) == (w, h)]
            cells.append(f"{max(previews) / MB:.2f} MB" if previews and max(previews) else "-")
            out.append(f"| {w}x{h} | " + " | ".join(cells) + " |")
    if "api" in report:
        peaks = report["api"]
        budgets = sorted({r["budget_pixels"] for r in peaks["rows"]}, reverse=True)
        counts = sorted({r["uploads"] for r in peaks["rows"]})
        env = " ".join(f"{k}={v}" for k, v in peaks["env"].items())
        env = f", with {env}" if env else ""
        out += ["" if out else None, f"API peak RSS (VmHWM) for N concurrent uploads of the {peaks['image']} "
                f"({peaks['image_bytes'] / MB:.1f} MB), one fresh API process per cell{env}:",
                "", "| REPAINT_PIXEL_BUDGET | idle | " + " | ".join(f"N = {n}" for n in counts) + " |",
                "|---|---|" + "---|" * len(counts)]
        for budget in budgets:
            rows = {r["uploads"]: r for r in peaks["rows"] if r["budget_pixels"] == budget}
            idle = statistics.median(r["rss_before_mib"] for r in rows.values())
            out.append(f"| {budget / MB:.0f} MP | {idle:.0f} MiB | "
                       + " | ".join(f"{rows[n]['peak_rss_mib']:.0f} MiB" if n in rows else "-" for n in counts) + " |")
    return "\n".join(line for line in out if line is not None) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="two small sizes, N = 1, 2")
    parser.add_argument("--parts", default="redis,api", help="redis (bytes per job), api (peak RSS), or both")
    parser.add_argument("--api-env", action="append", default=[], metavar="VAR=VALUE",
                        help="environment of the API processes whose peak RSS is measured")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts or parts - {"redis", "api"}:
        parser.error("--parts takes redis, api or both")
    env = dict(item.split("=", 1) for item in args.api_env)
    sizes = SIZES[:2] if args.quick else SIZES
    counts = [1, 2] if args.quick else [1, 4, 10]
    peak_size = (1024, 768) if args.quick else (4000, 3000)
    budgets = [100_000_000, 30_000_000]
    report = {"machine": machine(), "quick": args.quick, "sizes": sizes, "job": JOB}
    t0 = time.perf_counter()
    if "redis" in parts:
        report["redis"] = redis_per_job(sizes, workers=2, timeout=1800)
    if "api" in parts:
        report["api"] = api_peaks(peak_size, counts, budgets, env)
    report["wall_seconds"] = round(time.perf_counter() - t0, 1)
    report["markdown"] = tables(report)
    out = args.out or ROOT / "bench" / "results" / f"sizing-{platform.node()}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(report["markdown"])
    print(f"wrote {out}", flush=True)
    return report


if __name__ == "__main__":
    main()
