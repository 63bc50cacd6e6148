"""GET /metrics: cluster-wide job figures read from Redis at scrape time, plus HTTP metrics.

Job figures come from Redis, not from this process, so they are the same whichever API
replica or uvicorn process Prometheus scrapes. HTTP request metrics are per process.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from redis import Redis
from rq import Worker
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.routing import Mount

from worker import fairness, jobs

from . import jobstore

FINAL_STATUSES = tuple(s.value for s in jobs.JobStatus if s.final)


class RedisJobCollector:
    """Reads every model's counters and histograms from Redis on each scrape."""

    def __init__(self, redis: Redis, settings):
        self.redis = redis
        self.settings = settings
        self.keyring = settings.keyring()

    def collect(self):
        depth = GaugeMetricFamily("repaint_queue_depth", "Jobs waiting in a model's queue", labels=["model"])
        workers = GaugeMetricFamily("repaint_workers", "Live workers serving a model", labels=["model"])
        running = GaugeMetricFamily("repaint_jobs_running", "Jobs running on a worker (all models)")
        finished = CounterMetricFamily("repaint_jobs", "Jobs that reached a final status",
                                       labels=["model", "status"])
        evaluations = CounterMetricFamily("repaint_model_evaluations", "Network evaluations of finished jobs",
                                          labels=["model"])
        waits = HistogramMetricFamily("repaint_queue_wait_seconds", "Time from submission to start",
                                      labels=["model"])
        runs = HistogramMetricFamily("repaint_job_run_seconds", "Time from start to a final status",
                                     labels=["model"])
        batch = HistogramMetricFamily("repaint_batch_size", "Samples in one forward pass", labels=["model"])
        forward = HistogramMetricFamily("repaint_forward_seconds",
                                        "Duration of one batched sampler step (forward pass and update)",
                                        labels=["model"])
        waiting = GaugeMetricFamily("repaint_tenant_jobs_waiting", "Jobs of an API key waiting (queued or "
                                    "parked at its running limit), all models", labels=["tenant"])
        tenant_running = GaugeMetricFamily("repaint_tenant_samples_running", "Samples of an API key running at once",
                                           labels=["model", "tenant"])
        reserved = GaugeMetricFamily("repaint_redis_reserved_bytes", "Bytes of Redis kept free for the results of "
                                     "accepted, unfinished jobs (memory admission)")
        reserved.add_metric([], float(self.redis.get(fairness.reserved_key()) or 0))
        running.add_metric([], self.redis.scard(jobs.running_key()))
        # Tenants are the configured key names: a bounded label set, never the keys themselves.
        tenants = self.keyring.names
        with self.redis.pipeline(transaction=False) as pipe:
            for tenant in tenants:
                pipe.zcount(fairness.waiting_key(tenant), time.time(), "+inf")
            for tenant, count in zip(tenants, pipe.execute()):
                waiting.add_metric([tenant], count)
        for model in sorted(jobstore.served_models(self.redis, self.settings)):
            with self.redis.pipeline(transaction=False) as pipe:
                for tenant in tenants:
                    pipe.hvals(fairness.running_key(model, tenant))
                for tenant, samples in zip(tenants, pipe.execute()):
                    tenant_running.add_metric([model, tenant], sum(int(v) for v in samples))
            queue = jobstore.queue_for(self.redis, model)
            depth.add_metric([model], queue.count)
            workers.add_metric([model], Worker.count(connection=self.redis, queue=queue))
            raw = {k.decode(): float(v) for k, v in self.redis.hgetall(jobs.metrics_key(model)).items()}
            for status in FINAL_STATUSES:
                finished.add_metric([model, status], raw.get(f"jobs_{status}_total", 0.0))
            evaluations.add_metric([model], raw.get("model_evaluations_total", 0.0))
            for family, name, bounds in ((waits, "queue_wait", jobs.DURATION_BUCKETS),
                                         (runs, "run", jobs.DURATION_BUCKETS),
                                         (batch, "batch_size", jobs.BATCH_SIZE_BUCKETS),
                                         (forward, "forward_seconds", jobs.FORWARD_SECONDS_BUCKETS)):
                buckets = [(str(b), raw.get(f"{name}_bucket:{b}", 0.0)) for b in bounds]
                buckets.append(("+Inf", raw.get(f"{name}_count", 0.0)))
                family.add_metric([model], buckets, raw.get(f"{name}_sum", 0.0))
        yield from (depth, workers, running, finished, evaluations, waits, runs, batch, forward, waiting,
                    tenant_running, reserved)


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.requests = Counter("repaint_http_requests", "HTTP requests", ["method", "route", "status"],
                                registry=registry)
        self.latency = Histogram("repaint_http_request_duration_seconds", "HTTP request latency",
                                 ["method", "route"], registry=registry)


def route_template(request: Request) -> str:
    """The route's path template (`/jobs/{job_id}`), `<mount>/{path}` for files under a mount
    (`/static/{path}` for the page's assets, `/docs-assets/{path}` for the docs'), else `unmatched`: never the raw path, whose job ids
    would make a label per request."""
    route = request.scope.get("route")
    if route is not None and hasattr(route, "path"):
        return route.path
    path = request.url.path
    for candidate in request.app.routes:
        if isinstance(candidate, Mount) and (path == candidate.path or path.startswith(candidate.path + "/")):
            return candidate.path + "/{path}"
    return "unmatched"


class HttpMetricsMiddleware(BaseHTTPMiddleware):
    """Counts requests by route template (not raw path: job ids would explode the labels)."""

    def __init__(self, app, metrics: HttpMetrics):
        super().__init__(app)
        self.metrics = metrics

    async def dispatch(self, request: Request, call_next):
        start = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            template = route_template(request)
            self.metrics.requests.labels(request.method, template, str(status)).inc()
            self.metrics.latency.labels(request.method, template).observe(time.perf_counter() - start)
