"""FastAPI dependencies, as Annotated aliases so route signatures read like prose."""

from __future__ import annotations

from typing import Annotated

import hmac

from fastapi import Depends, HTTPException, Request
from redis import Redis

from worker.ledger import Ledger

from .settings import ApiSettings


def get_redis(request: Request) -> Redis:
    return request.app.state.redis


def get_settings(request: Request) -> ApiSettings:
    return request.app.state.settings


def get_ledger(request: Request) -> Ledger:
    return request.app.state.ledger


RedisDep = Annotated[Redis, Depends(get_redis)]
LedgerDep = Annotated[Ledger, Depends(get_ledger)]
SettingsDep = Annotated[ApiSettings, Depends(get_settings)]


def require_api_key(request: Request) -> None:
    """401 unless REPAINT_API_KEYS is empty or the request carries one of its keys as a bearer token."""
    keys = request.app.state.settings.api_key_list
    if not keys:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and any(hmac.compare_digest(token.strip(), k) for k in keys):
        return
    raise HTTPException(401, "a valid API key is required: send 'Authorization: Bearer <key>'",
                        headers={"WWW-Authenticate": "Bearer"})


ApiKey = Depends(require_api_key)
