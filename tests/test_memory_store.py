"""InMemoryDeadLetterStore's bound: when full it warns loudly or refuses, never drops silently."""

from __future__ import annotations

import logging
import typing as t
from datetime import UTC, datetime

import pytest

from eventbus import (
    DeadLetter,
    DeadLetterStoreFullError,
    Event,
    EventBus,
    InMemoryDeadLetterStore,
)
from eventbus.dead_letters import DeadLetterStoreError


class Billed(Event):
    invoice: int


def _letter(n: int) -> DeadLetter:
    error = RuntimeError(f"card {n} declined")
    return DeadLetter.from_exception(
        Billed(invoice=n), "tests.billing.charge", 1, error, failed_at=datetime.now(UTC)
    )


def _records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "eventbus" and r.levelno == level]


def test_warn_drops_the_oldest_and_logs_it_at_error(caplog: pytest.LogCaptureFixture) -> None:
    store = InMemoryDeadLetterStore(max_letters=2)
    assert store.when_full == "warn"
    first, second, third = _letter(1), _letter(2), _letter(3)
    store.add(first)
    store.add(second)
    assert caplog.records == []
    with caplog.at_level(logging.ERROR, logger="eventbus"):
        store.add(third)
    assert list(store) == [second, third]
    [record] = _records(caplog, logging.ERROR)
    message = record.getMessage()
    assert "full (max_letters=2)" in message
    assert str(first.id) in message  # the dropped letter itself is in the log
    assert "card 1 declined" in message


def test_refuse_raises_and_keeps_the_old_letters() -> None:
    store = InMemoryDeadLetterStore(max_letters=1, when_full="refuse")
    kept = _letter(1)
    store.add(kept)
    with pytest.raises(DeadLetterStoreFullError, match="max_letters=1") as refused:
        store.add(_letter(2))
    assert list(store) == [kept]
    assert isinstance(refused.value, DeadLetterStoreError)  # what every store's errors share


def test_refused_letter_stays_in_the_result_and_is_logged_critical(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = InMemoryDeadLetterStore(max_letters=1, when_full="refuse")
    bus = EventBus(dead_letters=store)

    @bus.subscribe
    def charge(event: Billed) -> None:
        raise RuntimeError(f"card {event.invoice} declined")

    [stored] = bus.publish(Billed(invoice=1)).dead_letters
    with caplog.at_level(logging.ERROR, logger="eventbus"):
        result = bus.publish(Billed(invoice=2))
    [refused] = result.dead_letters
    assert not result.ok
    assert refused.error_message == "card 2 declined"
    assert list(store) == [stored]
    [record] = _records(caplog, logging.CRITICAL)
    assert "could not store the dead letter" in record.getMessage()
    assert str(refused.id) in record.getMessage()
    assert record.exc_info is not None
    assert record.exc_info[0] is DeadLetterStoreFullError


@pytest.mark.parametrize("when_full", ["warn", "refuse"])
def test_replacing_a_letter_when_full_drops_nothing(
    when_full: t.Literal["warn", "refuse"], caplog: pytest.LogCaptureFixture
) -> None:
    store = InMemoryDeadLetterStore(max_letters=2, when_full=when_full)
    first, second = _letter(1), _letter(2)
    store.add(first)
    store.add(second)
    again = first.failed_again(1, RuntimeError("declined again"), failed_at=datetime.now(UTC))
    with caplog.at_level(logging.DEBUG, logger="eventbus"):
        store.add(again)
    assert list(store) == [again, second]
    assert caplog.records == []


@pytest.mark.parametrize("max_letters", [0, -1, True, 1.5, "10"])
def test_invalid_max_letters_is_refused(max_letters: object) -> None:
    with pytest.raises(ValueError, match="max_letters"):
        InMemoryDeadLetterStore(max_letters=max_letters)  # type: ignore[arg-type]


@pytest.mark.parametrize("when_full", ["drop", "", None, "WARN"])
def test_invalid_when_full_is_refused(when_full: object) -> None:
    with pytest.raises(ValueError, match="when_full"):
        InMemoryDeadLetterStore(when_full=when_full)  # type: ignore[arg-type]


class Registered(Event):
    email: str


@pytest.mark.parametrize("when_full", ["warn", "refuse"])
def test_log_lines_about_letters_name_ids_and_types_never_the_events_fields(
    when_full: t.Literal["warn", "refuse"], caplog: pytest.LogCaptureFixture
) -> None:
    bus = EventBus(dead_letters=InMemoryDeadLetterStore(max_letters=1, when_full=when_full))

    @bus.subscribe
    def welcome(event: Registered) -> None:
        raise ConnectionError("mail server unreachable")

    with caplog.at_level(logging.ERROR, logger="eventbus"):
        first = bus.publish(Registered(email="ada@example.com")).dead_letters[0]
        second = bus.publish(Registered(email="grace@example.com")).dead_letters[0]
    level = logging.CRITICAL if when_full == "refuse" else logging.ERROR
    about_the_store = [
        r
        for r in _records(caplog, level)
        if r.getMessage().startswith(("dead-letter store", "could not"))
    ]
    [record] = about_the_store
    text = caplog.handler.format(record)  # the message, and the traceback if any
    lost = second if when_full == "refuse" else first
    assert str(lost.id) in text
    assert str(lost.event.event_id) in text
    assert "tests.test_memory_store.Registered" in text
    assert "mail server unreachable" in text
    assert "example.com" not in text  # the payload: personal data stays out of logs
