"""Hostile requests against the real API process (uvicorn + h11, as `repaint api` runs it).

Every refused case must get a specific 4xx with a JSON `{"detail": ...}` body, and the process
must go on serving (`GET /healthz`) with bounded memory. Most cases go through httpx; what httpx
will not send (non-ASCII header bytes, chunked bodies, a Content-Length that lies, a request head
spread over several writes) goes through a raw socket, and the answer is parsed here.

Images are crafted in memory: truncated, empty, polyglot, animated, other formats, and PNG headers
that claim huge dimensions without any pixel data behind them.
"""

from __future__ import annotations

import functools
import io
import json
import select
import socket
import struct
import time
import zlib
from dataclasses import dataclass
from typing import Callable

import httpx
import psutil
import pytest
from PIL import Image

from service.app import SMALL_BODY_LIMIT
from service.http_limits import MAX_HEAD_BYTES
from tests.conftest import face_and_mask, png_bytes
from tests.procs import ApiProcess, RedisServer

API_KEY = "good-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
AUTH_LINE = b"Authorization: Bearer " + API_KEY.encode()
MAX_UPLOAD = 1 << 20
# What POST /inpaint may send in all (service.app.body_limit): two files and the form fields.
INPAINT_BODY_LIMIT = 2 * MAX_UPLOAD + SMALL_BODY_LIMIT
MiB = 1 << 20
BODY_TIMEOUT = 2  # seconds a body may stall (30 by default)


@pytest.fixture(scope="module")
def api():
    redis = RedisServer().start()
    try:
        # Log level "error": uvicorn warns on every malformed request, and this suite sends many.
        proc = ApiProcess(redis.url, REPAINT_API_KEYS=API_KEY, REPAINT_MAX_UPLOAD_BYTES=str(MAX_UPLOAD),
                          REPAINT_LOG_LEVEL="error", REPAINT_BODY_TIMEOUT=str(BODY_TIMEOUT))
        try:
            yield proc
        finally:
            proc.stop()
    finally:
        redis.stop()


def rss(api: ApiProcess) -> int:
    return psutil.Process(api.proc.pid).memory_info().rss


@pytest.fixture(scope="module", autouse=True)
def rss_at_start(api) -> int:
    """The API's RSS once warmed up (imports, each decoder, one refusal), before any hostile case."""
    for image in (face_png, face_jpeg, face_webp):
        assert form(image=image)(api).status == 202
    assert form(image=lambda: face_png() + b"\0" * MAX_UPLOAD)(api).status == 413
    return rss(api)


# --- answers -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @classmethod
    def of(cls, r: httpx.Response) -> "Answer":
        return cls(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content)

    def json(self):
        return json.loads(self.body)


Sender = Callable[[ApiProcess], Answer]


