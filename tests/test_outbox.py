"""The transactional outbox and its relay, in this process (the Redis side: test_outbox_processes).

The bus the relay publishes on has a recording transport here: it keeps
every event sent, and fails on demand, as a broker that is down would.
"""

from __future__ import annotations

import asyncio
import collections.abc as c
import logging
import pathlib
import sqlite3
import typing as t

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from eventbus import (
    RELAY,
    BrokerError,
    Event,
    EventBus,
    EventSerializationError,
    InMemoryDeadLetterStore,
    OutboxError,
    PublishResult,
    Relay,
    RetryPolicy,
    SQLiteOutbox,
    UndefinedEvent,
)
from eventbus.testing import FakeClock


class OrderPlaced(Event):
    order_id: str


class Anything(Event):
    value: t.Any


class Recording:
    """A transport that keeps what is published, refusing while ``down`` is above 0."""

    def __init__(self) -> None:
        self.sent: list[Event] = []
        self.down = 0
        self.crash_after: int | None = None  # sends before the process "dies"

    def _publish(self, event: Event) -> PublishResult:
        if self.crash_after is not None:
            if self.crash_after == 0:
                raise Crash
            self.crash_after -= 1
        if self.down:
            self.down -= 1
            raise BrokerError("the broker does not answer")
        self.sent.append(event)
        return PublishResult(event)

    async def _publish_async(self, event: Event) -> PublishResult:
        return self._publish(event)

    def bind(self, bus: EventBus, plan: t.Any, /) -> tuple[t.Any, t.Any]:
        return self._publish, self._publish_async

    def orders(self) -> list[str]:
        return [e.order_id for e in self.sent if isinstance(e, OrderPlaced)]


@pytest.fixture
def database(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "shop.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE orders (id TEXT PRIMARY KEY)")
    db.close()
    return path


@pytest.fixture
def outbox(database: pathlib.Path) -> c.Iterator[SQLiteOutbox]:
    with SQLiteOutbox(database) as box:
        yield box


@pytest.fixture
def transport() -> Recording:
    return Recording()


@pytest.fixture
def bus(transport: Recording) -> EventBus:
    return EventBus(transport=transport, clock=FakeClock())


def place(
    database: pathlib.Path, outbox: SQLiteOutbox, order_id: str, *, fail: bool = False
) -> None:
    """What a web request does: write the order and its event in one transaction."""
    db = sqlite3.connect(database)
    try:
        with db:  # commits, or rolls back on an exception
            db.execute("INSERT INTO orders VALUES (?)", (order_id,))
            outbox.add(db, OrderPlaced(order_id=order_id))
            if fail:
                raise RuntimeError("payment declined")
    except RuntimeError:
        pass
    finally:
        db.close()


def fake_clock(bus: EventBus) -> FakeClock:
    clock = bus.clock
    assert isinstance(clock, FakeClock)
    return clock


def test_committed_events_are_sent_in_order_and_rolled_back_ones_never(
    database: pathlib.Path, outbox: SQLiteOutbox, bus: EventBus, transport: Recording
) -> None:
    place(database, outbox, "o1")
    place(database, outbox, "o2", fail=True)
    place(database, outbox, "o3")
    assert len(outbox) == 2
    relay = Relay(bus, outbox)
    assert relay.send() == 2
    assert transport.orders() == ["o1", "o3"]
    assert len(outbox) == 0
    assert relay.sent == 2
    assert relay.send() == 0  # nothing twice


def test_send_async_is_the_same_pass(
    database: pathlib.Path, outbox: SQLiteOutbox, bus: EventBus, transport: Recording
) -> None:
    for number in range(5):
        place(database, outbox, f"o{number}")
    relay = Relay(bus, outbox, batch=2)
    assert asyncio.run(relay.send_async()) == 2
    assert asyncio.run(relay.send_async()) == 2
    assert asyncio.run(relay.send_async()) == 1
    assert transport.orders() == ["o0", "o1", "o2", "o3", "o4"]


def test_an_event_keeps_its_id_through_the_outbox(
    database: pathlib.Path, outbox: SQLiteOutbox, bus: EventBus, transport: Recording
) -> None:
    event = OrderPlaced(order_id="o1")
    with sqlite3.connect(database) as db:
        outbox.add(db, event)
    db.close()
    Relay(bus, outbox).send()
    assert transport.sent == [event]  # equal, event_id and occurred_at included


