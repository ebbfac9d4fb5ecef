"""The worker's logic against the tests' private redis-server, in this process.

Groups per handler, acknowledgement with the children, retries counted as
deliveries, dead letters with the acknowledgement, unreadable entries.
Faults with worker processes (SIGKILL, SIGTERM, a Redis restart) have tests
of their own.
"""

from __future__ import annotations

import asyncio
import collections.abc as c
import contextlib
import json
import logging
import pathlib
import sqlite3
import time
import typing as t
import uuid

import pytest

from eventbus import DeadLetter, Event, EventBus, RetryPolicy, UndefinedEvent
from eventbus.redis import RedisBroker, UnreadableEntryError, Worker, WorkerLostError
from eventbus.testing import FakeClock

PATIENCE = 60.0  # seconds a bounded poll waits before it fails


class Ordered(Event):
    order_id: str


class ExpressOrdered(Ordered):
    pass


class Shipped(Event):
    order_id: str


@pytest.fixture
def bus(redis_url: str) -> c.Iterator[EventBus]:
    with RedisBroker(redis_url, namespace="w", claim_idle=5.0) as broker:
        yield EventBus(broker=broker, clock=FakeClock())


def broker_of(bus: EventBus) -> RedisBroker:
    assert isinstance(bus.broker, RedisBroker)
    return bus.broker


@contextlib.asynccontextmanager
async def working(bus: EventBus, **options: t.Any) -> c.AsyncIterator[Worker]:
    worker = Worker(bus, block=0.05, **options)
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, PATIENCE)


async def until(condition: c.Callable[[], bool]) -> None:
    deadline = time.monotonic() + PATIENCE
    while not condition():
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.01)


def pending(bus: EventBus, group: str) -> int:
    broker = broker_of(bus)
    summary = broker.client.xpending(broker.keys.stream, group)
    return int(summary["pending"])


def stream(bus: EventBus) -> list[dict[str, t.Any]]:
    broker = broker_of(bus)
    raw: list[tuple[bytes, dict[bytes, bytes]]] = broker.client.xrange(broker.keys.stream)  # type: ignore[assignment]
    return [{"event_type": f[b"event_type"].decode(), **json.loads(f[b"payload"])} for _, f in raw]


def test_events_published_before_the_worker_started_are_handled_and_acknowledged(
    bus: EventBus,
) -> None:
    seen: list[str] = []

    @bus.subscribe(name="shop.record")
    def record(event: Ordered) -> None:
        seen.append(event.order_id)

    for n in range(5):
        bus.publish(Ordered(order_id=str(n)))

    async def main() -> None:
        async with working(bus) as worker:
            await until(lambda: worker.handled == 5)

    asyncio.run(main())
    assert sorted(seen) == [str(n) for n in range(5)]
    assert pending(bus, "shop.record") == 0


def test_each_handler_has_its_group_and_receives_what_it_matches(bus: EventBus) -> None:
    seen: dict[str, list[str]] = {"any": [], "express": [], "async": []}

    @bus.subscribe(name="any")
    def on_any(event: Ordered) -> None:
        seen["any"].append(event.order_id)

    @bus.subscribe(name="express")
    def on_express(event: ExpressOrdered) -> None:
        seen["express"].append(event.order_id)

    @bus.subscribe(name="async")
    async def on_async(event: Ordered) -> None:
        seen["async"].append(event.order_id)

    bus.publish(Ordered(order_id="o1"))
    bus.publish(ExpressOrdered(order_id="o2"))
    bus.publish(Shipped(order_id="o3"))

    async def main() -> None:
        async with working(bus) as worker:
            await until(lambda: worker.handled == 9)  # 3 entries x 3 groups, acked

    asyncio.run(main())
    assert seen == {"any": ["o1", "o2"], "express": ["o2"], "async": ["o1", "o2"]}
    assert all(pending(bus, group) == 0 for group in seen)


