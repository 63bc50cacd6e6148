"""Live job updates without polling: Server-Sent Events from the job's event stream, and previews.

Every stream of the process is fed by the process's one `EventHub` (one Redis pub/sub connection
whatever the number of streams). SSE ids are the ids of the job's Redis Stream entries, so a
client that reconnects with Last-Event-ID is sent what it missed, then the live events.
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import asynccontextmanager
from functools import partial
from typing import Annotated, AsyncIterator

from fastapi import APIRouter, FastAPI, Header, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from redis.exceptions import RedisError

from worker import jobs
from worker.jobs import JobStatus
from worker.ledger import Ledger

from .. import jobstore
from ..deps import ApiKey, CallerDep, LedgerDep, RedisDep, visible_job
from ..event_hub import RESYNC, Event, EventHub, Position, StreamId, format_id, parse_id
from ..schemas import ErrorBody

log = logging.getLogger("repaint.api.events")


@asynccontextmanager
async def _close_hub(app: FastAPI):
    yield
    hub = getattr(app.state, "event_hub", None)
    if hub is not None:
        await hub.close()


router = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=[ApiKey], lifespan=_close_hub)

KEEPALIVE_SECONDS = 15.0  # a comment line after this long without an event: proxies close idle streams
SNAPSHOT_TRIES = 3        # reads of the record until no event came between it and the stream's latest id
FINAL = frozenset(s.value for s in JobStatus if s.final)


def sse(event: str, data: dict, event_id: StreamId | None) -> bytes:
    """One event; without an id (queue positions, the first of a snapshot) the client's last id stays."""
    head = f"id: {format_id(event_id)}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def hub_for(app: FastAPI) -> EventHub:
    """The app's hub, made on first use in the event loop that serves the app."""
    hub = getattr(app.state, "event_hub", None)
    if hub is None or hub.loop is not asyncio.get_running_loop():
        settings = app.state.settings
        hub = EventHub(settings.redis_url, read_connections=settings.events_redis_connections,
                       read_record=partial(jobstore.read_job, app.state.ledger))
        app.state.event_hub = hub
    return hub


@router.get("/{job_id}/events", summary="Server-Sent Events: status, progress and previews",
            response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}},
                       404: {"model": ErrorBody, "description": "unknown or expired job"}})
