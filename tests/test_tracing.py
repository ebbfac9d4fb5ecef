"""Trace: the tree and the diagram of what a bus dispatched, recorded from its signals.

Every bus here is given a clock whose waits return at once
(``tests.clocks.TestClock``), so retries never wait. The shop's handlers are
methods, as in an application; ``SyncShop`` and ``AsyncShop`` are the same
logic as ``def`` and ``async def`` handlers, so one expected tree covers
both, on every dispatch path.
"""

from __future__ import annotations

import asyncio
import collections.abc as c
import contextlib
import dataclasses
import gc
import logging
import pathlib
import re
import threading
import typing as t
import uuid
import weakref

import pytest

import eventbus
from eventbus import (
    NO_HANDLER,
    DeadLetter,
    Event,
    EventBus,
    PublishResult,
    RetryPolicy,
    SQLiteDeadLetterStore,
    Trace,
    TracedEvent,
    TracedFailure,
    TracedHandler,
    signals,
)
from tests.clocks import TestClock


class OrderPlaced(Event):
    order_id: str = "o1"


class StockReserved(Event):
    order_id: str = "o1"


class PaymentTaken(Event):
    order_id: str = "o1"


class AuditLogged(Event):  # nobody subscribes to it
    order_id: str = "o1"


MODES = ["sync", "async", "concurrent"]
KINDS = ["sync_def", "async_def"]


