"""Hooks: the blinker signals in ``eventbus.signals``, their arguments, and their isolation.

Receivers are connected with ``connected_to`` (strong references, undone at
the end of the block), so no test leaks a receiver into another, and blinker's
weak references cannot drop one mid-test.
"""

from __future__ import annotations

import asyncio
import collections.abc as c
import contextlib
import contextvars
import gc
import inspect
import logging
import threading
import typing as t
import warnings

import blinker
import pytest
from blinker import NamedSignal

from eventbus import DeadLetter, Event, EventBus, PublishResult, RetryPolicy, signals
from tests.clocks import TestClock


class SignalledOrder(Event):
    order_id: str = "o1"


class SignalledChild(Event):
    n: int = 0


class SignalledOrphan(Event):
    pass


class FlakyError(Exception):
    pass


class FatalError(Exception):
    pass


SIGNAL_NAMES = [
    "event_published",
    "handler_succeeded",
    "handler_failed",
    "handler_retrying",
    "event_dead_lettered",
    "event_unhandled",
    "dead_letter_redriven",
]

MODES = ["sync", "async", "concurrent"]

Record: t.TypeAlias = tuple[str, dict[str, t.Any]]


def test_every_signal_is_public_and_named() -> None:
    assert sorted(signals.__all__) == sorted(SIGNAL_NAMES)
    for name in SIGNAL_NAMES:
        signal = getattr(signals, name)
        assert isinstance(signal, NamedSignal)
        assert signal.name == name.replace("_", "-")


@contextlib.contextmanager
def recording(bus: EventBus, log: list[Record] | None = None) -> c.Iterator[list[Record]]:
    """Record every signal sent by ``bus`` as (signal name, kwargs), in order."""
    records: list[Record] = log if log is not None else []

    def receiver_for(name: str) -> c.Callable[..., None]:
        def receiver(sender: object, /, **kwargs: t.Any) -> None:
            assert sender is bus
            records.append((name, kwargs))

        return receiver

    with contextlib.ExitStack() as stack:
        for name in SIGNAL_NAMES:
            signal: NamedSignal = getattr(signals, name)
            stack.enter_context(signal.connected_to(receiver_for(name), sender=bus))
        yield records


def only(records: list[Record], *names: str) -> list[Record]:
    return [record for record in records if record[0] in names]


def sleeps() -> tuple[
    list[float], c.Callable[[float], None], c.Callable[[float], t.Awaitable[None]]
]:
    waited: list[float] = []

    def sleep(delay: float) -> None:
        waited.append(delay)

    async def async_sleep(delay: float) -> None:
        waited.append(delay)

    return waited, sleep, async_sleep


def make_bus(mode: str, **options: t.Any) -> tuple[EventBus, list[float]]:
    waited, sleep, async_sleep = sleeps()
    bus = EventBus(
        clock=TestClock(sleep=sleep, sleep_async=async_sleep),
        concurrent=mode == "concurrent",
        **options,
    )
    return bus, waited


def publish(bus: EventBus, event: Event, mode: str) -> PublishResult:
    if mode == "sync":
        return bus.publish(event)
    return asyncio.run(bus.publish_async(event))


def redrive(bus: EventBus, letter: DeadLetter, mode: str) -> PublishResult:
    if mode == "sync":
        return bus.redrive(letter)
    return asyncio.run(bus.redrive_async(letter))


def name_of(handler: c.Callable[..., object]) -> str:
    return f"{handler.__module__}.{handler.__qualname__}"


def flaky(
    calls: list[int], errors: t.Sequence[Exception], *, use_async: bool
) -> c.Callable[[SignalledOrder], object]:
    """Raises ``errors`` in turn, one per attempt, then succeeds."""

    def body() -> None:
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]

    if use_async:

        async def flaky_async(event: SignalledOrder) -> None:
            await asyncio.sleep(0)
            body()

        return flaky_async

    def flaky_sync(event: SignalledOrder) -> None:
        body()

    return flaky_sync


