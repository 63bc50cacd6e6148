"""Tenants sharing a model's workers, through the ledger on a real Redis: the fair order of the
RQ queue, per-tenant limits, memory admission, and the bookkeeping each transition keeps."""

from __future__ import annotations

import pytest
from rq import Queue

from models.sampler_settings import RePaintSettings
from worker import fairness, jobs, rqside
from worker.ledger import Admission, Lease, Ledger, Outcome, Refused, new_job_id
from worker.params import JobParams

MODEL = "tiny"
PARAMS = JobParams(seed=1, sampler=RePaintSettings(steps=20, jump_length=5, jump_n_sample=2),
                   image={"width": 2, "height": 2, "mode": "RGB"})


@pytest.fixture()
def ledger(redis_db):
    return Ledger(redis_db, result_ttl=600)


def create(ledger, tenant: str, *, params=PARAMS, image=b"img", **limits) -> str:
    job_id, _ = ledger.create(job_id=new_job_id(), model=MODEL, params=params, image=image, mask_png=b"mask",
                              timeout=100, input_ttl=300, max_attempts=3,
                              admission=Admission(tenant=tenant, **limits))
    return job_id


def queue(redis_db) -> Queue:
    return rqside.queue_for(redis_db, jobs.queue_name(MODEL))


def tenant_of(redis_db, job_id: str) -> str:
    return redis_db.hget(jobs.job_key(job_id), "tenant").decode()


def start_next(ledger, redis_db, worker="w1"):
    got = Queue.dequeue_any([queue(redis_db)], None, connection=redis_db, serializer=rqside.SERIALIZER)
    assert got is not None, "the queue is empty"
    return got[0].id, ledger.start(got[0], worker, lease_ttl=30)


def test_a_tenant_with_200_queued_jobs_does_not_delay_another_tenants_first_job(ledger, redis_db):
    for _ in range(200):
        create(ledger, "bulk")
    # Some of the bulk tenant's jobs already ran: the queue's virtual time moved on.
    for _ in range(5):
        start_next(ledger, redis_db)
    first = create(ledger, "interactive")
    assert queue(redis_db).get_job_position(first) <= 1
    # ... and its next jobs alternate with the bulk tenant's, not after all 195 of them.
    second, third = create(ledger, "interactive"), create(ledger, "interactive")
    order = queue(redis_db).get_job_ids()
    assert order.index(second) <= 3 and order.index(third) <= 5
    assert [tenant_of(redis_db, j) for j in order[:6]].count("interactive") == 3


def test_fifo_order_is_kept_within_a_tenant(ledger, redis_db):
    mine = [create(ledger, "a") for _ in range(5)]
    create(ledger, "b")
    order = queue(redis_db).get_job_ids()
    assert [j for j in order if j in mine] == mine


def test_weights_share_the_queue_in_proportion(ledger, redis_db):
    for _ in range(30):
        create(ledger, "gold", weight=3.0)
        create(ledger, "basic")
    head = [tenant_of(redis_db, j) for j in queue(redis_db).get_job_ids()[:20]]
    assert 14 <= head.count("gold") <= 16  # 3 to 1


def test_jobs_cost_their_work(ledger, redis_db):
    big = JobParams(seed=1, num_samples=4, sampler=RePaintSettings(steps=20, jump_length=5, jump_n_sample=2),
                    image={"width": 2, "height": 2, "mode": "RGB"})
    for _ in range(10):
        create(ledger, "big", params=big)
        create(ledger, "small")
    head = [tenant_of(redis_db, j) for j in queue(redis_db).get_job_ids()[:10]]
    assert head.count("small") >= 7  # one 4-sample job costs as much as four 1-sample ones


def test_the_tenant_queue_limit_counts_waiting_jobs_only(ledger, redis_db):
    a, _ = create(ledger, "t", tenant_max_queued=2), create(ledger, "t", tenant_max_queued=2)
    with pytest.raises(Refused) as refused:
        create(ledger, "t", tenant_max_queued=2)
    assert (refused.value.reason, refused.value.current, refused.value.limit) == ("tenant_full", 2, 2)
    job_id, started = start_next(ledger, redis_db)
    assert job_id == a and started.outcome == Outcome.OK
    create(ledger, "other", tenant_max_queued=2)  # another tenant is not affected
    create(ledger, "t", tenant_max_queued=2)  # a started job no longer counts
    ledger.cancel(queue(redis_db).get_job_ids()[0])
    assert redis_db.zcard(fairness.waiting_key("t")) + redis_db.zcard(fairness.waiting_key("other")) == 2