@pytest.fixture(autouse=True)
def receivers_never_raise(
    request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> c.Iterator[None]:
    """A trace's receiver that raised would only be logged by the bus: fail the test instead."""
    yield
    if request.node.originalname != "test_a_receiver_error_never_breaks_dispatch":
        assert [r.getMessage() for r in caplog.records if "signal receiver" in r.getMessage()] == []


@pytest.fixture
def traces() -> c.Iterator[list[Trace]]:
    """Where a test keeps the traces it opens without a ``with`` block.

    Each is closed after the test, even one that failed before closing it,
    so that no trace's receivers stay connected to the signals.
    """
    opened: list[Trace] = []
    yield opened
    for trace in opened:
        trace.close()


def make_bus(mode: str = "sync", **options: t.Any) -> EventBus:
    return EventBus(clock=TestClock(), concurrent=mode == "concurrent", **options)


def publish(bus: EventBus, event: Event, mode: str) -> PublishResult:
    if mode == "sync":
        return bus.publish(event)
    return asyncio.run(bus.publish_async(event))


def redrive(bus: EventBus, letter: DeadLetter, mode: str) -> PublishResult:
    if mode == "sync":
        return bus.redrive(letter)
    return asyncio.run(bus.redrive_async(letter))


def within(test: c.Callable[..., object]) -> str:
    """The prefix of the names of handlers defined inside ``test``, for ``strip_prefix``."""
    return f"{test.__module__}.{test.__qualname__}.<locals>."


def short(letter: DeadLetter | None) -> str:
    assert letter is not None
    return str(letter.id)[:8]


class Shop:
    """The shop's logic; failures on demand."""

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self.notify_failures = 2  # notify's next attempts that fail
        self.charge_failures = 2  # charge's next attempts that fail
        self.receipts: list[str] = []

    def _reserve(self, event: OrderPlaced) -> None:
        self.bus.publish(StockReserved(order_id=event.order_id))

    def _notify(self, event: OrderPlaced) -> None:
        if self.notify_failures:
            self.notify_failures -= 1
            raise ConnectionError("mail server down")

    def _charge(self, event: StockReserved) -> None:
        if self.charge_failures:
            self.charge_failures -= 1
            raise ConnectionError("gateway timeout")
        self.bus.publish(PaymentTaken(order_id=event.order_id))

    def _audit(self, event: StockReserved) -> None:
        self.bus.publish(AuditLogged(order_id=event.order_id))

    def _receipt(self, event: PaymentTaken) -> None:
        self.receipts.append(event.order_id)


class SyncShop(Shop):
    def reserve(self, event: OrderPlaced) -> None:
        self._reserve(event)

    def notify(self, event: OrderPlaced) -> None:
        self._notify(event)

    def charge(self, event: StockReserved) -> None:
        self._charge(event)

    def audit(self, event: StockReserved) -> None:
        self._audit(event)

    def receipt(self, event: PaymentTaken) -> None:
        self._receipt(event)


class AsyncShop(Shop):
    async def reserve(self, event: OrderPlaced) -> None:
        await asyncio.sleep(0)
        self._reserve(event)

    async def notify(self, event: OrderPlaced) -> None:
        await asyncio.sleep(0)
        self._notify(event)

    async def charge(self, event: StockReserved) -> None:
        await asyncio.sleep(0)
        self._charge(event)

    async def audit(self, event: StockReserved) -> None:
        await asyncio.sleep(0)
        self._audit(event)

    async def receipt(self, event: PaymentTaken) -> None:
        await asyncio.sleep(0)
        self._receipt(event)


def open_shop(
    mode: str = "sync", kind: str = "sync_def", **options: t.Any
) -> tuple[EventBus, Shop, str]:
    """A bus with the shop's handlers, and the prefix to strip from their names."""
    bus = make_bus(mode, **options)
    shop = SyncShop(bus) if kind == "sync_def" else AsyncShop(bus)
    bus.subscribe(shop.reserve, priority=10)
    bus.subscribe(shop.notify, retry=RetryPolicy(max_attempts=3, initial_delay=0.25))
    bus.subscribe(shop.charge, retry=RetryPolicy(max_attempts=2, initial_delay=0.5))
    bus.subscribe(shop.audit, priority=-1)
    bus.subscribe(shop.receipt)
    return bus, shop, f"{type(shop).__module__}.{type(shop).__qualname__}."


def shop_tree(letter: DeadLetter) -> str:
    return f"""\
OrderPlaced
├── reserve ✓
│   └── StockReserved
│       ├── charge ✗ after 2 attempts → dead letter {short(letter)}
│       │   ├── attempt 1 failed: ConnectionError: gateway timeout (retry in 0.5s)
│       │   └── attempt 2 failed: ConnectionError: gateway timeout
│       └── audit ✓
│           └── AuditLogged (no handler)
└── notify ✓ after 3 attempts
    ├── attempt 1 failed: ConnectionError: mail server down (retry in 0.25s)
    └── attempt 2 failed: ConnectionError: mail server down (retry in 0.5s)"""


# -- the tree ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", MODES)
def test_tree_of_a_cascade_with_children_retries_a_dead_letter_and_an_unhandled_event(
    mode: str, kind: str
) -> None:
    bus, _, prefix = open_shop(mode, kind)
    with Trace(bus) as trace:
        result = publish(bus, OrderPlaced(), mode)
    [letter] = result.dead_letters
    assert trace.render(strip_prefix=prefix) == shop_tree(letter)

    [root] = trace.roots
    assert root.event is result.event
    assert root.publisher is None
    assert [h.name for h in root.handlers] == [prefix + "reserve", prefix + "notify"]
    reserve, notify = root.handlers
    assert (reserve.outcome, reserve.attempts, reserve.failures) == ("succeeded", 1, [])
    assert notify == TracedHandler(
        name=prefix + "notify",
        outcome="succeeded",
        attempts=3,
        failures=[
            TracedFailure(1, "builtins.ConnectionError", "mail server down", 0.25),
            TracedFailure(2, "builtins.ConnectionError", "mail server down", 0.5),
        ],
        dead_letter=None,
        redrive=False,
        children=[],
    )
    [reserved] = root.children
    assert reserve.children == [reserved]
    assert reserved.publisher == prefix + "reserve"
    assert reserved.publisher_attempt == 1
    assert reserved.event.causation_id == root.event.event_id
    charge, audit = reserved.handlers
    assert charge.outcome == "dead-lettered"
    assert charge.dead_letter == letter
    assert [f.delay for f in charge.failures] == [0.5, None]
    assert not charge.redrive
    [logged] = audit.children
    assert logged.unhandled
    assert logged.handlers == []
    assert logged.children == []


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", MODES)
def test_events_a_redriven_handler_publishes_sit_under_it(mode: str, kind: str) -> None:
    bus, shop, prefix = open_shop(mode, kind)
    [letter] = publish(bus, OrderPlaced(), mode).dead_letters
    shop.charge_failures = 1  # fails once more, then succeeds and publishes PaymentTaken
    with Trace(bus) as trace:
        result = redrive(bus, letter, mode)
    assert result.ok
    assert shop.receipts == ["o1"]
    assert trace.render(strip_prefix=prefix) == (
        f"StockReserved ↻ redrive of dead letter {short(letter)}\n"
        "└── charge ✓ after 2 attempts\n"
        "    ├── attempt 1 failed: ConnectionError: gateway timeout (retry in 0.5s)\n"
        "    └── PaymentTaken\n"
        "        └── receipt ✓"
    )
    [root] = trace.roots
    assert root.event is letter.event
    assert root.redrive_of is letter
    assert root.publisher is None
    [charge] = root.handlers
    assert charge.redrive
    assert charge.dead_letter is None
    [taken] = charge.children
    assert root.children == [taken]
    assert taken.publisher == prefix + "charge"
    assert taken.publisher_attempt == 2
    assert [h.redrive for h in taken.handlers] == [False]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_redrive_that_fails_again_keeps_the_letter_id(mode: str) -> None:
    bus, shop, prefix = open_shop(mode)
    with Trace(bus) as trace:
        [letter] = publish(bus, OrderPlaced(), mode).dead_letters
        shop.charge_failures = 2
        [again] = redrive(bus, letter, mode).dead_letters
    assert again.id == letter.id
    assert again.attempts == 4
    first, second = trace.roots
    assert trace.render(strip_prefix=prefix).split("\n")[len(shop_tree(letter).split("\n")) :] == [
        f"StockReserved ↻ redrive of dead letter {short(letter)}",
        f"└── charge ✗ after 2 attempts → dead letter {short(letter)}",
        "    ├── attempt 1 failed: ConnectionError: gateway timeout (retry in 0.5s)",
        "    └── attempt 2 failed: ConnectionError: gateway timeout",
    ]
    # the first publish's record is untouched by the redrive of the same event object
    assert first.handlers[0].children[0].handlers[0].dead_letter == letter
    [charge] = second.handlers
    assert charge.redrive
    assert charge.dead_letter == again
    assert charge.attempts == 2


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_redrive_of_a_letter_read_back_from_a_durable_store(
    mode: str, tmp_path: pathlib.Path
) -> None:
    with SQLiteDeadLetterStore(tmp_path / "dlq.db") as store:
        bus, shop, prefix = open_shop(mode, dead_letters=store)
        publish(bus, OrderPlaced(order_id="o9"), mode)
        [letter] = store  # a rebuilt event object, not the one published
        shop.charge_failures = 0
        with Trace(bus) as trace:
            assert redrive(bus, letter, mode).ok
    assert trace.render(strip_prefix=prefix) == (
        f"StockReserved ↻ redrive of dead letter {short(letter)}\n"
        "└── charge ✓\n"
        "    └── PaymentTaken\n"
        "        └── receipt ✓"
    )


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_events_published_before_a_failed_attempt_are_shown_in_the_order_things_happened(
    mode: str,
) -> None:
    bus = make_bus(mode)
    calls: list[int] = []

    @bus.subscribe(retry=RetryPolicy(max_attempts=2, initial_delay=1))
    def flaky(event: OrderPlaced) -> None:
        calls.append(1)
        bus.publish(StockReserved(order_id=str(len(calls))))
        if len(calls) != 4:
            raise ConnectionError(f"try {len(calls)}")

    prefix = within(
        test_events_published_before_a_failed_attempt_are_shown_in_the_order_things_happened
    )
    with Trace(bus) as trace:
        [letter] = publish(bus, OrderPlaced(), mode).dead_letters
        assert redrive(bus, letter, mode).ok  # attempt 1 publishes, then fails; attempt 2 works
    assert trace.render(strip_prefix=prefix) == (
        "OrderPlaced\n"
        f"└── flaky ✗ after 2 attempts → dead letter {short(letter)}\n"
        "    ├── StockReserved (no handler)\n"
        "    ├── attempt 1 failed: ConnectionError: try 1 (retry in 1s)\n"
        "    ├── StockReserved (no handler)\n"
        "    └── attempt 2 failed: ConnectionError: try 2\n"
        f"OrderPlaced ↻ redrive of dead letter {short(letter)}\n"
        "└── flaky ✓ after 2 attempts\n"
        "    ├── StockReserved (no handler)\n"
        "    ├── attempt 1 failed: ConnectionError: try 3 (retry in 1s)\n"
        "    └── StockReserved (no handler)"
    )
    published, redriven = trace.roots
    for root, orders in [(published, ["1", "2"]), (redriven, ["3", "4"])]:
        assert [t.cast(StockReserved, c.event).order_id for c in root.children] == orders
        assert [c.publisher_attempt for c in root.children] == [1, 2]
        assert root.handlers[0].children == root.children


def test_concurrent_handlers_each_get_the_events_they_published() -> None:
    class Kickoff(Event):
        pass

    class LeftDone(Event):
        n: int

    class RightDone(Event):
        n: int

    bus = make_bus("concurrent")
    lefts: list[int] = []

    @bus.subscribe(retry=RetryPolicy(max_attempts=2, initial_delay=0.5))
    async def left(event: Kickoff) -> None:
        lefts.append(1)
        await asyncio.sleep(0)
        await bus.publish_async(LeftDone(n=len(lefts)))
        await asyncio.sleep(0)
        if len(lefts) == 1:
            raise ConnectionError("flaky")

    @bus.subscribe
    async def right(event: Kickoff) -> None:
        await asyncio.sleep(0)
        await bus.publish_async(RightDone(n=1))
        await asyncio.sleep(0)
        await bus.publish_async(RightDone(n=2))

    @bus.subscribe
    def done(event: LeftDone | RightDone) -> None: ...

    with Trace(bus) as trace:
        assert asyncio.run(bus.publish_async(Kickoff())).ok
    [root] = trace.roots
    # the two handlers ran at the same time: their events were published interleaved
    assert [(type(c.event).__name__, c.event.n) for c in root.children] == [  # type: ignore[attr-defined]
        ("LeftDone", 1),
        ("RightDone", 1),
        ("RightDone", 2),
        ("LeftDone", 2),
    ]
    assert trace.render(
        strip_prefix=within(test_concurrent_handlers_each_get_the_events_they_published)
    ) == (
        "Kickoff\n"
        "├── left ✓ after 2 attempts\n"
        "│   ├── LeftDone\n"
        "│   │   └── done ✓\n"
        "│   ├── attempt 1 failed: ConnectionError: flaky (retry in 0.5s)\n"
        "│   └── LeftDone\n"
        "│       └── done ✓\n"
        "└── right ✓\n"
        "    ├── RightDone\n"
        "    │   └── done ✓\n"
        "    └── RightDone\n"
        "        └── done ✓"
    )


# -- unhandled events ----------------------------------------------------------------------------


class Unwatched(Event):
    pass


@pytest.mark.parametrize("mode", MODES)
def test_unhandled_event_is_marked(mode: str) -> None:
    bus = make_bus(mode)
    with Trace(bus) as trace:
        publish(bus, Unwatched(), mode)
    assert trace.render() == "Unwatched (no handler)"
    [root] = trace.roots
    assert root.unhandled
    assert root.handlers == []


@pytest.mark.parametrize("mode", MODES)
def test_reported_unhandled_event_shows_its_dead_letter(mode: str) -> None:
    bus = make_bus(mode, report_unhandled=True)
    with Trace(bus) as trace:
        [letter] = publish(bus, Unwatched(), mode).dead_letters
    assert trace.render() == f"Unwatched (no handler) ✗ dead letter {short(letter)}"
    [root] = trace.roots
    assert root.handlers == [
        TracedHandler(NO_HANDLER, "dead-lettered", 0, [], letter, redrive=False, children=[])
    ]
    assert trace.mermaid() == 'flowchart LR\n    ev_Unwatched(["Unwatched"])'


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_redrive_of_an_unhandled_event(mode: str) -> None:
    bus = make_bus(mode, report_unhandled=True)
    with Trace(bus) as trace:
        [letter] = publish(bus, Unwatched(), mode).dead_letters
        [again] = redrive(bus, letter, mode).dead_letters  # still no handler

        @bus.subscribe
        def watch(event: Unwatched) -> None:
            bus.publish(PaymentTaken())

        @bus.subscribe
        def paid(event: PaymentTaken) -> None: ...

        assert redrive(bus, again, mode).ok
    letter_id = short(letter)
    assert trace.render(strip_prefix=within(test_redrive_of_an_unhandled_event)) == (
        f"Unwatched (no handler) ✗ dead letter {letter_id}\n"
        f"Unwatched (no handler) ✗ dead letter {letter_id} ↻ redrive of dead letter {letter_id}\n"
        f"Unwatched ↻ redrive of dead letter {letter_id}\n"
        "└── watch ✓\n"
        "    └── PaymentTaken\n"
        "        └── paid ✓"
    )
    _, still, handled = trace.roots
    assert still.redrive_of is letter
    assert [h.redrive for h in still.handlers] == [True]
    assert handled.redrive_of is again
    assert not handled.unhandled
    assert [h.redrive for h in handled.handlers] == [True]


# -- render options ------------------------------------------------------------------------------


def test_ids_adds_each_events_short_id() -> None:
    bus, _, prefix = open_shop()
    with Trace(bus) as trace:
        [letter] = bus.publish(OrderPlaced()).dead_letters
    [root] = trace.roots
    [reserved] = root.children
    [logged] = reserved.children

    def sid(traced: TracedEvent) -> str:
        return str(traced.event.event_id)[:8]

    lines = trace.render(ids=True, strip_prefix=prefix).split("\n")
    assert lines[0] == f"OrderPlaced [{sid(root)}]"
    assert lines[2] == f"│   └── StockReserved [{sid(reserved)}]"
    assert lines[7] == f"│           └── AuditLogged [{sid(logged)}] (no handler)"
    without_ids = re.sub(r" \[[0-9a-f]{8}\]", "", "\n".join(lines))
    assert without_ids == shop_tree(letter) == trace.render(strip_prefix=prefix)


def test_strip_prefix_shortens_only_the_names_that_start_with_it() -> None:
    bus, _, prefix = open_shop()
    with Trace(bus) as trace:
        bus.publish(OrderPlaced())
    full = trace.render()
    assert f"├── {prefix}reserve ✓" in full
    assert f"│       ├── {prefix}charge ✗ after 2 attempts" in full
    assert trace.render(strip_prefix="no.such.prefix.") == full
    assert trace.render(strip_prefix=prefix) == full.replace(prefix, "")
    module = prefix.split("SyncShop.")[0]
    assert "├── SyncShop.reserve ✓" in trace.render(strip_prefix=module)


def test_a_failure_shows_the_first_line_of_its_message_cut_to_a_readable_length() -> None:
    bus = make_bus()

    @bus.subscribe
    def verbose(event: OrderPlaced) -> None:
        raise ValueError("x" * 300 + "\nsecond line")

    @bus.subscribe
    def silent(event: StockReserved) -> None:
        raise SilentError

    with Trace(bus) as trace:
        bus.publish(OrderPlaced())
        bus.publish(StockReserved())
    lines = trace.render().split("\n")
    assert lines[2] == "    └── attempt 1 failed: ValueError: " + "x" * 119 + "…"
    assert lines[5] == "    └── attempt 1 failed: SilentError"
    [failure] = trace.roots[0].handlers[0].failures
    assert failure.message == "x" * 300 + "\nsecond line"  # kept whole (up to 2,000)


class SilentError(Exception):
    """An error without a message."""


def test_an_empty_trace() -> None:
    with Trace(make_bus()) as trace:
        pass
    assert trace.roots == []
    assert trace.render() == ""
    assert trace.mermaid() == "flowchart LR"


# -- mermaid -------------------------------------------------------------------------------------

SHOP_MERMAID = """\
flowchart LR
    ev_AuditLogged(["AuditLogged"])
    ev_OrderPlaced(["OrderPlaced"])
    ev_PaymentTaken(["PaymentTaken"])
    ev_StockReserved(["StockReserved"])
    h_audit["audit"]
    h_charge["charge"]
    h_notify["notify"]
    h_receipt["receipt"]
    h_reserve["reserve"]
    ev_OrderPlaced --> h_notify
    ev_OrderPlaced --> h_reserve
    ev_PaymentTaken --> h_receipt
    ev_StockReserved --> h_audit
    ev_StockReserved --> h_charge
    h_audit --> ev_AuditLogged
    h_charge --> ev_PaymentTaken
    h_reserve --> ev_StockReserved
    classDef deadLettered fill:#fde2e2,stroke:#c0392b,stroke-width:2px
    class h_charge deadLettered"""


def run_shop(mode: str = "sync", kind: str = "sync_def", *, orders: int = 1) -> tuple[Trace, str]:
    """Publish ``orders`` orders (the first one's charge is dead-lettered), then redrive."""
    bus, shop, prefix = open_shop(mode, kind)
    with Trace(bus) as trace:
        letters = [
            letter
            for n in range(orders)
            for letter in publish(bus, OrderPlaced(order_id=f"o{n}"), mode).dead_letters
        ]
        shop.charge_failures = 0
        for letter in letters:
            assert redrive(bus, letter, "sync" if mode == "sync" else "async").ok
    return trace, prefix


def test_mermaid_of_a_known_cascade() -> None:
    trace, prefix = run_shop()
    assert trace.mermaid(strip_prefix=prefix) == SHOP_MERMAID


def test_mermaid_without_strip_prefix_uses_full_names_in_ids_and_labels() -> None:
    trace, prefix = run_shop()
    diagram = trace.mermaid()
    node = "h_" + re.sub(r"\W", "_", prefix) + "charge"
    assert f'    {node}["{prefix}charge"]' in diagram
    assert f"    ev_StockReserved --> {node}" in diagram
    assert f"    class {node} deadLettered" in diagram


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", MODES)
def test_mermaid_is_the_same_for_the_same_dispatch(mode: str, kind: str) -> None:
    first, prefix = run_shop(mode, kind, orders=3)
    second, _ = run_shop(mode, kind, orders=3)
    assert first.mermaid() == second.mermaid()
    assert first.mermaid(strip_prefix=prefix) == second.mermaid(strip_prefix=prefix)
    assert first.mermaid(strip_prefix=prefix) == SHOP_MERMAID  # aggregated: one edge each


def test_mermaid_ids_are_valid_distinct_and_labels_escaped() -> None:
    def twin_a() -> type[Event]:
        class Twin(Event):
            pass

        return Twin

    def twin_b() -> type[Event]:
        class Twin(Event):
            pass

        return Twin

    bus = make_bus()
    first, second = twin_a(), twin_b()

    @bus.subscribe(first)
    def on_twin(event: Event) -> None:
        bus.publish(second())

    def dotted(event: Event) -> None: ...

    def underscored(event: Event) -> None: ...

    dotted.__qualname__ = "x.y_z"  # the names differ; made into ids, they would not
    underscored.__qualname__ = "x_y.z"
    bus.subscribe(second)(dotted)
    bus.subscribe(second)(underscored)

    with Trace(bus) as trace:
        bus.publish(first())
    diagram = trace.mermaid()
    lines = diagram.split("\n")
    ids = [
        re.split(r"[(\[]", line.strip())[0]
        for line in lines[1:]
        if "-->" not in line and "class" not in line
    ]
    assert all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", i) for i in ids), ids
    assert len(set(ids)) == len(ids) == 5
    assert '    ev_Twin(["Twin"])' in lines
    assert '    ev_Twin_2(["Twin"])' in lines
    module = re.sub(r"\W", "_", __name__)
    assert f'    h_{module}_x_y_z["{__name__}.x.y_z"]' in lines
    assert f'    h_{module}_x_y_z_2["{__name__}.x_y.z"]' in lines
    assert "#lt;locals#gt;" in diagram
    assert "<" not in diagram.replace("-->", "")


# -- recording: start, stop, scope ---------------------------------------------------------------


def test_close_stops_recording_and_keeps_what_was_recorded(traces: list[Trace]) -> None:
    bus, _, prefix = open_shop()
    trace = Trace(bus)
    traces.append(trace)
    assert trace.recording
    assert trace.bus is bus
    bus.publish(OrderPlaced())
    before = trace.render(strip_prefix=prefix)
    trace.close()
    trace.close()  # idempotent
    assert not trace.recording
    bus.publish(OrderPlaced())
    assert len(trace.roots) == 1
    assert trace.render(strip_prefix=prefix) == before
    for name in signals.__all__:
        assert list(getattr(signals, name).receivers_for(bus)) == []


def test_a_closed_trace_leaves_no_receiver_connected_and_can_be_freed() -> None:
    hooks = {name: getattr(signals, name) for name in signals.__all__}
    assert not any(signal.receivers for signal in hooks.values())  # nothing left by others
    bus, _, _ = open_shop()
    with Trace(bus) as trace:
        bus.publish(OrderPlaced())
    for name, signal in hooks.items():
        assert not signal.receivers, name  # not only unlinked from the bus
    ref = weakref.ref(trace)
    del trace
    gc.collect()
    assert ref() is None  # no signal keeps a closed trace alive


def test_context_manager_records_inside_the_block_only() -> None:
    bus, _, _ = open_shop()
    bus.publish(OrderPlaced(order_id="before"))
    with Trace(bus) as trace:
        assert trace.recording
        bus.publish(OrderPlaced(order_id="inside"))
    assert not trace.recording
    bus.publish(OrderPlaced(order_id="after"))
    assert [t.cast(OrderPlaced, r.event).order_id for r in trace.roots] == ["inside"]


def test_clear_forgets_and_goes_on_recording() -> None:
    bus, _, _ = open_shop()
    with Trace(bus) as trace:
        bus.publish(OrderPlaced(order_id="1"))
        trace.clear()
        assert trace.roots == []
        assert trace.recording
        bus.publish(OrderPlaced(order_id="2"))
    assert [t.cast(OrderPlaced, r.event).order_id for r in trace.roots] == ["2"]


def test_a_trace_of_one_bus_ignores_another() -> None:
    bus, _, _ = open_shop()
    other, _, _ = open_shop()
    with Trace(bus) as trace, Trace(other) as other_trace:
        other.publish(OrderPlaced())
        assert trace.roots == []
        bus.publish(OrderPlaced())
    assert len(trace.roots) == 1
    assert len(other_trace.roots) == 1
    assert trace.render() != ""
    assert trace.roots[0].event is not other_trace.roots[0].event


def test_trace_needs_a_bus() -> None:
    with pytest.raises(TypeError, match="EventBus"):
        Trace(object())  # type: ignore[arg-type]


def test_a_receiver_error_never_breaks_dispatch(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    class BrokenLock:
        def __enter__(self) -> None:
            raise RuntimeError("recorder bug")

        def __exit__(self, *args: object) -> None:
            return None

    bus, shop, _ = open_shop()
    trace = Trace(bus)
    try:
        monkeypatch.setattr(trace, "_lock", BrokenLock())
        with caplog.at_level(logging.ERROR, logger="eventbus"):
            result = bus.publish(OrderPlaced())
    finally:
        monkeypatch.undo()  # close() takes the real lock
        trace.close()
    assert [letter.handler.rsplit(".", 1)[-1] for letter in result.dead_letters] == ["charge"]
    assert shop.notify_failures == 0
    assert any("signal receiver" in r.getMessage() for r in caplog.records)


def test_eventbus_exports_the_tracing_api() -> None:
    assert eventbus.Trace is Trace
    assert {"Trace", "TracedEvent", "TracedHandler", "TracedFailure"} <= set(eventbus.__all__)


def test_snapshots_are_frozen_and_fresh() -> None:
    bus, _, _ = open_shop()
    with Trace(bus) as trace:
        bus.publish(OrderPlaced())
    roots = trace.roots
    with pytest.raises(dataclasses.FrozenInstanceError):
        roots[0].publisher = "someone"  # type: ignore[misc]
    roots[0].handlers.clear()
    roots.clear()
    assert len(trace.roots) == 1
    assert len(trace.roots[0].handlers) == 2
    assert trace.roots == trace.roots  # equal, not the same lists


# -- where events come from ----------------------------------------------------------------------


def test_a_snapshot_taken_while_a_handler_runs_shows_it_running(traces: list[Trace]) -> None:
    bus = make_bus()
    seen: list[str] = []
    trace = Trace(bus)
    traces.append(trace)

    @bus.subscribe
    def start(event: OrderPlaced) -> None:
        bus.publish(StockReserved())
        seen.append(trace.render(strip_prefix=prefix))

    prefix = within(test_a_snapshot_taken_while_a_handler_runs_shows_it_running)
    bus.publish(OrderPlaced())
    trace.close()
    assert seen == ["OrderPlaced\n└── start … running\n    └── StockReserved"]
    assert trace.roots[0].handlers[0].outcome == "succeeded"


@pytest.mark.parametrize("observed", [True, False], ids=["observed", "unobserved"])
def test_a_trace_started_inside_a_handler_still_places_what_follows(
    observed: bool, traces: list[Trace]
) -> None:
    """The trace never hears ``start`` begin, yet what ``start`` publishes goes under it.

    For that the bus must name the publisher of each event, which it does
    only if ``event_published`` had a receiver when the handler started
    (here, one the application connected before publishing). Without one,
    the bus never says that ``start`` published ``StockReserved`` (nor that
    ``start`` ran): the trace can only show ``StockReserved`` as a root,
    still with its handlers.
    """
    bus = make_bus()

    @bus.subscribe
    def start(event: OrderPlaced) -> None:
        traces.append(Trace(bus))
        bus.publish(StockReserved())

    @bus.subscribe
    def reserved(event: StockReserved) -> None: ...

    def listening(sender: EventBus, **kwargs: object) -> None: ...

    with contextlib.ExitStack() as stack:
        if observed:
            stack.enter_context(signals.event_published.connected_to(listening, sender=bus))
        bus.publish(OrderPlaced())
    [trace] = traces
    trace.close()
    tree = trace.render(
        strip_prefix=within(test_a_trace_started_inside_a_handler_still_places_what_follows)
    )
    placed = "OrderPlaced\n└── start ✓\n    └── StockReserved\n        └── reserved ✓"
    if observed:
        assert tree == placed
    else:  # a bus that always notes who publishes would place it too
        assert tree in {placed, "StockReserved\n└── reserved ✓"}


def test_an_event_whose_causation_id_was_set_by_hand_is_a_root_naming_its_publisher() -> None:
    bus = make_bus()

    @bus.subscribe
    def start(event: OrderPlaced) -> None:
        bus.publish(StockReserved(causation_id=uuid.uuid4()))

    with Trace(bus) as trace:
        bus.publish(OrderPlaced())
    prefix = within(test_an_event_whose_causation_id_was_set_by_hand_is_a_root_naming_its_publisher)
    assert trace.render(strip_prefix=prefix) == (
        "OrderPlaced\n└── start ✓\nStockReserved (published by start) (no handler)"
    )
    assert trace.mermaid(strip_prefix=prefix).count("h_start --> ev_StockReserved") == 1


def test_the_same_event_object_published_twice_is_recorded_twice() -> None:
    bus = make_bus()
    order = OrderPlaced()
    child = StockReserved(causation_id=order.event_id, correlation_id=order.event_id)

    @bus.subscribe
    def start(event: OrderPlaced) -> None:
        bus.publish(child)
        bus.publish(child)

    @bus.subscribe
    def reserved(event: StockReserved) -> None: ...

    with Trace(bus) as trace:
        bus.publish(order)
        bus.publish(order)
    tree = "OrderPlaced\n└── start ✓\n    ├── StockReserved\n    │   └── reserved ✓\n"
    tree += "    └── StockReserved\n        └── reserved ✓"
    prefix = within(test_the_same_event_object_published_twice_is_recorded_twice)
    assert trace.render(strip_prefix=prefix) == f"{tree}\n{tree}"


def test_an_async_handler_that_cannot_run_on_the_sync_path_shows_why() -> None:
    bus = make_bus()

    @bus.subscribe
    def start(event: OrderPlaced) -> None:
        bus.publish(StockReserved())

    @bus.subscribe
    async def reserved(event: StockReserved) -> None: ...

    async def publish_from_a_running_loop() -> PublishResult:
        return bus.publish(OrderPlaced())  # the child's async handler cannot run here

    with Trace(bus) as trace:
        [letter] = asyncio.run(publish_from_a_running_loop()).dead_letters
    prefix = within(test_an_async_handler_that_cannot_run_on_the_sync_path_shows_why)
    lines = trace.render(strip_prefix=prefix).split("\n")
    assert lines[:4] == [
        "OrderPlaced",
        "└── start ✓",
        "    └── StockReserved",
        f"        └── reserved ✗ → dead letter {short(letter)}",
    ]
    assert lines[4].startswith("            └── failed: SyncPublishError: ")
    assert "is async" in lines[4]
    assert trace.roots[0].children[0].handlers[0].attempts == 0


def test_handlers_run_in_worker_threads_publish_under_themselves() -> None:
    bus = make_bus("async")

    @bus.subscribe(run_in_thread=True)
    def start(event: OrderPlaced) -> None:
        assert threading.current_thread() is not threading.main_thread()
        bus.publish(StockReserved())

    @bus.subscribe(run_in_thread=True)
    def reserved(event: StockReserved) -> None: ...

    with Trace(bus) as trace:
        asyncio.run(bus.publish_async(OrderPlaced()))
    prefix = within(test_handlers_run_in_worker_threads_publish_under_themselves)
    assert trace.render(strip_prefix=prefix) == (
        "OrderPlaced\n└── start ✓\n    └── StockReserved\n        └── reserved ✓"
    )


def test_publishing_from_many_threads_at_once_records_every_cascade_whole() -> None:
    bus, shop, prefix = open_shop()
    shop.notify_failures = shop.charge_failures = 0
    threads, per_thread = 8, 25
    barrier = threading.Barrier(threads)

    def publisher(n: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            assert bus.publish(OrderPlaced(order_id=f"{n}-{i}")).ok

    with Trace(bus) as trace:
        workers = [threading.Thread(target=publisher, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    roots = trace.roots
    assert len(roots) == threads * per_thread
    one = (
        "OrderPlaced\n"
        "├── reserve ✓\n"
        "│   └── StockReserved\n"
        "│       ├── charge ✓\n"
        "│       │   └── PaymentTaken\n"
        "│       │       └── receipt ✓\n"
        "│       └── audit ✓\n"
        "│           └── AuditLogged (no handler)\n"
        "└── notify ✓"
    )
    assert trace.render(strip_prefix=prefix) == "\n".join([one] * len(roots))
    for root in roots:  # each cascade under its own root
        [reserved] = root.children
        assert reserved.event.correlation_id == root.event.event_id
        for child in reserved.children:
            assert child.event.correlation_id == root.event.event_id
    assert sorted(shop.receipts) == sorted(t.cast(OrderPlaced, r.event).order_id for r in roots)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_redrive_all_of_two_letters_of_one_event_makes_one_root_each(mode: str) -> None:
    bus = make_bus(mode)
    broken = {"first", "second"}

    @bus.subscribe
    def first(event: OrderPlaced) -> None:
        if "first" in broken:
            raise ValueError("first is broken")

    @bus.subscribe
    def second(event: OrderPlaced) -> None:
        if "second" in broken:
            raise ValueError("second is broken")

    with Trace(bus) as trace:
        one, two = publish(bus, OrderPlaced(), mode).dead_letters
        broken.clear()
        outcomes = bus.redrive_all() if mode == "sync" else asyncio.run(bus.redrive_all_async())
    assert [outcome.ok for outcome in outcomes] == [True, True]
    prefix = within(test_redrive_all_of_two_letters_of_one_event_makes_one_root_each)
    assert trace.render(strip_prefix=prefix).split("\n")[-4:] == [
        f"OrderPlaced ↻ redrive of dead letter {short(one)}",
        "└── first ✓",
        f"OrderPlaced ↻ redrive of dead letter {short(two)}",
        "└── second ✓",
    ]
    _, redrove_one, redrove_two = trace.roots
    assert redrove_one.event is redrove_two.event is one.event


def test_a_trace_started_between_a_failure_and_its_retry(traces: list[Trace]) -> None:
    bus = make_bus()
    calls: list[int] = []

    def start_tracing(sender: EventBus, **kwargs: object) -> None:
        traces.append(Trace(bus))  # hears handler_retrying, not this handler_failed

    @bus.subscribe(retry=RetryPolicy(max_attempts=2, initial_delay=0.5))
    def flaky(event: OrderPlaced) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("once")

    with signals.handler_failed.connected_to(start_tracing, sender=bus):
        bus.publish(OrderPlaced())
    [trace] = traces
    trace.close()
    assert trace.render(
        strip_prefix=within(test_a_trace_started_between_a_failure_and_its_retry)
    ) == (
        "OrderPlaced\n"
        "└── flaky ✓ after 2 attempts\n"
        "    └── attempt 1 failed: ConnectionError: once (retry in 0.5s)"
    )


def test_repr_says_whether_it_records(traces: list[Trace]) -> None:
    bus = make_bus()
    trace = Trace(bus)
    traces.append(trace)
    bus.publish(Unwatched())
    assert repr(trace) == f"<Trace recording roots=1 bus={bus!r}>"
    trace.close()
    assert repr(trace).startswith("<Trace closed roots=1 ")
