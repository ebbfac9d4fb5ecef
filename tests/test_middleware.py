"""Middleware: what a middleware sees of each attempt, the order it wraps in, and its power.

Every test runs on both paths: ``publish`` (the sync ``handle`` form) and
``publish_async`` (the async ``handle_async`` form). Retry waits go to an
injected clock and are recorded, never waited.
"""

from __future__ import annotations

import asyncio
import collections.abc as c
import contextvars
import dataclasses
import typing as t

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventbus import (
    DeadLetter,
    Event,
    EventBus,
    HandlerCall,
    Middleware,
    PublishResult,
    RetryPolicy,
    Subscription,
    signals,
)
from eventbus.middleware import AsyncCallNext, CallNext
from tests.clocks import TestClock

PATHS = ["sync", "async"]
BOTH_PATHS = pytest.mark.parametrize("path", PATHS)
HANDLER_KINDS = pytest.mark.parametrize("use_async", [False, True], ids=["sync_def", "async_def"])


class MwOrder(Event):
    order_id: str = "o1"


class MwParent(Event):
    n: int = 0


class MwChild(Event):
    n: int = 0


class HandlerError(Exception):
    pass


class MiddlewareError(Exception):
    pass


def publish(bus: EventBus, event: Event, path: str) -> PublishResult:
    if path == "sync":
        return bus.publish(event)
    return asyncio.run(bus.publish_async(event))


def redrive(bus: EventBus, letter: DeadLetter, path: str) -> PublishResult:
    if path == "sync":
        return bus.redrive(letter)
    return asyncio.run(bus.redrive_async(letter))


def qualified(kind: type) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"


@dataclasses.dataclass
class Waits:
    """The retry waits a bus asked for, by path; none of them is waited."""

    sync: list[float] = dataclasses.field(default_factory=list)
    async_: list[float] = dataclasses.field(default_factory=list)

    async def sleep_async(self, seconds: float) -> None:
        self.async_.append(seconds)

    def clock(self) -> TestClock:
        return TestClock(sleep=self.sync.append, sleep_async=self.sleep_async)

    def of(self, path: str) -> list[float]:
        return self.sync if path == "sync" else self.async_

    def other_than(self, path: str) -> list[float]:
        return self.async_ if path == "sync" else self.sync


@dataclasses.dataclass(frozen=True)
class Seen:
    """What a middleware was told about one attempt, copied while it ran."""

    form: str  # "handle" or "handle_async"
    handler: str
    attempt: int
    event: Event
    result: PublishResult
    bus: EventBus
    redrive: bool


class Recorder(Middleware):
    """Records every attempt it wraps, and logs "<label> before"/"<label> after" around it."""

    def __init__(self, label: str = "m", log: list[str] | None = None) -> None:
        self.label = label
        self.log: list[str] = log if log is not None else []
        self.seen: list[Seen] = []

    def see(self, form: str, event: Event, call: HandlerCall) -> None:
        assert event is call.result.event
        self.seen.append(
            Seen(
                form,
                call.subscription.name,
                call.attempt,
                call.result.event,
                call.result,
                call.bus,
                call.redrive,
            )
        )

    def handle(self, call_next: CallNext, event: Event, call: HandlerCall) -> None:
        self.see("handle", event, call)
        self.log.append(f"{self.label} before")
        try:
            call_next(event, call)
        finally:
            self.log.append(f"{self.label} after")

    async def handle_async(self, call_next: AsyncCallNext, event: Event, call: HandlerCall) -> None:
        self.see("handle_async", event, call)
        self.log.append(f"{self.label} before")
        try:
            await call_next(event, call)
        finally:
            self.log.append(f"{self.label} after")

    @property
    def attempts(self) -> list[int]:
        return [seen.attempt for seen in self.seen]


def form_of(path: str) -> str:
    return "handle" if path == "sync" else "handle_async"


def failing_handler(
    calls: list[int], failures: int, *, use_async: bool
) -> c.Callable[[MwOrder], object]:
    """A handler of MwOrder that raises HandlerError on its first ``failures`` calls."""

    def body() -> None:
        calls.append(1)
        if len(calls) <= failures:
            raise HandlerError(f"failure {len(calls)}")

    if use_async:

        async def on_order_async(event: MwOrder) -> None:
            await asyncio.sleep(0)
            body()

        return on_order_async

    def on_order(event: MwOrder) -> None:
        body()

    return on_order


# -- what a middleware sees --------------------------------------------------------------


