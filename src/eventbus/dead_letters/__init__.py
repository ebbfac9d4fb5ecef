"""Dead letters: what is kept of a handler that gave up on an event, and where it is kept.

``letter.py`` is the record, ``protocol.py`` the interface every store
implements, and one module per store beside them.
"""

import typing as t

from .letter import NO_HANDLER, DeadLetter, UndefinedEvent
from .memory import InMemoryDeadLetterStore
from .protocol import DeadLetterStore, DeadLetterStoreFullError

if t.TYPE_CHECKING:
    from .sqlite import SQLiteDeadLetterStore

__all__ = [
    "NO_HANDLER",
    "DeadLetter",
    "DeadLetterStore",
    "DeadLetterStoreFullError",
    "InMemoryDeadLetterStore",
    "SQLiteDeadLetterStore",
    "UndefinedEvent",
]


def __getattr__(name: str) -> t.Any:
    if name == "SQLiteDeadLetterStore":  # sqlite3 is imported only by those who use it
        from .sqlite import SQLiteDeadLetterStore

        return SQLiteDeadLetterStore
    raise AttributeError(f"module 'eventbus.dead_letters' has no attribute {name!r}")
