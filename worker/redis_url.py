"""Redis clients from `REPAINT_REDIS_URL`, for the API, the workers and `repaint` commands
(torch-free, shared).

Two forms:

- `redis://[[user]:password@]host:port/db`, `rediss://...` (TLS) and `unix:///path?db=n`: one
  server, as redis-py reads them.
- `redis+sentinel://[[user]:password@]host1:26379,host2:26379,host3:26379/<service>/<db>`: Redis
  Sentinel. The client asks the sentinels which server is the primary of `<service>` and asks
  again whenever a connection to it fails or it answers as a replica (READONLY), so after a
  failover every process finds the new primary by itself. The credentials in the URL are the
  data servers' (`requirepass`/ACL). Query options:

  | option | meaning |
  |---|---|
  | `sentinel_password`, `sentinel_username` | the sentinels' own credentials, when they have any |
  | `ssl=true` | TLS to the data servers; `ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile`, `ssl_cert_reqs` (`required`, `optional`, `none`) |
  | `sentinel_ssl=true` | TLS to the sentinels too (the same certificate options) |

The sentinels' port defaults to 26379 and `<db>` to 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from redis import BlockingConnectionPool, Redis
from redis.sentinel import Sentinel, SentinelConnectionPool

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379
_SSL_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")
_KNOWN_OPTIONS = {"sentinel_password", "sentinel_username", "ssl", "sentinel_ssl", *_SSL_OPTIONS}


class RedisUrlError(ValueError):
    """A REPAINT_REDIS_URL that cannot be used, with what is wrong in it."""


@dataclass(frozen=True)
class SentinelUrl:
    """A parsed `redis+sentinel://` URL."""

    sentinels: list[tuple[str, int]]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    ssl: bool = False
    sentinel_ssl: bool = False
    ssl_options: dict = field(default_factory=dict)

    def redacted(self) -> str:
        """The URL without its secrets, for logs."""
        hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
        return f"{SENTINEL_SCHEME}://{hosts}/{self.service}/{self.db}"


def is_sentinel(url: str) -> bool:
    return url.split(":", 1)[0].lower() == SENTINEL_SCHEME


def parse_sentinel_url(url: str) -> SentinelUrl:
    parts = urlsplit(url)
    if parts.scheme.lower() != SENTINEL_SCHEME:
        raise RedisUrlError(f"not a {SENTINEL_SCHEME}:// URL")
    # urlsplit reads one host; the netloc holds a list of them.
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, sep, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if sep else None
    sentinels = []
    for item in filter(None, (h.strip() for h in hostlist.split(","))):
        if item.startswith("["):  # [ipv6]:port
            host, _, rest = item[1:].partition("]")
            port = rest.removeprefix(":")
        else:
            host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
        try:
            sentinels.append((host, int(port) if port else SENTINEL_PORT))
        except ValueError:
            raise RedisUrlError(f"sentinel address {item!r} has a port that is not a number") from None
    if not sentinels:
        raise RedisUrlError(f"{SENTINEL_SCHEME}:// needs at least one sentinel host:port before the path")
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise RedisUrlError(f"the path of a {SENTINEL_SCHEME}:// URL is /<service-name>[/<db>], "
                            f"the name the sentinels monitor (sentinel monitor <name> ...)")
    try:
        db = int(path[1]) if len(path) == 2 else 0
    except ValueError:
        raise RedisUrlError(f"the database {path[1]!r} is not a number") from None
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    unknown = set(query) - _KNOWN_OPTIONS
    if unknown:
        raise RedisUrlError(f"unknown option(s) {sorted(unknown)} in the {SENTINEL_SCHEME}:// URL; "
                            f"known: {sorted(_KNOWN_OPTIONS)}")
    return SentinelUrl(
        sentinels=sentinels, service=unquote(path[0]), db=db, username=username, password=password,
        sentinel_username=query.get("sentinel_username") or None,
        sentinel_password=query.get("sentinel_password") or None,
        ssl=_flag(query, "ssl"), sentinel_ssl=_flag(query, "sentinel_ssl"),
        ssl_options={k: query[k] for k in _SSL_OPTIONS if k in query})


def _flag(query: dict, name: str) -> bool:
    value = query.get(name, "false").lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise RedisUrlError(f"option {name}={value!r} must be true or false")
    return value in ("true", "1", "yes")


def redacted(url: str) -> str:
    """`url` without its password, for logs and error messages."""
    if is_sentinel(url):
        try:
            return parse_sentinel_url(url).redacted()
        except RedisUrlError:
            return f"{SENTINEL_SCHEME}://(unparsable)"
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    if parts.scheme == "unix":  # unix:///path: urlunsplit would drop the empty host's slashes
        return f"unix://{host}{parts.path}"
    return parts._replace(netloc=host, query="").geturl()


class BlockingSentinelConnectionPool(SentinelConnectionPool, BlockingConnectionPool):
    """A Sentinel-managed pool with BlockingConnectionPool's bound: at most `max_connections`,
    and a caller waits (up to `timeout`) for a free one instead of opening another."""


def _sentinel(parsed: SentinelUrl, socket_options: dict, *, asyncio: bool):
    if asyncio:
        from redis.asyncio.sentinel import Sentinel as AsyncSentinel
        sentinel_class = AsyncSentinel
    else:
        sentinel_class = Sentinel
    sentinel_kwargs = {"socket_timeout": socket_options.get("socket_timeout", 5),
                       "socket_connect_timeout": socket_options.get("socket_connect_timeout", 5)}
    if parsed.sentinel_password:
        sentinel_kwargs["password"] = parsed.sentinel_password
    if parsed.sentinel_username:
        sentinel_kwargs["username"] = parsed.sentinel_username
    if parsed.sentinel_ssl:
        sentinel_kwargs.update(ssl=True, **parsed.ssl_options)
    data_kwargs = dict(socket_options, db=parsed.db)
    if parsed.password is not None:
        data_kwargs["password"] = parsed.password
    if parsed.username:
        data_kwargs["username"] = parsed.username
    if parsed.ssl:
        data_kwargs.update(ssl=True, **parsed.ssl_options)
    return sentinel_class(parsed.sentinels, sentinel_kwargs=sentinel_kwargs, **data_kwargs)


# Options of TCP sockets, which redis-py's unix-socket connections refuse (a TypeError at the
# first connection, not at construction): dropped for unix:// URLs.
TCP_ONLY_OPTIONS = ("socket_keepalive", "socket_keepalive_options")


def _for_scheme(url: str, socket_options: dict) -> dict:
    if url.startswith("unix:"):
        return {k: v for k, v in socket_options.items() if k not in TCP_ONLY_OPTIONS}
    return socket_options


def connect(url: str, *, max_connections: int | None = None, pool_timeout: float = 10,
            **socket_options) -> Redis:
    """A client of the primary named by `url`. `max_connections`: a bounded, blocking pool (a
    caller waits up to `pool_timeout` seconds for a free connection); None: redis-py's default
    pool. `socket_options` (socket_timeout, socket_connect_timeout, health_check_interval, ...)
    apply to the data connections (TCP-only ones are dropped for unix:// URLs)."""
    if not is_sentinel(url):
        socket_options = _for_scheme(url, socket_options)
        if max_connections is None:
            return Redis.from_url(url, **socket_options)
        pool = BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=pool_timeout,
                                               **socket_options)
        return Redis(connection_pool=pool)
    parsed = parse_sentinel_url(url)
    sentinel = _sentinel(parsed, socket_options, asyncio=False)
    if max_connections is None:
        return sentinel.master_for(parsed.service, redis_class=Redis)
    return sentinel.master_for(parsed.service, redis_class=Redis,
                               connection_pool_class=BlockingSentinelConnectionPool,
                               max_connections=max_connections, timeout=pool_timeout)


