"""Transport: the one pluggable step that decides what ``publish`` does with an event.

``EventBus.publish(event)`` calls the publish function that the bus's
transport compiled for the event's class, and returns what it returns. The
default, :class:`LocalTransport` (``eventbus.cascade``), delivers the event in
this process: to its handlers, and with the events they publish, as one
cascade. A broker's transport appends it to a stream instead, and an
outbox's writes it to a table; handlers do not change.
"""

from __future__ import annotations

import collections.abc as c
import typing as t

if t.TYPE_CHECKING:
    from .bus import EventBus
    from .events import Event
    from .plans import Plan
    from .results import PublishResult

__all__ = ["Publish", "PublishAsync", "Transport"]

#: What ``bus.publish(event)`` calls for one event class.
Publish: t.TypeAlias = c.Callable[["Event"], "PublishResult"]
#: What ``bus.publish_async(event)`` awaits for one event class.
PublishAsync: t.TypeAlias = c.Callable[["Event"], c.Awaitable["PublishResult"]]


@t.runtime_checkable
class Transport(t.Protocol):
    """What ``publish`` and ``publish_async`` do with an event (``EventBus(transport=...)``).

    The choice is made once per event class, when the bus compiles that
    class's plan, not once per event: ``bind`` returns the two functions
    that ``publish`` and ``publish_async`` then call with each event. A
    transport that delivers in this process calls ``plan.deliver(result)``;
    one that hands events to a broker does not deliver at all.
    """

    def bind(self, bus: EventBus, plan: Plan, /) -> tuple[Publish, PublishAsync]:
        """The (sync, async) publish functions of ``plan``'s event class on ``bus``."""
        ...
