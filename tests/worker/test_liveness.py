"""Heartbeats that mean progress, and the reaper's patience, against a real Redis and a fake clock."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from tests.worker.test_ledger import MODEL, create, dequeue, lapse, queue, record, started
from worker import jobs
from worker.ledger import Ledger, Outcome
from worker.liveness import Heartbeats, Reaper


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture()
def ledger(redis_db):
    return Ledger(redis_db, result_ttl=600)


@pytest.fixture()
def lapsed(ledger, redis_db):
    """A reaper on a fake clock, and a running job whose lease has just lapsed."""
    clock = Clock()
    create(ledger)
    return clock, Reaper(ledger, ttl=10, clock=clock), lapse(redis_db, started(ledger, redis_db))


def test_a_missing_lease_is_abandoned_only_after_a_full_ttl(ledger, redis_db, lapsed):
    clock, reaper, lease = lapsed
    for _ in range(4):  # scans every 2.5 s: suspect, but not yet abandoned
        assert reaper.scan() == []
        clock.now += 2.5
    assert reaper.scan() == [(lease, Outcome.REQUEUED)]
    assert record(redis_db, lease.job_id)["last_error"]["type"] == "worker_lost"


def test_a_live_owner_renewing_after_an_outage_keeps_its_job(ledger, redis_db, lapsed):
    """Redis was away longer than the TTL: every lease lapsed at once. The owner renews within
    the reaper's patience, so its job is not taken away."""
    clock, reaper, lease = lapsed
    reaper.scan()
    clock.now += 5
    assert ledger.heartbeat([lease], ttl=10) == [True]
    clock.now += 5
    assert reaper.scan() == [] and record(redis_db, lease.job_id)["status"] == "running"


def test_a_reaper_that_was_not_looking_starts_counting_again(ledger, redis_db, lapsed):
    clock, reaper, lease = lapsed
    reaper.scan()
    clock.now += 60  # this process was paused: its first sighting proves nothing
    for _ in range(4):
        assert reaper.scan() == []
        clock.now += 2.5
    assert reaper.scan() == [(lease, Outcome.REQUEUED)]


def test_two_reapers_abandon_a_lease_once(ledger, redis_db):
    clock = Clock()
    reapers = [Reaper(ledger, ttl=10, clock=clock), Reaper(ledger, ttl=10, clock=clock)]
    create(ledger, max_attempts=5)
    lease = started(ledger, redis_db)
    lapse(redis_db, lease)
    outcomes = []
    for _ in range(5):
        outcomes += [o for r in reapers for _, o in r.scan()]
        clock.now += 2.5
    assert outcomes.count(Outcome.REQUEUED) == 1
    assert record(redis_db, lease.job_id)["failures"] == 1


def test_a_delivery_never_started_goes_back_to_its_queue_after_a_full_ttl(ledger, redis_db):
    """A worker dequeued the job and died before `start` (or a failover kept the dequeue and lost
    the start): after one TTL it is at the front of its queue again, and starts normally."""
    clock = Clock()
    reaper = Reaper(ledger, ttl=10, clock=clock, queue_names=(jobs.queue_name(MODEL),))
    job_id, _ = create(ledger)
    dequeue(redis_db)
    assert queue(redis_db).count == 0 and ledger.undelivered(jobs.queue_name(MODEL)) == [job_id]
    for _ in range(4):
        assert reaper.scan_deliveries(clock.now) == []
        clock.now += 2.5
    assert reaper.scan_deliveries(clock.now) == [job_id]
    assert queue(redis_db).get_job_ids() == [job_id] and ledger.undelivered(jobs.queue_name(MODEL)) == []
    assert record(redis_db, job_id)["status"] == "queued"
    assert started(ledger, redis_db).job_id == job_id


def test_a_delivery_started_meanwhile_is_left_alone(ledger, redis_db):
    """Seen stuck, then started by its worker before the TTL ran out: never put back."""
    clock = Clock()
    reaper = Reaper(ledger, ttl=10, clock=clock, queue_names=(jobs.queue_name(MODEL),))
    job_id, _ = create(ledger)
    rq_job = dequeue(redis_db)
    assert reaper.scan_deliveries(clock.now) == []
    ledger.start(rq_job, "w1", 30)
    clock.now += 20
    assert reaper.scan_deliveries(clock.now) == []
    assert record(redis_db, job_id)["status"] == "running" and queue(redis_db).count == 0


