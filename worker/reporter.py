"""Progress and previews, written beside the batching loop instead of inside it.

Every `REPAINT_PROGRESS_INTERVAL` the loop takes a snapshot of its jobs (step, total, ETA; every
`REPAINT_PREVIEW_INTERVAL` also each job's current estimate, as pixels) and hands it here. This
thread encodes the previews, writes progress through the ledger (one pipelined round trip; each
write is guarded by the job's owner token, so a late one for a job that has ended or moved on
changes nothing) and tells the webhooks. The loop never waits for any of it. It runs no torch op:
a second OpenMP team would slow every pass of the serving thread (`Runtime.estimate_pixels`).

Bounded: one snapshot waits at most. A newer one replaces a snapshot not yet written (progress
is a state, not a log: only the latest matters), so a slow Redis costs progress updates, never
memory or the loop's time. Failures are logged and dropped for the same reason: the next
snapshot comes within one interval.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import redis

from .ledger import Lease, Ledger

log = logging.getLogger(__name__)


def redis_is_full(exc: BaseException) -> bool:
    """Whether Redis refused a write for want of memory (maxmemory with noeviction). Inside a
    transaction the refusal arrives as EXECABORT naming the OOM error."""
    return isinstance(exc, redis.exceptions.OutOfMemoryError) or "OOM" in str(exc) or "maxmemory" in str(exc)


@dataclass
class Snapshot:
    updates: list[tuple[Lease, dict, dict | None]]  # (lease, progress, webhook)
    # job id -> (model pixels, RGB uint8 [S x S x 3], prepared job, params, step): previews to encode
    estimates: dict[str, tuple[Any, Any, Any, int]] = field(default_factory=dict)


class ProgressReporter:
    def __init__(self, ledger: Ledger, preview_png: Callable, webhooks, on_lost: Callable[[list[Lease]], None]):
        self.ledger = ledger
        self.preview_png = preview_png  # (model pixels, prepared, params) -> PNG bytes
        self.webhooks = webhooks
        self.on_lost = on_lost  # leases the ledger says this worker no longer owns
        self._pending: Snapshot | None = None
        self._busy = False
        self._stopped = False
        self._cond = threading.Condition()
        self._error_logged = 0.0
        self._thread: threading.Thread | None = None  # started by the first snapshot

    def submit(self, snapshot: Snapshot) -> None:
        """Hand over the latest snapshot (replacing one not yet written); returns at once."""
        with self._cond:
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
                self._thread.start()
            self._pending = snapshot
            self._cond.notify()

    def drain(self, timeout: float = 5.0) -> bool:
        """Wait until everything submitted is written (tests, and a worker that stops)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (self._pending is not None and self._thread is not None) or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._stopped:
                    self._cond.wait()
                if self._pending is None:
                    return
                snapshot, self._pending, self._busy = self._pending, None, True
            try:
                self._write(snapshot)
            except Exception as exc:  # noqa: BLE001 - progress is a nicety: never this thread's end
                self._log(exc)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _write(self, snapshot: Snapshot) -> None:
        previews = {}
        for job_id, (pixels, prepared, params, step) in snapshot.estimates.items():
            try:
                previews[job_id] = (self.preview_png(pixels, prepared, params), step)
            except Exception as exc:  # noqa: BLE001 - one job's preview never stops the others'
                log.warning("preview of job %s skipped: %s", job_id, exc)
        for lease, progress, webhook in snapshot.updates:
            self.webhooks.notify(webhook, lease.job_id, "progress", progress)
        owned = self.ledger.progress([(lease, progress) for lease, progress, _ in snapshot.updates], previews)
        lost = [lease for (lease, _, _), ok in zip(snapshot.updates, owned) if not ok]
        if lost:
            self.on_lost(lost)

    def _log(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._error_logged < 60:
            return
        self._error_logged = now
        if isinstance(exc, redis.exceptions.ResponseError) and redis_is_full(exc):
            log.error("redis is full (%s): progress not written; the batch carries on", exc)
        else:
            log.warning("progress not written (%s); the next update tries again", exc)
