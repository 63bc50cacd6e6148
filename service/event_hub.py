"""Job events for every SSE stream of one API process, through one Redis pub/sub connection.

The ledger writes each event of a job (`worker.jobs.publish`) to the job's capped Redis Stream
and publishes it, with its stream entry id, on the job's channel. The hub SUBSCRIBEs a job's
channel while at least one stream of this process follows the job and UNSUBSCRIBEs when the last
one leaves; each message goes to every listener of the job through a bounded queue. A listener
that falls behind (its queue full) loses its queued messages and is told to resync: it reads
what it missed from the job's stream, so a slow client never grows the process's memory. The
hub also polls the queue position of each followed queued job, once per POSITION_SECONDS for the
whole process, and hands changes to the job's listeners.

Redis connections of an API process, whatever the number of streams: one pub/sub connection,
plus at most `read_connections` (REPAINT_EVENTS_REDIS_CONNECTIONS) for stream reads (a replay
after Last-Event-ID, the latest id), plus the app's request pool (REPAINT_REDIS_MAX_CONNECTIONS)
through which records and queue positions are read.

After a lost pub/sub connection the hub subscribes again on a fresh one, and once Redis confirms
a job's subscription, that job's listeners resync from its stream: nothing published meanwhile
is lost to them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Callable

from anyio import to_thread
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from worker import jobs
from worker.redis_url import connect_async

log = logging.getLogger("repaint.api.events")

POSITION_SECONDS = 2.0   # how often the queue positions of followed queued jobs are read
LISTENER_QUEUE = 64      # messages a listener may have waiting before it must resync
SUBSCRIBE_TIMEOUT = 10.0  # seconds a new listener waits for Redis to confirm its subscription
PING_SECONDS = 5.0       # an idle pub/sub connection is PINGed this often; silent for twice as long, it is lost

StreamId = tuple[int, int]  # a stream entry id `<ms>-<seq>`, ordered as Redis orders them

_ID = re.compile(r"(\d{1,20})-(\d{1,20})")
_MAX_PART = 2**64 - 1  # Redis's stream id parts are unsigned 64-bit


def parse_id(text: str | bytes | None) -> StreamId | None:
    """A stream entry id, or None for anything else (an empty or foreign Last-Event-ID)."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    match = _ID.fullmatch(text.strip()) if text else None
    if not match:
        return None
    parts = (int(match.group(1)), int(match.group(2)))
    return parts if max(parts) <= _MAX_PART else None  # beyond Redis's range: not one of its ids


def format_id(stream_id: StreamId) -> str:
    return f"{stream_id[0]}-{stream_id[1]}"


@dataclass(frozen=True)
class Event:
    """One entry of a job's event stream: `event` is status, progress or preview."""

    id: StreamId
    event: str
    data: dict


@dataclass(frozen=True)
class Position:
    """The job's queue position changed (not a stream entry: it has no id)."""

    position: int | None


class _Resync:
    def __repr__(self) -> str:
        return "RESYNC"


# Told to a listener that may have missed events: read the job's stream after the last one sent.
RESYNC = _Resync()


class Listener:
    """One stream's view of a job: what the hub hands it, in order, at most LISTENER_QUEUE waiting."""

    def __init__(self, job_id: str, size: int):
        self.job_id = job_id
        self._queue: asyncio.Queue = asyncio.Queue(size)

    def offer(self, item: Event | Position | _Resync) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            # Fallen behind: drop what waits and have the stream read it back from Redis.
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(RESYNC)

    async def next(self, timeout: float) -> Event | Position | _Resync | None:
        """The next item, or None after `timeout` seconds without one."""
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except asyncio.TimeoutError:
            return None


@dataclass
class _Followed:
    """The listeners of one job in this process."""

    listeners: set[Listener] = field(default_factory=set)
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # its subscription is confirmed
    resync: bool = False         # after a reconnect: its listeners resync once subscribed again
    queued: bool = True          # poll its position (until a poll or an event says otherwise)
    position: int | None = None  # the last polled position


