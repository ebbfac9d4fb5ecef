"""EventBus: publish events to their handlers, synchronously or with asyncio.

The story of one top-level publish: look up the event class's cached plan,
open a cascade (a FIFO queue of the events handlers publish), run the
handlers in plan order, then drain the queue the same way. A handler's
failure, after the retries its policy allows, becomes a dead letter and never
stops the other handlers. ``redrive`` runs the handler of a dead letter again
through the same path.
"""

from __future__ import annotations

import asyncio
import collections
import collections.abc as c
import contextvars
import dataclasses
import inspect
import logging
import random
import threading
import time
import typing as t
from datetime import UTC, datetime, timedelta

from . import signals
from .dead_letters import (
    NO_HANDLER,
    DeadLetter,
    DeadLetterStore,
    InMemoryDeadLetterStore,
    UndefinedEvent,
)
from .dead_letters.letter import describe
from .errors import (
    CascadeDepthError,
    HandlerTimeoutError,
    RedriveError,
    SyncPublishError,
    UnhandledEventError,
)
from .events import Event
from .handlers.registry import HandlerRegistry, Plan
from .handlers.subscription import Subscription
from .results import PublishResult
from .retry import RetryPolicy

__all__ = ["EventBus", "RedriveOutcome"]

logger = logging.getLogger("eventbus")