def test_sync_handlers_run_as_many_at_once_as_the_worker_has_slots(bus: EventBus) -> None:
    """More than asyncio's default executor has threads (at most 32): none waits for one."""
    import threading

    slots = 40
    together = threading.Barrier(slots, timeout=PATIENCE)  # passes only with all 40 running
    names: set[str] = set()

    @bus.subscribe(name="shop.call_carrier")
    def call_carrier(event: Ordered) -> None:  # a blocking call: an HTTP request, say
        names.add(threading.current_thread().name)
        together.wait()

    for n in range(slots):
        bus.publish(Ordered(order_id=str(n)))

    async def main() -> None:
        async with working(bus, concurrency=slots) as worker:
            await until(lambda: worker.handled == slots)

    asyncio.run(main())
    assert not together.broken
    assert len(names) == slots
    assert all(name.startswith("eventbus-worker-") for name in names)
    assert pending(bus, "shop.call_carrier") == 0


def test_a_cancelled_worker_leaves_nothing_running_and_its_entry_pending(bus: EventBus) -> None:
    """Cancelling ``run()`` (not ``stop()``) cancels what it started; Redis keeps the entry."""
    started: list[str] = []
    cancelled: list[str] = []

    @bus.subscribe(name="shop.wait")
    async def wait(event: Ordered) -> None:
        started.append(event.order_id)
        try:
            await asyncio.Event().wait()  # never set: in flight until cancelled
        except asyncio.CancelledError:
            cancelled.append(event.order_id)
            raise

    bus.publish(Ordered(order_id="o1"))

    async def main() -> set[asyncio.Task[t.Any]]:
        worker = Worker(bus, block=0.05)
        task = asyncio.create_task(worker.run())
        await until(lambda: started == ["o1"])
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return asyncio.all_tasks() - {asyncio.current_task()}

    assert asyncio.run(main()) == set()  # no reader, chore or entry left behind
    assert cancelled == ["o1"]
    assert pending(bus, "shop.wait") == 1  # for another worker, after claim_idle


def test_a_failed_attempt_publishes_nothing_and_the_retry_is_a_new_delivery(
    bus: EventBus,
) -> None:
    attempts: list[int] = []

    @bus.subscribe(name="shop.ship", retry=RetryPolicy(max_attempts=3, initial_delay=30.0))
    def ship(event: Ordered) -> None:
        bus.publish(Shipped(order_id=event.order_id))
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("carrier down")

    placed = bus.publish(Ordered(order_id="o1")).event

    async def main() -> None:
        async with working(bus, handlers=["shop.ship"]) as worker:
            await until(lambda: worker.handled == 2)  # the order, then its child (not ship's)

    asyncio.run(main())
    assert len(attempts) == 2
    clock = bus.clock
    assert isinstance(clock, FakeClock)
    assert clock.sleeps == [30.0]
    entries = stream(bus)
    assert [e["event_type"] for e in entries] == [Ordered.event_type, Shipped.event_type]
    assert entries[1]["causation_id"] == str(placed.event_id)
    assert entries[1]["correlation_id"] == str(placed.event_id)
    assert len(bus.dead_letters) == 0


def test_the_last_failed_attempt_is_a_dead_letter_stored_with_the_acknowledgement(
    bus: EventBus,
) -> None:
    @bus.subscribe(name="shop.charge", retry=RetryPolicy(max_attempts=2))
    async def charge(event: Ordered) -> None:
        bus.publish(Shipped(order_id=event.order_id))
        raise ValueError(f"card declined for {event.order_id}")

    bus.publish(Ordered(order_id="o1"))

    async def main() -> None:
        async with working(bus) as worker:
            await until(lambda: worker.handled == 1)

    asyncio.run(main())
    [letter] = bus.dead_letters
    assert (letter.handler, letter.attempts, letter.error_message) == (
        "shop.charge",
        2,
        "card declined for o1",
    )
    assert letter.event == Ordered(
        order_id="o1", event_id=letter.event.event_id, occurred_at=letter.event.occurred_at
    )
    assert pending(bus, "shop.charge") == 0
    assert [e["event_type"] for e in stream(bus)] == [Ordered.event_type]  # no child


