"""REPAINT_REDIS_URL's forms: one server, or Redis Sentinel with its options; clear errors that
never repeat a password."""

from __future__ import annotations

import pytest

from worker.redis_url import RedisUrlError, check, connect, parse_sentinel_url, redacted


def test_the_sentinel_form_names_hosts_service_database_and_credentials():
    url = parse_sentinel_url("redis+sentinel://app:s%40cret@s1:26380,s2,[::1]:26381/repaint/3"
                             "?sentinel_password=sp&ssl=true&ssl_ca_certs=/ca.pem&sentinel_ssl=yes")
    assert url.sentinels == [("s1", 26380), ("s2", 26379), ("::1", 26381)]
    assert (url.service, url.db, url.username, url.password) == ("repaint", 3, "app", "s@cret")
    assert url.sentinel_password == "sp" and url.ssl and url.sentinel_ssl
    assert url.ssl_options == {"ssl_ca_certs": "/ca.pem"}
    assert parse_sentinel_url("redis+sentinel://h/name").db == 0


@pytest.mark.parametrize("url, message", [
    ("redis+sentinel:///repaint/0", "at least one sentinel"),
    ("redis+sentinel://h:26379/", "/<service-name>"),
    ("redis+sentinel://h:x/repaint", "not a number"),
    ("redis+sentinel://h/repaint/zero", "not a number"),
    ("redis+sentinel://h/repaint?tls=1", "unknown option"),
    ("redis+sentinel://h/repaint?ssl=maybe", "true or false"),
    ("http://h:6379/0", "must start with"),
])
def test_unusable_urls_are_refused_with_what_is_wrong(url, message):
    with pytest.raises(RedisUrlError, match=message):
        check(url)


def test_secrets_stay_out_of_logs():
    assert redacted("redis+sentinel://:pw@h1:1,h2:2/repaint/0?sentinel_password=sp") == \
        "redis+sentinel://h1:1,h2:2/repaint/0"
    assert "pw" not in redacted("redis://:pw@h:6379/0")
    assert redacted("unix:///tmp/x/redis.socket?db=0") == "unix:///tmp/x/redis.socket"  # still a unix:// URL
    with pytest.raises(RedisUrlError) as refused:
        check("redis+sentinel://:hunter2@h/")
    assert "hunter2" not in str(refused.value)


def test_a_single_server_url_keeps_working(redis_server):
    client = connect(redis_server.url, max_connections=2, pool_timeout=1)
    assert client.ping() and client.connection_pool.max_connections == 2


def test_a_unix_socket_url_takes_the_options_tcp_connections_take(tmp_path):
    """`repaint serve` runs Redis on a unix socket; the API's event hub asks for TCP keepalive.
    redis-py's unix-socket connections refuse that option at their first connection (a TypeError
    that took down every event stream of `repaint serve`): TCP-only options are dropped there."""
    import asyncio

    from service.cli import _embedded_redis
    from worker.redis_url import connect_async

    server, url = _embedded_redis()
    try:
        assert url.startswith("unix://")
        assert connect(url, socket_keepalive=True, socket_connect_timeout=5).ping()
        assert connect(url, max_connections=2, socket_keepalive=True).ping()

        async def ping() -> bool:
            client = connect_async(url, socket_keepalive=True, socket_connect_timeout=5)
            try:
                pubsub = client.pubsub()
                await pubsub.subscribe("repaint:test")  # the event hub's first command
                await pubsub.aclose()
                return await client.ping()
            finally:
                await client.aclose()

        assert asyncio.run(ping())
    finally:
        server.shutdown()
