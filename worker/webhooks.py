"""Webhooks: job events POSTed to a client's URL, signed, throttled and retried, off the hot loop.

Bodies are JSON `{"event", "job_id", "delivery_id", "data", "sent_at"}`. Each carries two
signatures under REPAINT_WEBHOOK_SECRET:
- `X-Repaint-Signature: sha256=<hex>`, HMAC-SHA256 of the raw body;
- the Standard Webhooks headers `webhook-id` (the delivery id), `webhook-timestamp` (unix seconds)
  and `webhook-signature: v1,<base64>`, HMAC-SHA256 of `<id>.<timestamp>.<body>` keyed by the
  secret's UTF-8 bytes (the Standard Webhooks secret `whsec_` + base64 of those bytes).
A delivery id is the same on every attempt of one event, across retries and restarts: receivers
deduplicate on it (delivery is at least once).

Delivery (one asyncio loop on a daemon thread, so `notify` never blocks the sampler for long):
- one queue per `scheme://host:port`, delivered in order by its own task: a slow or dead host
  delays only its own deliveries;
- every attempt re-checks the URL (`WebhookPolicy.check`, which resolves the name) and connects
  to an address that check allowed, with the name kept for the Host header and TLS (SNI and
  certificate); no redirects, no proxies from the environment, no connection reuse, a time
  limit on the whole attempt and a cap on the response read;
- `progress` is throttled per job, coalesced while queued and tried once (the next one
  supersedes it); other events are retried on a connection error, a timeout, 408, 429 or 5xx,
  with exponential backoff and jitter, until `RetryPolicy.max_attempts` or its time window;
- `started` and `completed` are also kept in Redis (`PendingStore`) from `notify` until they are
  delivered or given up, claimed by the sender that holds them under a renewed lease: when a
  sender dies, any sender on the same Redis (the restarted worker, a peer) takes them over once
  they are due, and carries on with the same id, attempts and retry window. Without Redis they
  are kept in memory only, as before;
- each outcome is reported to `record_state(job_id, state)` (the worker writes it to the job
  record through the ledger: `webhook` on GET /jobs/<id>).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import functools
import hashlib
import hmac
import json
import logging
import math
import random
import re
import ssl
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable
from urllib.parse import urlsplit

import httpx
from redis.exceptions import RedisError

from . import jobs
from .webhooks_policy import DEFAULT_PORTS, EVENTS, Target, WebhookPolicy, WebhookRefused, WebhookUnresolvable, sign

if TYPE_CHECKING:
    from redis import Redis

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 0.5  # seconds between progress deliveries to one job's hook
RETRYABLE_STATUSES = {408, 425, 429}  # and every 5xx
CLAIM_BATCH = 20  # due deliveries a sender takes over per look

StateRecorder = Callable[[str, dict], None]


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded in attempts and in time; and how long a sender's
    claim on a delivery kept in Redis lasts, and how often it looks for deliveries to take over."""

    max_attempts: int = 6
    window: float = 600.0     # seconds from the first attempt after which no retry starts
    base: float = 1.0         # first delay, doubled per attempt
    cap: float = 120.0        # longest delay
    lease: float = 30.0       # seconds a claim lasts unless renewed (renewed every lease / 3)
    poll: float = 5.0         # seconds between looks for due deliveries (at most lease / 3)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds before attempt `attempt + 1`: half fixed, half random (so that many clients
        failed by one outage do not retry in step), at least the server's Retry-After."""
        ceiling = min(self.cap, self.base * 2 ** (attempt - 1))
        wait = ceiling / 2 + random.uniform(0, ceiling / 2)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.cap))
        return wait

    @property
    def record_ttl(self) -> int:
        """Seconds a stored delivery outlives its holder's last renewal: the window, a lease and
        a minute. A delivery nobody renews or takes over for that long is gone."""
        return math.ceil(self.window + self.lease) + 60


def new_delivery_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


@dataclass
class Delivery:
    url: str
    job_id: str
    event: str
    data: dict
    delivery_id: str = field(default_factory=new_delivery_id)  # the same on every attempt
    attempts: int = 0                # made so far, by any sender
    first_at: float | None = None    # unix time of the first attempt: the retry window starts there
    due_at: float = field(default_factory=time.time)  # no attempt before this unix time
    stored: bool = False             # kept in Redis: another sender may take it over
    queued_at: float = field(default_factory=time.monotonic)

    def body(self, sent_at: float) -> bytes:
        return json.dumps({"event": self.event, "job_id": self.job_id, "delivery_id": self.delivery_id,
                           "data": self.data, "sent_at": sent_at}).encode()


