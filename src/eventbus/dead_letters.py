"""Dead letters: what is kept of a handler that gave up on an event, and where it is kept."""

from __future__ import annotations

import collections.abc as c
import dataclasses
import threading
import traceback as tb
import typing as t
import uuid
from datetime import UTC, datetime

if t.TYPE_CHECKING:
    from .events import Event

__all__ = ["DeadLetter", "DeadLetterStore", "InMemoryDeadLetterStore"]


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetter:
    """One (event, handler) pair whose last attempt failed.

    It keeps everything needed to understand the failure and to run the
    handler again with ``bus.redrive(letter)``: the event itself, the
    handler's qualified name, how many attempts were made, and the last
    error's type, message and formatted traceback.
    """

    event: Event
    handler: str
    attempts: int
    error_type: str
    error_message: str
    traceback: str
    failed_at: datetime
    id: uuid.UUID = dataclasses.field(default_factory=uuid.uuid4)

    @property
    def event_type(self) -> str:
        """The failed event's ``event_type``."""
        return self.event.event_type

    @classmethod
    def from_exception(
        cls, event: Event, handler: str, attempts: int, error: BaseException
    ) -> DeadLetter:
        """Build a letter for ``error``, raised by ``handler`` on its last attempt."""
        kind = type(error)
        return cls(
            event=event,
            handler=handler,
            attempts=attempts,
            error_type=f"{kind.__module__}.{kind.__qualname__}",
            error_message=str(error),
            traceback="".join(tb.format_exception(error)),
            failed_at=datetime.now(UTC),
        )


@t.runtime_checkable
class DeadLetterStore(t.Protocol):
    """Where a bus keeps its dead letters (``EventBus(dead_letters=...)``)."""

    def add(self, letter: DeadLetter, /) -> None:
        """Keep ``letter``."""

    def remove(self, letter: DeadLetter, /) -> None:
        """Forget ``letter`` (after a successful redrive); ``KeyError`` if absent."""

    def __len__(self) -> int: ...

    def __iter__(self) -> c.Iterator[DeadLetter]:
        """The letters, oldest first."""
        ...


class InMemoryDeadLetterStore:
    """The default store: a thread-safe, insertion-ordered map held in memory."""

    def __init__(self) -> None:
        self._letters: dict[uuid.UUID, DeadLetter] = {}
        self._lock = threading.Lock()

    def add(self, letter: DeadLetter, /) -> None:
        with self._lock:
            self._letters[letter.id] = letter

    def remove(self, letter: DeadLetter, /) -> None:
        with self._lock:
            del self._letters[letter.id]

    def clear(self) -> None:
        """Forget every letter."""
        with self._lock:
            self._letters.clear()

    def __len__(self) -> int:
        return len(self._letters)

    def __iter__(self) -> c.Iterator[DeadLetter]:
        with self._lock:
            snapshot = list(self._letters.values())
        return iter(snapshot)

    def __repr__(self) -> str:
        return f"<InMemoryDeadLetterStore letters={len(self)}>"
