"""FastAPI dependencies, as Annotated aliases so route signatures read like prose."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from redis import Redis

from worker.ledger import Ledger

from . import jobstore
from .settings import ApiSettings
from .tenancy import ANONYMOUS, Tenant


def get_redis(request: Request) -> Redis:
    return request.app.state.redis


def get_settings(request: Request) -> ApiSettings:
    return request.app.state.settings


def get_ledger(request: Request) -> Ledger:
    return request.app.state.ledger


RedisDep = Annotated[Redis, Depends(get_redis)]
LedgerDep = Annotated[Ledger, Depends(get_ledger)]
SettingsDep = Annotated[ApiSettings, Depends(get_settings)]


def _bearer(request: Request) -> bytes:
    # Compared as bytes: any header value (non-ASCII included) is a key or not, never an error.
    # Headers arrive decoded as latin-1, which maps back to the bytes the client sent.
    header = request.headers.get("authorization", "").encode("latin-1")
    scheme, _, token = header.partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" else b""


def caller(request: Request) -> Tenant:
    """The tenant whose API key the request carries; 401 without a valid key (unless the service
    has no keys: then every caller is the tenant `anonymous`, which sees everything)."""
    tenant = getattr(request.state, "tenant", None)
    if tenant is None:
        tenant = request.app.state.keyring.identify(_bearer(request))
        if tenant is None:
            raise HTTPException(401, "a valid API key is required: send 'Authorization: Bearer <key>'",
                                headers={"WWW-Authenticate": "Bearer"})
        request.state.tenant = tenant
    return tenant


ApiKey = Depends(caller)
CallerDep = Annotated[Tenant, Depends(caller)]


def unknown_job(job_id: str) -> HTTPException:
    return HTTPException(404, f"no job {job_id} (unknown, or expired after its results' lifetime)")


def visible_job(ledger: Ledger, tenant: Tenant, job_id: str) -> dict:
    """The job's record if `tenant` may see it, else the same 404 as for an unknown id: another
    tenant's job does not exist for this caller (no existence oracle)."""
    record = jobstore.read_job(ledger, job_id)
    if record is None or not (tenant.admin or record.get("tenant", ANONYMOUS) == tenant.name):
        raise unknown_job(job_id)
    return record
