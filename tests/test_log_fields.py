"""The library's log records carry the event's ids, the handler and the attempt, never a payload.

What a JSON formatter for ELK shows as fields (docs/observability.md): every
record about an event has ``event_id``, ``event_type`` and
``correlation_id``, and ``handler`` and ``attempt`` where a handler's run is
the subject; records of a worker or a relay name it.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import sqlite3
import typing as t
import uuid

import pytest

from eventbus import (
    RELAY,
    BrokerError,
    DeadLetter,
    Event,
    EventBus,
    InMemoryDeadLetterStore,
    InMemoryInbox,
    PublishResult,
    Relay,
    RetryPolicy,
    SQLiteOutbox,
)
from eventbus.testing import FakeClock

SECRET = "4111-1111-1111-1111"  # a payload field no record may show


class CardCharged(Event):
    order_id: str
    card: str = SECRET


def about_events(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("eventbus") and "event_id" in r.__dict__]


def assert_fields(record: logging.LogRecord, event: Event, **expected: object) -> None:
    assert record.__dict__["event_id"] == event.event_id, record.getMessage()
    assert record.__dict__["event_type"] == event.event_type
    assert record.__dict__["correlation_id"] == (event.correlation_id or event.event_id)
    for name, value in expected.items():
        assert record.__dict__[name] == value, (name, record.getMessage())


def no_payload(caplog: pytest.LogCaptureFixture) -> None:
    for record in caplog.records:
        shown = record.getMessage() + (record.exc_text or "") + repr(record.__dict__)
        assert SECRET not in shown, shown


@pytest.mark.parametrize("use_async", [False, True], ids=["publish", "publish_async"])
def test_a_retried_then_dead_lettered_run_logs_each_attempt_with_its_fields(
    use_async: bool, caplog: pytest.LogCaptureFixture
) -> None:
    bus = EventBus(retry=RetryPolicy(max_attempts=2), clock=FakeClock())

    def gave_up(letter: DeadLetter) -> None:
        raise RuntimeError("the hook fails too")

    @bus.subscribe(name="shop.charge", on_give_up=gave_up)
    async def charge(event: CardCharged) -> None:
        raise ConnectionError("gateway down")

    charged = CardCharged(order_id="o1", correlation_id=uuid.uuid4())
    with caplog.at_level(logging.INFO, logger="eventbus"):
        if use_async:
            asyncio.run(bus.publish_async(charged))
        else:
            bus.publish(charged)
    [letter] = bus.dead_letters
    retry, dead, hook = about_events(caplog)
    assert_fields(retry, charged, handler="shop.charge", attempt=1)
    assert_fields(dead, charged, handler="shop.charge", attempt=2, dead_letter_id=letter.id)
    assert_fields(hook, charged, handler="shop.charge", dead_letter_id=letter.id)
    assert "on_give_up hook" in hook.getMessage()
    no_payload(caplog)


def test_a_skipped_duplicate_and_a_failed_record_are_logged_with_their_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class BrokenRecords(InMemoryInbox):
        def record(self, handler: str, event_id: uuid.UUID, /) -> None:
            raise OSError("disk full")

    bus = EventBus(inbox=InMemoryInbox())
    bus.subscribe(CardCharged, idempotent=True, name="shop.mail")(lambda event: None)
    charged = CardCharged(order_id="o1")
    broken = EventBus(inbox=BrokenRecords())
    broken.subscribe(CardCharged, idempotent=True, name="shop.audit")(lambda event: None)
    with caplog.at_level(logging.INFO, logger="eventbus"):
        bus.publish(charged)
        bus.publish(charged)  # skipped
        broken.publish(charged)  # handled, not recorded
    skipped, failed = about_events(caplog)
    assert "skipped" in skipped.getMessage()
    assert_fields(skipped, charged, handler="shop.mail")
    assert "inbox record failed" in failed.getMessage()
    assert_fields(failed, charged, handler="shop.audit")
    no_payload(caplog)


def test_an_unhandled_event_kept_as_a_letter_names_its_event(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus(report_unhandled=True)
    charged = CardCharged(order_id="o1")
    with caplog.at_level(logging.INFO, logger="eventbus"):
        bus.publish(charged)  # no handler: a letter
    [record] = about_events(caplog)
    [letter] = bus.dead_letters
    assert_fields(record, charged, dead_letter_id=letter.id)
    no_payload(caplog)


class Down:
    """A transport that never takes an event."""

    def bind(self, bus: EventBus, plan: t.Any, /) -> tuple[t.Any, t.Any]:
        def publish(event: Event) -> PublishResult:
            raise BrokerError("the broker does not answer")

        async def publish_async(event: Event) -> PublishResult:
            return publish(event)

        return publish, publish_async


def test_a_relay_logs_its_failures_and_letters_with_the_row_and_the_event(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "shop.db"
    charged = CardCharged(order_id="o1")
    with SQLiteOutbox(path) as outbox:
        with sqlite3.connect(path) as db:
            outbox.add(db, charged)
        db.close()
        bus = EventBus(transport=Down(), clock=FakeClock())
        store = InMemoryDeadLetterStore()
        relay = Relay(
            bus, outbox, retry=RetryPolicy(max_attempts=2), dead_letters=store, name="relay-1"
        )
        with caplog.at_level(logging.INFO, logger="eventbus"):
            relay.send()  # attempt 1 fails
            bus.clock.advance(60)  # type: ignore[attr-defined]
            relay.send()  # attempt 2 fails: a dead letter
        [letter] = store
        failed, lettered = about_events(caplog)
        row = {"relay": "relay-1", "outbox_row": 1, "handler": RELAY}
        assert_fields(failed, charged, attempt=1, **row)
        assert_fields(lettered, charged, attempt=2, dead_letter_id=letter.id, **row)
    no_payload(caplog)


def test_a_relays_unreadable_row_is_logged_without_the_values_that_failed_validation(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """pydantic quotes the values it refused; no record and no letter message may."""
    path = tmp_path / "shop.db"
    with SQLiteOutbox(path) as outbox:
        with sqlite3.connect(path) as db:
            outbox.add(db, CardCharged(order_id="o1"))
            db.execute(  # the row's JSON no longer validates: card is a list now
                "UPDATE eventbus_outbox SET payload = json_set(payload, '$.card', json_array(?))",
                (SECRET,),
            )
        db.close()
        bus = EventBus(transport=Down(), clock=FakeClock())
        store = InMemoryDeadLetterStore()
        with caplog.at_level(logging.INFO, logger="eventbus"):
            Relay(bus, outbox, dead_letters=store, name="relay-1").send()
        [letter] = store
        assert "validation error for CardCharged: card: Input should be a valid string" in (
            letter.error_message
        )
        assert SECRET not in letter.error_message
    no_payload(caplog)


def test_a_record_about_an_event_sent_in_a_trace_carries_its_trace_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    bus = EventBus(retry=RetryPolicy(max_attempts=1), clock=FakeClock())

    @bus.subscribe(name="shop.charge")
    def charge(event: CardCharged) -> None:
        raise ConnectionError("gateway down")

    tracer = TracerProvider().get_tracer("web")  # a private provider: the global one untouched
    with caplog.at_level(logging.INFO, logger="eventbus"):
        with tracer.start_as_current_span("POST /charge") as request:
            bus.publish(CardCharged(order_id="o1"))
        bus.publish(CardCharged(order_id="o2"))  # outside any trace
    traced, untraced = about_events(caplog)
    assert traced.__dict__["trace_id"] == f"{request.get_span_context().trace_id:032x}"
    assert "trace_id" not in untraced.__dict__


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("00-" + "a" * 32 + "-" + "b" * 16 + "-01", "a" * 32),
        (("00-" + "c" * 32 + "-" + "d" * 16 + "-00").encode(), "c" * 32),
        ("00-" + "0" * 32 + "-" + "b" * 16 + "-01", None),  # the invalid trace id
        ("00-" + "A" * 32 + "-" + "b" * 16 + "-01", None),  # upper case is not W3C
        ("not a traceparent", None),
        (None, None),
        (7, None),
    ],
)
def test_only_a_w3c_traceparent_gives_a_trace_id(value: object, expected: str | None) -> None:
    from eventbus._logs import trace_id_of

    assert trace_id_of(value) == expected