@BOTH_PATHS
@HANDLER_KINDS
@given(max_attempts=st.integers(1, 6), failures=st.integers(0, 7))
def test_middleware_sees_each_attempt_numbered_from_one(
    path: str, use_async: bool, max_attempts: int, failures: int
) -> None:
    waits = Waits()
    recorder = Recorder()
    bus = EventBus(middleware=[recorder], clock=waits.clock())
    calls: list[int] = []
    bus.subscribe(
        failing_handler(calls, failures, use_async=use_async),
        retry=RetryPolicy(max_attempts=max_attempts),
    )
    [subscription] = bus.subscriptions_for(MwOrder)
    event = MwOrder()

    result = publish(bus, event, path)

    attempts = min(failures + 1, max_attempts)
    assert recorder.attempts == list(range(1, attempts + 1))
    assert len(calls) == attempts
    assert all(seen.handler == subscription.name for seen in recorder.seen)
    assert all(seen.event is event and seen.result is result for seen in recorder.seen)
    assert all(seen.bus is bus and not seen.redrive for seen in recorder.seen)
    assert all(seen.form == form_of(path) for seen in recorder.seen)
    assert len(waits.of(path)) == attempts - 1
    assert waits.other_than(path) == []
    if failures < max_attempts:
        assert result.ok
    else:
        [letter] = result.dead_letters
        assert letter.handler == subscription.name
        assert letter.attempts == max_attempts


@BOTH_PATHS
def test_middleware_sees_redrive_true_only_on_a_redrive(path: str) -> None:
    waits = Waits()
    recorder = Recorder()
    bus = EventBus(middleware=[recorder], clock=waits.clock())
    broken = {"on": True}

    @bus.subscribe(retry=RetryPolicy(max_attempts=2))
    def on_order(event: MwOrder) -> None:
        if broken["on"]:
            raise HandlerError("down")

    event = MwOrder()
    [letter] = publish(bus, event, path).dead_letters
    assert [(seen.attempt, seen.redrive) for seen in recorder.seen] == [(1, False), (2, False)]

    recorder.seen.clear()
    again = redrive(bus, letter, path)  # still broken: fails again, the letter stays
    assert not again.ok
    assert [(seen.attempt, seen.redrive) for seen in recorder.seen] == [(1, True), (2, True)]
    assert all(seen.event is letter.event and seen.bus is bus for seen in recorder.seen)
    assert all(seen.form == form_of(path) for seen in recorder.seen)

    broken["on"] = False
    recorder.seen.clear()
    [stored] = list(bus.dead_letters)
    fixed = redrive(bus, stored, path)
    assert fixed.ok
    assert len(bus.dead_letters) == 0
    [seen] = recorder.seen
    assert (seen.attempt, seen.redrive) == (1, True)
    assert seen.handler == letter.handler
    assert seen.result is fixed
    assert seen.event is fixed.event

    recorder.seen.clear()
    assert publish(bus, MwOrder(), path).ok  # a publish after the redrive is no redrive
    assert [seen.redrive for seen in recorder.seen] == [False]


# -- order, adding, removing ---------------------------------------------------------------


@BOTH_PATHS
def test_middleware_wraps_first_outermost_and_added_ones_go_inside(path: str) -> None:
    log: list[str] = []
    a, b, inner = Recorder("a", log), Recorder("b", log), Recorder("c", log)
    bus = EventBus(middleware=[a, b])

    @bus.subscribe
    def on_order(event: MwOrder) -> None:
        log.append("handler")

    publish(bus, MwOrder(), path)
    assert log == ["a before", "b before", "handler", "b after", "a after"]
    assert list(bus.middleware) == [a, b]

    bus.add_middleware(inner)
    log.clear()
    publish(bus, MwOrder(), path)
    assert log == ["a before", "b before", "c before", "handler", "c after", "b after", "a after"]
    assert list(bus.middleware) == [a, b, inner]

    bus.remove_middleware(b)
    log.clear()
    seen_by_b = len(b.seen)
    publish(bus, MwOrder(), path)
    assert log == ["a before", "c before", "handler", "c after", "a after"]
    assert len(b.seen) == seen_by_b
    assert list(bus.middleware) == [a, inner]


