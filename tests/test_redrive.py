"""Redrive: running the handler of a dead letter again, one letter or many, sync and async.

Every test runs on both paths (``redrive``/``redrive_all`` and their
``_async`` twins). Waits are injected and move a fake clock, so nothing
sleeps and failure times are exact.
"""

from __future__ import annotations

import asyncio
import collections.abc as c
import dataclasses
import logging
import re
import typing as t
from datetime import UTC, datetime, timedelta

import pytest

import eventbus.redrive
from eventbus import (
    NO_HANDLER,
    DeadLetter,
    DeadLetterStore,
    Event,
    EventBus,
    InMemoryDeadLetterStore,
    PublishResult,
    RedriveError,
    RedriveOutcome,
    RetryPolicy,
    SyncPublishError,
    UndefinedEvent,
    signals,
)
from tests.clocks import TestClock


class RedriveOrder(Event):
    order_id: str = "o1"


class RedriveSpecialOrder(RedriveOrder):
    pass


class RedriveShipment(Event):
    order_id: str = "o1"


class RedriveInvoice(Event):
    order_id: str = "o1"


class Boom(Exception):
    pass


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2031, 5, 1, 8, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Harness:
    """A bus with injected waits that move its clock, and the delays they were asked for."""

    def __init__(self, *, store: DeadLetterStore | None = None) -> None:
        self.clock = FakeClock()
        self.waits: list[float] = []
        self.on_wait: c.Callable[[], None] | None = None
        self.bus = EventBus(
            clock=TestClock(sleep=self.sleep, sleep_async=self.async_sleep, now=self.clock),
            dead_letters=store,
        )

    def sleep(self, delay: float) -> None:
        self.waits.append(delay)
        self.clock.advance(delay)
        if self.on_wait is not None:
            self.on_wait()

    async def async_sleep(self, delay: float) -> None:
        self.sleep(delay)


class Switch:
    """A handler body that fails while ``failing`` is True, counting its calls."""

    def __init__(
        self, failing: bool = True, *, label: str = "", log: list[str] | None = None
    ) -> None:
        self.failing = failing
        self.events: list[Event] = []
        self.label = label
        self.log = log

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        if self.log is not None:
            self.log.append(self.label)
        if self.failing:
            raise Boom(f"call {len(self.events)}")

    @property
    def calls(self) -> int:
        return len(self.events)


MODES = ["sync", "async"]
HANDLER_KINDS = pytest.mark.parametrize("use_async", [False, True], ids=["sync_def", "async_def"])


def publish(bus: EventBus, event: Event, mode: str) -> PublishResult:
    if mode == "sync":
        return bus.publish(event)
    return asyncio.run(bus.publish_async(event))


def redrive(
    bus: EventBus, letter: DeadLetter, mode: str, *, store: DeadLetterStore | None = None
) -> PublishResult:
    if mode == "sync":
        return bus.redrive(letter, store=store)
    return asyncio.run(bus.redrive_async(letter, store=store))


def redrive_all(bus: EventBus, mode: str, **filters: t.Any) -> list[RedriveOutcome]:
    if mode == "sync":
        return bus.redrive_all(**filters)
    return asyncio.run(bus.redrive_all_async(**filters))


def subscribe(
    bus: EventBus,
    body: Switch,
    event_type: type[Event] = RedriveOrder,
    *,
    use_async: bool = False,
    name: str = "handler",
    priority: int = 0,
    retry: RetryPolicy | None = None,
) -> str:
    """Subscribe a handler calling ``body``, named ``name``; return its qualified name."""
    if use_async:

        async def handler_async(event: Event) -> None:
            await asyncio.sleep(0)
            body(event)

        handler: c.Callable[[Event], object] = handler_async
    else:

        def handler_sync(event: Event) -> None:
            body(event)

        handler = handler_sync
    handler.__qualname__ = name
    bus.subscribe(event_type, priority=priority, retry=retry)(handler)
    return f"{__name__}.{name}"


# -- one letter -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@HANDLER_KINDS
def test_redrive_success_removes_the_letter(mode: str, use_async: bool) -> None:
    h = Harness()
    body = Switch()
    name = subscribe(h.bus, body, use_async=use_async)
    event = RedriveOrder(order_id="o-7")
    [letter] = publish(h.bus, event, mode).dead_letters
    assert letter.handler == name
    body.failing = False
    result = redrive(h.bus, letter, mode)
    assert result.ok
    assert result.dead_letters == []
    assert result.event == event
    assert body.events == [event, event]  # the very same event, same event_id
    assert len(h.bus.dead_letters) == 0


@pytest.mark.parametrize("mode", MODES)
@HANDLER_KINDS
def test_redrive_goes_through_the_retry_policy(mode: str, use_async: bool) -> None:
    h = Harness()
    body = Switch()
    policy = RetryPolicy(max_attempts=3, initial_delay=1.0)
    subscribe(h.bus, body, use_async=use_async, retry=policy)
    [letter] = publish(h.bus, RedriveOrder(), mode).dead_letters
    assert (letter.attempts, body.calls) == (3, 3)
    assert h.waits == [1.0, 2.0]
    h.waits.clear()

    def heal() -> None:  # the redrive's first attempt fails, the second succeeds
        body.failing = False

    h.on_wait = heal
    result = redrive(h.bus, letter, mode)
    assert result.ok
    assert body.calls == 5
    assert h.waits == [1.0]  # the policy's schedule starts again
    assert len(h.bus.dead_letters) == 0