def parse_response(data: bytes) -> Answer:
    """The first HTTP/1.1 response in `data` (read from a raw socket)."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, f"no complete HTTP response: {data[:300]!r}"
    status_line, *lines = head.split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    length = int(headers.get("content-length", len(rest)))
    return Answer(int(status_line.split()[1]), headers, rest[:length])


def still_serving(api: ApiProcess) -> bool:
    return httpx.get(api.url + "/healthz", timeout=10).status_code == 200


# --- raw sockets -------------------------------------------------------------------------------

def connect(api: ApiProcess, timeout: float = 15) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", api.port), timeout=timeout)
    # Each write leaves at once: the multi-write cases depend on the server seeing separate reads.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass  # the server closed with our unread bytes in its buffer (an RST); what it sent stays readable
    return data


def exchange(api: ApiProcess, pieces: list[bytes], pause: float = 0.0) -> Answer:
    """Send `pieces` (one write each, `pause` seconds apart) and read the answer until the server closes."""
    with connect(api) as sock:
        try:
            for piece in pieces:
                sock.sendall(piece)
                if pause:
                    time.sleep(pause)
        except (BrokenPipeError, ConnectionResetError):
            pass  # an early refusal: the server answered and closed before reading everything
        return parse_response(read_until_closed(sock))


def raw_request(method: bytes = b"POST", path: bytes = b"/inpaint", headers: list[bytes] = (),
                body: bytes = b"", auth: bytes | None = AUTH_LINE) -> bytes:
    lines = [method + b" " + path + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close",
             *([auth] if auth is not None else []), *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def raw(request: bytes | Callable[[], bytes], write_size: int | None = None, pause: float = 0.0) -> Sender:
    """Sends `request` as it is, in one write or in writes of `write_size` bytes."""
    def send(api):
        data = request() if callable(request) else request
        size = write_size or len(data)
        return exchange(api, [data[i:i + size] for i in range(0, len(data), size)], pause)
    return send


def multipart() -> tuple[bytes, bytes]:
    """(Content-Type header line, body) of a valid POST /inpaint form, encoded by httpx."""
    files = {"image": ("image.png", face_png(), "image/png"), "mask": ("mask.png", mask_png(), "image/png")}
    request = httpx.Request("POST", "http://x/inpaint", files=files)
    return b"Content-Type: " + request.headers["content-type"].encode(), request.read()


def with_body(headers: Callable[[bytes], list[bytes]],
              frame: Callable[[bytes], bytes] = lambda body: body) -> Callable[[], bytes]:
    """A raw POST /inpaint of the valid form, with headers and a body framing computed from it."""
    def build():
        ctype, body = multipart()
        return raw_request(headers=[ctype, *headers(body)], body=frame(body))
    return build


def chunked(body: bytes, size: int = 1024) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size])
                    for i in range(0, len(body), size)) + b"0\r\n\r\n"


def form_with_boundary(boundary: bytes) -> bytes:
    """The valid form with another boundary (RFC 2046 allows at most 70 characters)."""
    ctype, body = multipart()
    body = body.replace(ctype.partition(b"boundary=")[2], boundary)
    return raw_request(headers=[b"Content-Type: multipart/form-data; boundary=" + boundary,
                                b"Content-Length: %d" % len(body)], body=body)


def chunked_form_where(edit: Callable[[bytes], bytes]) -> Sender:
    """The valid form, edited, sent with Transfer-Encoding: chunked."""
    return raw(with_body(lambda body: [b"Transfer-Encoding: chunked"], lambda body: chunked(edit(body))))


def chunked_framing(framed: bytes) -> Sender:
    """Transfer-Encoding: chunked, followed by this hand-framed (or mis-framed) body."""
    return raw(with_body(lambda body: [b"Transfer-Encoding: chunked"], lambda body: framed))


STREAM_BOUNDARY = b"hostile-boundary"
STREAM_PIECE = 64 * 1024


def chunked_upload_head() -> bytes:
    """Head and first chunk of a chunked POST /inpaint whose image part goes on for as long as
    the client sends (a valid multipart start, so only the size limit can stop it)."""
    preamble = (b"--" + STREAM_BOUNDARY + b'\r\nContent-Disposition: form-data; name="image"; '
                b'filename="image.png"\r\nContent-Type: image/png\r\n\r\n')
    head = raw_request(headers=[b"Content-Type: multipart/form-data; boundary=" + STREAM_BOUNDARY,
                                b"Transfer-Encoding: chunked"])
    return head + b"%x\r\n%s\r\n" % (len(preamble), preamble)


# One chunk of image bytes, framed once and sent as often as needed.
STREAM_CHUNK = b"%x\r\n%s\r\n" % (STREAM_PIECE, b"\0" * STREAM_PIECE)


def chunked_upload(total: int) -> Sender:
    """A chunked upload of `total` image bytes, sent as fast as the server reads them."""
    return raw(lambda: chunked_upload_head() + STREAM_CHUNK * (total // STREAM_PIECE), write_size=STREAM_PIECE)


# --- httpx senders ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Text:
    """A form field sent as text where the API expects a file."""
    value: str


DEFAULT = object()


def form(image=DEFAULT, mask=DEFAULT, headers: dict | None = None, **fields) -> Sender:
    """POST /inpaint of the valid face and mask unless told otherwise. `image`/`mask`: bytes, a
    builder returning bytes, a `Text`, or None to leave the part out. Every file goes as a .png
    named image/png, whatever it holds: the API must judge the bytes, not the name."""
    def send(api):
        files, data = {}, {k: str(v) for k, v in fields.items()}
        for name, part in (("image", image), ("mask", mask)):
            part = {"image": face_png, "mask": mask_png}[name] if part is DEFAULT else part
            if isinstance(part, Text):
                data[name] = part.value
            elif part is not None:
                files[name] = (f"{name}.png", part() if callable(part) else part, "image/png")
        r = httpx.post(api.url + "/inpaint", files=files or None, data=data, headers={**AUTH, **(headers or {})},
                       timeout=30)
        return Answer.of(r)
    return send


def post(path: str, headers: dict | None = None, **request) -> Sender:
    def send(api):
        return Answer.of(httpx.post(api.url + path, headers={**AUTH, **(headers or {})}, timeout=30, **request))
    return send


def get(path: str, headers: dict) -> Sender:
    """GET with exactly these headers (no API key unless they hold one)."""
    def send(api):
        return Answer.of(httpx.get(api.url + path, headers=headers, timeout=30))
    return send


# --- images ------------------------------------------------------------------------------------

def encoded(img: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **options)
    return out.getvalue()


@functools.cache
def face_png() -> bytes:
    return png_bytes(face_and_mask()[0])


@functools.cache
def mask_png() -> bytes:
    return png_bytes(face_and_mask()[1])


def face_jpeg() -> bytes:
    return encoded(face_and_mask()[0], "JPEG")


def face_webp() -> bytes:
    return encoded(face_and_mask()[0], "WEBP")


def face_as(fmt: str, **options) -> Callable[[], bytes]:
    return lambda: encoded(face_and_mask()[0], fmt, **options)


def animated(fmt: str, which: int = 0) -> Callable[[], bytes]:
    """Two different frames (identical ones would be merged into one)."""
    def build():
        still = face_and_mask()[which]
        return encoded(still, fmt, save_all=True, append_images=[still.rotate(90)])
    return build


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int, color_type: int = 2, idat: bytes = b"") -> bytes:
    """A PNG whose IHDR claims width x height (8-bit), with `idat` (often nothing) as its pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + (png_chunk(b"IDAT", idat) if idat else b"")
            + png_chunk(b"IEND", b""))