class EventHub:
    """The job events of one API process (one event loop). `read_record(job_id)` is the
    blocking read of a job's record with its queue position (run in a thread)."""

    def __init__(self, redis_url: str, *, read_connections: int, read_record: Callable[[str], dict | None],
                 queue_size: int = LISTENER_QUEUE, position_seconds: float = POSITION_SECONDS):
        self.loop = asyncio.get_running_loop()
        self._read_record = read_record
        self._queue_size = queue_size
        self._position_seconds = position_seconds
        # No silent reconnects on the pub/sub connection: the hub must know of each, to resync.
        self._client = connect_async(redis_url, retry=Retry(NoBackoff(), 0), socket_connect_timeout=5,
                                     socket_keepalive=True)
        self._pubsub = self._client.pubsub()
        self._reads = connect_async(redis_url, max_connections=read_connections, pool_timeout=10,
                                    socket_timeout=10, socket_connect_timeout=5)
        self._jobs: dict[str, _Followed] = {}
        self._subscribed: set[str] = set()   # jobs whose SUBSCRIBE was sent (and no UNSUBSCRIBE since)
        self._acks_due: dict[str, int] = {}  # SUBSCRIBEs sent per job whose confirmation has not come
        self._lock = asyncio.Lock()          # orders the (UN)SUBSCRIBE commands and reconnects
        self._reader: asyncio.Task | None = None
        self._poller: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._closed = False

    # ---- listeners ------------------------------------------------------------------------------

    async def join(self, job_id: str) -> Listener:
        """A new listener of the job, once the hub's subscription to it is confirmed: every event
        published from then on reaches it. Call `leave` when done."""
        if self._poller is None:
            self._poller = self._spawn(self._poll_positions())
        listener = Listener(job_id, self._queue_size)
        followed = self._jobs.setdefault(job_id, _Followed())
        followed.listeners.add(listener)
        try:
            await self._sync(job_id)
            await asyncio.wait_for(followed.ready.wait(), SUBSCRIBE_TIMEOUT)
        except BaseException:
            self.leave(listener)
            raise
        return listener

    def leave(self, listener: Listener) -> None:
        """The listener is done (synchronous: safe in a cancelled stream's `finally`)."""
        followed = self._jobs.get(listener.job_id)
        if followed is None or listener not in followed.listeners:
            return
        followed.listeners.discard(listener)
        if not followed.listeners:
            del self._jobs[listener.job_id]
            if not self._closed:
                self._spawn(self._sync(listener.job_id))

    def listeners(self) -> int:
        return sum(len(f.listeners) for f in self._jobs.values())

    # ---- the job's stream -----------------------------------------------------------------------

    async def latest_id(self, job_id: str) -> StreamId | None:
        """The id of the job's latest event (None: no event yet, or the stream expired)."""
        entries = await self._reads.xrevrange(jobs.events_key(job_id), count=1)
        return parse_id(entries[0][0]) if entries else None

    async def events_after(self, job_id: str, after: StreamId) -> list[Event] | None:
        """Every event after `after`, in order; None when the stream cannot tell them all: its
        oldest entry is newer than `after` (it was trimmed past it, or expired), or `after` is
        not one of its ids' range (an id of something else)."""
        key = jobs.events_key(job_id)
        async with self._reads.pipeline(transaction=True) as pipe:
            pipe.xrange(key, count=1)
            pipe.xrevrange(key, count=1)
            pipe.xrange(key, min=format_id(after))
            first, last, entries = await pipe.execute()
        if not first or parse_id(first[0][0]) > after or parse_id(last[0][0]) < after:
            return None
        events = (_entry_event(entry_id, fields) for entry_id, fields in entries)
        return [event for event in events if event.id > after]

    # ---- subscriptions ---------------------------------------------------------------------------

    async def _sync(self, job_id: str) -> None:
        """Make the subscription to the job's channel match whether anyone here follows it."""
        channel = jobs.events_channel(job_id)
        async with self._lock:
            followed = self._jobs.get(job_id)
            if followed is not None and job_id not in self._subscribed:
                self._acks_due[job_id] = self._acks_due.get(job_id, 0) + 1  # before: the ack may come first
                try:
                    await self._pubsub.subscribe(channel)
                except BaseException:
                    self._acks_due[job_id] -= 1
                    raise
                self._subscribed.add(job_id)
                if self._reader is None:
                    self._reader = self._spawn(self._read())
            elif followed is None and job_id in self._subscribed:
                self._subscribed.discard(job_id)
                await self._pubsub.unsubscribe(channel)
            elif followed is not None and not self._acks_due.get(job_id):
                followed.ready.set()  # subscribed and confirmed: a listener that came back at once

    async def _read(self) -> None:
        """The pub/sub connection's reader: dispatches every message; reconnects after a loss."""
        heard = self.loop.time()
        while True:
            try:
                message = await self._pubsub.get_message(timeout=PING_SECONDS)
                if message is None:
                    # Quiet: a half-open connection (Redis's host gone without a reset) is quiet
                    # too, and would never fail. A PING's answer tells them apart.
                    if not self._subscribed:
                        heard = self.loop.time()
                    elif self.loop.time() - heard > 2 * PING_SECONDS:
                        raise ConnectionError(f"no answer to PING in {2 * PING_SECONDS:g}s")
                    else:
                        await self._pubsub.ping()
                    continue
                heard = self.loop.time()
            except Exception as exc:  # whatever broke the connection, listeners must resync on a fresh one
                log.warning("event hub: pub/sub connection lost (%s); subscribing again", exc)
                if not await self._reconnect():
                    return
                heard = self.loop.time()
                continue
            if message["type"] == "pong":
                continue
            if message is not None:
                try:
                    self._dispatch(message)
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning("event hub: dropped a malformed message on %s (%r)", message.get("channel"), exc)

    async def _reconnect(self) -> bool:
        """A fresh pub/sub connection subscribed to every followed job, whose listeners resync
        once it is confirmed. False when nothing is followed (the next join starts a reader)."""
        delay = 0.25
        while True:
            async with self._lock:
                old, self._pubsub = self._pubsub, self._client.pubsub()
                self._subscribed.clear()
                self._acks_due.clear()
                for followed in self._jobs.values():
                    followed.ready.clear()
                    followed.resync = True
                try:
                    await old.aclose()
                except (RedisError, OSError):
                    pass
                wanted = list(self._jobs)
                if not wanted:
                    self._reader = None
                    return False
                try:
                    await self._pubsub.subscribe(*(jobs.events_channel(job_id) for job_id in wanted))
                except (RedisError, OSError) as exc:
                    log.warning("event hub: Redis unavailable (%s); retrying in %.1f s", exc, delay)
                else:
                    for job_id in wanted:
                        self._acks_due[job_id] = 1
                        self._subscribed.add(job_id)
                    return True
            await asyncio.sleep(delay)
            delay = min(2 * delay, 5.0)

    def _dispatch(self, message: dict) -> None:
        kind = message["type"]
        channel = message["channel"]
        channel = channel.decode() if isinstance(channel, bytes) else channel
        job_id = channel.removeprefix(jobs.events_channel(""))
        if kind == "subscribe":
            due = self._acks_due.get(job_id, 0) - 1
            if due > 0:
                self._acks_due[job_id] = due
                return
            self._acks_due.pop(job_id, None)
            followed = self._jobs.get(job_id)
            if followed is not None:
                followed.ready.set()
                if followed.resync:
                    followed.resync = False
                    for listener in followed.listeners:
                        listener.offer(RESYNC)
            return
        followed = self._jobs.get(job_id)
        if kind != "message" or followed is None:
            return
        payload = json.loads(message["data"])
        event = Event(parse_id(payload["id"]), payload["event"], payload["data"])
        if event.event == "status":
            followed.queued = event.data.get("status") == jobs.JobStatus.QUEUED.value
        for listener in list(followed.listeners):
            listener.offer(event)

    # ---- queue positions -------------------------------------------------------------------------

    async def _poll_positions(self) -> None:
        """Every POSITION_SECONDS, the position of each followed job that may be queued: one read
        per job for the whole process, handed to its listeners when it changed."""
        while True:
            await asyncio.sleep(self._position_seconds)
            try:
                await self._poll_once()
            except Exception as exc:  # Redis away, or anything else: try again at the next round
                log.warning("event hub: cannot read queue positions (%s)", exc)

    async def _poll_once(self) -> None:
        waiting = [job_id for job_id, followed in self._jobs.items() if followed.queued]
        if not waiting:
            return
        records = await to_thread.run_sync(lambda: [self._read_record(job_id) for job_id in waiting])
        for job_id, record in zip(waiting, records):
            followed = self._jobs.get(job_id)
            if followed is None or record is None:
                continue
            followed.queued = record["status"] == jobs.JobStatus.QUEUED.value
            if followed.queued and record.get("position") != followed.position:
                followed.position = record.get("position")
                for listener in list(followed.listeners):
                    listener.offer(Position(followed.position))

    # ---- life ------------------------------------------------------------------------------------

    def _spawn(self, coroutine) -> asyncio.Task:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if task is self._reader:
            self._reader = None  # the next subscription starts another
        if not task.cancelled() and task.exception() is not None:
            log.warning("event hub: %s", task.exception())

    async def close(self) -> None:
        """At the app's shutdown: the tasks stop and the connections close."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for closing in (self._pubsub.aclose(), self._client.aclose(), self._reads.aclose()):
            try:
                await closing
            except (RedisError, OSError):
                pass


def _entry_event(entry_id: bytes, fields: dict) -> Event:
    payload = json.loads(fields[b"event"])
    return Event(parse_id(entry_id), payload["event"], payload["data"])
