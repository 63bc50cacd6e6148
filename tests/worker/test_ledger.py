"""The job ledger against a real Redis: one test per transition, and the races between them."""

from __future__ import annotations

import json

import pytest
import redis as redis_lib
from rq import Queue
from rq.registry import CanceledJobRegistry, FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry

from tests.procs import job_keys_without_ttl
from models.sampler_settings import RePaintSettings
from worker import jobs, rqside
from worker.ledger import Admission, Refused, IdempotencyConflict, Lease, Ledger, Outcome, new_job_id
from worker.params import JobParams

MODEL = "tiny"
PARAMS = JobParams(seed=1, sampler=RePaintSettings(steps=20, jump_length=5, jump_n_sample=2), image={"width": 2, "height": 2, "mode": "RGB"})


@pytest.fixture()
def ledger(redis_db):
    return Ledger(redis_db, result_ttl=600)


def queue(redis_db) -> Queue:
    return rqside.queue_for(redis_db, jobs.queue_name(MODEL))


def create(ledger, *, max_attempts=3, idempotency=None, job_id=None, admission=Admission(),
           params=PARAMS) -> tuple[str, bool]:
    return ledger.create(job_id=job_id or new_job_id(), model=MODEL, params=params, image=b"img",
                         mask_png=b"mask", timeout=100, input_ttl=300, max_attempts=max_attempts,
                         idempotency=idempotency, admission=admission)


def dequeue(redis_db):
    got = Queue.dequeue_any([queue(redis_db)], None, connection=redis_db, serializer=rqside.SERIALIZER)
    assert got is not None
    return got[0]


def started(ledger, redis_db, worker="w1") -> Lease:
    """Dequeue the next job as a worker does and start it; its lease."""
    rq_job = dequeue(redis_db)
    result = ledger.start(rq_job, worker, lease_ttl=30)
    assert result.outcome == Outcome.OK
    return Lease(rq_job.id, result.token)


def lapse(redis_db, lease: Lease) -> Lease:
    """The lease expired: its worker stopped beating."""
    redis_db.delete(jobs.lease_key(lease.job_id, lease.token))
    return lease


def record(redis_db, job_id) -> dict:
    return jobs.decode_record(redis_db.hgetall(jobs.job_key(job_id)))


def test_create_stores_record_inputs_and_rq_job_together(ledger, redis_db):
    job_id, replayed = create(ledger)
    assert not replayed
    r = record(redis_db, job_id)
    assert r["status"] == "queued" and r["attempts"] == 0 and r["max_attempts"] == 3
    assert r["params"]["evaluations_per_sample"] == PARAMS.evaluations
    assert queue(redis_db).get_job_ids() == [job_id]
    assert redis_db.get(jobs.input_key(job_id, "image")) == b"img"
    assert job_keys_without_ttl(redis_db) == []


def test_create_is_all_or_nothing_when_redis_fails_before_exec(ledger, redis_db, monkeypatch):
    def broken(self, *args, **kwargs):
        raise redis_lib.exceptions.ConnectionError("injected: connection lost before the script ran")

    monkeypatch.setattr(redis_lib.commands.core.Script, "__call__", broken)
    with pytest.raises(redis_lib.exceptions.ConnectionError):
        create(ledger, idempotency=("k1", "fp", 60))
    monkeypatch.undo()
    # No idempotency key that would replay a job that never ran, no record, nothing queued.
    assert redis_db.keys("repaint:*") == [] and queue(redis_db).count == 0


def test_a_refused_create_writes_nothing(ledger, redis_db):
    first, _ = create(ledger, admission=Admission(tenant="a", max_queue=1))
    before = sorted(redis_db.keys("*"))
    with pytest.raises(Refused) as refused:
        create(ledger, idempotency=("k2", "fp", 60), admission=Admission(tenant="b", max_queue=1))
    assert (refused.value.reason, refused.value.current, refused.value.limit) == ("queue_full", 1, 1)
    assert sorted(redis_db.keys("*")) == before and queue(redis_db).get_job_ids() == [first]


def test_idempotent_create_replays_and_refuses_other_data(ledger, redis_db):
    first, _ = create(ledger, idempotency=("key", "fp1", 60))
    again, replayed = create(ledger, idempotency=("key", "fp1", 60))
    assert (again, replayed) == (first, True)
    with pytest.raises(IdempotencyConflict):
        create(ledger, idempotency=("key", "fp2", 60))
    assert queue(redis_db).count == 1