@functools.cache
def bomb_png() -> bytes:
    """A real decompression bomb: 10000x10000 black pixels in ~100 KB (100 MB once decoded)."""
    side = 10_000
    packer = zlib.compressobj(9)
    row = b"\0" * (side + 1)  # filter byte + one grey byte per pixel
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    return png_claiming(side, side, color_type=0, idat=idat)


def blank_png(width: int, height: int, mode: str = "RGB", fill: int = 0) -> Callable[[], bytes]:
    return lambda: png_bytes(Image.new(mode, (width, height), fill))


def cut(build: Callable[[], bytes], keep: int | float) -> Callable[[], bytes]:
    """The first `keep` bytes (or that fraction) of an encoded file."""
    def build_cut():
        data = build()
        return data[:keep if isinstance(keep, int) else int(len(data) * keep)]
    return build_cut


def ihdr_with_bad_crc() -> bytes:
    data = bytearray(face_png())
    data[29] ^= 0xFF  # the last byte of the IHDR's CRC (8 signature + 4 length + 4 type + 13 data)
    return bytes(data)


def idat_with_bad_stream() -> bytes:
    data = bytearray(face_png())
    data[data.index(b"IDAT") + 10] ^= 0xFF
    return bytes(data)


# --- the table ---------------------------------------------------------------------------------

# A file with PNG/JPEG/WebP magic bytes that Pillow cannot identify (cut inside its header, a bad
# IHDR CRC) is a corrupt image of an accepted format: 422, as a truncated one is.

# A head over MAX_HEAD_BYTES: h11 refuses it (400) when it arrives over several reads, the app
# (431) when it arrives in one; TCP decides which, so either answer is right.
HEAD_TOO_LARGE = (400, 431)