def test_a_tenant_at_its_running_limit_waits_aside_and_comes_back_when_a_job_leaves(ledger, redis_db):
    first = create(ledger, "t", tenant_max_running=1)
    other = create(ledger, "u", tenant_max_running=1)   # same tag as `first`: after it (arrival order)
    second = create(ledger, "t", tenant_max_running=1)
    assert queue(redis_db).get_job_ids() == [first, other, second]
    _, started = start_next(ledger, redis_db)
    lease = Lease(first, started.token)
    assert start_next(ledger, redis_db)[1].outcome == Outcome.OK
    # The tenant's second job is parked: out of the queue, still queued, no position.
    job_id, parked = start_next(ledger, redis_db)
    assert (job_id, parked.outcome) == (second, Outcome.PARKED)
    assert ledger.read(second)["status"] == "queued" and ledger.read(second)["position"] is None
    assert queue(redis_db).count == 0
    assert ledger.succeed(lease, [b"png"], evaluations=1) == Outcome.OK
    assert queue(redis_db).get_job_ids() == [second]  # its turn has come
    job_id, started = start_next(ledger, redis_db)
    assert (job_id, started.outcome) == (second, Outcome.OK)
    assert redis_db.hgetall(fairness.running_key(MODEL, "t")) == {second.encode(): b"1"}


def test_a_lost_worker_frees_its_tenants_running_share(ledger, redis_db):
    first = create(ledger, "t", tenant_max_running=1)
    second = create(ledger, "t", tenant_max_running=1)
    _, started = start_next(ledger, redis_db)
    assert start_next(ledger, redis_db)[1].outcome == Outcome.PARKED
    lease = Lease(first, started.token)
    redis_db.delete(jobs.lease_key(first, lease.token))
    assert ledger.abandon(lease) == Outcome.REQUEUED
    # Both wait again, the re-queued one first; nothing counts as running.
    assert queue(redis_db).get_job_ids() == [first, second]
    assert redis_db.hlen(fairness.running_key(MODEL, "t")) == 0


def test_canceling_a_parked_job_takes_it_out_of_every_list(ledger, redis_db):
    create(ledger, "t", tenant_max_running=1)
    second = create(ledger, "t", tenant_max_running=1)
    start_next(ledger, redis_db)
    assert start_next(ledger, redis_db)[1].outcome == Outcome.PARKED
    assert ledger.cancel(second) == Outcome.CANCELED
    assert redis_db.llen(fairness.parked_key(MODEL, "t")) == 0
    assert redis_db.zscore(fairness.waiting_key("t"), second) is None


def test_memory_admission_keeps_room_for_the_results_of_accepted_jobs(ledger, redis_db):
    used = int(redis_db.info("memory")["used_memory"])
    redis_db.config_set("maxmemory", used + 3_000_000)
    try:
        accepted = create(ledger, "t", reserve_bytes=1_500_000)
        with pytest.raises(Refused) as refused:
            create(ledger, "t", reserve_bytes=1_500_000)
        assert refused.value.reason == "memory" and refused.value.reserved == 1_500_000
        _, started = start_next(ledger, redis_db)
        # The accepted job can always store its result; its reservation is then released.
        assert ledger.succeed(Lease(accepted, started.token), [b"x" * 900_000], evaluations=1) == Outcome.OK
        assert int(redis_db.get(fairness.reserved_key())) == 0
        redis_db.delete(jobs.result_key(accepted, 0))  # results expire; room comes back
        create(ledger, "t", reserve_bytes=1_500_000)
    finally:
        redis_db.config_set("maxmemory", 0)