def test_a_recovery_acting_on_an_old_sighting_changes_nothing(ledger, redis_db):
    """The job left the intermediate list after it was seen there (another reaper put it back):
    the guarded recovery refuses, so the job is not queued twice."""
    job_id, _ = create(ledger)
    dequeue(redis_db)
    name = jobs.queue_name(MODEL)
    assert ledger.recover_undelivered(name, job_id, still_delivered=True) == Outcome.REQUEUED
    assert ledger.recover_undelivered(name, job_id, still_delivered=True) == Outcome.ALIVE
    assert queue(redis_db).get_job_ids() == [job_id]


@dataclass
class FakeFlight:
    job_id: str
    token: str


@dataclass
class FakeEngine:
    flights: list
    stalled: float = 0.0
    lost: set = field(default_factory=set)

    def stalled_for(self):
        return self.stalled

    def stall_deadline(self):
        return 100.0

    def mark_lost(self, ids):
        self.lost.update(ids)


class FakeWorker:
    def __init__(self, redis):
        self.connection, self.name = redis, "w1"
        self.queues = [queue(redis)]

    def heartbeat(self):
        pass


def test_heartbeats_stop_while_the_loop_is_stuck(ledger, redis_db):
    create(ledger)
    lease = started(ledger, redis_db)
    engine = FakeEngine([FakeFlight(lease.job_id, lease.token)], stalled=150.0)
    beats = Heartbeats(FakeWorker(redis_db), engine, ledger, ttl=10,
                       describe={"name": MODEL, "image_size": 32})
    lapse(redis_db, lease)
    beats.beat()
    assert not redis_db.exists(jobs.lease_key(lease.job_id, lease.token))  # stuck: no beat
    engine.stalled = 0.0
    beats.beat()
    assert redis_db.ttl(jobs.lease_key(lease.job_id, lease.token)) > 0  # progressing: beats again
    assert b"tiny" in redis_db.hkeys(jobs.models_key())


def test_heartbeats_report_jobs_the_worker_no_longer_owns(ledger, redis_db):
    create(ledger)
    lease = started(ledger, redis_db)
    lapse(redis_db, lease)
    ledger.abandon(lease)
    engine = FakeEngine([FakeFlight(lease.job_id, lease.token)])
    Heartbeats(FakeWorker(redis_db), engine, ledger, ttl=10, describe={"name": MODEL}).beat()
    assert engine.lost == {lease}


def test_heartbeats_keep_the_workers_report_in_its_rq_hash(ledger, redis_db):
    """REPAINT_COMPILE's state rides along with each beat, once RQ has registered the worker."""
    worker = FakeWorker(redis_db)
    worker.key = "rq:worker:w1"
    state = ["compiling"]
    beats = Heartbeats(worker, FakeEngine([]), ledger, ttl=10, describe={"name": MODEL},
                       report=lambda: {jobs.WORKER_COMPILE_FIELD: state[0]})
    beats.beat()
    assert not redis_db.exists(worker.key)  # never creates RQ's hash before RQ does
    redis_db.hset(worker.key, "birth", "now")
    beats.beat()
    assert redis_db.hget(worker.key, jobs.WORKER_COMPILE_FIELD) == b"compiling"
    state[0] = "compiled"
    beats.beat()
    assert redis_db.hget(worker.key, jobs.WORKER_COMPILE_FIELD) == b"compiled"


def test_health_check_prints_the_compile_state(redis_server, redis_db, monkeypatch, capsys):
    from rq import Worker

    from worker import health

    rq_worker = Worker([queue(redis_db)], connection=redis_db, name="host1.1.abc")
    rq_worker.register_birth()
    redis_db.hset(rq_worker.key, jobs.WORKER_COMPILE_FIELD, "failed: RuntimeError: no compiler")
    monkeypatch.setenv("REPAINT_REDIS_URL", redis_server.url)
    monkeypatch.setenv("REPAINT_WORKER_NAME", "host1")
    assert health.main() == 0
    assert capsys.readouterr().out.strip() == "healthy: host1.1.abc (compile: failed: RuntimeError: no compiler)"
    redis_db.hset(rq_worker.key, jobs.WORKER_COMPILE_FIELD, "eager")
    assert health.main() == 0
    assert capsys.readouterr().out.strip() == "healthy: host1.1.abc"
