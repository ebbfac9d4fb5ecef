"""eventbus: a typed, in-process event bus.

Events are pydantic models; handlers are plain functions, sync or async,
registered with a decorator; a handler that fails never stops the others and
ends as a dead letter, never as a log line alone.
"""

from . import signals
from .bus import EventBus, RedriveOutcome
from .dead_letters import (
    NO_HANDLER,
    DeadLetter,
    DeadLetterStore,
    DeadLetterStoreFullError,
    InMemoryDeadLetterStore,
    SQLiteDeadLetterStore,
    UndefinedEvent,
)
from .errors import (
    CascadeDepthError,
    EventBusError,
    HandlerTimeoutError,
    RedriveError,
    SyncPublishError,
    UnhandledEventError,
)
from .events import Event, UnknownEventTypeError
from .handlers import Handler, HandlerRegistry, Subscription
from .results import PublishResult
from .retry import RetryPolicy
from .tracing import Trace, TracedEvent, TracedFailure, TracedHandler

__all__ = [
    "NO_HANDLER",
    "CascadeDepthError",
    "DeadLetter",
    "DeadLetterStore",
    "DeadLetterStoreFullError",
    "Event",
    "EventBus",
    "EventBusError",
    "Handler",
    "HandlerRegistry",
    "HandlerTimeoutError",
    "InMemoryDeadLetterStore",
    "PublishResult",
    "RedriveError",
    "RedriveOutcome",
    "RetryPolicy",
    "SQLiteDeadLetterStore",
    "Subscription",
    "SyncPublishError",
    "Trace",
    "TracedEvent",
    "TracedFailure",
    "TracedHandler",
    "UndefinedEvent",
    "UnhandledEventError",
    "UnknownEventTypeError",
    "signals",
]
