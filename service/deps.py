"""FastAPI dependencies, as Annotated aliases so route signatures read like prose."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from redis import Redis

from .settings import ApiSettings


def get_redis(request: Request) -> Redis:
    return request.app.state.redis


def get_settings(request: Request) -> ApiSettings:
    return request.app.state.settings


RedisDep = Annotated[Redis, Depends(get_redis)]
SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