def test_what_an_on_give_up_hook_publishes_is_written_with_the_letter(bus: EventBus) -> None:
    hooked: list[DeadLetter] = []

    def charge_gave_up(letter: DeadLetter) -> None:
        hooked.append(letter)
        bus.publish(Shipped(order_id="compensated"))  # buffered: written with the letter

    @bus.subscribe(name="shop.charge", retry=RetryPolicy(max_attempts=2), on_give_up=charge_gave_up)
    def charge(event: Ordered) -> None:
        bus.publish(Shipped(order_id=event.order_id))  # a failed attempt's: dropped
        raise ValueError("card declined")

    ordered = Ordered(order_id="o1")
    bus.publish(ordered)

    async def main() -> None:
        async with working(bus) as worker:
            await until(lambda: worker.handled == 2)  # the entry, and the hook's child

    asyncio.run(main())
    [letter] = bus.dead_letters
    assert [h.id for h in hooked] == [letter.id]
    shipped = [e for e in stream(bus) if e["event_type"] == Shipped.event_type]
    assert [e["order_id"] for e in shipped] == ["compensated"]
    assert shipped[0]["causation_id"] == str(ordered.event_id)
    assert pending(bus, "shop.charge") == 0


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_an_event_made_in_a_handler_or_its_hook_follows_from_the_event_handled(
    bus: EventBus, kind: str
) -> None:
    """Made, not published through the bus (an outbox.add, say): causation set all the same."""
    made: list[Shipped] = []

    def gave_up(letter: DeadLetter) -> None:
        made.append(Shipped(order_id="hook"))

    if kind == "sync":

        @bus.subscribe(name="shop.ship")
        def ship(event: Ordered) -> None:
            made.append(Shipped(order_id=event.order_id))

    else:

        @bus.subscribe(name="shop.ship")
        async def ship_async(event: Ordered) -> None:
            made.append(Shipped(order_id=event.order_id))

    @bus.subscribe(name="shop.fail", retry=RetryPolicy(max_attempts=1), on_give_up=gave_up)
    def fail(event: Ordered) -> None:
        raise ValueError("no")

    ordered = Ordered(order_id="o1", correlation_id=uuid.uuid4())

    async def main() -> None:
        async with working(bus) as worker:
            bus.publish(ordered)
            await until(lambda: worker.handled == 2)

    asyncio.run(main())
    assert sorted(event.order_id for event in made) == ["hook", "o1"]
    for event in made:
        assert event.causation_id == ordered.event_id
        assert event.correlation_id == ordered.correlation_id


def test_a_workers_records_about_an_entry_name_the_worker_and_the_entry(
    bus: EventBus, caplog: pytest.LogCaptureFixture
) -> None:
    @bus.subscribe(name="shop.charge", retry=RetryPolicy(max_attempts=2))
    def charge(event: Ordered) -> None:
        raise ValueError("card declined")

    ordered = Ordered(order_id="o1")
    bus.publish(ordered)
    [(entry_id, _)] = t.cast(t.Any, broker_of(bus).client.xrange(broker_of(bus).keys.stream))

    async def main() -> None:
        async with working(bus, name="w-1") as worker:
            await until(lambda: worker.handled == 1)

    with caplog.at_level(logging.INFO, logger="eventbus"):
        asyncio.run(main())
    about = [r for r in caplog.records if r.__dict__.get("event_id") == ordered.event_id]
    assert {r.levelname for r in about} == {"WARNING", "ERROR"}  # the retry, the dead letter
    for record in about:
        assert record.__dict__["worker"] == "w-1", record.getMessage()
        assert record.__dict__["entry_id"] == entry_id.decode()
        assert record.__dict__["handler"] == "shop.charge"


def test_a_workers_records_carry_the_trace_id_its_entry_was_sent_in(
    bus: EventBus, caplog: pytest.LogCaptureFixture
) -> None:
    """For ELK: the producer's trace id (the entry's W3C traceparent) on what a worker logs."""
    trace_id = uuid.uuid4().hex
    broker = broker_of(bus)

    def traced(event: Event) -> dict[str, str]:
        return {"traceparent": f"00-{trace_id}-{'ab' * 8}-01"}

    @bus.subscribe(name="shop.charge", retry=RetryPolicy(max_attempts=2))
    def charge(event: Ordered) -> None:
        raise ValueError("card declined")

    broker.add_entry_fields(traced)
    traced_order = Ordered(order_id="o1")
    bus.publish(traced_order)
    broker.remove_entry_fields(traced)
    plain = Ordered(order_id="o2")
    bus.publish(plain)

    async def main() -> None:
        async with working(bus) as worker:
            await until(lambda: worker.handled == 2)

    with caplog.at_level(logging.INFO, logger="eventbus"):
        asyncio.run(main())
    about = [r for r in caplog.records if r.__dict__.get("event_id") == traced_order.event_id]
    assert len(about) == 2  # the retry, the dead letter
    assert all(record.__dict__["trace_id"] == trace_id for record in about)
    untraced = [r for r in caplog.records if r.__dict__.get("event_id") == plain.event_id]
    assert untraced
    assert not any("trace_id" in record.__dict__ for record in untraced)


