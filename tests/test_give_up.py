"""subscribe(on_give_up=...): what a handler's owner does once its retries are used up."""

from __future__ import annotations

import asyncio
import logging

import pytest

from eventbus import DeadLetter, Event, EventBus, RetryPolicy
from eventbus.testing import FakeClock, InMemoryBroker, capture


class ChargePayment(Event):
    order_id: str


class PaymentUnavailable(Event):
    order_id: str
    error: str


def shop(bus: EventBus, letters: list[DeadLetter]) -> list[PaymentUnavailable]:
    told: list[PaymentUnavailable] = []

    def charge_gave_up(letter: DeadLetter) -> None:
        letters.append(letter)
        assert isinstance(letter.event, ChargePayment)
        bus.publish(PaymentUnavailable(order_id=letter.event.order_id, error=letter.error_type))

    @bus.subscribe(retry=RetryPolicy(max_attempts=3), on_give_up=charge_gave_up, name="pay.charge")
    async def charge(event: ChargePayment) -> None:
        raise ConnectionError("gateway down")

    @bus.subscribe(name="saga.unavailable")
    def unavailable(event: PaymentUnavailable) -> None:
        told.append(event)

    return told


@pytest.mark.parametrize("use_async", [False, True], ids=["publish", "publish_async"])
def test_the_hook_gets_the_letter_once_the_last_attempt_failed_and_its_events_follow(
    use_async: bool,
) -> None:
    bus = EventBus(clock=FakeClock())
    letters: list[DeadLetter] = []
    told = shop(bus, letters)
    charge = ChargePayment(order_id="o1")
    result = asyncio.run(bus.publish_async(charge)) if use_async else bus.publish(charge)
    [letter] = letters
    assert result.dead_letters == [letter]
    assert letter in list(bus.dead_letters)  # stored before the hook ran
    assert letter.attempts == 3
    [unavailable] = told
    assert unavailable.error == "builtins.ConnectionError"
    assert unavailable.causation_id == charge.event_id  # it follows from the charge


def test_a_redrive_that_fails_again_calls_the_hook_again() -> None:
    bus = EventBus(clock=FakeClock())
    letters: list[DeadLetter] = []
    told = shop(bus, letters)
    bus.publish(ChargePayment(order_id="o1"))
    bus.redrive(letters[0])
    assert [letter.id for letter in letters] == [letters[0].id] * 2  # the same letter, again
    assert len(told) == 2


def test_a_hook_that_fails_is_logged_and_the_letter_stands(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus()

    def broken(letter: DeadLetter) -> None:
        raise RuntimeError("bug in the hook")

    @bus.subscribe(on_give_up=broken, name="pay.charge")
    def charge(event: ChargePayment) -> None:
        raise ConnectionError("gateway down")

    with caplog.at_level(logging.ERROR, logger="eventbus"):
        result = bus.publish(ChargePayment(order_id="o1"))
    assert len(result.dead_letters) == 1
    assert len(bus.dead_letters) == 1
    assert "the on_give_up hook of pay.charge failed" in caplog.text
    assert "bug in the hook" in caplog.text


def test_a_hook_is_not_called_when_a_retry_succeeds() -> None:
    bus = EventBus(clock=FakeClock())
    called: list[DeadLetter] = []
    failures = ["once"]

    @bus.subscribe(retry=RetryPolicy(max_attempts=2), on_give_up=called.append)
    def charge(event: ChargePayment) -> None:
        if failures:
            failures.pop()
            raise ConnectionError("gateway down")

    assert bus.publish(ChargePayment(order_id="o1")).ok
    assert called == []


def test_bad_hooks_are_refused_at_subscribe_time() -> None:
    bus = EventBus()

    async def async_hook(letter: DeadLetter) -> None:
        pass

    def charge(event: ChargePayment) -> None:
        pass

    with pytest.raises(TypeError, match="on_give_up must be a plain"):
        bus.subscribe(on_give_up=async_hook)(charge)
    with pytest.raises(TypeError, match="on_give_up must be a function"):
        bus.subscribe(on_give_up="compensate")(charge)  # type: ignore[call-overload]
    assert bus.subscriptions == ()


@pytest.mark.parametrize("use_async", [False, True], ids=["drain", "drain_async"])
def test_on_the_in_memory_broker_the_hooks_events_are_written_with_the_letter(
    use_async: bool,
) -> None:
    broker = InMemoryBroker()
    bus = EventBus(broker=broker, clock=FakeClock())
    letters: list[DeadLetter] = []
    told = shop(bus, letters)
    with capture(bus) as published:
        bus.publish(ChargePayment(order_id="o1"))
        asyncio.run(broker.drain_async()) if use_async else broker.drain()
    assert [type(e).__name__ for e in broker.entries] == ["ChargePayment", "PaymentUnavailable"]
    assert len(letters) == 1
    assert len(bus.dead_letters) == 1
    assert [e.order_id for e in told] == ["o1"]
    assert published.publisher_of(published.one(PaymentUnavailable)) == "pay.charge"
