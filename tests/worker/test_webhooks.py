"""Webhooks: the address policy (no SSRF) and the sender (per-host queues, retries, limits),
against real HTTP receivers on this machine. Names that must resolve somewhere chosen by the
test use an injected resolver: the system resolver cannot be pointed at will."""

from __future__ import annotations

import hashlib
import hmac
import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import httpx
import pytest

from tests.procs import wait_until
from worker.webhooks import (PROGRESS_INTERVAL, ProgressThrottle, RetryPolicy, WebhookSender, certificate_rejected,
                             parse_retry_after)
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
        assert call["headers"]["Host"] == f"hooks.test:{receiver.port}" and call["event"]["job_id"] == "job-1"
    assert lookups == ["hooks.test", "hooks.test"]  # one check per attempt, nothing resolved behind it
    assert states.final("job-1") | {"at": 0} == {"event": "completed", "state": "delivered", "last_status": 204,
                                                  "attempts": 1, "error": None, "at": 0}


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
    assert states.final("flaky") | {"at": 0} == {"event": "completed", "state": "delivered", "last_status": 204,
                                                  "attempts": 2, "error": None, "at": 0}
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