def _utc_now() -> datetime:
    return datetime.now(UTC)


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
    - ``report_unhandled``: when True, an event that no handler is
      subscribed to becomes a dead letter (``handler == NO_HANDLER``);
      by default it is not a failure (the ``event_unhandled`` signal is
      sent either way).
    - ``sleep`` / ``async_sleep`` / ``clock`` / ``random``: how retries wait,
      what time it is, and where jitter comes from (injectable for tests).
    """

    def __init__(
        self,
        *,
        dead_letters: DeadLetterStore | None = None,
        retry: RetryPolicy | None = None,
        max_cascade_depth: int = 32,
        concurrent: bool = False,
        report_unhandled: bool = False,
        sleep: c.Callable[[float], object] = time.sleep,
        async_sleep: c.Callable[[float], c.Awaitable[object]] = asyncio.sleep,
        clock: c.Callable[[], datetime] = _utc_now,
        random: random.Random | None = None,
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
                "dead_letters must be a DeadLetterStore (add, remove, get, len, iter), "
                f"got {dead_letters!r}"
            )
        self._dead_letters = dead_letters if dead_letters is not None else InMemoryDeadLetterStore()
        self._default_retry = retry
        self.max_cascade_depth = max_cascade_depth
        self.concurrent = concurrent
        self.report_unhandled = report_unhandled
        self._sleep = sleep
        self._async_sleep = async_sleep
        self._clock = clock
        self._random = random if random is not None else _random_module.Random()

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
        inline = plan.inline
        if (
            inline is not None
            and not plan.has_async
            and not signals.event_published.receivers
            and not signals.handler_succeeded.receivers
        ):
            # The common case, spelled out: sync handlers, one attempt each, nobody listening.
            root = _Root(self, event)
            token = _current.set(root)
            try:
                for handler, sub, _ in inline:
                    try:
                        returned = handler(event)
                        if returned is not None:
                            _refuse_awaitable(sub, returned)
                    except Exception as error:
                        self._failed(root, sub, 1, error, None, None)
                root.closed = True
                if root.queue is not None:  # handlers published events: run the cascade
                    self._drain(root)
            finally:
                _current.reset(token)
                if not root.closed or root.runner is not None:
                    root.close()
            return root
        if plan.has_async and _loop_is_running():
            names = ", ".join(s.name for s in plan.subscriptions if s.is_async)
            raise SyncPublishError(
                f"publish() cannot run the async handler(s) {names} of "
                f"{type(event).__qualname__} from inside a running event loop without blocking "
                f"it; use `await bus.publish_async(event)` instead"
            )
        if signals.event_published.receivers:
            signals.send(signals.event_published, self, event=event, publisher=None)
        return self._run(_Root(self, event), plan)

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
        inline = plan.inline
        if (
            inline is not None
            and (not self.concurrent or len(inline) == 1)
            and not signals.event_published.receivers
            and not signals.handler_succeeded.receivers
        ):
            # The common case, spelled out: one attempt each, in order, nobody listening.
            root = _Root(self, event)
            token = _current.set(root)
            try:
                for handler, sub, is_async in inline:
                    try:
                        if is_async:
                            await handler(event)
                        else:
                            returned = handler(event)
                            if returned is not None:
                                _refuse_awaitable(sub, returned)
                    except Exception as error:
                        self._failed(root, sub, 1, error, None, None)
                root.closed = True
                if root.queue is not None:  # handlers published events: run the cascade
                    await self._drain_async(root)
            finally:
                _current.reset(token)
                if not root.closed:
                    root.close()
            return root
        if signals.event_published.receivers:
            signals.send(signals.event_published, self, event=event, publisher=None)
        return await self._run_async(_Root(self, event), plan)

    # -- redriving dead letters -----------------------------------------------------

    def redrive(
        self, letter: DeadLetter, /, *, store: DeadLetterStore | None = None
    ) -> PublishResult:
        """Run the handler of ``letter`` on its event again, under the handler's retry policy.

        On success the letter is removed from ``store`` (the bus's own by
        default); if the handler fails again, the letter stays, with its
        ``attempts`` and last failure updated. Events the handler publishes
        cascade as in ``publish``. The letter of an event that had no handler
        is redriven by publishing the event to the handlers it has now.

        Raises :class:`RedriveError` (the letter stays) when no handler by
        that name is subscribed for the event's class, when several are, or
        when the event's class is not defined in this process.
        """
        store = store if store is not None else self._dead_letters
        plan = self._redrive_plan(letter)
        if plan.has_async and _loop_is_running():
            raise SyncPublishError(
                f"redrive() cannot run the async handler {letter.handler} inside a running "
                "event loop; use `await bus.redrive_async(letter)` instead"
            )
        result = self._run(_RedriveResult(self, letter, store), plan)
        self._settle(letter, store, result)
        return result

    async def redrive_async(
        self, letter: DeadLetter, /, *, store: DeadLetterStore | None = None
    ) -> PublishResult:
        """``redrive`` from asyncio: the handler runs as ``publish_async`` would run it."""
        store = store if store is not None else self._dead_letters
        plan = self._redrive_plan(letter)
        result = await self._run_async(_RedriveResult(self, letter, store), plan)
        self._settle(letter, store, result)
        return result

    def redrive_all(
        self,
        *,
        event_type: str | None = None,
        handler: str | None = None,
        older_than: timedelta | None = None,
        store: DeadLetterStore | None = None,
    ) -> list[RedriveOutcome]:
        """Redrive every letter that matches all the filters given, oldest first.

        ``older_than`` keeps letters whose last failure is at least that old.
        A letter that cannot be redriven (see :meth:`redrive`) is reported in
        its outcome, not raised, and the others go on. Inside a running event
        loop, an async handler raises :class:`SyncPublishError`, as in
        ``redrive``: use ``redrive_all_async`` there.
        """
        outcomes: list[RedriveOutcome] = []
        for letter in self._select(store, event_type, handler, older_than):
            try:
                outcomes.append(RedriveOutcome(letter, self.redrive(letter, store=store), None))
            except RedriveError as error:
                outcomes.append(RedriveOutcome(letter, None, error))
        return outcomes

    async def redrive_all_async(
        self,
        *,
        event_type: str | None = None,
        handler: str | None = None,
        older_than: timedelta | None = None,
        store: DeadLetterStore | None = None,
    ) -> list[RedriveOutcome]:
        """``redrive_all`` from asyncio."""
        outcomes: list[RedriveOutcome] = []
        for letter in self._select(store, event_type, handler, older_than):
            try:
                result = await self.redrive_async(letter, store=store)
                outcomes.append(RedriveOutcome(letter, result, None))
            except RedriveError as error:
                outcomes.append(RedriveOutcome(letter, None, error))
        return outcomes

    def _select(
        self,
        store: DeadLetterStore | None,
        event_type: str | None,
        handler: str | None,
        older_than: timedelta | None,
    ) -> list[DeadLetter]:
        cutoff = self._clock() - older_than if older_than is not None else None
        return [
            letter
            for letter in (store if store is not None else self._dead_letters)
            if (event_type is None or letter.event_type == event_type)
            and (handler is None or letter.handler == handler)
            and (cutoff is None or letter.failed_at <= cutoff)
        ]

    def _redrive_plan(self, letter: DeadLetter) -> Plan:
        if isinstance(letter.event, UndefinedEvent):
            raise RedriveError(
                f"dead letter {letter.id}: its event type {letter.event_type!r} is not defined "
                "in this process; import the module that defines it, then redrive"
            )
        event_class = type(letter.event)
        if letter.unhandled:
            return self._plan(event_class)
        matches = [
            s for s in self.subscriptions if s.name == letter.handler and s.receives(event_class)
        ]
        if not matches:
            raise RedriveError(
                f"dead letter {letter.id}: no handler named {letter.handler!r} is subscribed to "
                f"{letter.event_type} on this bus (renamed, moved, or not imported?); "
                "subscribe it, then redrive"
            )
        if len(matches) > 1:
            raise RedriveError(
                f"dead letter {letter.id}: {len(matches)} subscriptions are named "
                f"{letter.handler!r} (methods of several instances?), so the one that failed "
                "cannot be told apart; give them distinct names, e.g. distinct functions"
            )
        return self._plan_of(matches)

    def _settle(self, letter: DeadLetter, store: DeadLetterStore, result: PublishResult) -> None:
        """Remove a redriven letter that succeeded; the failed-again one was stored already."""
        ok = all(other.id != letter.id for other in result.dead_letters)
        if ok:
            try:
                store.remove(letter)
            except KeyError:
                logger.warning(
                    "dead letter %s was redriven but was no longer in its store "
                    "(redriven or purged elsewhere meanwhile?)",
                    letter.id,
                )
        if signals.dead_letter_redriven.receivers:
            signals.send(signals.dead_letter_redriven, self, dead_letter=letter, ok=ok)

    # -- the cascade loop -------------------------------------------------------------

    def _run(self, root: _Root, plan: Plan) -> PublishResult:
        """Dispatch ``root`` and every event its handlers publish, on the sync path."""
        token = _current.set(root)
        try:
            self._deliver(root, plan)
            root.closed = True
            if root.queue is not None:
                self._drain(root)
        finally:
            _current.reset(token)
            if not root.closed or root.runner is not None:
                root.close()
        return root

    def _drain(self, root: _Root) -> None:
        """Dispatch the events queued by ``root``'s handlers, and theirs, in FIFO order."""
        root.closed = False
        item = root.next()
        while item is not None:
            _current.set(item)
            self._deliver(item, self._plans.get(type(item.event)) or self._plan(type(item.event)))
            item = root.next()

    async def _run_async(self, root: _Root, plan: Plan) -> PublishResult:
        """Dispatch ``root`` and every event its handlers publish, on the async path."""
        token = _current.set(root)
        try:
            await self._deliver_async(root, plan)
            root.closed = True
            if root.queue is not None:
                await self._drain_async(root)
        finally:
            _current.reset(token)
            if not root.closed:
                root.close()
        return root

    async def _drain_async(self, root: _Root) -> None:
        """``_drain`` on the async path."""
        root.closed = False
        item = root.next()
        while item is not None:
            _current.set(item)
            await self._deliver_async(
                item, self._plans.get(type(item.event)) or self._plan(type(item.event))
            )
            item = root.next()

    # -- the sync path -------------------------------------------------------------

    def _deliver(self, item: PublishResult, plan: Plan) -> None:
        inline = plan.inline
        if (
            inline is not None
            and not plan.has_async
            and not signals.event_published.receivers
            and not signals.handler_succeeded.receivers
        ):
            event = item.event
            for handler, sub, _ in inline:
                try:
                    returned = handler(event)
                    if returned is not None:
                        _refuse_awaitable(sub, returned)
                except Exception as error:
                    self._failed(item, sub, 1, error, None, None)
            return
        if not plan.entries:
            self._unhandled(item)
            return
        if signals.event_published.receivers:  # someone records who publishes what
            for sub, policy, _ in plan.entries:
                self._attempt(item, sub, policy)
            return
        event = item.event
        notify = bool(signals.handler_succeeded.receivers)
        for sub, policy, fast in plan.entries:
            if fast and not sub.is_async:
                try:
                    returned = sub.handler(event)
                    if returned is not None:
                        _refuse_awaitable(sub, returned)
                except Exception as error:
                    self._failed(item, sub, 1, error, None, None)
                    continue
                if notify:
                    self._succeeded(event, sub, 1)
            else:
                self._attempt(item, sub, policy)

    def _attempt(self, item: PublishResult, sub: Subscription, policy: RetryPolicy | None) -> None:
        """Run one handler with its retries, on the sync path."""
        if signals.event_published.receivers:
            token = _publisher.set(sub.name)
            try:
                self._attempts(item, sub, policy)
            finally:
                _publisher.reset(token)
        else:
            self._attempts(item, sub, policy)

    def _attempts(self, item: PublishResult, sub: Subscription, policy: RetryPolicy | None) -> None:
        event = item.event
        if sub.is_async and _loop_is_running():
            error = SyncPublishError(
                f"{sub.name} is async and the event was published with publish() inside a "
                "running event loop; publish with `await bus.publish_async(...)`"
            )
            self._failed(item, sub, 0, error, None, None)
            return
        delays: c.Iterator[float] | None = None  # made on the first failure only
        first_failure: datetime | None = None
        attempt = 0
        while True:
            attempt += 1
            try:
                if sub.is_async:
                    item._cascade.run_coroutine(_call_async(sub, event))  # type: ignore[union-attr]
                else:
                    returned = sub.handler(event)
                    if returned is not None:
                        _refuse_awaitable(sub, returned)
            except Exception as error:
                first_failure = first_failure or self._clock()
                if delays is None and policy is not None:
                    delays = policy.delays(self._random)
                delay = self._next_delay(policy, delays, error)
                if delay is None:
                    self._failed(item, sub, attempt, error, first_failure, policy)
                    return
                self._retrying(sub, event, attempt, error, delay)
                self._sleep(delay)
            else:
                if signals.handler_succeeded.receivers:
                    self._succeeded(event, sub, attempt)
                return

    # -- the async path ------------------------------------------------------------

    async def _deliver_async(self, item: PublishResult, plan: Plan) -> None:
        if not plan.entries:
            self._unhandled(item)
            return
        if self.concurrent and len(plan.priority_groups) < len(plan.entries):
            for group in plan.priority_groups:
                await _gather_or_cancel([self._attempt_async(item, s, p) for s, p, _ in group])
            return
        if signals.event_published.receivers:  # someone records who publishes what
            for sub, policy, _ in plan.entries:
                await self._attempt_async(item, sub, policy)
            return
        event = item.event
        notify = bool(signals.handler_succeeded.receivers)
        for sub, policy, fast in plan.entries:
            if fast:
                try:
                    if sub.is_async:
                        await sub.handler(event)  # type: ignore[misc]
                    else:
                        returned = sub.handler(event)
                        if returned is not None:
                            _refuse_awaitable(sub, returned)
                except Exception as error:
                    self._failed(item, sub, 1, error, None, None)
                    continue
                if notify:
                    self._succeeded(event, sub, 1)
            else:
                await self._attempt_async(item, sub, policy)

    async def _attempt_async(
        self, item: PublishResult, sub: Subscription, policy: RetryPolicy | None
    ) -> None:
        """Run one handler with its retries, on the async path."""
        if signals.event_published.receivers:
            token = _publisher.set(sub.name)
            try:
                await self._attempts_async(item, sub, policy)
            finally:
                _publisher.reset(token)
        else:
            await self._attempts_async(item, sub, policy)

    async def _attempts_async(
        self, item: PublishResult, sub: Subscription, policy: RetryPolicy | None
    ) -> None:
        event = item.event
        delays: c.Iterator[float] | None = None  # made on the first failure only
        first_failure: datetime | None = None
        attempt = 0
        while True:
            attempt += 1
            try:
                if sub.is_async:
                    await _call_async(sub, event)
                else:
                    if sub.run_in_thread:
                        returned = await asyncio.to_thread(sub.handler, event)
                    else:
                        returned = sub.handler(event)
                    if returned is not None:
                        _refuse_awaitable(sub, returned)
            except Exception as error:
                first_failure = first_failure or self._clock()
                if delays is None and policy is not None:
                    delays = policy.delays(self._random)
                delay = self._next_delay(policy, delays, error)
                if delay is None:
                    self._failed(item, sub, attempt, error, first_failure, policy)
                    return
                self._retrying(sub, event, attempt, error, delay)
                await self._async_sleep(delay)
            else:
                if signals.handler_succeeded.receivers:
                    self._succeeded(event, sub, attempt)
                return

    # -- failures ------------------------------------------------------------------

    def _succeeded(self, event: Event, sub: Subscription, attempts: int) -> None:
        signals.send(
            signals.handler_succeeded, self, event=event, handler=sub.name, attempts=attempts
        )

    @staticmethod
    def _next_delay(
        policy: RetryPolicy | None, delays: c.Iterator[float] | None, error: Exception
    ) -> float | None:
        """The wait before the next attempt, or None to give up now."""
        if policy is None or delays is None or not policy.retries(error):
            return None
        return next(delays, None)

    def _retrying(
        self, sub: Subscription, event: Event, attempt: int, error: Exception, delay: float
    ) -> None:
        logger.warning(
            "%s failed on %s (event_id=%s), attempt %d: %s: %s; retrying in %.3gs",
            sub.name,
            event.event_type,
            event.event_id,
            attempt,
            type(error).__name__,
            describe(error),
            delay,
        )
        if signals.handler_failed.receivers:
            signals.send(
                signals.handler_failed,
                self,
                event=event,
                handler=sub.name,
                attempt=attempt,
                error=error,
                final=False,
            )
        if signals.handler_retrying.receivers:
            signals.send(
                signals.handler_retrying,
                self,
                event=event,
                handler=sub.name,
                attempt=attempt,
                error=error,
                delay=delay,
            )

    def _failed(
        self,
        item: PublishResult,
        sub: Subscription,
        attempts: int,
        error: Exception,
        first_failure: datetime | None,
        policy: RetryPolicy | None,
    ) -> None:
        """The last attempt of ``sub`` on ``item`` failed: tell, then dead-letter."""
        if signals.handler_failed.receivers:
            signals.send(
                signals.handler_failed,
                self,
                event=item.event,
                handler=sub.name,
                attempt=attempts,
                error=error,
                final=True,
            )
        why = ""
        if policy is not None and not policy.retries(error):
            why = " (not retried: its error type is excluded by the retry policy)"
        self._give_up(item, sub.name, attempts, error, first_failure, why=why)

    def _unhandled(self, item: PublishResult) -> None:
        if signals.event_unhandled.receivers:
            signals.send(signals.event_unhandled, self, event=item.event)
        if self.report_unhandled or isinstance(item, _RedriveResult):
            error = UnhandledEventError(
                f"no handler is subscribed to {item.event.event_type}; subscribe one, then "
                "redrive this letter"
            )
            self._give_up(item, NO_HANDLER, 0, error, None, level=logging.WARNING)

    def _give_up(
        self,
        item: PublishResult,
        handler: str,
        attempts: int,
        error: Exception,
        first_failure: datetime | None,
        *,
        why: str = "",
        level: int = logging.ERROR,
    ) -> None:
        """Make, record, store and announce the dead letter of (item's event, handler)."""
        now = self._clock()
        store = self._dead_letters
        if isinstance(item, _RedriveResult) and item.letter.handler == handler:
            letter = item.letter.failed_again(attempts, error, failed_at=now)
            store = item.store
        else:
            letter = DeadLetter.from_exception(
                item.event, handler, attempts, error, failed_at=now, first_failed_at=first_failure
            )
        node: PublishResult | None = item
        while node is not None:  # each result covers its event and all it caused
            node.dead_letters.append(letter)
            node = node._parent
        if handler == NO_HANDLER:
            logger.log(
                level,
                "no handler is subscribed to %s (event_id=%s); kept as dead letter %s",
                item.event.event_type,
                item.event.event_id,
                letter.id,
            )
        else:
            redriven = " on redrive" if letter.attempts != attempts else ""
            logger.log(
                level,
                "%s failed on %s (event_id=%s)%s after %d attempt(s)%s; dead letter %s "
                "(%d attempts in all)",
                handler,
                item.event.event_type,
                item.event.event_id,
                redriven,
                attempts,
                why,
                letter.id,
                letter.attempts,
                exc_info=error,
            )
        try:
            store.add(letter)
        except Exception:
            logger.critical(
                "could not store the dead letter of %s on %s (event_id=%s); it is only in "
                "this publish's result and this log: %r",
                handler,
                item.event.event_type,
                item.event.event_id,
                letter,
                exc_info=True,
            )
        if signals.event_dead_lettered.receivers:
            signals.send(signals.event_dead_lettered, self, dead_letter=letter)

    def __repr__(self) -> str:
        try:
            letters: object = len(self._dead_letters)
        except Exception:  # a closed or unreachable store must not break a repr
            letters = "?"
        return f"<EventBus subscriptions={len(self._subscriptions)} dead_letters={letters}>"


