"""Webhooks: the address policy (no SSRF) and the sender (per-host queues, retries, limits),
against real HTTP receivers on this machine. Names that must resolve somewhere chosen by the
test use an injected resolver: the system resolver cannot be pointed at will."""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import json
import logging
import os
import ssl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import httpx
import pytest
from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.procs import ROOT, free_port, wait_until
from worker import jobs
from worker.webhooks import (PROGRESS_INTERVAL, Delivery, PendingStore, ProgressThrottle, RetryPolicy, WebhookSender,
                             certificate_rejected, parse_retry_after, standard_secret)
from worker.webhooks_policy import WebhookPolicy, WebhookRefused, forbidden_reason, sign

SECRET = "a-webhook-secret-of-some-length"
ALL_EVENTS = {"events": ["started", "progress", "completed"]}
FAST_RETRY = RetryPolicy(max_attempts=3, window=30, base=0.05, cap=0.2)


# ---- the policy ----------------------------------------------------------------------------------

@pytest.mark.parametrize("url, reason", [
    ("http://169.254.169.254/latest/meta-data", "link-local"),   # cloud metadata
    ("http://127.0.0.1:6379/", "loopback"),                       # Redis
    ("http://[::1]:6379/", "loopback"),
    ("http://10.0.0.1/", "private"),
    ("http://172.16.5.4/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://[fd00::1]/", "unique-local"),
    ("http://[fe80::1]/", "link-local"),
    ("http://224.0.0.1/", "multicast"),
    ("http://[ff02::1]/", "multicast"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://240.0.0.1/", "reserved"),
    ("http://[::ffff:127.0.0.1]/", "loopback"),                   # IPv4-mapped
    ("http://100.64.0.1/", "non-public"),                         # carrier-grade NAT
    ("http://2130706433/", "loopback"),                           # 127.0.0.1 as one number
    ("http://localhost:8080/", "loopback"),
])
def test_any_public_host_refuses_every_non_public_address_class(url, reason):
    with pytest.raises(WebhookRefused) as refused:
        WebhookPolicy(["*"], SECRET).check(url)
    host = urlsplit(url).hostname
    if host[0].isdigit() and "." in host or ":" in host:  # an address the client wrote: its class is named
        assert f"a {reason} address" in str(refused.value)
    else:  # a name: what it resolved to stays on the server
        assert "resolves to a non-public address" in str(refused.value) and "127.0.0.1" not in str(refused.value)
    assert forbidden_reason(WebhookPolicy(["*"], SECRET).resolve(host, 80)[0]) == reason


def test_any_public_host_allows_public_addresses_and_keeps_what_it_checked():
    target = WebhookPolicy(["*"], SECRET).check("https://93.184.216.34:8443/hook?x=1")
    assert target.addresses == ("93.184.216.34",) and target.port == 8443 and target.path == "/hook?x=1"
    assert target.url_for("93.184.216.34") == "https://93.184.216.34:8443/hook?x=1"


def test_a_name_with_one_private_address_among_public_ones_is_refused():
    policy = WebhookPolicy(["*"], SECRET, resolve=lambda host, port: ["93.184.216.34", "10.1.2.3"])
    with pytest.raises(WebhookRefused, match="mixed.example resolves to a non-public address"):
        policy.check("http://mixed.example/")


def test_listed_hosts_are_exact_about_ports_and_may_be_internal():
    policy = WebhookPolicy(["127.0.0.1:8080", "hooks.internal", "[::1]:9000"], SECRET,
                           resolve=lambda host, port: ["10.0.0.7"] if host == "hooks.internal" else [host])
    assert policy.check("http://127.0.0.1:8080/x").addresses == ("127.0.0.1",)
    assert policy.check("http://hooks.internal/x").addresses == ("10.0.0.7",)   # port 80
    assert policy.check("https://hooks.internal/x").port == 443                 # port 443
    assert policy.check("http://[::1]:9000/").addresses == ("::1",)
    for url in ("http://127.0.0.1:8081/x", "https://127.0.0.1/x", "http://hooks.internal:8080/x",
                "http://[::1]:9001/", "http://other.example/"):
        with pytest.raises(WebhookRefused, match="not an allowed host"):
            policy.check(url)


@pytest.mark.parametrize("url, fragment", [
    ("http://[::1", "not a valid URL"),
    ("http://[::1]:x/", "not a valid URL"),
    ("ftp://example.com/x", "http:// or https://"),
    ("http:///nohost", "http:// or https://"),
    ("http://user:pw@example.com/", "credentials"),
    ("http://example.com:99999/", "not a valid URL"),
    ("http://does-not-exist.invalid/", "does not resolve"),
])
def test_malformed_or_unresolvable_urls_are_refused(url, fragment):
    with pytest.raises(WebhookRefused, match=fragment):
        WebhookPolicy(["*"], SECRET).check(url)


def test_webhooks_are_off_without_a_secret_and_never_sign_with_an_empty_one():
    policy = WebhookPolicy(["*"], "")
    assert not policy.enabled and "REPAINT_WEBHOOK_SECRET" in policy.disabled_reason
    assert not WebhookPolicy([], SECRET).enabled
    with pytest.raises(ValueError):
        sign(b"{}", "")


def test_public_addresses_are_public_and_odd_ranges_are_not():
    assert forbidden_reason("8.8.8.8") is None and forbidden_reason("2001:4860:4860::8888") is None
    for address in ("192.0.0.8", "fec0::1", "64:ff9b::a00:1", "2002:7f00:1::"):  # NAT64 / 6to4 of internal ones
        assert forbidden_reason(address) is not None, address


@pytest.mark.parametrize("entry", ["*:8080", "host:0", "host:70000", "host:x"])
def test_malformed_allow_list_entries_stop_the_service_at_start(entry):
    with pytest.raises(ValueError, match="REPAINT_WEBHOOK_ALLOWED_HOSTS"):
        WebhookPolicy([entry], SECRET)


def test_international_names_are_matched_and_sent_in_their_ascii_form(receivers):
    receiver = receivers()
    seen = []
    policy = WebhookPolicy([f"b\u00fccher.test:{receiver.port}"], SECRET,
                           resolve=lambda host, port: seen.append(host) or ["127.0.0.1"])
    target = policy.check(f"http://B\u00dcCHER.test:{receiver.port}/x")
    assert target.host == seen[0] == "xn--bcher-kva.test" and target.host_header.startswith("xn--bcher-kva.test")


# ---- receivers -----------------------------------------------------------------------------------

class Receiver:
    """An HTTP server on 127.0.0.1 answering with `respond(handler, event) -> status`."""

    def __init__(self, respond=lambda handler, event: 204):
        self.calls: list[dict] = []
        self.respond = respond
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                event = json.loads(body)
                receiver.calls.append({"at": time.monotonic(), "headers": dict(self.headers), "body": body,
                                       "event": event})
                status = receiver.respond(self, event)
                if status is not None:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, host: str = "127.0.0.1", path: str = "/hook") -> str:
        return f"http://{host}:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def receivers():
    made: list[Receiver] = []

    def make(respond=lambda handler, event: 204) -> Receiver:
        made.append(Receiver(respond))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


