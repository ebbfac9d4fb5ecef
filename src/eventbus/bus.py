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
        current = _current.get()
        if current is not None and current._cascade.bus is self:  # type: ignore[union-attr]
            queued = current._cascade.enqueue(event, current)  # type: ignore[union-attr]
            if queued is not None:
                return queued
        if plan.has_async and _loop_is_running():
            names = ", ".join(s.name for s in plan.subscriptions if s.is_async)
            raise SyncPublishError(
                f"publish() cannot run the async handler(s) {names} of "
                f"{type(event).__qualname__} from inside a running event loop without blocking "
                f"it; use `await bus.publish_async(event)` instead"
            )
        cascade = _Cascade(self)
        root = PublishResult(event)
        item: PublishResult | None = root
        root._cascade = cascade
        token = _current.set(root)
        try:
            while item is not None:
                self._deliver(item, plan)
                item = cascade.next()
                if item is not None:
                    _current.set(item)
                    plan = self._plans.get(type(item.event)) or self._plan(type(item.event))
        finally:
            _current.reset(token)
            if not cascade.closed or cascade.runner is not None:
                cascade.close()
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
        plan = self._plans.get(type(event)) or self._plan(type(event))
        current = _current.get()
        if current is not None and current._cascade.bus is self:  # type: ignore[union-attr]
            queued = current._cascade.enqueue(event, current)  # type: ignore[union-attr]
            if queued is not None:
                return queued
        cascade = _Cascade(self)
        root = PublishResult(event)
        item: PublishResult | None = root
        root._cascade = cascade
        token = _current.set(root)
        try:
            while item is not None:
                await self._deliver_async(item, plan)
                item = cascade.next()
                if item is not None:
                    _current.set(item)
                    plan = self._plans.get(type(item.event)) or self._plan(type(item.event))
        finally:
            _current.reset(token)
            if not cascade.closed:
                cascade.close()
        return root

    # -- the sync path -------------------------------------------------------------

    def _deliver(self, item: PublishResult, plan: Plan) -> None:
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
                self._attempt(item, sub, policy)

    def _attempt(self, item: PublishResult, sub: Subscription, policy: RetryPolicy | None) -> None:
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
                    item._cascade.run_coroutine(  # type: ignore[union-attr]
                        sub.handler(event))  # type: ignore[arg-type]
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

    async def _deliver_async(self, item: PublishResult, plan: Plan) -> None:
        if self.concurrent and len(plan.priority_groups) < len(plan.entries):
            for group in plan.priority_groups:
                await _gather_or_cancel([self._attempt_async(item, s, p) for s, p in group])
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
        self, item: PublishResult, sub: Subscription, policy: RetryPolicy | None
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

    def _dead_letter(
        self, item: PublishResult, sub: Subscription, attempts: int, error: Exception
    ) -> None:
        letter = DeadLetter.from_exception(item.event, sub.name, attempts, error)
        node: PublishResult | None = item
        while node is not None:  # each result covers its event and all it caused
            node.dead_letters.append(letter)
            node = node._parent
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


class _Cascade:
    """The events published while one top-level publish runs, dispatched in FIFO order.

    Handlers in other threads (``run_in_thread``, or a copied context) may
    enqueue while the publishing thread drains, so ``enqueue`` and ``next``
    use a double check instead of a lock: an enqueue appends, then looks at
    ``closed``; ``next`` sets ``closed``, then looks at the queue. Whichever
    comes second sees the other, and ``deque.remove``/``popleft`` settle who
    owns a raced event.
    """

    __slots__ = ("bus", "closed", "queue", "runner")

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self.queue: collections.deque[PublishResult] = collections.deque()
        self.closed = False
        self.runner: asyncio.Runner | None = None

    def enqueue(self, event: Event, parent: PublishResult) -> PublishResult | None:
        """Queue ``event`` as a child of ``parent``; None if the cascade has ended.

        An ended cascade is one whose top-level call has returned: a task that
        a handler left running publishes top-level events of its own.
        """
        if self.closed:
            return None
        depth = parent._depth + 1
        if depth > self.bus.max_cascade_depth:
            raise CascadeDepthError(
                f"{event.event_type} would be generation {depth} of one cascade, past "
                f"max_cascade_depth={self.bus.max_cascade_depth}; chain: {_chain(parent)}. "
                "A handler cycle? If the depth is intended, raise EventBus(max_cascade_depth=...)"
            )
        cause = parent.event
        update: dict[str, object] = {}
        if event.causation_id is None:
            update["causation_id"] = cause.event_id
        if event.correlation_id is None:
            update["correlation_id"] = cause.correlation_id or cause.event_id
        if update:
            event = event.model_copy(update=update)
        child = PublishResult(event)
        child._cascade = self
        child._depth = depth
        child._parent = parent
        self.queue.append(child)
        if self.closed:  # the top-level call finished meanwhile: take it back if still there
            try:
                self.queue.remove(child)
            except ValueError:
                return child  # the dispatcher got it first
            return None
        return child

    def next(self) -> PublishResult | None:
        """The oldest queued event; None, and the cascade closed, when none is left."""
        queue = self.queue
        while True:
            if queue:
                try:
                    return queue.popleft()
                except IndexError:  # an enqueue took its event back
                    pass
            self.closed = True
            if not queue:
                return None
            self.closed = False  # an enqueue raced the close: keep draining

    def run_coroutine(self, coroutine: c.Coroutine[t.Any, t.Any, object]) -> None:
        """Run an async handler from the sync path, on this publish's private loop."""
        if self.runner is None:
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


#: The event whose handlers are running in this context (None outside handlers).
_current: contextvars.ContextVar[PublishResult | None] = contextvars.ContextVar(
    "eventbus_current", default=None
)


async def _gather_or_cancel(coroutines: list[c.Coroutine[t.Any, t.Any, None]]) -> None:
    """Run concurrently; if one raises past its own error handling, cancel the rest."""
    tasks = [asyncio.ensure_future(coroutine) for coroutine in coroutines]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


def _chain(item: PublishResult) -> str:
    names: list[str] = []
    node: PublishResult | None = item
    while node is not None:
        names.append(node.event.event_type)
        node = node._parent
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
