"""Cascades: one top-level publish and every event its handlers publish, run in this process.

A publish made outside any handler opens a cascade: its event's handlers
run, and the events they publish are queued (FIFO) and delivered after
them, in publish order, each stamped with its ``causation_id`` and
``correlation_id``, until the queue is empty or the depth limit stops a
cycle. A publish made inside a handler of the same bus joins the running
cascade: it queues the event and returns at once. :class:`LocalTransport`
is this, as the bus's default publish step.
"""

from __future__ import annotations

import collections
import collections.abc as c
import contextvars
import logging
import threading
import typing as t

from . import signals
from .context import current, publisher
from .errors import CascadeDepthError, SyncPublishError
from .plans import loop_is_running
from .results import PublishResult

if t.TYPE_CHECKING:
    import asyncio

    from .bus import EventBus
    from .dead_letters import DeadLetter, DeadLetterStore
    from .events import Event
    from .plans import Plan

__all__ = ["Cascade", "LocalTransport", "bind"]

logger = logging.getLogger("eventbus")

_get_current = current.get
_set_current = current.set
_reset_current = current.reset
_new = object.__new__


class LocalTransport:
    """Deliver events in this process, each top-level publish with its cascade.

    For each event class it compiles, when the class's plan is compiled, the
    function that ``publish`` calls: join the running cascade (a publish
    from a handler of the same bus), or open one, run the plan's handlers,
    and drain what they published.
    """

    __slots__ = ()

    def bind(self, bus: EventBus, plan: Plan, /) -> tuple[Publish, PublishAsync]:
        return bind(bus, plan)

    def __repr__(self) -> str:
        return "<LocalTransport>"


Publish: t.TypeAlias = c.Callable[["Event"], PublishResult]
PublishAsync: t.TypeAlias = c.Callable[["Event"], c.Awaitable[PublishResult]]


def bind(
    bus: EventBus,
    plan: Plan,
    *,
    redriving: tuple[DeadLetter, DeadLetterStore] | None = None,
) -> tuple[Publish, PublishAsync]:
    """The sync and async functions that deliver an event of ``plan`` and its cascade.

    With ``redriving`` (a redrive), they always open a cascade of their own.
    """
    deliver = plan.deliver
    deliver_async = plan.deliver_async
    join = redriving is None
    announce = plan.announce and join
    check_loop = plan.has_async

    def publish(event: Event, /) -> PublishResult:
        if join:
            node = _get_current()
            if node is not None:
                cascade = node._cascade
                if cascade is not None and cascade.bus is bus:
                    child = cascade.enqueue(event, node, plan)
                    if child is not None:
                        return child
        if check_loop and loop_is_running():
            raise _no_loop_here(plan, event, redriving)
        if announce:
            signals.send(signals.event_published, bus, event=event, publisher=None)
        cascade = _new(Cascade)
        cascade.bus = bus
        if redriving is not None:
            cascade.redriving = redriving
        root = _new(PublishResult)  # without __init__: only what a root needs is set
        root.event = event
        root.dead_letters = []
        root._parent = None
        root._cascade = cascade
        token = _set_current(root)
        try:
            deliver(root)
            cascade.closed = True
            if cascade.queue is not None:  # handlers published events: run them
                cascade.drain()
        finally:
            _reset_current(token)
            if not cascade.closed or cascade.runner is not None:
                cascade.close()
        return root

    async def publish_async(event: Event, /) -> PublishResult:
        if join:
            node = _get_current()
            if node is not None:
                cascade = node._cascade
                if cascade is not None and cascade.bus is bus:
                    child = cascade.enqueue(event, node, plan)
                    if child is not None:
                        return child
        if announce:
            signals.send(signals.event_published, bus, event=event, publisher=None)
        cascade = _new(Cascade)
        cascade.bus = bus
        if redriving is not None:
            cascade.redriving = redriving
        root = _new(PublishResult)
        root.event = event
        root.dead_letters = []
        root._parent = None
        root._cascade = cascade
        token = _set_current(root)
        try:
            await deliver_async(root)
            cascade.closed = True
            if cascade.queue is not None:
                await cascade.drain_async()
        finally:
            _reset_current(token)
            if not cascade.closed:
                cascade.close()
        return root

    return publish, publish_async


def _no_loop_here(
    plan: Plan, event: Event, redriving: tuple[DeadLetter, DeadLetterStore] | None
) -> SyncPublishError:
    if redriving is not None:
        return SyncPublishError(
            f"redrive() cannot run the async handler {redriving[0].handler} inside a running "
            "event loop; use `await bus.redrive_async(letter)` instead"
        )
    names = ", ".join(s.name for s in plan.subscriptions if s.is_async)
    return SyncPublishError(
        f"publish() cannot run the async handler(s) {names} of "
        f"{type(event).__qualname__} from inside a running event loop without blocking "
        f"it; use `await bus.publish_async(event)` instead"
    )