def test_an_unreadable_entry_is_a_dead_letter_keeping_its_fields_and_the_worker_goes_on(
    bus: EventBus,
) -> None:
    seen: list[str] = []
    bus.subscribe(Ordered, name="shop.record")(lambda event: seen.append(event.order_id))
    broker = broker_of(bus)
    garbage = [
        {"event_type": "nobody.Knows", "payload": "{}"},
        {"event_type": Ordered.event_type, "payload": "not json"},
        {"event_type": Ordered.event_type, "payload": json.dumps({"order_id": 7})},
        {"something": "else"},
    ]
    for fields in garbage:
        broker.client.xadd(broker.keys.stream, fields)  # type: ignore[arg-type]
    bus.publish(Ordered(order_id="fine"))

    async def main() -> None:
        async with working(bus) as worker:
            await until(lambda: worker.handled == 5)

    asyncio.run(main())
    assert seen == ["fine"]
    letters = list(bus.dead_letters)
    assert len(letters) == 4
    assert all(isinstance(letter.event, UndefinedEvent) for letter in letters)
    assert all(letter.error_type.endswith(UnreadableEntryError.__name__) for letter in letters)
    assert sorted(letter.event_type for letter in letters) == sorted(
        ["nobody.Knows", Ordered.event_type, Ordered.event_type, "?"]
    )
    [first] = [letter.event for letter in letters if letter.event_type == "nobody.Knows"]
    assert isinstance(first, UndefinedEvent)
    assert "unknown event type" in first.reason
    assert first.payload == "{}"
    assert pending(bus, "shop.record") == 0


def test_a_consumers_own_pending_entries_are_run_first_after_a_restart(bus: EventBus) -> None:
    seen: list[str] = []
    bus.subscribe(Ordered, name="shop.record", retry=RetryPolicy(max_attempts=3))(
        lambda event: seen.append(event.order_id)
    )
    broker = broker_of(bus)
    broker.client.xgroup_create(broker.keys.stream, "shop.record", id="0", mkstream=True)
    bus.publish(Ordered(order_id="held"))
    # A worker named w1 read it, then died before acknowledging.
    broker.client.xreadgroup("shop.record", "w1", {broker.keys.stream: ">"})

    async def main() -> None:
        async with working(bus, name="w1") as worker:
            await until(lambda: worker.handled == 1)

    asyncio.run(main())
    assert seen == ["held"]
    assert pending(bus, "shop.record") == 0


def test_an_entry_delivered_more_often_than_its_attempts_allow_is_dead_lettered_unrun(
    bus: EventBus,
) -> None:
    ran: list[str] = []
    bus.subscribe(Ordered, name="shop.poison", retry=RetryPolicy(max_attempts=2))(
        lambda event: ran.append(event.order_id)
    )
    broker = broker_of(bus)
    broker.client.xgroup_create(broker.keys.stream, "shop.poison", id="0", mkstream=True)
    bus.publish(Ordered(order_id="poison"))
    read: t.Any = broker.client.xreadgroup("shop.poison", "w1", {broker.keys.stream: ">"})
    [(_, [(entry_id, _)])] = read
    broker.client.xclaim(broker.keys.stream, "shop.poison", "w1", 0, [entry_id])  # died twice

    async def main() -> None:
        async with working(bus, name="w1") as worker:
            await until(lambda: worker.handled == 1)

    asyncio.run(main())
    assert ran == []
    [letter] = bus.dead_letters
    assert letter.attempts == 2
    assert letter.error_type.endswith(WorkerLostError.__name__)
    assert "stopped before finishing" in letter.error_message


def test_handlers_selects_the_groups_a_worker_runs(bus: EventBus) -> None:
    bus.subscribe(Ordered, name="catalog.reserve")(lambda event: None)
    bus.subscribe(Ordered, name="payments.charge")(lambda event: None)
    worker = Worker(bus, handlers=["catalog.*"])
    assert [sub.name for sub in worker.subscriptions] == ["catalog.reserve"]
    with pytest.raises(LookupError, match=r"'ctalog\.\*' matches no handler"):
        Worker(bus, handlers=["ctalog.*"])
    with pytest.raises(TypeError, match="a worker runs the handlers of a broker bus"):
        Worker(EventBus())
    with pytest.raises(ValueError, match="concurrency must be"):
        Worker(bus, concurrency=0)