class States:
    """What the sender reports per job (the worker writes it to the job record)."""

    def __init__(self):
        self.by_job: dict[str, list[dict]] = {}

    def __call__(self, job_id: str, state: dict) -> None:
        self.by_job.setdefault(job_id, []).append(state)

    def last(self, job_id: str) -> dict | None:
        return (self.by_job.get(job_id) or [None])[-1]

    def final(self, job_id: str, timeout: float = 10) -> dict:
        return wait_until(lambda: (s := self.last(job_id)) and s["state"] != "retrying" and s, timeout,
                          f"a final webhook state of {job_id}")


def sender_for(*listed: str, resolve=None, **kwargs) -> tuple[WebhookSender, States]:
    states = States()
    policy = WebhookPolicy(list(listed), SECRET, **({"resolve": resolve} if resolve else {}))
    kwargs.setdefault("retry", FAST_RETRY)
    return WebhookSender(policy, states, **kwargs), states


def listed(receiver: Receiver) -> str:
    return f"127.0.0.1:{receiver.port}"


def verified_standard(call: dict, tolerance: float = 300) -> str:
    """A receiver's check of the Standard Webhooks headers, as docs/security.md says: the key is
    REPAINT_WEBHOOK_SECRET's UTF-8 bytes (what a library gets from `whsec_` + their base64), the
    signed content `<webhook-id>.<webhook-timestamp>.<raw body>`. Returns the verified delivery id."""
    headers = {name.lower(): value for name, value in call["headers"].items()}
    delivery_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
    assert abs(time.time() - int(timestamp)) < tolerance  # a replayed old call is refused
    key = base64.b64decode(standard_secret(SECRET).removeprefix("whsec_"))
    assert key == SECRET.encode()
    signed = f"{delivery_id}.{timestamp}.".encode() + call["body"]
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    given = [s.split(",", 1)[1] for s in headers["webhook-signature"].split() if s.startswith("v1,")]
    assert any(hmac.compare_digest(expected, s) for s in given), headers
    assert json.loads(call["body"])["delivery_id"] == delivery_id
    return delivery_id


