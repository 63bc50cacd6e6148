"""`python -m worker.health`: exit 0 when a worker of this host is registered, alive and not defunct.

Used as the container health check of workers, which serve no HTTP. A worker that declared
itself defunct (repeated forward-pass failures, a stuck pass) exits on its own; this check
also fails while its reason is on record, so an orchestrator that only probes still sees it.
"""

from __future__ import annotations

import json
import socket
import sys


from rq import Worker

from models.registry import parse_model_ref

from . import jobs, redis_url, run_file, startup
from .settings import WorkerSettings


def _compile_note(state: bytes | None) -> str:
    """REPAINT_COMPILE's state, when the worker compiles ("eager" means it does not)."""
    if state is None or state == b"eager":
        return ""
    return f" (compile: {state.decode(errors='replace')})"


def main() -> int:
    settings = WorkerSettings()
    prefix = settings.worker_name or socket.gethostname()
    # Which Redis this checked, and why that one: beside `repaint serve`, its embedded one.
    print(f"Redis: {run_file.describe(settings.redis_url)}", file=sys.stderr)
    try:
        redis = redis_url.connect(settings.redis_url, socket_timeout=5)
        workers = [w for w in Worker.all(connection=redis) if w.name.startswith(prefix)]
        alive = [w.name for w in workers]
        defunct = {name: redis.get(jobs.defunct_key(name)) for name in alive}
        compile_states = {w.name: redis.hget(w.key, jobs.WORKER_COMPILE_FIELD) for w in workers}
        model = parse_model_ref(settings.model).name
        failed_here = [f for f in startup.failures(redis, model) if f["where"] == prefix]
    except Exception as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    if failed_here and not alive:
        f = failed_here[-1]
        print(f"unhealthy: {startup.summary(model, [f], 0)}")
        return 1
    broken = {name: json.loads(raw)["reason"] for name, raw in defunct.items() if raw is not None}
    if broken:
        print("unhealthy: defunct: " + "; ".join(f"{n}: {r}" for n, r in broken.items()))
        return 1
    print("healthy: " + ", ".join(name + _compile_note(compile_states[name]) for name in alive)
          if alive else f"unhealthy: no live worker named {prefix}*")
    return 0 if alive else 1


if __name__ == "__main__":
    sys.exit(main())
