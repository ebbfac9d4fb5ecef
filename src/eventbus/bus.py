"""EventBus: subscribe handlers, publish events, redrive dead letters.

This file is the façade. One publish: look up the compiled plan of the
event's class (``plans.py``); unless the bus's transport takes the event
(``transport.py``), join the running cascade or open one (``cascade.py``),
run the plan's delivery loop (``plans.py``), which calls the handlers, and
drain what they published. A handler's failure goes to ``failures.py``;
``redrive`` is ``redrive.py``.
"""

from __future__ import annotations

import collections.abc as c
import typing as t
from datetime import timedelta

from . import redrive as _redrive
from . import signals
from .cascade import LocalTransport, end, enqueue, no_loop_here, open_root, run_async
from .clock import Clock, SystemClock
from .context import current, loop_is_running
from .dead_letters import DeadLetter, DeadLetterStore, InMemoryDeadLetterStore
from .failures import gave_up
from .handlers.registry import HandlerRegistry
from .idempotency import Idempotent
from .inbox import Inbox, InMemoryInbox
from .middleware import Middleware
from .plans import Plan, compile_plan, refuse_awaitable
from .redrive import RedriveOutcome
from .results import PublishResult
from .retry import RetryPolicy
from .transport import Broker, Transport, announcing

if t.TYPE_CHECKING:
    import uuid

    from .events import Event

__all__ = ["EventBus", "RedriveOutcome"]

_get_current = current.get
_set_current = current.set
_reset_current = current.reset
_new = object.__new__


