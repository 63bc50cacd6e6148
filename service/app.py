"""The FastAPI application: `create_app(settings)` so tests can build their own."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from contextlib import asynccontextmanager

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from worker import redis_url
from worker.allocator import return_large_blocks_to_os
from worker.acks import AckUnsupported, NotAcknowledged
from worker.ledger import Ledger, LedgerContention
from worker.webhooks_policy import WebhookPolicy

from .api_docs import install_docs
from .deps import ApiKey
from .http_limits import RequestLimits
from .metrics import HttpMetrics, HttpMetricsMiddleware, RedisJobCollector
from .routes import events, health, inpaint, jobs, models
from .settings import ApiSettings
from .uploads import PixelBudget

log = logging.getLogger("repaint.api")

STATIC = Path(__file__).parent / "static"

DESCRIPTION = """Diffusion inpainting with RePaint (Lugmayr et al., CVPR 2022).

Upload an image and a mask (white = region to fill) to `POST /inpaint`, then poll
`GET /jobs/{id}` until the status is `succeeded` and fetch `GET /jobs/{id}/result`.
Statuses: `queued` -> `running` -> `succeeded` | `failed` (and `canceled`).
Errors are JSON `{"detail": ...}` with a 4xx code."""


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or ApiSettings()
    return_large_blocks_to_os()  # so that the pixel budget bounds the process's memory (worker.allocator)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            log.info("%s", app.state.ledger.check_ack())
        except AckUnsupported as exc:
            log.error("cannot start: %s", exc)
            raise
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            # Redis may come later (the API answers 503 meanwhile); the first job checks then.
            log.warning("redis unavailable at start (%s): the acknowledgement mode is checked on the first job", exc)
        yield
        app.state.redis.close()

    app = FastAPI(title="repaint-server", version="0.1.0", description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None)  # served from packaged assets by install_docs, no CDN
    app.state.settings = settings
    # A bounded pool: a request waits (up to its timeout) for a free connection, so the Redis
    # connections of one API process follow REPAINT_REDIS_MAX_CONNECTIONS, not the traffic.
    # (With Sentinel, the pool asks the sentinels for the primary again after a failover.)
    app.state.redis = redis_url.connect(settings.redis_url, max_connections=settings.redis_max_connections,
                                        pool_timeout=10, socket_timeout=10, socket_connect_timeout=5,
                                        health_check_interval=30)
    app.state.keyring = settings.keyring()
    app.state.pixels = PixelBudget(settings.pixel_budget)
    app.state.ledger = Ledger(app.state.redis, result_ttl=settings.result_ttl,
                              ack=settings.acknowledgement())  # one per app: scripts load once
    app.state.webhooks = WebhookPolicy.from_settings(settings.webhook_allowed_hosts, settings.webhook_secret)
    if app.state.webhooks.entries and not app.state.webhooks.enabled:
        log.error("webhooks are OFF: %s; POST /inpaint refuses webhook URLs", app.state.webhooks.disabled_reason)
    registry = CollectorRegistry()
    registry.register(RedisJobCollector(app.state.redis, settings))
    # Inside the metrics middleware (which never reads bodies), so that refusals are counted.
    app.add_middleware(RequestLimits, limit_for=lambda scope: body_limit(scope, settings),
                       body_timeout=settings.body_timeout)
    app.add_middleware(HttpMetricsMiddleware, metrics=HttpMetrics(registry))

    for router in (inpaint.make_router(), jobs.router, events.router, models.router, health.router):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    install_docs(app)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    metrics_deps = [ApiKey] if settings.metrics_require_key else []

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics", response_class=Response,
             dependencies=metrics_deps)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    outage_logged = [0.0]

    @app.exception_handler(redis.exceptions.ConnectionError)
    @app.exception_handler(redis.exceptions.TimeoutError)
    async def redis_down(request: Request, exc: Exception) -> JSONResponse:
        # One line per outage, not one per request: clients retry often while Redis is away.
        now = time.monotonic()
        if now - outage_logged[0] > 30:
            log.warning("redis unavailable: %s (answering 503 until it is back)", exc)
        outage_logged[0] = now
        return JSONResponse({"detail": "the job store (Redis) is unavailable; retry shortly"}, status_code=503,
                            headers={"Retry-After": "5"})

    @app.exception_handler(redis.exceptions.ResponseError)
    async def redis_refused(request: Request, exc: redis.exceptions.ResponseError) -> JSONResponse:
        # Redis answers but refuses: full (maxmemory with noeviction: every write is refused, so a
        # transaction aborts), read-only (a replica during a failover), or a contended transition.
        text = str(exc)
        if isinstance(exc, redis.exceptions.OutOfMemoryError) or "OOM" in text or "maxmemory" in text:
            log.warning("redis is full: %s", text)
            return JSONResponse({"detail": "the job store (Redis) is full; retry once jobs have finished"},
                                status_code=507, headers={"Retry-After": "60"})
        log.error("redis refused a command: %s", text)
        return JSONResponse({"detail": f"the job store (Redis) refused the request ({text.split(':')[0]}); "
                                       "retry shortly"}, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(LedgerContention)
    async def contended(request: Request, exc: LedgerContention) -> JSONResponse:
        log.warning("%s", exc)
        return JSONResponse({"detail": "the job is being changed by others right now; retry shortly"},
                            status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(NotAcknowledged)
    async def not_acknowledged(request: Request, exc: NotAcknowledged) -> JSONResponse:
        # The job was written but not confirmed as REPAINT_ACK promises: it is not accepted. It may
        # still exist, so a retry with the same Idempotency-Key gets that job, not a second one.
        log.warning("a write was not acknowledged (%s): %s", exc.mode.value, exc)
        return JSONResponse({"detail": f"the job store did not confirm the job in time ({exc}); it is not "
                                       "accepted: retry with the same Idempotency-Key"},
                            status_code=503, headers={"Retry-After": "2"})

    @app.exception_handler(AckUnsupported)
    async def ack_unsupported(request: Request, exc: AckUnsupported) -> JSONResponse:
        log.error("%s", exc)
        return JSONResponse({"detail": f"the service is misconfigured: {exc}"}, status_code=503,
                            headers={"Retry-After": "60"})

    return app


# Bodies other than POST /inpaint's are small JSON or nothing.
SMALL_BODY_LIMIT = 64 * 1024


def body_limit(scope: dict, settings: ApiSettings) -> int:
    """The largest body a request may send: an image and a mask plus the form fields for POST
    /inpaint (each file is then held to max_upload_bytes on its own), 64 KiB elsewhere."""
    if scope["method"] == "POST" and scope["path"].rstrip("/") == "/inpaint":
        return 2 * settings.max_upload_bytes + SMALL_BODY_LIMIT
    return SMALL_BODY_LIMIT


def app_factory() -> FastAPI:
    """For `uvicorn --factory service.app:app_factory`."""
    return create_app()
