"""Idempotent handlers: ``subscribe(idempotent=True)`` and the inboxes.

A handler subscribed so skips an event whose (handler, event id) its bus's
inbox holds; the record is written once the handler succeeded, or, with
``SQLiteInbox.transaction()``, in the same commit as the handler's writes.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import sqlite3
import threading
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventbus import (
    AlreadyHandled,
    Event,
    EventBus,
    InboxError,
    InMemoryInbox,
    RetryPolicy,
    SQLiteInbox,
)
from eventbus.testing import FakeClock


class PaymentCaptured(Event):
    order_id: str
    amount: int = 100


class Shipped(Event):
    order_id: str


def publish(bus: EventBus, event: Event, use_async: bool) -> None:
    if use_async:
        asyncio.run(bus.publish_async(event))
    else:
        bus.publish(event)


# -- in process, in memory ------------------------------------------------------------


@pytest.mark.parametrize("use_async", [False, True], ids=["publish", "publish_async"])
@pytest.mark.parametrize("handler_kind", ["sync", "async"])
def test_an_event_published_again_is_skipped_by_an_idempotent_handler_only(
    use_async: bool, handler_kind: str
) -> None:
    bus = EventBus()
    charged: list[str] = []
    audited: list[str] = []
    if handler_kind == "sync":

        @bus.subscribe(idempotent=True)
        def charge(event: PaymentCaptured) -> None:
            charged.append(event.order_id)

    else:

        @bus.subscribe(idempotent=True)
        async def charge_async(event: PaymentCaptured) -> None:
            charged.append(event.order_id)

    bus.subscribe(PaymentCaptured)(lambda event: audited.append(event.order_id))
    captured = PaymentCaptured(order_id="o1")
    publish(bus, captured, use_async)
    publish(bus, captured, use_async)  # the same event (same id) again: a redelivery
    publish(bus, PaymentCaptured(order_id="o1"), use_async)  # a new event, same fields
    assert charged == ["o1", "o1"]
    assert audited == ["o1", "o1", "o1"]
    assert len(bus.inbox) == 2  # type: ignore[arg-type]


def test_a_skip_is_logged_with_the_handler_and_the_event_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus()
    bus.subscribe(PaymentCaptured, idempotent=True, name="payments.charge")(lambda event: None)
    captured = PaymentCaptured(order_id="o1")
    bus.publish(captured)
    with caplog.at_level(logging.INFO, logger="eventbus.idempotency"):
        bus.publish(captured)
    [record] = caplog.records
    assert "payments.charge already handled" in record.getMessage()
    assert str(captured.event_id) in record.getMessage()


@pytest.mark.parametrize("use_async", [False, True], ids=["publish", "publish_async"])
def test_a_failed_run_is_not_recorded_and_its_redrive_runs_it_once(use_async: bool) -> None:
    bus = EventBus()
    runs: list[str] = []
    broken = {"yes": True}

    @bus.subscribe(idempotent=True)
    def charge(event: PaymentCaptured) -> None:
        runs.append(event.order_id)
        if broken["yes"]:
            raise ConnectionError("gateway down")

    captured = PaymentCaptured(order_id="o1")
    publish(bus, captured, use_async)
    assert len(bus.inbox) == 0  # type: ignore[arg-type]
    [letter] = bus.dead_letters
    broken["yes"] = False
    assert bus.redrive(letter).ok
    publish(bus, captured, use_async)  # handled now: skipped
    assert runs == ["o1", "o1"]
    assert bus.inbox.seen(letter.handler, captured.event_id)


def test_retries_of_an_idempotent_handler_are_recorded_once_it_succeeds() -> None:
    bus = EventBus(clock=FakeClock())
    runs: list[int] = []

    @bus.subscribe(idempotent=True, retry=RetryPolicy(max_attempts=3))
    def charge(event: PaymentCaptured) -> None:
        runs.append(len(runs) + 1)
        if len(runs) < 3:
            raise ConnectionError("gateway down")

    captured = PaymentCaptured(order_id="o1")
    bus.publish(captured)
    bus.publish(captured)
    assert runs == [1, 2, 3]
    assert len(bus.dead_letters) == 0


def test_the_in_memory_inbox_keeps_the_most_recent_records_only() -> None:
    inbox = InMemoryInbox(max_entries=2)
    bus = EventBus(inbox=inbox)
    runs: list[str] = []
    bus.subscribe(PaymentCaptured, idempotent=True)(lambda event: runs.append(event.order_id))
    first, second, third = (PaymentCaptured(order_id=str(n)) for n in range(3))
    for event in (first, second, third, first, third):
        bus.publish(event)
    assert runs == ["0", "1", "2", "0"]  # the first was forgotten, the third remembered
    assert len(inbox) == 2
    inbox.clear()
    assert len(inbox) == 0


def test_bad_inbox_options_are_refused_naming_the_fix(tmp_path: pathlib.Path) -> None:
    with pytest.raises(TypeError, match="inbox must be an Inbox"):
        EventBus(inbox="shop.db")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="idempotent must be True or False"):
        EventBus().subscribe(PaymentCaptured, idempotent="yes")(lambda event: None)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="max_entries"):
        InMemoryInbox(max_entries=0)
    with pytest.raises(ValueError, match="InMemoryInbox"):
        SQLiteInbox(":memory:")
    with pytest.raises(ValueError, match="table must be a SQL name"):
        SQLiteInbox(tmp_path / "shop.db", table="records; drop table x")
    with pytest.raises(InboxError, match="could not create its table"):
        SQLiteInbox(tmp_path)  # a directory


# -- SQLite -------------------------------------------------------------------------


def test_sqlite_records_outlive_the_process_that_wrote_them(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "shop.db"
    captured = PaymentCaptured(order_id="o1")
    runs: list[str] = []
    for _ in range(2):  # two lives of the application on one file
        with SQLiteInbox(path) as inbox:
            bus = EventBus(inbox=inbox)
            bus.subscribe(PaymentCaptured, idempotent=True, name="pay")(
                lambda event: runs.append(event.order_id)
            )
            bus.publish(captured)
    assert runs == ["o1"]
    with SQLiteInbox(path) as inbox:
        assert len(inbox) == 1
        assert inbox.purge(older_than=3600) == 0
        assert inbox.purge(older_than=-1) == 1  # everything is older than a second from now
        assert len(inbox) == 0


def shop(path: pathlib.Path) -> tuple[SQLiteInbox, EventBus, sqlite3.Connection]:
    """An application whose payments table is in the inbox's file."""
    inbox = SQLiteInbox(path)
    bus = EventBus(inbox=inbox)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE IF NOT EXISTS payments (order_id TEXT, amount INTEGER)")
    return inbox, bus, db