@pytest.mark.parametrize("mode", MODES)
@HANDLER_KINDS
def test_redrive_failing_again_updates_the_same_letter(mode: str, use_async: bool) -> None:
    h = Harness()
    body = Switch()
    start = h.clock.now
    policy = RetryPolicy(max_attempts=3, initial_delay=5.0)
    subscribe(h.bus, body, use_async=use_async, retry=policy)
    [letter] = publish(h.bus, RedriveOrder(), mode).dead_letters
    assert (letter.first_failed_at, letter.failed_at) == (start, start + timedelta(seconds=15))
    h.clock.advance(3600)
    result = redrive(h.bus, letter, mode)
    assert not result.ok
    [again] = result.dead_letters
    assert again.id == letter.id
    assert again.attempts == 6  # 3 before, plus the redrive's 3
    assert again.error_message == "call 6"
    assert again.first_failed_at == start
    assert again.failed_at == start + timedelta(seconds=15 + 3600 + 15)
    assert again.event == letter.event
    assert (again.handler, again.event_type) == (letter.handler, letter.event_type)
    assert list(h.bus.dead_letters) == [again]
    assert h.bus.dead_letters.get(letter.id) == again
    # and once more: the count keeps adding up
    [third] = redrive(h.bus, again, mode).dead_letters
    assert (third.id, third.attempts, third.first_failed_at) == (letter.id, 9, start)
    assert len(h.bus.dead_letters) == 1


@pytest.mark.parametrize("mode", MODES)
def test_redrive_does_not_rerun_the_other_handlers(mode: str) -> None:
    h = Harness()
    failing, steady, later = Switch(), Switch(failing=False), Switch(failing=False)
    subscribe(h.bus, steady, name="steady", priority=2)
    subscribe(h.bus, failing, name="failing", priority=1)
    subscribe(h.bus, later, name="later", use_async=True)
    [letter] = publish(h.bus, RedriveOrder(), mode).dead_letters
    failing.failing = False
    assert redrive(h.bus, letter, mode).ok
    assert (steady.calls, failing.calls, later.calls) == (1, 2, 1)


@pytest.mark.parametrize("mode", MODES)
def test_redrive_uses_the_subscription_as_it_is_now(mode: str) -> None:
    h = Harness()
    body = Switch()
    subscribe(h.bus, body, name="evolving")
    [letter] = publish(h.bus, RedriveOrder(), mode).dead_letters
    # re-subscribed under the same name, now with retries
    h.bus.unsubscribe(h.bus.subscriptions[0].handler)
    subscribe(h.bus, body, name="evolving", retry=RetryPolicy(max_attempts=4))
    [again] = redrive(h.bus, letter, mode).dead_letters
    assert again.attempts == 1 + 4
    assert body.calls == 5


@pytest.mark.parametrize("mode", MODES)
def test_redrive_finds_a_handler_subscribed_to_a_base_class(mode: str) -> None:
    h = Harness()
    body = Switch()
    subscribe(h.bus, body, RedriveOrder, name="for_all_orders")
    event = RedriveSpecialOrder()
    [letter] = publish(h.bus, event, mode).dead_letters
    body.failing = False
    assert redrive(h.bus, letter, mode).ok
    assert body.events == [event, event]


@pytest.mark.parametrize("mode", MODES)
def test_redrive_of_a_timed_out_handler(mode: str) -> None:
    h = Harness()
    stuck = [True]

    async def slow(event: RedriveOrder) -> None:
        if stuck[0]:
            await asyncio.Event().wait()  # timeout=0 expires here

    h.bus.subscribe(RedriveOrder, timeout=0)(slow)
    [letter] = publish(h.bus, RedriveOrder(), mode).dead_letters
    assert letter.error_type == "eventbus.errors.HandlerTimeoutError"
    [again] = redrive(h.bus, letter, mode).dead_letters
    assert (again.id, again.attempts) == (letter.id, 2)
    stuck[0] = False
    assert redrive(h.bus, again, mode).ok
    assert len(h.bus.dead_letters) == 0


# -- cascades ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_events_published_by_the_redriven_handler_cascade(mode: str) -> None:
    h = Harness()
    body = Switch()
    shipments: list[RedriveShipment] = []

    @h.bus.subscribe
    def ship(event: RedriveOrder) -> None:
        body(event)
        h.bus.publish(RedriveShipment(order_id=event.order_id))

    @h.bus.subscribe
    async def on_shipment(event: RedriveShipment) -> None:
        shipments.append(event)

    root = RedriveOrder(order_id="o-9")
    [letter] = publish(h.bus, root, mode).dead_letters
    assert shipments == []
    body.failing = False
    result = redrive(h.bus, letter, mode)
    assert result.ok
    [shipment] = shipments
    assert shipment.order_id == "o-9"
    assert shipment.causation_id == root.event_id
    assert shipment.correlation_id == root.event_id