def test_transitions_keep_no_bookkeeping_of_finished_jobs(ledger, redis_db):
    for tenant in ("a", "b"):
        for _ in range(3):
            create(ledger, tenant, tenant_max_running=2, reserve_bytes=10)
    leases = []
    for _ in range(6):
        job_id, started = start_next(ledger, redis_db)
        if started.outcome == Outcome.OK:
            leases.append(Lease(job_id, started.token))
    for lease in leases:
        ledger.succeed(lease, [b"png"], evaluations=1)
    while queue(redis_db).count:
        job_id, started = start_next(ledger, redis_db)
        if started.outcome == Outcome.OK:
            ledger.succeed(Lease(job_id, started.token), [b"png"], evaluations=1)
    assert redis_db.zcard(fairness.order_key(MODEL)) == 0
    for tenant in ("a", "b"):
        assert redis_db.zcard(fairness.waiting_key(tenant)) == 0
        assert redis_db.hlen(fairness.running_key(MODEL, tenant)) == 0
        assert redis_db.llen(fairness.parked_key(MODEL, tenant)) == 0
    assert int(redis_db.get(fairness.reserved_key())) == 0
    assert redis_db.zcard(fairness.reserved_jobs_key()) == 0 and redis_db.hlen(fairness.reserved_bytes_key()) == 0


def test_an_unparked_job_that_ends_unstarted_passes_its_turn_on(ledger, redis_db):
    """A runs; B and C wait aside. A ends and B comes back, but B is canceled before a worker
    takes it: C must come back too, not wait for a running job that is not there."""
    first = create(ledger, "t", tenant_max_running=1)
    second = create(ledger, "t", tenant_max_running=1)
    third = create(ledger, "t", tenant_max_running=1)
    _, started = start_next(ledger, redis_db)
    assert start_next(ledger, redis_db)[1].outcome == Outcome.PARKED
    assert start_next(ledger, redis_db)[1].outcome == Outcome.PARKED
    assert ledger.succeed(Lease(first, started.token), [b"png"], evaluations=1) == Outcome.OK
    assert queue(redis_db).get_job_ids() == [second]
    assert ledger.cancel(second) == Outcome.CANCELED
    assert queue(redis_db).get_job_ids() == [third]
    job_id, started = start_next(ledger, redis_db)
    assert (job_id, started.outcome) == (third, Outcome.OK)


def test_a_job_parked_again_keeps_its_turn_among_its_tenants_parked_jobs(ledger, redis_db):
    first = create(ledger, "t", tenant_max_running=1)
    second = create(ledger, "t", tenant_max_running=1)
    third = create(ledger, "t", tenant_max_running=1)
    start_next(ledger, redis_db)
    start_next(ledger, redis_db), start_next(ledger, redis_db)  # both parked, second first
    redis_db.rpush(queue(redis_db).key, second)  # a stray redelivery of the second, parked again
    redis_db.lrem(fairness.parked_key(MODEL, "t"), 0, second)
    assert start_next(ledger, redis_db)[1].outcome == Outcome.PARKED
    assert [j.decode() for j in redis_db.lrange(fairness.parked_key(MODEL, "t"), 0, -1)] == [second, third]
    assert ledger.read(first)["status"] == "running"


def test_a_reservation_never_outlives_its_job(ledger, redis_db):
    """A model no worker ever came for: its jobs' records expire unfinished, and their reserved
    bytes are given back, or admission would refuse every job for good."""
    job_id = create(ledger, "t", reserve_bytes=5_000)
    assert int(redis_db.get(fairness.reserved_key())) == 5_000
    # As if its record's time had passed: the reservation is due.
    redis_db.zadd(fairness.reserved_jobs_key(), {job_id: 1})
    redis_db.delete(jobs.job_key(job_id))
    create(ledger, "t", reserve_bytes=7)
    assert int(redis_db.get(fairness.reserved_key())) == 7
    assert redis_db.hget(fairness.reserved_bytes_key(), job_id) is None


def test_a_reservation_is_given_back_once(ledger, redis_db):
    job_id = create(ledger, "t", reserve_bytes=5_000)
    create(ledger, "t", reserve_bytes=100)
    assert ledger.cancel(job_id) == Outcome.CANCELED
    assert ledger.cancel(job_id) == Outcome.FINAL
    assert int(redis_db.get(fairness.reserved_key())) == 100
