"""When a write counts as accepted: the acknowledgement modes of `REPAINT_ACK` (torch-free, shared
by the API and the workers).

- `memory` (the default): a write is acknowledged once Redis has applied it, which is in its
  memory. With the append-only file fsynced every second (`appendfsync everysec`, as
  docker-compose.yml ships it), a crash of Redis or of its host loses up to about a second of
  acknowledged writes; a clean restart loses none.
- `disk`: a write is acknowledged once it is in the append-only file and fsynced on Redis's host
  (`WAITAOF 1 0 <timeout>`: Redis >= 7.2 or Valkey). It survives a crash of Redis or of its host,
  not the loss of its disk. Each acknowledgement waits for the next fsync (up to a second with
  `everysec`).

- `replica`: a write is acknowledged once `replicas` replicas (default 1) have it (`WAIT n
  <timeout>`), so it survives the loss of the primary and a Sentinel failover to a replica that
  confirmed it (Sentinel promotes the replica with the most of the primary's stream). It is in
  the replica's memory, not yet on its disk: losing the primary and that replica at once can
  still lose it.

WAITAOF waits only for the writes of the connection that sends it, and a client's connection
goes back to its pool after every command or pipeline. So a write that must be confirmed runs on
a client from `pinned(redis, ack)`, which holds one connection for the whole block, and
`confirm(client, ack)` runs WAITAOF on that connection before the block gives it back:

    with acks.pinned(redis, ack) as client, client.pipeline() as pipe:
        ...                      # WATCH, reads, MULTI, writes (or a script with client=pipe)
        pipe.execute()
        acks.confirm(pipe, ack)  # raises NotAcknowledged; a no-op in memory mode
"""

from __future__ import annotations

import enum
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import ConnectionError, ResponseError, TimeoutError


class AckMode(str, enum.Enum):
    """What `202 Accepted` (and any other confirmed write) promises about the write."""

    MEMORY = "memory"  # applied by Redis: in its memory
    DISK = "disk"  # in the append-only file, fsynced (WAITAOF)
    REPLICA = "replica"  # on `replicas` replicas too (WAIT)


@dataclass(frozen=True, kw_only=True)
class Ack:
    """An acknowledgement policy: the mode and how long a confirmation may wait (seconds)."""

    mode: AckMode = AckMode.MEMORY
    timeout: float = 5.0
    replicas: int = 1  # replica mode: how many replicas must have the write

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", AckMode(self.mode))
        if not self.timeout > 0:  # WAITAOF's 0 means "wait forever"
            raise ValueError(f"the acknowledgement timeout must be positive seconds, not {self.timeout!r}")
        if self.replicas < 1:
            raise ValueError(f"replica acknowledgements need at least one replica, not {self.replicas!r}")

    @property
    def timeout_ms(self) -> int:
        return max(1, round(self.timeout * 1000))


class AckUnsupported(RuntimeError):
    """The Redis server cannot give the configured acknowledgement: refuse to start."""


class NotAcknowledged(TimeoutError):
    """The write was applied but not confirmed within the timeout (or the connection that made
    it was lost first): it may or may not survive a crash. A redis `TimeoutError`, so that a
    caller that handles Redis being unavailable answers it the same way (503, retry)."""

    def __init__(self, message: str, *, mode: AckMode):
        super().__init__(message)
        self.mode = mode


def server_name(redis: Redis) -> str:
    """'Redis 7.0.15' or 'Valkey 8.1.8', as INFO server reports it."""
    info = redis.info("server")
    if "valkey_version" in info:
        return f"Valkey {info['valkey_version']}"
    return f"{str(info.get('server_name', 'redis')).capitalize()} {info.get('redis_version', '?')}"