@pytest.mark.parametrize("mode", MODES)
def test_failure_in_the_cascade_of_a_redrive_is_a_new_letter(mode: str) -> None:
    h = Harness()
    body = Switch()

    @h.bus.subscribe
    def ship(event: RedriveOrder) -> None:
        body(event)
        h.bus.publish(RedriveShipment())

    @h.bus.subscribe
    def on_shipment(event: RedriveShipment) -> None:
        raise Boom("shipment failed")

    [letter] = publish(h.bus, RedriveOrder(), mode).dead_letters
    body.failing = False
    result = redrive(h.bus, letter, mode)
    # the redriven handler succeeded: its letter is gone; the child's failure is a new one
    [child_letter] = result.dead_letters
    assert child_letter.id != letter.id
    assert isinstance(child_letter.event, RedriveShipment)
    assert not result.ok
    assert list(h.bus.dead_letters) == [child_letter]


# -- which store ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_redrive_settles_the_letter_in_the_store_given(mode: str) -> None:
    archive = InMemoryDeadLetterStore()
    producer = Harness(store=archive)
    body = Switch()
    name = subscribe(producer.bus, body, name="archived")
    [first] = publish(producer.bus, RedriveOrder(order_id="1"), mode).dead_letters
    [second] = publish(producer.bus, RedriveOrder(order_id="2"), mode).dead_letters
    # another bus (another process, say) redrives from the archive
    worker = Harness()
    assert subscribe(worker.bus, body, name="archived") == name
    worker.clock.advance(60)
    [again] = redrive(worker.bus, first, mode, store=archive).dead_letters
    assert again.id == first.id
    assert again.attempts == 2
    assert again.failed_at == worker.clock.now
    assert list(archive) == [again, second]
    assert len(worker.bus.dead_letters) == 0
    body.failing = False
    assert redrive(worker.bus, again, mode, store=archive).ok
    assert list(archive) == [second]
    assert len(worker.bus.dead_letters) == 0


@pytest.mark.parametrize("mode", MODES)
def test_every_letter_a_redrive_makes_goes_to_the_store_given(mode: str) -> None:
    archive = InMemoryDeadLetterStore()
    producer = Harness(store=archive)
    producer.bus.report_unhandled = True
    body = Switch()
    name = subscribe(producer.bus, body, name="archived_ship")
    [failed] = publish(producer.bus, RedriveOrder(), mode).dead_letters
    [unhandled] = publish(producer.bus, RedriveNobodyListens(), mode).dead_letters
    worker = Harness()  # its own store stays empty: the letters belong to the archive

    @worker.bus.subscribe(name=name)
    def ship(event: RedriveOrder) -> None:
        worker.bus.publish(RedriveShipment(order_id=event.order_id))

    @worker.bus.subscribe
    def on_shipment(event: RedriveShipment) -> None:
        raise Boom("shipment failed")

    @worker.bus.subscribe
    def now_listening(event: RedriveNobodyListens) -> None:
        raise Boom("new handler failed")

    [child] = redrive(worker.bus, failed, mode, store=archive).dead_letters
    assert child.handler == f"{__name__}.{on_shipment.__qualname__}"
    [replacement] = redrive(worker.bus, unhandled, mode, store=archive).dead_letters
    assert replacement.handler == f"{__name__}.{now_listening.__qualname__}"
    assert list(archive) == [child, replacement]
    assert len(worker.bus.dead_letters) == 0