def connect_async(url: str, *, max_connections: int | None = None, pool_timeout: float = 10, **socket_options):
    """The asyncio client of the primary named by `url` (for the API's event hub)."""
    from redis import asyncio as aioredis

    if not is_sentinel(url):
        socket_options = _for_scheme(url, socket_options)
        if max_connections is None:
            return aioredis.Redis.from_url(url, **socket_options)
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=pool_timeout,
                                                        **socket_options)
        return aioredis.Redis(connection_pool=pool)
    parsed = parse_sentinel_url(url)
    sentinel = _sentinel(parsed, socket_options, asyncio=True)
    if max_connections is None:
        return sentinel.master_for(parsed.service, redis_class=aioredis.Redis)
    from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelPool

    class _Bounded(AsyncSentinelPool, aioredis.BlockingConnectionPool):
        pass

    return sentinel.master_for(parsed.service, redis_class=aioredis.Redis, connection_pool_class=_Bounded,
                               max_connections=max_connections, timeout=pool_timeout)


def check(url: str) -> None:
    """Raise RedisUrlError if `url` is not a form this service reads (settings validation)."""
    if is_sentinel(url):
        parse_sentinel_url(url)
        return
    scheme = url.split(":", 1)[0].lower()
    if scheme not in ("redis", "rediss", "unix"):
        raise RedisUrlError(f"REPAINT_REDIS_URL must start with redis://, rediss://, unix:// or "
                            f"{SENTINEL_SCHEME}://, not {scheme}://")