def test_start_makes_one_owned_execution(ledger, redis_db):
    job_id, _ = create(ledger)
    lease = started(ledger, redis_db)
    r = record(redis_db, job_id)
    assert r["status"] == "running" and r["owner"] == lease.token and r["attempts"] == 1
    assert redis_db.exists(jobs.lease_key(job_id, lease.token))
    q = queue(redis_db)
    assert StartedJobRegistry(queue=q).get_job_ids() == [job_id]
    assert q.count == 0 and redis_db.llen(q.intermediate_queue_key) == 0
    assert job_keys_without_ttl(redis_db) == []


def test_succeed_finishes_everything_at_once(ledger, redis_db):
    job_id, _ = create(ledger)
    lease = started(ledger, redis_db)
    assert ledger.succeed(lease, [b"png0", b"png1"], evaluations=60, seconds_per_pass=0.02) == Outcome.OK
    r = record(redis_db, job_id)
    assert r["status"] == "succeeded" and r["result"] == {"count": 2} and "owner" not in r
    assert redis_db.get(jobs.result_key(job_id, 1)) == b"png1"
    assert not redis_db.exists(jobs.input_key(job_id, "image"), jobs.lease_key(job_id, lease.token))
    assert redis_db.scard(jobs.running_key()) == 0
    q = queue(redis_db)
    assert FinishedJobRegistry(queue=q).get_job_ids() == [job_id] and StartedJobRegistry(queue=q).get_job_ids() == []
    assert redis_db.hget(jobs.metrics_key(MODEL), "jobs_succeeded_total") == b"1"
    assert float(redis_db.get(jobs.speed_key(MODEL))) == 0.02
    assert 0 < redis_db.ttl(jobs.job_key(job_id)) <= 600
    assert job_keys_without_ttl(redis_db) == []


def test_two_executions_finishing_one_job_record_it_once(ledger, redis_db):
    """A job reaped from a stuck worker and run again: the old owner's late finish is refused."""
    job_id, _ = create(ledger)
    old = started(ledger, redis_db, "stuck")
    assert ledger.abandon(lapse(redis_db, old)) == Outcome.REQUEUED
    new = started(ledger, redis_db, "rescuer")
    assert ledger.succeed(new, [b"new"], evaluations=30) == Outcome.OK
    assert ledger.succeed(old, [b"old"], evaluations=30) == Outcome.FINAL
    assert ledger.progress([(old, {"step": 1})]) == [False]
    assert redis_db.get(jobs.result_key(job_id, 0)) == b"new"
    assert redis_db.hget(jobs.metrics_key(MODEL), "jobs_succeeded_total") == b"1"


def test_ownership_lost_after_a_reap_is_refused_while_the_job_runs_elsewhere(ledger, redis_db):
    job_id, _ = create(ledger)
    old = started(ledger, redis_db, "stuck")
    ledger.abandon(lapse(redis_db, old))
    new = started(ledger, redis_db, "rescuer")
    for refused in (ledger.succeed(old, [b"x"], evaluations=1), ledger.requeue(old, "shutdown"),
                    ledger.fail(old, {"type": "X", "message": "m"}, retryable=False), ledger.cancel_running(old)):
        assert refused == Outcome.NOT_OWNER
    assert ledger.heartbeat([old, new], ttl=30) == [False, True]
    assert record(redis_db, job_id)["owner"] == new.token and record(redis_db, job_id)["status"] == "running"


def test_a_second_delivery_of_a_finished_job_is_dropped(ledger, redis_db):
    job_id, _ = create(ledger)
    lease = started(ledger, redis_db)
    ledger.succeed(lease, [b"png"], evaluations=30)
    # RQ delivers it again (a retried admission, a re-push after an outage).
    queue(redis_db).push_job_id(job_id)
    result = ledger.start(dequeue(redis_db), "w2", lease_ttl=30)
    assert result.outcome == Outcome.FINAL
    r = record(redis_db, job_id)
    assert r["status"] == "succeeded" and r["attempts"] == 1
    assert redis_db.llen(queue(redis_db).intermediate_queue_key) == 0


def test_transitions_from_a_final_status_are_no_ops(ledger, redis_db):
    job_id, _ = create(ledger)
    lease = started(ledger, redis_db)
    ledger.fail(lease, {"type": "invalid_input", "message": "bad"}, retryable=False)
    before = redis_db.hgetall(jobs.job_key(job_id))
    assert ledger.cancel(job_id) == Outcome.FINAL
    assert ledger.succeed(lease, [b"png"], evaluations=1) == Outcome.FINAL
    assert ledger.abandon(lapse(redis_db, lease)) == Outcome.FINAL
    assert ledger.requeue(lease, "again") == Outcome.FINAL
    # The same transition run again (its first reply was lost) answers what it did.
    assert ledger.fail(lease, {"type": "invalid_input", "message": "bad"}, retryable=False) == Outcome.FAILED
    assert redis_db.hgetall(jobs.job_key(job_id)) == before
    assert redis_db.hget(jobs.metrics_key(MODEL), "jobs_failed_total") == b"1"


