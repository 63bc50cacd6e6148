"""Which webhook URLs may be called, and how bodies are signed (shared by API and worker, torch-free).

A webhook makes the service send an HTTP request where a client says, from inside the
operator's network: without care, a blind SSRF into it (cloud metadata, Redis, admin panels).
The rules, checked by the API when a job is submitted and by the worker again before every
delivery attempt (a name may resolve elsewhere by then):

- only `http` and `https` URLs, without credentials in them;
- REPAINT_WEBHOOK_ALLOWED_HOSTS lists what may be called: `host` (on its scheme's default port),
  `host:port`, `[v6addr]:port`, or `*` for any host whose every address is public;
- a host that resolves to a loopback, private, link-local, unique-local, multicast, reserved or
  otherwise non-public address is refused unless that exact host and port are listed;
- the worker connects to an address it checked (`Target.addresses`), never resolving again in
  between, so a name cannot be re-pointed at an internal address after the check;
- webhooks need REPAINT_WEBHOOK_SECRET: without one they are off.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import socket
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

EVENTS = ("started", "progress", "completed")
DEFAULT_PORTS = {"http": 80, "https": 443}

# (host, port), port None = the scheme's default port; host "*" = any public host, any port.
AllowedEntry = tuple[str, int | None]
Resolver = Callable[[str, int], list[str]]

# Checked in this order, so that an address is named by its most specific class.
_FORBIDDEN_CLASSES = (
    ("is_unspecified", "unspecified"),
    ("is_loopback", "loopback"),
    ("is_link_local", "link-local"),
    ("is_multicast", "multicast"),
    ("is_reserved", "reserved"),
)
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")
# Not global, though this Python's `is_private`/`is_global` may not say so: IETF protocol
# assignments (192.0.0.8 and friends), deprecated IPv6 site-local.
_OTHER_NON_PUBLIC = (ipaddress.ip_network("192.0.0.0/24"), ipaddress.ip_network("fec0::/10"))
# Name lookups: a thread each (getaddrinfo blocks), bounded in number and in time, so that a
# name server that never answers costs a refusal, not a stuck request or delivery.
RESOLVE_TIMEOUT = 5.0
_resolver_pool = ThreadPoolExecutor(16, thread_name_prefix="webhook-dns")


class WebhookRefused(ValueError):
    """A webhook URL this service will not call; the message says why (in words safe to show the
    client: never an internal address)."""


class WebhookUnresolvable(WebhookRefused):
    """The host did not resolve (now): refused at submit, retried at delivery (DNS may recover)."""


def parse_allowed_hosts(setting: str) -> list[str]:
    """REPAINT_WEBHOOK_ALLOWED_HOSTS as a list (comma-separated; empty: webhooks off)."""
    return [h.strip() for h in setting.split(",") if h.strip()]


def parse_entry(entry: str) -> AllowedEntry:
    """'host', 'host:port', '[v6]:port', a bare IPv6 address, or '*'."""
    entry = entry.strip().lower()
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        host, port = host, int(rest[1:]) if rest.startswith(":") else None
    elif entry.count(":") == 1:
        host, port_text = entry.split(":")
        host, port = host, int(port_text)
    else:
        host, port = entry, None
    if host == "*" and port is not None:
        raise ValueError("'*' takes no port")
    if port is not None and not 0 < port < 65536:
        raise ValueError("port out of range")
    return (host if host == "*" else ascii_host(host)), port


def ascii_host(host: str) -> str:
    """The host as DNS and HTTP see it: lower case, IDNA-encoded, no trailing dot."""
    host = host.rstrip(".").lower()
    return host if host.isascii() else host.encode("idna").decode("ascii")


def forbidden_reason(address: str) -> str | None:
    """Why this address may not be called unless listed exactly (None: a public address)."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if ip.version == 6:
        # Addresses that carry an IPv4 address are judged by it (::ffff:127.0.0.1 is loopback).
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None:
            return forbidden_reason(str(embedded))
        if ip in _UNIQUE_LOCAL:
            return "unique-local"
    for attribute, name in _FORBIDDEN_CLASSES:
        if getattr(ip, attribute):
            return name
    if any(ip in network for network in _OTHER_NON_PUBLIC):
        return "non-public"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "non-public"
    return None


def system_resolve(host: str, port: int) -> list[str]:
    """Every address of `host` (one for an IP literal), in the resolver's order; OSError when it
    does not resolve within RESOLVE_TIMEOUT seconds."""
    future = _resolver_pool.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        infos = future.result(RESOLVE_TIMEOUT)
    except FutureTimeout:
        future.cancel()
        raise OSError(f"no answer within {RESOLVE_TIMEOUT:g} s") from None
    return list(dict.fromkeys(info[4][0] for info in infos))