# ---- the sender ----------------------------------------------------------------------------------

def test_deliveries_are_signed_and_go_to_the_checked_address_with_the_name_kept(receivers):
    receiver = receivers()
    lookups = []

    def resolve(host, port):
        lookups.append(host)
        return ["127.0.0.1"]

    # "hooks.test" does not resolve on this machine: only a connection to the checked address works.
    sender, states = sender_for(f"hooks.test:{receiver.port}", resolve=resolve)
    hook = {"url": receiver.url("hooks.test"), **ALL_EVENTS}
    sender.notify(hook, "job-1", "started", {"status": "running"})
    sender.notify(hook, "job-1", "completed", {"status": "succeeded"})
    assert sender.close(10)
    assert [c["event"]["event"] for c in receiver.calls] == ["started", "completed"]
    for call in receiver.calls:
        expected = "sha256=" + hmac.new(SECRET.encode(), call["body"], hashlib.sha256).hexdigest()
        assert call["headers"]["X-Repaint-Signature"] == expected
        assert verified_standard(call) == call["event"]["delivery_id"]
        assert call["headers"]["Host"] == f"hooks.test:{receiver.port}" and call["event"]["job_id"] == "job-1"
    assert lookups == ["hooks.test", "hooks.test"]  # one check per attempt, nothing resolved behind it
    started, completed = (call["event"]["delivery_id"] for call in receiver.calls)
    assert started != completed  # one id per event
    assert states.final("job-1") | {"at": 0} == {"event": "completed", "state": "delivered", "last_status": 204,
                                                  "attempts": 1, "error": None, "at": 0, "delivery_id": completed}


def test_a_name_that_resolves_to_a_forbidden_address_at_delivery_is_refused(receivers):
    receiver = receivers()
    # Accepted when the job was submitted (public then), loopback now: DNS rebinding.
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])
    sender, states = sender_for("*", resolve=lambda host, port: next(answers))
    sender.policy.check(receiver.url("rebind.test"))  # the API's check at submit
    sender.notify({"url": receiver.url("rebind.test"), **ALL_EVENTS}, "job-2", "completed", {})
    state = states.final("job-2")
    assert state["state"] == "refused" and "non-public" in state["error"] and state["last_status"] is None
    assert receiver.calls == []


def test_ports_are_respected_at_delivery(receivers):
    allowed, other = receivers(), receivers()
    sender, states = sender_for(listed(allowed))
    sender.notify({"url": other.url(), **ALL_EVENTS}, "job-3", "completed", {})
    assert states.final("job-3")["state"] == "refused" and other.calls == []


def test_redirects_are_not_followed(receivers):
    target = receivers()

    def redirect(handler, event):
        handler.send_response(302)
        handler.send_header("Location", target.url())
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    redirecting = receivers(redirect)
    sender, states = sender_for(listed(redirecting), listed(target))
    sender.notify({"url": redirecting.url(), **ALL_EVENTS}, "job-4", "completed", {})
    state = states.final("job-4")
    assert state == {**state, "state": "failed", "last_status": 302, "attempts": 1}  # not retried either
    assert len(redirecting.calls) == 1 and target.calls == []


