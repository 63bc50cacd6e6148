"""The deployment files say what the README says: compose services, Prometheus, Grafana."""

from __future__ import annotations

import json
import re

import yaml

from tests.procs import ROOT


def _default(value: str) -> str:
    """The default of a compose `${NAME:-default}` value."""
    match = re.fullmatch(r"\$\{\w+:-(.*)\}", value)
    return match.group(1) if match else value


def test_compose_runs_redis_with_aof_api_worker_prometheus_and_grafana_serving_faces32_anywhere():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "api", "worker", "prometheus", "grafana"} <= set(services)
    assert "--appendonly" in services["redis"]["command"]
    # A bounded Redis that refuses writes rather than evicting jobs (the API answers 507 before it fills).
    command = services["redis"]["command"]
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction" and "--maxmemory" in command
    assert all("healthcheck" in services[name] for name in ("redis", "api", "worker"))
    # Out of the box: the shipped demo model, on whatever device there is (no GPU required).
    for name in ("api", "worker"):
        assert _default(services[name]["environment"]["REPAINT_MODEL"]) == "faces32"
        assert "./checkpoints:/checkpoints:ro" in services[name]["volumes"]
    assert _default(services["worker"]["environment"]["REPAINT_DEVICE"]) == "auto"
    assert "deploy" not in services["worker"]


def test_the_gpu_override_reserves_a_gpu_for_the_worker():
    gpu = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())["services"]["worker"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert _default(gpu["environment"]["REPAINT_DEVICE"]) == "cuda"


def test_the_image_can_serve_diffusers_folders_and_ships_faces32():
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert 'pip install ".[diffusers]"' in dockerfile and "COPY models ./models" in dockerfile
    assert "weights/*.pt" in (ROOT / "pyproject.toml").read_text()  # faces32.pt is package data


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


def test_the_ha_override_runs_a_replica_three_sentinels_and_points_the_service_at_them():
    from worker.redis_url import parse_sentinel_url

    ha = yaml.safe_load((ROOT / "docker-compose.ha.yml").read_text())["services"]
    replica = ha["redis-replica"]["command"]
    assert replica[replica.index("--replicaof") + 1: replica.index("--replicaof") + 3] == ["redis", "6379"]
    for server in ("redis", "redis-replica"):  # both as the single Redis is shipped: AOF, bounded, noeviction
        command = ha[server]["command"]
        assert "--appendonly" in command and command[command.index("--maxmemory-policy") + 1] == "noeviction"
    sentinels = [name for name in ha if name.startswith("sentinel-")]
    assert len(sentinels) == 3
    script = ha["sentinel-1"]["command"][-1]
    assert "sentinel monitor repaint redis 6379 2" in script and "--sentinel" in script
    for name in ("api", "worker"):
        env = ha[name]["environment"]
        url = parse_sentinel_url(env["REPAINT_REDIS_URL"])
        assert url.service == "repaint" and sorted(h for h, _ in url.sentinels) == sorted(sentinels)
        assert _default(env["REPAINT_ACK"]) == "replica"