_random_module = random


@dataclasses.dataclass(frozen=True, slots=True)
class RedriveOutcome:
    """What ``redrive_all`` did with one letter: a ``result``, or the ``error`` that stopped it."""

    letter: DeadLetter
    result: PublishResult | None
    error: RedriveError | None

    @property
    def ok(self) -> bool:
        """True when the handler succeeded and the letter was removed."""
        return self.result is not None and all(
            other.id != self.letter.id for other in self.result.dead_letters
        )


# -- cascades ---------------------------------------------------------------------


class _Root(PublishResult):
    """The result of a top-level publish, which also runs its cascade.

    The events its handlers publish queue here (created on the first one)
    and are dispatched in FIFO order. One object per top-level publish, not
    two, keeps the publish path short.

    Handlers in other threads (``run_in_thread``, or a copied context) may
    enqueue while the publishing thread drains, so ``enqueue`` and ``next``
    use a double check instead of a lock (a lock is taken only to create the
    queue, on the first child): an enqueue appends, then looks at
    ``closed``; ``next`` sets ``closed``, then looks at the queue. Whichever
    comes second sees the other, and ``deque.remove``/``popleft`` settle who
    owns a raced event.
    """

    __slots__ = ("bus", "closed", "queue", "runner")

    # A root is its own cascade, at depth 0, caused by nothing: class attributes, so that
    # creating one (once per publish) sets only what varies.
    _cascade = property(lambda self: self)
    _depth = 0
    _parent = None

    def __init__(self, bus: EventBus, event: Event) -> None:  # sets the fields itself
        self.event = event
        self.dead_letters = []
        self.bus = bus
        self.closed = False
        self.queue: collections.deque[PublishResult] | None = None
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
        if event.causation_id is None or event.correlation_id is None:
            event = _stamped(event, parent.event)
        child = PublishResult(event)
        child._cascade = self
        child._depth = depth
        child._parent = parent
        queue = self.queue
        if queue is None:
            with _queue_creation:
                if self.queue is None:
                    self.queue = collections.deque()
            queue = self.queue
        queue.append(child)
        if self.closed:  # the top-level call finished meanwhile: take it back if still there
            try:
                queue.remove(child)
            except ValueError:
                pass  # the dispatcher got it first
            else:
                return None
        if signals.event_published.receivers:
            signals.send(signals.event_published, self.bus, event=event, publisher=_publisher.get())
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