def test_deterministic_failure_is_final_at_once(ledger, redis_db):
    job_id, _ = create(ledger, max_attempts=5)
    lease = started(ledger, redis_db)
    assert ledger.fail(lease, {"type": "invalid_input", "message": "WebP limit"}, retryable=False) == Outcome.FAILED
    r = record(redis_db, job_id)
    assert r["status"] == "failed" and r["attempts"] == 1 and r["error"]["type"] == "invalid_input"
    assert FailedJobRegistry(queue=queue(redis_db)).get_job_ids() == [job_id] and queue(redis_db).count == 0


def test_infrastructure_failures_use_attempts_then_fail(ledger, redis_db):
    job_id, _ = create(ledger, max_attempts=2)
    error = {"type": "RuntimeError", "message": "CUDA error"}
    assert ledger.fail(started(ledger, redis_db), error, retryable=True) == Outcome.REQUEUED
    r = record(redis_db, job_id)
    assert r["status"] == "queued" and r["failures"] == 1 and r["last_error"] == error
    assert ledger.fail(started(ledger, redis_db), error, retryable=True) == Outcome.FAILED
    assert record(redis_db, job_id)["status"] == "failed"


def test_requeue_uses_no_attempt_and_goes_to_the_front(ledger, redis_db):
    first, _ = create(ledger, max_attempts=1)
    lease = started(ledger, redis_db)
    second, _ = create(ledger)
    for _ in range(3):  # put back more often than max_attempts: never fails
        assert ledger.requeue(lease, "the worker shut down") == Outcome.REQUEUED
        assert queue(redis_db).get_job_ids() == [first, second]
        lease = started(ledger, redis_db)
    r = record(redis_db, first)
    assert r["status"] == "running" and r["failures"] == 0 and r["attempts"] == 4


def test_requeue_interrupted_before_exec_changes_nothing(ledger, redis_db, monkeypatch):
    """The old engine removed the execution and re-enqueued in two round trips; a crash between
    them left a job in no queue and no registry. Now both are one EXEC."""
    job_id, _ = create(ledger)
    lease = started(ledger, redis_db)
    snapshot = {k: redis_db.dump(k) for k in redis_db.keys("*")}

    def crash(self, *args, **kwargs):
        raise redis_lib.exceptions.ConnectionError("injected: worker lost between the steps")

    monkeypatch.setattr(redis_lib.client.Pipeline, "execute", crash)
    with pytest.raises(redis_lib.exceptions.ConnectionError):
        ledger.requeue(lease, "shutdown")
    monkeypatch.undo()
    assert {k: redis_db.dump(k) for k in redis_db.keys("*")} == snapshot
    assert StartedJobRegistry(queue=queue(redis_db)).get_job_ids() == [job_id]
    assert ledger.requeue(lease, "shutdown") == Outcome.REQUEUED
    assert queue(redis_db).get_job_ids() == [job_id]


def test_cancel_queued_job_cleans_rq_with_ttls(ledger, redis_db):
    job_id, _ = create(ledger)
    assert ledger.cancel(job_id) == Outcome.CANCELED
    assert record(redis_db, job_id)["status"] == "canceled"
    assert queue(redis_db).count == 0 and CanceledJobRegistry(queue=queue(redis_db)).get_job_ids() == [job_id]
    assert job_keys_without_ttl(redis_db) == []
    assert redis_db.hget(f"rq:job:{job_id}", "status") == b"canceled"


def test_cancel_against_success_the_first_to_commit_wins(ledger, redis_db):
    """Whichever commits first wins; the other is a no-op."""
    job_id, _ = create(ledger)
    lease = started(ledger, redis_db)
    assert ledger.cancel(job_id) == Outcome.OK  # a request: the owner decides at its next step
    assert ledger.succeed(lease, [b"png"], evaluations=1) == Outcome.OK
    assert ledger.cancel_running(lease) == Outcome.FINAL
    assert record(redis_db, job_id)["status"] == "succeeded"

    other, _ = create(ledger)
    lease = started(ledger, redis_db)
    ledger.cancel(other)
    assert ledger.cancel_running(lease) == Outcome.OK
    assert ledger.succeed(lease, [b"png"], evaluations=1) == Outcome.FINAL
    assert record(redis_db, other)["status"] == "canceled"
    assert redis_db.get(jobs.result_key(other, 0)) is None


