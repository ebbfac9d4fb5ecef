"""DeadLetterStore: the interface every dead-letter store implements."""

from __future__ import annotations

import collections.abc as c
import typing as t
import uuid

from ..errors import EventBusError

if t.TYPE_CHECKING:
    from .letter import DeadLetter

__all__ = ["DeadLetterStore", "DeadLetterStoreError", "DeadLetterStoreFullError"]


class DeadLetterStoreError(EventBusError):
    """A dead-letter store cannot be opened, read or written.

    The message names the store (for a file, its path), the cause and the
    fix. ``SQLiteDeadLetterStore`` raises its subclass
    ``SQLiteDeadLetterStoreError``, which is also a ``sqlite3.DatabaseError``.
    """


class DeadLetterStoreFullError(DeadLetterStoreError):
    """A bounded store refused a letter (``when_full="refuse"``)."""


@t.runtime_checkable
class DeadLetterStore(t.Protocol):
    """Where a bus keeps its dead letters (``EventBus(dead_letters=...)``).

    Implementations must be safe to call from several threads at once.
    """

    def add(self, letter: DeadLetter, /) -> None:
        """Keep ``letter``, replacing a letter with the same ``id`` (a failed redrive)."""

    def remove(self, letter: DeadLetter, /) -> None:
        """Forget ``letter`` (after a successful redrive); ``KeyError`` if absent."""

    def get(self, letter_id: uuid.UUID, /) -> DeadLetter:
        """The letter with this ``id``; ``KeyError`` if absent."""
        ...

    def __len__(self) -> int: ...

    def __iter__(self) -> c.Iterator[DeadLetter]:
        """The letters, oldest first."""
        ...