def standard_signature(delivery_id: str, timestamp: str, body: bytes, secret: str) -> str:
    """Standard Webhooks' `webhook-signature`: `v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`,
    keyed by the secret's UTF-8 bytes."""
    if not secret:
        raise ValueError("webhooks are only sent signed: the secret is empty")
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(secret.encode(), signed, hashlib.sha256).digest()).decode()


def standard_secret(secret: str) -> str:
    """REPAINT_WEBHOOK_SECRET as a Standard Webhooks secret (`whsec_` + base64 of its UTF-8 bytes),
    the form that Standard Webhooks libraries take to verify `webhook-signature`."""
    return "whsec_" + base64.b64encode(secret.encode()).decode()


# KEYS: [1] the delivery's hash, [2] the due set. ARGV: [1] delivery id, [2] owner, [3] lease end
# (unix seconds), [4] record TTL (seconds), [5] attempts made or '' to leave the progress as it is,
# [6] first attempt time, [7] next due time (with [5]).
# Renews the claim of sender ARGV[2]: the delivery is due to others at its due time or the lease
# end, whichever is later. Returns 1, or 0 if the delivery is not ARGV[2]'s (taken over by
# another sender, finished, or expired): its holder then leaves it alone.
_HOLD = """
if redis.call('hget', KEYS[1], 'owner') ~= ARGV[2] then
  return 0
end
if ARGV[5] ~= '' then
  redis.call('hset', KEYS[1], 'attempts', ARGV[5], 'first_at', ARGV[6], 'due_at', ARGV[7])
end
local due = tonumber(redis.call('hget', KEYS[1], 'due_at')) or 0
redis.call('zadd', KEYS[2], math.max(due, tonumber(ARGV[3])), ARGV[1])
redis.call('expire', KEYS[1], ARGV[4])
return 1
"""

# KEYS: [1] the delivery's hash, [2] the due set. ARGV: [1] delivery id, [2] now (unix seconds),
# [3] lease end, [4] owner, [5] record TTL (seconds).
# Takes a due delivery over (its holder's lease lapsed, or nobody holds it): ARGV[4] holds it
# until ARGV[3]. Returns the hash as a flat field/value list, or an empty list if it is not due
# any more (another sender took it or renewed it first, or it was finished). An id whose hash
# expired leaves the set.
_CLAIM = """
local score = redis.call('zscore', KEYS[2], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then
  return {}
end
if redis.call('exists', KEYS[1]) == 0 then
  redis.call('zrem', KEYS[2], ARGV[1])
  return {}
end
redis.call('hset', KEYS[1], 'owner', ARGV[4])
redis.call('zadd', KEYS[2], ARGV[3], ARGV[1])
redis.call('expire', KEYS[1], ARGV[5])
return redis.call('hgetall', KEYS[1])
"""


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


