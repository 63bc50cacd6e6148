"""FastAPI dependencies, as Annotated aliases so route signatures read like prose."""

from __future__ import annotations

from typing import Annotated

import hashlib
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
    # Compared as bytes: any header value (non-ASCII included) is a key or not, never an error.
    # Headers arrive decoded as latin-1, which maps back to the bytes the client sent.
    header = request.headers.get("authorization", "").encode("latin-1")
    scheme, _, token = header.partition(b" ")
    token = token.strip()
    # Every key is compared (no early exit), so the time taken does not say which one matched.
    matched = [hmac.compare_digest(token, k.encode()) for k in keys]
    if scheme.lower() == b"bearer" and any(matched):
        return
    raise HTTPException(401, "a valid API key is required: send 'Authorization: Bearer <key>'",
                        headers={"WWW-Authenticate": "Bearer"})


ApiKey = Depends(require_api_key)


def caller_principal(request: Request) -> str:
    """Who is calling, for scoping per-client state (Idempotency-Keys): a digest of the bearer
    token, never the token itself; "anonymous" when the service has no API keys."""
    if not request.app.state.settings.api_key_list:
        return "anonymous"
    header = request.headers.get("authorization", "").encode("latin-1")
    return hashlib.sha256(header.partition(b" ")[2].strip()).hexdigest()[:32]


PrincipalDep = Annotated[str, Depends(caller_principal)]