def payments(db: sqlite3.Connection) -> list[tuple[str, int]]:
    return [(row[0], row[1]) for row in db.execute("SELECT order_id, amount FROM payments")]


@pytest.mark.parametrize("use_async", [False, True], ids=["publish", "publish_async"])
def test_a_transaction_commits_the_handlers_writes_with_its_record(
    tmp_path: pathlib.Path, use_async: bool
) -> None:
    inbox, bus, db = shop(tmp_path / "shop.db")

    @bus.subscribe(idempotent=True, name="pay")
    async def record_payment(event: PaymentCaptured) -> None:
        with inbox.transaction() as tx:
            tx.execute("INSERT INTO payments VALUES (?, ?)", (event.order_id, event.amount))

    captured = PaymentCaptured(order_id="o1", amount=4500)
    if use_async:
        asyncio.run(bus.publish_async(captured))
        asyncio.run(bus.publish_async(captured))
    else:
        bus.publish(captured)
        bus.publish(captured)
    assert payments(db) == [("o1", 4500)]
    assert inbox.seen("pay", captured.event_id)
    inbox.close()


def test_a_failure_in_the_transaction_rolls_back_the_writes_and_the_record(
    tmp_path: pathlib.Path,
) -> None:
    inbox, bus, db = shop(tmp_path / "shop.db")
    broken = {"yes": True}

    @bus.subscribe(idempotent=True, name="pay")
    def record_payment(event: PaymentCaptured) -> None:
        with inbox.transaction() as tx:
            tx.execute("INSERT INTO payments VALUES (?, ?)", (event.order_id, event.amount))
            if broken["yes"]:
                raise ConnectionError("the ledger went away")

    captured = PaymentCaptured(order_id="o1")
    bus.publish(captured)
    assert payments(db) == []
    assert not inbox.seen("pay", captured.event_id)
    broken["yes"] = False
    [letter] = bus.dead_letters
    assert bus.redrive(letter).ok
    assert payments(db) == [("o1", 100)]
    inbox.close()


