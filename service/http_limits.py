"""Limits on what a client may send, enforced while the request arrives.

- `RequestLimits`: an ASGI middleware that refuses
  - request heads past `MAX_HEAD_BYTES` (431), wherever the HTTP parser let them through;
  - bodies past their limit with an early 413, whether the length is declared (`Content-Length`,
    refused before a byte is read) or not (chunked bodies, and bodies longer than they
    declared, are counted as they arrive). Nothing past the limit is read, so nothing past it
    is spooled to disk by the multipart parser;
  - bodies that stop arriving (a `Content-Length` longer than what is sent, a stalled upload)
    with 408 after `body_timeout` seconds without a byte.
  Each refusal closes the connection: the rest of the body is never read.
- `JsonErrorH11Protocol`: uvicorn's HTTP/1.1 protocol, whose own refusals (a malformed request,
  a request head over `MAX_HEAD_BYTES` while it arrives) answer with the same JSON
  `{"detail": ...}` body as the application's errors instead of plain text.
"""

from __future__ import annotations

import asyncio
import json
from typing import Callable

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

# The request line and headers together.
MAX_HEAD_BYTES = 16 * 1024


class Refused(Exception):
    """Raised into the application's `receive` when the body breaks a limit."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


def closing_json(detail: str) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The body and headers of a JSON error `{"detail": ...}` that closes the connection (the
    rest of the request is never read, so the connection cannot carry another one)."""
    body = json.dumps({"detail": detail}).encode()
    return body, [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                  (b"connection", b"close")]


def json_error(status: int, detail: str) -> tuple[dict, dict]:
    """The ASGI start and body messages of `closing_json`."""
    body, headers = closing_json(detail)
    return {"type": "http.response.start", "status": status, "headers": headers}, \
        {"type": "http.response.body", "body": body}


def head_size(scope: dict) -> int:
    """Bytes of the request line and headers, as sent (near enough: separators counted)."""
    line = len(scope["method"]) + len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + 12
    return line + sum(len(k) + len(v) + 4 for k, v in scope["headers"])


class RequestLimits:
    """Head, body size and body pace limits; `limit_for(scope)` gives the body limit in bytes."""

    def __init__(self, app, limit_for: Callable[[dict], int], body_timeout: float = 30.0):
        self.app, self.limit_for, self.body_timeout = app, limit_for, body_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if head_size(scope) > MAX_HEAD_BYTES:
            return await self._send(send, Refused(431, f"the request line and headers are larger than "
                                                        f"{MAX_HEAD_BYTES} bytes"))
        limit = self.limit_for(scope)
        declared = [v for k, v in scope["headers"] if k == b"content-length"]
        if declared and declared[0].isdigit() and int(declared[0]) > limit:
            return await self._send(send, too_large(limit))

        received = 0
        body_done = False
        refusal: Refused | None = None
        started = False

        async def limited_receive():
            nonlocal received, body_done, refusal
            if refusal is not None:
                raise refusal
            if body_done:
                return await receive()  # after the body: only a disconnect can come, whenever it does
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout)
            except asyncio.TimeoutError:
                refusal = Refused(408, f"no part of the request body arrived for {self.body_timeout:g} seconds")
                raise refusal from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > limit:
                    refusal = too_large(limit)
                    raise refusal
            return message

        async def guarded_send(message):
            nonlocal started
            if refusal is not None:
                return  # the app's answer to a cut-off body (a parse error); ours replaces it
            started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Refused:
            pass
        if refusal is not None and not started:
            await self._send(send, refusal)

    @staticmethod
    async def _send(send, refusal: Refused) -> None:
        for message in json_error(refusal.status, refusal.detail):
            await send(message)


def too_large(limit: int) -> Refused:
    return Refused(413, f"request body is larger than the {limit} byte limit")


class JsonErrorH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with JSON bodies on the requests it refuses itself (run it with
    `h11_max_incomplete_event_size=MAX_HEAD_BYTES`: `service.cli.run_api` does)."""

    def send_400_response(self, msg: str) -> None:
        # h11 refuses malformed requests and heads over MAX_HEAD_BYTES; say which it was.
        body, headers = closing_json(
            f"malformed HTTP request, or a request line and headers over {MAX_HEAD_BYTES} bytes")
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                      h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()