def test_bad_input_is_refused_before_anything_is_written(
    tmp_path: pathlib.Path, database: pathlib.Path, outbox: SQLiteOutbox
) -> None:
    db = sqlite3.connect(database)
    with pytest.raises(TypeError, match="takes an Event"):
        outbox.add(db, {"order_id": "o1"})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"sqlite3\.Connection"):
        outbox.add("shop.db", OrderPlaced(order_id="o1"))  # type: ignore[arg-type]
    with pytest.raises(EventSerializationError):
        outbox.add(db, Anything(value=object()))
    other = sqlite3.connect(tmp_path / "other.db")
    with pytest.raises(OutboxError, match="connect to the outbox's file"):
        outbox.add(other, OrderPlaced(order_id="o1"))
    other.close()
    db.close()
    assert len(outbox) == 0
    with pytest.raises(ValueError, match="path of a SQLite file"):
        SQLiteOutbox(":memory:")
    with pytest.raises(ValueError, match="table must be a SQL name"):
        SQLiteOutbox(database, table="orders; DROP TABLE orders")


def test_bad_relay_options_are_refused(outbox: SQLiteOutbox, bus: EventBus) -> None:
    with pytest.raises(ValueError, match="batch must be"):
        Relay(bus, outbox, batch=0)
    with pytest.raises(ValueError, match="lease must be"):
        Relay(bus, outbox, lease=0)
    with pytest.raises(TypeError, match="retry must be a RetryPolicy"):
        Relay(bus, outbox, retry=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="outbox must be a SQLiteOutbox"):
        Relay(bus, "shop.db")  # type: ignore[arg-type]


def test_a_failing_row_holds_back_the_rows_after_it_and_is_retried_with_backoff(
    database: pathlib.Path, outbox: SQLiteOutbox, bus: EventBus, transport: Recording
) -> None:
    for order_id in ("o1", "o2"):
        place(database, outbox, order_id)
    relay = Relay(bus, outbox, retry=RetryPolicy(max_attempts=3, initial_delay=1.0, backoff=4.0))
    transport.down = 2
    assert relay.send() == 0
    [first, _] = outbox.rows()
    assert (first.attempts, first.last_error) == (1, "BrokerError: the broker does not answer")
    assert relay.send() == 0  # its wait (1 s) has not passed: the pass sends nothing, o2 waits
    fake_clock(bus).advance(1.0)
    assert relay.send() == 0  # attempt 2 fails too; the next wait is 4 s
    fake_clock(bus).advance(3.9)
    assert relay.send() == 0
    fake_clock(bus).advance(0.1)
    assert relay.send() == 2
    assert transport.orders() == ["o1", "o2"]
    assert len(bus.dead_letters) == 0


def test_a_row_that_never_goes_is_a_dead_letter_that_a_redrive_publishes(
    database: pathlib.Path, outbox: SQLiteOutbox, bus: EventBus, transport: Recording
) -> None:
    for order_id in ("o1", "o2"):
        place(database, outbox, order_id)
    relay = Relay(bus, outbox, retry=RetryPolicy(max_attempts=2))
    transport.down = 2
    assert relay.send() == 0
    assert relay.send() == 1  # o1's second attempt fails: a letter, and o2 goes
    assert (relay.sent, relay.lettered) == (1, 1)
    assert transport.orders() == ["o2"]
    [letter] = bus.dead_letters
    assert (letter.handler, letter.attempts, letter.error_type) == (
        RELAY,
        2,
        "eventbus.errors.BrokerError",
    )
    assert isinstance(letter.event, OrderPlaced)
    assert letter.event.order_id == "o1"
    assert len(outbox) == 0
    result = bus.redrive(letter)
    assert result.ok
    assert transport.orders() == ["o2", "o1"]
    assert len(bus.dead_letters) == 0


def test_redriving_an_unsent_letter_async_publishes_it(
    database: pathlib.Path, outbox: SQLiteOutbox, bus: EventBus, transport: Recording
) -> None:
    place(database, outbox, "o1")
    transport.down = 1
    Relay(bus, outbox, retry=RetryPolicy(max_attempts=1)).send()
    [letter] = bus.dead_letters
    asyncio.run(bus.redrive_async(letter))
    assert transport.orders() == ["o1"]
    assert len(bus.dead_letters) == 0


