"""The deployment files say what the README says: compose services, Prometheus, Grafana."""

from __future__ import annotations

import json
import re

import yaml

from tests.procs import ROOT


def test_compose_runs_redis_with_aof_api_worker_on_gpu_prometheus_and_grafana():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "api", "worker", "prometheus", "grafana"} <= set(services)
    assert "--appendonly" in services["redis"]["command"]
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert all("healthcheck" in services[name] for name in ("redis", "api", "worker"))


def test_grafana_dashboard_queries_metrics_the_api_exports(redis_server, redis_db):
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import ApiSettings
    from worker import jobs

    redis_db.hset(jobs.models_key(), "tiny", json.dumps({"name": "tiny"}))
    with TestClient(create_app(ApiSettings(redis_url=redis_server.url, model="tiny"))) as client:
        client.get("/healthz")
        scraped = client.get("/metrics").text
    exported = set(re.findall(r"^(repaint_[a-z_]+)", scraped, re.M))
    dashboard = json.loads((ROOT / "docker/grafana/dashboards/repaint.json").read_text())
    used = {name for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"repaint_[a-z_]+", target["expr"])}
    assert used and used <= exported, used - exported