def test_failures_are_retried_with_backoff_then_given_up(receivers):
    flaky_answers = iter([503, 204])
    flaky = receivers(lambda handler, event: next(flaky_answers))
    dead = receivers(lambda handler, event: 500)
    sender, states = sender_for(listed(flaky), listed(dead))
    sender.notify({"url": flaky.url(), **ALL_EVENTS}, "flaky", "completed", {})
    sender.notify({"url": dead.url(), **ALL_EVENTS}, "dead", "completed", {})
    delivered = states.final("flaky")
    retried = {call["headers"]["webhook-id"] for call in flaky.calls}
    assert len(flaky.calls) == 2 and len(retried) == 1  # every attempt of one event has one id
    assert delivered | {"at": 0} == {"event": "completed", "state": "delivered", "last_status": 204,
                                     "attempts": 2, "error": None, "at": 0, "delivery_id": retried.pop()}
    given_up = states.final("dead")
    assert given_up["state"] == "failed" and given_up["attempts"] == FAST_RETRY.max_attempts == len(dead.calls)
    assert given_up["last_status"] == 500 and [s["state"] for s in states.by_job["dead"]] == [
        "retrying", "retrying", "failed"]
    gaps = [b["at"] - a["at"] for a, b in zip(dead.calls, dead.calls[1:])]
    assert all(gap >= 0.02 for gap in gaps)  # backoff: at least half of each (jittered) delay


def test_retries_stop_at_the_time_window(receivers):
    dead = receivers(lambda handler, event: 503)
    sender, states = sender_for(listed(dead), retry=RetryPolicy(max_attempts=100, window=0.5, base=0.2, cap=0.2))
    sender.notify({"url": dead.url(), **ALL_EVENTS}, "job-5", "completed", {})
    state = states.final("job-5")
    assert state["state"] == "failed" and 2 <= state["attempts"] <= 6


def test_client_errors_and_progress_are_not_retried(receivers):
    gone = receivers(lambda handler, event: 410)
    down = receivers(lambda handler, event: 503)
    sender, states = sender_for(listed(gone), listed(down))
    sender.notify({"url": gone.url(), **ALL_EVENTS}, "job-6", "completed", {})
    sender.notify({"url": down.url(), **ALL_EVENTS}, "job-7", "progress", {"step": 1})
    assert states.final("job-6")["attempts"] == 1 and states.final("job-7")["attempts"] == 1
    assert len(gone.calls) == 1 and len(down.calls) == 1


def test_a_slow_host_delays_only_its_own_deliveries(receivers):
    release = threading.Event()

    def stall(handler, event):
        release.wait(10)
        return 204

    slow, fast = receivers(stall), receivers()
    sender, states = sender_for(listed(slow), listed(fast), timeout=15)
    for i in range(3):
        sender.notify({"url": slow.url(), **ALL_EVENTS}, f"slow-{i}", "completed", {})
    wait_until(lambda: slow.calls, 5, "the slow host to be called")
    sent = time.monotonic()
    sender.notify({"url": fast.url(), **ALL_EVENTS}, "fast", "completed", {})
    wait_until(lambda: fast.calls, 5, "the fast host's delivery")
    assert fast.calls[0]["at"] - sent < 2 and len(slow.calls) == 1  # the slow host is still on its first
    release.set()
    assert sender.close(15) and len(slow.calls) == 3


def test_a_host_that_never_answers_times_out(receivers):
    silent = receivers(lambda handler, event: time.sleep(5))
    sender, states = sender_for(listed(silent), timeout=0.5, retry=RetryPolicy(max_attempts=1))
    started = time.monotonic()
    sender.notify({"url": silent.url(), **ALL_EVENTS}, "job-8", "completed", {})
    state = states.final("job-8")
    assert state["state"] == "failed" and "Timeout" in state["error"] and time.monotonic() - started < 4


def test_the_response_read_is_capped(receivers):
    broken_pipe = threading.Event()

    def flood(handler, event):
        handler.send_response(200)
        handler.send_header("Content-Length", str(200 * 2**20))
        handler.end_headers()
        try:
            for _ in range(200 * 16):
                handler.wfile.write(b"x" * 65536)
        except OSError:
            broken_pipe.set()  # the sender hung up after its cap

    flooding = receivers(flood)
    sender, states = sender_for(listed(flooding), max_response_bytes=64 * 1024)
    sender.notify({"url": flooding.url(), **ALL_EVENTS}, "job-9", "completed", {})
    assert states.final("job-9")["state"] == "delivered"
    assert broken_pipe.wait(10)