@BOTH_PATHS
def test_outermost_middleware_sees_the_error_last(path: str) -> None:
    order: list[str] = []

    class Watch(Recorder):
        def handle(self, call_next: CallNext, event: Event, call: HandlerCall) -> None:
            try:
                call_next(event, call)
            except HandlerError:
                order.append(self.label)
                raise

        async def handle_async(
            self, call_next: AsyncCallNext, event: Event, call: HandlerCall
        ) -> None:
            try:
                await call_next(event, call)
            except HandlerError:
                order.append(self.label)
                raise

    bus = EventBus(middleware=[Watch("outer"), Watch("inner")])

    @bus.subscribe
    def on_order(event: MwOrder) -> None:
        raise HandlerError("no")

    [letter] = publish(bus, MwOrder(), path).dead_letters
    assert order == ["inner", "outer"]
    assert letter.error_type == qualified(HandlerError)


def test_adding_the_same_middleware_twice_is_a_value_error() -> None:
    recorder = Recorder()
    bus = EventBus(middleware=[recorder])
    with pytest.raises(ValueError, match="already"):
        bus.add_middleware(recorder)
    assert bus.middleware == (recorder,)
    with pytest.raises(ValueError, match="already"):
        EventBus(middleware=[recorder, recorder])


def test_removing_a_middleware_that_is_not_there_is_a_value_error() -> None:
    kept, stranger = Recorder(), Recorder()
    bus = EventBus(middleware=[kept])
    with pytest.raises(ValueError, match="not a middleware"):
        bus.remove_middleware(stranger)
    bus.remove_middleware(kept)
    with pytest.raises(ValueError, match="not a middleware"):
        bus.remove_middleware(kept)
    assert bus.middleware == ()


@pytest.mark.parametrize("bad", [object(), "timing", len], ids=["object", "str", "function"])
def test_a_non_middleware_is_a_type_error_naming_middleware(bad: object) -> None:
    bus = EventBus()
    with pytest.raises(TypeError, match="Middleware"):
        bus.add_middleware(t.cast(t.Any, bad))
    assert bus.middleware == ()
    with pytest.raises(TypeError, match="Middleware"):
        EventBus(middleware=[t.cast(t.Any, bad)])


# -- applies_to ------------------------------------------------------------------------------


class Counting(Recorder):
    """Applies to the subscriptions whose handler is not in ``skip``; counts the questions."""

    def __init__(self, skip: c.Collection[object] = ()) -> None:
        super().__init__()
        self.skip = skip
        self.asked: list[str] = []

    def applies_to(self, subscription: Subscription) -> bool:
        self.asked.append(subscription.name)
        return subscription.handler not in self.skip


@BOTH_PATHS
def test_applies_to_is_asked_once_per_plan_compile_not_per_publish(path: str) -> None:
    counting = Counting()
    bus = EventBus(middleware=[counting])

    @bus.subscribe
    def first(event: MwOrder) -> None: ...

    @bus.subscribe
    def second(event: MwOrder) -> None: ...

    @bus.subscribe
    async def third(event: MwOrder) -> None: ...

    if path == "sync":
        for _ in range(100):
            bus.publish(MwOrder())
    else:

        async def main() -> None:
            for _ in range(100):
                await bus.publish_async(MwOrder())

        asyncio.run(main())

    assert sorted(counting.asked) == sorted(s.name for s in bus.subscriptions_for(MwOrder))
    assert len(counting.seen) == 300

    @bus.subscribe
    def fourth(event: MwOrder) -> None: ...

    publish(bus, MwOrder(), path)
    publish(bus, MwOrder(), path)
    assert len(counting.asked) == 3 + 4  # the new plan asked about each subscription once


@BOTH_PATHS
def test_a_middleware_that_does_not_apply_never_sees_that_handler(path: str) -> None:
    ran: list[str] = []

    def wrapped(event: MwOrder) -> None:
        ran.append("wrapped")

    def bare(event: MwOrder) -> None:
        ran.append("bare")

    counting = Counting(skip=[bare])
    bus = EventBus(middleware=[counting])
    bus.subscribe(wrapped)
    bus.subscribe(bare)

    publish(bus, MwOrder(), path)
    publish(bus, MwOrder(), path)

    [wrapped_sub] = [s for s in bus.subscriptions_for(MwOrder) if s.handler is wrapped]
    assert ran == ["wrapped", "bare", "wrapped", "bare"]
    assert [seen.handler for seen in counting.seen] == [wrapped_sub.name] * 2


# -- what a middleware can do to an attempt ------------------------------------------------