def test_cancel_of_an_expired_record_creates_nothing(ledger, redis_db):
    job_id, _ = create(ledger)
    redis_db.delete(jobs.job_key(job_id))  # the record expired
    assert ledger.cancel(job_id) == Outcome.MISSING
    assert not redis_db.exists(jobs.job_key(job_id))


def test_a_job_canceled_while_queued_never_starts(ledger, redis_db):
    job_id, _ = create(ledger)
    rq_job = dequeue(redis_db)  # a worker dequeued it just before the cancel
    ledger.cancel(job_id)
    assert ledger.start(rq_job, "w1", lease_ttl=30).outcome == Outcome.FINAL
    assert record(redis_db, job_id)["status"] == "canceled" and redis_db.scard(jobs.running_key()) == 0


def test_a_job_whose_upload_expired_fails_at_start(ledger, redis_db):
    job_id, _ = create(ledger)
    redis_db.delete(jobs.input_key(job_id, "image"))
    assert ledger.start(dequeue(redis_db), "w1", lease_ttl=30).outcome == Outcome.FAILED
    r = record(redis_db, job_id)
    assert r["status"] == "failed" and "expired" in r["error"]["message"]
    assert job_keys_without_ttl(redis_db) == []


def test_abandon_requeues_then_fails_after_the_last_attempt(ledger, redis_db):
    job_id, _ = create(ledger, max_attempts=2)
    lease = started(ledger, redis_db)
    assert ledger.abandon(lease) == Outcome.ALIVE  # renewed meanwhile: the owner lives
    assert ledger.abandon(lapse(redis_db, lease)) == Outcome.REQUEUED
    r = record(redis_db, job_id)
    assert r["status"] == "queued" and r["last_error"]["type"] == "worker_lost"
    assert ledger.abandon(lapse(redis_db, started(ledger, redis_db))) == Outcome.FAILED
    r = record(redis_db, job_id)
    assert r["status"] == "failed" and r["error"]["type"] == "worker_lost" and "2 attempt(s)" in r["error"]["message"]
    assert redis_db.scard(jobs.running_key()) == 0


def test_abandon_repairs_what_rqs_own_cleanup_did(ledger, redis_db):
    """RQ's StartedJobRegistry cleanup (rq info, dashboards, other workers) moves an expired
    execution to the failed registry without telling our record; abandon puts it right."""
    job_id, _ = create(ledger)
    lease = started(ledger, redis_db)
    q = queue(redis_db)
    StartedJobRegistry(queue=q).cleanup(timestamp=10**10)  # every execution counts as expired
    assert FailedJobRegistry(queue=q).get_job_ids() == [job_id]
    assert ledger.abandon(lapse(redis_db, lease)) == Outcome.REQUEUED
    assert FailedJobRegistry(queue=q).get_job_ids() == [] and q.get_job_ids() == [job_id]
    assert redis_db.hget(f"rq:job:{job_id}", "status") == b"queued"
    assert started(ledger, redis_db).job_id == job_id


def test_expired_leases_are_found(ledger, redis_db):
    create(ledger)
    lease = started(ledger, redis_db)
    assert ledger.expired_leases() == []
    redis_db.delete(jobs.lease_key(lease.job_id, lease.token))
    assert ledger.expired_leases() == [lease]
    assert ledger.heartbeat([lease], ttl=30) == [True]  # the live owner renews it
    assert ledger.expired_leases() == []


def test_recover_undelivered_puts_a_waiting_job_back(ledger, redis_db):
    job_id, _ = create(ledger)
    dequeue(redis_db)  # taken by a worker that died before `start`
    assert queue(redis_db).count == 0
    assert ledger.recover_undelivered(jobs.queue_name(MODEL), job_id) == Outcome.REQUEUED
    assert queue(redis_db).get_job_ids() == [job_id] and record(redis_db, job_id)["status"] == "queued"