@pytest.mark.parametrize("mode", MODES)
def test_redrive_all_skips_a_letter_gone_meanwhile_and_goes_on(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    h = Harness()
    first_body, second_body = Switch(), Switch()
    subscribe(h.bus, first_body, name="first", priority=1)
    subscribe(h.bus, second_body, name="second")
    [first, second] = publish(h.bus, RedriveOrder(), mode).dead_letters
    first_body.failing = second_body.failing = False

    def purge_second(sender: EventBus, *, dead_letter: DeadLetter, **kwargs: object) -> None:
        if dead_letter.id == first.id:  # another process purges `second` meanwhile
            h.bus.dead_letters.remove(second)

    signals.dead_letter_redriven.connect(purge_second, sender=h.bus)
    try:
        with caplog.at_level(logging.WARNING, logger="eventbus"):
            outcomes = redrive_all(h.bus, mode)
    finally:
        signals.dead_letter_redriven.disconnect(purge_second)
    assert [(o.letter.id, o.ok, o.gone) for o in outcomes] == [
        (first.id, True, False),
        (second.id, False, True),
    ]
    assert (outcomes[1].result, outcomes[1].error) == (None, None)
    assert (first_body.calls, second_body.calls) == (2, 1)  # nothing ran for `second`
    assert any(
        str(second.id) in r.getMessage() and "no longer in its store" in r.getMessage()
        for r in caplog.records
    )
    assert len(h.bus.dead_letters) == 0


@pytest.mark.parametrize("mode", MODES)
def test_redrive_all_redrives_a_letter_as_its_store_holds_it_now(mode: str) -> None:
    h = Harness()
    body = Switch()
    subscribe(h.bus, body)
    [selected] = publish(h.bus, RedriveOrder(), mode).dead_letters
    [updated] = redrive(h.bus, selected, mode).dead_letters  # another process's redrive
    store = h.bus.dead_letters
    if mode == "sync":
        [outcome] = eventbus.redrive.redrive_all(h.bus, store, [selected])
    else:
        [outcome] = asyncio.run(eventbus.redrive.redrive_all_async(h.bus, store, [selected]))
    assert outcome.failed_again is not None
    assert outcome.failed_again.attempts == updated.attempts + 1 == 3  # not 1 + 1


@pytest.mark.parametrize("mode", MODES)
def test_redrive_of_a_letter_gone_from_its_store_warns(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    h = Harness()
    body = Switch()
    subscribe(h.bus, body)
    [letter] = publish(h.bus, RedriveOrder(), mode).dead_letters
    h.bus.dead_letters.remove(letter)  # purged meanwhile
    body.failing = False
    with caplog.at_level(logging.WARNING, logger="eventbus"):
        assert redrive(h.bus, letter, mode).ok
    assert any(
        str(letter.id) in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records
    )


def test_sync_redrive_of_an_async_handler_inside_a_running_loop_is_refused() -> None:
    h = Harness()
    body = Switch()
    subscribe(h.bus, body, use_async=True)
    [letter] = h.bus.publish(RedriveOrder()).dead_letters
    body.failing = False

    async def main() -> None:
        with pytest.raises(SyncPublishError, match="redrive_async"):
            h.bus.redrive(letter)

    asyncio.run(main())
    assert body.calls == 1
    assert list(h.bus.dead_letters) == [letter]


# -- letters that cannot be redriven ----------------------------------------------------------


def _check_refused(h: Harness, letter: DeadLetter, mode: str, match: str) -> None:
    before = list(h.bus.dead_letters)
    with pytest.raises(RedriveError, match=match) as caught:
        redrive(h.bus, letter, mode)
    assert isinstance(caught.value, LookupError)
    assert list(h.bus.dead_letters) == before  # the letter stays, unchanged


@pytest.mark.parametrize("mode", MODES)
def test_redrive_refused_when_the_handler_is_gone(mode: str) -> None:
    h = Harness()
    body = Switch()
    subscribe(h.bus, body)
    [letter] = publish(h.bus, RedriveOrder(), mode).dead_letters
    h.bus.unsubscribe(h.bus.subscriptions[0].handler)
    _check_refused(h, letter, mode, "no handler named")
    assert body.calls == 1


@pytest.mark.parametrize("mode", MODES)
def test_redrive_refused_when_the_handler_was_renamed(mode: str) -> None:
    h = Harness()
    body = Switch()
    subscribe(h.bus, body, name="old_name")
    [letter] = publish(h.bus, RedriveOrder(), mode).dead_letters
    h.bus.unsubscribe(h.bus.subscriptions[0].handler)
    subscribe(h.bus, body, name="new_name")
    _check_refused(h, letter, mode, "old_name")
    assert body.calls == 1


@pytest.mark.parametrize("mode", MODES)
def test_redrive_refused_when_the_name_only_handles_other_events(mode: str) -> None:
    h = Harness()
    body = Switch()
    subscribe(h.bus, body, name="moved")
    [letter] = publish(h.bus, RedriveOrder(), mode).dead_letters
    h.bus.unsubscribe(h.bus.subscriptions[0].handler)
    subscribe(h.bus, body, RedriveInvoice, name="moved")
    _check_refused(h, letter, mode, "no handler named")
    assert body.calls == 1


class Worker:
    def __init__(self, body: Switch) -> None:
        self.body = body

    def handle(self, event: RedriveOrder) -> None:
        self.body(event)


@pytest.mark.parametrize("mode", MODES)
def test_methods_of_two_instances_are_named_at_subscribe_and_redriven_each_to_its_own(
    mode: str,
) -> None:
    h = Harness()
    broken, fine = Switch(), Switch(failing=False)
    h.bus.subscribe(Worker(broken).handle)
    with pytest.raises(ValueError, match="name"):  # a letter could not tell them apart
        h.bus.subscribe(Worker(fine).handle)
    h.bus.subscribe(Worker(fine).handle, name="fine_worker")
    [letter] = publish(h.bus, RedriveOrder(), mode).dead_letters
    assert letter.handler == f"{__name__}.Worker.handle"
    broken.failing = False
    assert redrive(h.bus, letter, mode).ok
    assert (broken.calls, fine.calls) == (2, 1)


class RedriveRefund(Event):
    pass


class RedriveRefundedOrder(RedriveOrder, RedriveRefund):
    """Derives from two classes that one handler is subscribed to, each on its own."""


@pytest.mark.parametrize("mode", MODES)
def test_a_handler_subscribed_to_two_bases_of_an_event_runs_once_and_redrives(mode: str) -> None:
    h = Harness()
    body = Switch()

    def both(event: Event) -> None:
        body(event)

    h.bus.subscribe(RedriveOrder, priority=1)(both)
    h.bus.subscribe(RedriveRefund)(both)  # one handler, two unrelated classes
    letters = publish(h.bus, RedriveRefundedOrder(), mode).dead_letters
    assert body.calls == 1  # not once per base class
    assert [x.handler for x in letters] == [f"{__name__}.{both.__qualname__}"]
    assert [s.priority for s in h.bus.subscriptions_for(RedriveRefundedOrder)] == [1]
    body.failing = False
    assert redrive(h.bus, letters[0], mode).ok
    assert body.calls == 2
    assert list(h.bus.dead_letters) == []


@pytest.mark.parametrize("mode", MODES)
def test_redrive_refusal_lists_the_handlers_subscribed_for_the_event(mode: str) -> None:
    h = Harness()
    body = Switch()
    subscribe(h.bus, body, name="gone")
    [letter] = publish(h.bus, RedriveOrder(), mode).dead_letters
    h.bus.unsubscribe(h.bus.subscriptions[0].handler)
    subscribe(h.bus, Switch(), name="reserve", priority=1)
    subscribe(h.bus, Switch(), name="audit")
    subscribe(h.bus, Switch(), RedriveInvoice, name="invoices")
    with pytest.raises(RedriveError) as refused:
        redrive(h.bus, letter, mode)
    message = str(refused.value)
    assert f"no handler named '{__name__}.gone' is subscribed to {letter.event_type}" in message
    assert (
        f"the handlers subscribed to it here are: '{__name__}.reserve', '{__name__}.audit'"
        in message
    )
    assert "invoices" not in message
    assert f"subscribe(..., name='{__name__}.gone')" in message
    assert (
        "bus.redrive(letter, to_handler=NAME) (on the command line: --to-handler NAME)" in message
    )
    empty = Harness()
    with pytest.raises(RedriveError, match="no handler at all is subscribed to it here"):
        redrive(empty.bus, letter, mode, store=h.bus.dead_letters)


@pytest.mark.parametrize("mode", MODES)
def test_redrive_refusal_explains_a_name_that_differs_only_by_module(mode: str) -> None:
    h = Harness()
    body = Switch()
    name = subscribe(h.bus, body, name="ship")
    [letter] = publish(h.bus, RedriveOrder(), mode).dead_letters
    as_a_script = dataclasses.replace(letter, handler="__main__.ship")  # `python orders.py`
    h.bus.dead_letters.add(as_a_script)
    with pytest.raises(RedriveError) as refused:
        redrive(h.bus, as_a_script, mode)
    message = str(refused.value)
    assert f"'__main__.ship' and '{name}' differ only by module" in message
    assert (
        "the letter was made where the handler's module was '__main__' (a script started as "
        "`python FILE.py` or `python -m MODULE`, or an interactive session)" in message
    )
    assert f"and here it is '{__name__}'" in message
    assert f"bus.redrive(letter, to_handler='{name}')" in message
    assert f"--to-handler {name}" in message
    assert "subscribe the handler with a name of its own: subscribe(..., name=...)" in message
    moved = dataclasses.replace(letter, handler="orders.legacy.ship")
    with pytest.raises(RedriveError, match=r"the handler's module was 'orders\.legacy'"):
        redrive(h.bus, moved, mode)
    assert body.calls == 1


def redrive_to(bus: EventBus, letter: DeadLetter, mode: str, handler: str) -> PublishResult:
    """Redrive ``letter`` to the handler named ``handler`` (eventbus.redrive's functions)."""
    if mode == "sync":
        return eventbus.redrive.redrive(bus, letter, bus.dead_letters, to_handler=handler)
    return asyncio.run(
        eventbus.redrive.redrive_async(bus, letter, bus.dead_letters, to_handler=handler)
    )


@pytest.mark.parametrize("mode", MODES)
@HANDLER_KINDS
def test_redrive_to_a_handler_named_explicitly(mode: str, use_async: bool) -> None:
    h = Harness()
    body = Switch()
    name = subscribe(h.bus, body, name="ship", use_async=use_async)
    [letter] = publish(h.bus, RedriveOrder(), mode).dead_letters
    old = dataclasses.replace(letter, handler="__main__.ship")
    h.bus.dead_letters.add(old)
    [again] = redrive_to(h.bus, old, mode, name).dead_letters  # fails again: renamed, same id
    assert (again.id, again.handler, again.attempts) == (letter.id, name, 2)
    assert again.first_failed_at == letter.first_failed_at
    assert list(h.bus.dead_letters) == [again]
    body.failing = False
    assert redrive_to(h.bus, again, mode, name).ok
    assert len(h.bus.dead_letters) == 0
    assert body.calls == 3
    with pytest.raises(RedriveError, match="no handler named 'nobody'"):
        redrive_to(h.bus, letter, mode, "nobody")
    with pytest.raises(TypeError, match="to_handler must be a handler's name"):
        redrive_to(h.bus, letter, mode, "")


@pytest.mark.parametrize("mode", MODES)
def test_redrive_all_to_a_handler_named_explicitly(mode: str) -> None:
    h = Harness()
    h.bus.report_unhandled = True
    [unhandled] = publish(h.bus, RedriveNobodyListens(), mode).dead_letters
    first, second = Switch(failing=False), Switch(failing=False)
    subscribe(h.bus, first, RedriveNobodyListens, name="first")
    name = subscribe(h.bus, second, RedriveNobodyListens, name="second")
    store = h.bus.dead_letters
    if mode == "sync":
        outcomes = eventbus.redrive.redrive_all(h.bus, store, [unhandled], to_handler=name)
    else:
        outcomes = asyncio.run(
            eventbus.redrive.redrive_all_async(h.bus, store, [unhandled], to_handler=name)
        )
    assert [o.ok for o in outcomes] == [True]
    assert (first.calls, second.calls) == (0, 1)  # only the handler named, not every one
    assert len(store) == 0


@pytest.mark.parametrize("mode", MODES)
def test_redrive_refused_for_an_undefined_event(mode: str) -> None:
    h = Harness()
    body = Switch()
    name = subscribe(h.bus, body)
    reason = "event type 'gone.OrderPlaced' is not defined in this process"
    stand_in = UndefinedEvent(stored_type="gone.OrderPlaced", payload='{"x": 1}', reason=reason)
    letter = DeadLetter.from_exception(stand_in, name, 2, Boom("stored"), failed_at=h.clock.now)
    letter = dataclasses.replace(letter, event_type="gone.OrderPlaced")
    h.bus.dead_letters.add(letter)
    _check_refused(
        h,
        letter,
        mode,
        f"its event cannot be rebuilt in this process: {reason}; import the module that "
        "defines 'gone.OrderPlaced'",
    )
    assert body.calls == 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("reason", "advice"),
    [
        (
            "this letter cannot be redriven: its event does not serialize to JSON (boom)",
            "No class can rebuild its event from what was stored: `show` prints what was kept",
        ),
        (
            "row unreadable: event is not valid UTF-8",
            "Its stored row is damaged: `show` prints what could be read of it, and it can "
            "only be purged",
        ),
    ],
    ids=["not-kept-whole", "row-unreadable"],
)
def test_redrive_refused_for_a_letter_its_store_could_not_keep_says_why(
    mode: str, reason: str, advice: str
) -> None:
    h = Harness()
    body = Switch()
    name = subscribe(h.bus, body)
    stand_in = UndefinedEvent(
        stored_type=RedriveOrder.event_type, payload="{", reason=reason, redrivable=False
    )
    letter = DeadLetter.from_exception(stand_in, name, 1, Boom("stored"), failed_at=h.clock.now)
    h.bus.dead_letters.add(letter)
    said = reason.removeprefix("this letter cannot be redriven: ")  # said once, not twice
    _check_refused(h, letter, mode, re.escape(f"{letter.id} cannot be redriven: {said}. {advice}"))
    assert eventbus.redrive.redrive_problem(None, letter) is not None  # known without a bus
    assert body.calls == 0


def test_redrive_problem_says_what_redrive_would_raise_and_runs_nothing() -> None:
    h = Harness()
    body = Switch()
    subscribe(h.bus, body, name="known")
    [letter] = h.bus.publish(RedriveOrder()).dead_letters
    assert eventbus.redrive.redrive_problem(h.bus, letter) is None
    assert eventbus.redrive.redrive_problem(None, letter) is None  # nothing to check
    problem = eventbus.redrive.redrive_problem(h.bus, letter, to_handler="other")
    assert isinstance(problem, RedriveError)
    assert "no handler named 'other'" in str(problem)
    h.bus.unsubscribe(h.bus.subscriptions[0].handler)
    with pytest.raises(RedriveError) as raised:
        h.bus.redrive(letter)
    assert str(eventbus.redrive.redrive_problem(h.bus, letter)) == str(raised.value)
    assert body.calls == 1
    assert list(h.bus.dead_letters) == [letter]


# -- redrive_all ------------------------------------------------------------------------------


class Scenario:
    """Four letters, made ten minutes apart, then the clock moved on by an hour.

    | letter | event           | handler  | failed at |
    | a      | RedriveOrder    | orders   | T0        |
    | b      | RedriveOrder    | audit    | T0 + 10m  |
    | c      | RedriveInvoice  | invoices | T0 + 20m  |
    | d      | RedriveInvoice  | audit2   | T0 + 30m  |  (its handler unsubscribed later)
    """

    def __init__(self, mode: str) -> None:
        self.h = h = Harness()
        self.start = h.clock.now
        self.orders, self.audit = Switch(), Switch()
        self.invoices, self.audit2 = Switch(), Switch()
        self.names = {
            "orders": subscribe(h.bus, self.orders, name="orders"),
            "audit": subscribe(h.bus, self.audit, name="audit", priority=-1),
            "invoices": subscribe(h.bus, self.invoices, RedriveInvoice, name="invoices"),
            "audit2": subscribe(h.bus, self.audit2, RedriveInvoice, name="audit2", priority=-1),
        }
        [self.a, self.b] = publish(h.bus, RedriveOrder(), mode).dead_letters  # both at T0
        # b: redrive it ten minutes later so that its last failure is T0 + 10m
        h.clock.advance(600)
        [self.b] = redrive(h.bus, self.b, mode).dead_letters
        h.clock.advance(600)
        [self.c, self.d] = publish(h.bus, RedriveInvoice(), mode).dead_letters
        h.clock.advance(600)
        [self.d] = redrive(h.bus, self.d, mode).dead_letters
        h.clock.advance(3600)
        for switch in (self.orders, self.audit, self.invoices, self.audit2):
            switch.failing = False
            switch.events.clear()

    def calls(self) -> tuple[int, int, int, int]:
        return (self.orders.calls, self.audit.calls, self.invoices.calls, self.audit2.calls)


def _by_letter(outcomes: list[RedriveOutcome]) -> list[tuple[DeadLetter, bool]]:
    return [(outcome.letter, outcome.ok) for outcome in outcomes]


@pytest.mark.parametrize("mode", MODES)
def test_scenario_is_as_described(mode: str) -> None:
    s = Scenario(mode)
    minutes = [(x.failed_at - s.start) / timedelta(minutes=1) for x in (s.a, s.b, s.c, s.d)]
    assert minutes == [0, 10, 20, 30]
    assert list(s.h.bus.dead_letters) == [s.a, s.b, s.c, s.d]


@pytest.mark.parametrize("mode", MODES)
def test_redrive_all_without_filters_redrives_everything_oldest_first(mode: str) -> None:
    s = Scenario(mode)
    order: list[str] = []
    for label, switch in [("a", s.orders), ("b", s.audit), ("c", s.invoices), ("d", s.audit2)]:
        switch.label, switch.log = label, order
    outcomes = redrive_all(s.h.bus, mode)
    assert _by_letter(outcomes) == [(s.a, True), (s.b, True), (s.c, True), (s.d, True)]
    assert order == ["a", "b", "c", "d"]
    assert all(o.error is None and o.result is not None and o.result.ok for o in outcomes)
    assert len(s.h.bus.dead_letters) == 0


@pytest.mark.parametrize("mode", MODES)
def test_redrive_all_by_event_type(mode: str) -> None:
    s = Scenario(mode)
    outcomes = redrive_all(s.h.bus, mode, event_type=RedriveInvoice.event_type)
    assert _by_letter(outcomes) == [(s.c, True), (s.d, True)]
    assert s.calls() == (0, 0, 1, 1)
    assert list(s.h.bus.dead_letters) == [s.a, s.b]


@pytest.mark.parametrize("mode", MODES)
def test_redrive_all_by_handler(mode: str) -> None:
    s = Scenario(mode)
    outcomes = redrive_all(s.h.bus, mode, handler=s.names["audit"])
    assert _by_letter(outcomes) == [(s.b, True)]
    assert s.calls() == (0, 1, 0, 0)
    assert list(s.h.bus.dead_letters) == [s.a, s.c, s.d]


@pytest.mark.parametrize("mode", MODES)
def test_redrive_all_older_than_uses_the_injected_clock(mode: str) -> None:
    s = Scenario(mode)  # now: T0 + 90m
    outcomes = redrive_all(s.h.bus, mode, older_than=timedelta(minutes=75))
    assert _by_letter(outcomes) == [(s.a, True), (s.b, True)]  # failed at T0 and T0 + 10m
    assert s.calls() == (1, 1, 0, 0)
    # the boundary is inclusive: c failed exactly 70 minutes ago
    outcomes = redrive_all(s.h.bus, mode, older_than=timedelta(minutes=70))
    assert _by_letter(outcomes) == [(s.c, True)]
    assert redrive_all(s.h.bus, mode, older_than=timedelta(days=1)) == []
    assert list(s.h.bus.dead_letters) == [s.d]


@pytest.mark.parametrize("mode", MODES)
def test_redrive_all_filters_combine(mode: str) -> None:
    s = Scenario(mode)
    outcomes = redrive_all(
        s.h.bus,
        mode,
        event_type=RedriveOrder.event_type,
        handler=s.names["orders"],
        older_than=timedelta(minutes=1),
    )
    assert _by_letter(outcomes) == [(s.a, True)]
    assert redrive_all(s.h.bus, mode, event_type=RedriveOrder.event_type, handler="x") == []
    assert s.calls() == (1, 0, 0, 0)


@pytest.mark.parametrize("mode", MODES)
def test_redrive_all_goes_on_past_letters_it_cannot_redrive(mode: str) -> None:
    s = Scenario(mode)
    s.h.bus.unsubscribe(
        next(x.handler for x in s.h.bus.subscriptions if x.name == s.names["audit"])
    )
    s.invoices.failing = True
    outcomes = redrive_all(s.h.bus, mode)
    assert [o.letter.id for o in outcomes] == [s.a.id, s.b.id, s.c.id, s.d.id]
    a, b, c_, d = outcomes
    assert (a.ok, a.error) == (True, None)
    assert (b.ok, b.result) == (False, None)
    assert isinstance(b.error, RedriveError)
    assert "audit" in str(b.error)
    assert not c_.ok
    assert c_.error is None
    assert c_.result is not None
    [c_again] = c_.result.dead_letters
    assert (c_again.id, c_again.attempts) == (s.c.id, s.c.attempts + 1)
    assert (d.ok, d.error) == (True, None)
    assert list(s.h.bus.dead_letters) == [s.b, c_again]


@pytest.mark.parametrize("mode", MODES)
def test_redrive_all_ok_is_about_the_letter_not_its_cascade(mode: str) -> None:
    h = Harness()
    body = Switch()

    @h.bus.subscribe
    def ship(event: RedriveOrder) -> None:
        body(event)
        h.bus.publish(RedriveShipment())

    @h.bus.subscribe
    def on_shipment(event: RedriveShipment) -> None:
        raise Boom("child")

    [letter] = publish(h.bus, RedriveOrder(), mode).dead_letters
    body.failing = False
    [outcome] = redrive_all(h.bus, mode)
    assert outcome.letter == letter
    assert outcome.ok  # the redriven letter is settled...
    assert outcome.result is not None
    assert not outcome.result.ok  # ...though its cascade made a new letter
    [child] = outcome.result.dead_letters
    assert list(h.bus.dead_letters) == [child]


@pytest.mark.parametrize("mode", MODES)
def test_redrive_all_from_another_store(mode: str) -> None:
    archive = InMemoryDeadLetterStore()
    producer = Harness(store=archive)
    body = Switch()
    subscribe(producer.bus, body, name="archived_all")
    [letter] = publish(producer.bus, RedriveOrder(), mode).dead_letters
    worker = Harness()
    subscribe(worker.bus, body, name="archived_all")
    assert redrive_all(worker.bus, mode) == []  # its own store is empty
    body.failing = False
    [outcome] = redrive_all(worker.bus, mode, store=archive)
    assert (outcome.letter, outcome.ok) == (letter, True)
    assert len(archive) == 0


@pytest.mark.parametrize("mode", MODES)
def test_redrive_all_of_an_empty_store(mode: str) -> None:
    assert redrive_all(Harness().bus, mode) == []


def test_redrive_outcome_is_a_frozen_record() -> None:
    h = Harness()
    body = Switch()
    subscribe(h.bus, body)
    [letter] = h.bus.publish(RedriveOrder()).dead_letters
    [outcome] = h.bus.redrive_all()
    assert [f.name for f in dataclasses.fields(outcome)] == ["letter", "result", "error"]
    assert not outcome.ok
    assert not outcome.gone
    with pytest.raises(dataclasses.FrozenInstanceError):
        outcome.letter = letter  # type: ignore[misc]
    assert not RedriveOutcome(letter, None, RedriveError("x")).ok
    assert not RedriveOutcome(letter, None, RedriveError("x")).gone
    gone = RedriveOutcome(letter, None, None)
    assert (gone.ok, gone.gone, gone.failed_again, gone.new_dead_letters) == (False, True, None, [])


class RedriveNobodyListens(Event):
    pass


@pytest.mark.parametrize("mode", MODES)
def test_redrive_all_of_unhandled_letters_by_their_handler_name(mode: str) -> None:
    h = Harness()
    h.bus.report_unhandled = True
    body = Switch()
    subscribe(h.bus, body)
    [handled] = publish(h.bus, RedriveOrder(), mode).dead_letters
    [unhandled] = publish(h.bus, RedriveNobodyListens(), mode).dead_letters
    assert unhandled.handler == NO_HANDLER
    received: list[RedriveNobodyListens] = []

    @h.bus.subscribe
    def now_listening(event: RedriveNobodyListens) -> None:
        received.append(event)

    outcomes = redrive_all(h.bus, mode, handler=NO_HANDLER)
    assert _by_letter(outcomes) == [(unhandled, True)]
    assert received == [unhandled.event]
    assert body.calls == 1
    assert list(h.bus.dead_letters) == [handled]


def test_a_letter_from_a_script_before_names_by_module_explains_itself() -> None:
    h = Harness()
    subscribe(h.bus, Switch())
    stand_in = UndefinedEvent(
        stored_type=f"__main__.{RedriveOrder.__qualname__}",
        payload=RedriveOrder().model_dump_json(),
        reason="no Event subclass has this event_type",
    )
    letter = DeadLetter.from_exception(
        stand_in, "__main__.reserve", 1, Boom("stored"), failed_at=h.clock.now
    )
    with pytest.raises(RedriveError) as refused:
        h.bus.redrive(letter)
    message = str(refused.value)
    assert "was recorded by a program run as a script, under the name __main__" in message
    assert repr(RedriveOrder.event_type) in message  # the class it is now
    assert f"event_type = '__main__.{RedriveOrder.__qualname__}'" in message
