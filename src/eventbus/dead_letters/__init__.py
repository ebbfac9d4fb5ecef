"""Dead letters: what is kept of a handler that gave up on an event, and where it is kept.

``letter.py`` is the record, ``protocol.py`` the interface every store
implements, and one module per store beside them.
"""

from .letter import NO_HANDLER, DeadLetter, UndefinedEvent
from .memory import InMemoryDeadLetterStore
from .protocol import DeadLetterStore, DeadLetterStoreFullError
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