def test_transitions_run_again_after_a_lost_reply_answer_what_they_did(ledger, redis_db, monkeypatch):
    """redis-py retries a transaction whose connection dropped while watching, whether or not
    EXEC was applied: the re-run must recognise its own work instead of refusing it."""
    job_id, _ = create(ledger)
    rq_job = dequeue(redis_db)
    original = redis_lib.client.Pipeline.execute
    calls = {"n": 0}

    def applied_then_lost(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:
            raise redis_lib.exceptions.WatchError("injected: connection lost after EXEC was applied")
        return result

    monkeypatch.setattr(redis_lib.client.Pipeline, "execute", applied_then_lost)
    result = ledger.start(rq_job, "w1", lease_ttl=30)
    assert result.outcome == Outcome.OK and record(redis_db, job_id)["owner"] == result.token
    calls["n"] = 0
    lease = Lease(job_id, result.token)
    assert ledger.succeed(lease, [b"png"], evaluations=1) == Outcome.OK
    monkeypatch.undo()
    assert record(redis_db, job_id)["status"] == "succeeded"
    assert redis_db.hget(jobs.metrics_key(MODEL), "jobs_succeeded_total") == b"1"
    other, _ = create(ledger)
    assert ledger.create(job_id=other, model=MODEL, params=PARAMS, image=b"i", mask_png=b"m", timeout=1,
                         input_ttl=60, max_attempts=1) == (other, False)
    assert queue(redis_db).get_job_ids() == [other]  # not enqueued twice


def test_progress_is_written_only_by_the_owner(ledger, redis_db):
    job_id, _ = create(ledger)
    lease = started(ledger, redis_db)
    pubsub = redis_db.pubsub()
    pubsub.subscribe(jobs.events_channel(job_id))
    pubsub.get_message(timeout=1)
    assert ledger.progress([(lease, {"step": 3, "total": 30})], {job_id: (b"png", 3)}) == [True]
    assert record(redis_db, job_id)["progress"] == {"step": 3, "total": 30}
    events = [json.loads(pubsub.get_message(timeout=1)["data"])["event"] for _ in range(2)]
    assert events == ["progress", "preview"]
    assert ledger.progress([(Lease(job_id, "someone-else"), {"step": 4})], {job_id: (b"stale", 4)}) == [False]
    assert record(redis_db, job_id)["progress"]["step"] == 3
    assert redis_db.get(jobs.preview_key(job_id)) == b"png" and 0 < redis_db.ttl(jobs.preview_key(job_id)) <= 600


def test_housekeeping_prunes_the_canceled_registry_and_models_of_workers_gone(ledger, redis_db):
    """RQ never cleans its canceled registry; our workers do, as entries expire with their jobs."""
    import time

    from worker import catalog

    job_id, _ = create(ledger)
    ledger.cancel(job_id)
    registry = CanceledJobRegistry(queue=queue(redis_db))
    assert rqside.prune_canceled(redis_db, jobs.queue_name(MODEL)) == 0  # not expired yet
    redis_db.zadd(registry.key, {job_id: time.time() - 1})  # as if result_ttl had passed
    assert rqside.prune_canceled(redis_db, jobs.queue_name(MODEL)) == 1 and registry.get_job_ids() == []

    now = time.time()
    redis_db.hset(jobs.models_key(), mapping={
        "tiny": json.dumps({"name": "tiny", "seen_at": now}),
        "faces32": json.dumps({"name": "faces32", "seen_at": now - catalog.MODEL_ENTRY_STALE_SECONDS - 1})})
    assert set(catalog.live_models(redis_db)) == {"tiny"}
    assert catalog.prune_stale_models(redis_db) == ["faces32"]
    assert redis_db.hkeys(jobs.models_key()) == [b"tiny"]


def test_a_job_whose_cancel_was_requested_ends_canceled_when_its_worker_dies(ledger, redis_db):
    job_id, _ = create(ledger)
    lease = started(ledger, redis_db)
    ledger.cancel(job_id)
    assert ledger.abandon(lapse(redis_db, lease)) == Outcome.CANCELED
    assert record(redis_db, job_id)["status"] == "canceled" and queue(redis_db).count == 0


def test_only_the_owner_frees_the_inputs_early(ledger, redis_db):
    """A worker in a full Redis frees its job's upload before storing results, but a reaped one
    must not take the upload from the execution that now runs the job."""
    create(ledger)
    old = started(ledger, redis_db)
    lapse(redis_db, old)
    assert ledger.abandon(old) == Outcome.REQUEUED
    new = started(ledger, redis_db, worker="w2")
    assert ledger.free_inputs(old) is False
    assert redis_db.exists(jobs.input_key(old.job_id, "image"), jobs.input_key(old.job_id, "mask")) == 2
    assert ledger.free_inputs(new) is True
    assert redis_db.exists(jobs.input_key(old.job_id, "image"), jobs.input_key(old.job_id, "mask")) == 0
