"""A small Python client for the repaint HTTP API (used by `repaint submit`).

    client = RepaintClient("http://127.0.0.1:8000")
    job = client.submit("photo.png", "mask.png", preset="balanced")
    for event, data in client.events(job["id"]):
        ...
    png = client.result(job["id"])
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Iterator

import httpx

from worker.jobs import JobStatus

FINAL = tuple(s.value for s in JobStatus if s.final)  # the statuses a job never leaves


class ApiError(RuntimeError):
    """The service refused a request: `status` is the HTTP code, `detail` its explanation,
    `retry_after` the seconds its Retry-After header asks a client to wait (429, 503), if it sent one."""

    def __init__(self, status: int, detail, retry_after: float | None = None):
        self.status, self.detail, self.retry_after = status, detail, retry_after
        super().__init__(f"HTTP {status}: {_readable(detail)}")


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds from now: it is either a number of seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT; a malformed one may lack the zone
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _readable(detail) -> str:
    """The API's `detail` as a line: a string, an object's message, or validation errors as `field: why`."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, dict) and isinstance(detail.get("message"), str):
        return detail["message"]
    if isinstance(detail, list) and all(isinstance(e, dict) and "msg" in e for e in detail):
        return "; ".join(f"{'.'.join(str(x) for x in e.get('loc', [])[1:]) or 'request'}: {e['msg']}" for e in detail)
    return json.dumps(detail)


class RepaintClient:
    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, api_key: str | None = None,
                 timeout: float = 60.0):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "RepaintClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text
            raise ApiError(response.status_code, detail, _retry_after(response.headers.get("Retry-After")))
        return response

    def models(self) -> dict:
        return self._check(self.http.get("/models")).json()

    def submit(self, image: str | Path | bytes, mask: str | Path | bytes | None = None, *,
               idempotency_key: str | None = None, **fields) -> dict:
        """Queue a job; `fields` are the form fields of POST /inpaint (model, preset, seed, ...)."""
        def read(value):
            return value if isinstance(value, bytes) else Path(value).read_bytes()

        files = {"image": ("image", read(image))}
        if mask is not None:
            files["mask"] = ("mask.png", read(mask))
        data = {k: str(v) for k, v in fields.items() if v is not None}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._check(self.http.post("/inpaint", files=files, data=data, headers=headers)).json()

    def job(self, job_id: str) -> dict:
        return self._check(self.http.get(f"/jobs/{job_id}")).json()

    def cancel(self, job_id: str) -> dict:
        return self._check(self.http.delete(f"/jobs/{job_id}")).json()

    def result(self, job_id: str, index: int = 0) -> bytes:
        return self._check(self.http.get(f"/jobs/{job_id}/result", params={"index": index})).content

    def events(self, job_id: str) -> Iterator[tuple[str, dict]]:
        """Server-Sent Events of a job until it ends: ('status' | 'progress' | 'preview', data)."""
        with self.http.stream("GET", f"/jobs/{job_id}/events", timeout=httpx.Timeout(60, read=None)) as response:
            if response.status_code >= 400:
                response.read()
                self._check(response)
            event, data = None, []
            for line in response.iter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif line == "" and event is not None:
                    yield event, json.loads("\n".join(data))
                    event, data = None, []

    def wait(self, job_id: str, on_event=None, poll_interval: float = 1.0) -> dict:
        """Follow a job to its end (events, falling back to polling) and return its final state."""
        try:
            for event, data in self.events(job_id):
                if on_event is not None:
                    on_event(event, data)
                if event == "status" and data.get("status") in FINAL:
                    break
        except httpx.HTTPError:
            pass  # a proxy that buffers streams: poll instead
        while True:
            job = self.job(job_id)
            if job["status"] in FINAL:
                return job
            if on_event is not None and job.get("progress"):
                on_event("progress", job["progress"])
            time.sleep(poll_interval)
