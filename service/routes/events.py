"""Live job updates without polling: Server-Sent Events fed by Redis pub/sub, and previews."""

from __future__ import annotations

import json

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from redis import asyncio as aioredis

from worker import jobs
from worker.jobs import JobStatus

from .. import jobstore
from ..deps import ApiKey, LedgerDep, RedisDep, SettingsDep
from ..schemas import ErrorBody

router = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=[ApiKey])

KEEPALIVE_SECONDS = 15.0
POSITION_SECONDS = 2.0


def sse(event: str, data: dict, event_id: int) -> bytes:
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@router.get("/{job_id}/events", summary="Server-Sent Events: status, progress and previews",
            response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}},
                       404: {"model": ErrorBody, "description": "unknown or expired job"}})
async def job_events(job_id: str, request: Request, ledger: LedgerDep, settings: SettingsDep):
    """Events `status` ({status, position?, ...}), `progress` ({step, total, fraction, eta_seconds})
    and `preview` ({url, step}), in order; the stream ends after a final status."""
    if await run_in_threadpool(jobstore.read_job, ledger, job_id) is None:
        raise HTTPException(404, f"no job {job_id} (unknown, or expired after its results' lifetime)")

    async def stream():
        client = aioredis.from_url(settings.redis_url)
        pubsub = client.pubsub()
        counter = 0
        try:
            await pubsub.subscribe(jobs.events_channel(job_id))
            # Snapshot after subscribing, so no event falls between the two.
            record = await run_in_threadpool(jobstore.read_job, ledger, job_id)
            if record is None:
                return
            status = record["status"]
            counter += 1
            yield sse("status", {"status": status, "position": record.get("position"),
                                 "attempts": record.get("attempts", 0)}, counter)
            if record.get("progress"):
                counter += 1
                yield sse("progress", record["progress"], counter)
            if JobStatus(status).final:
                return
            position, quiet = record.get("position"), 0.0
            while not await request.is_disconnected():
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=POSITION_SECONDS)
                if message is None:
                    quiet += POSITION_SECONDS
                    if status == JobStatus.QUEUED.value:
                        fresh = await run_in_threadpool(jobstore.read_job, ledger, job_id)
                        if fresh and fresh.get("position") != position and fresh["status"] == status:
                            position = fresh.get("position")
                            counter += 1
                            yield sse("status", {"status": status, "position": position}, counter)
                    if quiet >= KEEPALIVE_SECONDS:
                        quiet = 0.0
                        yield b": keepalive\n\n"
                    continue
                quiet = 0.0
                event = json.loads(message["data"])
                counter += 1
                yield sse(event["event"], event["data"], counter)
                if event["event"] == "status":
                    status = event["data"].get("status", status)
                    if JobStatus(status).final:
                        return
        finally:
            try:
                await pubsub.unsubscribe()
                await pubsub.aclose()
                await client.aclose()
            except Exception:
                pass

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/{job_id}/preview", response_class=Response, summary="The latest estimate of a running job",
            responses={200: {"content": {"image/png": {}}},
                       404: {"model": ErrorBody, "description": "unknown job or no preview yet"}})
def job_preview(job_id: str, redis: RedisDep, ledger: LedgerDep) -> Response:
    """The current x0 estimate (the model's view of the job, first sample) as a PNG."""
    if jobstore.read_job(ledger, job_id) is None:
        raise HTTPException(404, f"no job {job_id}")
    data = redis.get(jobs.preview_key(job_id))
    if data is None:
        raise HTTPException(404, f"job {job_id} has no preview yet")
    return Response(content=data, media_type="image/png", headers={"Cache-Control": "no-store"})
