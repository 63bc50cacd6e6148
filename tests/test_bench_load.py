"""`python -m bench.load --quick` end to end (real Redis, API and workers, every phase at small
counts), as CI runs it: the report has its fields, every accepted job ended, no 5xx."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from bench import load

ROOT = Path(__file__).resolve().parents[1]
TIME_LIMIT = 240  # about a minute on a 2-core machine; the limit leaves room for a busy one


def test_compose_redis_arguments_follow_the_compose_file():
    args = load.compose_redis_args()
    assert args[args.index("--appendonly") + 1] == "yes"
    assert "--port" not in args and not any("${" in a for a in args)


def test_quick_run_reports_every_figure_and_every_accepted_job_ended(tmp_path):
    out = tmp_path / "load.json"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "bench.load", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=TIME_LIMIT)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    print(f"bench.load --quick: {elapsed:.0f} s")

    summary = report["summary"]
    assert summary["jobs_accepted"] > 0
    assert summary["jobs_not_final"] == 0, summary
    assert summary["jobs_failed"] == 0, summary
    assert summary["http_5xx"] == 0, {p: v.get("bodies_5xx") for p, v in report["phases"].items()}

    a = report["phases"]["a"]
    for design in ("fair", "fifo"):
        assert a[design]["b_status"] == "succeeded"
        assert a[design]["b_wait_running_s"] is not None and a[design]["b_wait_succeeded_s"] is not None
        assert a[design]["a_throughput_jobs_per_s"] > 0
    # Under A's key, B's job waits behind every A job still waiting; under its own it does not.
    assert a["fifo"]["a_started_after_b_arrived_before_b"] == a["fifo"]["a_waiting_at_b"]
    assert a["fair"]["a_started_after_b_arrived_before_b"] < a["fifo"]["a_started_after_b_arrived_before_b"]

    b = report["phases"]["b"]
    assert b["stream_codes"] == {"200": b["streams"]}
    assert b["streams_ended_final"] == b["streams"] and b["streams_ids_monotonic"]
    for key in ("first_event", "get_job_idle", "get_job_under_streams"):
        assert b[key]["count"] > 0 and b[key]["p50_ms"] <= b[key]["p99_ms"]
    for key in ("redis_clients_before", "redis_clients_during_max", "redis_clients_after"):
        assert b[key]["connected"] > 0
    assert b["redis_clients_during_max"]["pubsub"] <= 2  # the API's one, and the worker's RQ channel

    c = report["phases"]["c"]
    assert [r["budget_pixels"] for r in c["runs"]] == [100_000_000, 30_000_000]
    for run in c["runs"]:
        assert run["codes"] == {"202": c["uploads"]}
        assert run["peak_rss_mib"] >= run["rss_before_mib"] > 0
        # Uploads are stored as sent: a queued job takes about the bytes sent, not a re-encoding.
        assert 0.9 < run["redis_bytes_over_sent"] < 1.5

    d = report["phases"]["d"]
    assert d["accepted"] > 0 and d["refused_507"] > 0 and d["http_5xx"] == 0
    assert d["ended"]["succeeded"] == d["accepted"] and d["reserved_bytes_after"] == 0

    assert "| second tenant's wait, fair queue" in report["markdown"]
    assert "| 5xx answers other than 507 | 0 |" in report["markdown"]