def test_progress_is_throttled_and_coalesced_and_the_throttle_stays_small(receivers):
    receiver = receivers()
    sender, states = sender_for(listed(receiver))
    hook = {"url": receiver.url(), **ALL_EVENTS}
    for step in range(50):
        sender.notify(hook, "job-10", "progress", {"step": step})
    assert sender.close(5)
    assert [c["event"]["data"]["step"] for c in receiver.calls] == [0]  # the rest within the interval
    # A job not subscribed to "completed" still leaves the throttle when it ends.
    sender.notify({"url": receiver.url(), "events": ["progress"]}, "job-11", "progress", {"step": 1})
    assert "job-11" in sender.throttle._last
    sender.notify({"url": receiver.url(), "events": ["progress"]}, "job-11", "completed", {})
    assert "job-11" not in sender.throttle._last
    throttle = ProgressThrottle(interval=0.01)
    for i in range(2000):
        throttle.allow(f"job-{i}")
        if i % 500 == 0:
            time.sleep(PROGRESS_INTERVAL / 10)
    assert len(throttle) < 1000


def test_a_full_host_queue_drops_progress_first_and_reports_what_it_drops(receivers):
    release = threading.Event()
    receiver = receivers(lambda handler, event: release.wait(10) and 204)
    sender, states = sender_for(listed(receiver), max_per_host=2, timeout=15)
    hook = {"url": receiver.url(), **ALL_EVENTS}
    sender.notify(hook, "busy", "completed", {})           # in flight, holding the host
    wait_until(lambda: receiver.calls, 5, "the first delivery")
    sender.notify(hook, "p", "progress", {"step": 1})      # queued
    sender.notify(hook, "a", "completed", {})              # queued: the queue is full
    sender.notify(hook, "b", "completed", {})              # the progress makes room
    sender.notify(hook, "c", "completed", {})              # nothing to drop: c is dropped
    assert wait_until(lambda: states.last("c"), 5, "c's state")["state"] == "dropped"
    release.set()
    assert sender.close(15)
    assert [c["event"]["job_id"] for c in receiver.calls] == ["busy", "a", "b"]


def test_disabled_webhooks_send_nothing(receivers):
    receiver = receivers()
    states = States()
    sender = WebhookSender(WebhookPolicy([listed(receiver)], ""), states)
    sender.notify({"url": receiver.url(), **ALL_EVENTS}, "job-12", "completed", {})
    assert sender.close(5) and receiver.calls == [] and states.by_job == {}


def test_a_strange_answer_costs_one_delivery_never_the_host_queue(receivers):
    answers = iter([("503", "\u00b2"), ("204", None), ("204", None)])  # a Retry-After that is a digit only to Unicode

    def respond(handler, event):
        status, retry_after = next(answers)
        handler.send_response(int(status))
        if retry_after:
            handler.send_header("Retry-After", retry_after.encode("utf-8").decode("latin-1"))
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    receiver = receivers(respond)
    sender, states = sender_for(listed(receiver))
    sender.notify({"url": receiver.url(), **ALL_EVENTS}, "job-13", "completed", {})
    sender.notify({"url": receiver.url(), **ALL_EVENTS}, "job-14", "completed", {})
    assert sender.close(10)
    assert states.final("job-13")["state"] == "delivered" and states.final("job-13")["attempts"] == 2, states.by_job
    assert states.final("job-14")["state"] == "delivered"


def test_a_name_that_stops_resolving_is_retried_not_refused(receivers):
    receiver = receivers()
    answers = iter([OSError("temporary failure in name resolution"), ["127.0.0.1"]])

    def resolve(host, port):
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    sender, states = sender_for(f"hooks.test:{receiver.port}", resolve=resolve)
    sender.notify({"url": receiver.url("hooks.test"), **ALL_EVENTS}, "job-15", "completed", {})
    state = states.final("job-15")
    assert state["state"] == "delivered" and state["attempts"] == 2
    assert states.by_job["job-15"][0]["error"] == "hooks.test does not resolve"  # the details stay in the log


def test_a_rejected_certificate_is_not_retried():
    cause = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    try:
        try:
            raise cause
        except ssl.SSLError as exc:
            raise httpx.ConnectError("TLS handshake failed") from exc
    except httpx.ConnectError as wrapped:
        assert certificate_rejected(wrapped)
    assert not certificate_rejected(httpx.ConnectError("connection refused"))
    assert parse_retry_after("\u00b2") is None and parse_retry_after(" 7 ") == 7.0


# ---- deliveries kept in Redis: restarts, takeovers, delivery ids -----------------------------------

