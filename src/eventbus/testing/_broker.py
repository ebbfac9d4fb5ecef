"""InMemoryBroker: a broker bus's delivery, in this process, for tests without a Redis server.

The semantics are the Redis workers': one group per handler, each reading
every event in publish order and running the handlers it matches, an
attempt per delivery under the handler's retry policy (waits on the bus's
clock), a dead letter after the last failed attempt, and what a handler
publishes written only when its attempt succeeds. Events go through JSON
on the way in, as through a stream, so an event that would not survive
Redis fails here too.
"""

from __future__ import annotations

import asyncio
import collections.abc as c
import contextlib
import contextvars
import dataclasses
import inspect
import logging
import typing as t

from .. import signals
from ..cascade import _stamped
from ..context import current
from ..dead_letters import DeadLetter, InMemoryDeadLetterStore
from ..failures import _log, attempt_failed, give_up
from ..handlers.selection import select, unmatched_error
from ..idempotency import Idempotent
from ..inbox import InMemoryInbox
from ..middleware import HandlerCall, Middleware, chain, chain_async
from ..results import PublishResult
from ..retry import RetryPolicy
from ..transport import HeldResult
from . import _state

if t.TYPE_CHECKING:
    from ..bus import EventBus
    from ..events import Event
    from ..handlers.subscription import Subscription
    from ..plans import Plan
    from ..transport import Publish, PublishAsync

__all__ = ["InMemoryBroker", "use_broker"]

#: Entries one drain delivers at most before it decides a cascade never ends.
MAX_ENTRIES = 100_000


@dataclasses.dataclass(slots=True)
class _Attempt:
    event: Event
    children: list[Event] = dataclasses.field(default_factory=list)


_running: contextvars.ContextVar[_Attempt | None] = contextvars.ContextVar(
    "eventbus_testing_attempt", default=None
)


