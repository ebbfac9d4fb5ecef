"""eventbus: a typed, in-process event bus.

Events are pydantic models; handlers are plain functions, sync or async,
registered with a decorator; a handler that fails never stops the others and
ends as a dead letter, never as a log line alone.
"""

import typing as t

from . import signals
from ._version import __version__
from .bus import EventBus, RedriveOutcome
from .cascade import LocalTransport
from .clock import Clock, SystemClock
from .dead_letters import (
    NO_HANDLER,
    RELAY,
    DeadLetter,
    DeadLetterStore,
    DeadLetterStoreError,
    DeadLetterStoreFullError,
    InMemoryDeadLetterStore,
    UndefinedEvent,
)
from .errors import (
    BrokerError,
    CascadeDepthError,
    EventBusError,
    HandlerTimeoutError,
    RedriveError,
    SyncPublishError,
    UnhandledEventError,
)
from .events import (
    JSON_DEPTH_LIMIT,
    Event,
    EventSerializationError,
    FrozenDict,
    FrozenList,
    FrozenSet,
    UnknownEventTypeError,
    new_event_id,
)
from .handlers import Handler, HandlerRegistry, Subscription
from .inbox import AlreadyHandled, Inbox, InboxError, InMemoryInbox
from .middleware import HandlerCall, Middleware
from .results import PublishResult
from .retry import MAX_DELAY, RetryPolicy
from .transport import Broker, Transport

if t.TYPE_CHECKING:
    from .dead_letters.sqlite import SQLiteDeadLetterStore, SQLiteDeadLetterStoreError
    from .inbox.sqlite import SQLiteInbox
    from .outbox import OutboxError, Relay, SQLiteOutbox
    from .tracing import Trace, TracedEvent, TracedFailure, TracedHandler

__all__ = [
    "JSON_DEPTH_LIMIT",
    "MAX_DELAY",
    "NO_HANDLER",
    "RELAY",
    "AlreadyHandled",
    "Broker",
    "BrokerError",
    "CascadeDepthError",
    "Clock",
    "DeadLetter",
    "DeadLetterStore",
    "DeadLetterStoreError",
    "DeadLetterStoreFullError",
    "Event",
    "EventBus",
    "EventBusError",
    "EventSerializationError",
    "FrozenDict",
    "FrozenList",
    "FrozenSet",
    "Handler",
    "HandlerCall",
    "HandlerRegistry",
    "HandlerTimeoutError",
    "InMemoryDeadLetterStore",
    "InMemoryInbox",
    "Inbox",
    "InboxError",
    "LocalTransport",
    "Middleware",
    "OutboxError",
    "PublishResult",
    "RedriveError",
    "RedriveOutcome",
    "Relay",
    "RetryPolicy",
    "SQLiteDeadLetterStore",
    "SQLiteDeadLetterStoreError",
    "SQLiteInbox",
    "SQLiteOutbox",
    "Subscription",
    "SyncPublishError",
    "SystemClock",
    "Trace",
    "TracedEvent",
    "TracedFailure",
    "TracedHandler",
    "Transport",
    "UndefinedEvent",
    "UnhandledEventError",
    "UnknownEventTypeError",
    "__version__",
    "new_event_id",
    "signals",
]

# Imported on first use: most programs never trace, and only some keep letters in SQLite.
_LAZY = {
    "SQLiteDeadLetterStore": ".dead_letters.sqlite",
    "SQLiteDeadLetterStoreError": ".dead_letters.sqlite",
    "SQLiteInbox": ".inbox.sqlite",
    "OutboxError": ".outbox",
    "Relay": ".outbox",
    "SQLiteOutbox": ".outbox",
    "Trace": ".tracing",
    "TracedEvent": ".tracing",
    "TracedFailure": ".tracing",
    "TracedHandler": ".tracing",
}


def __getattr__(name: str) -> t.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'eventbus' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
