"""Who is calling: API keys, the tenants they name, and what each tenant may do.

A job belongs to the tenant whose key created it. Tenants are key *names*: names, never keys,
reach job records, logs and metric labels (a bounded set: the configured keys). Without
REPAINT_API_KEYS the service is open and every caller is the one tenant `anonymous`.

REPAINT_API_KEYS takes `name:key` pairs; a bare `key` (the older form) is named `key-<8 hex>`
after a digest of the key, stable across restarts and reorderings of the list.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

from worker.jobs import ANONYMOUS

# Names go into Redis keys, log lines and metric labels: keep them plain.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class TenancyError(ValueError):
    """A REPAINT_API_KEYS / REPAINT_ADMIN_KEYS / REPAINT_TENANT_WEIGHTS value that cannot be used."""


@dataclass(frozen=True)
class Tenant:
    name: str
    admin: bool = False      # sees and cancels every tenant's jobs
    weight: float = 1.0      # share of the workers relative to other tenants with waiting work


def _bare_name(key: str) -> str:
    """A stable name for a key given without one. Names are public (metric labels, logs), so the
    digest is a slow one (PBKDF2, computed once at start): a name does not make guessing a weak
    key offline any cheaper than guessing it against the API."""
    digest = hashlib.pbkdf2_hmac("sha256", key.encode(), b"repaint-server tenant name", 200_000)
    return "key-" + digest.hex()[:8]


def parse_api_keys(value: str) -> dict[str, bytes]:
    """`name:key,...` (or bare `key`) -> {name: key bytes}. Names and keys must be unique."""
    out: dict[str, bytes] = {}
    seen: set[str] = set()
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        name, sep, key = item.partition(":")
        if not sep:
            name, key = _bare_name(item), item
        name, key = name.strip(), key.strip()
        if not NAME_PATTERN.match(name):
            raise TenancyError(f"API key name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
        if not key:
            raise TenancyError(f"API key {name!r} is empty")
        if name in out:
            raise TenancyError(f"API key name {name!r} appears twice")
        if key in seen:
            raise TenancyError(f"the key of {name!r} is also another name's key")
        seen.add(key)
        out[name] = key.encode()
    return out


def parse_weights(value: str) -> dict[str, float]:
    """`name=weight,...` -> {name: weight > 0}."""
    out: dict[str, float] = {}
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        name, sep, raw = item.partition("=")
        try:
            weight = float(raw)
        except ValueError:
            weight = 0.0
        if not sep or not weight > 0 or weight > 1000:
            raise TenancyError(f"tenant weight {item!r}: write name=weight with 0 < weight <= 1000")
        out[name.strip()] = weight
    return out


class Keyring:
    """The configured keys, and the tenant a request's bearer token names."""

    def __init__(self, api_keys: str = "", admin_keys: str = "", weights: str = ""):
        self.keys = parse_api_keys(api_keys)
        self.admins = {n.strip() for n in admin_keys.split(",") if n.strip()}
        self.weights = parse_weights(weights)
        names = set(self.keys) or {ANONYMOUS}
        for label, listed in (("REPAINT_ADMIN_KEYS", self.admins), ("REPAINT_TENANT_WEIGHTS", set(self.weights))):
            unknown = listed - names
            if unknown:
                raise TenancyError(f"{label} names {sorted(unknown)}, which REPAINT_API_KEYS does not define "
                                   f"(names: {sorted(names)})")

    @property
    def open(self) -> bool:
        """No keys configured: anyone may call, as the one tenant `anonymous`."""
        return not self.keys

    @property
    def names(self) -> list[str]:
        return sorted(self.keys) or [ANONYMOUS]

    def tenant(self, name: str) -> Tenant:
        return Tenant(name, admin=name in self.admins or self.open, weight=self.weights.get(name, 1.0))

    def identify(self, token: bytes) -> Tenant | None:
        """The tenant whose key `token` is, else None. Every key is compared (no early exit),
        so the time taken does not say which one matched."""
        if self.open:
            return self.tenant(ANONYMOUS)
        found = None
        for name, key in self.keys.items():
            if hmac.compare_digest(token, key) and found is None:
                found = name
        return None if found is None else self.tenant(found)
