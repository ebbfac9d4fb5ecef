"""The exceptions eventbus raises itself (handler errors are never wrapped)."""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "CascadeDepthError",
    "EventBusError",
    "HandlerTimeoutError",
    "RedriveError",
    "SyncPublishError",
    "UnhandledEventError",
]


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


class HandlerTimeoutError(EventBusError, TimeoutError):
    """An async handler's attempt took longer than its subscription's ``timeout``.

    It counts as a failed attempt, retried like any other error under the
    handler's ``RetryPolicy``.
    """


class UnhandledEventError(EventBusError):
    """No handler is subscribed to a published event.

    Not raised: it is the ``error_type`` of the dead letter kept for such an
    event when the bus is made with ``report_unhandled=True``.
    """


class RedriveError(EventBusError, LookupError):
    """A dead letter cannot be redriven: its handler or its event class is not defined here.

    The letter stays in its store.
    """


class BrokerError(EventBusError):
    """The broker (Redis) could not take or give what was asked, within the time allowed.

    Raised by ``publish``/``publish_async`` of a broker bus when the event
    was not written: the event is not published, and the message names the
    broker, the cause (also chained as ``__cause__``) and what to check.
    """
