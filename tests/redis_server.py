"""The pytest fixtures of a private redis-server (eventbus.testing.RedisServer).

``make test`` installs the program when it is missing
(``scripts/ensure-redis-server``); a test that needs it and cannot find it
fails, naming how to install it: it never skips.
"""

from __future__ import annotations

import collections.abc as c

import pytest

from eventbus.testing import RedisServer, RedisServerMissing

__all__ = ["RedisServer", "redis_server", "redis_url"]

# -- the fixtures (imported by the conftest.py of tests/ and of docs/) ------------------


@pytest.fixture(scope="session")
def redis_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> c.Iterator[RedisServer]:
    """A private redis-server for the whole run, started on first use, stopped at the end.

    Fails (never skips) when no redis-server can be found, saying how to get one.
    """
    try:
        server = RedisServer(tmp_path_factory.mktemp("redis"))
    except RedisServerMissing as missing:
        pytest.fail(str(missing), pytrace=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The private server's URL, with nothing in it: each test starts from an empty server."""
    import redis

    if redis_server.process is None or redis_server.process.poll() is not None:
        redis_server.start()  # a test stopped it and did not start it again
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url