def test_with_fewer_slots_than_groups_a_caught_up_group_never_starves_the_others(
    bus: EventBus,
) -> None:
    ran: list[str] = []
    bus.subscribe(Ordered, name="catalog.reserve")(lambda event: ran.append("reserve"))
    bus.subscribe(Ordered, name="payments.charge")(lambda event: ran.append("charge"))
    for number in range(5):
        bus.publish(Ordered(order_id=f"o{number}"))

    async def main() -> None:
        async with working(bus, handlers=["catalog.*"]) as worker:
            await until(lambda: worker.handled == 5)
        # catalog's group has nothing left to read; its reader, first in turn and idle,
        # gives its one slot back after each blocking read, and payments' reader gets it.
        async with working(bus, concurrency=1) as worker:
            await until(lambda: worker.handled == 5)

    asyncio.run(main())
    assert ran == ["reserve"] * 5 + ["charge"] * 5
    assert pending(bus, "payments.charge") == 0


@pytest.fixture
def quick_bus(redis_url: str) -> c.Iterator[EventBus]:
    """A bus whose entries are taken over after 0.3 s without acknowledgement."""
    with RedisBroker(redis_url, namespace="q", claim_idle=0.3) as broker:
        yield EventBus(broker=broker, clock=FakeClock())


def test_an_entry_a_dead_worker_held_is_taken_over_after_claim_idle(
    quick_bus: EventBus, caplog: pytest.LogCaptureFixture
) -> None:
    bus = quick_bus
    seen: list[str] = []
    bus.subscribe(Ordered, name="shop.record", retry=RetryPolicy(max_attempts=3))(
        lambda event: seen.append(event.order_id)
    )
    broker = broker_of(bus)
    broker.client.xgroup_create(broker.keys.stream, "shop.record", id="0", mkstream=True)
    bus.publish(Ordered(order_id="held"))
    broker.client.xreadgroup("shop.record", "dead", {broker.keys.stream: ">"})

    async def main() -> None:
        async with working(bus, name="alive") as worker:
            await until(lambda: worker.handled == 1)
            assert worker.reclaimed == {"shop.record": 1}  # what its metrics show

    with caplog.at_level(logging.INFO, logger="eventbus"):
        asyncio.run(main())
    assert seen == ["held"]
    assert pending(bus, "shop.record") == 0
    [took] = [r for r in caplog.records if "took over entry" in r.getMessage()]
    assert (took.__dict__["worker"], took.__dict__["handler"]) == ("alive", "shop.record")
    assert took.__dict__["entry_id"] in took.getMessage()
    assert all(r.__dict__.get("worker") == "alive" for r in caplog.records if "worker" in r.name)


def test_a_slow_handler_is_never_handed_to_a_second_worker(quick_bus: EventBus) -> None:
    bus = quick_bus
    runs: list[str] = []

    @bus.subscribe(name="shop.slow")
    async def slow(event: Ordered) -> None:
        runs.append(event.order_id)
        await asyncio.sleep(1.2)  # four times claim_idle

    bus.publish(Ordered(order_id="o1"))

    async def main() -> None:
        async with working(bus, name="one") as first, working(bus, name="two") as second:
            await until(lambda: first.handled + second.handled == 1)

    asyncio.run(main())
    assert runs == ["o1"]
    assert len(bus.dead_letters) == 0


def publish_many(broker: RedisBroker, numbers: range) -> None:
    """Append events as fast as a pipeline goes (what a busy publisher does)."""
    from eventbus.redis._broker import entry

    with broker.client.pipeline(transaction=False) as pipe:
        for n in numbers:
            pipe.xadd(broker.keys.stream, entry(Ordered(order_id=str(n))))  # type: ignore[arg-type]
        pipe.execute()


def length(broker: RedisBroker) -> int:
    return int(broker.client.xlen(broker.keys.stream))


