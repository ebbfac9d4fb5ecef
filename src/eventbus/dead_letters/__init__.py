"""Dead letters: what is kept of a handler that gave up on an event, and where it is kept.

``letter.py`` is the record, ``protocol.py`` the interface every store
implements, and one module per store beside them.
"""

import typing as t

from .letter import NO_HANDLER, RELAY, DeadLetter, UndefinedEvent
from .memory import InMemoryDeadLetterStore
from .protocol import DeadLetterStore, DeadLetterStoreError, DeadLetterStoreFullError

if t.TYPE_CHECKING:
    from .sqlite import SQLiteDeadLetterStore, SQLiteDeadLetterStoreError

__all__ = [
    "NO_HANDLER",
    "RELAY",
    "DeadLetter",
    "DeadLetterStore",
    "DeadLetterStoreError",
    "DeadLetterStoreFullError",
    "InMemoryDeadLetterStore",
    "SQLiteDeadLetterStore",
    "SQLiteDeadLetterStoreError",
    "UndefinedEvent",
]


def __getattr__(name: str) -> t.Any:
    if name in ("SQLiteDeadLetterStore", "SQLiteDeadLetterStoreError"):
        from .sqlite import SQLiteDeadLetterStore, SQLiteDeadLetterStoreError

        # sqlite3 is imported only by those who use it
        return {
            "SQLiteDeadLetterStore": SQLiteDeadLetterStore,
            "SQLiteDeadLetterStoreError": SQLiteDeadLetterStoreError,
        }[name]
    raise AttributeError(f"module 'eventbus.dead_letters' has no attribute {name!r}")