class Cascade:
    """The state of one running cascade: its queue, whether it ended, its private loop.

    Handlers in other threads (``run_in_thread``, or a copied context) may
    enqueue while the publishing thread drains, so ``enqueue`` and ``next``
    use a double check instead of a lock (a lock is taken only to create the
    queue, on the first child): an enqueue appends, then looks at
    ``closed``; ``next`` sets ``closed``, then looks at the queue. Whichever
    comes second sees the other, and ``deque.remove``/``popleft`` settle who
    owns a raced event.

    Built without ``__init__`` once per top-level publish: the class
    attributes are the defaults, and only what differs is set.
    """

    bus: EventBus
    closed: bool = False
    queue: collections.deque[PublishResult] | None = None
    runner: asyncio.Runner | None = None
    #: On a redrive: the letter redriven and the store it came from.
    redriving: tuple[DeadLetter, DeadLetterStore] | None = None

    def enqueue(self, event: Event, parent: PublishResult, plan: Plan) -> PublishResult | None:
        """Queue ``event`` as a child of ``parent``; None if the cascade has ended.

        An ended cascade is one whose top-level call has returned: a task that
        a handler left running publishes top-level events of its own.
        """
        if self.closed:
            return None
        depth = 1
        node = parent._parent
        while node is not None:
            depth += 1
            node = node._parent
        limit = self.bus.max_cascade_depth
        if depth > limit:
            raise CascadeDepthError(
                f"{event.event_type} would be generation {depth} of one cascade, past "
                f"max_cascade_depth={limit}; chain: {_chain(parent)}. "
                "A handler cycle? If the depth is intended, raise EventBus(max_cascade_depth=...)"
            )
        if event.causation_id is None or event.correlation_id is None:
            event = _stamped(event, parent.event)
        child = _new(PublishResult)
        child.event = event
        child.dead_letters = []
        child._parent = parent
        child._cascade = self
        queue = self.queue
        if queue is None:
            with _queue_creation:
                if self.queue is None:
                    self.queue = collections.deque()
            queue = self.queue
            assert queue is not None
        queue.append(child)
        if self.closed:  # the top-level call finished meanwhile: take it back if still there
            try:
                queue.remove(child)
            except ValueError:
                pass  # the dispatcher got it first
            else:
                return None
        if plan.announce:
            signals.send(signals.event_published, self.bus, event=event, publisher=publisher.get())
        return child

    def next(self) -> PublishResult | None:
        """The oldest queued event; None, and the cascade closed, when none is left."""
        while True:
            queue = self.queue
            if queue:
                try:
                    return queue.popleft()
                except IndexError:  # an enqueue took its event back
                    pass
            self.closed = True
            if not self.queue:
                return None
            self.closed = False  # an enqueue raced the close: keep draining

    def drain(self) -> None:
        """Deliver the queued events, and those their handlers queue, in FIFO order."""
        bus = self.bus
        self.closed = False
        node = self.next()
        while node is not None:
            _set_current(node)  # reset by the publish that opened the cascade
            kind = type(node.event)
            (bus._compiled.get(kind) or bus._compile(kind)).deliver(node)
            node = self.next()

    async def drain_async(self) -> None:
        """``drain`` on the async path."""
        bus = self.bus
        self.closed = False
        node = self.next()
        while node is not None:
            _set_current(node)
            kind = type(node.event)
            await (bus._compiled.get(kind) or bus._compile(kind)).deliver_async(node)
            node = self.next()

    def run_coroutine(self, coroutine: c.Coroutine[t.Any, t.Any, object]) -> None:
        """Run an async handler from the sync path, on this cascade's private loop."""
        if self.runner is None:
            import asyncio

            self.runner = asyncio.Runner()
        # A fresh copy each time: the handler must see the event it is handling as current.
        self.runner.run(coroutine, context=contextvars.copy_context())

    def close(self) -> None:
        """End the cascade early (an exception escaped) or release its private loop."""
        self.closed = True
        dropped: list[PublishResult] = []
        while self.queue:
            try:
                dropped.append(self.queue.popleft())
            except IndexError:
                break
        if self.runner is not None:
            self.runner.close()
            self.runner = None
        if dropped:  # only when a BaseException (cancellation, Ctrl-C) ended the publish
            root = dropped[0]
            while root._parent is not None:
                root = root._parent
            logger.error(
                "publish of %s (event_id=%s) was interrupted; %d queued event(s) were not "
                "dispatched: %s",
                root.event.event_type,
                root.event.event_id,
                len(dropped),
                ", ".join(f"{i.event.event_type} (event_id={i.event.event_id})" for i in dropped),
            )


#: Guards the creation of a cascade's queue by two threads at once (rare: only the first
#: event a handler publishes creates it).
_queue_creation = threading.Lock()

_set = object.__setattr__
_IDS = frozenset(("causation_id", "correlation_id"))


def _stamped(event: Event, cause: Event) -> Event:
    """A copy of ``event`` with its missing causation and correlation ids taken from ``cause``.

    What ``model_copy(update=...)`` does, at a fraction of the cost (no
    validation is needed: the ids are the cause's own UUIDs). The event
    published stays as it was: it may be published again elsewhere.
    """
    fields = event.__dict__.copy()
    if event.causation_id is None:
        fields["causation_id"] = cause.event_id
    if event.correlation_id is None:
        fields["correlation_id"] = cause.correlation_id or cause.event_id
    copy = _new(type(event))
    _set(copy, "__dict__", fields)
    _set(copy, "__pydantic_fields_set__", event.__pydantic_fields_set__ | _IDS)
    _set(copy, "__pydantic_extra__", event.__pydantic_extra__)
    _set(copy, "__pydantic_private__", event.__pydantic_private__)
    return copy


def _chain(node: PublishResult) -> str:
    names: list[str] = []
    walk: PublishResult | None = node
    while walk is not None:
        names.append(walk.event.event_type)
        walk = walk._parent
    names.reverse()
    if len(names) > 8:
        names = [*names[:2], "...", *names[-5:]]
    return " -> ".join(names)