def test_a_row_that_cannot_be_read_back_is_a_dead_letter_keeping_its_json(
    database: pathlib.Path, outbox: SQLiteOutbox, bus: EventBus, transport: Recording
) -> None:
    place(database, outbox, "o1")
    with sqlite3.connect(database) as db:
        db.execute(
            "INSERT INTO eventbus_outbox (event_type, payload, added_at) VALUES (?, ?, 0)",
            ("nowhere.defined", '{"x": 1}'),
        )
        db.execute(
            "INSERT INTO eventbus_outbox (event_type, payload, added_at) VALUES (?, ?, 0)",
            (OrderPlaced.event_type, "not json"),
        )
    db.close()
    place(database, outbox, "o2")
    relay = Relay(bus, outbox)
    assert relay.send() == 2
    assert relay.lettered == 2
    assert transport.orders() == ["o1", "o2"]
    unknown, garbled = bus.dead_letters
    for letter in (unknown, garbled):
        assert letter.handler == RELAY
        assert isinstance(letter.event, UndefinedEvent)
    assert isinstance(unknown.event, UndefinedEvent)
    assert isinstance(garbled.event, UndefinedEvent)
    assert (unknown.event.stored_type, unknown.event.payload) == ("nowhere.defined", '{"x": 1}')
    assert unknown.event.redrivable  # once its class is imported
    assert garbled.event.payload == "not json"
    assert not garbled.event.redrivable
    assert len(outbox) == 0


class Refusing(InMemoryDeadLetterStore):
    def add(self, letter: t.Any) -> None:
        raise OSError("disk full")


def test_a_letter_the_store_refuses_leaves_its_row_first_in_the_outbox(
    database: pathlib.Path, outbox: SQLiteOutbox, bus: EventBus, transport: Recording
) -> None:
    for order_id in ("o1", "o2"):
        place(database, outbox, order_id)
    relay = Relay(bus, outbox, retry=RetryPolicy(max_attempts=1), dead_letters=Refusing())
    transport.down = 1
    assert relay.send() == 0
    assert [row.attempts for row in outbox.rows()] == [1, 0]  # kept, and o2 behind it
    fake_clock(bus).advance(relay.retry.max_delay)
    assert relay.send() == 2  # the broker is back: both go, in order
    assert transport.orders() == ["o1", "o2"]


