"""Plans: who handles one event class, compiled once into the functions that deliver to them.

A plan is compiled on the first publish of an event class after anything
that changes it: a subscribe, include or unsubscribe, a middleware added or
removed, a hook receiver connected or disconnected for the bus. Compiling
is the only place where a path is chosen. Each subscription becomes either
a *plain* step, its handler called straight from the plan's loop (one
attempt, no timeout, no thread, no middleware), or a *runner*: its handler
behind the middleware chain that applies to it, driven by the retry
driver. Delivering an event is then a loop over ready steps.

The retry drivers (:func:`_runner`, :func:`_runner_async`) differ only in
how they call the handler and how they wait; what to do after a failure is
:func:`_after_failure`, and when to try again is the policy's
``next_delay``.
"""

from __future__ import annotations

import collections.abc as c
import dataclasses
import inspect
import itertools
import types
import typing as t

from . import failures, signals
from .cascade import cascade_of
from .context import loop_is_running, publisher
from .errors import HandlerTimeoutError, SyncPublishError
from .middleware import HandlerCall, Middleware, chain, chain_async

if t.TYPE_CHECKING:
    from .bus import EventBus
    from .events import Event
    from .handlers.subscription import Subscription
    from .results import PublishResult
    from .retry import RetryPolicy
    from .transport import Publish, PublishAsync

__all__ = ["Plan", "compile_plan", "refuse_awaitable"]

Deliver: t.TypeAlias = c.Callable[["PublishResult"], None]
Step: t.TypeAlias = tuple[c.Callable[[t.Any], t.Any], "Subscription", Deliver | None]
DeliverAsync: t.TypeAlias = c.Callable[["PublishResult"], c.Awaitable[None]]


@dataclasses.dataclass(slots=True, eq=False)
class Plan:
    """The compiled dispatch of one event class on one bus.

    ``deliver`` and ``deliver_async`` run the handlers on one event (a
    node of a cascade, its :class:`~eventbus.PublishResult`) where it is
    delivered. ``publish`` and ``publish_async``, when the bus's
    :class:`~eventbus.Transport` gave them (:meth:`~eventbus.Transport.bind`),
    are what ``bus.publish(event)`` and ``bus.publish_async(event)`` call
    instead of delivering locally.
    """

    subscriptions: tuple[Subscription, ...]
    #: What ``deliver`` loops over: (handler, subscription, None) for a plain handler,
    #: called straight from the loop; (handler, subscription, runner) for any other.
    steps: tuple[Step, ...]
    #: Deliver one event (one node of a cascade) to every subscription, on the sync path.
    deliver: Deliver
    #: The same on the async path.
    deliver_async: DeliverAsync
    #: Some handler is async: ``publish`` must run an event loop for it.
    has_async: bool
    #: Someone listens to ``event_published`` for this bus.
    announce: bool
    #: The transport's publish functions for this class; None: the bus delivers locally.
    publish: Publish | None = None
    publish_async: PublishAsync | None = None