class Refusing(Recorder):
    """Raises MiddlewareError before (or after) going on to the handler."""

    def __init__(self, *, after: bool) -> None:
        super().__init__()
        self.after = after

    def handle(self, call_next: CallNext, event: Event, call: HandlerCall) -> None:
        self.see("handle", event, call)
        if self.after:
            call_next(event, call)
        raise MiddlewareError(f"refused attempt {call.attempt}")

    async def handle_async(self, call_next: AsyncCallNext, event: Event, call: HandlerCall) -> None:
        self.see("handle_async", event, call)
        if self.after:
            await call_next(event, call)
        raise MiddlewareError(f"refused attempt {call.attempt}")


@BOTH_PATHS
@pytest.mark.parametrize("after", [False, True], ids=["before_call_next", "after_call_next"])
def test_a_middleware_that_raises_fails_the_attempt(path: str, after: bool) -> None:
    waits = Waits()
    refusing = Refusing(after=after)
    bus = EventBus(middleware=[refusing], clock=waits.clock())
    calls: list[int] = []

    @bus.subscribe(retry=RetryPolicy(max_attempts=3, initial_delay=1))
    def on_order(event: MwOrder) -> None:
        calls.append(1)

    result = publish(bus, MwOrder(), path)

    assert refusing.attempts == [1, 2, 3]
    assert len(calls) == (3 if after else 0)
    assert waits.of(path) == [1.0, 2.0]
    assert waits.other_than(path) == []
    [letter] = result.dead_letters
    assert letter.error_type == qualified(MiddlewareError)
    assert letter.error_message == "refused attempt 3"
    assert letter.attempts == 3
    assert list(bus.dead_letters) == [letter]


class Swallowing(Recorder):
    def handle(self, call_next: CallNext, event: Event, call: HandlerCall) -> None:
        self.see("handle", event, call)
        try:
            call_next(event, call)
        except HandlerError:
            self.log.append("swallowed")

    async def handle_async(self, call_next: AsyncCallNext, event: Event, call: HandlerCall) -> None:
        self.see("handle_async", event, call)
        try:
            await call_next(event, call)
        except HandlerError:
            self.log.append("swallowed")


@BOTH_PATHS
@HANDLER_KINDS
def test_a_middleware_that_swallows_the_error_makes_the_attempt_a_success(
    path: str, use_async: bool
) -> None:
    waits = Waits()
    swallowing = Swallowing()
    bus = EventBus(middleware=[swallowing], clock=waits.clock())
    calls: list[int] = []
    bus.subscribe(
        failing_handler(calls, 99, use_async=use_async), retry=RetryPolicy(max_attempts=3)
    )
    succeeded: list[dict[str, t.Any]] = []

    def on_succeeded(sender: object, **kwargs: t.Any) -> None:
        succeeded.append(kwargs)

    with signals.handler_succeeded.connected_to(on_succeeded, sender=bus):
        result = publish(bus, MwOrder(), path)

    assert result.ok
    assert len(bus.dead_letters) == 0
    assert len(calls) == 1
    assert swallowing.attempts == [1]
    assert swallowing.log == ["swallowed"]
    assert waits.sync == waits.async_ == []
    assert [kwargs["attempts"] for kwargs in succeeded] == [1]


class Skipping(Recorder):
    def handle(self, call_next: CallNext, event: Event, call: HandlerCall) -> None:
        self.see("handle", event, call)

    async def handle_async(self, call_next: AsyncCallNext, event: Event, call: HandlerCall) -> None:
        self.see("handle_async", event, call)


@BOTH_PATHS
@HANDLER_KINDS
def test_a_middleware_that_does_not_call_next_skips_the_handler(path: str, use_async: bool) -> None:
    skipping = Skipping()
    bus = EventBus(middleware=[skipping])
    calls: list[int] = []
    bus.subscribe(failing_handler(calls, 99, use_async=use_async))
    succeeded: list[dict[str, t.Any]] = []

    def on_succeeded(sender: object, **kwargs: t.Any) -> None:
        succeeded.append(kwargs)

    with signals.handler_succeeded.connected_to(on_succeeded, sender=bus):
        result = publish(bus, MwOrder(), path)

    assert result.ok
    assert calls == []
    assert len(bus.dead_letters) == 0
    assert [seen.form for seen in skipping.seen] == [form_of(path)]
    [subscription] = bus.subscriptions_for(MwOrder)
    assert [kwargs["handler"] for kwargs in succeeded] == [subscription.name]


# -- which form runs, and contextvars -------------------------------------------------------

span: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "test_middleware_span", default=None
)


