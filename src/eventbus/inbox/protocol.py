"""The inbox protocol, and what an idempotent handler's run knows about itself."""

from __future__ import annotations

import contextvars
import dataclasses
import typing as t
import uuid

from ..errors import EventBusError

__all__ = ["AlreadyHandled", "Handling", "Inbox", "InboxError", "handling"]


@t.runtime_checkable
class Inbox(t.Protocol):
    """Where a bus records the events its idempotent handlers handled.

    A record is a (handler name, event id) pair. ``seen`` says whether one
    is there; ``record`` adds one (adding it again is no error). Both are
    called from any thread, and from several processes at once when the
    inbox lives in a file or a server.
    """

    def seen(self, handler: str, event_id: uuid.UUID, /) -> bool:
        """Whether ``handler`` is recorded as having handled the event ``event_id``."""
        ...

    def record(self, handler: str, event_id: uuid.UUID, /) -> None:
        """Record that ``handler`` handled the event ``event_id``."""
        ...


class InboxError(EventBusError):
    """An inbox that cannot be used (unreachable, not an inbox, misused)."""


class AlreadyHandled(Exception):  # an outcome, not a failure
    """Raised by an inbox transaction whose record another run committed first.

    The transaction was rolled back: the handler's writes in it did not
    happen. The bus counts the run as a duplicate skipped, not a failure; a
    handler that catches exceptions broadly should let this one through.
    """


@dataclasses.dataclass(slots=True)
class Handling:
    """The run of an idempotent handler under way in this context."""

    inbox: Inbox
    handler: str
    event_id: uuid.UUID
    recorded: bool = False  # a transaction of the inbox committed the record already
    writing: bool = False  # a transaction of the inbox is open for this run


#: The idempotent handler running in this context, if any (set by the bus around its call).
handling: contextvars.ContextVar[Handling | None] = contextvars.ContextVar(
    "eventbus_inbox_handling", default=None
)
