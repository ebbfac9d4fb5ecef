"""The redis-py client a broker or a store uses: bounded waits, a retry for a dropped link."""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

__all__ = ["connect", "where"]


def connect(url: str, timeout: float) -> redis.Redis:
    """A client of ``url`` whose every command gives up after about ``3 * timeout`` seconds.

    A command that meets a dropped connection or a timeout is tried twice
    more, on a new connection, after 50 ms and 100 ms: a Redis restart or
    a connection closed by the server costs a publish nothing, a Redis that
    stays away is an error within a bounded time.
    """
    if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(
            f"url must be a Redis URL (redis://host:port/db, rediss://..., unix://...), got {url!r}"
        )
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        health_check_interval=30,
    )


def where(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return f"{scheme}{sep}{rest}"