def test_a_stream_read_by_its_groups_is_trimmed_as_they_go(
    bus: EventBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eventbus.redis import _worker

    monkeypatch.setattr(_worker, "TRIM_EVERY", 0.02)
    broker = broker_of(bus)
    done: list[int] = []

    @bus.subscribe(name="shop.count")
    async def count(event: Ordered) -> None:
        done.append(1)

    @bus.subscribe(name="shop.audit")
    async def audit(event: Ordered) -> None:
        pass

    total = 10_000

    async def main() -> None:
        async with working(bus, concurrency=64) as worker:
            for start in range(0, total, 1000):
                publish_many(broker, range(start, start + 1000))
                goal = 2 * (start + 1000)  # both groups acknowledged the batch
                await until(lambda: worker.handled >= goal)  # noqa: B023  # awaited here
                # A batch and a node or so, not what went through (a bounded poll: the trim
                # comes within TRIM_EVERY, later on a loaded machine).
                await until(lambda: length(broker) < 1500)

    asyncio.run(main())
    assert len(done) == total


def test_a_busy_worker_trims_after_so_many_acknowledgements_without_waiting_for_the_clock(
    bus: EventBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eventbus.redis import _worker

    monkeypatch.setattr(_worker, "TRIM_EVERY", 3600.0)  # the timer alone would never trim here
    monkeypatch.setattr(_worker, "TRIM_AFTER", 500)
    broker = broker_of(bus)
    bus.subscribe(Ordered, name="shop.count")(lambda event: None)

    async def main() -> None:
        async with working(bus, concurrency=64) as worker:
            await until(lambda: bool(broker.client.exists(broker.keys.stream)))  # its group
            publish_many(broker, range(3_000))
            await until(lambda: worker.handled == 3_000)
            await until(lambda: length(broker) < 600)  # trimmed by count, to a node or so

    asyncio.run(main())


def test_no_entry_still_pending_in_a_group_is_trimmed(
    bus: EventBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eventbus.redis import _worker

    monkeypatch.setattr(_worker, "TRIM_EVERY", 0.02)
    broker = broker_of(bus)
    counted: list[int] = []
    held_seen: list[str] = []
    bus.subscribe(Ordered, name="shop.count")(lambda event: counted.append(1))
    bus.subscribe(Ordered, name="shop.held", retry=RetryPolicy(max_attempts=2))(
        lambda event: held_seen.append(event.order_id)
    )
    # A worker of shop.held took the first entry and died: it stays pending in that group.
    broker.client.xgroup_create(broker.keys.stream, "shop.held", id="0", mkstream=True)
    first = bus.publish(Ordered(order_id="first")).event
    broker.client.xreadgroup("shop.held", "dead", {broker.keys.stream: ">"}, count=1)
    total = 2_000

    async def main() -> None:
        async with working(bus, handlers=["shop.count"]):
            publish_many(broker, range(total))
            await until(lambda: len(counted) == total + 1)
            await asyncio.sleep(0.1)  # trims

    asyncio.run(main())
    oldest: t.Any = broker.client.xrange(broker.keys.stream, count=1)
    assert oldest[0][1][b"payload"] == first.to_json().encode()
    assert length(broker) == total + 1

    async def again() -> None:  # shop.held's worker runs; the stream empties
        async with working(bus, handlers=["shop.held"]):
            await until(lambda: len(held_seen) == total + 1)
            await until(lambda: length(broker) < 200)

    asyncio.run(again())
    assert held_seen.count("first") == 1
    assert pending(bus, "shop.held") == 0


def test_a_letter_is_redriven_from_python_in_the_calling_process(bus: EventBus) -> None:
    carrier = {"up": False}

    @bus.subscribe(name="shop.ship")
    def ship(event: Ordered) -> None:
        if not carrier["up"]:
            raise ConnectionError("carrier down")
        bus.publish(Shipped(order_id=event.order_id))

    bus.publish(Ordered(order_id="o1"))

    async def main() -> None:
        async with working(bus) as worker:
            await until(lambda: worker.handled == 1)

    asyncio.run(main())
    [letter] = bus.dead_letters
    carrier["up"] = True
    assert bus.redrive(letter).ok
    assert len(bus.dead_letters) == 0
    assert [e["event_type"] for e in stream(bus)][-1] == Shipped.event_type  # via the broker


def test_a_worker_started_while_redis_is_down_waits_for_it_and_logs_it_once(
    bus: EventBus, redis_server: t.Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="eventbus.worker")
    seen: list[str] = []
    bus.subscribe(Ordered, name="shop.record")(lambda event: seen.append(event.order_id))
    redis_server.stop()

    async def main() -> None:
        async with working(bus) as worker:
            await asyncio.sleep(1.0)  # a few tries, with backoff
            redis_server.start()
            await asyncio.to_thread(bus.publish, Ordered(order_id="o1"))
            await until(lambda: worker.handled == 1)

    try:
        asyncio.run(main())
    finally:
        if redis_server.process is None:
            redis_server.start()
    assert seen == ["o1"]
    down = [r for r in caplog.records if "Redis does not answer" in r.getMessage()]
    assert len(down) == 1, [r.getMessage() for r in down]
    assert any("Redis answers again" in r.getMessage() for r in caplog.records)


# -- idempotent handlers ----------------------------------------------------------------


@pytest.mark.parametrize("handler_kind", ["sync", "async"])
def test_an_event_delivered_twice_runs_an_idempotent_handler_once(
    bus: EventBus, handler_kind: str
) -> None:
    broker = broker_of(bus)
    runs: list[str] = []

    def charge(event: Ordered) -> None:
        runs.append(event.order_id)
        bus.publish(Shipped(order_id=event.order_id))

    async def charge_async(event: Ordered) -> None:
        charge(event)

    bus.subscribe(Ordered, idempotent=True, name="shop.charge")(
        charge if handler_kind == "sync" else charge_async
    )
    assert bus.inbox is broker.inbox
    ordered = Ordered(order_id="o1")
    bus.publish(ordered)
    bus.publish(ordered)  # the same event again (an outbox that sent it twice, say)

    async def main() -> None:
        async with working(bus) as worker:
            await until(lambda: worker.handled == 3)  # two entries and the one child

    asyncio.run(main())
    assert runs == ["o1"]
    assert [entry["event_type"] for entry in stream(bus)].count(Shipped.event_type) == 1
    key = broker.inbox.key("shop.charge", ordered.event_id)
    ttl = int(broker.client.pttl(key))
    assert 0 < ttl <= broker.inbox.retention_ms  # written with the acknowledgement, expiring
    assert pending(bus, "shop.charge") == 0


def test_a_failed_idempotent_handler_leaves_no_record(bus: EventBus) -> None:
    broker = broker_of(bus)

    @bus.subscribe(idempotent=True, name="shop.charge")
    def charge(event: Ordered) -> None:
        raise ConnectionError("gateway down")

    ordered = Ordered(order_id="o1")
    bus.publish(ordered)

    async def main() -> None:
        async with working(bus) as worker:
            await until(lambda: worker.handled == 1)

    asyncio.run(main())
    assert len(bus.dead_letters) == 1
    assert not broker.inbox.seen("shop.charge", ordered.event_id)


def test_a_worker_commits_an_sqlite_transaction_once_for_duplicates(
    redis_url: str, tmp_path: pathlib.Path
) -> None:
    from eventbus import SQLiteInbox

    path = tmp_path / "shop.db"
    inbox = SQLiteInbox(path)
    with RedisBroker(redis_url, namespace="tx") as broker:
        bus = EventBus(broker=broker, inbox=inbox)

        @bus.subscribe(idempotent=True, name="shop.record")
        async def record(event: Ordered) -> None:
            with inbox.transaction() as db:
                db.execute("CREATE TABLE IF NOT EXISTS orders (id TEXT)")
                db.execute("INSERT INTO orders VALUES (?)", (event.order_id,))

        @bus.subscribe(idempotent=True, name="shop.weak")
        def weak(event: Ordered) -> None:
            pass  # no transaction: recorded after its acknowledgement

        ordered = Ordered(order_id="o1")
        for _ in range(3):
            bus.publish(ordered)

        async def main() -> None:
            async with working(bus, concurrency=1) as worker:
                await until(lambda: worker.handled == 6)

        asyncio.run(main())
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT id FROM orders").fetchall() == [("o1",)]
        assert inbox.seen("shop.record", ordered.event_id)
        assert inbox.seen("shop.weak", ordered.event_id)
        assert not broker.inbox.seen("shop.record", ordered.event_id)  # not the broker's
    inbox.close()