class InMemoryBroker:
    """A :class:`~eventbus.Broker` whose "workers" run when a test calls :meth:`drain`.

    ::

        with use_broker(bus) as broker:        # the app's broker bus, Redis or not
            bus.publish(OrderPlaced(order_id="o1"))
            broker.drain()                      # every group, until nothing is left
        assert len(bus.dead_letters) == 0

    ``entries`` is the stream (every event accepted, in order);
    ``deliveries`` counts the attempts per (handler, event id); ``inbox``
    (an :class:`~eventbus.InMemoryInbox`) is where idempotent handlers
    record what they handled, in place of the broker's.
    """

    def __init__(self) -> None:
        self.entries: list[Event] = []
        self.deliveries: dict[tuple[str, t.Any], int] = {}
        self._read: dict[str, int] = {}  # group -> entries it has read
        self._dead_letters = InMemoryDeadLetterStore()
        self.inbox = InMemoryInbox()
        self._bus: EventBus | None = None

    @property
    def dead_letters(self) -> InMemoryDeadLetterStore:
        return self._dead_letters

    # -- the Transport protocol ---------------------------------------------------

    def bind(self, bus: EventBus, plan: Plan, /) -> tuple[Publish, PublishAsync]:
        self._bus = bus
        return self.publish, self.publish_async

    def publish(self, event: Event, /) -> PublishResult:
        """Accept ``event`` (through JSON, as a stream would); from a handler, with its attempt."""
        attempt = _running.get()
        if attempt is not None:
            if event.causation_id is None or event.correlation_id is None:
                event = _stamped(event, attempt.event)
            attempt.children.append(event)
            return HeldResult(event)
        self.entries.append(type(event).from_json(event.event_type, event.to_json()))
        return PublishResult(event)

    async def publish_async(self, event: Event, /) -> PublishResult:
        return self.publish(event)

    # -- the workers --------------------------------------------------------------

    def drain(self, *, handlers: c.Sequence[str] = ()) -> int:
        """Run the handlers (those matching ``handlers``, globs) on every unread entry.

        Until no group has anything left, the events the handlers publish
        included; returns how many (entry, handler) pairs ran. Async
        handlers run on a private event loop; inside a running loop, use
        :meth:`drain_async`.
        """
        from ..context import loop_is_running

        if loop_is_running():
            raise RuntimeError(
                "drain() runs the handlers on an event loop of its own, and one is running "
                "in this thread: use `await broker.drain_async()` here"
            )
        return asyncio.run(self.drain_async(handlers=handlers))

    async def drain_async(self, *, handlers: c.Sequence[str] = ()) -> int:
        """:meth:`drain` from asyncio."""
        bus = self._bus
        if bus is None:
            raise RuntimeError(
                "this InMemoryBroker has no bus yet: make the bus with "
                "EventBus(broker=InMemoryBroker()), or install it with use_broker(bus)"
            )
        subscriptions = bus.subscriptions
        chosen = subscriptions
        if handlers:
            picked, unmatched = select(subscriptions, list(handlers))
            if unmatched:
                raise LookupError(unmatched_error(unmatched, subscriptions, repr(bus)))
            chosen = tuple(picked)
        groups = list({sub.name: sub for sub in chosen}.values())
        ran = 0
        progress = True
        while progress:
            progress = False
            for sub in groups:
                read = self._read.get(sub.name, 0)
                while read < len(self.entries):
                    event = self.entries[read]
                    read += 1
                    self._read[sub.name] = read
                    progress = True
                    if sub.receives(type(event)):
                        await self._deliver(bus, sub, event)
                        ran += 1
                        if ran > MAX_ENTRIES:
                            raise RuntimeError(
                                f"drain ran {MAX_ENTRIES} handler runs and the handlers still "
                                "publish: a cycle of events?"
                            )
        return ran

    async def _deliver(self, bus: EventBus, sub: Subscription, event: Event) -> None:
        policy = sub.retry or bus.default_retry or RetryPolicy()
        attempt = 0
        while True:
            attempt += 1
            self.deliveries[sub.name, event.event_id] = attempt
            run = _Attempt(event)
            error = await self._attempt(bus, sub, event, attempt, run)
            if error is None:
                self._write(bus, run.children, sub.name)
                signals.send(
                    signals.handler_succeeded, bus, event=event, handler=sub.name,
                    attempts=attempt,
                )  # fmt: skip
                return
            delay = policy.next_delay(attempt, error, bus.clock)
            if delay is None:
                self._dead_letter(bus, sub, event, attempt, error, policy)
                return
            attempt_failed(bus, PublishResult(event), sub, attempt, error, delay)
            await bus.clock.sleep_async(delay)

    async def _attempt(
        self, bus: EventBus, sub: Subscription, event: Event, attempt: int, run: _Attempt
    ) -> Exception | None:
        middleware: list[Middleware] = [bus._idempotent] if sub.idempotent else []  # outermost
        middleware += [m for m in bus.middleware if m.applies_to(sub)]
        call = HandlerCall(bus, sub, PublishResult(event), attempt)
        token = _running.set(run)
        handled = current.set(call.result)  # events made in the handler follow from this one
        try:
            if sub.is_async:

                async def innermost(event: Event, call: HandlerCall) -> None:
                    returned = sub.handler(event)
                    if inspect.isawaitable(returned):
                        if sub.timeout is not None:
                            await asyncio.wait_for(returned, sub.timeout)
                        else:
                            await returned

                await chain_async(middleware, innermost)(event, call)
            else:

                def innermost_sync(event: Event, call: HandlerCall) -> None:
                    sub.handler(event)

                chain(middleware, innermost_sync)(event, call)
        except Exception as error:
            run.children.clear()  # a failed attempt publishes nothing
            return error
        finally:
            current.reset(handled)
            _running.reset(token)
        return None

    def _dead_letter(
        self,
        bus: EventBus,
        sub: Subscription,
        event: Event,
        attempts: int,
        error: Exception,
        policy: RetryPolicy,
    ) -> None:
        signals.send(
            signals.handler_failed, bus, event=event, handler=sub.name, attempt=attempts,
            error=error, final=True,
        )  # fmt: skip
        letter = DeadLetter.from_exception(
            event, sub.name, attempts, error, failed_at=bus.clock.now()
        )
        bus.dead_letters.add(letter)
        if sub.on_give_up is not None:  # what it publishes is written with the letter
            hook = _Attempt(event)
            token = _running.set(hook)
            handled = current.set(PublishResult(event))
            try:
                written = give_up(sub, letter)
            finally:
                current.reset(handled)
                _running.reset(token)
            if written:
                self._write(bus, hook.children, sub.name)
        why = ""
        if attempts < policy.max_attempts:
            why = " (not retried: its error type is excluded by the retry policy)"
        _log(PublishResult(event), letter, attempts, error, why, logging.ERROR)
        signals.send(signals.event_dead_lettered, bus, dead_letter=letter)

    def _write(self, bus: EventBus, children: list[Event], publisher: str) -> None:
        """Append what a handler (or its on_give_up hook) published, as its run settled."""
        for child in children:
            self.entries.append(type(child).from_json(child.event_type, child.to_json()))
            signals.send(signals.event_published, bus, event=child, publisher=publisher)

    def __repr__(self) -> str:
        return f"<InMemoryBroker entries={len(self.entries)}>"


def use_broker(
    bus: EventBus, broker: InMemoryBroker | None = None, /
) -> contextlib.AbstractContextManager[InMemoryBroker]:
    """Give a broker bus an :class:`InMemoryBroker` for the block (a new one by default).

    The bus publishes to it and keeps its letters in its store, so the
    application's own broker bus (``EventBus(broker=RedisBroker(...))``,
    built when the application was imported) is tested without a server;
    at the end of the block the bus has its broker, transport and store back.
    """
    from ..bus import EventBus

    if not isinstance(bus, EventBus):
        raise TypeError(f"use_broker() takes an EventBus, got {bus!r}")
    return _using(bus, broker if broker is not None else InMemoryBroker())


@contextlib.contextmanager
def _using(bus: EventBus, broker: InMemoryBroker) -> c.Iterator[InMemoryBroker]:
    before = (bus._transport, bus._broker, bus._dead_letters, bus._inbox, bus._idempotent)

    def install(transport: t.Any, owner: t.Any, store: t.Any, inbox: t.Any, layer: t.Any) -> None:
        with bus._lock:
            bus._transport, bus._broker, bus._dead_letters = transport, owner, store
            bus._inbox, bus._idempotent = inbox, layer
            bus._invalidate()

    install(broker, broker, broker.dead_letters, broker.inbox, Idempotent(broker.inbox))
    broker._bus = bus
    change = _state.Change(f"use_broker({broker!r})", bus, lambda: install(*before))
    _state.add(change)
    try:
        yield broker
    finally:
        change.undo()
