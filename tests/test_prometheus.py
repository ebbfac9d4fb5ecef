"""eventbus.prometheus: what a bus did, as Prometheus series, in a private registry.

In process (sync and async), from the broker (against the tests' private
redis-server), and a worker process serving ``/metrics`` on its port.
"""

from __future__ import annotations

import asyncio
import collections.abc as c
import typing as t
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from eventbus import Event, EventBus, RetryPolicy, signals
from eventbus.prometheus import BrokerCollector, PrometheusMetrics, WorkerCollector
from eventbus.redis import RedisBroker, Worker
from eventbus.testing import FakeClock


class OrderPlaced(Event):
    order_id: str


class OrderShipped(Event):
    order_id: str


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> PrometheusMetrics:
    return PrometheusMetrics(registry)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def shop(bus: EventBus) -> None:
    """A handler that succeeds and publishes, one that fails once, one that always fails."""
    failures = {"left": 1}

    @bus.subscribe(name="shop.ship")
    async def ship(event: OrderPlaced) -> None:
        bus.publish(OrderShipped(order_id=event.order_id))

    @bus.subscribe(name="shop.invoice")
    def invoice(event: OrderPlaced) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise ConnectionError("ledger down")

    @bus.subscribe(name="shop.notify", retry=RetryPolicy(max_attempts=2))
    def notify(event: OrderShipped) -> None:
        raise ValueError("no address")


@pytest.mark.parametrize("use_async", [False, True], ids=["publish", "publish_async"])
def test_a_bus_counts_what_it_published_handled_retried_and_dead_lettered(
    registry: CollectorRegistry, metrics: PrometheusMetrics, use_async: bool
) -> None:
    bus = EventBus(retry=RetryPolicy(max_attempts=3), clock=FakeClock())
    shop(bus)
    metrics.install(bus)
    try:
        for number in range(2):
            placed = OrderPlaced(order_id=f"o{number}")
            if use_async:
                asyncio.run(bus.publish_async(placed))
            else:
                bus.publish(placed)
    finally:
        metrics.uninstall(bus)
    placed_type, shipped_type = OrderPlaced.event_type, OrderShipped.event_type
    assert value(registry, "eventbus_published_total", event_type=placed_type) == 2
    assert value(registry, "eventbus_published_total", event_type=shipped_type) == 2
    ok = {"outcome": "success"}
    assert value(registry, "eventbus_handled_total", event_type=placed_type,
                 handler="shop.ship", **ok) == 2  # fmt: skip
    assert value(registry, "eventbus_handled_total", event_type=placed_type,
                 handler="shop.invoice", **ok) == 2  # fmt: skip
    assert value(registry, "eventbus_failed_attempts_total", event_type=placed_type,
                 handler="shop.invoice") == 1  # fmt: skip
    assert value(registry, "eventbus_retries_total", event_type=placed_type,
                 handler="shop.invoice") == 1  # fmt: skip
    notify = {"event_type": shipped_type, "handler": "shop.notify"}
    assert value(registry, "eventbus_failed_attempts_total", **notify) == 4  # 2 runs x 2
    assert value(registry, "eventbus_retries_total", **notify) == 2
    assert value(registry, "eventbus_dead_letters_total", **notify) == 2
    assert value(registry, "eventbus_handled_total", outcome="dead_letter", **notify) == 2
    attempts = {"event_type": placed_type, "handler": "shop.invoice"}
    count = "eventbus_handler_duration_seconds_count"
    assert value(registry, count, outcome="success", **attempts) == 2
    assert value(registry, count, outcome="failure", **attempts) == 1
    assert value(registry, count, outcome="failure", **notify) == 4


