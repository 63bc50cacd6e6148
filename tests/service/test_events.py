"""Server-Sent Events at scale, against a real Redis and a real API process: one pub/sub
connection per process whatever the number of streams, stream-entry ids, Last-Event-ID resume.

The worker's side is played by the test through the ledger (start, progress with previews,
succeed), so the events are the ones a worker writes, without a model.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from rq import Queue

from tests.conftest import face_and_mask
from service.event_hub import RESYNC, Event, Listener
from tests.procs import ApiProcess, submit, wait_until
from worker import jobs, rqside
from worker.ledger import Lease, Ledger, Outcome

STREAMS = 120
JOBS = 4
REQUEST_CONNECTIONS = 4  # the API's request pool, set small so that the bound is tight
READ_CONNECTIONS = 2     # the hub's stream-read pool


@pytest.fixture(scope="module")
def api(redis_server):
    """One API process for the module (the first test that uses it starts it: a fresh process)."""
    api = ApiProcess(redis_server.url, REPAINT_REDIS_MAX_CONNECTIONS=str(REQUEST_CONNECTIONS),
                     REPAINT_EVENTS_REDIS_CONNECTIONS=str(READ_CONNECTIONS))
    yield api
    api.stop()


@pytest.fixture()
def ledger(redis_db):
    return Ledger(redis_db, result_ttl=600)


def queued_jobs(api, count: int) -> list[str]:
    image, mask = face_and_mask()
    with api.client() as client:
        return [submit(client, image, mask, model="tiny", steps=5, jump_length=5, jump_n_sample=1)
                for _ in range(count)]


def start(ledger, redis_db, job_id: str) -> Lease:
    """Take the job, next in its queue, as a worker would: dequeued from RQ, started by the ledger."""
    queue = rqside.queue_for(redis_db, jobs.queue_name("tiny"))
    rq_job, _ = Queue.dequeue_any([queue], None, connection=redis_db, serializer=rqside.SERIALIZER)
    assert rq_job.id == job_id
    result = ledger.start(rq_job, "test-worker", lease_ttl=60)
    assert result.outcome == Outcome.OK
    return Lease(job_id, result.token)


def progress(ledger, lease: Lease, step: int, preview: bool = False) -> None:
    update = {"step": step, "total": 10, "fraction": step / 10, "eta_seconds": 1.0}
    previews = {lease.job_id: (b"png", step)} if preview else None
    assert ledger.progress([(lease, update)], previews) == [True]


def parse(text: str) -> list[dict]:
    """The events of an SSE text: {"id" (absent if none), "event", "data"}; keep-alives skipped."""
    out = []
    for block in text.split("\n\n"):
        fields = {}
        for line in block.splitlines():
            if line and not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
        if "event" in fields:
            out.append({**({"id": fields["id"]} if "id" in fields else {}), "event": fields["event"],
                        "data": json.loads(fields["data"])})
    return out


class Stream:
    """An SSE stream read on a background thread: the events so far, and the end."""

    def __init__(self, url: str, job_id: str, last_event_id: str | None = None):
        import threading

        self.events: list[dict] = []
        self.ended = threading.Event()
        self._stop = threading.Event()
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        self._thread = threading.Thread(target=self._run, args=(url, job_id, headers), daemon=True)
        self._thread.start()

    def _run(self, url, job_id, headers):
        buffer = ""
        with httpx.stream("GET", f"{url}/jobs/{job_id}/events", headers=headers,
                          timeout=httpx.Timeout(10, read=30)) as response:
            assert response.status_code == 200
            for chunk in response.iter_text():
                buffer += chunk
                *blocks, buffer = buffer.split("\n\n")
                self.events.extend(parse("\n\n".join(blocks) + "\n\n"))
                if self._stop.is_set():
                    break
        self.ended.set()

    def wait_for(self, count: int, timeout: float = 10) -> list[dict]:
        wait_until(lambda: len(self.events) >= count, timeout, f"{count} events", interval=0.02)
        return list(self.events)

    def close(self) -> None:
        """Disconnect (at the next chunk the server sends; a keep-alive at the latest)."""
        self._stop.set()


def stream_ids(redis_db, job_id: str) -> list[str]:
    return [entry_id.decode() for entry_id, _ in redis_db.xrange(jobs.events_key(job_id))]


def id_key(event_id: str) -> tuple[int, int]:
    ms, seq = event_id.split("-")
    return int(ms), int(seq)


# ---- publish, as a unit --------------------------------------------------------------------------


def test_publish_in_a_transaction_appends_to_a_capped_stream_with_a_ttl_and_notifies_with_the_id(redis_db):
    job_id = "00000000-0000-4000-8000-000000000001"
    pubsub = redis_db.pubsub()
    pubsub.subscribe(jobs.events_channel(job_id))
    assert pubsub.get_message(timeout=1)["type"] == "subscribe"
    redis_db.hset(jobs.job_key(job_id), "status", "queued")
    redis_db.expire(jobs.job_key(job_id), 3600)
    with redis_db.pipeline() as pipe:  # as the ledger's transitions: WATCH, reads, MULTI, EXEC
        pipe.watch(jobs.job_key(job_id))
        assert pipe.hget(jobs.job_key(job_id), "status") == b"queued"
        pipe.multi()
        pipe.hset(jobs.job_key(job_id), "status", "running")
        jobs.publish(pipe, job_id, "status", {"status": "running"})
        entry_id = pipe.execute()[-1].decode()
    message = json.loads(pubsub.get_message(timeout=1)["data"])
    assert message == {"id": entry_id, "event": "status", "data": {"status": "running"}}
    assert stream_ids(redis_db, job_id) == [entry_id]
    # The stream lives no longer than the record (3600 s here), however long `ttl` allows.
    assert 3500 < redis_db.ttl(jobs.events_key(job_id)) <= 3600

    # Many events through a plain pipeline: each id greater than the last, the stream capped.
    with redis_db.pipeline(transaction=False) as pipe:
        for step in range(3 * jobs.EVENTS_MAXLEN):
            jobs.publish(pipe, job_id, "progress", {"step": step})
        pipe.execute()
    ids = [json.loads(pubsub.get_message(timeout=1)["data"])["id"] for _ in range(3 * jobs.EVENTS_MAXLEN)]
    assert sorted(ids, key=id_key) == ids and len(set(ids)) == len(ids) and id_key(ids[0]) > id_key(entry_id)
    kept = stream_ids(redis_db, job_id)
    assert jobs.EVENTS_MAXLEN <= len(kept) < 2 * jobs.EVENTS_MAXLEN and kept[-1] == ids[-1]

    # Without a record (or one without a TTL), the stream lives `ttl` seconds after its last event.
    jobs.publish(redis_db, "no-record", "status", {"status": "queued"}, ttl=120)
    assert 100 < redis_db.ttl(jobs.events_key("no-record")) <= 120


# ---- the API's streams ---------------------------------------------------------------------------


async def _open_streams(url: str, job_ids: list[str], count: int, seen: dict[int, list[dict]]):
    """`count` streams over the jobs (stream i follows job i % len(job_ids)), each read to its end
    into seen[i]."""
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(30, read=60),
                                 limits=httpx.Limits(max_connections=count + 10)) as client:
        async def one(i: int):
            async with client.stream("GET", f"/jobs/{job_ids[i % len(job_ids)]}/events") as response:
                assert response.status_code == 200
                buffer, seen[i] = "", []
                async for chunk in response.aiter_text():
                    buffer += chunk
                    *blocks, buffer = buffer.split("\n\n")
                    seen[i] += parse("\n\n".join(blocks) + "\n\n")

        await asyncio.gather(*(one(i) for i in range(count)))


async def _until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def test_many_streams_share_one_pubsub_connection_and_a_bounded_pool(api, redis_db, ledger):
    job_ids = queued_jobs(api, JOBS)  # queue positions 0, 1, 2, 3
    channels = [jobs.events_channel(j) for j in job_ids]
    before = redis_db.info("clients")["connected_clients"]
    seen: dict[int, list[dict]] = {}
    measured = {}

    async def scenario():
        t0 = time.monotonic()
        task = asyncio.ensure_future(_open_streams(api.url, job_ids, STREAMS, seen))
        await _until(lambda: len(seen) == STREAMS and all(seen.values()), 30, "every stream's first event")
        measured["opened"] = time.monotonic() - t0
        measured["during"] = redis_db.info("clients")["connected_clients"]
        measured["subscribers"] = dict(redis_db.pubsub_numsub(*channels))
        # Queue positions are read once per job for the whole process, not once per stream.
        redis_db.config_resetstat()
        await asyncio.sleep(4.5)
        measured["record_reads"] = redis_db.info("commandstats").get("cmdstat_hgetall", {}).get("calls", 0)
        # One event reaches every stream of its job; the jobs behind it are told their new position.
        lease = start(ledger, redis_db, job_ids[0])
        await _until(lambda: all(len(seen[i]) >= 2 for i in range(STREAMS)), 10, "the start and new positions")
        for job_id in reversed(job_ids[1:]):  # last first: no position changes meanwhile
            ledger.cancel(job_id)
        ledger.cancel_running(lease)
        await asyncio.wait_for(task, 30)

    asyncio.run(scenario())
    during = measured["during"]
    print(f"\nconnected_clients: {before} before, {during} with {STREAMS} streams on {JOBS} jobs "
          f"(opened in {measured['opened']:.1f} s); record reads in 4.5 s: {measured['record_reads']}")
    # One pub/sub connection, the stream-read pool, the request pool: not one per stream.
    assert during - before <= 1 + READ_CONNECTIONS + REQUEST_CONNECTIONS, (before, during)
    assert all(count == 1 for count in measured["subscribers"].values()), measured["subscribers"]
    assert measured["record_reads"] <= 3 * JOBS  # at most 3 polls in 4.5 s, one read per job each
    for i, events in seen.items():
        position = job_ids.index(job_ids[i % JOBS])
        assert events[0]["event"] == "status" and events[0]["data"]["position"] == position, events
        statuses = [(e["data"]["status"], e["data"].get("position")) for e in events if e["event"] == "status"]
        if position == 0:
            assert statuses == [("queued", 0), ("running", None), ("canceled", None)], events
        else:
            assert statuses == [("queued", position), ("queued", position - 1), ("canceled", None)], events
    # The last stream gone, the process no longer follows the jobs.
    wait_until(lambda: not any(dict(redis_db.pubsub_numsub(*channels)).values()), 10, "the hub to unsubscribe")


def test_event_ids_increase_across_status_progress_and_preview(api, redis_db, ledger):
    [job_id] = queued_jobs(api, 1)
    stream = Stream(api.url, job_id)
    first = stream.wait_for(1)[0]
    assert first["event"] == "status" and first["data"]["status"] == "queued" and "id" not in first  # no event yet
    lease = start(ledger, redis_db, job_id)
    for step in range(1, 6):
        progress(ledger, lease, step, preview=step % 2 == 0)
    assert ledger.succeed(lease, [b"result"], evaluations=10) == Outcome.OK
    stream.ended.wait(10)
    events = stream.events[1:]
    assert [e["event"] for e in events] == ["status", "progress", "progress", "preview", "progress", "progress",
                                            "preview", "progress", "progress", "status"]
    assert events[-1]["data"]["status"] == "succeeded"
    ids = [e["id"] for e in events]
    assert ids == stream_ids(redis_db, job_id)  # each event's id is its stream entry's
    assert all(id_key(a) < id_key(b) for a, b in zip(ids, ids[1:]))

    # A new stream of the finished job: its state, with the latest id.
    late = Stream(api.url, job_id)
    late.ended.wait(10)
    assert [(e["event"], e.get("id")) for e in late.events] == [("status", None), ("progress", ids[-1])]


def test_a_reconnect_with_last_event_id_gets_exactly_what_it_missed(api, redis_db, ledger):
    [job_id] = queued_jobs(api, 1)
    lease = start(ledger, redis_db, job_id)
    progress(ledger, lease, 1)
    first = Stream(api.url, job_id)
    snapshot = first.wait_for(2)
    # The snapshot: the running status, then the progress with the stream's latest id.
    assert [e["event"] for e in snapshot] == ["status", "progress"]
    assert snapshot[1]["id"] == stream_ids(redis_db, job_id)[-1]
    progress(ledger, lease, 2, preview=True)
    told = first.wait_for(4)
    first.close()
    progress(ledger, lease, 3)  # the chunk that lets the server notice the disconnect
    first.ended.wait(10)
    told = list(first.events)
    last_id = told[-1]["id"]
    for step in range(4, 8):
        progress(ledger, lease, step, preview=step == 6)

    again = Stream(api.url, job_id, last_event_id=last_id)
    missed = [i for i in stream_ids(redis_db, job_id) if id_key(i) > id_key(last_id)]
    got = again.wait_for(len(missed))
    assert [e["id"] for e in got] == missed  # all of them, in order, none twice
    progress(ledger, lease, 8)  # then the live ones
    live = again.wait_for(len(missed) + 1)[-1]
    assert live["data"]["step"] == 8 and live["id"] == stream_ids(redis_db, job_id)[-1]
    assert ledger.succeed(lease, [b"result"], evaluations=10) == Outcome.OK
    again.ended.wait(10)
    ids = [e["id"] for e in told + again.events if "id" in e]
    assert ids == stream_ids(redis_db, job_id)[-len(ids):] and len(set(ids)) == len(ids)

    # An id older than what the capped stream holds, or a foreign one: the job's state instead.
    for stale in ("1-0", "12"):
        fallback = Stream(api.url, job_id, last_event_id=stale)
        fallback.ended.wait(10)
        assert [e["event"] for e in fallback.events] == ["status", "progress"]
        assert fallback.events[0]["data"]["status"] == "succeeded"
    # The final status already told: the reconnect ends at once, with nothing.
    done = Stream(api.url, job_id, last_event_id=stream_ids(redis_db, job_id)[-1])
    assert done.ended.wait(10) and done.events == []


def test_streams_resync_from_the_job_stream_after_the_pubsub_connection_is_lost(api, redis_db, ledger):
    [job_id] = queued_jobs(api, 1)
    lease = start(ledger, redis_db, job_id)
    stream = Stream(api.url, job_id)
    stream.wait_for(1)
    assert redis_db.client_kill_filter(_type="pubsub") == 1  # the hub's one connection
    for step in range(1, 4):  # published while the hub has no subscription: only in the job's stream
        progress(ledger, lease, step)
    assert ledger.succeed(lease, [b"result"], evaluations=10) == Outcome.OK
    assert stream.ended.wait(15)
    ids = [e["id"] for e in stream.events[1:]]
    assert ids == stream_ids(redis_db, job_id)[1:]  # every event after the running status, once
    assert stream.events[-1]["data"]["status"] == "succeeded"


def test_a_listener_that_falls_behind_is_told_to_resync_instead_of_queueing_more():
    async def run():
        listener = Listener("job", size=4)
        for step in range(10):
            listener.offer(Event((1, step), "progress", {"step": step}))
        return [await listener.next(0.01) for _ in range(3)]

    # Full at the 5th and the 9th event: what waited is dropped, and the stream reads it back.
    first, second, third = asyncio.run(run())
    assert first is RESYNC and second.data == {"step": 9} and third is None


def test_a_last_event_id_beyond_redis_range_counts_as_none():
    from service.event_hub import parse_id

    assert parse_id("1700000000000-3") == (1700000000000, 3)
    assert parse_id(f"{2**64}-0") is None and parse_id("99999999999999999999-1") is None
    assert parse_id("not-an-id") is None and parse_id("") is None


def test_open_streams_are_bounded_per_process(redis_server, redis_db):
    api = ApiProcess(redis_server.url, REPAINT_MAX_EVENT_STREAMS="1")
    try:
        job_id = queued_jobs(api, 1)[0]
        with httpx.Client(base_url=api.url, timeout=30) as client:
            with client.stream("GET", f"/jobs/{job_id}/events") as first:
                assert first.status_code == 200
                lines = first.iter_lines()  # kept: a dropped iterator closes the connection
                next(lines)  # the stream is open: its listener has joined
                second = client.get(f"/jobs/{job_id}/events")
                assert second.status_code == 503 and "REPAINT_MAX_EVENT_STREAMS" in second.json()["detail"]
                assert second.headers["Retry-After"]
            # Closed: its place is free again.
            wait_until(lambda: client.get(f"/jobs/{job_id}", timeout=5).status_code == 200, 5, "the API")
            r = None
            for _ in range(50):
                with client.stream("GET", f"/jobs/{job_id}/events") as again:
                    r = again.status_code
                    if r == 200:
                        break
                time.sleep(0.1)
            assert r == 200
    finally:
        api.stop()