HANDLER_KINDS = pytest.mark.parametrize("use_async", [False, True], ids=["sync_def", "async_def"])


# -- event_published ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_event_published_for_top_level_and_queued_events(mode: str) -> None:
    bus, _ = make_bus(mode)
    order: list[str] = []

    @bus.subscribe
    def parent(event: SignalledOrder) -> None:
        order.append("parent starts")
        bus.publish(SignalledChild(n=1))
        order.append("parent ends")

    @bus.subscribe
    async def child(event: SignalledChild) -> None:
        order.append("child")

    root = SignalledOrder()

    def on_published(sender: EventBus, *, event: Event, publisher: str | None) -> None:
        order.append(f"published {type(event).__name__}")
        published.append(event)

    published: list[Event] = []
    with signals.event_published.connected_to(on_published, sender=bus):
        result = publish(bus, root, mode)
    assert result.ok
    assert order == [
        "published SignalledOrder",  # before the handlers
        "parent starts",
        "published SignalledChild",  # when queued, not when dispatched
        "parent ends",
        "child",
    ]
    sent_root, sent_child = published
    assert sent_root is root
    assert isinstance(sent_child, SignalledChild)
    # the queued event is sent as delivered: with its cascade ids set
    assert sent_child.causation_id == root.event_id
    assert sent_child.correlation_id == root.event_id


@pytest.mark.parametrize("mode", MODES)
def test_event_published_kwargs_exactly(mode: str) -> None:
    bus, _ = make_bus(mode)
    event = SignalledOrphan()
    with recording(bus) as records:
        publish(bus, event, mode)
    assert records[0] == ("event_published", {"event": event, "publisher": None})


class SignalledLate(Event):
    pass


def test_event_published_once_for_a_publish_that_races_the_end_of_its_cascade() -> None:
    """One publish call, one event_published, describing the event as it is dispatched.

    A thread started by a handler publishes while the cascade is ending: the bus
    must not send event_published for the queued copy it then takes back and
    publishes top-level (a second event_published).
    """
    bus = EventBus()
    in_receiver = threading.Event()
    cascade_over = threading.Event()
    published: list[Event] = []
    delivered: list[Event] = []
    threads: list[threading.Thread] = []

    def on_published(sender: EventBus, *, event: Event, publisher: str | None) -> None:
        published.append(event)
        if isinstance(event, SignalledLate) and not in_receiver.is_set():
            in_receiver.set()  # the thread is inside publish, past the closed check
            assert cascade_over.wait(10)

    @bus.subscribe
    def starts_a_thread(event: SignalledOrder) -> None:
        context = contextvars.copy_context()  # the thread publishes as if from this handler
        thread = threading.Thread(target=context.run, args=(bus.publish, SignalledLate()))
        threads.append(thread)
        thread.start()
        assert in_receiver.wait(10)

    @bus.subscribe
    def late(event: SignalledLate) -> None:
        delivered.append(event)

    with signals.event_published.connected_to(on_published, sender=bus):
        bus.publish(SignalledOrder())
        cascade_over.set()
        threads[0].join(10)
    assert not threads[0].is_alive()
    assert len(delivered) == 1
    assert [e for e in published if isinstance(e, SignalledLate)] == delivered


# -- handler_succeeded ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@HANDLER_KINDS
def test_handler_succeeded_first_time(mode: str, use_async: bool) -> None:
    bus, _ = make_bus(mode)
    handler = flaky([], [], use_async=use_async)
    bus.subscribe(SignalledOrder)(handler)
    event = SignalledOrder()
    with recording(bus) as records:
        publish(bus, event, mode)
    assert only(records, "handler_succeeded", "handler_failed") == [
        ("handler_succeeded", {"event": event, "handler": name_of(handler), "attempts": 1})
    ]


