"""The job ledger: the only code that changes a job's status.

Each transition is one atomic Redis transaction (WATCH on the job's record, then MULTI/EXEC)
that first checks its preconditions and then changes everything that belongs to it together:
the record, the uploads and results, RQ's queue and registries (`worker.rqside`), the lease,
the TTLs, the metrics and the event. A crash or a lost connection before EXEC changes nothing;
a concurrent change to the record makes the transaction start again from a fresh read.

The rules the preconditions enforce:
- a final status (succeeded, failed, canceled) is never left;
- only the execution that owns a running job (its `owner` token, given at `start`) may report
  progress on it, finish it or put it back; after a reap the old owner is refused (NOT_OWNER);
- deterministic failures (anything about the job's own data or parameters) are final at once;
  only a lost worker or an infrastructure error uses one of the job's `max_attempts`.

A transition answers with an `Outcome` instead of raising, as BullMQ's scripts return codes.
Each can be run again after a lost reply (redis-py turns a connection lost during WATCH into a
retry, whether or not EXEC was applied): `create` recognises its own record, `start` its own
token, and a transition that ended an execution leaves `closed_by: <token>`, so a re-run
answers what the first run did instead of refusing.
Torch-free: the API calls `create`, `cancel` and `read`; the worker engine and its reaper the rest.
"""

from __future__ import annotations

import enum
import json
import logging
import random
import time
import uuid
from dataclasses import dataclass
from typing import Callable

from redis import Redis
from redis.exceptions import RedisError, WatchError
from rq.job import JobStatus as RQStatus

from . import acks, fairness, jobs, rqside
from .jobs import ANONYMOUS, JobStatus
from .params import JobParams

log = logging.getLogger(__name__)

# Extra lifetime of unfinished records beyond their upload and timeout, so a record never
# expires while its job can still run.
RECORD_MARGIN = 3600


class Outcome(str, enum.Enum):
    OK = "ok"                  # the transition happened
    ALIVE = "alive"            # `abandon`: the lease was renewed meanwhile: the owner lives
    MISSING = "missing"        # no record: unknown or expired job
    FINAL = "final"            # the job is already final: nothing changed
    NOT_OWNER = "not_owner"    # the caller's execution no longer owns the job
    CANCELED = "canceled"      # `start` found a cancel request: the job is now canceled
    FAILED = "failed"          # `start` found the job unrunnable (inputs expired): now failed
    REQUEUED = "requeued"      # `fail`/`abandon`: the job was put back for another attempt
    PARKED = "parked"          # `start`: its tenant is at its running limit; the job waits aside


class IdempotencyConflict(Exception):
    """An Idempotency-Key reused with a different upload or parameters."""


class Refused(Exception):
    """`create` refused the job: nothing was written. `limit` names the bound, `current` where it stands."""

    def __init__(self, reason: str, current: int, limit: int, reserved: int = 0):
        super().__init__(reason)
        self.reason, self.current, self.limit, self.reserved = reason, current, limit, reserved


class LedgerContention(RedisError):
    """A transition kept losing its optimistic transaction to concurrent writers of the same
    job (a bounded number of tries with backoff): the caller may try again later."""


@dataclass(frozen=True)
class Admission:
    """What `create` checks and records for the job's tenant (service settings, per request)."""

    tenant: str = ANONYMOUS
    weight: float = 1.0               # share of the workers against other tenants with waiting work
    max_queue: int = 10**9            # waiting jobs in the model's queue
    tenant_max_queued: int = 10**9    # waiting jobs of this tenant, all models
    tenant_max_running: int = 0       # samples of this tenant running at once on this model (0: no limit)
    admit_fraction: float = 1.0       # share of Redis's maxmemory that admitted work may fill
    reserve_bytes: int = 0            # the job's expected results, kept free until it finishes


# Bytes counted per job beyond its uploads: the record and RQ's hash (about 3 kB, bench.sizing),
# the events stream (capped near jobs.EVENTS_MAXLEN entries of under 200 bytes, with Redis's
# approximate trimming up to half as many again: about 50 kB at most) and the lease.
RECORD_OVERHEAD = 64 * 1024

# A final status not yet acknowledged as REPAINT_ACK asks: readers confirm it before they tell it.
ACK_PENDING = "ack_pending"

# Optimistic transactions: tries before LedgerContention, and the backoff between them.
MAX_TRIES = 25
BACKOFF_BASE = 0.002
BACKOFF_CAP = 0.1


@dataclass(frozen=True)
class Started:
    outcome: Outcome
    token: str | None = None
    record: dict | None = None


@dataclass(frozen=True)
class Lease:
    job_id: str
    token: str

    @property
    def member(self) -> str:
        return f"{self.job_id}|{self.token}"

    @classmethod
    def parse(cls, member: bytes | str) -> "Lease":
        text = member.decode() if isinstance(member, bytes) else member
        job_id, _, token = text.partition("|")
        return cls(job_id, token)


