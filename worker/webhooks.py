"""Webhooks: job events POSTed to a client's URL, signed, throttled and retried, off the hot loop.

Bodies are JSON `{"event", "job_id", "data", "sent_at"}`, signed with HMAC-SHA256 of the raw
body under REPAINT_WEBHOOK_SECRET in the header `X-Repaint-Signature: sha256=<hex>`.

Delivery (one asyncio loop on a daemon thread, so `notify` never blocks the sampler):
- one queue per `scheme://host:port`, delivered in order by its own task: a slow or dead host
  delays only its own deliveries;
- every attempt re-checks the URL (`WebhookPolicy.check`, which resolves the name) and connects
  to an address that check allowed, with the name kept for the Host header and TLS (SNI and
  certificate); no redirects, no proxies from the environment, no connection reuse, a time
  limit on the whole attempt and a cap on the response read;
- `progress` is throttled per job, coalesced while queued and tried once (the next one
  supersedes it); other events are retried on a connection error, a timeout, 408, 429 or 5xx,
  with exponential backoff and jitter, until `RetryPolicy.max_attempts` or its time window;
- each outcome is reported to `record_state(job_id, state)` (the worker writes it to the job
  record through the ledger: `webhook` on GET /jobs/<id>).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import random
import re
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlsplit

import httpx

from .webhooks_policy import DEFAULT_PORTS, EVENTS, Target, WebhookPolicy, WebhookRefused, WebhookUnresolvable, sign

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 0.5  # seconds between progress deliveries to one job's hook
RETRYABLE_STATUSES = {408, 425, 429}  # and every 5xx

StateRecorder = Callable[[str, dict], None]


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded in attempts and in time."""

    max_attempts: int = 6
    window: float = 600.0     # seconds from the first attempt after which no retry starts
    base: float = 1.0         # first delay, doubled per attempt
    cap: float = 120.0        # longest delay

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds before attempt `attempt + 1`: half fixed, half random (so that many clients
        failed by one outage do not retry in step), at least the server's Retry-After."""
        ceiling = min(self.cap, self.base * 2 ** (attempt - 1))
        wait = ceiling / 2 + random.uniform(0, ceiling / 2)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.cap))
        return wait


