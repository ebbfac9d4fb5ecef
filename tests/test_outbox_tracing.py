"""The outbox keeps the trace context an event was added in, and the relay sends it in it.

So a cascade through outboxes (a request that writes an order and its
event, a relay that sends it later, a handler that writes the next one) is
one trace, as it is in one process without an outbox.
"""

from __future__ import annotations

import asyncio
import collections.abc as c
import contextlib
import json
import pathlib
import sqlite3

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from eventbus import Event, EventBus, Relay, SQLiteOutbox
from eventbus.otel import Tracing
from eventbus.outbox import OutboxRow
from eventbus.testing import FakeClock

from .test_otel import parent_of


class OrderPlaced(Event):
    order_id: str


class StockReserved(Event):
    order_id: str


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()  # a private one: the global provider is left alone
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture
def bus(provider: TracerProvider) -> c.Iterator[EventBus]:
    bus = EventBus(clock=FakeClock())
    tracing = Tracing(provider)
    tracing.install(bus)
    yield bus
    tracing.uninstall(bus)


@pytest.fixture
def outbox(tmp_path: pathlib.Path) -> c.Iterator[SQLiteOutbox]:
    with SQLiteOutbox(tmp_path / "shop.db") as outbox:
        yield outbox


def add(outbox: SQLiteOutbox, event: Event) -> None:
    with contextlib.closing(sqlite3.connect(outbox.path)) as db, db:
        outbox.add(db, event)


def relay(bus: EventBus, outbox: SQLiteOutbox, use_async: bool) -> int:
    with Relay(bus, outbox) as sender:
        return asyncio.run(sender.send_async()) if use_async else sender.send()