@pytest.mark.parametrize("mode", MODES)
@HANDLER_KINDS
def test_handler_succeeded_after_retries_counts_attempts(mode: str, use_async: bool) -> None:
    bus, _ = make_bus(mode)
    handler = flaky([], [FlakyError("1"), FlakyError("2")], use_async=use_async)
    bus.subscribe(SignalledOrder, retry=RetryPolicy(max_attempts=5))(handler)
    event = SignalledOrder()
    with recording(bus) as records:
        publish(bus, event, mode)
    assert only(records, "handler_succeeded") == [
        ("handler_succeeded", {"event": event, "handler": name_of(handler), "attempts": 3})
    ]


@pytest.mark.parametrize("mode", MODES)
def test_handler_succeeded_once_per_handler(mode: str) -> None:
    bus, _ = make_bus(mode)
    first = flaky([], [], use_async=False)
    second = flaky([], [], use_async=True)
    bus.subscribe(SignalledOrder, priority=1)(first)
    bus.subscribe(SignalledOrder, timeout=60)(second)
    with recording(bus) as records:
        publish(bus, SignalledOrder(), mode)
    names = sorted(kwargs["handler"] for _, kwargs in only(records, "handler_succeeded"))
    assert names == sorted([name_of(first), name_of(second)])


# -- handler_failed, handler_retrying, event_dead_lettered --------------------------------------


@pytest.mark.parametrize("mode", MODES)
@HANDLER_KINDS
def test_failed_retrying_and_dead_lettered_in_order(mode: str, use_async: bool) -> None:
    bus, waited = make_bus(mode)
    errors = [FlakyError(f"attempt {i}") for i in range(1, 9)]
    handler = flaky([], errors, use_async=use_async)
    policy = RetryPolicy(max_attempts=3, initial_delay=0.25, backoff=4.0)
    bus.subscribe(SignalledOrder, retry=policy)(handler)
    event = SignalledOrder()
    name = name_of(handler)
    with recording(bus) as records:
        result = publish(bus, event, mode)
    [letter] = result.dead_letters
    common = {"event": event, "handler": name}
    assert records == [
        ("event_published", {"event": event, "publisher": None}),
        ("handler_failed", {**common, "attempt": 1, "error": errors[0], "final": False}),
        ("handler_retrying", {**common, "attempt": 1, "error": errors[0], "delay": 0.25}),
        ("handler_failed", {**common, "attempt": 2, "error": errors[1], "final": False}),
        ("handler_retrying", {**common, "attempt": 2, "error": errors[1], "delay": 1.0}),
        ("handler_failed", {**common, "attempt": 3, "error": errors[2], "final": True}),
        ("event_dead_lettered", {"dead_letter": letter}),
    ]
    # delay= is what the bus then waits
    assert waited == [0.25, 1.0]


@pytest.mark.parametrize("mode", MODES)
@HANDLER_KINDS
def test_single_attempt_failure_is_final_at_once(mode: str, use_async: bool) -> None:
    bus, _ = make_bus(mode)
    error = FlakyError("only")
    handler = flaky([], [error], use_async=use_async)
    bus.subscribe(SignalledOrder)(handler)
    event = SignalledOrder()
    with recording(bus) as records:
        result = publish(bus, event, mode)
    [letter] = result.dead_letters
    assert only(records, "handler_failed", "handler_retrying", "event_dead_lettered") == [
        (
            "handler_failed",
            {
                "event": event,
                "handler": name_of(handler),
                "attempt": 1,
                "error": error,
                "final": True,
            },
        ),
        ("event_dead_lettered", {"dead_letter": letter}),
    ]