def test_one_relay_sends_at_a_time_and_another_takes_over_a_lapsed_lease(
    database: pathlib.Path,
    outbox: SQLiteOutbox,
    bus: EventBus,
    transport: Recording,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = Relay(bus, outbox, lease=10.0, name="first")
    second = Relay(bus, outbox, lease=10.0, name="second")
    place(database, outbox, "o1")
    assert first.send() == 1
    place(database, outbox, "o2")
    assert second.send() == 0  # first holds the lease
    assert first.send() == 1  # and renews it
    fake_clock(bus).advance(10.0)  # first stopped renewing (hung, or died)
    place(database, outbox, "o3")
    assert second.send() == 1
    assert first.send() == 0  # second leads now
    assert transport.orders() == ["o1", "o2", "o3"]
    # A relay that lost its lease mid-pass deletes nothing the new holder now owns.
    place(database, outbox, "o4")
    fake_clock(bus).advance(10.0)
    rows = first._claim()  # first leads again (second lapsed) and reads o4
    assert [row.seq for row in rows] == [row.seq for row in outbox.rows()]
    fake_clock(bus).advance(10.0)  # first's pass outlasts its lease
    assert second._claim() != []  # second takes over, with a new fencing token
    with caplog.at_level(logging.WARNING, logger="eventbus.outbox"):
        first._finish([row.seq for row in rows], 1)  # first's pass ends: deletes refused
    assert "lost the lease" in caplog.text
    assert len(outbox) == 1  # o4 stays, for second to send
    assert second.send() == 1
    assert transport.orders() == ["o1", "o2", "o3", "o4"]


def test_a_stopped_relay_gives_its_lease_up_at_once(
    database: pathlib.Path, outbox: SQLiteOutbox, bus: EventBus, transport: Recording
) -> None:
    place(database, outbox, "o1")
    first = Relay(bus, outbox, poll=0.01)
    second = Relay(bus, outbox)

    async def main() -> None:
        running = asyncio.create_task(first.run())
        for _ in range(500):
            if first.sent:
                break
            await asyncio.sleep(0.01)
        first.stop()
        await asyncio.wait_for(running, 10)

    asyncio.run(main())
    assert first.sent == 1
    place(database, outbox, "o2")
    assert second.send() == 1  # no wait for the lease to lapse
    assert transport.orders() == ["o1", "o2"]


class Crash(BaseException):
    """The process dying: nothing after it runs (the relay's cleanup is skipped too)."""


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("commit"), st.integers(1, 4)),
            st.tuples(st.just("rollback"), st.integers(1, 2)),
            st.tuples(st.just("relay"), st.integers(0, 5)),  # crash after so many sends
            st.tuples(st.just("down"), st.integers(1, 3)),
        ),
        max_size=25,
    )
)
def test_every_committed_event_is_sent_at_least_once_in_commit_order(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, int]]
) -> None:
    database = tmp_path_factory.mktemp("outbox") / "shop.db"
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE orders (id TEXT PRIMARY KEY)")
    db.close()
    transport = Recording()
    bus = EventBus(transport=transport, clock=FakeClock())
    retry = RetryPolicy(max_attempts=1000, initial_delay=1.0, max_delay=1.0)
    committed: list[str] = []
    numbers = iter(range(10_000))
    with SQLiteOutbox(database) as outbox:
        relay = Relay(bus, outbox, batch=3, lease=5.0, retry=retry)
        for kind, count in steps:
            if kind in ("commit", "rollback"):
                for _ in range(count):
                    order_id = f"o{next(numbers)}"
                    place(database, outbox, order_id, fail=kind == "rollback")
                    if kind == "commit":
                        committed.append(order_id)
            elif kind == "down":
                transport.down = count
            else:
                transport.crash_after = count
                relay._finish = lambda done, sent: None  # type: ignore[method-assign]  # never ran
                try:
                    for _ in range(50):  # passes until it dies (rows are never deleted)
                        if len(outbox) == 0:
                            break
                        relay.send()
                        fake_clock(bus).advance(1.0)
                except Crash:
                    pass
                transport.crash_after = None
                relay = Relay(bus, outbox, batch=3, lease=5.0, retry=retry)  # the restart
                fake_clock(bus).advance(5.0)  # the dead relay's lease lapses
        transport.down = 0
        for _ in range(len(committed) + 2):  # drain
            relay.send()
            fake_clock(bus).advance(1.0)
        assert len(outbox) == 0
    sent = transport.orders()
    assert set(sent) == set(committed)  # nothing lost, nothing rolled back sent
    assert list(dict.fromkeys(sent)) == committed  # first copies in commit order
    assert len(bus.dead_letters) == 0


def test_leaving_a_relays_with_block_gives_its_lease_up(
    database: pathlib.Path, outbox: SQLiteOutbox, bus: EventBus, transport: Recording
) -> None:
    place(database, outbox, "o1")
    with Relay(bus, outbox) as first:
        assert first.send() == 1
        place(database, outbox, "o2")
        assert Relay(bus, outbox).send() == 0  # first holds the lease
    with Relay(bus, outbox) as second:
        assert second.send() == 1
    assert transport.orders() == ["o1", "o2"]


class Slow(Recording):
    """Each send takes ``seconds`` of the bus's clock; ``during`` runs at the send of o{n}."""

    def __init__(self, clock: FakeClock, seconds: float) -> None:
        super().__init__()
        self.clock = clock
        self.seconds = seconds
        self.during: dict[str, c.Callable[[], None]] = {}

    def _publish(self, event: Event) -> PublishResult:
        self.clock.advance(self.seconds)
        if isinstance(event, OrderPlaced) and event.order_id in self.during:
            self.during.pop(event.order_id)()
        return super()._publish(event)