class PendingStore:
    """The Redis copy of pending `started`/`completed` deliveries, and the senders' claims on them.

    `jobs.webhook_delivery_key(id)` holds what it takes to send a delivery again and how far it
    got; `jobs.webhook_due_key()` scores each id by when any sender may take it over: its next
    attempt's due time, or later while a live sender holds it (a lease its holder renews). The
    claim (`_CLAIM`) and the renewal (`_HOLD`) are scripts, so two senders never hold one delivery
    at once; a holder checks its claim before each attempt. All methods block: call them off the loop.
    """

    def __init__(self, redis: "Redis", retry: RetryPolicy, owner: str | None = None):
        self.redis, self.retry = redis, retry
        self.owner = owner or uuid.uuid4().hex
        self._hold = redis.register_script(_HOLD)
        self._claim = redis.register_script(_CLAIM)

    def add(self, delivery: Delivery) -> bool:
        """Keep a new delivery, held by this sender for a lease: one pipelined transaction."""
        key = jobs.webhook_delivery_key(delivery.delivery_id)
        pipe = self.redis.pipeline()
        pipe.hset(key, mapping={
            "url": delivery.url, "job_id": delivery.job_id, "event": delivery.event,
            "data": jobs.dumps(delivery.data), "attempts": delivery.attempts,
            "first_at": "" if delivery.first_at is None else repr(delivery.first_at),
            "due_at": repr(delivery.due_at), "owner": self.owner})
        pipe.expire(key, self.retry.record_ttl)
        pipe.zadd(jobs.webhook_due_key(), {delivery.delivery_id: max(delivery.due_at, time.time() + self.retry.lease)})
        pipe.execute()
        return True

    def hold(self, deliveries: list[Delivery], *, record: bool = False) -> list[bool]:
        """Renew this sender's claims (with `record`, also write each one's attempts and next due
        time first); False for a delivery that is no longer this sender's."""
        until = time.time() + self.retry.lease
        pipe = self.redis.pipeline(transaction=False)
        for delivery in deliveries:
            progress = ([delivery.attempts, "" if delivery.first_at is None else repr(delivery.first_at),
                         repr(delivery.due_at)] if record else ["", "", ""])
            self._hold(keys=[jobs.webhook_delivery_key(delivery.delivery_id), jobs.webhook_due_key()],
                       args=[delivery.delivery_id, self.owner, repr(until), self.retry.record_ttl, *progress],
                       client=pipe)
        return [bool(held) for held in pipe.execute()]

    def finish(self, delivery: Delivery) -> bool:
        """Forget a delivery that was delivered or given up."""
        pipe = self.redis.pipeline()
        pipe.delete(jobs.webhook_delivery_key(delivery.delivery_id))
        pipe.zrem(jobs.webhook_due_key(), delivery.delivery_id)
        pipe.execute()
        return True

    def claim_due(self, limit: int = CLAIM_BATCH) -> list[Delivery]:
        """Take over up to `limit` due deliveries: ones whose holder stopped renewing its claim."""
        return self.claim(self.due_ids(limit))

    def due_ids(self, limit: int = CLAIM_BATCH) -> list[str]:
        """Ids of up to `limit` deliveries due now (another sender may claim them first)."""
        return [_text(i) for i in self.redis.zrangebyscore(jobs.webhook_due_key(), "-inf", repr(time.time()),
                                                           start=0, num=limit)]

    def claim(self, ids: list[str]) -> list[Delivery]:
        """Take over those of `ids` that are still due, each atomically: what another sender
        claimed or renewed meanwhile is left to it."""
        if not ids:
            return []
        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        for delivery_id in ids:
            self._claim(keys=[jobs.webhook_delivery_key(delivery_id), jobs.webhook_due_key()],
                        args=[delivery_id, repr(now), repr(now + self.retry.lease), self.owner,
                              self.retry.record_ttl], client=pipe)
        claimed = []
        for delivery_id, flat in zip(ids, pipe.execute()):
            if not flat:
                continue
            fields = {_text(k): _text(v) for k, v in zip(flat[::2], flat[1::2])}
            try:
                claimed.append(Delivery(
                    fields["url"], fields["job_id"], fields["event"], json.loads(fields["data"]), delivery_id,
                    attempts=int(fields["attempts"]), due_at=float(fields["due_at"]), stored=True,
                    first_at=float(fields["first_at"]) if fields["first_at"] else None))
            except (KeyError, ValueError):  # not one of ours: taking it over again and again helps nobody
                log.error("pending webhook delivery %s is malformed; dropped: %r", delivery_id, fields)
                self.finish(Delivery("", "", "", {}, delivery_id))
        return claimed


class ProgressThrottle:
    """At most one progress event per job per PROGRESS_INTERVAL. Entries older than the interval
    carry no information, so they are pruned: the table stays as small as the jobs in flight."""

    def __init__(self, interval: float = PROGRESS_INTERVAL):
        self.interval = interval
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def allow(self, job_id: str) -> bool:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(job_id, float("-inf")) < self.interval:
                return False
            if len(self._last) > 256:
                self._last = {j: t for j, t in self._last.items() if now - t < self.interval}
            self._last[job_id] = now
            return True

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._last.pop(job_id, None)

    def __len__(self) -> int:
        return len(self._last)


def queue_key(url: str) -> str:
    """The per-host queue a URL's deliveries go to (no DNS: the name as given)."""
    parts = urlsplit(url)
    try:
        port = parts.port or DEFAULT_PORTS.get(parts.scheme, 0)
    except ValueError:
        port = 0
    return f"{parts.scheme}://{(parts.hostname or '').rstrip('.')}:{port}"


