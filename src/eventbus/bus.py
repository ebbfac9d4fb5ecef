"""EventBus: publish events to their handlers, synchronously or with asyncio.

The story of one top-level publish: look up the event class's cached plan,
open a cascade (a FIFO queue of the events handlers publish), run the
handlers in plan order, then drain the queue the same way. A handler's
failure, after the retries its policy allows, becomes a dead letter and never
stops the other handlers.
"""

from __future__ import annotations

import asyncio
import collections
import collections.abc as c
import contextvars
import inspect
import logging
import threading
import time
import typing as t

from .dead_letters import DeadLetter, DeadLetterStore, InMemoryDeadLetterStore
from .errors import CascadeDepthError, SyncPublishError
from .events import Event
from .handlers.registry import HandlerRegistry, Plan
from .handlers.subscription import Subscription
from .results import PublishResult
from .retry import RetryPolicy

__all__ = ["EventBus"]

logger = logging.getLogger("eventbus")


class EventBus(HandlerRegistry):
    """An in-process event bus: subscribe handlers, publish events.

    Options:

    - ``dead_letters``: where failed (event, handler) pairs are kept; an
      :class:`InMemoryDeadLetterStore` by default.
    - ``retry``: the :class:`RetryPolicy` of handlers subscribed without one;
      by default one attempt.
    - ``max_cascade_depth``: how many generations of events published from
      handlers one publish may run before :class:`CascadeDepthError` stops it.
    - ``concurrent``: when True, ``publish_async`` runs the handlers of equal
      priority concurrently; by default it runs them one after another.
    - ``sleep`` / ``async_sleep``: how retries wait (injectable for tests).
    """

    def __init__(
        self,
        *,
        dead_letters: DeadLetterStore | None = None,
        retry: RetryPolicy | None = None,
        max_cascade_depth: int = 32,
        concurrent: bool = False,
        sleep: c.Callable[[float], object] = time.sleep,
        async_sleep: c.Callable[[float], c.Awaitable[object]] = asyncio.sleep,
    ) -> None:
        super().__init__()
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy, got {retry!r}")
        if isinstance(max_cascade_depth, bool) or not isinstance(max_cascade_depth, int):
            raise TypeError(f"max_cascade_depth must be an int, got {max_cascade_depth!r}")
        if max_cascade_depth < 1:
            raise ValueError(f"max_cascade_depth must be >= 1, got {max_cascade_depth}")
        if dead_letters is not None and not isinstance(dead_letters, DeadLetterStore):
            raise TypeError(
                f"dead_letters must be a DeadLetterStore (add, remove, len, iter), "
                f"got {dead_letters!r}"
            )
        self._dead_letters = dead_letters if dead_letters is not None else InMemoryDeadLetterStore()
        self._default_retry = retry
        self.max_cascade_depth = max_cascade_depth
        self.concurrent = concurrent
        self._sleep = sleep
        self._async_sleep = async_sleep
        self._cascade_lock = threading.Lock()

    @property
    def dead_letters(self) -> DeadLetterStore:
        """The store of this bus's dead letters (``len()``, iteration)."""
        return self._dead_letters

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
        """
        plan = self._plans.get(type(event)) or self._plan(type(event))
        current = _current_cascade.get()
        if current is not None and current.bus is self:
            queued = current.enqueue(event)
            if queued is not None:
                return queued
        if plan.has_async and _loop_is_running():
            names = ", ".join(s.name for s in plan.subscriptions if s.is_async)
            raise SyncPublishError(
                f"publish() cannot run the async handler(s) {names} of "
                f"{type(event).__qualname__} from inside a running event loop without blocking "
                f"it; use `await bus.publish_async(event)` instead"
            )
        cascade = _Cascade(self, event)
        token = _current_cascade.set(cascade)
        try:
            item: _Item | None = cascade.current
            while item is not None:
                self._deliver(item, plan, cascade)
                item = cascade.next()
                if item is not None:
                    plan = self._plan(type(item.event))
        finally:
            _current_cascade.reset(token)
            cascade.close()
        return cascade.root.result

    async def publish_async(self, event: Event, /) -> PublishResult:
        """Deliver ``event`` to its handlers from asyncio and return the result.

        Async handlers are awaited; sync handlers are called in the loop's
        thread, or in a worker thread if subscribed with
        ``run_in_thread=True``. Handlers run one after another in plan order
        unless the bus was made with ``concurrent=True``.

        Called from inside a handler, it queues the event to run after the
        current event's handlers, and returns at once.
        """
        plan = self._plans.get(type(event)) or self._plan(type(event))
        current = _current_cascade.get()
        if current is not None and current.bus is self:
            queued = current.enqueue(event)
            if queued is not None:
                return queued
        cascade = _Cascade(self, event)
        token = _current_cascade.set(cascade)
        try:
            item: _Item | None = cascade.current
            while item is not None:
                await self._deliver_async(item, plan)
                item = cascade.next()
                if item is not None:
                    plan = self._plan(type(item.event))
        finally:
            _current_cascade.reset(token)
            cascade.close()
        return cascade.root.result

    # -- the sync path -------------------------------------------------------------

    def _deliver(self, item: _Item, plan: Plan, cascade: _Cascade) -> None:
        event = item.event
        for sub, policy in plan.entries:
            if policy is None and not sub.is_async:
                try:
                    returned = sub.handler(event)
                    if returned is not None:
                        _refuse_awaitable(sub, returned)
                except Exception as error:
                    self._dead_letter(item, sub, 1, error)
            else:
                self._attempt(item, sub, policy, cascade)

    def _attempt(
        self, item: _Item, sub: Subscription, policy: RetryPolicy | None, cascade: _Cascade
    ) -> None:
        """Run one handler with its retries, on the sync path."""
        event = item.event
        if sub.is_async and _loop_is_running():
            self._dead_letter(
                item,
                sub,
                0,
                SyncPublishError(
                    f"{sub.name} is async and the event was published with publish() inside a "
                    "running event loop; publish with `await bus.publish_async(...)`"
                ),
            )
            return
        delays = policy.delays() if policy is not None else iter(())
        attempt = 0
        while True:
            attempt += 1
            try:
                if sub.is_async:
                    cascade.run_coroutine(sub.handler(event))  # type: ignore[arg-type]
                else:
                    returned = sub.handler(event)
                    if returned is not None:
                        _refuse_awaitable(sub, returned)
                return
            except Exception as error:
                delay = next(delays, None)
                if delay is None:
                    self._dead_letter(item, sub, attempt, error)
                    return
                _log_retry(sub, event, attempt, delay, error)
                self._sleep(delay)

    # -- the async path ------------------------------------------------------------

    async def _deliver_async(self, item: _Item, plan: Plan) -> None:
        if self.concurrent and len(plan.priority_groups) < len(plan.entries):
            for group in plan.priority_groups:
                await asyncio.gather(*(self._attempt_async(item, s, p) for s, p in group))
            return
        event = item.event
        for sub, policy in plan.entries:
            if policy is None and sub.is_async:
                try:
                    await sub.handler(event)  # type: ignore[misc]
                except Exception as error:
                    self._dead_letter(item, sub, 1, error)
            elif policy is None and not sub.run_in_thread:
                try:
                    returned = sub.handler(event)
                    if returned is not None:
                        _refuse_awaitable(sub, returned)
                except Exception as error:
                    self._dead_letter(item, sub, 1, error)
            else:
                await self._attempt_async(item, sub, policy)

    async def _attempt_async(
        self, item: _Item, sub: Subscription, policy: RetryPolicy | None
    ) -> None:
        """Run one handler with its retries, on the async path."""
        event = item.event
        delays = policy.delays() if policy is not None else iter(())
        attempt = 0
        while True:
            attempt += 1
            try:
                if sub.is_async:
                    await sub.handler(event)  # type: ignore[misc]
                else:
                    if sub.run_in_thread:
                        returned = await asyncio.to_thread(sub.handler, event)
                    else:
                        returned = sub.handler(event)
                    if returned is not None:
                        _refuse_awaitable(sub, returned)
                return
            except Exception as error:
                delay = next(delays, None)
                if delay is None:
                    self._dead_letter(item, sub, attempt, error)
                    return
                _log_retry(sub, event, attempt, delay, error)
                await self._async_sleep(delay)

    # -- failures ------------------------------------------------------------------

    def _dead_letter(self, item: _Item, sub: Subscription, attempts: int, error: Exception) -> None:
        letter = DeadLetter.from_exception(item.event, sub.name, attempts, error)
        node: _Item | None = item
        while node is not None:  # each result covers its event and all it caused
            node.result.dead_letters.append(letter)
            node = node.parent
        logger.error(
            "%s failed on %s (event_id=%s) after %d attempt(s); dead-lettered",
            sub.name,
            item.event.event_type,
            item.event.event_id,
            attempts,
            exc_info=error,
        )
        try:
            self._dead_letters.add(letter)
        except Exception:
            logger.critical(
                "could not store the dead letter of %s on %s (event_id=%s); it is only in "
                "this publish's result and this log: %r",
                sub.name,
                item.event.event_type,
                item.event.event_id,
                letter,
                exc_info=True,
            )

    def __repr__(self) -> str:
        return (
            f"<EventBus subscriptions={len(self._subscriptions)} "
            f"dead_letters={len(self._dead_letters)}>"
        )


# -- cascades ---------------------------------------------------------------------


class _Item:
    """One event of a cascade, with its result and the event that caused it."""

    __slots__ = ("depth", "event", "parent", "result")

    def __init__(self, event: Event, depth: int, parent: _Item | None) -> None:
        self.event = event
        self.result = PublishResult(event)
        self.depth = depth
        self.parent = parent


class _Cascade:
    """The events published while one top-level publish runs, dispatched in FIFO order."""

    __slots__ = ("bus", "closed", "current", "queue", "root", "runner")

    def __init__(self, bus: EventBus, event: Event) -> None:
        self.bus = bus
        self.root = self.current = _Item(event, 0, None)
        self.queue: collections.deque[_Item] = collections.deque()
        self.closed = False
        self.runner: asyncio.Runner | None = None

    def enqueue(self, event: Event) -> PublishResult | None:
        """Queue ``event`` as a child of the current event; None if the cascade has ended."""
        parent = self.current
        depth = parent.depth + 1
        if depth > self.bus.max_cascade_depth:
            raise CascadeDepthError(
                f"{event.event_type} would be generation {depth} of one cascade, past "
                f"max_cascade_depth={self.bus.max_cascade_depth}; chain: {_chain(parent)}. "
                "A handler cycle? If the depth is intended, raise EventBus(max_cascade_depth=...)"
            )
        if event.causation_id is None:
            cause = parent.event
            event = event.model_copy(
                update={
                    "causation_id": cause.event_id,
                    "correlation_id": event.correlation_id
                    or cause.correlation_id
                    or cause.event_id,
                }
            )
        item = _Item(event, depth, parent)
        with self.bus._cascade_lock:
            if self.closed:  # e.g. a task an async handler left running
                return None
            self.queue.append(item)
        return item.result

    def next(self) -> _Item | None:
        """Make the oldest queued event current; None (and close) when none is left."""
        with self.bus._cascade_lock:
            if not self.queue:
                self.closed = True
                return None
            self.current = self.queue.popleft()
            return self.current

    def run_coroutine(self, coroutine: c.Coroutine[t.Any, t.Any, object]) -> None:
        """Run an async handler from the sync path, on this publish's private loop."""
        if self.runner is None:
            self.runner = asyncio.Runner()
        self.runner.run(coroutine)

    def close(self) -> None:
        with self.bus._cascade_lock:
            self.closed = True
            dropped = list(self.queue)
            self.queue.clear()
        if self.runner is not None:
            self.runner.close()
        if dropped:  # only when a BaseException (cancellation, Ctrl-C) ended the publish
            logger.error(
                "publish of %s (event_id=%s) was interrupted; %d queued event(s) were not "
                "dispatched: %s",
                self.root.event.event_type,
                self.root.event.event_id,
                len(dropped),
                ", ".join(f"{i.event.event_type} (event_id={i.event.event_id})" for i in dropped),
            )


_current_cascade: contextvars.ContextVar[_Cascade | None] = contextvars.ContextVar(
    "eventbus_cascade", default=None
)


def _chain(item: _Item) -> str:
    names: list[str] = []
    node: _Item | None = item
    while node is not None:
        names.append(node.event.event_type)
        node = node.parent
    names.reverse()
    if len(names) > 8:
        names = [*names[:2], "...", *names[-5:]]
    return " -> ".join(names)


def _loop_is_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _refuse_awaitable(sub: Subscription, returned: object) -> None:
    """A sync handler that returns an awaitable would otherwise be silently skipped."""
    if inspect.isawaitable(returned):
        if inspect.iscoroutine(returned):
            returned.close()
        raise TypeError(
            f"{sub.name} returned an awaitable ({type(returned).__name__}) that nobody would "
            "await: the bus saw a sync function; declare the handler with `async def`"
        )


def _log_retry(
    sub: Subscription, event: Event, attempt: int, delay: float, error: Exception
) -> None:
    logger.warning(
        "%s failed on %s (event_id=%s), attempt %d: %s: %s; retrying in %.3gs",
        sub.name,
        event.event_type,
        event.event_id,
        attempt,
        type(error).__name__,
        error,
        delay,
    )