def compile_plan(
    bus: EventBus,
    subscriptions: c.Sequence[Subscription],
    middleware: c.Sequence[Middleware],
    default_retry: RetryPolicy | None,
    *,
    redrive: bool = False,
) -> Plan:
    """Compile the plan of ``subscriptions`` (already in delivery order) for ``bus``."""
    listened = signals.listened(bus)
    hooks = _Hooks(named=signals.event_published in listened) if listened else None
    sync_steps: list[Step] = []
    async_steps: list[
        tuple[c.Callable[[t.Any], t.Any], Subscription, bool, DeliverAsync | None]
    ] = []
    async_runners: list[tuple[int, DeliverAsync]] = []
    for sub in subscriptions:
        policy = sub.retry or default_retry
        if policy is not None and policy.max_attempts == 1:
            policy = None  # one attempt: nothing to retry, the plain path may take it
        layers: list[Middleware] = [bus._idempotent] if sub.idempotent else []
        if hooks is not None:
            layers.append(hooks)
        layers += [m for m in middleware if m.applies_to(sub)]
        plain = policy is None and not layers and sub.timeout is None and not sub.run_in_thread
        if plain and not sub.is_async:
            sync_steps.append((sub.handler, sub, None))
        elif hooks is not None and layers == [hooks] and _plain_but_hooked(sub, policy):
            sync_steps.append((sub.handler, sub, _hooked(bus, sub, hooks._named)))
        else:
            sync_steps.append((sub.handler, sub, _runner(bus, sub, policy, layers, redrive)))
        runner = _runner_async(bus, sub, policy, layers, redrive)
        async_runners.append((sub.priority, runner))
        async_steps.append((sub.handler, sub, sub.is_async, None if plain else runner))
    deliver: Deliver
    deliver_async: DeliverAsync
    if not subscriptions:

        def deliver_unhandled(node: PublishResult) -> None:
            _unhandled(bus, node)

        async def deliver_unhandled_async(node: PublishResult) -> None:
            _unhandled(bus, node)

        deliver, deliver_async = deliver_unhandled, deliver_unhandled_async
        # One step whose runner reports the event; its handler and subscription are never used.
        sync_steps.append((_never_called, t.cast("Subscription", None), deliver_unhandled))
    else:
        deliver = _sync_loop(bus, tuple(sync_steps))
        if bus.concurrent and len({priority for priority, _ in async_runners}) < len(async_runners):
            deliver_async = _concurrent_loop(async_runners)
        else:
            deliver_async = _async_loop(bus, tuple(async_steps))
    return Plan(
        subscriptions=tuple(subscriptions),
        steps=tuple(sync_steps),
        deliver=deliver,
        deliver_async=deliver_async,
        has_async=any(sub.is_async for sub in subscriptions),
        announce=signals.event_published in listened,
    )


# -- the loops: one per path, over the steps compiled above --------------------------------


def _sync_loop(bus: EventBus, steps: tuple[Step, ...]) -> Deliver:
    gave_up = failures.gave_up

    # EventBus.publish runs this same loop inline for the event it opens a cascade with.
    def deliver(node: PublishResult) -> None:
        event = node.event
        for handler, sub, run in steps:
            if run is not None:
                run(node)
                continue
            try:
                returned = handler(event)
                if returned is not None:
                    refuse_awaitable(sub, returned)
            except Exception as error:
                gave_up(bus, node, sub, 1, error)

    return deliver


def _async_loop(
    bus: EventBus,
    steps: tuple[tuple[c.Callable[[t.Any], t.Any], Subscription, bool, DeliverAsync | None], ...],
) -> DeliverAsync:
    gave_up = failures.gave_up

    async def deliver_async(node: PublishResult) -> None:
        event = node.event
        for handler, sub, is_async, run in steps:
            if run is not None:
                await run(node)
                continue
            try:
                if is_async:
                    await handler(event)
                else:
                    returned = handler(event)
                    if returned is not None:
                        refuse_awaitable(sub, returned)
            except Exception as error:
                gave_up(bus, node, sub, 1, error)

    return deliver_async


def _concurrent_loop(runners: list[tuple[int, DeliverAsync]]) -> DeliverAsync:
    """Handlers of equal priority run concurrently; priority groups one after another."""
    groups = tuple(
        tuple(run for _, run in group)
        for _, group in itertools.groupby(runners, key=lambda item: item[0])
    )

    async def deliver_async(node: PublishResult) -> None:
        for group in groups:
            if len(group) == 1:
                await group[0](node)
            else:
                await _gather_or_cancel([run(node) for run in group])

    return deliver_async


# -- the retry drivers: call, ask the policy, wait -----------------------------------------


def _runner(
    bus: EventBus,
    sub: Subscription,
    policy: RetryPolicy | None,
    layers: list[Middleware],
    redrive: bool,
) -> Deliver:
    """Run ``sub`` on one event with its retries, on the sync path."""
    call = chain(layers, _sync_call(sub))
    is_async = sub.is_async

    def run(node: PublishResult) -> None:
        handler_call = HandlerCall(bus, sub, node, 1, redrive)
        if is_async and loop_is_running():
            _cannot_run_here(bus, node, sub)
            return
        while True:
            try:
                call(node.event, handler_call)
            except Exception as error:
                delay = _after_failure(handler_call, error, policy)
                if delay is None:
                    return
                bus.clock.sleep(delay)
                handler_call.attempt += 1
            else:
                return

    return run


