"""Transport: the one pluggable step that decides what ``publish`` does with an event.

When the bus compiles the plan of an event class, its transport says what
``publish`` does with the events of that class: deliver them in this
process, to their handlers and with the events those publish, as one
cascade (the default, :class:`LocalTransport`), or call the functions the
transport returns instead: a broker's appends the event to a stream, an
outbox's writes it to a table. Handlers do not change.

Whatever the transport, the bus sends ``event_published`` for each event
the transport accepted (its publish function returned), so what listens
to it (``eventbus.testing.capture``, a trace) sees the events of every bus.
"""

from __future__ import annotations

import collections.abc as c
import typing as t

from .results import PublishResult

if t.TYPE_CHECKING:
    from .bus import EventBus
    from .dead_letters import DeadLetterStore
    from .events import Event
    from .plans import Plan

__all__ = ["Broker", "HeldResult", "Publish", "PublishAsync", "Transport", "announcing"]

#: What ``bus.publish(event)`` calls for one event class.
Publish: t.TypeAlias = c.Callable[["Event"], "PublishResult"]
#: What ``bus.publish_async(event)`` awaits for one event class.
PublishAsync: t.TypeAlias = c.Callable[["Event"], c.Awaitable["PublishResult"]]


@t.runtime_checkable
class Transport(t.Protocol):
    """What ``publish`` and ``publish_async`` do with an event (``EventBus(transport=...)``).

    The choice is made once per event class, when the bus compiles that
    class's plan, not once per event: ``bind`` returns the two functions
    that ``publish`` and ``publish_async`` then call with each event, or
    None to have the bus deliver the events of that class in this process
    (what :class:`~eventbus.LocalTransport` always answers).
    """

    def bind(self, bus: EventBus, plan: Plan, /) -> tuple[Publish, PublishAsync] | None:
        """The (sync, async) publish functions of ``plan``'s event class, or None: local."""
        ...


@t.runtime_checkable
class Broker(Transport, t.Protocol):
    """A transport that hands events to a message broker, with the store of its dead letters.

    ``EventBus(broker=...)`` makes the broker the bus's transport and, unless
    ``dead_letters=`` is given, its ``dead_letters`` the bus's store: the
    handlers of such a bus run in worker processes, which keep their
    letters there. :class:`eventbus.redis.RedisBroker` is one.
    """

    @property
    def dead_letters(self) -> DeadLetterStore:
        """Where the workers of this broker keep dead letters."""
        ...


class HeldResult(PublishResult):
    """The result of a publish from a handler that a broker holds until the handler succeeds.

    The event is written (and ``event_published`` sent for it) with the
    handler's acknowledgement, or dropped if the attempt fails.
    """

    __slots__ = ()


def announcing(
    bus: EventBus, publish: Publish, publish_async: PublishAsync
) -> tuple[Publish, PublishAsync]:
    """``publish`` and ``publish_async``, each sending ``event_published`` once it returned.

    What the bus binds instead of a transport's own functions while someone
    listens to ``event_published`` for it; ``publisher=`` is the handler
    publishing, if one of this bus's handlers is (as for a local cascade).
    """
    from . import signals
    from .context import publisher

    def announced(event: Event) -> PublishResult:
        result = publish(event)
        if not isinstance(result, HeldResult):  # a held one is announced when it is written
            signals.send(
                signals.event_published, bus, event=result.event, publisher=publisher.get()
            )
        return result

    async def announced_async(event: Event) -> PublishResult:
        result = await publish_async(event)
        if not isinstance(result, HeldResult):
            signals.send(
                signals.event_published, bus, event=result.event, publisher=publisher.get()
            )
        return result

    return announced, announced_async