@pytest.mark.parametrize("mode", MODES)
def test_give_up_error_is_final_without_retrying(mode: str) -> None:
    bus, waited = make_bus(mode)
    errors = [FlakyError("1"), FatalError("2")]
    handler = flaky([], errors, use_async=True)
    policy = RetryPolicy(max_attempts=5, initial_delay=1.0, give_up_on=(FatalError,))
    bus.subscribe(SignalledOrder, retry=policy)(handler)
    with recording(bus) as records:
        publish(bus, SignalledOrder(), mode)
    failed = [(k["attempt"], k["error"], k["final"]) for _, k in only(records, "handler_failed")]
    assert failed == [(1, errors[0], False), (2, errors[1], True)]
    assert [k["attempt"] for _, k in only(records, "handler_retrying")] == [1]
    assert len(only(records, "event_dead_lettered")) == 1
    assert waited == [1.0]


@pytest.mark.parametrize("mode", MODES)
def test_timeout_attempts_are_reported_as_failures(mode: str) -> None:
    bus, _ = make_bus(mode)

    async def stuck(event: SignalledOrder) -> None:
        await asyncio.Event().wait()

    bus.subscribe(SignalledOrder, timeout=0, retry=RetryPolicy(max_attempts=2))(stuck)
    with recording(bus) as records:
        publish(bus, SignalledOrder(), mode)
    failed = only(records, "handler_failed")
    assert [k["final"] for _, k in failed] == [False, True]
    assert all(type(k["error"]).__name__ == "HandlerTimeoutError" for _, k in failed)


@pytest.mark.parametrize("mode", MODES)
def test_event_dead_lettered_once_per_pair_and_after_storing(mode: str) -> None:
    bus, _ = make_bus(mode)
    stored_when_sent: list[bool] = []

    def on_letter(sender: EventBus, *, dead_letter: DeadLetter) -> None:
        stored_when_sent.append(bus.dead_letters.get(dead_letter.id) is dead_letter)

    first = flaky([], [FlakyError("a")], use_async=False)
    second = flaky([], [FlakyError("b")] * 3, use_async=True)
    bus.subscribe(SignalledOrder, priority=1)(first)
    bus.subscribe(SignalledOrder, retry=RetryPolicy(max_attempts=3))(second)
    with (
        recording(bus) as records,
        signals.event_dead_lettered.connected_to(on_letter, sender=bus),
    ):
        result = publish(bus, SignalledOrder(), mode)
    sent = [k["dead_letter"] for _, k in only(records, "event_dead_lettered")]
    assert sorted(letter.handler for letter in sent) == sorted([name_of(first), name_of(second)])
    assert sorted(sent, key=lambda x: x.handler) == sorted(
        result.dead_letters, key=lambda x: x.handler
    )
    assert stored_when_sent == [True, True]


# -- event_unhandled --------------------------------------------------------------------------