async def job_events(job_id: str, request: Request, ledger: LedgerDep, tenant: CallerDep,
                     last_event_id: Annotated[str | None, Header(description="the `id` of the last event "
                                                                 "received: the stream resumes after it")] = None):
    """Events `status` ({status, position?, ...}), `progress` ({step, total, fraction, eta_seconds})
    and `preview` ({url, step}), in order; the stream ends after a final status. Each event's `id`
    is its entry in the job's event stream; with `Last-Event-ID` the stream resumes after it."""
    await run_in_threadpool(visible_job, ledger, tenant, job_id)  # 404 unless the caller's (or an admin's)
    hub = hub_for(request.app)
    limit = request.app.state.settings.max_event_streams
    if hub.listeners() >= limit:  # each open stream holds a socket, a task and a listener
        raise HTTPException(503, f"this API process serves its limit of {limit} open event streams "
                                 "(REPAINT_MAX_EVENT_STREAMS); retry shortly, or poll GET /jobs/<id>",
                            headers={"Retry-After": "5"})
    follower = _Follower(hub, ledger, job_id)
    return StreamingResponse(follower.stream(parse_id(last_event_id)), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


class _Follower:
    """One SSE stream: what it has told its client (the last id, status and position)."""

    def __init__(self, hub: EventHub, ledger: Ledger, job_id: str):
        self.hub, self.ledger, self.job_id = hub, ledger, job_id
        self.last: StreamId | None = None
        self.status: str | None = None
        self.position: int | None = None
        self.gone = False  # the record expired: nothing more will come

    @property
    def ended(self) -> bool:
        return self.gone or self.status in FINAL

    async def stream(self, resume: StreamId | None) -> AsyncIterator[bytes]:
        # Subscribed before anything is read, so every later event reaches the listener; one it
        # also finds in the stream is told once (an id at or before `last` is dropped).
        try:
            listener = await self.hub.join(self.job_id)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("events of %s: %s; the stream ends for the client to reconnect", self.job_id, exc)
            return
        try:
            for chunk in await self.catch_up(resume):
                yield chunk
            while not self.ended:
                item = await listener.next(KEEPALIVE_SECONDS)
                if item is None:
                    yield b": keepalive\n\n"
                elif item is RESYNC:
                    for chunk in await self.catch_up(self.last):
                        yield chunk
                elif isinstance(item, Position):
                    if self.status == JobStatus.QUEUED.value and item.position != self.position:
                        self.position = item.position
                        yield sse("status", {"status": self.status, "position": item.position}, None)
                elif (chunk := self.event(item)) is not None:
                    if self.status in FINAL:
                        # Told only once it is acknowledged as REPAINT_ACK asks (the record read
                        # confirms a pending one; NotAcknowledged ends the stream, and the
                        # client's reconnect resumes from the record).
                        await run_in_threadpool(self.ledger.read, self.job_id)
                    yield chunk
        except (RedisError, OSError) as exc:
            log.warning("events of %s: %s; the stream ends for the client to reconnect", self.job_id, exc)
        finally:
            self.hub.leave(listener)

    def event(self, event: Event) -> bytes | None:
        if self.last is not None and event.id <= self.last:
            return None  # told already (from the stream's backlog or the snapshot)
        self.last = event.id
        if event.event == "status":
            self.status = event.data.get("status", self.status)
            self.position = event.data.get("position")
        return sse(event.event, event.data, event.id)

    async def catch_up(self, after: StreamId | None) -> list[bytes]:
        """The events after `after` if the job's stream still holds them all, else its state."""
        if after is not None:
            # The record is read before the backlog: if it is final, its final event is in the
            # stream by then, so it is in the backlog or was told before `after`.
            record = await run_in_threadpool(jobstore.read_job, self.ledger, self.job_id)
            if record is None:
                self.gone = True
                return []
            backlog = await self.hub.events_after(self.job_id, after)
            if backlog is not None:
                fresh, told = self.last is None, self.position
                self.last, self.status = after, record["status"]
                chunks = [chunk for chunk in map(self.event, backlog) if chunk is not None]
                if record["status"] in FINAL:
                    self.status = record["status"]
                if self.status == JobStatus.QUEUED.value and (fresh or record.get("position") != told):
                    self.position = record.get("position")  # positions are not in the stream
                    chunks.append(sse("status", {"status": self.status, "position": self.position}, None))
                return chunks
        return await self.snapshot()

    async def snapshot(self) -> list[bytes]:
        """The job's state from its record (status, and progress if any); the last of these
        events carries the id of the stream's latest entry, the last one the record reflects."""
        for _ in range(SNAPSHOT_TRIES):
            latest = await self.hub.latest_id(self.job_id)
            record = await run_in_threadpool(jobstore.read_job, self.ledger, self.job_id)
            if await self.hub.latest_id(self.job_id) == latest:
                break  # no event between the two reads: the record is the state at `latest`
        # Otherwise the events after `latest` come live, some of them reflected in the record already.
        if record is None:
            self.gone = True
            return []
        self.status, self.position = record["status"], record.get("position")
        if latest is not None and (self.last is None or latest > self.last):
            self.last = latest
        events = [("status", {"status": self.status, "position": self.position,
                              "attempts": record.get("attempts", 0)})]
        if record.get("progress"):
            events.append(("progress", record["progress"]))
        return [sse(name, data, self.last if i == len(events) - 1 else None) for i, (name, data) in enumerate(events)]


@router.get("/{job_id}/preview", response_class=Response, summary="The latest estimate of a running job",
            responses={200: {"content": {"image/png": {}}},
                       404: {"model": ErrorBody, "description": "unknown job, no preview yet, or "
                                                                            "the job is final (see its results)"}})
def job_preview(job_id: str, redis: RedisDep, ledger: LedgerDep, tenant: CallerDep) -> Response:
    """The current x0 estimate (the model's view of the job, first sample) as a PNG."""
    visible_job(ledger, tenant, job_id)
    data = redis.get(jobs.preview_key(job_id))
    if data is None:
        raise HTTPException(404, f"job {job_id} has no preview: none yet, or the job is final (its results "
                                 "replace it)")
    return Response(content=data, media_type="image/png", headers={"Cache-Control": "no-store"})