def _runner_async(
    bus: EventBus,
    sub: Subscription,
    policy: RetryPolicy | None,
    layers: list[Middleware],
    redrive: bool,
) -> DeliverAsync:
    """Run ``sub`` on one event with its retries, on the async path."""
    call = chain_async(layers, _async_call(sub))

    async def run(node: PublishResult) -> None:
        handler_call = HandlerCall(bus, sub, node, 1, redrive)
        while True:
            try:
                await call(node.event, handler_call)
            except Exception as error:
                delay = _after_failure(handler_call, error, policy)
                if delay is None:
                    return
                await bus.clock.sleep_async(delay)
                handler_call.attempt += 1
            else:
                return

    return run


def _plain_but_hooked(sub: Subscription, policy: RetryPolicy | None) -> bool:
    return policy is None and sub.timeout is None and not sub.run_in_thread and not sub.is_async


def _hooked(bus: EventBus, sub: Subscription, named: bool) -> Deliver:
    """A plain sync handler on a bus that someone listens to: its one attempt, and the hooks.

    What the retry driver does with the hooks middleware as its only layer,
    without the chain: the common case of a bus with a tracer or a metrics
    receiver connected.
    """
    handler = sub.handler
    name = sub.name

    def run(node: PublishResult) -> None:
        event = node.event
        token = publisher.set(name) if named else None
        try:
            returned = handler(event)
            if returned is not None:
                refuse_awaitable(sub, returned)
        except Exception as error:
            failures.gave_up(bus, node, sub, 1, error)
            return
        finally:
            if token is not None:
                publisher.reset(token)
        if signals.handler_succeeded.receivers:
            _succeeded(bus, event, name, 1)

    return run


def _after_failure(call: HandlerCall, error: Exception, policy: RetryPolicy | None) -> float | None:
    """Record a failed attempt; return the wait before the next one, or None: dead-lettered."""
    bus = call.bus
    if call._first_failure is None:
        call._first_failure = bus.clock.now()
    delay = None if policy is None else policy.next_delay(call.attempt, error, bus.clock)
    if delay is None:
        failures.gave_up(
            bus, call.result, call.subscription, call.attempt, error, call._first_failure, policy
        )
    else:
        failures.attempt_failed(bus, call.result, call.subscription, call.attempt, error, delay)
    return delay


# -- the innermost call of each kind of handler on each path -------------------------------


def _sync_call(sub: Subscription) -> c.Callable[[Event, HandlerCall], None]:
    handler = sub.handler
    if not sub.is_async:

        def call(event: Event, handler_call: HandlerCall) -> None:
            returned = handler(event)
            if returned is not None:
                refuse_awaitable(sub, returned)

        return call
    attempt = _async_call(sub)

    def run_coroutine(event: Event, handler_call: HandlerCall) -> None:
        cascade_of(handler_call.result).run_coroutine(attempt(event, handler_call))

    return run_coroutine


def _async_call(
    sub: Subscription,
) -> c.Callable[[Event, HandlerCall], c.Coroutine[t.Any, t.Any, None]]:
    # Subscription.create checked that an async subscription's handler returns an awaitable.
    handler = t.cast(c.Callable[["Event"], c.Awaitable[object]], sub.handler)
    timeout = sub.timeout
    if sub.is_async and timeout is None:

        async def call(event: Event, handler_call: HandlerCall) -> None:
            await handler(event)

        return call
    if sub.is_async:
        assert timeout is not None

        async def call_with_timeout(event: Event, handler_call: HandlerCall) -> None:
            import asyncio

            try:
                async with asyncio.timeout(timeout) as scope:
                    await handler(event)
            except TimeoutError:
                if scope.expired():
                    raise HandlerTimeoutError(
                        f"{sub.name} did not finish within its timeout of {timeout:g}s; "
                        "the attempt was cancelled"
                    ) from None
                raise

        return call_with_timeout
    sync_handler = sub.handler
    if sub.run_in_thread:

        async def call_in_thread(event: Event, handler_call: HandlerCall) -> None:
            import asyncio

            returned = await asyncio.to_thread(sync_handler, event)
            if returned is not None:
                refuse_awaitable(sub, returned)

        return call_in_thread

    async def call_sync(event: Event, handler_call: HandlerCall) -> None:
        returned = sync_handler(event)
        if returned is not None:
            refuse_awaitable(sub, returned)

    return call_sync