# KEYS: record, lease. ARGV: token, ttl. Returns 1 if the lease was refreshed, 0 if not owned.
_HEARTBEAT = """
if redis.call('hget', KEYS[1], 'status') == 'running' and redis.call('hget', KEYS[1], 'owner') == ARGV[1] then
  redis.call('set', KEYS[2], '1', 'EX', ARGV[2])
  return 1
end
return 0
"""

# KEYS: record, events stream, preview. ARGV: token, progress JSON, progress event JSON,
# preview PNG ('' for none), preview event JSON, preview TTL, events channel, stream maxlen,
# stream TTL. Each event goes to the job's stream and its channel as `jobs.publish` writes it.
# Returns 1, or 0 (not owned: nothing written).
_PROGRESS = jobs.EVENT_LUA + """
if redis.call('hget', KEYS[1], 'status') == 'running' and redis.call('hget', KEYS[1], 'owner') == ARGV[1] then
  redis.call('hset', KEYS[1], 'progress', ARGV[2])
  append_event(KEYS[2], KEYS[1], ARGV[7], ARGV[3], ARGV[8], ARGV[9])
  if ARGV[4] ~= '' then
    redis.call('set', KEYS[3], ARGV[4], 'EX', ARGV[6])
    append_event(KEYS[2], KEYS[1], ARGV[7], ARGV[5], ARGV[8], ARGV[9])
  end
  return 1
end
return 0
"""


# KEYS: record. ARGV: webhook state JSON. Only an existing record is written (HSET on an expired
# one would bring it back without a TTL). Returns 1 if written.
_WEBHOOK_STATE = """
if redis.call('exists', KEYS[1]) == 1 then
  redis.call('hset', KEYS[1], 'webhook', ARGV[1])
  return 1
end
return 0
"""


