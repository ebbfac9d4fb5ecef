"""Middleware: code that wraps every call of a handler, composed once per dispatch plan.

A middleware sees one attempt of one handler on one event, and decides
what happens around it: time it, open a span, skip an event already
handled, acknowledge a message. It has a sync form (``handle``) for
``publish`` and an async form (``handle_async``) for ``publish_async``;
both call ``call_next(event, call)`` to go on towards the handler::

    class Timing(Middleware):
        def handle(self, call_next, event, call):
            started = time.perf_counter()
            try:
                call_next(event, call)
            finally:
                durations[call.subscription.name] = time.perf_counter() - started

    bus = EventBus(middleware=[Timing()])

The chain of each subscription is built when the plan of an event class is
compiled (on the first publish after a change), never per event; a
middleware whose :meth:`Middleware.applies_to` says no for a subscription is
left out of that subscription's chain, so plans it does not touch keep the
shortest path. Raising from a middleware is a failed attempt of the
handler, retried and dead-lettered like the handler's own errors.
"""

from __future__ import annotations

import collections.abc as c
import functools
import typing as t

if t.TYPE_CHECKING:
    from datetime import datetime

    from .bus import EventBus
    from .events import Event
    from .handlers.subscription import Subscription
    from .results import PublishResult

__all__ = ["AsyncCallNext", "CallNext", "HandlerCall", "Middleware"]


class HandlerCall:
    """One run of one handler on one event, as a middleware sees it.

    ``bus`` is the bus dispatching, ``subscription`` the handler's
    subscription (``subscription.name`` is the handler's name), ``result``
    the :class:`~eventbus.PublishResult` of the event being handled,
    ``attempt`` the number of the attempt under way (1 for the first; it
    grows when the handler is retried). ``redrive`` is True when the run
    was started by ``bus.redrive``.

    One object serves every attempt of a run: read it during the call, do
    not keep it.
    """

    __slots__ = ("_first_failure", "attempt", "bus", "redrive", "result", "subscription")

    def __init__(
        self,
        bus: EventBus,
        subscription: Subscription,
        result: PublishResult,
        attempt: int = 1,
        redrive: bool = False,
    ) -> None:
        self.bus = bus
        self.subscription = subscription
        self.result = result
        self.attempt = attempt
        self.redrive = redrive
        self._first_failure: datetime | None = None  # when this run's first attempt failed

    def __repr__(self) -> str:
        return (
            f"<HandlerCall {self.subscription.name} on {self.result.event.event_type} "
            f"attempt={self.attempt}>"
        )


#: What a sync middleware calls to go on: the next middleware, or the handler.
CallNext: t.TypeAlias = c.Callable[["Event", HandlerCall], None]
#: What an async middleware awaits to go on.
AsyncCallNext: t.TypeAlias = c.Callable[["Event", HandlerCall], c.Awaitable[None]]


class Middleware(t.Protocol):
    """Wraps each attempt of the handlers it applies to; subclass it and override what you need.

    The defaults apply to every subscription and only call ``call_next``,
    so a middleware that only cares about ``publish_async`` overrides
    ``handle_async`` alone. ``handle`` runs on the sync path (``publish``,
    ``redrive``), ``handle_async`` on the async path, for sync and async
    handlers alike: on the sync path an async handler's coroutine is run to
    its end inside ``call_next``.

    The handler's return value is not passed back (handlers return
    nothing); an exception from ``call_next`` is the attempt's failure:
    re-raise it (or raise another) to fail the attempt, swallow it to count
    the attempt as a success.
    """

    def applies_to(self, subscription: Subscription, /) -> bool:
        """Whether this middleware wraps ``subscription``; asked once per plan."""
        return True

    def handle(self, call_next: CallNext, event: Event, call: HandlerCall, /) -> None:
        """Run one attempt on the sync path: call ``call_next(event, call)`` to go on."""
        call_next(event, call)

    async def handle_async(
        self, call_next: AsyncCallNext, event: Event, call: HandlerCall, /
    ) -> None:
        """Run one attempt on the async path: ``await call_next(event, call)`` to go on."""
        await call_next(event, call)


def chain(middleware: c.Sequence[Middleware], innermost: CallNext) -> CallNext:
    """``innermost`` wrapped by ``middleware``, the first outermost."""
    call = innermost
    for layer in reversed(middleware):
        call = functools.partial(layer.handle, call)
    return call


def chain_async(middleware: c.Sequence[Middleware], innermost: AsyncCallNext) -> AsyncCallNext:
    """``innermost`` wrapped by the async forms of ``middleware``, the first outermost."""
    call = innermost
    for layer in reversed(middleware):
        call = functools.partial(layer.handle_async, call)
    return call
