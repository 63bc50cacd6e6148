"""`python -m worker.health`: exit 0 when a worker of this host is registered and alive in Redis.

Used as the container health check of workers, which serve no HTTP.
"""

from __future__ import annotations

import socket
import sys

from redis import Redis
from rq import Worker

from .settings import WorkerSettings


def main() -> int:
    settings = WorkerSettings()
    prefix = settings.worker_name or socket.gethostname()
    try:
        alive = [w.name for w in Worker.all(connection=Redis.from_url(settings.redis_url, socket_timeout=5))
                 if w.name.startswith(prefix)]
    except Exception as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    print("healthy: " + ", ".join(alive) if alive else f"unhealthy: no live worker named {prefix}*")
    return 0 if alive else 1


if __name__ == "__main__":
    sys.exit(main())
