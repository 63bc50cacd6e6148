"""Which webhook URLs may be called, and how bodies are signed (shared by API and worker)."""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlsplit

EVENTS = ("started", "progress", "completed")


def parse_allowed_hosts(setting: str) -> list[str]:
    """REPAINT_WEBHOOK_ALLOWED_HOSTS as a list (comma-separated; empty: webhooks off)."""
    return [h.strip() for h in setting.split(",") if h.strip()]


def host_allowed(url: str, allowed_hosts: list[str]) -> bool:
    """Only http(s) URLs whose host the operator listed; '*' allows any host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    return "*" in allowed_hosts or parts.hostname.lower() in {h.lower() for h in allowed_hosts}


def sign(body: bytes, secret: str) -> str:
    """`sha256=<hex>`: HMAC-SHA256 of the raw body under the shared secret."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