@pytest.mark.parametrize("report", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_event_unhandled(mode: str, report: bool) -> None:
    bus, _ = make_bus(mode, report_unhandled=report)
    event = SignalledOrphan()
    with recording(bus) as records:
        result = publish(bus, event, mode)
    expected: list[Record] = [
        ("event_published", {"event": event, "publisher": None}),
        ("event_unhandled", {"event": event}),
    ]
    if report:
        expected.append(("event_dead_lettered", {"dead_letter": result.dead_letters[0]}))
    assert records == expected


@pytest.mark.parametrize("mode", MODES)
def test_event_unhandled_for_a_queued_event(mode: str) -> None:
    bus, _ = make_bus(mode)

    @bus.subscribe
    def parent(event: SignalledOrder) -> None:
        bus.publish(SignalledOrphan())

    with recording(bus) as records:
        publish(bus, SignalledOrder(), mode)
    [(_, kwargs)] = only(records, "event_unhandled")
    assert isinstance(kwargs["event"], SignalledOrphan)
    assert kwargs["event"].causation_id is not None


def test_handled_event_is_not_unhandled() -> None:
    bus, _ = make_bus("sync")
    bus.subscribe(SignalledOrder)(flaky([], [FlakyError("x")], use_async=False))
    with recording(bus) as records:
        bus.publish(SignalledOrder())
    assert only(records, "event_unhandled") == []


# -- dead_letter_redriven ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_dead_letter_redriven_ok(mode: str) -> None:
    bus, _ = make_bus(mode)
    handler = flaky([], [FlakyError("once")], use_async=True)
    bus.subscribe(SignalledOrder)(handler)
    [letter] = publish(bus, SignalledOrder(), mode).dead_letters
    with recording(bus) as records:
        redrive(bus, letter, mode)
    assert records == [
        ("handler_succeeded", {"event": letter.event, "handler": letter.handler, "attempts": 1}),
        ("dead_letter_redriven", {"dead_letter": letter, "ok": True}),
    ]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_dead_letter_redriven_failed_again(mode: str) -> None:
    bus, _ = make_bus(mode)
    errors = [FlakyError(str(i)) for i in range(9)]
    handler = flaky([], errors, use_async=False)
    bus.subscribe(SignalledOrder, retry=RetryPolicy(max_attempts=2))(handler)
    [letter] = publish(bus, SignalledOrder(), mode).dead_letters
    with recording(bus) as records:
        result = redrive(bus, letter, mode)
    [again] = result.dead_letters
    assert [name for name, _ in records] == [
        "handler_failed",
        "handler_retrying",
        "handler_failed",
        "event_dead_lettered",
        "dead_letter_redriven",
    ]
    # attempts are numbered within the redrive
    assert [k["attempt"] for _, k in only(records, "handler_failed")] == [1, 2]
    assert records[-2] == ("event_dead_lettered", {"dead_letter": again})
    # dead_letter= is the letter as it was before the redrive
    assert records[-1] == ("dead_letter_redriven", {"dead_letter": letter, "ok": False})
    assert (letter.attempts, again.attempts) == (2, 4)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_redrive_all_sends_one_redriven_per_letter(mode: str) -> None:
    bus, _ = make_bus(mode)
    bus.subscribe(SignalledOrder)(flaky([], [FlakyError("a"), FlakyError("b")], use_async=True))
    first = publish(bus, SignalledOrder(order_id="1"), mode).dead_letters[0]
    second = publish(bus, SignalledOrder(order_id="2"), mode).dead_letters[0]
    with recording(bus) as records:
        if mode == "sync":
            bus.redrive_all()
        else:
            asyncio.run(bus.redrive_all_async())
    assert only(records, "dead_letter_redriven") == [
        ("dead_letter_redriven", {"dead_letter": first, "ok": True}),
        ("dead_letter_redriven", {"dead_letter": second, "ok": True}),
    ]


# -- receivers that misbehave -------------------------------------------------------------------


def exercise_every_signal(bus: EventBus, mode: str) -> tuple[list[str], list[PublishResult]]:
    """Publish and redrive so that every signal is sent; return what ran and the results."""
    ran: list[str] = []
    calls: list[int] = []

    @bus.subscribe(retry=RetryPolicy(max_attempts=2))
    def retried(event: SignalledOrder) -> None:
        calls.append(1)
        ran.append(f"retried {len(calls)}")
        if len(calls) <= 3:
            raise FlakyError(str(len(calls)))

    @bus.subscribe(priority=-1)
    def steady(event: SignalledOrder) -> None:
        ran.append("steady")
        bus.publish(SignalledChild())

    @bus.subscribe
    async def child(event: SignalledChild) -> None:
        ran.append("child")

    results = [publish(bus, SignalledOrder(), mode), publish(bus, SignalledOrphan(), mode)]
    [letter] = results[0].dead_letters
    results.append(redrive(bus, letter, "sync" if mode == "sync" else "async"))
    return ran, results


def check_dispatch_went_on(ran: list[str], results: list[PublishResult], bus: EventBus) -> None:
    assert ran == ["retried 1", "retried 2", "steady", "child", "retried 3", "retried 4"]
    published, unhandled, redriven = results
    assert [letter.attempts for letter in published.dead_letters] == [2]
    assert unhandled.ok
    assert redriven.ok
    assert len(bus.dead_letters) == 0


@pytest.mark.parametrize("mode", MODES)
def test_raising_receiver_is_logged_and_dispatch_goes_on(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    bus, _ = make_bus(mode)
    called: list[str] = []

    def broken_receiver(sender: EventBus, **kwargs: object) -> None:
        called.append("broken")
        raise RuntimeError("receiver bug")

    def later_receiver(sender: EventBus, **kwargs: object) -> None:
        called.append("later")

    with contextlib.ExitStack() as stack:
        for name in SIGNAL_NAMES:
            signal: NamedSignal = getattr(signals, name)
            stack.enter_context(signal.connected_to(broken_receiver, sender=bus))
            stack.enter_context(signal.connected_to(later_receiver, sender=bus))
        with caplog.at_level(logging.ERROR, logger="eventbus"):
            ran, results = exercise_every_signal(bus, mode)
    check_dispatch_went_on(ran, results, bus)
    # a receiver's failure does not stop the other receivers of the same signal
    assert called.count("broken") == called.count("later") > 0
    receiver_logs = [r for r in caplog.records if "signal receiver" in r.getMessage()]
    assert receiver_logs
    for record in receiver_logs:
        assert record.name == "eventbus"
        assert record.levelno == logging.ERROR
        assert name_of(broken_receiver) in record.getMessage()
        assert record.exc_info is not None
        assert isinstance(record.exc_info[1], RuntimeError)
    logged_signals = {
        name
        for name in SIGNAL_NAMES
        for r in receiver_logs
        if name.replace("_", "-") in r.getMessage()
    }
    assert logged_signals == set(SIGNAL_NAMES)


@pytest.mark.parametrize("mode", MODES)
def test_async_receiver_is_reported_and_its_coroutine_closed(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    bus, _ = make_bus(mode)
    awaited: list[str] = []
    coroutines: list[c.Coroutine[t.Any, t.Any, None]] = []

    async def async_receiver(sender: EventBus, **kwargs: object) -> None:
        awaited.append("ran")  # never: eventbus calls receivers synchronously

    async def body() -> None:
        awaited.append("body ran")

    def returns_coroutine(sender: EventBus, **kwargs: object) -> object:
        coroutine = body()
        coroutines.append(coroutine)
        return coroutine

    with (
        warnings.catch_warnings(record=True) as caught,
        signals.handler_succeeded.connected_to(async_receiver, sender=bus),
        signals.handler_succeeded.connected_to(returns_coroutine, sender=bus),
        caplog.at_level(logging.ERROR, logger="eventbus"),
    ):
        warnings.simplefilter("always")
        bus.subscribe(SignalledOrder)(flaky([], [], use_async=False))
        result = publish(bus, SignalledOrder(), mode)
        gc.collect()
    assert result.ok
    assert awaited == []
    assert [inspect.getcoroutinestate(co) for co in coroutines] == [inspect.CORO_CLOSED]
    assert not [w for w in caught if "never awaited" in str(w.message)]
    messages = [r.getMessage() for r in caplog.records if r.name == "eventbus"]
    assert any(name_of(async_receiver) in m for m in messages)
    assert any(name_of(returns_coroutine) in m for m in messages)
    errors = [r.exc_info[1] for r in caplog.records if r.exc_info]
    assert all(isinstance(e, TypeError) for e in errors)
    assert len(errors) == 2


# -- sender filtering -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_receiver_for_another_bus_does_not_fire(mode: str) -> None:
    bus, _ = make_bus(mode)
    other, _ = make_bus(mode)
    bus.subscribe(SignalledOrder)(flaky([], [FlakyError("x")], use_async=False))
    with recording(other) as for_other, recording(bus) as for_bus:
        publish(bus, SignalledOrder(), mode)
    assert for_other == []
    assert [name for name, _ in for_bus] == [
        "event_published",
        "handler_failed",
        "event_dead_lettered",
    ]


@pytest.mark.parametrize("mode", MODES)
def test_receiver_without_sender_hears_every_bus(mode: str) -> None:
    first, _ = make_bus(mode)
    second, _ = make_bus(mode)
    senders: list[object] = []

    def anywhere(sender: object, **kwargs: object) -> None:
        senders.append(sender)

    with signals.event_published.connected_to(anywhere):
        publish(first, SignalledOrphan(), mode)
        publish(second, SignalledOrphan(), mode)
    assert senders == [first, second]


def test_disconnected_receiver_no_longer_fires() -> None:
    bus, _ = make_bus("sync")
    heard: list[object] = []

    def receiver(sender: object, **kwargs: object) -> None:
        heard.append(kwargs["event"])

    signals.event_published.connect(receiver, sender=bus)
    try:
        bus.publish(SignalledOrphan())
    finally:
        signals.event_published.disconnect(receiver, sender=bus)
    bus.publish(SignalledOrphan())
    assert len(heard) == 1


@pytest.mark.parametrize("mode", MODES)
def test_event_published_names_the_handler_that_published_it(mode: str) -> None:
    bus, _ = make_bus(mode)

    @bus.subscribe
    def sync_parent(event: SignalledOrder) -> None:
        bus.publish(SignalledChild(n=1))

    @bus.subscribe
    async def async_parent(event: SignalledOrder) -> None:
        await bus.publish_async(SignalledChild(n=2))

    @bus.subscribe
    def child(event: SignalledChild) -> None:
        if event.n == 1:
            bus.publish(SignalledOrphan())

    seen: list[tuple[str, str | None]] = []

    def on_published(sender: EventBus, *, event: Event, publisher: str | None) -> None:
        seen.append((type(event).__name__, publisher and publisher.rsplit(".", 1)[-1]))

    with signals.event_published.connected_to(on_published, sender=bus):
        publish(bus, SignalledOrder(), mode)
    assert sorted(seen) == [
        ("SignalledChild", "async_parent"),
        ("SignalledChild", "sync_parent"),
        ("SignalledOrder", None),
        ("SignalledOrphan", "child"),
    ]


def test_receivers_are_called_in_the_order_they_were_connected() -> None:
    """blinker keeps receivers in a set; eventbus calls them in connection order."""
    bus = EventBus()
    called: list[int] = []

    def make(n: int) -> c.Callable[..., None]:
        def receiver(sender: EventBus, **kwargs: object) -> None:
            called.append(n)

        return receiver

    receivers = [make(n) for n in range(30)]
    for n, receiver in enumerate(receivers):
        # half for this bus, half for any sender: both kinds interleave in connection order
        signals.event_published.connect(receiver, sender=bus if n % 2 else blinker.ANY)
    try:
        bus.publish(SignalledOrphan())
    finally:
        for receiver in receivers:
            signals.event_published.disconnect(receiver)
    assert called == list(range(30))


def test_an_async_handler_that_cannot_run_still_reports_its_final_failure() -> None:
    """A child with an async handler, queued by sync publish inside a running loop."""
    bus = EventBus()
    failures: list[tuple[int, bool, str]] = []

    @bus.subscribe
    def parent(event: SignalledOrder) -> None:
        bus.publish(SignalledChild(n=1))

    @bus.subscribe
    async def child(event: SignalledChild) -> None: ...

    def on_failed(
        sender: EventBus, *, attempt: int, final: bool, error: Exception, **_: object
    ) -> None:
        failures.append((attempt, final, type(error).__name__))

    async def main() -> PublishResult:
        return bus.publish(SignalledOrder())  # sync publish, loop running, sync root handler

    with signals.handler_failed.connected_to(on_failed, sender=bus):
        result = asyncio.run(main())
    [letter] = result.dead_letters
    assert letter.attempts == 0
    assert failures == [(0, True, "SyncPublishError")]