def named(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    [span] = [span for span in exporter.get_finished_spans() if span.name == name]
    return span


@pytest.mark.parametrize("use_async", [False, True], ids=["send", "send_async"])
def test_the_relay_sends_an_event_in_the_trace_of_the_request_that_added_it(
    bus: EventBus,
    outbox: SQLiteOutbox,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    use_async: bool,
) -> None:
    bus.subscribe(OrderPlaced, name="catalog.reserve")(lambda event: None)
    with provider.get_tracer("web").start_as_current_span("POST /orders"):
        add(outbox, OrderPlaced(order_id="o1"))
    assert outbox.rows()[0].headers["traceparent"]  # kept with the row
    assert relay(bus, outbox, use_async) == 1  # later, outside the request
    request = named(exporter, "POST /orders")
    send = named(exporter, f"send {OrderPlaced.event_type}")
    process = named(exporter, f"process {OrderPlaced.event_type}")
    assert parent_of(send) == request.context.span_id
    assert parent_of(process) == send.context.span_id
    assert {request.context.trace_id, send.context.trace_id, process.context.trace_id} == {
        request.context.trace_id
    }


@pytest.mark.parametrize("use_async", [False, True], ids=["send", "send_async"])
def test_an_event_a_handler_adds_to_an_outbox_goes_on_in_the_handler_s_trace(
    bus: EventBus,
    outbox: SQLiteOutbox,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    use_async: bool,
) -> None:
    @bus.subscribe(name="catalog.reserve")
    def reserve(event: OrderPlaced) -> None:
        add(outbox, StockReserved(order_id=event.order_id))  # sent by the relay, later

    bus.subscribe(StockReserved, name="checkout.charge")(lambda event: None)
    with provider.get_tracer("web").start_as_current_span("POST /orders"):
        bus.publish(OrderPlaced(order_id="o1"))
    assert relay(bus, outbox, use_async) == 1
    reserving = named(exporter, f"process {OrderPlaced.event_type}")
    send = named(exporter, f"send {StockReserved.event_type}")
    charging = named(exporter, f"process {StockReserved.event_type}")
    assert parent_of(send) == reserving.context.span_id
    assert parent_of(charging) == send.context.span_id
    assert charging.context.trace_id == named(exporter, "POST /orders").context.trace_id


def test_an_event_added_outside_any_trace_starts_its_own_and_keeps_no_headers(
    bus: EventBus, outbox: SQLiteOutbox, exporter: InMemorySpanExporter
) -> None:
    add(outbox, OrderPlaced(order_id="o1"))
    [row] = outbox.rows()
    assert row.headers == {}
    with contextlib.closing(sqlite3.connect(outbox.path)) as db:
        assert db.execute(f"SELECT headers FROM {outbox.table}").fetchall() == [(None,)]
    assert relay(bus, outbox, use_async=False) == 1
    assert named(exporter, f"send {OrderPlaced.event_type}").parent is None
    assert trace.get_current_span() is trace.INVALID_SPAN  # the relay left no context behind


def test_baggage_travels_with_the_row(
    bus: EventBus, outbox: SQLiteOutbox, provider: TracerProvider
) -> None:
    from opentelemetry import baggage, context

    seen: list[object] = []
    bus.subscribe(OrderPlaced, name="catalog.reserve")(
        lambda event: seen.append(baggage.get_baggage("tenant"))
    )
    token = context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        with provider.get_tracer("web").start_as_current_span("POST /orders"):
            add(outbox, OrderPlaced(order_id="o1"))
    finally:
        context.detach(token)
    assert relay(bus, outbox, use_async=False) == 1
    assert seen == ["acme"]


@pytest.mark.parametrize(
    "damaged",
    ["not json", json.dumps(["a list"]), json.dumps({"traceparent": 7}), "null"],
    ids=["not-json", "a-list", "not-text", "null"],
)
def test_damaged_headers_never_stop_the_event(
    bus: EventBus, outbox: SQLiteOutbox, exporter: InMemorySpanExporter, damaged: str
) -> None:
    sent: list[Event] = []
    bus.subscribe(OrderPlaced, name="catalog.reserve")(sent.append)
    add(outbox, OrderPlaced(order_id="o1"))
    with contextlib.closing(sqlite3.connect(outbox.path)) as db, db:
        db.execute(f"UPDATE {outbox.table} SET headers = ?", (damaged,))
    assert outbox.rows()[0].headers == {}
    assert relay(bus, outbox, use_async=False) == 1
    assert [event.order_id for event in sent if isinstance(event, OrderPlaced)] == ["o1"]


OLD_TABLE = (
    "CREATE TABLE eventbus_outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
    "event_type TEXT NOT NULL, payload TEXT NOT NULL, added_at REAL NOT NULL, "
    "attempts INTEGER NOT NULL DEFAULT 0, next_try_at REAL NOT NULL DEFAULT 0, last_error TEXT)"
)


def test_an_outbox_table_made_before_headers_is_migrated_and_its_rows_still_sent(
    tmp_path: pathlib.Path, provider: TracerProvider
) -> None:
    path = tmp_path / "old.db"
    waiting = OrderPlaced(order_id="o0")
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute(OLD_TABLE)
        db.execute(
            "INSERT INTO eventbus_outbox (event_type, payload, added_at) VALUES (?, ?, 0)",
            (waiting.event_type, waiting.to_json()),
        )
    bus = EventBus(clock=FakeClock())
    sent: list[Event] = []
    bus.subscribe(OrderPlaced, name="catalog.reserve")(sent.append)
    with SQLiteOutbox(path) as outbox, SQLiteOutbox(path) as again:  # a second open: no-op
        assert outbox.rows() == [
            OutboxRow(1, waiting.event_type, waiting.to_json(), 0, 0.0, None, headers={})
        ]
        with provider.get_tracer("web").start_as_current_span("POST /orders"):
            add(again, OrderPlaced(order_id="o1"))
        assert "traceparent" in outbox.rows()[1].headers
        assert Relay(bus, outbox).send() == 2
    assert [event.order_id for event in sent if isinstance(event, OrderPlaced)] == ["o0", "o1"]


def test_without_opentelemetry_in_the_process_the_outbox_keeps_no_context(
    tmp_path: pathlib.Path,
) -> None:
    """An application that never imports OpenTelemetry pays nothing for it, nor imports it."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        f"""
        import contextlib, sqlite3, sys
        from eventbus import Event, EventBus, Relay, SQLiteOutbox

        class Placed(Event):
            order_id: str

        bus = EventBus()
        got = []
        bus.subscribe(Placed, name="x.y")(got.append)
        outbox = SQLiteOutbox({str(tmp_path / "plain.db")!r})
        with contextlib.closing(sqlite3.connect(outbox.path)) as db, db:
            outbox.add(db, Placed(order_id="o1"))
        assert outbox.rows()[0].headers == {{}}
        assert Relay(bus, outbox).send() == 1 and len(got) == 1
        assert not [name for name in sys.modules if name.startswith("opentelemetry")]
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


@pytest.mark.parametrize("broken", ["inject", "extract"])
def test_a_broken_propagator_never_fails_an_add_nor_keeps_an_event_from_being_sent(
    bus: EventBus,
    outbox: SQLiteOutbox,
    provider: TracerProvider,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    broken: str,
) -> None:
    from opentelemetry import propagate

    sent: list[Event] = []
    bus.subscribe(OrderPlaced, name="catalog.reserve")(sent.append)

    def fails(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the propagator is broken")

    if broken == "inject":
        monkeypatch.setattr(propagate, "inject", fails)
    with provider.get_tracer("web").start_as_current_span("POST /orders"):
        add(outbox, OrderPlaced(order_id="o1"))
    if broken == "extract":
        monkeypatch.setattr(propagate, "extract", fails)
    assert relay(bus, outbox, use_async=False) == 1
    assert [event.order_id for event in sent if isinstance(event, OrderPlaced)] == ["o1"]
    assert len(outbox) == 0
    assert "the propagator is broken" in caplog.text


def test_a_relay_s_records_about_a_row_carry_the_trace_id_it_was_added_in(
    outbox: SQLiteOutbox, provider: TracerProvider, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from eventbus import BrokerError, PublishResult, RetryPolicy

    class Down:
        """A transport whose broker does not answer."""

        def bind(self, bus: EventBus, plan: object) -> tuple[object, object]:
            def publish(event: Event) -> PublishResult:
                raise BrokerError("the broker does not answer")

            async def publish_async(event: Event) -> PublishResult:
                return publish(event)

            return publish, publish_async

    down = EventBus(transport=Down(), clock=FakeClock())  # type: ignore[arg-type]
    with provider.get_tracer("web").start_as_current_span("POST /orders") as request:
        add(outbox, OrderPlaced(order_id="o1"))
    with (
        caplog.at_level(logging.INFO, logger="eventbus"),
        Relay(down, outbox, retry=RetryPolicy(max_attempts=1)) as sender,
    ):
        assert sender.send() == 0  # the one attempt fails: a dead letter
    about = [r for r in caplog.records if "outbox_row" in r.__dict__]
    assert about
    trace_id = f"{request.get_span_context().trace_id:032x}"
    assert all(record.__dict__["trace_id"] == trace_id for record in about)


def test_an_error_in_the_block_is_not_chained_to_a_broken_propagator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry import propagate

    from eventbus._propagation import attached

    def fails(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the propagator is broken")

    monkeypatch.setattr(propagate, "extract", fails)
    traceparent = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    with (
        pytest.raises(ValueError, match="the send failed") as raised,
        attached({"traceparent": traceparent}),
    ):
        raise ValueError("the send failed")
    assert raised.value.__context__ is None