@pytest.mark.parametrize("use_async", [False, True], ids=["send", "send_async"])
def test_a_pass_longer_than_the_lease_renews_it_and_no_second_relay_sends_beside_it(
    database: pathlib.Path, outbox: SQLiteOutbox, use_async: bool
) -> None:
    clock = FakeClock()
    transport = Slow(clock, seconds=4.0)  # ten sends: 40 s, four leases of 10 s
    bus = EventBus(transport=transport, clock=clock)
    first = Relay(bus, outbox, lease=10.0, batch=10, name="first")
    second = Relay(EventBus(transport=Recording(), clock=clock), outbox, lease=10.0, name="second")
    for number in range(10):
        place(database, outbox, f"o{number}")
    seconds: list[int] = []
    for number in (3, 6, 9):  # past the lease the pass started with, several times
        transport.during[f"o{number}"] = lambda: seconds.append(second.send())
    assert (asyncio.run(first.send_async()) if use_async else first.send()) == 10
    assert seconds == [0, 0, 0]  # the second relay found the lease held each time
    assert transport.orders() == [f"o{number}" for number in range(10)]
    assert len(outbox) == 0


@pytest.mark.parametrize("use_async", [False, True], ids=["send", "send_async"])
def test_a_relay_that_finds_its_lease_taken_mid_pass_stops_sending(
    database: pathlib.Path,
    outbox: SQLiteOutbox,
    use_async: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    transport = Slow(clock, seconds=0.0)
    first = Relay(EventBus(transport=transport, clock=clock), outbox, lease=10.0, name="first")
    taker = Recording()
    second = Relay(EventBus(transport=taker, clock=clock), outbox, lease=10.0, name="second")
    for number in range(4):
        place(database, outbox, f"o{number}")

    def hang_then_lose_the_lease() -> None:
        clock.advance(30.0)  # the first relay hangs inside this send, past its lease
        assert second._claim() != []  # the second takes the lapsed lease over

    transport.during["o1"] = hang_then_lose_the_lease
    with caplog.at_level(logging.WARNING, logger="eventbus.outbox"):
        sent = asyncio.run(first.send_async()) if use_async else first.send()
    assert transport.orders() == ["o0", "o1"]  # o2 and o3 were not sent beside the second
    assert sent == 2
    assert "another relay took the lease" in caplog.text
    assert len(outbox) == 4  # the first deleted nothing it no longer owns
    assert second.send() == 4  # the new holder sends everything, o0 and o1 again
    assert taker.orders() == ["o0", "o1", "o2", "o3"]


def test_an_event_added_on_an_autocommit_connection_outside_a_transaction_is_refused(
    database: pathlib.Path, outbox: SQLiteOutbox, bus: EventBus, transport: Recording
) -> None:
    db = sqlite3.connect(database, isolation_level=None)
    with pytest.raises(OutboxError, match=r"autocommit mode .* open the transaction first"):
        outbox.add(db, OrderPlaced(order_id="o1"))
    assert len(outbox) == 0
    db.execute("BEGIN")  # in a transaction the application opened, it joins it
    db.execute("INSERT INTO orders VALUES ('o2')")
    outbox.add(db, OrderPlaced(order_id="o2"))
    db.execute("ROLLBACK")
    assert len(outbox) == 0
    db.close()
    legacy = sqlite3.connect(database)  # the default mode: the first write opens one
    outbox.add(legacy, OrderPlaced(order_id="o3"))
    legacy.rollback()
    legacy.close()
    assert len(outbox) == 0


def test_a_relay_cancelled_mid_pass_deletes_what_it_sent_and_gives_up_its_lease(
    database: pathlib.Path, outbox: SQLiteOutbox
) -> None:
    class Hanging(Recording):
        async def _publish_async(self, event: Event) -> PublishResult:
            if isinstance(event, OrderPlaced) and event.order_id == "o2":
                await asyncio.sleep(60)  # the broker hangs on the third
            return self._publish(event)

    transport = Hanging()
    bus = EventBus(transport=transport, clock=FakeClock())
    for number in range(4):
        place(database, outbox, f"o{number}")
    relay = Relay(bus, outbox, poll=0.01)

    async def main() -> None:
        running = asyncio.create_task(relay.run())
        for _ in range(500):
            if len(transport.sent) == 2:
                break
            await asyncio.sleep(0.01)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running

    asyncio.run(main())
    assert len(outbox) == 2  # o0 and o1 were deleted on the way out
    assert Relay(EventBus(transport=Recording(), clock=FakeClock()), outbox).send() == 2
