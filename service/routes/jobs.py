"""GET /jobs/<id> and its result."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response

from worker.jobs import JobStatus
from worker.output_formats import DEFAULT as DEFAULT_OUTPUT_FORMAT
from worker.output_formats import OUTPUT_FORMATS

from .. import jobstore
from ..deps import ApiKey, CallerDep, LedgerDep, RedisDep, visible_job
from ..tenancy import ANONYMOUS
from ..schemas import ErrorBody, JobPublic, Links

router = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=[ApiKey])

NOT_FOUND = {404: {"model": ErrorBody, "description": "unknown or expired job, or another API key's job"}}


def _links(job_id: str, record: dict) -> Links:
    links = Links(self=f"/jobs/{job_id}", result=f"/jobs/{job_id}/result")
    if record["status"] == JobStatus.SUCCEEDED.value:
        count = record.get("result", {}).get("count", record.get("num_samples", 1))
        links.results = [f"/jobs/{job_id}/result?index={i}" for i in range(count)]
    return links


@router.get("/{job_id}", response_model=JobPublic, responses=NOT_FOUND, summary="Job status and progress")
def get_job(job_id: str, ledger: LedgerDep, tenant: CallerDep) -> JobPublic:
    return _public(job_id, visible_job(ledger, tenant, job_id))


@router.delete("/{job_id}", response_model=JobPublic, responses=NOT_FOUND, summary="Cancel a job")
def cancel_job(job_id: str, ledger: LedgerDep, tenant: CallerDep) -> JobPublic:
    """A queued job is canceled at once and never runs; a running one stops at its next step
    (status stays `running` with `cancel_requested` until then). Finished jobs are unchanged.
    Only the API key that created the job (or an admin key) may cancel it."""
    visible_job(ledger, tenant, job_id)
    ledger.cancel(job_id)
    return _public(job_id, visible_job(ledger, tenant, job_id))


def _public(job_id: str, r: dict) -> JobPublic:
    return JobPublic(
        id=job_id, status=r["status"], model=r["model"], tenant=r.get("tenant", ANONYMOUS),
        position=r.get("position"),
        progress=r.get("progress"), created_at=jobstore.iso(r["created_at"]),
        started_at=jobstore.iso(r.get("started_at")), finished_at=jobstore.iso(r.get("finished_at")),
        attempts=r.get("attempts", 0), failures=r.get("failures", 0),
        cancel_requested=bool(r.get("cancel_requested", 0)), params=r["params"], error=r.get("error"),
        last_error=r.get("last_error"), plan=r.get("plan"), webhook=r.get("webhook"), links=_links(job_id, r))


@router.get("/{job_id}/result", response_class=Response, summary="A finished job's image",
            responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}}, **NOT_FOUND,
                       409: {"model": ErrorBody, "description": "the job has not succeeded (yet)"}})
def get_result(job_id: str, redis: RedisDep, ledger: LedgerDep, tenant: CallerDep,
               index: Annotated[int, Query(ge=0, description="which sample, for num_samples > 1")] = 0) -> Response:
    r = visible_job(ledger, tenant, job_id)
    if r["status"] != JobStatus.SUCCEEDED.value:
        raise HTTPException(409, {"message": f"job {job_id} is {r['status']}, not succeeded", "status": r["status"]})
    count = r.get("result", {}).get("count", 1)
    if index >= count:
        raise HTTPException(404, f"job {job_id} has {count} result(s); index {index} does not exist")
    data = jobstore.result_bytes(redis, job_id, index)
    if data is None:
        raise HTTPException(404, f"the result of job {job_id} has expired")
    output_format = OUTPUT_FORMATS.get(r["params"].get("output_format", DEFAULT_OUTPUT_FORMAT))
    return Response(content=data, media_type=output_format.media_type if output_format else "image/png")
