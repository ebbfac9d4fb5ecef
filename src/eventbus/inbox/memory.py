"""InMemoryInbox: the default inbox, bounded, for one process."""

from __future__ import annotations

import collections
import threading
import uuid

__all__ = ["InMemoryInbox"]


class InMemoryInbox:
    """The records of this process, the ``max_entries`` most recent kept (100,000 by default).

    What it forgets, a duplicate older than the last ``max_entries``
    records, runs again; what it knows dies with the process. A bus of one
    process that only needs to shrug off a redrive or a repeated publish
    needs nothing more; across restarts, use :class:`SQLiteInbox` or the
    Redis inbox of a broker.
    """

    def __init__(self, *, max_entries: int = 100_000) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"max_entries must be an int >= 1, got {max_entries!r}")
        self.max_entries = max_entries
        self._records: collections.OrderedDict[tuple[str, uuid.UUID], None] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()

    def seen(self, handler: str, event_id: uuid.UUID, /) -> bool:
        """Whether the pair is among the records kept."""
        return (handler, event_id) in self._records

    def record(self, handler: str, event_id: uuid.UUID, /) -> None:
        """Keep the pair, forgetting the oldest record when full."""
        key = (handler, event_id)
        with self._lock:
            self._records[key] = None
            self._records.move_to_end(key)
            while len(self._records) > self.max_entries:
                self._records.popitem(last=False)

    def clear(self) -> None:
        """Forget every record."""
        with self._lock:
            self._records.clear()

    def __len__(self) -> int:
        return len(self._records)

    def __repr__(self) -> str:
        return f"<InMemoryInbox {len(self)} of {self.max_entries} records>"
