"""RedisDeadLetterStore: the dead letters of a broker bus, in Redis, shared by its workers."""

from __future__ import annotations

import collections.abc as c
import json
import typing as t
import uuid

import redis

from ..dead_letters.protocol import DeadLetterStoreError
from ..dead_letters.rows import to_letter, to_row
from ..errors import BrokerError
from ._client import connect, where
from ._keys import Keys, check_namespace

if t.TYPE_CHECKING:
    from ..dead_letters.letter import DeadLetter

__all__ = ["RedisDeadLetterStore", "RedisDeadLetterStoreError"]

#: Letters read per round trip while iterating.
_PAGE = 200

# Add or replace a letter; a new one goes last in the order, a replaced one keeps its place.
# KEYS: letters, order, seq. ARGV: id, letter as JSON.
_ADD = """
local known = redis.call('HEXISTS', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if known == 0 then
  redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), ARGV[1])
end
return known
"""

# KEYS: letters, order. ARGV: id. Returns 1 if it was there.
_REMOVE = """
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return removed
"""


class RedisDeadLetterStoreError(DeadLetterStoreError, BrokerError):
    """The Redis server of a :class:`RedisDeadLetterStore` could not be read or written."""


class RedisDeadLetterStore:
    """Dead letters in Redis, under ``eventbus:{namespace}:dead-letters``.

    The store of a broker bus (``bus.dead_letters``): every worker adds the
    letters of its handlers here, and any process that reaches the server
    lists, redrives or purges them. Letters are kept as JSON, never pickled;
    each is written by one atomic script, so a letter is either stored
    whole or not at all. Oldest first, as every store; a letter added again
    (a failed redrive) keeps its place.

    ``timeout`` bounds each command, as for :class:`RedisBroker`; a server
    that cannot be reached raises :class:`RedisDeadLetterStoreError` (a
    ``DeadLetterStoreError`` and a ``BrokerError``) naming it.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        namespace: str = "eventbus",
        timeout: float = 5.0,
        max_event_bytes: int | None = 16 * 2**20,
    ) -> None:
        self.url = url
        self.namespace = check_namespace(namespace)
        self.keys = Keys(namespace)
        self.max_event_bytes = max_event_bytes
        self._client = connect(url, timeout)
        self._add = self._client.register_script(_ADD)
        self._remove = self._client.register_script(_REMOVE)

    # -- the DeadLetterStore protocol ---------------------------------------------

    def add(self, letter: DeadLetter, /) -> None:
        """Keep ``letter``; a letter with the same ``id`` is replaced and keeps its place."""
        keys = self.keys
        with self._errors("add a letter to"):
            self._add(
                keys=[keys.letters, keys.letters_order, keys.letters_seq],
                args=[str(letter.id), self.encode(letter)],
            )

    def remove(self, letter: DeadLetter, /) -> None:
        """Forget ``letter``; ``KeyError`` if no letter has its ``id``."""
        keys = self.keys
        with self._errors("remove a letter from"):
            removed = self._remove(keys=[keys.letters, keys.letters_order], args=[str(letter.id)])
        if not removed:
            raise KeyError(letter.id)

    def get(self, letter_id: uuid.UUID, /) -> DeadLetter:
        """The letter with this ``id``; ``KeyError`` if absent."""
        with self._errors("read"):
            raw = self._client.hget(self.keys.letters, str(letter_id))
        if raw is None:
            raise KeyError(letter_id)
        return decode(str(letter_id), raw)

    def __len__(self) -> int:
        with self._errors("count the letters of"):
            return int(self._client.hlen(self.keys.letters))

    def __iter__(self) -> c.Iterator[DeadLetter]:
        """The letters, oldest first, read a page at a time."""
        after = "-inf"
        while True:
            with self._errors("read"):
                page: list[tuple[bytes, float]] = self._client.zrange(  # type: ignore[assignment]
                    self.keys.letters_order,
                    after,
                    "+inf",
                    byscore=True,
                    offset=0,
                    num=_PAGE,
                    withscores=True,
                )
                ids = [member for member, _ in page]
                rows = self._client.hmget(self.keys.letters, ids) if ids else []
            for member, raw in zip(ids, rows, strict=True):
                if raw is not None:  # removed since the page was read
                    yield decode(member.decode("utf-8", "replace"), raw)
            if len(page) < _PAGE:
                return
            after = f"({int(page[-1][1])}"

    # -- beyond the protocol ------------------------------------------------------

    def clear(self) -> None:
        """Forget every letter."""
        keys = self.keys
        with self._errors("clear"):
            self._client.delete(keys.letters, keys.letters_order)

    def close(self) -> None:
        """Close the store's connections."""
        self._client.close()

    def __enter__(self) -> t.Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RedisDeadLetterStore {where(self.url)} namespace={self.namespace!r}>"

    # -- the letters as stored (the broker's workers write them with the same script) ---

    def encode(self, letter: DeadLetter) -> str:
        """``letter`` as the JSON the store keeps (a row of the SQLite store, as a list)."""
        limit = 512 * 2**20 - 4096  # Redis's limit on a string, less room for the rest
        source = "Redis's limit on a value"
        if self.max_event_bytes is not None and self.max_event_bytes < limit:
            limit, source = self.max_event_bytes, "this store's max_event_bytes"
        return json.dumps(to_row(letter, limit, source))

    class _Errors:
        def __init__(self, store: RedisDeadLetterStore, doing: str) -> None:
            self.store, self.doing = store, doing

        def __enter__(self) -> None:
            return None

        def __exit__(self, kind: object, error: BaseException | None, tb: object) -> None:
            if isinstance(error, redis.RedisError):
                raise RedisDeadLetterStoreError(
                    f"could not {self.doing} the dead-letter store {self.store!r}: "
                    f"{type(error).__name__}: {error}; check that the Redis server is running "
                    "and reachable at that address"
                ) from error

    def _errors(self, doing: str) -> RedisDeadLetterStore._Errors:
        return RedisDeadLetterStore._Errors(self, doing)


def decode(letter_id: str, raw: bytes | str) -> DeadLetter:
    """A stored letter back; what is not a row still comes back, as a letter saying so."""
    try:
        row = json.loads(raw)
        if not isinstance(row, list):
            raise ValueError("not a list")
    except ValueError:
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        epoch = "1970-01-01T00:00:00+00:00"  # when it failed is lost with the rest
        row = [letter_id, "?", text, "?", 0, "?", "unreadable letter", "", epoch, epoch, "", 0]
        row.append("this letter's stored JSON cannot be read (kept as the event's payload)")
    return to_letter(row)
