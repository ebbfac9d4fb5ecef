"""eventbus.testing.InMemoryBroker: a broker bus's semantics in this process, no server."""

from __future__ import annotations

import asyncio

import pytest

from eventbus import Event, EventBus, RetryPolicy
from eventbus.redis import RedisBroker
from eventbus.testing import FakeClock, InMemoryBroker, capture, use_broker


class Placed(Event):
    order_id: str


class RushPlaced(Placed):
    pass


class Shipped(Event):
    order_id: str


def app() -> tuple[EventBus, dict[str, list[str]]]:
    """A broker bus as an application builds it at import time (never connected here)."""
    bus = EventBus(
        broker=RedisBroker("redis://127.0.0.1:1/0", namespace="app"),
        retry=RetryPolicy(max_attempts=3, initial_delay=10.0),
        clock=FakeClock(),
    )
    seen: dict[str, list[str]] = {"ship": [], "rush": [], "shipped": []}
    failures = {"left": 1}

    @bus.subscribe(name="app.ship")
    def ship(event: Placed) -> None:
        seen["ship"].append(event.order_id)
        bus.publish(Shipped(order_id=event.order_id))
        if failures["left"]:
            failures["left"] -= 1
            raise ConnectionError("carrier down")

    @bus.subscribe(name="app.rush")
    async def rush(event: RushPlaced) -> None:
        seen["rush"].append(event.order_id)

    @bus.subscribe(name="app.shipped")
    def shipped(event: Shipped) -> None:
        seen["shipped"].append(event.order_id)

    return bus, seen


@pytest.mark.parametrize("use_async", [False, True], ids=["drain", "drain_async"])
def test_the_apps_broker_bus_is_tested_without_a_server(use_async: bool) -> None:
    bus, seen = app()
    real = bus.broker
    with use_broker(bus) as broker, capture(bus) as published:
        placed = bus.publish(Placed(order_id="o1")).event
        bus.publish(RushPlaced(order_id="o2"))
        assert seen == {"ship": [], "rush": [], "shipped": []}  # handlers run in "workers"
        ran = asyncio.run(broker.drain_async()) if use_async else broker.drain()
        assert len(bus.dead_letters) == 0  # the broker's store, while it is installed
        assert bus.dead_letters is broker.dead_letters
    assert seen == {"ship": ["o1", "o1", "o2"], "rush": ["o2"], "shipped": ["o1", "o2"]}
    assert ran == 5  # ship x2 entries, rush x1, shipped x2 (a retry is not a new run)
    assert broker.deliveries["app.ship", placed.event_id] == 2  # one failed attempt
    assert [type(e).__name__ for e in broker.entries] == [
        "Placed",
        "RushPlaced",
        "Shipped",
        "Shipped",
    ]  # the failed attempt's Shipped was dropped
    shipped = broker.entries[2]
    assert shipped.causation_id == placed.event_id
    assert published.one(Shipped, order_id="o1").causation_id == placed.event_id  # once
    assert published.publisher_of(published.one(Shipped, order_id="o1")) == "app.ship"
    clock = bus.clock
    assert isinstance(clock, FakeClock)
    assert clock.sleeps == [10.0]
    assert bus.broker is real
    assert real is not None
    assert bus.dead_letters is real.dead_letters


def test_the_last_failed_attempt_is_a_dead_letter_in_the_brokers_store() -> None:
    bus = EventBus(broker=InMemoryBroker(), retry=RetryPolicy(max_attempts=2), clock=FakeClock())

    @bus.subscribe(name="app.charge")
    def charge(event: Placed) -> None:
        bus.publish(Shipped(order_id=event.order_id))
        raise ValueError("declined")

    broker = bus.broker
    assert isinstance(broker, InMemoryBroker)
    bus.publish(Placed(order_id="o1"))
    broker.drain()
    [letter] = bus.dead_letters
    assert (letter.handler, letter.attempts, letter.error_message) == ("app.charge", 2, "declined")
    assert [type(e).__name__ for e in broker.entries] == ["Placed"]
    assert broker.drain() == 0  # nothing left to read


def test_drain_can_run_some_handlers_and_refuses_a_running_loop() -> None:
    bus, seen = app()
    with use_broker(bus) as broker:
        bus.publish(Placed(order_id="o1"))
        broker.drain(handlers=["app.shipped"])
        assert seen["ship"] == []
        with pytest.raises(LookupError, match=r"'app\.shp' matches no handler"):
            broker.drain(handlers=["app.shp"])

        async def inside() -> None:
            with pytest.raises(RuntimeError, match=r"await broker\.drain_async"):
                broker.drain()

        asyncio.run(inside())
    with pytest.raises(RuntimeError, match="has no bus yet"):
        InMemoryBroker().drain()
    with pytest.raises(TypeError, match="takes an EventBus"):
        use_broker(object())  # type: ignore[arg-type]


@pytest.mark.parametrize("use_async", [False, True], ids=["drain", "drain_async"])
def test_an_idempotent_handler_runs_once_per_event_on_the_in_memory_broker(
    use_async: bool,
) -> None:
    bus, _ = app()
    charged: list[str] = []

    @bus.subscribe(idempotent=True, name="app.charge")
    async def charge(event: Placed) -> None:
        charged.append(event.order_id)
        bus.publish(Shipped(order_id=event.order_id))

    real_inbox = bus.inbox
    with use_broker(bus) as broker:
        assert bus.inbox is broker.inbox  # the broker's, not the Redis one, while installed
        placed = Placed(order_id="o1")
        bus.publish(placed)
        bus.publish(placed)  # one event, two entries
        asyncio.run(broker.drain_async()) if use_async else broker.drain()
        assert charged == ["o1"]
        assert broker.inbox.seen("app.charge", placed.event_id)
        shipped = [e for e in broker.entries if isinstance(e, Shipped)]
        assert len(shipped) == 3  # app.ship's for each entry (not idempotent), charge's once
        assert len(bus.dead_letters) == 0
    assert bus.inbox is real_inbox


@pytest.mark.parametrize("use_async", [False, True], ids=["drain", "drain_async"])
def test_an_event_made_in_a_handler_or_its_hook_follows_from_the_event_handled(
    use_async: bool,
) -> None:
    """As on a worker: made, not published through the bus, it still names its cause."""
    bus = EventBus(broker=InMemoryBroker(), retry=RetryPolicy(max_attempts=1), clock=FakeClock())
    made: list[Shipped] = []

    @bus.subscribe(name="app.ship")
    async def ship(event: Placed) -> None:
        made.append(Shipped(order_id=event.order_id))

    @bus.subscribe(name="app.fail", on_give_up=lambda letter: made.append(Shipped(order_id="hook")))
    def fail(event: Placed) -> None:
        raise ValueError("no")

    placed = Placed(order_id="o1")
    bus.publish(placed)
    broker = bus.broker
    assert isinstance(broker, InMemoryBroker)
    if use_async:
        asyncio.run(broker.drain_async())
    else:
        broker.drain()
    assert sorted(event.order_id for event in made) == ["hook", "o1"]
    assert {event.causation_id for event in made} == {placed.event_id}
    assert {event.correlation_id for event in made} == {placed.event_id}