class Spans(Middleware):
    """Sets ``span`` around the attempt, to the name of the form that runs."""

    def __init__(self, log: list[object]) -> None:
        self.log = log

    def handle(self, call_next: CallNext, event: Event, call: HandlerCall) -> None:
        token = span.set("handle")
        try:
            call_next(event, call)
            self.log.append("handle: call_next returned")
        finally:
            span.reset(token)

    async def handle_async(self, call_next: AsyncCallNext, event: Event, call: HandlerCall) -> None:
        token = span.set("handle_async")
        try:
            await call_next(event, call)
            self.log.append("handle_async: call_next returned")
        finally:
            span.reset(token)


@BOTH_PATHS
@HANDLER_KINDS
def test_the_path_picks_the_form_and_the_handler_sees_its_contextvars(
    path: str, use_async: bool
) -> None:
    log: list[object] = []
    bus = EventBus(middleware=[Spans(log)])

    if use_async:

        @bus.subscribe
        async def on_order_async(event: MwOrder) -> None:
            log.append(("started", span.get()))
            await asyncio.sleep(0)  # a real suspension: call_next must still wait for the end
            log.append(("finished", span.get()))

    else:

        @bus.subscribe
        def on_order(event: MwOrder) -> None:
            log.append(("started", span.get()))
            log.append(("finished", span.get()))

    assert publish(bus, MwOrder(), path).ok

    form = form_of(path)
    assert log == [("started", form), ("finished", form), f"{form}: call_next returned"]
    assert span.get() is None


# -- mixed plans and cascades ----------------------------------------------------------------


@BOTH_PATHS
def test_handlers_without_middleware_still_run_in_priority_order_in_a_mixed_plan(
    path: str,
) -> None:
    log: list[str] = []

    def low(event: MwOrder) -> None:
        log.append("low")

    async def bare_async(event: MwOrder) -> None:
        log.append("bare_async")

    def high(event: MwOrder) -> None:
        log.append("high")

    def bare(event: MwOrder) -> None:
        log.append("bare")

    counting = Counting(skip=[bare, bare_async])
    counting.log = log
    bus = EventBus(middleware=[counting])
    bus.subscribe(low, priority=0)
    bus.subscribe(bare_async, priority=10)
    bus.subscribe(high, priority=30)
    bus.subscribe(bare, priority=20)

    assert publish(bus, MwOrder(), path).ok

    assert log == [
        "m before",
        "high",
        "m after",
        "bare",
        "bare_async",
        "m before",
        "low",
        "m after",
    ]
    names = {s.handler: s.name for s in bus.subscriptions_for(MwOrder)}
    assert [seen.handler for seen in counting.seen] == [names[high], names[low]]


@BOTH_PATHS
@pytest.mark.parametrize("built", ["in_handler", "beforehand"])
def test_events_published_by_a_handler_go_through_the_middleware(path: str, built: str) -> None:
    recorder = Recorder()
    bus = EventBus(middleware=[recorder])
    children: list[PublishResult] = []
    prebuilt = MwChild(n=7)

    def make_child(parent: MwParent) -> MwChild:
        return MwChild(n=parent.n) if built == "in_handler" else prebuilt

    if path == "sync":

        @bus.subscribe
        def on_parent(event: MwParent) -> None:
            children.append(bus.publish(make_child(event)))

        @bus.subscribe
        def on_child(event: MwChild) -> None: ...

    else:

        @bus.subscribe
        async def on_parent_async(event: MwParent) -> None:
            children.append(await bus.publish_async(make_child(event)))

        @bus.subscribe
        async def on_child_async(event: MwChild) -> None: ...

    parent = MwParent(n=7)
    root = publish(bus, parent, path)

    assert root.ok
    [child] = children
    [parent_sub] = bus.subscriptions_for(MwParent)
    [child_sub] = bus.subscriptions_for(MwChild)
    assert [(seen.handler, seen.event) for seen in recorder.seen] == [
        (parent_sub.name, parent),
        (child_sub.name, child.event),
    ]
    on_parent_seen, on_child_seen = recorder.seen
    assert on_parent_seen.result is root
    assert on_parent_seen.event is parent
    assert on_child_seen.result is child
    assert on_child_seen.event is child.event  # the event delivered: a copy when prebuilt
    if built == "beforehand":
        assert on_child_seen.event is not prebuilt
        assert prebuilt.causation_id is None
    assert isinstance(on_child_seen.event, MwChild)
    assert on_child_seen.event.n == 7
    assert on_child_seen.event.causation_id == parent.event_id
    assert on_child_seen.event.correlation_id == parent.event_id
    assert all(seen.form == form_of(path) and seen.bus is bus for seen in recorder.seen)