def check_server(redis: Redis, ack: Ack) -> str:
    """Check at start-up that `redis` can give `ack`; raise AckUnsupported saying what is missing
    (the server and its version, and what the mode needs). Returns a line for the start-up log."""
    where = _address(redis)
    if ack.mode is AckMode.MEMORY:
        aof = int(redis.info("persistence").get("aof_enabled", 0))
        return (f"acknowledgements: memory (a job is accepted once it is in Redis's memory; Redis at {where} "
                + ("keeps an append-only file)" if aof else "has no append-only file: a restart loses every job)"))

    name = server_name(redis)
    if ack.mode is AckMode.REPLICA:
        return _check_replicas(redis, ack, name, where)
    needed = "REPAINT_ACK=disk needs"
    try:
        redis.execute_command("WAITAOF", 0, 0, 1)  # asks for nothing: answers at once where it exists
    except ResponseError as exc:
        raise AckUnsupported(
            f"{needed} the WAITAOF command (Redis >= 7.2 or Valkey >= 7.2), and the server at {where} is "
            f"{name}, which refuses it ({exc}). Upgrade the server, or use REPAINT_ACK=memory.") from None
    if not int(redis.info("persistence").get("aof_enabled", 0)):
        raise AckUnsupported(
            f"{needed} append-only persistence, and the server at {where} ({name}) runs with appendonly no, "
            "so no write would ever reach a file: start it with --appendonly yes (as docker-compose.yml "
            "does), or use REPAINT_ACK=memory.")
    try:
        fsync = redis.config_get("appendfsync").get("appendfsync")
    except ResponseError:  # CONFIG renamed or forbidden (managed services): confirm's timeout still tells
        fsync = None
    if fsync == "no":
        raise AckUnsupported(
            f"{needed} Redis to fsync its append-only file, and the server at {where} ({name}) runs with "
            "appendfsync no (the OS decides when), so WAITAOF never confirms: use appendfsync everysec "
            "(as docker-compose.yml does) or always.")
    socket_timeout = redis.connection_pool.connection_kwargs.get("socket_timeout")
    if socket_timeout is not None and socket_timeout <= max(ack.timeout, PROBE_SECONDS):
        raise AckUnsupported(
            f"the Redis client's socket timeout ({socket_timeout:g}s) must be longer than REPAINT_ACK_TIMEOUT "
            f"({ack.timeout:g}s) and than {PROBE_SECONDS}s, or waiting for an fsync would read as Redis being "
            "unavailable.")
    if fsync == "everysec" and _confirms_before_fsync(redis):
        raise AckUnsupported(
            f"{needed} WAITAOF to wait for the fsync, and the server at {where} ({name}) confirms writes "
            "with appendfsync everysec before they are fsynced (a known server bug, redis/redis#13793): "
            "upgrade it, or run it with appendfsync always.")
    return (f"acknowledgements: disk (a job is accepted once {name} at {where} has fsynced it to its "
            f"append-only file, appendfsync {fsync or 'unknown'}; waiting at most {ack.timeout:g}s)")


@contextmanager
def pinned(redis: Redis, ack: Ack) -> Iterator[Redis]:
    """A client whose commands, pipelines and scripts all run on one connection of `redis`'s
    pool, held until the block ends, so that `confirm` can wait for their writes. In memory
    mode nothing needs confirming: `redis` itself, with no connection held."""
    if ack.mode is AckMode.MEMORY:
        yield redis
        return
    pool = redis.connection_pool
    connection = pool.get_connection()
    try:
        yield Redis(connection_pool=_Lent(pool, connection))
    finally:
        pool.release(connection)


def confirm(client: Redis | Pipeline, ack: Ack) -> None:
    """Wait until the writes made so far through `client` (a client from `pinned`, or a pipeline
    of one, after its EXEC) are acknowledged as `ack.mode` promises; raise NotAcknowledged if they
    are not within `ack.timeout`. Returns at once in memory mode."""
    if ack.mode is AckMode.MEMORY:
        return
    pool = client.connection_pool
    if not isinstance(pool, _Lent):
        raise TypeError("confirm needs a client (or its pipeline) from acks.pinned(): WAITAOF only "
                        "waits for the writes of the connection that sends it")
    connection = pool.connection
    if not connection.is_connected:  # a fresh connection would confirm nothing at once
        raise NotAcknowledged("the connection that made the write was lost before it could be confirmed",
                              mode=ack.mode)
    try:
        # No health check, no retry: either would answer for a new connection with no writes.
        # First a write of its own: WAITAOF waits for the connection's last write that changed
        # something, and a script that found its work already done (a create retried after a
        # lost reply, an idempotent replay) changed nothing; this one covers everything before it.
        connection.send_command("SET", PROBE_KEY, 1, "PX", 60_000, check_health=False)
        connection.read_response()
        if ack.mode is AckMode.REPLICA:
            connection.send_command("WAIT", ack.replicas, ack.timeout_ms, check_health=False)
            confirmed = int(connection.read_response())
        else:
            connection.send_command("WAITAOF", 1, 0, ack.timeout_ms, check_health=False)
            confirmed, _replicas = connection.read_response()
    except (ConnectionError, TimeoutError) as exc:
        raise NotAcknowledged(f"Redis went away before the write was confirmed to {_WHERE[ack.mode]} ({exc})",
                              mode=ack.mode) from exc
    except ResponseError as exc:  # e.g. appendonly switched off since start-up, or a demoted primary
        raise NotAcknowledged(f"Redis refused to confirm that the write did {_WHERE[ack.mode]} ({exc})",
                              mode=ack.mode) from exc
    wanted = ack.replicas if ack.mode is AckMode.REPLICA else 1
    if int(confirmed) < wanted:
        raise NotAcknowledged(f"the write did not {_WHERE[ack.mode]} within {ack.timeout:g}s"
                              + (f" ({confirmed} of {wanted} replicas)" if ack.mode is AckMode.REPLICA else ""),
                              mode=ack.mode)