class _RedriveResult(_Root):
    """The root of a redrive: knows the letter it redrives, and the store it came from."""

    __slots__ = ("letter", "store")

    def __init__(self, bus: EventBus, letter: DeadLetter, store: DeadLetterStore) -> None:
        super().__init__(bus, letter.event)
        self.letter = letter
        self.store = store


#: Guards the creation of a cascade's queue by two threads at once (rare: only the first
#: event a handler publishes creates it).
_queue_creation = threading.Lock()

_set = object.__setattr__


def _stamped(event: Event, cause: Event) -> Event:
    """A copy of ``event`` with its missing causation and correlation ids taken from ``cause``.

    What ``model_copy(update=...)`` does, at half the cost (no validation is
    needed: the ids are the cause's own UUIDs).
    """
    fields = event.__dict__.copy()
    if event.causation_id is None:
        fields["causation_id"] = cause.event_id
    if event.correlation_id is None:
        fields["correlation_id"] = cause.correlation_id or cause.event_id
    copy = object.__new__(type(event))
    _set(copy, "__dict__", fields)
    _set(copy, "__pydantic_fields_set__", event.__pydantic_fields_set__ | _IDS)
    _set(copy, "__pydantic_extra__", event.__pydantic_extra__)
    _set(copy, "__pydantic_private__", event.__pydantic_private__)
    return copy


_IDS = frozenset(("causation_id", "correlation_id"))

#: The name of the handler running in this context, kept only while someone listens to
#: event_published (it says which handler published each event).
_publisher: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "eventbus_publisher", default=None
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


def _call_async(sub: Subscription, event: Event) -> c.Coroutine[t.Any, t.Any, object]:
    """The coroutine of one attempt of an async handler, bounded by its timeout if it has one."""
    if sub.timeout is None:
        return sub.handler(event)  # type: ignore[return-value]
    return _with_timeout(sub, event)


async def _with_timeout(sub: Subscription, event: Event) -> None:
    assert sub.timeout is not None
    try:
        async with asyncio.timeout(sub.timeout) as scope:
            await sub.handler(event)  # type: ignore[misc]
    except TimeoutError:
        if scope.expired():
            raise HandlerTimeoutError(
                f"{sub.name} did not finish within its timeout of {sub.timeout:g}s; "
                "the attempt was cancelled"
            ) from None
        raise
