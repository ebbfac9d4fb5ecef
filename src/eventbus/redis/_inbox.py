"""RedisInbox: the records of a broker bus's idempotent handlers, in Redis, for a while."""

from __future__ import annotations

import uuid

import redis

from ..inbox.protocol import InboxError
from ..retry import MAX_DELAY, finite_non_negative
from ._client import connect, where
from ._keys import Keys, check_namespace

__all__ = ["RedisInbox"]

#: How long a record is kept by default: a week, in seconds.
WEEK = 7 * 24 * 3600.0


class RedisInbox:
    """Records under ``eventbus:{namespace}:inbox:{handler}:{event id}``, each for ``retention``.

    The inbox of a broker bus (``bus.inbox``): its workers write a record
    in the same MULTI/EXEC as the handler's acknowledgement and children,
    so a handler whose success was acknowledged is recorded, and one that
    was recorded was acknowledged. Redis expires each record after
    ``retention`` seconds (a week by default): a duplicate that comes later
    than that runs again, so keep it longer than any redelivery can take
    (a redrive of an old letter, an outbox that retries for days).
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        namespace: str = "eventbus",
        retention: float = WEEK,
        timeout: float = 5.0,
    ) -> None:
        if not finite_non_negative(retention) or not 0 < retention <= MAX_DELAY:
            raise ValueError(
                f"retention must be a number of seconds above 0, got {retention!r}; it is how "
                "long a handled event is remembered"
            )
        self.url = url
        self.namespace = check_namespace(namespace)
        self.keys = Keys(namespace)
        self.retention = float(retention)
        self._client = connect(url, timeout)

    def key(self, handler: str, event_id: uuid.UUID) -> str:
        """The key of one record."""
        return f"{self.keys.prefix}inbox:{handler}:{event_id}"

    @property
    def retention_ms(self) -> int:
        return max(1, int(self.retention * 1000))

    def seen(self, handler: str, event_id: uuid.UUID, /) -> bool:
        """Whether the record is there (and not expired)."""
        try:
            return bool(self._client.exists(self.key(handler, event_id)))
        except redis.RedisError as error:
            raise self._failed("read a record", error) from error

    def record(self, handler: str, event_id: uuid.UUID, /) -> None:
        """Write the record, to expire after ``retention``."""
        try:
            self._client.set(self.key(handler, event_id), b"1", px=self.retention_ms)
        except redis.RedisError as error:
            raise self._failed("write a record", error) from error

    def clear(self) -> None:
        """Remove every record of the namespace."""
        try:
            keys = list(self._client.scan_iter(match=f"{self.keys.prefix}inbox:*", count=1000))
            for start in range(0, len(keys), 1000):
                self._client.delete(*keys[start : start + 1000])
        except redis.RedisError as error:
            raise self._failed("clear its records", error) from error

    def close(self) -> None:
        self._client.close()

    def _failed(self, doing: str, error: redis.RedisError) -> InboxError:
        return InboxError(
            f"{self!r} could not {doing}: {type(error).__name__}: {error}; check that the Redis "
            "server is running and reachable at that address"
        )

    def __repr__(self) -> str:
        return f"<RedisInbox {where(self.url)} namespace={self.namespace!r}>"
