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
from ._logs import event_fields
from .context import current, publisher
from .errors import CascadeDepthError, SyncPublishError
from .results import PublishResult

if t.TYPE_CHECKING:
    import asyncio

    from .bus import EventBus
    from .dead_letters import DeadLetter, DeadLetterStore
    from .events import Event
    from .plans import Plan
    from .transport import Publish, PublishAsync

__all__ = [
    "Cascade",
    "LocalTransport",
    "cascade_of",
    "end",
    "enqueue",
    "no_loop_here",
    "open_root",
    "run",
    "run_async",
]

logger = logging.getLogger("eventbus")

_get_current = current.get
_set_current = current.set
_reset_current = current.reset
_new = object.__new__


class LocalTransport:
    """Deliver events in this process: the bus's own cascade (see :meth:`EventBus.publish`).

    Its :meth:`bind` returns None, which tells the bus to deliver locally:
    look the plan up, join or open the cascade, run the plan, drain.
    """

    __slots__ = ()

    def bind(self, bus: EventBus, plan: Plan, /) -> tuple[Publish, PublishAsync] | None:
        return None

    def __repr__(self) -> str:
        return "<LocalTransport>"


def open_root(
    bus: EventBus,
    event: Event,
    redriving: tuple[DeadLetter, DeadLetterStore] | None = None,
) -> PublishResult:
    """The result of ``event`` as the root of a new cascade (``publish`` does this inline)."""
    root = _new(PublishResult)
    root.event = event
    root.dead_letters = []
    root._bus = bus
    root._parent = None
    root._cascade = None if redriving is None else Cascade(root, redriving)
    root._closed = False
    return root


def run(root: PublishResult, plan: Plan) -> PublishResult:
    """Deliver ``root`` and what its handlers publish, on the sync path (a redrive's way).

    ``EventBus.publish`` does the same inline, to save a call per publish.
    """
    token = _set_current(root)
    try:
        plan.deliver(root)
        root._closed = True
        if root._cascade is not None:
            root._cascade.drain()
    finally:
        _reset_current(token)
        if not root._closed or root._cascade is not None:
            end(root)
    return root


async def run_async(root: PublishResult, plan: Plan) -> PublishResult:
    """``run`` on the async path."""
    token = _set_current(root)
    try:
        await plan.deliver_async(root)
        root._closed = True
        if root._cascade is not None:
            await root._cascade.drain_async()
    finally:
        _reset_current(token)
        if not root._closed or root._cascade is not None:
            end(root)
    return root


def enqueue(parent: PublishResult, event: Event, plan: Plan) -> PublishResult | None:
    """Queue ``event`` in the cascade of ``parent`` (its publisher); None if it has ended.

    An ended cascade is one whose top-level call has returned: a task that
    a handler left running publishes top-level events of its own.
    """
    cascade = parent._cascade or cascade_of(parent)
    root = cascade.root
    if root._closed:
        return None
    bus = root._bus
    assert bus is not None
    depth = 1
    node = parent._parent
    while node is not None:
        depth += 1
        node = node._parent
    if depth > bus.max_cascade_depth:
        raise CascadeDepthError(
            f"{event.event_type} would be generation {depth} of one cascade, past "
            f"max_cascade_depth={bus.max_cascade_depth}; chain: {_chain(parent)}. "
            "A handler cycle? If the depth is intended, raise EventBus(max_cascade_depth=...)"
        )
    if event.causation_id is None or event.correlation_id is None:
        event = _stamped(event, parent.event)
    child = _new(PublishResult)
    child.event = event
    child.dead_letters = []
    child._bus = bus
    child._parent = parent
    child._cascade = cascade
    child._closed = True
    queue = cascade.queue
    queue.append(child)
    if root._closed:  # the top-level call finished meanwhile: take it back if still there
        try:
            queue.remove(child)
        except ValueError:
            pass  # the dispatcher got it first
        else:
            return None
    if plan.announce:
        signals.send(signals.event_published, bus, event=event, publisher=publisher.get())
    return child


def cascade_of(node: PublishResult) -> Cascade:
    """The cascade ``node`` runs in: a root's is made on first need (its first child)."""
    cascade = node._cascade
    if cascade is None:
        with _creation:  # handlers in two threads may queue the first child at once
            cascade = node._cascade
            if cascade is None:
                cascade = node._cascade = Cascade(node)
    return cascade