@dataclass(frozen=True)
class Target:
    """A checked webhook URL and the addresses the check allowed."""

    url: str
    scheme: str
    host: str
    port: int
    path: str  # path and query, as given
    addresses: tuple[str, ...]

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    def url_for(self, address: str) -> str:
        """The URL with `address` in place of the host name (TLS still verifies the name via SNI)."""
        literal = f"[{address}]" if ":" in address else address
        return f"{self.scheme}://{literal}:{self.port}{self.path}"


class WebhookPolicy:
    """The allow-list and the secret; `check(url)` answers a Target or raises WebhookRefused."""

    def __init__(self, allowed_hosts: list[str], secret: str, resolve: Resolver = system_resolve):
        self.allowed_hosts = allowed_hosts
        self.secret = secret
        self.resolve = resolve
        self.entries: list[AllowedEntry] = []
        for entry in allowed_hosts:
            try:
                self.entries.append(parse_entry(entry))
            except ValueError:
                raise ValueError(f"REPAINT_WEBHOOK_ALLOWED_HOSTS: {entry!r} is not 'host', 'host:port', "
                                 "'[v6addr]:port' or '*'") from None

    @classmethod
    def from_settings(cls, allowed_hosts: str, secret: str, resolve: Resolver = system_resolve) -> "WebhookPolicy":
        return cls(parse_allowed_hosts(allowed_hosts), secret, resolve)

    @property
    def enabled(self) -> bool:
        return bool(self.entries) and bool(self.secret)

    @property
    def disabled_reason(self) -> str | None:
        if not self.entries:
            return "REPAINT_WEBHOOK_ALLOWED_HOSTS is empty"
        if not self.secret:
            return "REPAINT_WEBHOOK_SECRET is empty (webhooks are only sent signed)"
        return None

    @property
    def any_public_host(self) -> bool:
        return ("*", None) in self.entries

    def listed(self, host: str, port: int, scheme: str) -> bool:
        """Whether the operator listed this exact host and port."""
        return (host, port) in self.entries or (port == DEFAULT_PORTS[scheme] and (host, None) in self.entries)

    def check(self, url: str) -> Target:
        try:
            parts = urlsplit(url)
            hostname, port = parts.hostname, parts.port
        except ValueError:  # an unclosed IPv6 bracket, a port that is not a number from 0 to 65535
            raise WebhookRefused("not a valid URL") from None
        if parts.scheme not in DEFAULT_PORTS or not hostname:
            raise WebhookRefused("the URL must be http:// or https:// with a host")
        if parts.username is not None or parts.password is not None:
            raise WebhookRefused("credentials in the URL are not allowed")
        port = port or DEFAULT_PORTS[parts.scheme]
        try:
            host = ascii_host(hostname)
        except UnicodeError:
            raise WebhookRefused("the URL's host is not a valid name") from None
        listed = self.listed(host, port, parts.scheme)
        if not listed and not self.any_public_host:
            raise WebhookRefused(f"{host} port {port} is not an allowed host; allowed: {self.allowed_hosts}")
        try:
            addresses = self.resolve(host, port)
        except (OSError, UnicodeError) as exc:
            log.info("webhook host %s does not resolve: %s", host, exc)
            raise WebhookUnresolvable(f"{host} does not resolve") from None
        if not addresses:
            raise WebhookUnresolvable(f"{host} does not resolve")
        if not listed:
            for address in addresses:
                reason = forbidden_reason(address)
                if reason is not None:
                    log.info("webhook host %s refused: %s is a %s address", host, address, reason)
                    entry = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                    # A client learns the class of an address it named, never what a name resolved to.
                    what = f"{host} is a {reason} address" if address == host else (
                        f"{host} resolves to a non-public address")
                    raise WebhookRefused(f"{what}; only public addresses may be called unless the operator "
                                         f"lists '{entry}' in REPAINT_WEBHOOK_ALLOWED_HOSTS")
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return Target(url=url, scheme=parts.scheme, host=host, port=port, path=path, addresses=tuple(addresses))


def sign(body: bytes, secret: str) -> str:
    """`sha256=<hex>`: HMAC-SHA256 of the raw body under the shared secret."""
    if not secret:
        raise ValueError("webhooks are only sent signed: the secret is empty")
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
