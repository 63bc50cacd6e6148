"""`REPAINT_ACK=replica` against a real primary and replica (loopback ports): a write counts once
a replica has it (WAIT); without one in time it is NotAcknowledged, for a new job (the API's
503) and for a final status (readers confirm it before they tell it)."""

from __future__ import annotations

import signal

import pytest
from redis import Redis
from rq import Queue

from models.sampler_settings import RePaintSettings
from tests.procs import RedisServer, wait_until
from worker import acks, jobs, rqside
from worker.acks import Ack, AckMode, AckUnsupported, NotAcknowledged
from worker.ledger import ACK_PENDING, Lease, Ledger, Outcome, new_job_id
from worker.params import JobParams

REPLICA = Ack(mode=AckMode.REPLICA, timeout=0.5)
PARAMS = JobParams(seed=1, sampler=RePaintSettings(steps=5, jump_length=1, jump_n_sample=1),
                   image={"width": 2, "height": 2, "mode": "RGB"})


@pytest.fixture()
def pair():
    """A primary and a replica of it, both as compose ships them (append-only, everysec)."""
    primary, replica = RedisServer().start(), RedisServer().start()
    primary.client().config_set("repl-diskless-sync-delay", 0)  # the first sync at once, not after 5 s
    replica.client().replicaof("127.0.0.1", primary.port)
    wait_until(lambda: primary.client().info("replication")["connected_slaves"] == 1
               and replica.client().info("replication")["master_link_status"] == "up", 20, "the replica")
    # Up is not yet acknowledging: right after its first sync a replica may still be loading or
    # rewriting its AOF, and a WAIT then times out. Ready once one WAIT, given time, is answered.
    with primary.client() as redis:
        redis.set("repaint:test:ready", 1)
        assert redis.execute_command("WAIT", 1, 10_000) == 1, "the replica never acknowledged"
    yield primary, replica
    for server in (replica, primary):
        if server.proc is not None and server.proc.poll() is None:
            server.proc.send_signal(signal.SIGCONT)
        server.stop()


def client_of(server) -> Redis:
    return Redis(port=server.port, socket_timeout=10)


def create(ledger) -> str:
    job_id, _ = ledger.create(job_id=new_job_id(), model="tiny", params=PARAMS, image=b"img", mask_png=b"mask",
                              timeout=100, input_ttl=300, max_attempts=3)
    return job_id


def test_a_write_is_confirmed_once_a_replica_has_it(pair):
    primary, replica = pair
    redis = client_of(primary)
    with acks.pinned(redis, REPLICA) as client:
        client.set("k", "v")
        acks.confirm(client, REPLICA)
    assert replica.client().get("k") == b"v"
    assert "1 replica(s) connected" in acks.check_server(redis, REPLICA)


def test_without_a_replica_in_time_a_write_is_not_acknowledged(pair):
    primary, replica = pair
    redis = client_of(primary)
    replica.proc.send_signal(signal.SIGSTOP)  # alive but silent: WAIT gets no answer
    with acks.pinned(redis, REPLICA) as client:
        client.set("k", "v")
        with pytest.raises(NotAcknowledged, match="replica"):
            acks.confirm(client, REPLICA)
    with acks.pinned(redis, Ack(mode=AckMode.REPLICA, timeout=0.5, replicas=2)) as client:
        with pytest.raises(NotAcknowledged, match="of 2 replicas"):
            acks.confirm(client, Ack(mode=AckMode.REPLICA, timeout=0.5, replicas=2))


def test_replica_mode_needs_the_primary(pair):
    primary, replica = pair
    with pytest.raises(AckUnsupported, match="needs the primary"):
        acks.check_server(client_of(replica), REPLICA)
    replica.client().replicaof("no", "one")
    wait_until(lambda: client_of(primary).info("replication")["connected_slaves"] == 0, 10, "the replica to leave")
    assert "WARNING" in acks.check_server(client_of(primary), REPLICA)  # starts, and says why jobs get 503


def resume(replica, primary) -> None:
    """SIGCONT, then wait until the replica has caught up with the primary: a stopped replica
    takes a moment to drain what it missed, and a confirmation asked for meanwhile (0.5 s here)
    would time out on a busy machine, which is not what these tests are about."""
    replica.proc.send_signal(signal.SIGCONT)
    redis = client_of(primary)

    def caught_up():
        info = redis.info("replication")
        return info.get("slave0", {}).get("offset", -1) >= info["master_repl_offset"]

    wait_until(caught_up, 10, "the replica to catch up", interval=0.05)


def test_a_job_is_accepted_only_once_a_replica_has_it(pair):
    primary, replica = pair
    ledger = Ledger(client_of(primary), result_ttl=600, ack=REPLICA)
    replica.proc.send_signal(signal.SIGSTOP)
    idempotency = ("t:key-1", "fingerprint", 600)
    with pytest.raises(NotAcknowledged):
        ledger.create(job_id=new_job_id(), model="tiny", params=PARAMS, image=b"img", mask_png=b"mask",
                      timeout=100, input_ttl=300, max_attempts=3, idempotency=idempotency)
    with pytest.raises(NotAcknowledged):  # the client's retry with the same key: still not confirmed
        ledger.replay(*idempotency[:2])
    resume(replica, primary)
    job_id = ledger.replay(*idempotency[:2])  # now it is: the retry gets the one job, confirmed
    wait_until(lambda: replica.client().exists(jobs.job_key(job_id)) == 1, 5, "the job on the replica")


def test_a_final_status_is_told_only_once_a_replica_has_it(pair):
    primary, replica = pair
    redis = client_of(primary)
    ledger = Ledger(redis, result_ttl=600, ack=REPLICA)
    job_id = create(ledger)
    queue = rqside.queue_for(redis, jobs.queue_name("tiny"))
    rq_job, _ = Queue.dequeue_any([queue], None, connection=redis, serializer=rqside.SERIALIZER)
    started = ledger.start(rq_job, "w1", lease_ttl=30)
    lease = Lease(job_id, started.token)
    replica.proc.send_signal(signal.SIGSTOP)
    with pytest.raises(NotAcknowledged):
        ledger.succeed(lease, [b"png"], evaluations=1)
    # Applied on the primary, marked pending: a reader does not tell it until it is confirmed.
    assert redis.hget(jobs.job_key(job_id), "status") == b"succeeded"
    assert redis.hget(jobs.job_key(job_id), ACK_PENDING) == b"1"
    with pytest.raises(NotAcknowledged):
        ledger.read(job_id)
    resume(replica, primary)
    # The worker's retry confirms what its first run wrote, and clears the mark.
    assert ledger.succeed(lease, [b"png"], evaluations=1) == Outcome.OK
    assert redis.hget(jobs.job_key(job_id), ACK_PENDING) is None
    assert ledger.read(job_id)["status"] == "succeeded"
    wait_until(lambda: replica.client().hget(jobs.job_key(job_id), "status") == b"succeeded", 5, "the replica")


def test_a_reader_confirms_a_final_status_its_worker_could_not(pair):
    primary, replica = pair
    redis = client_of(primary)
    ledger = Ledger(redis, result_ttl=600, ack=REPLICA)
    job_id = create(ledger)
    replica.proc.send_signal(signal.SIGSTOP)
    with pytest.raises(NotAcknowledged):
        ledger.cancel(job_id)  # the API's cancel of a queued job: a final status too
    resume(replica, primary)
    record = Ledger(redis, result_ttl=600, ack=REPLICA).read(job_id)  # another API process
    assert record["status"] == "canceled" and ACK_PENDING not in record
    assert redis.hget(jobs.job_key(job_id), ACK_PENDING) is None