STORED_RETRY = RetryPolicy(max_attempts=3, window=30, base=0.05, cap=0.2, lease=0.6, poll=0.05)


@pytest.fixture()
def stored_senders(redis_db):
    """Senders that keep their deliveries in the test's Redis; closed (taking nothing over) after."""
    made: list[WebhookSender] = []

    def make(*allowed: str, states: States | None = None, retry: RetryPolicy = STORED_RETRY, **kwargs):
        states = states or States()
        made.append(WebhookSender(WebhookPolicy(list(allowed), SECRET), states, redis=redis_db, retry=retry,
                                  **kwargs))
        return made[-1], states

    yield make
    for sender in made:
        sender.close(5)


def pending_ids(redis: Redis) -> list[str]:
    return [i.decode() for i in redis.zrange(jobs.webhook_due_key(), 0, -1)]


# A worker's sender in its own process: the test SIGKILLs it while its delivery waits for a retry.
SENDER_PROCESS = """
import sys, time
from redis import Redis
from worker.webhooks import RetryPolicy, WebhookSender
from worker.webhooks_policy import WebhookPolicy
redis_port, url, allowed, secret = sys.argv[1:]
retry = RetryPolicy(max_attempts=5, window=30, base=2, cap=2, lease=0.6, poll=0.05)
sender = WebhookSender(WebhookPolicy([allowed], secret), redis=Redis(port=int(redis_port)), retry=retry)
sender.notify({"url": url, "events": ["completed"]}, "job-restart", "completed", {"status": "succeeded"})
time.sleep(60)
"""


