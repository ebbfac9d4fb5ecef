"""Across processes on Redis Streams: ``EventBus(broker=RedisBroker(url, namespace=...))``.

Needs redis-py: ``pip install "eventbus[redis]"``. A broker bus appends
each published event to one Redis stream per namespace; workers
(``python -m eventbus worker MODULE:ATTR``) run its handlers, each handler
in a consumer group of its own, and keep dead letters in a
:class:`RedisDeadLetterStore`. The keys are listed in ``_keys``.
"""

from __future__ import annotations

try:
    import redis as _redis  # noqa: F401  # the client library: an optional extra
except ImportError as missing:  # pragma: no cover - the dev environment has it
    raise ImportError(
        "eventbus.redis needs the redis package: pip install 'eventbus[redis]'"
    ) from missing

from ..errors import BrokerError
from ._broker import RedisBroker, entry_fields
from ._inbox import RedisInbox
from ._store import RedisDeadLetterStore, RedisDeadLetterStoreError
from ._worker import UnreadableEntryError, Worker, WorkerLostError

__all__ = [
    "BrokerError",
    "RedisBroker",
    "RedisDeadLetterStore",
    "RedisDeadLetterStoreError",
    "RedisInbox",
    "UnreadableEntryError",
    "Worker",
    "WorkerLostError",
    "entry_fields",
]