# -- hooks: the lifecycle signals that wrap a handler's call --------------------------------


class _Hooks(Middleware):
    """Says who publishes, and sends ``handler_succeeded``, on a bus that someone listens to.

    Compiled into a plan only while some signal has a receiver for the bus,
    so a bus that nobody listens to pays nothing. Once in, it looks at the
    receivers when each run ends, so a receiver connected while a handler
    runs (a ``Trace`` opened inside a handler) still hears it finish. The
    running handler's name (for ``event_published``'s ``publisher=``) is
    kept only while that signal has a receiver for the bus.
    """

    __slots__ = ("_named",)

    def __init__(self, *, named: bool) -> None:
        self._named = named

    def handle(
        self, call_next: c.Callable[[Event, HandlerCall], None], event: Event, call: HandlerCall, /
    ) -> None:
        if self._named:
            token = publisher.set(call.subscription.name)
            try:
                call_next(event, call)
            finally:
                publisher.reset(token)
        else:
            call_next(event, call)
        if signals.handler_succeeded.receivers:
            _succeeded(call.bus, event, call.subscription.name, call.attempt)

    async def handle_async(
        self,
        call_next: c.Callable[[Event, HandlerCall], c.Awaitable[None]],
        event: Event,
        call: HandlerCall,
        /,
    ) -> None:
        if self._named:
            token = publisher.set(call.subscription.name)
            try:
                await call_next(event, call)
            finally:
                publisher.reset(token)
        else:
            await call_next(event, call)
        if signals.handler_succeeded.receivers:
            _succeeded(call.bus, event, call.subscription.name, call.attempt)


def _succeeded(bus: EventBus, event: Event, handler: str, attempts: int) -> None:
    signals.send(signals.handler_succeeded, bus, event=event, handler=handler, attempts=attempts)


# -- small things the paths share ---------------------------------------------------------


def _never_called(event: Event) -> None:
    raise AssertionError("the step of an unhandled event has a runner")


def _unhandled(bus: EventBus, node: PublishResult) -> None:
    cascade = node._cascade  # the root of a redrive was dead-lettered before: report it again
    redriving = cascade is not None and cascade.redriving is not None and node._parent is None
    failures.unhandled(bus, node, report=bus.report_unhandled or redriving)


def _cannot_run_here(bus: EventBus, node: PublishResult, sub: Subscription) -> None:
    error = SyncPublishError(
        f"{sub.name} is async and the event was published with publish() inside a "
        "running event loop; publish with `await bus.publish_async(...)`"
    )
    failures.gave_up(bus, node, sub, 0, error)


def refuse_awaitable(sub: Subscription, returned: object) -> None:
    """A sync handler returning an awaitable or a generator would otherwise be silently skipped.

    Neither runs its body until someone awaits or iterates it, and nobody
    would: the handler failed, as surely as if it had raised. Subscribe
    refuses the handlers it can see are such (``async def`` is run as async,
    a generator function is refused); this catches those it cannot see (a
    decorated generator function, a lambda returning a coroutine).
    """
    if isinstance(returned, types.GeneratorType | types.AsyncGeneratorType):
        kind = (
            "an async generator"
            if isinstance(returned, types.AsyncGeneratorType)
            else "a generator"
        )
        raise TypeError(
            f"{sub.name} returned {kind} that nobody would iterate, so the handler's body "
            "never ran: use return instead of yield (if a decorator made it, the decorated "
            "function must not be a generator)"
        )
    if inspect.isawaitable(returned):
        if inspect.iscoroutine(returned):
            returned.close()
        raise TypeError(
            f"{sub.name} returned an awaitable ({type(returned).__name__}) that nobody would "
            "await: the bus saw a sync function; declare the handler with `async def`"
        )


async def _gather_or_cancel(coroutines: list[c.Awaitable[None]]) -> None:
    """Run concurrently; if one raises past its own error handling, cancel the rest."""
    import asyncio

    tasks = [asyncio.ensure_future(coroutine) for coroutine in coroutines]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        raise
