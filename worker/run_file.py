"""The run file of `repaint serve`: where the all-in-one's embedded Redis and API are, so that
tools started beside it (`python -m worker.health`, `repaint api`, `repaint worker`, `repaint
submit`) reach them without flags.

`repaint serve` writes it when it starts and removes it when it stops. A setting given
(REPAINT_REDIS_URL, REPAINT_URL, --url) always wins; a run file whose process is gone is ignored.
Its place: REPAINT_RUN_FILE, else $XDG_RUNTIME_DIR/repaint/serve.json, else
<temp dir>/repaint-<uid>/serve.json (private to the user: the URL of an unprotected Redis).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def path() -> Path:
    explicit = os.environ.get("REPAINT_RUN_FILE")
    if explicit:
        return Path(explicit)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    folder = Path(runtime) / "repaint" if runtime else Path(tempfile.gettempdir()) / f"repaint-{os.getuid()}"
    return folder / "serve.json"


def write(redis_url: str, api_url: str) -> Path:
    """Record this process (a `repaint serve`) as the one tools should reach."""
    target = path()
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    partial.write_text(json.dumps({"pid": os.getpid(), "redis_url": redis_url, "api_url": api_url,
                                   "started_at": time.time()}))
    partial.chmod(0o600)
    partial.replace(target)
    return target


def remove() -> None:
    """Remove the run file if it is this process's (a second `repaint serve` may have written its own)."""
    current = read()
    if current is not None and current["pid"] == os.getpid():
        path().unlink(missing_ok=True)


def read() -> dict | None:
    """The run file of a `repaint serve` still running, else None."""
    try:
        record = json.loads(path().read_text())
        pid = int(record["pid"])
        os.kill(pid, 0)  # raises when the process is gone
    except PermissionError:
        return record  # alive, another user's: still the one named
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record


def default_redis_url() -> str:
    """REPAINT_REDIS_URL's default: a running `repaint serve`'s embedded Redis, else the local one."""
    record = read()
    return record["redis_url"] if record and record.get("redis_url") else DEFAULT_REDIS_URL


def describe(url: str) -> str:
    """Which Redis a URL is and where it came from (password left out), for tools that say what
    they checked."""
    from .redis_url import redacted

    shown = redacted(url)
    if os.environ.get("REPAINT_REDIS_URL"):
        return f"{shown} (REPAINT_REDIS_URL)"
    record = read()
    if record and record.get("redis_url") == url:
        return f"{shown} (the embedded Redis of repaint serve, pid {record['pid']}, from {path()})"
    return f"{shown} (the default: REPAINT_REDIS_URL is unset and no repaint serve is running)"
