"""The exceptions eventbus raises itself (handler errors are never wrapped)."""

from __future__ import annotations

__all__ = ["CascadeDepthError", "EventBusError", "SyncPublishError"]


class EventBusError(Exception):
    """Base class of the errors raised by eventbus itself."""


class CascadeDepthError(EventBusError):
    """A handler published an event deeper in a cascade than the bus allows.

    Raised by ``publish``/``publish_async`` inside the handler, so the handler
    that would have continued the cycle fails and is dead-lettered; the
    message names the chain of event types that led there.
    """


class SyncPublishError(EventBusError, RuntimeError):
    """``EventBus.publish`` cannot run an async handler from inside a running event loop.

    Blocking the loop to wait for the handler would deadlock it; use
    ``await bus.publish_async(event)`` there instead.
    """