def test_uninstalled_it_counts_nothing_more_and_leaves_the_bus_as_it_was(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    bus = EventBus(clock=FakeClock())
    bus.subscribe(OrderPlaced, name="shop.ship")(lambda event: None)
    metrics.install(bus)
    with pytest.raises(ValueError, match=r"installed on .* already"):
        metrics.install(bus)
    bus.publish(OrderPlaced(order_id="o1"))
    metrics.uninstall(bus)
    bus.publish(OrderPlaced(order_id="o2"))
    assert value(registry, "eventbus_published_total", event_type=OrderPlaced.event_type) == 1
    assert bus.middleware == ()
    assert not signals.listened(bus)  # no receiver left: the bus pays nothing again
    with pytest.raises(ValueError, match="is not installed"):
        metrics.uninstall(bus)


def test_an_unhandled_event_kept_as_a_letter_is_a_dead_letter_not_a_handled_run(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    bus = EventBus(report_unhandled=True)
    metrics.install(bus)
    try:
        bus.publish(OrderPlaced(order_id="o1"))
    finally:
        metrics.uninstall(bus)
    letters = {"event_type": OrderPlaced.event_type, "handler": "(no handler)"}
    assert value(registry, "eventbus_dead_letters_total", **letters) == 1
    assert value(registry, "eventbus_handled_total", outcome="dead_letter", **letters) == 0


def test_no_label_is_an_event_id(registry: CollectorRegistry, metrics: PrometheusMetrics) -> None:
    bus = EventBus(retry=RetryPolicy(max_attempts=3), clock=FakeClock())
    shop(bus)
    metrics.install(bus)
    try:
        events = [OrderPlaced(order_id=f"o{n}") for n in range(5)]
        for event in events:
            bus.publish(event)
    finally:
        metrics.uninstall(bus)
    allowed = {
        "event_type": {OrderPlaced.event_type, OrderShipped.event_type},
        "handler": {"shop.ship", "shop.invoice", "shop.notify"},
        "outcome": {"success", "failure", "dead_letter"},
    }
    seen = 0
    for family in registry.collect():
        for sample in family.samples:
            for key, label in sample.labels.items():
                if key != "le":  # a histogram's bucket bounds
                    assert label in allowed[key], (sample.name, key, label)
                    seen += 1
    assert seen > 0
    assert not any(str(event.event_id) in str(list(registry.collect())) for event in events)


# -- the broker and a worker, against Redis ---------------------------------------------------


@pytest.fixture
def broker_bus(redis_url: str) -> c.Iterator[EventBus]:
    bus = EventBus(broker=RedisBroker(redis_url, namespace="metrics"), clock=FakeClock())
    yield bus
    assert bus.broker is not None
    bus.broker.close()  # type: ignore[attr-defined]


def work(worker: Worker, bus: EventBus, order_ids: list[str], *, entries: int) -> None:
    """Publish an OrderPlaced per id; run ``worker`` until it acknowledged ``entries``."""

    async def main() -> None:
        task = asyncio.create_task(worker.run())
        for order_id in order_ids:
            bus.publish(OrderPlaced(order_id=order_id))
        for _ in range(3000):
            if worker.handled == entries:
                break
            await asyncio.sleep(0.01)
        worker.stop()
        await asyncio.wait_for(task, 60)

    asyncio.run(main())


def test_the_broker_collector_shows_each_groups_pending_lag_and_the_letters(
    broker_bus: EventBus, registry: CollectorRegistry
) -> None:
    bus = broker_bus
    broker = bus.broker
    assert isinstance(broker, RedisBroker)

    @bus.subscribe(name="shop.ship", retry=RetryPolicy(max_attempts=1))
    def ship(event: OrderPlaced) -> None:
        if event.order_id == "bad":
            raise ValueError("no such address")

    bus.subscribe(OrderPlaced, name="shop.audit")(lambda event: None)
    registry.register(BrokerCollector(broker))
    worker = Worker(bus, handlers=["shop.ship"], block=0.05)
    registry.register(WorkerCollector(worker))

    work(worker, bus, ["o1", "bad", "o2"], entries=3)
    here = {"namespace": "metrics"}
    assert value(registry, "eventbus_broker_up", **here) == 1
    assert value(registry, "eventbus_group_pending", handler="shop.ship", **here) == 0
    assert value(registry, "eventbus_group_lag", handler="shop.ship", **here) == 0
    assert value(registry, "eventbus_group_consumers", handler="shop.ship", **here) == 1
    assert value(registry, "eventbus_dead_letter_store_letters", **here) == 1
    assert value(registry, "eventbus_worker_entries_total") == 3
    assert value(registry, "eventbus_reclaimed_entries_total", handler="shop.ship") == 0
    # The worker made a group for every handler of the bus; shop.audit's has no worker yet.
    assert registry.get_sample_value(
        "eventbus_group_lag", {"handler": "shop.audit", **here}
    ) == 3  # fmt: skip
    assert value(registry, "eventbus_group_consumers", handler="shop.audit", **here) == 0


def test_a_broker_that_does_not_answer_is_a_gauge_not_a_failed_scrape(
    registry: CollectorRegistry,
) -> None:
    broker = RedisBroker("redis://127.0.0.1:1/0", namespace="down", timeout=0.2)
    collector = BrokerCollector(broker, timeout=0.2)
    registry.register(collector)
    assert registry.get_sample_value("eventbus_broker_up", {"namespace": "down"}) == 0
    assert registry.get_sample_value("eventbus_group_pending", {"namespace": "down"}) is None
    collector.close()
    broker.close()


def test_a_workers_metrics_port_serves_the_documented_series(redis_url: str) -> None:
    """Through serve_metrics, as ``worker --metrics-port`` does (its process test: below)."""
    from eventbus.prometheus import serve_metrics

    bus = EventBus(broker=RedisBroker(redis_url, namespace="served"), clock=FakeClock())
    bus.subscribe(OrderPlaced, name="shop.ship")(lambda event: None)
    worker = Worker(bus, block=0.05)
    with serve_metrics(bus, worker, port=0) as served:
        bus.publish(OrderPlaced(order_id="o1"))
        url = f"http://127.0.0.1:{served.port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            text = reply.read().decode()
        for series in (
            'eventbus_published_total{event_type="' + OrderPlaced.event_type + '"} 1.0',
            "# TYPE eventbus_group_pending gauge",  # no group before a worker runs
            'eventbus_dead_letter_store_letters{namespace="served"} 0.0',
            'eventbus_broker_up{namespace="served"} 1.0',
            "eventbus_worker_entries_total 0.0",
            "# TYPE eventbus_handler_duration_seconds histogram",
        ):
            assert series in text, text
    assert bus.middleware == ()  # closed: uninstalled too
    with pytest.raises(urllib.error.URLError, match="refused"):
        urllib.request.urlopen(url, timeout=2)  # the port is free again
    assert bus.broker is not None
    bus.broker.close()  # type: ignore[attr-defined]


def test_one_metrics_object_on_two_buses_counts_each_until_it_is_uninstalled_from_it(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    first, second = EventBus(), EventBus()
    for bus in (first, second):
        bus.subscribe(OrderPlaced, name="shop.ship")(lambda event: None)
        metrics.install(bus)
    first.publish(OrderPlaced(order_id="o1"))
    metrics.uninstall(first)
    first.publish(OrderPlaced(order_id="o2"))  # not counted any more
    second.publish(OrderPlaced(order_id="o3"))  # still counted
    metrics.uninstall(second)
    kind = {"event_type": OrderPlaced.event_type}
    assert value(registry, "eventbus_published_total", **kind) == 2
    assert value(registry, "eventbus_handled_total", handler="shop.ship", outcome="success",
                 **kind) == 2  # fmt: skip


def test_a_run_is_counted_by_how_it_ended_whatever_the_middleware_around_the_metrics(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    """A layer outside the metrics that fails after the handler returned: a failed attempt."""
    from eventbus import HandlerCall, Middleware

    class CommitFails(Middleware):
        def handle(self, call_next: t.Any, event: Event, call: HandlerCall, /) -> None:
            call_next(event, call)
            raise ConnectionError("the commit failed")

    bus = EventBus(retry=RetryPolicy(max_attempts=2), clock=FakeClock(), middleware=[CommitFails()])
    bus.subscribe(OrderPlaced, name="shop.ship")(lambda event: None)
    metrics.install(bus)
    try:
        bus.publish(OrderPlaced(order_id="o1"))
    finally:
        metrics.uninstall(bus)
    ship = {"event_type": OrderPlaced.event_type, "handler": "shop.ship"}
    assert value(registry, "eventbus_handled_total", outcome="success", **ship) == 0
    assert value(registry, "eventbus_handled_total", outcome="dead_letter", **ship) == 1
    assert value(registry, "eventbus_failed_attempts_total", **ship) == 2
    assert value(registry, "eventbus_retries_total", **ship) == 1


def test_a_relay_s_dead_letter_is_counted_and_signalled_but_is_no_handler_run(
    registry: CollectorRegistry, metrics: PrometheusMetrics, tmp_path: t.Any
) -> None:
    import contextlib
    import sqlite3

    from eventbus import RELAY, DeadLetter, Relay, SQLiteOutbox
    from eventbus.tracing import Trace

    bus = EventBus(clock=FakeClock())
    letters: list[DeadLetter] = []

    def alert(sender: object, *, dead_letter: DeadLetter, **_: object) -> None:
        letters.append(dead_letter)

    signals.event_dead_lettered.connect(alert, sender=bus)
    metrics.install(bus)
    trace = Trace(bus)  # a trace of the bus ignores it: no dispatch made it
    try:
        with SQLiteOutbox(tmp_path / "shop.db") as outbox:
            with contextlib.closing(sqlite3.connect(outbox.path)) as db, db:
                db.execute(  # a row of a type this process does not know: a letter at once
                    f"INSERT INTO {outbox.table} (event_type, payload, added_at) "
                    "VALUES ('gone.Gone', '{}', 0)"
                )
            with Relay(bus, outbox) as relay:
                assert relay.send() == 0
                assert relay.lettered == 1
    finally:
        trace.close()
        metrics.uninstall(bus)
        signals.event_dead_lettered.disconnect(alert)
    assert trace.roots == []
    [letter] = letters
    assert letter.handler == RELAY
    labels = {"event_type": "eventbus.UndefinedEvent", "handler": RELAY}
    assert value(registry, "eventbus_dead_letters_total", **labels) == 1
    assert value(registry, "eventbus_handled_total", **labels, outcome="dead_letter") == 0