def parse_retry_after(value: str) -> float | None:
    """Retry-After in seconds (the HTTP-date form is ignored: backoff applies)."""
    return float(value) if re.fullmatch(r"[0-9]{1,6}", value.strip()) else None


def certificate_rejected(exc: BaseException) -> bool:
    """Whether a connection failed on the receiver's TLS certificate (anywhere in the chain)."""
    while exc is not None:
        if isinstance(exc, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class _HostQueue:
    def __init__(self) -> None:
        self.pending: collections.deque[Delivery] = collections.deque()
        self.task: asyncio.Task | None = None


class WebhookSender:
    """Queues, delivers and reports webhook calls; `notify` and `close` are thread-safe.

    With `redis`, `started` and `completed` deliveries are kept there until delivered or given
    up, and this sender takes over the due ones that no live sender holds (see PendingStore)."""

    def __init__(self, policy: WebhookPolicy, record_state: StateRecorder | None = None, *,
                 redis: "Redis | None" = None, retry: RetryPolicy = RetryPolicy(), timeout: float = 10.0,
                 max_response_bytes: int = 64 * 1024, max_per_host: int = 1000):
        self.policy = policy
        self.record_state = record_state
        self.retry, self.timeout = retry, timeout
        self.max_response_bytes, self.max_per_host = max_response_bytes, max_per_host
        self.throttle = ProgressThrottle()
        self.store = PendingStore(redis, retry) if redis is not None else None
        self._hosts: dict[str, _HostQueue] = {}  # touched only on the loop's thread
        self._held: dict[str, Delivery] = {}     # stored deliveries queued or in flight here (loop's thread)
        self._unfinished: list[Delivery] = []    # ended while Redis was away: still to be forgotten there
        self._closing = False
        self._store_down = False                 # Redis failed the last call: logged once per outage
        # State writes, Redis calls and DNS lookups block: they run beside the loop, not on it.
        self._state_pool = ThreadPoolExecutor(1, thread_name_prefix="webhook-state")
        self._store_pool = ThreadPoolExecutor(2, thread_name_prefix="webhook-store")
        self._check_pool = ThreadPoolExecutor(8, thread_name_prefix="webhook-check")
        self._loop = asyncio.new_event_loop()
        self._client: httpx.AsyncClient | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="webhooks", daemon=True)
        self._thread.start()
        if self.store is not None and policy.enabled:
            asyncio.run_coroutine_threadsafe(self._keep(), self._loop)

    # ---- the caller's side (any thread) --------------------------------------------------------

    def notify(self, hook: dict | None, job_id: str, event: str, data: dict) -> None:
        if event != "progress":
            self.throttle.forget(job_id)  # the job's last progress, whether or not it is subscribed
        if not hook or event not in hook.get("events", EVENTS) or not self.policy.enabled:
            return
        if event == "progress" and not self.throttle.allow(job_id):
            return
        delivery = Delivery(hook["url"], job_id, event, data)
        if event != "progress" and self.store is not None and not self._store_down:
            # One pipelined write on the caller's thread: kept from the moment it is accepted. While
            # Redis is known to be away (until the upkeep loop reaches it again), memory only.
            delivery.stored = self._stored(self.store.add, delivery, failed=False)
        self._loop.call_soon_threadsafe(self._enqueue, delivery)

    def close(self, timeout: float = 5.0) -> bool:
        """Wait up to `timeout` seconds for queued deliveries (a worker's shutdown); True if all went.
        From now on this sender takes no delivery over; what it has not delivered stays in Redis
        for another sender once its claim lapses."""
        self._closing = True
        future = asyncio.run_coroutine_threadsafe(self._drained(), self._loop)
        try:
            future.result(timeout)
            return True
        except Exception:
            future.cancel()
            return False

    def pending(self) -> int:
        """Deliveries waiting or in progress (approximate when read from another thread)."""
        return sum(len(q.pending) + (q.task is not None) for q in list(self._hosts.values()))

    def _stored(self, call: Callable, *args, failed, **kwargs):
        """`call(*args, **kwargs)` on the store, or `failed` while Redis is unavailable (logged once)."""
        try:
            result = call(*args, **kwargs)
        except (RedisError, OSError) as exc:
            if not self._store_down:
                self._store_down = True
                log.warning("webhook deliveries are kept in memory only while Redis is unavailable: %s", exc)
            return failed
        if self._store_down:
            self._store_down = False
            log.warning("webhook deliveries are kept in Redis again")
        return result

    # ---- the loop's side -----------------------------------------------------------------------

    async def _store_call(self, call: Callable, *args, failed, **kwargs):
        return await self._loop.run_in_executor(
            self._store_pool, functools.partial(self._stored, call, *args, failed=failed, **kwargs))

    async def _keep(self) -> None:
        """Renew the claims on the deliveries held here, and take over due ones no live sender
        holds (a dead or restarted worker's), for as long as the sender lives."""
        while True:
            try:
                if self._unfinished:
                    done, self._unfinished = self._unfinished, []
                    for delivery in done:
                        if not await self._store_call(self.store.finish, delivery, failed=False):
                            self._unfinished.append(delivery)
                if self._held:
                    await self._store_call(self.store.hold, list(self._held.values()), failed=None)
                if not self._closing:
                    for delivery in await self._store_call(self.store.claim_due, failed=[]):
                        if delivery.delivery_id not in self._held:
                            log.info("taking over webhook %s %s of job %s (%d attempt(s) made)",
                                     delivery.event, delivery.delivery_id, delivery.job_id, delivery.attempts)
                            self._enqueue(delivery)
            except Exception:  # a bug here must not end the upkeep: claims would lapse
                log.exception("webhook store upkeep failed")
            await asyncio.sleep(min(self.retry.poll, self.retry.lease / 3))

    def _enqueue(self, delivery: Delivery) -> None:
        key = queue_key(delivery.url)
        queue = self._hosts.setdefault(key, _HostQueue())
        if delivery.event == "progress":
            for waiting in queue.pending:
                if waiting.job_id == delivery.job_id and waiting.event == "progress":
                    # The newest progress replaces a queued one (the older is never sent).
                    waiting.data, waiting.delivery_id = delivery.data, delivery.delivery_id
                    return
        if len(queue.pending) >= self.max_per_host:
            progress = next((d for d in queue.pending if d.event == "progress"), None)
            if progress is not None:
                queue.pending.remove(progress)
            else:
                log.warning("webhook queue of %s is full: %s event of job %s dropped", key, delivery.event,
                            delivery.job_id)
                self._loop.create_task(self._end(delivery, "dropped", None, f"the queue of {key} is full"))
                return
        if delivery.stored:
            self._held[delivery.delivery_id] = delivery
        queue.pending.append(delivery)
        if queue.task is None:
            queue.task = self._loop.create_task(self._drain(key, queue))

    async def _drain(self, key: str, queue: _HostQueue) -> None:
        try:
            while queue.pending:
                delivery = queue.pending.popleft()
                try:
                    await self._deliver(delivery)
                except Exception as exc:  # a bug must cost one delivery, never the host's queue
                    log.exception("webhook %s of job %s could not be delivered", delivery.event, delivery.job_id)
                    await self._end(delivery, "failed", None, f"internal error: {type(exc).__name__}")
                finally:
                    self._held.pop(delivery.delivery_id, None)
        finally:
            queue.task = None
            if queue.pending:  # cancelled with work left (the loop stopping): only stored ones are resumed
                log.warning("webhook queue of %s stopped with %d deliveries", key, len(queue.pending))
            self._hosts.pop(key, None)

    async def _drained(self) -> None:
        while self._hosts:
            await asyncio.sleep(0.05)

    async def _deliver(self, delivery: Delivery) -> None:
        tries = 1 if delivery.event == "progress" else self.retry.max_attempts
        while True:
            wait = delivery.due_at - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if delivery.stored and not await self._still_ours(delivery):
                log.info("webhook %s %s of job %s was taken over by another sender", delivery.event,
                         delivery.delivery_id, delivery.job_id)
                return
            delivery.attempts += 1
            if delivery.first_at is None:
                delivery.first_at = time.time()
            try:
                status, retry_after = await asyncio.wait_for(self._attempt(delivery), self.timeout)
                error = None if 200 <= status < 300 else f"HTTP {status}"
            except WebhookUnresolvable as exc:  # DNS may recover: retried like a connection error
                status, retry_after, error, permanent = None, None, str(exc), False
            except WebhookRefused as exc:
                log.warning("webhook %s of job %s refused: %s", delivery.event, delivery.job_id, exc)
                await self._end(delivery, "refused", None, str(exc))
                return
            except (httpx.HTTPError, OSError, asyncio.TimeoutError) as exc:
                status, retry_after = None, None
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                permanent = certificate_rejected(exc)  # retrying cannot fix a certificate
            else:
                permanent = status < 500 and status not in RETRYABLE_STATUSES
            if error is None:
                await self._end(delivery, "delivered", status, None)
                return
            wait = self.retry.delay(delivery.attempts, retry_after)
            if (permanent or delivery.attempts >= tries
                    or time.time() - delivery.first_at + wait > self.retry.window):
                log.info("webhook %s of job %s failed after %d attempt(s): %s", delivery.event, delivery.job_id,
                         delivery.attempts, error)
                await self._end(delivery, "failed", status, error)
                return
            delivery.due_at = time.time() + wait
            self._report(delivery, "retrying", status, error)
            if delivery.stored:  # where a sender that takes it over carries on
                await self._store_call(self.store.hold, [delivery], record=True, failed=None)

    async def _still_ours(self, delivery: Delivery) -> bool:
        """Renew this sender's claim before an attempt. While Redis is away it is sent anyway:
        delivery is at least once."""
        held = await self._store_call(self.store.hold, [delivery], failed=None)
        return held is None or held[0]

    async def _end(self, delivery: Delivery, state: str, status: int | None, error: str | None) -> None:
        """Report a delivery's final state, and forget it in Redis."""
        self._report(delivery, state, status, error)
        if delivery.stored and not await self._store_call(self.store.finish, delivery, failed=False):
            self._unfinished.append(delivery)  # or a sender would take it over and send it again

    async def _attempt(self, delivery: Delivery) -> tuple[int, float | None]:
        """One POST: (status, Retry-After seconds). Raises WebhookRefused, httpx.HTTPError, OSError."""
        target = await self._loop.run_in_executor(self._check_pool, self.policy.check, delivery.url)
        sent_at = time.time()
        body, timestamp = delivery.body(sent_at), str(int(sent_at))
        headers = {"Content-Type": "application/json", "X-Repaint-Event": delivery.event,
                   "X-Repaint-Signature": sign(body, self.policy.secret), "webhook-id": delivery.delivery_id,
                   "webhook-timestamp": timestamp,
                   "webhook-signature": standard_signature(delivery.delivery_id, timestamp, body, self.policy.secret),
                   "Host": target.host_header, "User-Agent": "repaint-server-webhooks"}
        error: Exception | None = None
        for address in target.addresses:  # the checked addresses, in the resolver's order
            try:
                return await self._post(target, address, body, headers)
            except httpx.ConnectError as exc:
                error = exc
        raise error if error is not None else httpx.ConnectError("no address")

    async def _post(self, target: Target, address: str, body: bytes, headers: dict) -> tuple[int, float | None]:
        if self._client is None:
            self._client = httpx.AsyncClient(
                follow_redirects=False, trust_env=False, timeout=self.timeout,
                # A fresh connection per delivery: a pooled TLS connection to one address must
                # not carry a request for another name served there.
                limits=httpx.Limits(max_keepalive_connections=0))
        async with self._client.stream("POST", target.url_for(address), content=body, headers=headers,
                                       extensions={"sni_hostname": target.host}) as response:
            read = 0
            async for chunk in response.aiter_raw():  # the body is not needed: read a little, at most
                read += len(chunk)
                if read >= self.max_response_bytes:
                    break
            return response.status_code, parse_retry_after(response.headers.get("retry-after", ""))

    def _report(self, delivery: Delivery, state: str, status: int | None, error: str | None) -> None:
        if self.record_state is None:
            return
        record = {"event": delivery.event, "state": state, "last_status": status, "attempts": delivery.attempts,
                  "error": error, "at": time.time(), "delivery_id": delivery.delivery_id}

        def write() -> None:
            try:
                self.record_state(delivery.job_id, record)
            except Exception as exc:  # best effort: Redis may be away; the delivery itself went on
                log.info("could not record the webhook state of job %s: %s", delivery.job_id, exc)

        self._state_pool.submit(write)