class Ledger:
    """Job transitions on one Redis. `result_ttl`: seconds finished records and results live."""

    def __init__(self, redis: Redis, *, result_ttl: int = 24 * 3600, ack: acks.Ack = acks.Ack()):
        self.redis = redis
        self.result_ttl = result_ttl
        self.ack = ack  # what `create`'s return promises about the job's writes (REPAINT_ACK)
        # Final statuses are confirmed too in replica mode, where a confirmation is a round trip
        # to a replica. In disk mode it would be a wait for the next fsync (up to a second with
        # everysec) per finished job, on the worker's serving loop; there a crash may take back
        # the last second of final statuses, and those jobs run again (docs/guarantees.md).
        self._confirm_finals = ack.mode is acks.AckMode.REPLICA
        self._ack_checked: str | None = None
        self._heartbeat = redis.register_script(_HEARTBEAT)
        self._progress = redis.register_script(_PROGRESS)
        self._webhook_state = redis.register_script(_WEBHOOK_STATE)
        self._create = redis.register_script(fairness.CREATE)
        self._advance = redis.register_script(fairness.ADVANCE)
        self._unpark = redis.register_script(fairness.UNPARK)
        self._front = redis.register_script(fairness.FRONT)
        self._release = redis.register_script(fairness.RELEASE)

    # ---- the transaction helper ----------------------------------------------------------------

    def _transact(self, keys: list[str], body: Callable):
        """Run `body(pipe)` under WATCH `keys`: it reads (executed at once), calls `pipe.multi()`
        and buffers its writes; EXEC applies them all or none. Starts over when a watched key
        changed meanwhile, with backoff, at most MAX_TRIES times (then LedgerContention). A body
        that returns without `multi()` changed nothing.

        A transition that ended a job (`_finish`, or one that found its own earlier run did) is
        confirmed as `self.ack` asks before it returns (acks.NotAcknowledged if not in time: it is
        applied, and a retry of it confirms it again), so nobody is told of a final status that a
        crash or a failover could take back."""
        with acks.pinned(self.redis, self.ack) as client, client.pipeline() as pipe:
            for attempt in range(MAX_TRIES):
                pipe.ended_jobs = []  # filled by _finish and _owned (a final status to confirm)
                try:
                    pipe.watch(*keys)
                    result = body(pipe)
                    if pipe.explicit_transaction:
                        pipe.execute()
                    if pipe.ended_jobs:
                        self._confirm_final(client, pipe.ended_jobs)
                    return result
                except WatchError:
                    # Another writer changed the job meanwhile: back off (jittered, growing) so that
                    # contending writers spread out instead of retrying in lock step.
                    time.sleep(random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** attempt)))
                finally:
                    pipe.reset()
        raise LedgerContention(f"a transition on {keys[0]} lost {MAX_TRIES} tries to concurrent writers")

    def _confirm_final(self, client: Redis, job_ids: list[str]) -> None:
        """Wait for the acknowledgement of the final statuses just written (through `client`, a
        pinned one), then take their `ack_pending` mark off: readers trust them from then on."""
        if not self._confirm_finals:
            return
        acks.confirm(client, self.ack)
        with client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hdel(jobs.job_key(job_id), ACK_PENDING)
            pipe.execute()

    def confirmed(self, job_id: str, record: dict) -> dict:
        """`record`, once its final status is acknowledged as `self.ack` asks: a status written by
        a worker whose own confirmation did not come (or has not come yet) is confirmed here
        before anyone is told of it (acks.NotAcknowledged if it cannot be: the caller answers 503)."""
        if not record.get(ACK_PENDING) or not self._confirm_finals:
            return record
        with acks.pinned(self.redis, self.ack) as client:
            self._confirm_final(client, [job_id])
        return {k: v for k, v in record.items() if k != ACK_PENDING}

    @staticmethod
    def _record(pipe, job_id: str) -> dict:
        return jobs.decode_record(pipe.hgetall(jobs.job_key(job_id)))

    # ---- the API's transitions -----------------------------------------------------------------

    def create(self, *, job_id: str, model: str, params: JobParams, image: bytes, mask_png: bytes,
               timeout: int, input_ttl: int, max_attempts: int, admission: Admission = Admission(),
               idempotency: tuple[str, str, int] | None = None) -> tuple[str, bool]:
        """Admit, store and enqueue the job, all or nothing, in one script (worker.fairness.CREATE).

        Admission: the model's queue and the tenant's waiting jobs below their limits, and Redis's
        memory (if it has a maxmemory) with room for this job's uploads and the reserved results
        of every accepted job; a refusal raises `Refused` and writes nothing. The job takes its
        fair place in the model's RQ queue among the tenants' waiting jobs.
        `idempotency` is (key, fingerprint, ttl): the same key with the same fingerprint returns
        the job it created (replayed=True); with another fingerprint it raises IdempotencyConflict.
        Returns (job_id, replayed) once the writes are acknowledged as `self.ack` asks
        (acks.NotAcknowledged if not in time: the job may exist; a retry with the same idempotency
        key finds it).
        """
        self.check_ack()
        queue = rqside.queue_for(self.redis, jobs.queue_name(model))
        # The record and RQ's job outlive the upload, so that a job whose upload expired before
        # any worker came is still there to fail with that reason when one does.
        keep = input_ttl + timeout + self.result_ttl + RECORD_MARGIN
        rq_job = rqside.new_job(queue, jobs.TASK_PATH, job_id, timeout=timeout, ttl=keep,
                                result_ttl=self.result_ttl, description=f"inpaint {model} {job_id}")
        tenant = admission.tenant
        record = {
            "status": JobStatus.QUEUED.value, "model": model, "tenant": tenant,
            "params": jobs.dumps(params.to_record()), "created_at": repr(time.time()),
            "num_samples": params.num_samples, "attempts": 0, "failures": 0, "max_attempts": max_attempts,
            "timeout": timeout, "reserved": admission.reserve_bytes, "max_running": admission.tenant_max_running}
        rq_fields = rqside.enqueue_fields(queue, rq_job)
        encode = self.redis.get_encoder().encode  # as HSET would write each value
        pairs = [v for fields in (record, rq_fields) for k, val in fields.items() for v in (k, encode(val))]
        cost = params.num_samples * params.evaluations / admission.weight
        idem_key = jobs.idempotency_key(idempotency[0]) if idempotency else jobs.idempotency_key("-")
        with acks.pinned(self.redis, self.ack) as client:
            answer = self._create(
                keys=[jobs.job_key(job_id), jobs.input_key(job_id, "image"), jobs.input_key(job_id, "mask"),
                      idem_key, rq_job.key, queue.redis_queues_keys, queue.key, fairness.order_key(model),
                      fairness.clock_key(model), fairness.waiting_key(tenant), fairness.reserved_key(),
                      fairness.reserved_jobs_key(), fairness.reserved_bytes_key()],
                args=[job_id, tenant, image, mask_png, input_ttl, keep, idempotency[1] if idempotency else "",
                      idempotency[2] if idempotency else 0, admission.max_queue, admission.tenant_max_queued,
                      repr(admission.admit_fraction), len(image) + len(mask_png) + RECORD_OVERHEAD,
                      admission.reserve_bytes, repr(cost), repr(time.time()), queue.key,
                      len(record), len(rq_fields), *pairs],
                client=client)
            kind = answer[0].decode() if isinstance(answer[0], bytes) else answer[0]
            if kind in ("ok", "replay"):  # a replay's job may be one whose first answer was a timeout
                acks.confirm(client, self.ack)
        if kind == "ok":
            return job_id, False
        if kind == "replay":
            return answer[1].decode(), True
        if kind == "conflict":
            raise IdempotencyConflict(idempotency[0] if idempotency else "")
        if kind == "queue_full":
            raise Refused(kind, int(answer[1]), admission.max_queue)
        if kind == "tenant_full":
            raise Refused(kind, int(answer[1]), admission.tenant_max_queued)
        raise Refused(kind, int(answer[1]), int(answer[3]), reserved=int(answer[2]))

    def check_ack(self) -> str:
        """Check once that Redis can give `self.ack` (acks.check_server; raises AckUnsupported);
        returns the line that says what 202 promises."""
        if self._ack_checked is None:
            self._ack_checked = acks.check_server(self.redis, self.ack)
        return self._ack_checked

    def replay(self, key: str, fingerprint: str) -> str | None:
        """The job an Idempotency-Key already created with this fingerprint (None: the key is
        new); IdempotencyConflict if it created one from a different request. A read: `create`
        checks the key again inside its transaction, so two concurrent first requests still
        make one job."""
        raw = self.redis.get(jobs.idempotency_key(key))
        if raw is None:
            return None
        stored = json.loads(raw)
        if stored["fingerprint"] != fingerprint:
            raise IdempotencyConflict(key)
        # Its first answer may have been a 503 because the job was not yet acknowledged: this one
        # is a 202, so it waits for the same acknowledgement.
        with acks.pinned(self.redis, self.ack) as client:
            acks.confirm(client, self.ack)
        return stored["job_id"]

    def read(self, job_id: str) -> dict | None:
        """The record as stored (None: unknown or expired), with the queue position while queued."""
        record = jobs.decode_record(self.redis.hgetall(jobs.job_key(job_id)))
        if not record:
            return None
        record = self.confirmed(job_id, record)
        if record["status"] == JobStatus.QUEUED.value:
            record["position"] = rqside.queue_for(self.redis, jobs.queue_name(record["model"])).get_job_position(job_id)
        return record

    def cancel(self, job_id: str) -> Outcome:
        """A queued job is canceled at once; a running one gets `cancel_requested` and its owner
        cancels it at its next step (`cancel_running`); a final or unknown one is left alone."""
        def body(pipe):
            record = self._record(pipe, job_id)
            if not record:
                return Outcome.MISSING
            status = JobStatus(record["status"])
            if status.final:
                return Outcome.FINAL
            pipe.multi()
            if status == JobStatus.RUNNING:
                pipe.hset(jobs.job_key(job_id), "cancel_requested", 1)
                return Outcome.OK
            self._finish(pipe, job_id, record, JobStatus.CANCELED, {})
            self._rq_final(pipe, jobs.queue_name(record["model"]), job_id, RQStatus.CANCELED)
            return Outcome.CANCELED

        return self._transact([jobs.job_key(job_id)], body)

    # ---- the worker's transitions --------------------------------------------------------------

    def start(self, rq_job, worker_name: str, lease_ttl: int, token: str | None = None) -> Started:
        """Take a dequeued job: it becomes `running`, owned by a new execution whose token is returned.

        A delivery of a job that is final, already owned, or gone is dropped (no second run);
        one whose cancel was requested is canceled; one whose upload expired fails. A caller
        that retries after a lost reply passes the same `token` and gets its start back.
        """
        job_id = rq_job.id
        key = jobs.job_key(job_id)
        inputs = [jobs.input_key(job_id, "image"), jobs.input_key(job_id, "mask")]
        queue_name = rq_job.origin
        token = token or uuid.uuid4().hex

        def body(pipe):
            record = self._record(pipe, job_id)
            if record.get("owner") == token and record["status"] == JobStatus.RUNNING.value:
                return Started(Outcome.OK, token, record)  # our own earlier run was applied
            if not record:
                pipe.multi()
                self._rq_final(pipe, queue_name, job_id, RQStatus.FAILED)
                pipe.zrem(fairness.order_key(jobs.model_of_queue(queue_name)), job_id)  # its record expired
                return Started(Outcome.MISSING)
            status = JobStatus(record["status"])
            if status.final or status == JobStatus.RUNNING:
                pipe.multi()
                rqside.dropped_delivery(pipe, self.redis, queue_name, job_id)
                return Started(Outcome.FINAL if status.final else Outcome.NOT_OWNER, record=record)
            if record.get("cancel_requested"):
                pipe.multi()
                self._finish(pipe, job_id, record, JobStatus.CANCELED, {})
                self._rq_final(pipe, queue_name, job_id, RQStatus.CANCELED)
                return Started(Outcome.CANCELED, record=record)
            if pipe.exists(*inputs) != 2:
                error = {"type": "invalid_input", "message": "the job's upload expired before a worker took it"}
                pipe.multi()
                self._finish(pipe, job_id, record, JobStatus.FAILED, {"error": error})
                self._rq_final(pipe, queue_name, job_id, RQStatus.FAILED)
                return Started(Outcome.FAILED, record={**record, "error": error})
            started = time.time()
            keep = int(record.get("timeout", 0)) + self.result_ttl + RECORD_MARGIN
            model, tenant = record["model"], record.get("tenant", ANONYMOUS)
            running_key = fairness.running_key(model, tenant)
            limit = int(record.get("max_running") or 0)
            if limit:
                pipe.watch(running_key)  # a job of this tenant leaving meanwhile makes this start again
                running = sum(int(v) for v in pipe.hvals(running_key))
                if running and running + record["num_samples"] > limit:
                    # Its tenant already runs its share: the job waits aside until one of them leaves.
                    pipe.multi()
                    rqside.dropped_delivery(pipe, self.redis, queue_name, job_id)
                    pipe.zrem(fairness.order_key(model), job_id)
                    parked = fairness.parked_key(model, tenant)
                    pipe.lrem(parked, 0, job_id)
                    # A job parked before keeps its turn among its tenant's parked jobs (the head);
                    # a new one queues behind them.
                    (pipe.lpush if record.get("parked_at") else pipe.rpush)(parked, job_id)
                    pipe.expire(parked, keep)
                    # Written, so that a concurrent transition on the record (a recovery of the
                    # same delivery) starts again instead of acting on the queued state.
                    pipe.hset(key, "parked_at", repr(time.time()))
                    return Started(Outcome.PARKED, record=record)
            pipe.multi()
            pipe.hset(running_key, job_id, record["num_samples"])
            pipe.expire(running_key, keep)
            self._left_waiting(pipe, job_id, record, started=True)
            rqside.start(pipe, rq_job, token, worker_name, lease_ttl, keep)
            lease = Lease(job_id, token)
            pipe.hset(key, mapping={"status": JobStatus.RUNNING.value, "owner": token,
                                    "worker": worker_name, "started_at": started})
            pipe.hdel(key, "progress")
            pipe.hincrby(key, "attempts", 1)
            pipe.expire(key, keep)
            for k in inputs:
                pipe.expire(k, keep)  # the upload must outlive the run, for a retry after a lost worker
            pipe.set(jobs.lease_key(job_id, lease.token), 1, ex=lease_ttl)
            pipe.sadd(jobs.running_key(), lease.member)
            jobs.record_duration(pipe, record["model"], "queue_wait", started - record["created_at"])
            attempts = record.get("attempts", 0) + 1
            jobs.publish(pipe, job_id, "status", {"status": JobStatus.RUNNING.value, "attempts": attempts})
            return Started(Outcome.OK, token, {**record, "status": JobStatus.RUNNING.value,
                                               "attempts": attempts, "started_at": started})

        return self._transact([key, *inputs], body)

    def heartbeat(self, leases: list[Lease], ttl: int) -> list[bool]:
        """Refresh the leases of owned running jobs; False where the job is no longer ours."""
        with self.redis.pipeline(transaction=False) as pipe:
            for lease in leases:
                self._heartbeat(keys=[jobs.job_key(lease.job_id), jobs.lease_key(lease.job_id, lease.token)],
                                args=[lease.token, ttl], client=pipe)
            return [bool(v) for v in pipe.execute()]

    def progress(self, updates: list[tuple[Lease, dict]],
                 previews: dict[str, tuple[bytes, int]] | None = None) -> list[bool]:
        """Write each owned job's progress and publish it; False where the job is no longer ours.
        `previews` maps job ids to (PNG, step) of their latest estimate."""
        previews = previews or {}
        with self.redis.pipeline(transaction=False) as pipe:
            for lease, progress in updates:
                job_id = lease.job_id
                png, step = previews.get(job_id, (b"", None))
                preview_event = jobs.event_json("preview", {"url": f"/jobs/{job_id}/preview", "step": step})
                self._progress(keys=[jobs.job_key(job_id), jobs.events_key(job_id), jobs.preview_key(job_id)],
                               args=[lease.token, jobs.dumps(progress), jobs.event_json("progress", progress),
                                     png, preview_event, self.result_ttl, jobs.events_channel(job_id),
                                     jobs.EVENTS_MAXLEN, jobs.EVENTS_TTL], client=pipe)
            return [bool(v) for v in pipe.execute()]

    def webhook_delivered(self, job_id: str, state: dict) -> bool:
        """The last webhook delivery's state (`webhook` on the job), written by the worker's sender.
        Not a status transition: it may arrive after the job is final, and it never changes one."""
        return bool(self._webhook_state(keys=[jobs.job_key(job_id)], args=[jobs.dumps(state)]))

    def free_inputs(self, lease: Lease) -> bool:
        """Delete the job's upload and preview before its end, if `lease` still owns it (a worker
        whose results are made, in a full Redis: deletes are allowed there, writes are not). A
        reaped owner must not take the upload from the execution that now runs the job."""
        job_id = lease.job_id

        def body(pipe):
            _record, refusal = self._owned(pipe, lease)
            if refusal:
                return False
            pipe.multi()
            pipe.delete(jobs.input_key(job_id, "image"), jobs.input_key(job_id, "mask"), jobs.preview_key(job_id))
            return True

        return self._transact([jobs.job_key(job_id)], body)

    def set_plan(self, lease: Lease, plan: dict, used: dict | None = None) -> bool:
        """The worker's plan for the job, and the parameters it resolved (the `blend` a job left
        to the default): the record's `params` then say what was actually used."""
        def body(pipe):
            record, refusal = self._owned(pipe, lease)
            if refusal:
                return False
            pipe.multi()
            pipe.hset(jobs.job_key(lease.job_id), mapping={
                "plan": jobs.dumps(plan), "params": jobs.dumps({**record["params"], **(used or {})})})
            return True

        return self._transact([jobs.job_key(lease.job_id)], body)

    def succeed(self, lease: Lease, results: list[bytes], *, evaluations: int,
                seconds_per_pass: float | None = None) -> Outcome:
        """Store the results and finish the job, if `lease` still owns it."""
        job_id = lease.job_id

        def body(pipe):
            record, refusal = self._owned(pipe, lease, "succeed")
            if refusal:
                return refusal
            total = record["params"]["evaluations_per_sample"]
            progress = {"step": total, "total": total, "fraction": 1.0, "eta_seconds": 0.0, "updated_at": time.time()}
            pipe.multi()
            for i, png in enumerate(results):
                pipe.set(jobs.result_key(job_id, i), png, ex=self.result_ttl)
            pipe.hincrby(jobs.metrics_key(record["model"]), "model_evaluations_total", evaluations)
            if seconds_per_pass is not None:
                pipe.set(jobs.speed_key(record["model"]), seconds_per_pass)
            jobs.publish(pipe, job_id, "progress", progress)
            self._finish(pipe, job_id, record, JobStatus.SUCCEEDED,
                         {"progress": progress, "result": {"count": len(results)}}, lease, "succeed")
            self._rq_final(pipe, jobs.queue_name(record["model"]), job_id, RQStatus.FINISHED, lease, record)
            return Outcome.OK

        return self._transact([jobs.job_key(job_id)], body)

    def fail(self, lease: Lease, error: dict, *, retryable: bool) -> Outcome:
        """A failed execution. Deterministic errors (`retryable=False`) fail the job for good; an
        infrastructure error uses one attempt and puts the job back while attempts are left."""
        return self._end_execution(lease, error, charge=True, final_unless_retryable=not retryable)

    def requeue(self, lease: Lease, reason: str, kind: str = "requeued") -> Outcome:
        """Put an owned job back at the front of its queue, using no attempt (SIGTERM past the
        grace period, a batch shrunk after out-of-memory). It restarts from scratch; `kind` is
        the type of its `last_error`, which the next execution reads."""
        return self._end_execution(lease, {"type": kind, "message": reason}, charge=False,
                                   final_unless_retryable=False)

    def abandon(self, lease: Lease, reaper: str = "") -> Outcome:
        """The reaper's transition for a lease that expired: the worker is gone or stuck.
        ALIVE (nothing changed) if the owner renewed the lease meanwhile. `reaper` names the
        caller, so that only its own re-run is answered as done (another reaper gets FINAL)."""
        outcome = self._end_execution(lease, {"type": "worker_lost", "message": "the worker running this job "
                                              "stopped responding"}, charge=True, final_unless_retryable=False,
                                      require_lapsed=True, op=f"worker_lost@{reaper}")
        if outcome in (Outcome.MISSING, Outcome.FINAL, Outcome.NOT_OWNER):
            self.redis.srem(jobs.running_key(), lease.member)  # a stale entry: nothing else to do
        return outcome

    def cancel_running(self, lease: Lease) -> Outcome:
        """The owner honours a cancel request between two steps."""
        def body(pipe):
            record, refusal = self._owned(pipe, lease, "cancel")
            if refusal:
                return refusal
            pipe.multi()
            self._finish(pipe, lease.job_id, record, JobStatus.CANCELED, {}, lease, "cancel")
            self._rq_final(pipe, jobs.queue_name(record["model"]), lease.job_id, RQStatus.CANCELED, lease, record)
            return Outcome.OK

        return self._transact([jobs.job_key(lease.job_id)], body)

    def cancel_requested(self, leases: list[Lease]) -> list[bool]:
        with self.redis.pipeline(transaction=False) as pipe:
            for lease in leases:
                pipe.hget(jobs.job_key(lease.job_id), "cancel_requested")
            return [flag is not None for flag in pipe.execute()]

    def recover_undelivered(self, queue_name: str, job_id: str, *, still_delivered: bool = False) -> Outcome:
        """A job stuck between its queue and a worker (the worker died after dequeueing it, before
        `start`; or a failover kept the dequeue but lost the start): back to the front of the
        queue if it is still waiting. With `still_delivered`, only while it is still in RQ's
        intermediate list (watched: a worker that takes it meanwhile makes this start again), so
        that a reaper acting on what it saw earlier never puts back a job that moved on."""
        intermediate = rqside.intermediate_key(queue_name)

        def body(pipe):
            record = self._record(pipe, job_id)
            if not record:
                return Outcome.MISSING
            if record["status"] != JobStatus.QUEUED.value:
                return Outcome.FINAL if JobStatus(record["status"]).final else Outcome.NOT_OWNER
            if still_delivered and pipe.lpos(intermediate, job_id) is None:
                return Outcome.ALIVE  # taken back or started meanwhile: nothing to recover
            pipe.multi()
            rqside.requeued(pipe, self.redis, queue_name, job_id, None, None,
                            int(record.get("timeout", 0)) + self.result_ttl + RECORD_MARGIN)
            return Outcome.REQUEUED

        return self._transact([jobs.job_key(job_id), intermediate], body)

    def undelivered(self, queue_name: str) -> list[str]:
        """Jobs in RQ's intermediate list of `queue_name` (dequeued by a worker) whose record still
        says `queued`: a worker starts a job within milliseconds of dequeueing it, so one seen
        here for long was dequeued by a worker that died, or its start was lost in a failover
        (the dequeue had reached the replica that took over, the start had not)."""
        ids = [i.decode() for i in self.redis.lrange(rqside.intermediate_key(queue_name), 0, -1)]
        if not ids:
            return []
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(jobs.job_key(job_id), "status")
            statuses = pipe.execute()
        return [job_id for job_id, status in zip(ids, statuses) if status == JobStatus.QUEUED.value.encode()]

    def expired_leases(self) -> list[Lease]:
        """Running jobs whose lease key is gone: their worker stopped beating."""
        members = [Lease.parse(m) for m in self.redis.smembers(jobs.running_key())]
        if not members:
            return []
        with self.redis.pipeline(transaction=False) as pipe:
            for lease in members:
                pipe.exists(jobs.lease_key(lease.job_id, lease.token))
            alive = pipe.execute()
        return [lease for lease, up in zip(members, alive) if not up]

    # ---- shared pieces -------------------------------------------------------------------------

    def _owned(self, pipe, lease: Lease, op: str = "") -> tuple[dict, Outcome | None]:
        record = self._record(pipe, lease.job_id)
        if not record:
            return record, Outcome.MISSING
        if record.get("closed_by") == f"{lease.token}:{op}" and record["status"] != JobStatus.RUNNING.value:
            # This very transition already ended this execution (an earlier run of it was
            # applied and its reply, or its acknowledgement, lost): answer what that run did,
            # once the status it wrote is confirmed.
            if JobStatus(record["status"]).final and hasattr(pipe, "ended_jobs"):
                pipe.ended_jobs.append(lease.job_id)
            return record, _CLOSED_AS[record["status"]]
        if JobStatus(record["status"]).final:
            return record, Outcome.FINAL
        if record["status"] != JobStatus.RUNNING.value or record.get("owner") != lease.token:
            return record, Outcome.NOT_OWNER
        return record, None

    def _end_execution(self, lease: Lease, error: dict, *, charge: bool, final_unless_retryable: bool,
                       require_lapsed: bool = False, op: str | None = None) -> Outcome:
        op = op or error["type"]
        job_id = lease.job_id
        key = jobs.job_key(job_id)
        lease_key = jobs.lease_key(job_id, lease.token)

        def body(pipe):
            record, refusal = self._owned(pipe, lease, op)
            if refusal:
                return refusal
            if require_lapsed and pipe.exists(lease_key):
                return Outcome.ALIVE
            err = dict(error)
            queue_name = jobs.queue_name(record["model"])
            if record.get("cancel_requested"):
                # Its owner asked for it to stop: whatever ended this execution, it ends canceled.
                pipe.multi()
                self._finish(pipe, job_id, record, JobStatus.CANCELED, {}, lease, op)
                self._rq_final(pipe, queue_name, job_id, RQStatus.CANCELED, lease, record)
                return Outcome.CANCELED
            failures = record.get("failures", 0) + (1 if charge else 0)
            out_of_attempts = failures >= record.get("max_attempts", 1)
            pipe.multi()
            if final_unless_retryable or (charge and out_of_attempts):
                if err["type"] == "worker_lost":
                    err["message"] += f"; gave up after {failures} attempt(s)"
                pipe.hset(key, "failures", failures)
                self._finish(pipe, job_id, record, JobStatus.FAILED, {"error": err}, lease, op)
                self._rq_final(pipe, queue_name, job_id, RQStatus.FAILED, lease, record)
                return Outcome.FAILED
            keep = int(record.get("timeout", 0)) + self.result_ttl + RECORD_MARGIN
            pipe.hset(key, mapping={"status": JobStatus.QUEUED.value, "failures": failures,
                                    "last_error": jobs.dumps(err), "closed_by": f"{lease.token}:{op}"})
            pipe.hdel(key, "owner", "progress", "started_at")
            pipe.expire(key, keep)
            self._drop_lease(pipe, lease)
            self._left_running(pipe, job_id, record)
            tenant = record.get("tenant", ANONYMOUS)
            pipe.zadd(fairness.waiting_key(tenant), {job_id: time.time() + keep})
            self._front(keys=[fairness.order_key(record["model"]), fairness.clock_key(record["model"])],
                        args=[job_id], client=pipe)
            rqside.requeued(pipe, self.redis, queue_name, job_id, lease.token, record.get("worker"), keep)
            jobs.publish(pipe, job_id, "status", {"status": JobStatus.QUEUED.value, "last_error": err})
            return Outcome.REQUEUED

        return self._transact([key, lease_key] if require_lapsed else [key], body)

    def _rq_final(self, pipe, queue_name: str, job_id: str, status: RQStatus, lease: Lease | None = None,
                  record: dict | None = None) -> None:
        """RQ's side of a final transition: the execution (if any) ends, the job joins the registry."""
        rqside.final(pipe, self.redis, queue_name, job_id, lease.token if lease else None,
                     (record or {}).get("worker"), self.result_ttl, status)

    def _left_waiting(self, pipe, job_id: str, record: dict, *, started: bool) -> None:
        """The job no longer waits (a worker started it, or it ended from the queue): out of the
        fair order (a start moves the queue's virtual time to its tag), its tenant's waiting set
        and parked list."""
        model, tenant = record["model"], record.get("tenant", ANONYMOUS)
        if started:
            self._advance(keys=[fairness.order_key(model), fairness.clock_key(model)], args=[job_id], client=pipe)
        else:
            pipe.zrem(fairness.order_key(model), job_id)
        pipe.zrem(fairness.waiting_key(tenant), job_id)
        pipe.lrem(fairness.parked_key(model, tenant), 0, job_id)
        if not started and int(record.get("max_running") or 0):
            # It may have been unparked to take a freed share and then ended without running
            # (canceled, upload expired): pass that share on, or its tenant's parked jobs would
            # wait for a running job that is not there. One that must still wait parks again.
            queue = rqside.queue_for(self.redis, jobs.queue_name(model))
            self._unpark(keys=[fairness.order_key(model), fairness.clock_key(model), queue.key,
                               fairness.parked_key(model, tenant)], args=[record.get("num_samples", 1)], client=pipe)

    def _left_running(self, pipe, job_id: str, record: dict) -> None:
        """The job stopped running: its samples no longer count against its tenant's limit, and as
        many of the tenant's parked jobs go back to the queue as it freed samples."""
        model, tenant = record["model"], record.get("tenant", ANONYMOUS)
        pipe.hdel(fairness.running_key(model, tenant), job_id)
        queue = rqside.queue_for(self.redis, jobs.queue_name(model))
        self._unpark(keys=[fairness.order_key(model), fairness.clock_key(model), queue.key,
                           fairness.parked_key(model, tenant)], args=[record.get("num_samples", 1)], client=pipe)

    @staticmethod
    def _drop_lease(pipe, lease: Lease) -> None:
        pipe.delete(jobs.lease_key(lease.job_id, lease.token))
        pipe.srem(jobs.running_key(), lease.member)

    def _finish(self, pipe, job_id: str, record: dict, status: JobStatus, fields: dict,
                lease: Lease | None = None, op: str = "") -> None:
        """The record's part of every final transition (inside the caller's MULTI)."""
        assert status.final, status
        finished = time.time()
        key = jobs.job_key(job_id)
        pipe.hset(key, mapping={"status": status.value, "finished_at": finished,
                                **{k: jobs.dumps(v) for k, v in fields.items()}})
        pipe.hdel(key, "owner")
        if lease is not None:
            pipe.hset(key, "closed_by", f"{lease.token}:{op}")
        if self._confirm_finals:
            pipe.hset(key, ACK_PENDING, 1)  # until the status is acknowledged (_confirm_final)
        if hasattr(pipe, "ended_jobs"):
            pipe.ended_jobs.append(job_id)
        pipe.expire(key, self.result_ttl)
        # The preview goes with the inputs: a final job has its results (or none to show), and a
        # preview kept for the result TTL would hold up to an upload's size that no reserve counts.
        pipe.delete(jobs.input_key(job_id, "image"), jobs.input_key(job_id, "mask"), jobs.preview_key(job_id))
        if lease is not None:
            self._drop_lease(pipe, lease)
        if record["status"] == JobStatus.RUNNING.value:
            self._left_running(pipe, job_id, record)
        else:
            self._left_waiting(pipe, job_id, record, started=False)
        if record.get("reserved"):  # its results are written, or never will be
            self._release(keys=[fairness.reserved_key(), fairness.reserved_jobs_key(), fairness.reserved_bytes_key()],
                          args=[job_id], client=pipe)
        pipe.hincrby(jobs.metrics_key(record["model"]), f"jobs_{status.value}_total", 1)
        if record.get("started_at") is not None:
            jobs.record_duration(pipe, record["model"], "run", finished - float(record["started_at"]))
        jobs.publish(pipe, job_id, "status", {"status": status.value, **fields})


# What a transition that ended an execution answered, by the status it left.
_CLOSED_AS = {JobStatus.SUCCEEDED.value: Outcome.OK, JobStatus.CANCELED.value: Outcome.OK,
              JobStatus.FAILED.value: Outcome.FAILED, JobStatus.QUEUED.value: Outcome.REQUEUED}


def new_job_id() -> str:
    return str(uuid.uuid4())