class EventBus(HandlerRegistry):
    """An event bus: subscribe handlers, publish events.

    Options:

    - ``dead_letters``: where failed (event, handler) pairs are kept; an
      :class:`InMemoryDeadLetterStore` by default.
    - ``retry``: the :class:`RetryPolicy` of handlers subscribed without one;
      by default one attempt.
    - ``max_cascade_depth``: how many generations of events published from
      handlers one publish may run before :class:`CascadeDepthError` stops it.
    - ``concurrent``: when True, ``publish_async`` runs the handlers of equal
      priority concurrently; by default it runs them one after another.
    - ``report_unhandled``: when True, an event that no handler is
      subscribed to becomes a dead letter (``handler == NO_HANDLER``);
      by default it is not a failure (the ``event_unhandled`` signal is
      sent either way).
    - ``clock``: what time it is, how retries wait and where their jitter
      comes from (a :class:`Clock`; :class:`SystemClock` by default).
      Replaceable later: ``bus.clock = ...``.
    - ``middleware``: :class:`Middleware` wrapping every handler call, the
      first outermost (more with :meth:`add_middleware`).
    - ``transport``: what ``publish`` does with an event (a
      :class:`Transport`); by default it is delivered in this process.
    - ``broker``: a :class:`Broker` (``eventbus.redis.RedisBroker``):
      ``publish`` hands events to it and workers run the handlers; its
      store is the bus's ``dead_letters`` unless one is given.
    - ``inbox``: where the handlers subscribed with ``idempotent=True``
      record what they handled (an :class:`~eventbus.inbox.Inbox`); the
      broker's inbox on a broker bus that has one, else an
      :class:`~eventbus.inbox.InMemoryInbox`.
    """

    def __init__(
        self,
        *,
        dead_letters: DeadLetterStore | None = None,
        retry: RetryPolicy | None = None,
        max_cascade_depth: int = 32,
        concurrent: bool = False,
        report_unhandled: bool = False,
        clock: Clock | None = None,
        middleware: c.Iterable[Middleware] = (),
        transport: Transport | None = None,
        broker: Broker | None = None,
        inbox: Inbox | None = None,
    ) -> None:
        super().__init__()
        if broker is not None:
            if not isinstance(broker, Broker):
                raise TypeError(
                    f"broker must be a Broker (bind, dead_letters), got {broker!r}; "
                    "e.g. broker=eventbus.redis.RedisBroker(url, namespace=...)"
                )
            if transport is not None:
                raise TypeError(
                    "give broker= or transport=, not both: a broker is the bus's transport"
                )
            transport = broker
            if dead_letters is None:
                dead_letters = broker.dead_letters
            if inbox is None:
                inbox = getattr(broker, "inbox", None)
        if inbox is not None and not isinstance(inbox, Inbox):
            raise TypeError(
                f"inbox must be an Inbox (seen, record), got {inbox!r}; e.g. "
                "inbox=eventbus.inbox.SQLiteInbox('app.db')"
            )
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy, got {retry!r}")
        if isinstance(max_cascade_depth, bool) or not isinstance(max_cascade_depth, int):
            raise TypeError(f"max_cascade_depth must be an int, got {max_cascade_depth!r}")
        if max_cascade_depth < 1:
            raise ValueError(f"max_cascade_depth must be >= 1, got {max_cascade_depth}")
        if dead_letters is not None and not isinstance(dead_letters, DeadLetterStore):
            raise TypeError(
                "dead_letters must be a DeadLetterStore (add, remove, get, len, iter), "
                f"got {dead_letters!r}"
            )
        if transport is not None and not isinstance(transport, Transport):
            raise TypeError(
                f"transport must be a Transport (with a bind method), got {transport!r}"
            )
        self._dead_letters = dead_letters if dead_letters is not None else InMemoryDeadLetterStore()
        self._default_retry = retry
        self.max_cascade_depth = max_cascade_depth
        self._concurrent = bool(concurrent)
        self.report_unhandled = report_unhandled
        self._clock: Clock = _checked_clock(clock) if clock is not None else SystemClock()
        self._middleware: tuple[Middleware, ...] = ()
        self._transport: Transport = transport if transport is not None else LocalTransport()
        self._broker = broker
        self._inbox: Inbox = inbox if inbox is not None else InMemoryInbox()
        self._idempotent = Idempotent(self._inbox)
        # The compiled plan of each event class published so far (see plans.py).
        self._compiled: dict[type, Plan] = {}
        for layer in middleware:
            self.add_middleware(layer)
        signals.watch(self)

    # -- publishing ----------------------------------------------------------------

    def publish(self, event: Event, /) -> PublishResult:
        """Deliver ``event`` to its handlers, in plan order, and return the result.

        Sync handlers are called in this thread. Async handlers are run to
        completion on an event loop private to this call; if an event loop is
        already running in this thread, that is impossible without blocking
        it, and ``publish`` raises :class:`SyncPublishError` before any
        handler runs: use ``await bus.publish_async(event)`` there.

        Called from inside a handler, it queues the event to run after the
        current event's handlers, and returns at once.

        All of this is the default transport's way; a bus whose transport
        took the event's class (``EventBus(transport=...)``) hands the event
        to the transport instead and returns its result.
        """
        plan = self._compiled.get(type(event)) or self._compile(type(event))
        if plan.publish is not None:  # the transport takes the events of this class
            return plan.publish(event)
        node = _get_current()
        if node is not None and node._bus is self:  # from a handler: join its cascade
            child = enqueue(node, event, plan)
            if child is not None:
                return child
        if plan.has_async and loop_is_running():
            raise no_loop_here(plan, event)
        if plan.announce:
            signals.send(signals.event_published, self, event=event, publisher=None)
        root = _new(PublishResult)  # open a cascade (cascade.open_root, spelled out)
        root.event = event
        root.dead_letters = []
        root._bus = self
        root._parent = None
        root._cascade = None
        root._closed = False
        token = _set_current(root)
        try:
            for handler, sub, run in plan.steps:  # plan.deliver(root), spelled out
                if run is not None:
                    run(root)
                    continue
                try:
                    returned = handler(event)
                    if returned is not None:
                        refuse_awaitable(sub, returned)
                except Exception as error:
                    gave_up(self, root, sub, 1, error)
            root._closed = True
            if root._cascade is not None:  # handlers published events: drain them
                root._cascade.drain()
        finally:
            _reset_current(token)
            if not root._closed or root._cascade is not None:
                end(root)
        return root

    async def publish_async(self, event: Event, /) -> PublishResult:
        """Deliver ``event`` to its handlers from asyncio and return the result.

        Async handlers are awaited; sync handlers are called in the loop's
        thread, or in a worker thread if subscribed with
        ``run_in_thread=True``. Handlers run one after another in plan order
        unless the bus was made with ``concurrent=True``.

        Called from inside a handler, it queues the event to run after the
        current event's handlers, and returns at once.
        """
        plan = self._compiled.get(type(event)) or self._compile(type(event))
        if plan.publish_async is not None:
            return await plan.publish_async(event)
        node = _get_current()
        if node is not None and node._bus is self:
            child = enqueue(node, event, plan)
            if child is not None:
                return child
        if plan.announce:
            signals.send(signals.event_published, self, event=event, publisher=None)
        return await run_async(open_root(self, event), plan)

    # -- redriving dead letters -----------------------------------------------------

    def redrive(
        self,
        letter: DeadLetter,
        /,
        *,
        store: DeadLetterStore | None = None,
        to_handler: str | None = None,
    ) -> PublishResult:
        """Run the handler of ``letter`` on its event again, under the handler's retry policy.

        On success the letter is removed from ``store`` (the bus's own by
        default); if the handler fails again, the letter stays, with its
        ``attempts`` and last failure updated. Events the handler publishes
        cascade as in ``publish``. The letter of an event that had no handler
        is redriven by publishing the event to the handlers it has now. Every
        letter the redrive makes goes to ``store``. ``to_handler`` runs the
        handler subscribed under that name instead of the one the letter
        names (if it fails again, the letter names it from then on).

        Raises :class:`RedriveError` (the letter stays, nothing runs) when
        the letter cannot be redriven here; its message says why in full.
        """
        return _redrive.redrive(
            self,
            letter,
            store if store is not None else self._dead_letters,
            to_handler=to_handler,
        )

    async def redrive_async(
        self,
        letter: DeadLetter,
        /,
        *,
        store: DeadLetterStore | None = None,
        to_handler: str | None = None,
    ) -> PublishResult:
        """``redrive`` from asyncio: the handler runs as ``publish_async`` would run it."""
        return await _redrive.redrive_async(
            self,
            letter,
            store if store is not None else self._dead_letters,
            to_handler=to_handler,
        )

    def redrive_all(
        self,
        *,
        event_type: str | None = None,
        handler: str | None = None,
        older_than: timedelta | None = None,
        ids: c.Collection[uuid.UUID] | None = None,
        store: DeadLetterStore | None = None,
        to_handler: str | None = None,
    ) -> list[RedriveOutcome]:
        """Redrive every letter that matches all the filters given, oldest first.

        ``older_than`` keeps letters whose last failure is at least that old
        (by the bus's clock); ``ids`` keeps the letters with those ids. A
        letter that cannot be redriven (see :meth:`redrive`) is reported in
        its outcome, not raised, and the others go on. Inside a running event
        loop, an async handler raises :class:`SyncPublishError`, as in
        ``redrive``: use ``redrive_all_async`` there.
        """
        store = store if store is not None else self._dead_letters
        letters = _redrive.select(
            self, store, event_type=event_type, handler=handler, older_than=older_than, ids=ids
        )
        return _redrive.redrive_all(self, store, letters, to_handler=to_handler)

    async def redrive_all_async(
        self,
        *,
        event_type: str | None = None,
        handler: str | None = None,
        older_than: timedelta | None = None,
        ids: c.Collection[uuid.UUID] | None = None,
        store: DeadLetterStore | None = None,
        to_handler: str | None = None,
    ) -> list[RedriveOutcome]:
        """``redrive_all`` from asyncio."""
        store = store if store is not None else self._dead_letters
        letters = _redrive.select(
            self, store, event_type=event_type, handler=handler, older_than=older_than, ids=ids
        )
        return await _redrive.redrive_all_async(self, store, letters, to_handler=to_handler)

    # -- configuration ----------------------------------------------------------------

    @property
    def dead_letters(self) -> DeadLetterStore:
        """The store of this bus's dead letters (``len()``, iteration)."""
        return self._dead_letters

    @property
    def inbox(self) -> Inbox:
        """Where this bus's idempotent handlers record the events they handled."""
        return self._inbox

    @property
    def default_retry(self) -> RetryPolicy | None:
        """The retry policy of handlers subscribed without one (None: one attempt)."""
        return self._default_retry

    @property
    def clock(self) -> Clock:
        """The bus's :class:`Clock`; assign another to change how it tells time and waits."""
        return self._clock

    @clock.setter
    def clock(self, clock: Clock) -> None:
        self._clock = _checked_clock(clock)

    @property
    def concurrent(self) -> bool:
        """Whether ``publish_async`` runs handlers of equal priority concurrently."""
        return self._concurrent

    @concurrent.setter
    def concurrent(self, value: bool) -> None:
        with self._lock:
            self._concurrent = bool(value)
            self._invalidate()

    @property
    def middleware(self) -> tuple[Middleware, ...]:
        """The middleware of this bus, the outermost first."""
        return self._middleware

    def add_middleware(self, middleware: Middleware, /) -> None:
        """Wrap every handler call it applies to with ``middleware``, inside those added before."""
        if not all(
            callable(getattr(middleware, name, None))
            for name in ("applies_to", "handle", "handle_async")
        ):
            raise TypeError(
                f"{middleware!r} is not a Middleware (applies_to, handle, handle_async); "
                "subclass eventbus.Middleware and override what you need"
            )
        with self._lock:
            if any(layer is middleware for layer in self._middleware):
                raise ValueError(f"{middleware!r} is already a middleware of this bus")
            self._middleware = (*self._middleware, middleware)
            self._invalidate()

    def remove_middleware(self, middleware: Middleware, /) -> None:
        """Stop wrapping handler calls with ``middleware``; ``ValueError`` if it is not there."""
        with self._lock:
            kept = tuple(layer for layer in self._middleware if layer is not middleware)
            if len(kept) == len(self._middleware):
                raise ValueError(f"{middleware!r} is not a middleware of this bus")
            self._middleware = kept
            self._invalidate()

    @property
    def broker(self) -> Broker | None:
        """The broker this bus publishes to, or None for a bus that delivers in process."""
        return self._broker

    @property
    def transport(self) -> Transport:
        """What ``publish`` does with an event (see :class:`Transport`)."""
        return self._transport

    # -- plans ------------------------------------------------------------------------

    def _compile(self, event_class: type) -> Plan:
        """The compiled plan of ``event_class``: compiled now, then cached until a change."""
        self._plan(event_class)  # raises TypeError for a non-Event, before taking the lock
        with self._lock:
            compiled = self._compiled  # a change meanwhile replaces it: this plan is dropped
            plan = compiled.get(event_class)
            if plan is None:
                plan = compile_plan(
                    self, self._plan(event_class), self._middleware, self._default_retry
                )
                bound = self._transport.bind(self, plan)
                if bound is not None:
                    plan.publish, plan.publish_async = (
                        announcing(self, *bound) if plan.announce else bound
                    )
                compiled[event_class] = plan
            return plan

    def _invalidate(self) -> None:
        super()._invalidate()
        self._compiled = {}

    def _hooks_changed(self) -> None:
        """A receiver for this bus was connected or disconnected: recompile on next use."""
        self._compiled = {}

    def __repr__(self) -> str:
        try:
            letters: object = len(self._dead_letters)
        except Exception:  # a closed or unreachable store must not break a repr
            letters = "?"
        return f"<EventBus subscriptions={len(self._subscriptions)} dead_letters={letters}>"


def _checked_clock(clock: object) -> Clock:
    if not isinstance(clock, Clock):
        raise TypeError(
            f"clock must be a Clock (now, sleep, sleep_async, random), got {clock!r}; "
            "subclass eventbus.SystemClock and override what you need"
        )
    return clock
