"""The context variable that says which event's handlers are running here, and what follows.

Set by the bus around a handler's run, it lets a ``publish`` made inside a
handler join that handler's cascade, and lets an event constructed inside a
handler take its ``causation_id`` and ``correlation_id`` from the event
being handled, so publishing it needs no copy.
"""

from __future__ import annotations

import contextvars
import sys
import typing as t
import uuid

if t.TYPE_CHECKING:
    from .results import PublishResult

__all__ = [
    "current",
    "current_causation_id",
    "current_correlation_id",
    "loop_is_running",
    "publisher",
]

#: The result of the event whose handlers are running in this context (None outside them).
current: contextvars.ContextVar[PublishResult | None] = contextvars.ContextVar(
    "eventbus_current", default=None
)

_get = current.get

#: The name of the handler running in this context, kept only while someone listens to
#: ``event_published`` for the bus (it says which handler published each event).
publisher: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "eventbus_publisher", default=None
)


def current_causation_id() -> uuid.UUID | None:
    """The ``event_id`` of the event being handled here, or None outside handlers."""
    node = _get()
    return None if node is None else node.event.event_id


def current_correlation_id() -> uuid.UUID | None:
    """The ``correlation_id`` of the cascade running here (its root's id), or None."""
    node = _get()
    if node is None:
        return None
    event = node.event
    return event.correlation_id or event.event_id


def loop_is_running() -> bool:
    """Whether an asyncio event loop runs in this thread (asyncio is not imported for it).

    No loop can run in a program that never imported asyncio.
    """
    asyncio = sys.modules.get("asyncio")
    return asyncio is not None and asyncio.events._get_running_loop() is not None