def _confirms_before_fsync(redis: Redis) -> bool:
    """Whether WAITAOF answers before the fsync under everysec. Right after one fsync the next is
    about a second away, so a write made then cannot be on disk a millisecond later."""
    with pinned(redis, Ack(mode=AckMode.DISK)) as client:
        try:
            client.set(PROBE_KEY, 1, px=60_000)
        except ResponseError:  # full or read-only: nothing to learn here
            return False
        connection = client.connection_pool.connection
        for timeout_ms in (PROBE_SECONDS * 1000, 1):
            connection.send_command("WAITAOF", 1, 0, timeout_ms)
            local, _replicas = connection.read_response()
            client.set(PROBE_KEY, 2, px=60_000)
        return int(local) == 1


_WHERE = {AckMode.DISK: "reach the append-only file on disk", AckMode.REPLICA: "reach a replica"}


def _check_replicas(redis: Redis, ack: Ack, name: str, where: str) -> str:
    """Replica mode needs a primary (WAIT on a replica answers nothing useful). Replicas that are
    missing now are not a reason to refuse to start: they may be on their way, and meanwhile
    every job is answered 503 rather than accepted unconfirmed."""
    info = redis.info("replication")
    if info.get("role") != "master":
        raise AckUnsupported(f"REPAINT_ACK=replica needs the primary, and the server at {where} ({name}) is a "
                             f"{info.get('role')}: point REPAINT_REDIS_URL at the primary, or at the sentinels "
                             "(redis+sentinel://...), which always name it")
    socket_timeout = redis.connection_pool.connection_kwargs.get("socket_timeout")
    if socket_timeout is not None and socket_timeout <= ack.timeout:
        raise AckUnsupported(
            f"the Redis client's socket timeout ({socket_timeout:g}s) must be longer than REPAINT_ACK_TIMEOUT "
            f"({ack.timeout:g}s), or waiting for a replica would read as Redis being unavailable.")
    connected = int(info.get("connected_slaves", 0))
    line = (f"acknowledgements: replica (a job is accepted once {ack.replicas} replica(s) of {name} at {where} "
            f"have it; waiting at most {ack.timeout:g}s); {connected} replica(s) connected now")
    if connected < ack.replicas:
        line += (f": FEWER THAN {ack.replicas}, so POST /inpaint answers 503 until enough are connected "
                 "(WARNING)")
    return line


PROBE_KEY = "repaint:ack:probe"
PROBE_SECONDS = 3  # the probe's wait for one fsync (everysec: at most about a second)


class _Lent:
    """A connection pool that lends one connection of another pool over and over: a pipeline's
    reset gives it back here, not to the other pool, so it stays ours until `pinned` ends."""

    def __init__(self, pool, connection):
        self._pool = pool
        self.connection = connection

    def get_connection(self, *args, **kwargs):
        return self.connection

    def release(self, connection) -> None:
        pass

    def disconnect(self, *args, **kwargs) -> None:
        pass  # the other pool's connections are its own business

    def __getattr__(self, name):  # encoder, connection_kwargs, protocol, ... of the other pool
        return getattr(self._pool, name)


def _address(redis: Redis) -> str:
    kwargs = redis.connection_pool.connection_kwargs
    return kwargs.get("path") or f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"