@dataclass
class Delivery:
    url: str
    job_id: str
    event: str
    data: dict
    queued_at: float = field(default_factory=time.monotonic)


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
    """Queues, delivers and reports webhook calls; `notify` and `close` are thread-safe."""

    def __init__(self, policy: WebhookPolicy, record_state: StateRecorder | None = None, *,
                 retry: RetryPolicy = RetryPolicy(), timeout: float = 10.0, max_response_bytes: int = 64 * 1024,
                 max_per_host: int = 1000):
        self.policy = policy
        self.record_state = record_state
        self.retry, self.timeout = retry, timeout
        self.max_response_bytes, self.max_per_host = max_response_bytes, max_per_host
        self.throttle = ProgressThrottle()
        self._hosts: dict[str, _HostQueue] = {}  # touched only on the loop's thread
        # State writes and DNS lookups block: they run beside the loop, not on it.
        self._state_pool = ThreadPoolExecutor(1, thread_name_prefix="webhook-state")
        self._check_pool = ThreadPoolExecutor(8, thread_name_prefix="webhook-check")
        self._loop = asyncio.new_event_loop()
        self._client: httpx.AsyncClient | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="webhooks", daemon=True)
        self._thread.start()

    # ---- the caller's side (any thread) --------------------------------------------------------

    def notify(self, hook: dict | None, job_id: str, event: str, data: dict) -> None:
        if event != "progress":
            self.throttle.forget(job_id)  # the job's last progress, whether or not it is subscribed
        if not hook or event not in hook.get("events", EVENTS) or not self.policy.enabled:
            return
        if event == "progress" and not self.throttle.allow(job_id):
            return
        self._loop.call_soon_threadsafe(self._enqueue, Delivery(hook["url"], job_id, event, data))

    def close(self, timeout: float = 5.0) -> bool:
        """Wait up to `timeout` seconds for queued deliveries (a worker's shutdown); True if all went."""
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

    # ---- the loop's side -----------------------------------------------------------------------

    def _enqueue(self, delivery: Delivery) -> None:
        key = queue_key(delivery.url)
        queue = self._hosts.setdefault(key, _HostQueue())
        if delivery.event == "progress":
            for waiting in queue.pending:
                if waiting.job_id == delivery.job_id and waiting.event == "progress":
                    waiting.data = delivery.data  # the newest progress replaces a queued one
                    return
        if len(queue.pending) >= self.max_per_host:
            progress = next((d for d in queue.pending if d.event == "progress"), None)
            if progress is not None:
                queue.pending.remove(progress)
            else:
                log.warning("webhook queue of %s is full: %s event of job %s dropped", key, delivery.event,
                            delivery.job_id)
                self._report(delivery, "dropped", None, 0, f"the queue of {key} is full")
                return
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
                    self._report(delivery, "failed", None, 1, f"internal error: {type(exc).__name__}")
        finally:
            queue.task = None
            if queue.pending:  # cancelled with work left (the loop stopping): nothing to resume
                log.warning("webhook queue of %s stopped with %d deliveries", key, len(queue.pending))
            self._hosts.pop(key, None)

    async def _drained(self) -> None:
        while self._hosts:
            await asyncio.sleep(0.05)

    async def _deliver(self, delivery: Delivery) -> None:
        tries = 1 if delivery.event == "progress" else self.retry.max_attempts
        first = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                status, retry_after = await asyncio.wait_for(self._attempt(delivery), self.timeout)
                error = None if 200 <= status < 300 else f"HTTP {status}"
            except WebhookUnresolvable as exc:  # DNS may recover: retried like a connection error
                status, retry_after, error, permanent = None, None, str(exc), False
            except WebhookRefused as exc:
                log.warning("webhook %s of job %s refused: %s", delivery.event, delivery.job_id, exc)
                self._report(delivery, "refused", None, attempt, str(exc))
                return
            except (httpx.HTTPError, OSError, asyncio.TimeoutError) as exc:
                status, retry_after = None, None
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                permanent = certificate_rejected(exc)  # retrying cannot fix a certificate
            else:
                permanent = status < 500 and status not in RETRYABLE_STATUSES
            if error is None:
                self._report(delivery, "delivered", status, attempt, None)
                return
            wait = self.retry.delay(attempt, retry_after)
            if permanent or attempt >= tries or time.monotonic() - first + wait > self.retry.window:
                log.info("webhook %s of job %s failed after %d attempt(s): %s", delivery.event, delivery.job_id,
                         attempt, error)
                self._report(delivery, "failed", status, attempt, error)
                return
            self._report(delivery, "retrying", status, attempt, error)
            await asyncio.sleep(wait)

    async def _attempt(self, delivery: Delivery) -> tuple[int, float | None]:
        """One POST: (status, Retry-After seconds). Raises WebhookRefused, httpx.HTTPError, OSError."""
        target = await self._loop.run_in_executor(self._check_pool, self.policy.check, delivery.url)
        body = json.dumps({"event": delivery.event, "job_id": delivery.job_id, "data": delivery.data,
                           "sent_at": time.time()}).encode()
        headers = {"Content-Type": "application/json", "X-Repaint-Event": delivery.event,
                   "X-Repaint-Signature": sign(body, self.policy.secret), "Host": target.host_header,
                   "User-Agent": "repaint-server-webhooks"}
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

    def _report(self, delivery: Delivery, state: str, status: int | None, attempts: int, error: str | None) -> None:
        if self.record_state is None:
            return
        record = {"event": delivery.event, "state": state, "last_status": status, "attempts": attempts,
                  "error": error, "at": time.time()}

        def write() -> None:
            try:
                self.record_state(delivery.job_id, record)
            except Exception as exc:  # best effort: Redis may be away; the delivery itself went on
                log.info("could not record the webhook state of job %s: %s", delivery.job_id, exc)

        self._state_pool.submit(write)
