"""The progress reporter beside the batching loop: bounded, latest-wins, never the loop's wait."""

from __future__ import annotations

import threading
import time

import redis

from tests.worker.test_ledger import create, record, started
from worker.ledger import Lease, Ledger
from worker.reporter import ProgressReporter, Snapshot


class Webhooks:
    def __init__(self):
        self.sent = []

    def notify(self, webhook, job_id, event, data):
        self.sent.append((job_id, event, data["step"]))


class RecordingLedger:
    """Stands for the ledger: records each write; `gate` holds the first write until set."""

    def __init__(self, gate: threading.Event | None = None, fail_first: bool = False):
        self.writes, self.gate, self.fail_first = [], gate, fail_first
        self.at_gate = threading.Event()

    def progress(self, updates, previews):
        if self.gate is not None:
            self.at_gate.set()
            self.gate.wait(5)
            self.gate = None
        if self.fail_first:
            self.fail_first = False
            raise redis.exceptions.ConnectionError("Redis went away")
        self.writes.append([p["step"] for _, p in updates])
        return [True] * len(updates)


def snapshot(step: int, job_id: str = "j") -> Snapshot:
    return Snapshot([(Lease(job_id, "t"), {"step": step, "total": 10}, None)])


def test_submit_returns_at_once_and_a_newer_snapshot_replaces_one_not_yet_written():
    gate = threading.Event()
    ledger = RecordingLedger(gate)
    reporter = ProgressReporter(ledger, preview_png=None, webhooks=Webhooks(), on_lost=lambda leases: None)
    t0 = time.monotonic()
    reporter.submit(snapshot(1))  # the thread takes it and waits at the gate (a slow Redis)
    waited = time.monotonic() - t0
    assert ledger.at_gate.wait(5)
    t0 = time.monotonic()
    reporter.submit(snapshot(2))  # waits
    reporter.submit(snapshot(3))  # replaces 2: one snapshot waits at most
    waited += time.monotonic() - t0
    assert waited < 0.5  # the loop never waited for Redis
    gate.set()
    assert reporter.drain()
    assert ledger.writes == [[1], [3]]
    reporter.stop()


def test_a_failed_write_is_dropped_and_the_next_one_goes_through():
    ledger = RecordingLedger(fail_first=True)
    reporter = ProgressReporter(ledger, preview_png=None, webhooks=Webhooks(), on_lost=lambda leases: None)
    reporter.submit(snapshot(1))
    assert reporter.drain()
    reporter.submit(snapshot(2))
    assert reporter.drain()
    assert ledger.writes == [[2]]
    reporter.stop()


def test_progress_of_a_job_no_longer_owned_is_refused_and_reported_lost(redis_db):
    """Written late, after the job moved on (here: its lease was taken by another execution), a
    snapshot changes nothing and the engine hears that the job is not its own any more."""
    ledger = Ledger(redis_db, result_ttl=600)
    create(ledger)
    lease = started(ledger, redis_db)
    lost = []
    previews = []

    def preview_png(estimate, prepared, params):
        previews.append(estimate)
        return b"png"

    reporter = ProgressReporter(ledger, preview_png=preview_png, webhooks=Webhooks(), on_lost=lost.extend)
    reporter.submit(Snapshot([(lease, {"step": 3, "total": 10}, None)], {lease.job_id: ("x0", None, None, 3)}))
    assert reporter.drain()
    assert record(redis_db, lease.job_id)["progress"]["step"] == 3 and previews == ["x0"] and lost == []
    stale = Lease(lease.job_id, "another-token")
    reporter.submit(Snapshot([(stale, {"step": 4, "total": 10}, None)]))
    assert reporter.drain()
    assert lost == [stale] and record(redis_db, lease.job_id)["progress"]["step"] == 3
    reporter.stop()
