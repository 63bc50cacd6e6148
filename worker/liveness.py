"""Liveness, on a thread beside the batching loop: heartbeats that mean progress, and the reaper.

Heartbeats. Every running job has a lease key with a TTL (`REPAINT_HEARTBEAT_TTL`) that only
its owner's heartbeat renews (worker.ledger). This thread renews the leases of the jobs in
flight, and RQ's worker and execution heartbeats, unless the loop is stuck: a forward pass
running for longer than the engine's stall deadline stops the beats, so the jobs are reaped
and run elsewhere. Stuck for twice as long, the worker declares itself defunct and
exits, so that its supervisor restarts it.

The reaper. Any worker looks, every beat, for running jobs whose lease is gone. A lease seen
missing is only a suspect: the job is abandoned (ledger `abandon`: back to the queue, or failed
after its last attempt) when the lease is still missing a full TTL later. That gives a live
owner one TTL to renew after Redis comes back from an outage, a restart or a pause longer than
the TTL (when every lease has lapsed at once), so only jobs whose worker is really gone or
stuck are taken away. Abandoning is a guarded transition: several reapers acting on one lease
abandon it once.

The same patience applies to deliveries: a job in RQ's intermediate list whose record still says
`queued` was dequeued by a worker that never started it (it died in between, or a Redis failover
kept the dequeue but lost the start). Seen so for a full TTL, it goes back to the front of its
queue. RQ's own maintenance would find it too, but only after ten minutes or more.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from . import catalog, jobs, rqside
from .ledger import Lease, Ledger, Outcome

log = logging.getLogger(__name__)

DEFUNCT_EXIT_CODE = 70  # EX_SOFTWARE: the supervisor restarts the worker


class Reaper:
    """Finds leases that stayed missing for a full TTL and abandons their jobs."""

    def __init__(self, ledger: Ledger, ttl: float, *, clock=time.monotonic, on_final=None, name: str = "",
                 queue_names: tuple[str, ...] = ()):
        self.ledger = ledger
        self.name = name
        self.ttl = ttl
        self.clock = clock
        self.on_final = on_final  # called with (lease, outcome) for a job the reaper ended for good
        self.queue_names = queue_names  # whose stuck deliveries this reaper puts back
        self._suspects: dict[Lease, float] = {}
        self._stuck: dict[tuple[str, str], float] = {}  # (queue, job id) -> first seen undelivered
        self._last_scan: float | None = None

    def scan(self) -> list[tuple[Lease, Outcome]]:
        """Abandon the jobs whose lease stayed missing for a full TTL (returned with the outcome),
        and put back the deliveries that stayed stuck as long (`scan_deliveries`)."""
        now = self.clock()
        if self._last_scan is not None and now - self._last_scan > self.ttl / 2:
            # This process was not looking (it was paused, or Redis was away): what it saw
            # before says nothing about how long a lease has been missing since.
            self._suspects.clear()
            self._stuck.clear()
        self._last_scan = now
        self.scan_deliveries(now)
        missing = set(self.ledger.expired_leases())
        self._suspects = {lease: self._suspects.get(lease, now) for lease in missing}
        handled = []
        for lease, since in list(self._suspects.items()):
            if now - since >= self.ttl:
                outcome = self.ledger.abandon(lease, self.name)
                del self._suspects[lease]
                if outcome in (Outcome.REQUEUED, Outcome.FAILED):
                    log.warning("job %s was abandoned by its worker: %s", lease.job_id, outcome.value)
                if outcome in (Outcome.FAILED, Outcome.CANCELED) and self.on_final is not None:
                    self.on_final(lease, outcome)
                handled.append((lease, outcome))
        return handled

    def scan_deliveries(self, now: float) -> list[str]:
        """Put back the jobs stuck in an intermediate list for a full TTL; returns their ids."""
        seen = {(name, job_id) for name in self.queue_names for job_id in self.ledger.undelivered(name)}
        self._stuck = {key: self._stuck.get(key, now) for key in seen}
        recovered = []
        for (name, job_id), since in list(self._stuck.items()):
            if now - since < self.ttl:
                continue
            del self._stuck[(name, job_id)]
            if self.ledger.recover_undelivered(name, job_id, still_delivered=True) == Outcome.REQUEUED:
                log.warning("job %s was dequeued but never started (a worker died, or a failover lost "
                            "its start): back to the front of its queue", job_id)
                recovered.append(job_id)
        return recovered


class Heartbeats:
    """The heartbeat and reaper thread of one worker (its engine is `worker.engine`)."""

    def __init__(self, worker, engine, ledger: Ledger, *, ttl: int, describe: dict, interval: float | None = None,
                 report=None):
        self.worker = worker
        # () -> {field: str}: what this worker says of itself, kept in its RQ worker hash
        # (jobs.WORKER_COMPILE_FIELD; worker.health prints it).
        self.report = report
        self.engine = engine
        self.ledger = ledger
        self.redis = worker.connection
        self.ttl = ttl
        self.describe = describe
        self.interval = interval or max(1.0, ttl / 6)
        self.reaper = Reaper(ledger, ttl, on_final=self._notify_final, name=worker.name,
                             queue_names=tuple(q.name for q in worker.queues))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeats", daemon=True)
        self._stall_logged = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception as exc:  # Redis away: the next beat tries again
                log.warning("heartbeat: %s", exc)

    def beat(self) -> None:
        stalled = self.engine.stalled_for()
        if stalled:
            if not self._stall_logged:
                log.error("the batch loop has made no progress for %.0fs: no more heartbeats for its jobs", stalled)
                self._stall_logged = True
            if stalled > 2 * self.engine.stall_deadline():
                self.engine.declare_defunct(f"the batch loop made no progress for {stalled:.0f}s", requeue=False)
                log.error("exiting: a stuck forward pass cannot be interrupted from inside the process")
                os._exit(DEFUNCT_EXIT_CODE)
            return
        self._stall_logged = False
        flights = self.engine.flights
        if flights:
            owned = self.ledger.heartbeat([Lease(f.job_id, f.token) for f in flights], self.ttl)
            self.engine.mark_lost(Lease(f.job_id, f.token) for f, ok in zip(flights, owned) if not ok)
            with self.redis.pipeline(transaction=False) as pipe:
                for flight, ok in zip(flights, owned):
                    if ok:
                        rqside.heartbeat(pipe, self.redis, self.worker.queues[0].name, flight.job_id, flight.token,
                                         self.worker.name, self.ttl)
                pipe.execute()
        self.worker.heartbeat()
        if self.report is not None and self.redis.exists(self.worker.key):  # never before RQ registered it
            self.redis.hset(self.worker.key, mapping=self.report())
        register_model(self.redis, self.describe)
        catalog.prune_stale_models(self.redis)
        for queue in self.worker.queues:
            rqside.prune_canceled(self.redis, queue.name)
        self.reaper.scan()


    def _notify_final(self, lease: Lease, outcome: Outcome) -> None:
        """The job's webhook hears of an end the reaper decided (no worker will)."""
        record = self.ledger.read(lease.job_id) or {}
        hook = record.get("params", {}).get("webhook")
        self.engine.webhooks.notify(hook, lease.job_id, "completed",
                                    {"status": record.get("status", outcome.value), "error": record.get("error")})


def register_model(redis, describe: dict) -> None:
    """What this worker serves, with the time it was last seen (the API ignores stale entries)."""
    redis.hset(jobs.models_key(), describe["name"], jobs.dumps({**describe, "seen_at": time.time()}))