def test_two_runs_of_one_event_at_once_write_once(tmp_path: pathlib.Path) -> None:
    """Both pass the check before either commits; the second commit finds the record."""
    path = tmp_path / "shop.db"
    inbox, bus, db = shop(path)
    both_checked = threading.Barrier(2)
    outcomes: list[str] = []

    @bus.subscribe(idempotent=True, name="pay")
    def record_payment(event: PaymentCaptured) -> None:
        both_checked.wait(timeout=10)  # each run is past the inbox's check
        try:
            with inbox.transaction() as tx:
                tx.execute("INSERT INTO payments VALUES (?, ?)", (event.order_id, event.amount))
        except AlreadyHandled:
            outcomes.append("skipped")
            raise
        outcomes.append("wrote")

    captured = PaymentCaptured(order_id="o1")
    threads = [threading.Thread(target=bus.publish, args=(captured,)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == ["skipped", "wrote"]
    assert payments(db) == [("o1", 100)]
    assert len(bus.dead_letters) == 0  # a duplicate skipped is no failure
    inbox.close()


def test_a_transaction_misused_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    inbox, bus, _ = shop(tmp_path / "shop.db")
    outside = pytest.raises(InboxError, match="call it from a handler subscribed with idempotent")
    with outside, inbox.transaction():
        pass
    errors: list[str] = []

    @bus.subscribe(idempotent=True, name="twice")
    def twice(event: PaymentCaptured) -> None:
        with inbox.transaction():
            pass
        try:
            with inbox.transaction():
                pass
        except InboxError as error:
            errors.append(str(error))

    @bus.subscribe(idempotent=True, name="commits")
    def commits(event: PaymentCaptured) -> None:
        try:
            with inbox.transaction() as tx:
                tx.execute("COMMIT")
        except InboxError as error:
            errors.append(str(error))

    not_idempotent = EventBus(inbox=inbox)

    @not_idempotent.subscribe
    def plain(event: PaymentCaptured) -> None:
        try:
            with inbox.transaction():
                pass
        except InboxError as error:
            errors.append(str(error))

    bus.publish(PaymentCaptured(order_id="o1"))
    not_idempotent.publish(PaymentCaptured(order_id="o2"))
    assert len(errors) == 3
    assert "opened a second inbox transaction" in errors[0]
    assert "ended the inbox transaction itself" in errors[1]
    assert "idempotent=True" in errors[2]
    inbox.close()


def test_an_async_handler_awaiting_inside_its_transaction_fails_fast_not_blocking_the_loop(
    tmp_path: pathlib.Path,
) -> None:
    """Two coroutines of one loop: the second transaction is refused at once, with the fix."""
    inbox, bus, db = shop(tmp_path / "shop.db")

    @bus.subscribe(idempotent=True, name="pay", retry=RetryPolicy(max_attempts=1))
    async def record_payment(event: PaymentCaptured) -> None:
        with inbox.transaction() as tx:
            tx.execute("INSERT INTO payments VALUES (?, ?)", (event.order_id, event.amount))
            await asyncio.sleep(0.05)  # the mistake: an await holding SQLite's write lock

    async def main() -> None:
        await asyncio.gather(
            bus.publish_async(PaymentCaptured(order_id="o1")),
            bus.publish_async(PaymentCaptured(order_id="o2")),
        )

    asyncio.run(main())
    assert payments(db) == [("o1", 100)]  # the first's commit went through
    [letter] = bus.dead_letters  # the second failed at once, and nothing is lost
    assert letter.event.order_id == "o2"  # type: ignore[attr-defined]
    assert "awaited inside its `with inbox.transaction()` block" in letter.error_message
    assert "do the awaits before or after the block" in letter.error_message
    inbox.close()


def test_a_record_while_another_coroutine_holds_the_write_lock_is_refused_at_once(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Not a wait of the inbox's timeout with the loop stopped: refused, logged with the fix."""
    inbox, bus, db = shop(tmp_path / "shop.db")
    inside = asyncio.Event()

    @bus.subscribe(idempotent=True, name="pay")
    async def record_payment(event: PaymentCaptured) -> None:
        with inbox.transaction() as tx:
            tx.execute("INSERT INTO payments VALUES (?, ?)", (event.order_id, event.amount))
            inside.set()
            await asyncio.sleep(0.05)  # the mistake: an await holding SQLite's write lock

    @bus.subscribe(idempotent=True, name="audit")
    async def audit(event: Shipped) -> None:
        await inside.wait()  # runs while pay's transaction is open; recorded after it

    async def main() -> None:
        await asyncio.gather(
            bus.publish_async(PaymentCaptured(order_id="o1")),
            bus.publish_async(Shipped(order_id="o1")),
        )

    with caplog.at_level(logging.ERROR, logger="eventbus.idempotency"):
        asyncio.run(main())
    assert payments(db) == [("o1", 100)]
    assert "audit handled" in caplog.text
    assert "pay's inbox transaction is open on this thread" in caplog.text
    assert "do the awaits before or after the block" in caplog.text
    inbox.close()


def test_concurrent_async_handlers_each_get_a_connection_of_their_own(
    tmp_path: pathlib.Path,
) -> None:
    inbox, bus, db = shop(tmp_path / "shop.db")

    @bus.subscribe(idempotent=True, name="pay")
    async def record_payment(event: PaymentCaptured) -> None:
        await asyncio.sleep(0)  # the awaits before the block, the writes inside it
        with inbox.transaction() as tx:
            tx.execute("INSERT INTO payments VALUES (?, ?)", (event.order_id, event.amount))
        await asyncio.sleep(0)

    async def main() -> None:
        await asyncio.gather(
            *(bus.publish_async(PaymentCaptured(order_id=f"o{n}")) for n in range(20))
        )

    asyncio.run(main())
    assert sorted(order for order, _ in payments(db)) == sorted(f"o{n}" for n in range(20))
    assert len(inbox) == 20
    assert len(bus.dead_letters) == 0
    inbox.close()


class FailingRecords(InMemoryInbox):
    def record(self, handler: str, event_id: uuid.UUID, /) -> None:
        raise InboxError("the inbox's disk is full")


@pytest.mark.parametrize("use_async", [False, True], ids=["publish", "publish_async"])
def test_a_record_that_fails_after_the_handler_succeeded_is_logged_not_a_failed_attempt(
    use_async: bool, caplog: pytest.LogCaptureFixture
) -> None:
    bus = EventBus(inbox=FailingRecords())
    runs: list[str] = []
    bus.subscribe(PaymentCaptured, idempotent=True, name="pay", retry=RetryPolicy(max_attempts=3))(
        lambda event: runs.append(event.order_id)
    )
    with caplog.at_level(logging.ERROR, logger="eventbus.idempotency"):
        publish(bus, PaymentCaptured(order_id="o1"), use_async)
    assert runs == ["o1"]  # not retried: its effects happened
    assert len(bus.dead_letters) == 0
    assert "pay handled" in caplog.text
    assert "its inbox record failed" in caplog.text


def test_a_closed_inbox_opens_new_connections_and_closes_other_threads_ones(
    tmp_path: pathlib.Path,
) -> None:
    inbox = SQLiteInbox(tmp_path / "shop.db")
    event_id = uuid.uuid4()
    used: list[sqlite3.Connection] = []

    def in_a_thread() -> None:
        inbox.record("pay", event_id)
        with inbox._db.lend() as db:  # the connection that thread used, back in the pool
            used.append(db)

    worker = threading.Thread(target=in_a_thread)
    worker.start()
    worker.join(timeout=10)
    inbox.close()  # the thread's connection too, not only this thread's
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        used[0].execute("SELECT 1")
    assert inbox.seen("pay", event_id)  # a new connection
    inbox.close()


def test_handling_says_whether_an_idempotent_handler_of_the_inbox_runs_here(
    tmp_path: pathlib.Path,
) -> None:
    inbox, bus, _ = shop(tmp_path / "shop.db")
    seen: list[tuple[str, bool]] = []

    @bus.subscribe(idempotent=True, name="pay")
    def pay(event: PaymentCaptured) -> None:
        seen.append(("before", inbox.handling))
        with inbox.transaction():
            seen.append(("inside", inbox.handling))
        seen.append(("after", inbox.handling))  # still: a second transaction would raise
        with pytest.raises(InboxError, match="opened a second inbox transaction"):
            inbox.transaction().__enter__()

    @bus.subscribe(name="plain")
    def plain(event: PaymentCaptured) -> None:
        seen.append(("plain", inbox.handling))

    assert not inbox.handling  # outside any handler
    bus.publish(PaymentCaptured(order_id="o1"))
    assert seen == [("before", True), ("inside", True), ("after", True), ("plain", False)]
    other = EventBus(inbox=InMemoryInbox())
    other.subscribe(PaymentCaptured, idempotent=True, name="elsewhere")(
        lambda event: seen.append(("other bus", inbox.handling))
    )
    other.publish(PaymentCaptured(order_id="o2"))
    assert seen[-1] == ("other bus", False)  # another inbox's handler
    inbox.close()


# -- the property: with the transactional form, each effect happens exactly once -----------

#: Where a delivery may stop: not at all, before the handler, inside the transaction
#: (before its commit), or after the commit (before the handler returns).
STOPS = ("none", "before", "inside", "after")


class Crash(Exception):
    """The process dies here (simulated: the run stops, the next life starts clean)."""


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    deliveries=st.lists(
        st.tuples(st.integers(min_value=0, max_value=3), st.sampled_from(STOPS)),
        min_size=1,
        max_size=25,
    )
)
def test_every_effect_happens_once_whatever_the_duplicates_and_crashes(
    tmp_path_factory: pytest.TempPathFactory, deliveries: list[tuple[int, str]]
) -> None:
    path = tmp_path_factory.mktemp("inbox") / "shop.db"
    events = [PaymentCaptured(order_id=str(n)) for n in range(4)]
    stop = {"at": "none"}

    def life() -> tuple[SQLiteInbox, EventBus, sqlite3.Connection]:
        """The application started again: a new bus and inbox on the same file."""
        inbox, bus, db = shop(path)

        @bus.subscribe(idempotent=True, name="pay")
        def record_payment(event: PaymentCaptured) -> None:
            if stop["at"] == "before":
                raise Crash
            with inbox.transaction() as tx:
                tx.execute("INSERT INTO payments VALUES (?, ?)", (event.order_id, event.amount))
                if stop["at"] == "inside":
                    raise Crash
            if stop["at"] == "after":
                raise Crash

        return inbox, bus, db

    inbox, bus, db = life()
    for index, where in deliveries:  # at least once: duplicates, in any order, crashing anywhere
        stop["at"] = where
        bus.publish(events[index])
        if where != "none":  # the process died: a new life
            inbox.close()
            db.close()
            inbox, bus, db = life()
    stop["at"] = "none"
    for event in events:  # what the broker still redelivers, until each succeeded once
        bus.publish(event)
    assert sorted(payments(db)) == sorted((event.order_id, 100) for event in events)
    inbox.close()
    db.close()


def test_an_unknown_event_id_is_not_seen(tmp_path: pathlib.Path) -> None:
    with SQLiteInbox(tmp_path / "shop.db") as inbox:
        assert not inbox.seen("pay", uuid.uuid4())
        inbox.record("pay", event_id := uuid.uuid4())
        inbox.record("pay", event_id)  # again: no error
        assert inbox.seen("pay", event_id)
        assert not inbox.seen("other", event_id)
        assert "shop.db" in repr(inbox)