def case(case_id: str, send: Sender, status: int, detail: str = "", marks=()):
    return pytest.param(send, status, detail, id=case_id, marks=marks)


WIDE = 16384  # one pixel wider than WebP can write
EIGHT_MiB = 8 * MiB

HOSTILE = [
    # Headers: non-ASCII bytes, too long, too many.
    case("header-name-non-ascii", raw(raw_request(b"GET", b"/healthz", [b"X-Caf\xc3\xa9: 1"])), 400, "malformed"),
    case("path-raw-non-ascii", raw(raw_request(b"GET", b"/jobs/caf\xc3\xa9")), 400, "malformed"),
    case("header-value-nul", raw(raw_request(b"GET", b"/healthz", [b"X-Nul: a\0b"])), 400, "malformed"),
    case("head-40KiB-in-several-writes",
         raw(raw_request(b"GET", b"/healthz", [b"X-Pad: " + b"a" * 40_000]), write_size=4096, pause=0.02),
         400, f"over {MAX_HEAD_BYTES} bytes"),
    case("3000-headers-in-several-writes",
         raw(raw_request(b"GET", b"/healthz", [b"X-H%d: 1" % i for i in range(3000)]), write_size=4096, pause=0.02),
         400, f"over {MAX_HEAD_BYTES} bytes"),
    case("path-40KiB-in-several-writes", raw(raw_request(b"GET", b"/jobs/" + b"a" * 40_000), write_size=4096,
                                             pause=0.02), 400, f"over {MAX_HEAD_BYTES} bytes"),
    case("head-40KiB-in-one-write", raw(raw_request(b"GET", b"/healthz", [b"X-Pad: " + b"a" * 40_000])),
         HEAD_TOO_LARGE, f"{MAX_HEAD_BYTES} bytes"),
    case("tls-client-hello", raw(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256))), 400),
    case("http2-preface", raw(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 404),

    # Authentication: any Authorization value is a key or not, never an error.
    case("auth-utf8-bytes", raw(raw_request(b"GET", b"/jobs/x", auth=b"Authorization: Bearer caf\xc3\xa9")),
         401, "API key"),
    case("auth-invalid-utf8", raw(raw_request(b"GET", b"/jobs/x", auth=b"Authorization: Bearer \xff\xfe")),
         401, "API key"),
    case("auth-10KiB-token", form(headers={"Authorization": "Bearer " + "k" * 10240}), 401, "API key"),
    case("auth-missing", get("/jobs/x", {}), 401, "API key"),
    case("auth-basic-scheme", get("/jobs/x", {"Authorization": f"Basic {API_KEY}"}), 401, "API key"),
    case("auth-key-without-scheme", get("/jobs/x", {"Authorization": API_KEY}), 401, "API key"),
    case("auth-bearer-without-token", raw(raw_request(b"GET", b"/jobs/x", auth=b"Authorization: Bearer")),
         401, "API key"),
    case("auth-key-plus-byte", raw(raw_request(b"GET", b"/jobs/x", auth=AUTH_LINE + b"\xff")), 401, "API key"),

    # Body framing: Content-Length that lies or is malformed, chunked bodies.
    case("content-length-shorter-than-body",  # the cut falls inside the image part: it never ends
         raw(with_body(lambda b: [b"Content-Length: %d" % (len(b) // 3)])), 422, "image"),
    case("content-length-over-limit-small-body",  # refused from the declaration, before reading
         raw(with_body(lambda b: [b"Content-Length: %d" % (50 * MiB)])), 413, "byte limit"),
    case("content-length-one-over-limit",
         raw(with_body(lambda b: [b"Content-Length: %d" % (INPAINT_BODY_LIMIT + 1)])), 413, "byte limit"),
    case("content-length-over-small-limit-elsewhere",
         raw(raw_request(b"POST", b"/jobs/x", [b"Content-Length: %d" % (SMALL_BODY_LIMIT + 1)])), 413, "byte limit"),
    case("content-length-not-a-number", raw(with_body(lambda b: [b"Content-Length: abc"])), 400),
    case("content-length-negative", raw(with_body(lambda b: [b"Content-Length: -1"])), 400),
    case("content-length-40-digits", raw(with_body(lambda b: [b"Content-Length: " + b"9" * 40])), 400),
    case("content-length-unicode-digit", raw(with_body(lambda b: [b"Content-Length: \xc2\xb2"])), 400),
    case("content-length-twice-differing",
         raw(with_body(lambda b: [b"Content-Length: %d" % len(b), b"Content-Length: 5"])), 400),
    case("transfer-encoding-gzip", raw(with_body(lambda b: [b"Transfer-Encoding: gzip"])), 400),
    case("chunk-size-not-hex", chunked_framing(b"zz\r\nabc\r\n0\r\n\r\n"), 400),
    case("chunk-size-21-hex-digits", chunked_framing(b"1" * 21 + b"\r\nabc\r\n0\r\n\r\n"), 400),
    case("chunk-shorter-than-its-data", chunked_framing(b"3\r\nabcdef\r\n0\r\n\r\n"), 400),
    case("chunked-8MiB-upload", chunked_upload(EIGHT_MiB), 413, f"{INPAINT_BODY_LIMIT} byte limit"),

    # Form encoding.
    case("json-body", post("/inpaint", json={"image": "x"}), 422, "image"),
    case("multipart-without-boundary", post("/inpaint", content=b"x" * 100,
                                            headers={"Content-Type": "multipart/form-data"}), 400, "boundary"),
    case("multipart-garbage", post("/inpaint", content=b"x" * 100,
                                   headers={"Content-Type": "multipart/form-data; boundary=abc"}), 400, "multipart"),
    case("multipart-300-char-boundary", raw(lambda: form_with_boundary(b"b" * 300)), 400, "multipart"),
    case("part-header-200KB", chunked_form_where(lambda body: body.replace(
        b"Content-Type: image/png", b"Content-Type: image/png\r\nX-Junk: " + b"j" * 200_000, 1)), 400, "multipart"),
    case("filename-100KB-non-ascii", chunked_form_where(lambda body: body.replace(
        b'filename="image.png"', b'filename="' + "\u00e9".encode() * 50_000 + b'"', 1)), 400, "multipart"),
    case("field-name-invalid-utf8", chunked_form_where(lambda body: body.replace(
        b'name="image"', b'name="image\xff\xfe"', 1)), 422, "image"),
    case("1100-form-fields", form(**{f"x{i}": "1" for i in range(1100)}), 400, "Too many fields"),
    case("text-field-over-1MiB", form(webhook="x" * (MiB + 1)), 400, "maximum size"),
    case("image-missing", form(image=None), 422, "image"),
    case("image-as-text-field", form(image=Text("hello")), 422, "UploadFile"),
    case("mask-as-text-field", form(mask=Text("hello")), 422, "UploadFile"),
    case("idempotency-key-201-chars", form(headers={"Idempotency-Key": "k" * 201}), 422, "idempotency-key"),

    # Images.
    case("image-zero-bytes", form(image=b""), 422, "image is empty"),
    case("mask-zero-bytes", form(mask=b""), 422, "mask is empty"),
    case("image-over-1MiB", form(image=lambda: face_png() + b"\0" * MAX_UPLOAD), 413, "1048576 byte limit"),
    case("mask-over-1MiB", form(mask=lambda: mask_png() + b"\0" * MAX_UPLOAD), 413, "1048576 byte limit"),
    case("png-cut-in-half", form(image=cut(face_png, 0.5)), 422, "not a readable image"),
    case("png-cut-after-ihdr", form(image=cut(face_png, 33)), 422, "not a readable image"),
    case("png-signature-only", form(image=cut(face_png, 8)), 422, "not a readable image"),
    case("png-ihdr-bad-crc", form(image=ihdr_with_bad_crc), 422, "not a readable image"),
    case("png-idat-corrupt-stream", form(image=idat_with_bad_stream), 422, "not a readable image"),
    case("jpeg-cut-in-half", form(image=cut(face_jpeg, 0.5)), 422, "not a readable image"),
    case("jpeg-soi-only", form(image=cut(face_jpeg, 2)), 422, "not a readable image"),
    case("webp-cut-in-half", form(image=cut(face_webp, 0.5)), 422, "not a readable image"),
    case("webp-riff-header-only", form(image=cut(face_webp, 12)), 422, "not a readable image"),
    case("gif-named-png", form(image=face_as("GIF")), 415, "not a PNG, JPEG or WebP"),
    case("animated-gif", form(image=animated("GIF")), 415, "not a PNG, JPEG or WebP"),
    case("bmp", form(image=face_as("BMP")), 415, "not a PNG, JPEG or WebP"),
    case("tiff", form(image=face_as("TIFF")), 415, "not a PNG, JPEG or WebP"),
    case("ico", form(image=face_as("ICO")), 415, "not a PNG, JPEG or WebP"),
    case("svg", form(image=b'<svg xmlns="http://www.w3.org/2000/svg" width="32" height="32"/>'),
         415, "not a PNG, JPEG or WebP"),
    case("html-then-png-polyglot", form(image=lambda: b"<html><script>alert(1)</script></html>" + face_png()),
         415, "not a PNG, JPEG or WebP"),
    case("apng", form(image=animated("PNG")), 422, "animated (2 frames)"),
    case("animated-webp", form(image=animated("WEBP")), 422, "animated (2 frames)"),
    case("png-claims-100000x100000", form(image=png_claiming(100_000, 100_000)), 413,
         "image claims 10,000,000,000 pixels: more than the 40,000,000 pixel limit (REPAINT_MAX_IMAGE_PIXELS)"),
    case("png-claims-2^32-1-square", form(image=png_claiming(2**32 - 1, 2**32 - 1)), 413,
         "more than the 40,000,000 pixel limit"),
    case("png-claims-8000x6000", form(image=png_claiming(8000, 6000)), 413,
         "image is 8000x6000 (48,000,000 pixels): more than the 40,000,000 pixel limit"),
    case("decompression-bomb", form(image=bomb_png), 413, "pixels: more than the 40,000,000 pixel limit"),
    case("png-claims-0x0", form(image=png_claiming(0, 0)), 422, "not a readable image"),
    case("webp-output-16384-wide", form(image=blank_png(WIDE, 1), mask=blank_png(WIDE, 1, "L", 255),
                                        output_format="webp"), 422, "webp results can be at most 16383"),
    case("jpeg-output-65501-wide", form(image=blank_png(65501, 1), mask=blank_png(65501, 1, "L", 255),
                                        output_format="jpeg"), 422, "jpeg results can be at most 65500"),

    # Masks.
    case("mask-other-size", form(mask=blank_png(31, 32, "L", 255)), 422, "they must match"),
    case("mask-all-black", form(mask=blank_png(32, 32, "L", 0)), 422, "selects no pixel"),
    case("mask-white-but-transparent", form(mask=blank_png(32, 32, "RGBA", (255, 255, 255, 0))),
         422, "selects no pixel"),
    case("mask-not-an-image", form(mask=b"hello, not an image"), 415, "mask is not a PNG"),
    case("mask-animated", form(mask=animated("PNG", which=1)), 422, "mask is animated"),
    case("mask-claims-100000x100000", form(mask=png_claiming(100_000, 100_000)), 413,
         "mask claims 10,000,000,000 pixels"),
    case("mask-header-without-pixels", form(mask=png_claiming(32, 32)), 422, "mask is not a readable image"),
    case("no-mask-opaque-image", form(mask=None), 422, "send a mask"),

    # Every form field: wrong types, out of range, unknown values.
    case("seed-word", form(seed="abc"), 422, "seed"),
    case("seed-fraction", form(seed="1.5"), 422, "seed"),
    case("seed-negative", form(seed=-1), 422, "seed"),
    case("seed-2^53", form(seed=2**53), 422, "seed"),
    case("seed-5000-digits", form(seed="1" * 5000), 422, "seed"),
    case("num_samples-0", form(num_samples=0), 422, "num_samples"),
    case("num_samples-9", form(num_samples=9), 422, "num_samples must be at most 8"),
    case("num_samples-10^30", form(num_samples=10**30), 422, "num_samples must be at most 8"),
    case("num_samples-exponent", form(num_samples="1e3"), 422, "num_samples"),
    case("num_samples-bool", form(num_samples="true"), 422, "num_samples"),
    case("preset-unknown", form(preset="ultra"), 422, "unknown preset"),
    case("steps-1", form(steps=1), 422, "steps"),
    case("steps-0", form(steps=0), 422, "steps"),
    case("steps-over-model", form(steps=1001), 422, "steps must be at most 1000"),
    case("steps-fraction", form(steps="2.5"), 422, "steps"),
    case("steps-word", form(steps="ten"), 422, "steps"),
    case("jump_length-0", form(jump_length=0), 422, "jump_length"),
    case("jump_n_sample-0", form(jump_n_sample=0), 422, "jump_n_sample"),
    case("evaluations-over-limit", form(steps=1000, jump_n_sample=100), 422, "network evaluations"),
    case("class_label-negative", form(class_label=-1), 422, "class_label"),
    case("class_label-on-unconditional-model", form(class_label=3), 422, "not class-conditional"),
    case("classifier_scale-over-100", form(classifier_scale=101), 422, "classifier_scale"),
    case("classifier_scale-negative", form(classifier_scale=-0.1), 422, "classifier_scale"),
    case("classifier_scale-nan", form(classifier_scale="nan"), 422, "classifier_scale"),
    case("classifier_scale-inf", form(classifier_scale="inf"), 422, "classifier_scale"),
    case("classifier_scale-word", form(classifier_scale="abc"), 422, "classifier_scale"),
    case("classifier_scale-on-unconditional-model", form(classifier_scale=1), 422, "not class-conditional"),
    case("strategy-unknown", form(strategy="zoom"), 422, "strategy"),
    case("blend-65", form(blend=65), 422, "blend"),
    case("blend-negative", form(blend=-1), 422, "blend"),
    case("blend-word", form(blend="x"), 422, "blend"),
    case("mask_dilate-65", form(mask_dilate=65), 422, "mask_dilate"),
    case("mask_dilate-negative", form(mask_dilate=-1), 422, "mask_dilate"),
    case("output_format-gif", form(output_format="gif"), 422, "output_format"),
    case("output_format-uppercase", form(output_format="PNG"), 422, "output_format"),
    case("webhook-while-disabled", form(webhook="http://example.com/hook"), 422, "webhooks are not enabled"),
    case("webhook-2001-chars", form(webhook="http://a/" + "x" * 1992), 422, "webhook"),
    case("model-unknown", form(model="nope"), 404, "unknown model"),
    case("model-non-ascii", form(model="\u6a21\u578b"), 404, "unknown model"),
    case("model-100KB-name", form(model="m" * 100_000), 404, "unknown model"),
]


@pytest.mark.parametrize("send, status, detail", HOSTILE)
def test_hostile_request_gets_a_json_4xx_and_the_api_keeps_serving(api, send, status, detail):
    answer = send(api)
    assert answer.status in (status if isinstance(status, tuple) else (status,)), answer
    assert answer.headers.get("content-type", "").startswith("application/json"), answer
    body = answer.json()
    assert "detail" in body, body
    assert detail in json.dumps(body["detail"], ensure_ascii=False), body
    assert still_serving(api)


# --- odd but valid: accepted, and the job says what the API made of it ---------------------------

def idempotency_key_with_utf8_bytes() -> bytes:
    ctype, body = multipart()
    return raw_request(headers=[ctype, b"Idempotency-Key: caf\xc3\xa9-1", b"Content-Length: %d" % len(body)], body=body)


def chunked_form() -> bytes:
    ctype, body = multipart()
    return raw_request(headers=[ctype, b"Transfer-Encoding: chunked"], body=chunked(body))


FACE = {"width": 32, "height": 32, "mode": "RGB"}

ACCEPTED = [
    pytest.param(form(image=lambda: encoded(face_and_mask()[0].convert("CMYK"), "JPEG")), FACE, id="cmyk-jpeg"),
    pytest.param(form(image=blank_png(1, 1), mask=blank_png(1, 1, "L", 255)), {"width": 1, "height": 1, "mode": "RGB"},
                 id="1x1-image-and-mask"),
    pytest.param(form(image=lambda: face_png() + b"PK\x03\x04" + bytes(200)), FACE, id="png-then-zip-polyglot"),
    pytest.param(form(image=lambda: face_png() + b"<html><script>alert(1)</script></html>"), FACE,
                 id="png-then-html-polyglot"),
    pytest.param(raw(chunked_form), FACE, id="chunked-form-under-limit"),
    pytest.param(raw(idempotency_key_with_utf8_bytes), FACE, id="idempotency-key-utf8-bytes"),
]


@pytest.mark.parametrize("send, image", ACCEPTED)
def test_odd_but_valid_upload_is_queued_as_the_image_it_is(api, send, image):
    answer = send(api)
    assert answer.status == 202, answer
    job = httpx.get(f"{api.url}/jobs/{answer.json()['id']}", headers=AUTH, timeout=10).json()
    assert job["status"] == "queued" and job["params"]["image"] == image
    assert still_serving(api)


# --- lying bodies that never end: refused once they stall; only their own connection waits -------

@pytest.mark.parametrize("frame", [
    pytest.param(lambda body: (b"Content-Length: %d" % (len(body) + 400), body), id="content-length-longer"),
    pytest.param(lambda body: (b"Transfer-Encoding: chunked", b"%x\r\n%s" % (len(body) + 400, body)),
                 id="chunk-longer-than-sent"),
])
def test_body_shorter_than_declared_is_refused_when_it_stalls(api, frame):
    ctype, body = multipart()
    header, sent = frame(body)
    with connect(api, timeout=10) as sock:
        sock.sendall(raw_request(headers=[ctype, header], body=sent))
        # The server waits for the missing bytes; everyone else is served meanwhile.
        assert still_serving(api)
        assert form()(api).status == 202
        # Then the stalled body is refused with a 408 and the connection closed.
        answer = parse_response(read_until_closed(sock))
    assert answer.status == 408 and "no part of the request body arrived" in answer.json()["detail"]
    assert still_serving(api)


# --- early refusal and memory -----------------------------------------------------------------

def test_chunked_upload_over_the_limit_is_refused_early_and_closed(api):
    """The 413 arrives while the client has sent little more than the limit, not its 8 MiB."""
    sent = 0
    with connect(api, timeout=10) as sock:
        sock.sendall(chunked_upload_head())
        while sent < EIGHT_MiB:
            try:
                sock.sendall(STREAM_CHUNK)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += STREAM_PIECE
            # Slowly, so that the server keeps up; once past the limit, give it time to answer.
            if select.select([sock], [], [], 0.01 if sent <= INPAINT_BODY_LIMIT else 0.25)[0]:
                break
        received = read_until_closed(sock)  # returns only once the server has closed the connection
    assert sent < 3 * MiB, f"the 413 came after {sent} bytes"
    answer = parse_response(received)
    assert answer.status == 413 and answer.headers["connection"].lower() == "close"
    assert f"{INPAINT_BODY_LIMIT} byte limit" in answer.json()["detail"]
    assert still_serving(api)


def test_memory_stays_bounded_after_the_table_and_a_flood_of_oversize_uploads(api, rss_at_start):
    # The table above ran first (file order); then 20 of each of the largest refusals.
    for _ in range(20):
        assert chunked_upload(EIGHT_MiB)(api).status == 413
        assert form(image=png_claiming(100_000, 100_000))(api).status == 413
        assert form(image=bomb_png)(api).status == 413
    grown = rss(api) - rss_at_start
    assert grown < 150 * MiB, f"the API's RSS grew by {grown / MiB:.0f} MiB"
    assert still_serving(api)
