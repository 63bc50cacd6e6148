"""The engine's admission between passes, against a real Redis: a batch never grows past the limit."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

from rq.job import Job

from tests.worker.test_ledger import MODEL, PARAMS, create, queue, record
from tests.worker.test_scheduler import Clock, FakeRuntime, params
from worker import rqside
from worker.engine import BatchEngine
from worker.ledger import Ledger
from worker.scheduler import BatchScheduler


def engine_with(redis_db, scheduler: BatchScheduler, taken: list[str]) -> BatchEngine:
    """The engine's admission alone: a real queue and ledger, the scheduler given, and `take`
    recording what it would start."""
    engine = BatchEngine.__new__(BatchEngine)
    engine.redis = redis_db
    engine.ledger = Ledger(redis_db, result_ttl=600)
    engine.scheduler = scheduler
    engine.worker = SimpleNamespace(queues=[queue(redis_db)], _stop_requested=False, job_class=Job,
                                    serializer=rqside.SERIALIZER)
    engine._an_idle_peer_exists = lambda: False
    engine._until_redis = lambda action: action()
    engine.take = lambda rq_job: taken.append(rq_job.id)
    return engine


def test_a_larger_job_dequeued_after_the_size_check_goes_back_untouched(redis_db):
    """The head of the queue was a 1-sample job when sized; another worker took it before this
    one dequeued, so the dequeue returned the 4-sample job behind it, which does not fit: it
    goes back to the front of the queue, still queued, and nothing joins the batch."""
    ledger = Ledger(redis_db, result_ttl=600)
    scheduler = BatchScheduler(FakeRuntime(Clock()), max_batch=4)
    scheduler.admit("running", "t", params(num_samples=2), "img")  # 2 of 4 slots taken
    big, _ = create(ledger, params=dataclasses.replace(PARAMS, num_samples=4))
    taken: list[str] = []
    engine = engine_with(redis_db, scheduler, taken)
    engine._next_job_size = lambda: 1  # what the head was a moment ago
    engine.admit_waiting()
    assert taken == [] and len(scheduler.batch) == 2
    assert queue(redis_db).get_job_ids() == [big] and record(redis_db, big)["status"] == "queued"
    assert ledger.undelivered(queue(redis_db).name) == []


def test_a_job_that_fits_is_taken(redis_db):
    ledger = Ledger(redis_db, result_ttl=600)
    scheduler = BatchScheduler(FakeRuntime(Clock()), max_batch=4)
    scheduler.admit("running", "t", params(num_samples=2), "img")
    small, _ = create(ledger, params=dataclasses.replace(PARAMS, num_samples=2))
    taken: list[str] = []
    engine_with(redis_db, scheduler, taken).admit_waiting()
    assert taken == [small]
