"""InMemoryDeadLetterStore: the default store, bounded, in insertion order."""

from __future__ import annotations

import collections.abc as c
import logging
import threading
import typing as t
import uuid

from .._logs import event_fields
from .letter import summary
from .protocol import DeadLetterStoreFullError

if t.TYPE_CHECKING:
    from .letter import DeadLetter

__all__ = ["InMemoryDeadLetterStore"]

logger = logging.getLogger("eventbus")


class InMemoryDeadLetterStore:
    """Dead letters in a thread-safe, insertion-ordered map, at most ``max_letters`` of them.

    When full, ``when_full`` decides: ``"warn"`` (the default) drops the
    oldest letter and logs it at ERROR (its ids, types and error, not its
    event's fields); ``"refuse"`` raises
    :class:`DeadLetterStoreFullError` and keeps the old ones (the bus then
    logs the new letter at CRITICAL). Neither is ever silent. For letters
    that must survive a restart, use ``SQLiteDeadLetterStore``.
    """

    def __init__(
        self, *, max_letters: int = 10_000, when_full: t.Literal["warn", "refuse"] = "warn"
    ) -> None:
        if isinstance(max_letters, bool) or not isinstance(max_letters, int) or max_letters < 1:
            raise ValueError(f"max_letters must be an int >= 1, got {max_letters!r}")
        if when_full not in ("warn", "refuse"):
            raise ValueError(f'when_full must be "warn" or "refuse", got {when_full!r}')
        self.max_letters = max_letters
        self.when_full = when_full
        self._letters: dict[uuid.UUID, DeadLetter] = {}
        self._lock = threading.Lock()

    def add(self, letter: DeadLetter, /) -> None:
        with self._lock:
            if letter.id not in self._letters and len(self._letters) >= self.max_letters:
                if self.when_full == "refuse":
                    raise DeadLetterStoreFullError(
                        f"the in-memory dead-letter store holds max_letters={self.max_letters}; "
                        "redrive or purge letters, raise max_letters, or use "
                        "SQLiteDeadLetterStore"
                    )
                oldest = next(iter(self._letters))
                dropped = self._letters.pop(oldest)
                logger.error(
                    "dead-letter store full (max_letters=%d): dropped the oldest letter to keep "
                    "the newest; raise max_letters or use SQLiteDeadLetterStore. Dropped %s",
                    self.max_letters,
                    summary(dropped),
                    extra=event_fields(
                        dropped.event, dropped.handler, dropped.attempts, dead_letter_id=dropped.id
                    ),
                )
            self._letters[letter.id] = letter

    def remove(self, letter: DeadLetter, /) -> None:
        with self._lock:
            del self._letters[letter.id]

    def get(self, letter_id: uuid.UUID, /) -> DeadLetter:
        with self._lock:
            return self._letters[letter_id]

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
        return f"<InMemoryDeadLetterStore letters={len(self)} max_letters={self.max_letters}>"
