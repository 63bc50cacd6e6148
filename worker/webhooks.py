"""Webhooks: job events POSTed to a client's URL, signed, throttled and retried, off the hot loop.

The API checks the URL against the operator's allow-list (REPAINT_WEBHOOK_ALLOWED_HOSTS) when
the job is submitted; the worker checks again before sending. Bodies are JSON
`{"event", "job_id", "data", "sent_at"}`, signed with HMAC-SHA256 of the raw body under
REPAINT_WEBHOOK_SECRET in the header `X-Repaint-Signature: sha256=<hex>`.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time

import httpx

from .webhooks_policy import EVENTS, host_allowed, sign

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 0.5  # seconds between progress deliveries to one job's hook


class WebhookSender:
    """A daemon thread delivering webhook calls; `notify` never blocks the sampler."""

    def __init__(self, secret: str, allowed_hosts: list[str], *, attempts: int = 4, timeout: float = 5.0):
        self.secret, self.allowed_hosts = secret, allowed_hosts
        self.attempts, self.timeout = attempts, timeout
        self._queue: queue.Queue = queue.Queue(maxsize=10_000)
        self._last_progress: dict[str, float] = {}
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
        self._thread.start()

    def notify(self, hook: dict | None, job_id: str, event: str, data: dict) -> None:
        if not hook or event not in hook.get("events", EVENTS):
            return
        if not host_allowed(hook["url"], self.allowed_hosts):
            log.warning("webhook of job %s dropped: host not allowed", job_id)
            return
        if event == "progress":
            now = time.monotonic()
            if now - self._last_progress.get(job_id, 0.0) < PROGRESS_INTERVAL:
                return
            self._last_progress[job_id] = now
        elif event == "completed":
            self._last_progress.pop(job_id, None)
        try:
            self._queue.put_nowait((hook["url"], job_id, event, data))
        except queue.Full:
            log.warning("webhook queue full: %s event of job %s dropped", event, job_id)

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout, follow_redirects=False) as client:
            while True:
                url, job_id, event, data = self._queue.get()
                body = json.dumps({"event": event, "job_id": job_id, "data": data, "sent_at": time.time()}).encode()
                headers = {"Content-Type": "application/json", "X-Repaint-Event": event,
                           "X-Repaint-Signature": sign(body, self.secret)}
                # Progress is superseded by the next one: one try. Others: retried with backoff.
                tries = 1 if event == "progress" else self.attempts
                for attempt in range(tries):
                    try:
                        response = client.post(url, content=body, headers=headers)
                        if response.status_code < 500:
                            break
                    except httpx.HTTPError as exc:
                        log.info("webhook %s for job %s failed (%s)", event, job_id, exc)
                    if attempt + 1 < tries:
                        time.sleep(0.5 * 2**attempt)