class Cascade:
    """The events queued by one top-level publish's handlers, and its private event loop.

    Made only when needed: for the first event a handler publishes, or the
    first async handler that the sync path runs. Whether the top-level call
    has ended is the root's ``_closed``, so that a publish whose handlers
    publish nothing makes no cascade at all.

    Handlers in other threads (``run_in_thread``, or a copied context) may
    enqueue while the publishing thread drains, so enqueueing and ``next``
    use a double check instead of a lock: an enqueue appends, then looks at
    ``_closed``; ``next`` sets ``_closed``, then looks at the queue; the
    publishing thread sets ``_closed``, then looks for a cascade. Whichever
    comes second sees the other, and ``deque.remove``/``popleft`` settle who
    owns a raced event.
    """

    __slots__ = ("queue", "redriving", "root", "runner")

    def __init__(
        self,
        root: PublishResult,
        redriving: tuple[DeadLetter, DeadLetterStore] | None = None,
    ) -> None:
        self.root = root
        self.queue: collections.deque[PublishResult] = collections.deque()
        self.runner: asyncio.Runner | None = None
        #: On a redrive: the letter redriven and the store it came from.
        self.redriving = redriving

    def drain(self) -> None:
        """Deliver the queued events, and those their handlers queue, in FIFO order."""
        bus = self.root._bus
        assert bus is not None
        self.root._closed = False
        node = self.next()
        while node is not None:
            _set_current(node)  # reset by the publish that opened the cascade
            kind = type(node.event)
            (bus._compiled.get(kind) or bus._compile(kind)).deliver(node)
            node = self.next()

    async def drain_async(self) -> None:
        """``drain`` on the async path."""
        bus = self.root._bus
        assert bus is not None
        self.root._closed = False
        node = self.next()
        while node is not None:
            _set_current(node)
            kind = type(node.event)
            await (bus._compiled.get(kind) or bus._compile(kind)).deliver_async(node)
            node = self.next()

    def next(self) -> PublishResult | None:
        """The oldest queued event; None, and the cascade closed, when none is left."""
        root = self.root
        queue = self.queue
        while True:
            if queue:
                try:
                    return queue.popleft()
                except IndexError:  # an enqueue took its event back
                    pass
            root._closed = True
            if not queue:
                return None
            root._closed = False  # an enqueue raced the close: keep draining

    def run_coroutine(self, coroutine: c.Coroutine[t.Any, t.Any, object]) -> None:
        """Run an async handler from the sync path, on this cascade's private loop."""
        if self.runner is None:
            import asyncio

            self.runner = asyncio.Runner()
        # A fresh copy each time: the handler must see the event it is handling as current.
        self.runner.run(coroutine, context=contextvars.copy_context())


def end(root: PublishResult) -> None:
    """End a cascade early (an exception escaped), or release its private loop."""
    root._closed = True
    cascade = root._cascade
    if cascade is None:
        return
    dropped: list[PublishResult] = []
    while cascade.queue:
        try:
            dropped.append(cascade.queue.popleft())
        except IndexError:
            break
    if cascade.runner is not None:
        cascade.runner.close()
        cascade.runner = None
    if dropped:  # only when a BaseException (cancellation, Ctrl-C) ended the publish
        logger.error(
            "publish of %s (event_id=%s) was interrupted; %d queued event(s) were not "
            "dispatched: %s",
            root.event.event_type,
            root.event.event_id,
            len(dropped),
            ", ".join(f"{i.event.event_type} (event_id={i.event.event_id})" for i in dropped),
            extra=event_fields(root.event),
        )


def no_loop_here(plan: Plan, event: Event) -> SyncPublishError:
    """The error of a sync ``publish`` that would have to run async handlers in a running loop."""
    names = ", ".join(s.name for s in plan.subscriptions if s.is_async)
    return SyncPublishError(
        f"publish() cannot run the async handler(s) {names} of "
        f"{type(event).__qualname__} from inside a running event loop without blocking "
        f"it; use `await bus.publish_async(event)` instead"
    )


#: Guards the creation of a root's cascade by two threads at once (rare: only the first
#: event a handler publishes creates it).
_creation = threading.Lock()

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
