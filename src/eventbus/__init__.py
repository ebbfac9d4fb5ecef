"""eventbus: a typed, in-process event bus.

Events are pydantic models; handlers are plain functions, sync or async,
registered with a decorator; a handler that fails never stops the others and
ends as a dead letter, never as a log line alone.
"""

from .bus import EventBus
from .dead_letters import DeadLetter, DeadLetterStore, InMemoryDeadLetterStore
from .errors import CascadeDepthError, EventBusError, SyncPublishError
from .events import Event, UnknownEventTypeError
from .handlers import Handler, HandlerRegistry, Subscription
from .results import PublishResult
from .retry import RetryPolicy

__all__ = [
    "CascadeDepthError",
    "DeadLetter",
    "DeadLetterStore",
    "Event",
    "EventBus",
    "EventBusError",
    "Handler",
    "HandlerRegistry",
    "InMemoryDeadLetterStore",
    "PublishResult",
    "RetryPolicy",
    "Subscription",
    "SyncPublishError",
    "UnknownEventTypeError",
]