def test_a_pending_delivery_outlives_its_killed_sender_and_keeps_its_id(receivers, redis_server, redis_db,
                                                                           stored_senders):
    down = threading.Event()
    down.set()
    receiver = receivers(lambda handler, event: 503 if down.is_set() else 204)
    proc = subprocess.Popen([sys.executable, "-c", SENDER_PROCESS, str(redis_server.port), receiver.url(),
                             listed(receiver), SECRET], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        def failed_once():
            ids = pending_ids(redis_db)
            attempts = ids and redis_db.hget(jobs.webhook_delivery_key(ids[0]), "attempts")
            return attempts == b"1" and ids[0]

        delivery_id = wait_until(failed_once, 15, "a first attempt that failed, kept in Redis")
    finally:
        proc.kill()  # a worker dies: no goodbye, the retry it waits for is not made
        proc.wait()
    key = jobs.webhook_delivery_key(delivery_id)
    pending = {k.decode(): v.decode() for k, v in redis_db.hgetall(key).items()}
    assert pending | {"owner": "", "first_at": "", "due_at": ""} == {
        "url": receiver.url(), "job_id": "job-restart", "event": "completed", "data": '{"status":"succeeded"}',
        "attempts": "1", "owner": "", "first_at": "", "due_at": ""}
    assert float(pending["first_at"]) < float(pending["due_at"])
    assert 0 < redis_db.ttl(key) <= RetryPolicy(window=30, lease=0.6).record_ttl
    assert verified_standard(receiver.calls[0]) == delivery_id

    down.clear()  # the receiver recovers; a restarted worker's sender on the same Redis carries on
    sender, states = stored_senders(listed(receiver))
    state = states.final("job-restart", 15)
    assert state | {"at": 0} == {"event": "completed", "state": "delivered", "last_status": 204,
                                 "attempts": len(receiver.calls), "error": None, "at": 0, "delivery_id": delivery_id}
    assert len(receiver.calls) >= 2 and {verified_standard(call) for call in receiver.calls} == {delivery_id}
    assert [call["event"]["data"] for call in receiver.calls] == [{"status": "succeeded"}] * len(receiver.calls)
    # The final state is reported before the record goes: a closed sender has finished both.
    assert sender.close(10)
    assert redis_db.exists(key) == 0 and pending_ids(redis_db) == []  # delivered: forgotten


def test_two_live_senders_never_both_send_one_pending_delivery(receivers, redis_db, stored_senders, caplog):
    caplog.set_level(logging.INFO, logger="worker.webhooks")
    first_call = threading.Event()

    def respond(handler, event):
        # The first attempt outlasts a lease (0.6 s): its holder must renew its claim meanwhile.
        slow = not first_call.is_set()
        first_call.set()
        time.sleep(1.5 if slow else 0.05)
        return 204

    receiver = receivers(respond)
    # Accepted by a sender that died at once: nobody holds them once its lease ends.
    orphans = [Delivery(receiver.url(), f"orphan-{i}", "completed", {"status": "succeeded"}) for i in range(10)]
    dead = PendingStore(redis_db, RetryPolicy(lease=0.1), owner="a-dead-sender")
    for delivery in orphans:
        dead.add(delivery)
    states = States()
    senders = [stored_senders(listed(receiver), states=states)[0] for _ in range(2)]
    for delivery in orphans:
        assert states.final(delivery.job_id, 15)["delivery_id"] == delivery.delivery_id
    # A second send would have been claimed before its record went (at delivery): closed senders
    # have finished whatever they had claimed, so every send there was to be is counted below.
    assert all(sender.close(10) for sender in senders)
    sent = collections.Counter(verified_standard(call) for call in receiver.calls)
    assert sent == {delivery.delivery_id: 1 for delivery in orphans}
    assert not [r for r in caplog.records if "taken over by another sender" in r.getMessage()]  # none changed hands
    assert pending_ids(redis_db) == [] and not list(redis_db.scan_iter(jobs.webhook_delivery_key("*")))


def test_a_claim_is_taken_by_one_sender_and_taken_over_only_once_it_lapses(redis_db):
    dead = PendingStore(redis_db, RetryPolicy(lease=0.01), owner="dead")
    for i in range(50):
        dead.add(Delivery("http://h.test/x", f"job-{i}", "completed", {}))
    time.sleep(0.05)  # the dead sender's claims (0.01 s) lapse: time itself is the condition
    retry = RetryPolicy(lease=0.5)
    stores = [PendingStore(redis_db, retry, owner=f"live-{k}") for k in range(3)]
    seen = [store.due_ids(limit=100) for store in stores]  # all three see every one due, then race
    assert all(len(ids) == 50 for ids in seen)
    claimed = [store.claim(ids) for store, ids in zip(stores, seen)]
    holder, other, third = stores
    held = claimed[0]
    assert len(held) == 50 and claimed[1:] == [[], []]  # the first claim wins; nobody sends them twice
    assert holder.hold(held) == [True] * 50
    assert other.claim_due() == [] and other.hold(held[:1]) == [False]  # held: not due, and not the other's
    time.sleep(retry.lease + 0.05)  # the holder stops renewing: its claims lapse
    assert len(other.claim_due(limit=100)) == 50 and third.claim(seen[2]) == []  # taken over, once
    assert holder.hold(held[:1]) == [False]  # and the old holder leaves them alone
    assert 0 < redis_db.ttl(jobs.webhook_delivery_key(held[0].delivery_id)) <= retry.record_ttl


def test_a_stored_delivery_is_written_when_accepted_and_forgotten_when_given_up(receivers, redis_db,
                                                                                stored_senders):
    release = threading.Event()
    receiver = receivers(lambda handler, event: release.wait(10) and 410)
    sender, states = stored_senders(listed(receiver), timeout=15)
    hook = {"url": receiver.url(), **ALL_EVENTS}
    sender.notify(hook, "job-16", "completed", {})
    sender.notify(hook, "job-16", "progress", {"step": 1})  # best effort: never kept
    [delivery_id] = pending_ids(redis_db)  # written by notify itself, before any attempt
    assert redis_db.hget(jobs.webhook_delivery_key(delivery_id), "owner").decode() == sender.store.owner
    release.set()
    assert states.final("job-16")["state"] == "failed" and sender.close(10)
    assert pending_ids(redis_db) == [] and redis_db.exists(jobs.webhook_delivery_key(delivery_id)) == 0


def test_without_redis_deliveries_are_kept_in_memory_and_the_outage_logged_once(receivers, caplog):
    receiver = receivers()
    unreachable = Redis(port=free_port(), retry=Retry(NoBackoff(), 0))  # refused at once, not after retries
    sender, states = sender_for(listed(receiver), redis=unreachable)
    for i in range(3):
        sender.notify({"url": receiver.url(), **ALL_EVENTS}, f"job-m{i}", "completed", {})
    assert sender.close(10) and len(receiver.calls) == 3
    assert all(states.final(f"job-m{i}")["state"] == "delivered" for i in range(3))
    assert sum("kept in memory only" in r.getMessage() for r in caplog.records) == 1
