"""eventbus.otel.Metrics: the bus's counts through OpenTelemetry, with the SDK's in-memory reader.

The same numbers as eventbus.prometheus (both installed on one bus must
agree), under names OpenTelemetry's Prometheus exporter makes the same
series of; a broker's gauges and a worker's counts against the real Redis.
"""

from __future__ import annotations

import asyncio
import collections.abc as c
import re
import time
import typing as t

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)
from prometheus_client import CollectorRegistry

from eventbus import EventBus, RetryPolicy
from eventbus.otel import Metrics
from eventbus.prometheus import PrometheusMetrics
from eventbus.redis import RedisBroker, Worker
from eventbus.testing import FakeClock

from .test_prometheus import OrderPlaced, OrderShipped, shop, work


@pytest.fixture
def reader() -> c.Iterator[InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])  # a private one: the global is left alone
    reader.provider = provider  # type: ignore[attr-defined]
    yield reader
    provider.shutdown()


@pytest.fixture
def metrics(reader: InMemoryMetricReader) -> c.Iterator[Metrics]:
    metrics = Metrics(reader.provider)  # type: ignore[attr-defined]
    yield metrics
    metrics.close()


Points: t.TypeAlias = dict[tuple[str, frozenset[tuple[str, t.Any]]], t.Any]


def points(reader: InMemoryMetricReader) -> Points:
    """Every data point collected now: (name, attributes) -> value (a histogram: its point)."""
    found: Points = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data is not None else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    key = (metric.name, frozenset(dict(point.attributes or {}).items()))
                    assert isinstance(point, HistogramDataPoint | NumberDataPoint)
                    found[key] = point if isinstance(point, HistogramDataPoint) else point.value
    return found


def count(found: Points, name: str, **attributes: str) -> t.Any:
    return found.get((name, frozenset(attributes.items())), 0)


def prometheus_name(name: str, kind: str) -> str:
    """What OpenTelemetry's Prometheus exporter names an instrument (its documented rules)."""
    base = re.sub(r"[^a-zA-Z0-9_]", "_", name)
    return {"counter": f"{base}_total", "histogram": f"{base}_seconds", "gauge": base}[kind]


@pytest.mark.parametrize("use_async", [False, True], ids=["publish", "publish_async"])
def test_it_reports_what_prometheus_metrics_count_on_the_same_bus(
    reader: InMemoryMetricReader, metrics: Metrics, use_async: bool
) -> None:
    bus = EventBus(retry=RetryPolicy(max_attempts=3), clock=FakeClock())
    shop(bus)
    registry = CollectorRegistry()
    prometheus = PrometheusMetrics(registry)
    for installed in (metrics, prometheus):
        installed.install(bus)
    for order_id in ("o1", "o2"):
        placed = OrderPlaced(order_id=order_id)
        if use_async:
            asyncio.run(bus.publish_async(placed))
        else:
            bus.publish(placed)
    for installed in (metrics, prometheus):
        installed.uninstall(bus)
    found = points(reader)
    compared = 0
    for (name, attributes), value in found.items():
        labels = dict(attributes)
        if name == "eventbus.handler.duration":
            series = prometheus_name(name, "histogram")
            assert value.count == registry.get_sample_value(f"{series}_count", labels)
            assert value.sum > 0  # (not equal: one middleware times the other too)
            assert list(value.explicit_bounds) == [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]  # fmt: skip
        else:
            assert value == registry.get_sample_value(prometheus_name(name, "counter"), labels)
        compared += 1
    assert compared == len(found) >= 12
    ship = {"event_type": OrderShipped.event_type, "handler": "shop.notify"}
    assert count(found, "eventbus.published", event_type=OrderPlaced.event_type) == 2
    assert count(found, "eventbus.published", event_type=OrderShipped.event_type) == 2
    assert count(found, "eventbus.handled", **ship, outcome="dead_letter") == 2
    assert count(found, "eventbus.failed_attempts", **ship) == 4
    assert count(found, "eventbus.retries", **ship) == 2
    assert count(found, "eventbus.dead_letters", **ship) == 2
    assert count(found, "eventbus.handler.duration", **ship, outcome="failure").count == 4


@settings(max_examples=30, deadline=None)
@given(failures=st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=8))
def test_every_attempt_is_counted_once_whatever_the_failures(failures: list[int]) -> None:
    """Runs, failed attempts, retries and letters add up to what the policy allows."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics = Metrics(provider)
    bus = EventBus(retry=RetryPolicy(max_attempts=3), clock=FakeClock())
    left = {"n": 0}

    @bus.subscribe(name="shop.ship")
    def ship(event: OrderPlaced) -> None:
        if left["n"]:
            left["n"] -= 1
            raise ConnectionError("down")

    metrics.install(bus)
    for number, fails in enumerate(failures):
        left["n"] = fails
        bus.publish(OrderPlaced(order_id=str(number)))
    metrics.uninstall(bus)
    found = points(reader)
    provider.shutdown()
    where = {"event_type": OrderPlaced.event_type, "handler": "shop.ship"}
    assert count(found, "eventbus.handled", **where, outcome="success") == sum(
        f < 3 for f in failures
    )
    assert count(found, "eventbus.handled", **where, outcome="dead_letter") == sum(
        f >= 3 for f in failures
    )
    assert count(found, "eventbus.failed_attempts", **where) == sum(min(f, 3) for f in failures)
    assert count(found, "eventbus.retries", **where) == sum(min(f, 2) for f in failures)
    attempts = sum(min(f + 1, 3) for f in failures)
    durations = [count(found, "eventbus.handler.duration", **where, outcome=o) for o in
                 ("success", "failure")]  # fmt: skip
    assert sum(point.count if point else 0 for point in durations) == attempts


def test_uninstalled_it_counts_nothing_more(reader: InMemoryMetricReader, metrics: Metrics) -> None:
    bus = EventBus()
    bus.subscribe(OrderPlaced, name="shop.ship")(lambda event: None)
    metrics.install(bus)
    bus.publish(OrderPlaced(order_id="o1"))
    metrics.uninstall(bus)
    bus.publish(OrderPlaced(order_id="o2"))
    assert count(points(reader), "eventbus.published", event_type=OrderPlaced.event_type) == 1
    assert bus.middleware == ()
    with pytest.raises(ValueError, match="is not installed"):
        metrics.uninstall(bus)


def test_a_broker_s_gauges_and_a_worker_s_counts(
    redis_url: str, reader: InMemoryMetricReader, metrics: Metrics
) -> None:
    bus = EventBus(broker=RedisBroker(redis_url, namespace="otel-metrics"), clock=FakeClock())
    broker = bus.broker
    assert isinstance(broker, RedisBroker)

    @bus.subscribe(name="shop.ship", retry=RetryPolicy(max_attempts=1))
    def ship(event: OrderPlaced) -> None:
        if event.order_id == "bad":
            raise ValueError("no such address")

    bus.subscribe(OrderPlaced, name="shop.audit")(lambda event: None)
    worker = Worker(bus, handlers=["shop.ship"], block=0.05)
    metrics.install(bus)
    metrics.watch_broker(broker)
    metrics.watch_worker(worker)
    with pytest.raises(ValueError, match="watches"):
        metrics.watch_broker(broker)

    try:
        work(worker, bus, ["o1", "bad", "o2"], entries=3)
    finally:
        metrics.uninstall(bus)
    found = points(reader)
    here = {"namespace": "otel-metrics"}
    assert count(found, "eventbus.broker.up", **here) == 1
    assert count(found, "eventbus.group.pending", handler="shop.ship", **here) == 0
    assert count(found, "eventbus.group.lag", handler="shop.audit", **here) == 3
    assert count(found, "eventbus.group.consumers", handler="shop.ship", **here) == 1
    assert count(found, "eventbus.dead_letter_store.letters", **here) == 1
    assert count(found, "eventbus.worker.entries") == 3
    assert count(found, "eventbus.reclaimed_entries", handler="shop.ship") == 0
    ship_run = {"event_type": OrderPlaced.event_type, "handler": "shop.ship"}
    assert count(found, "eventbus.handled", **ship_run, outcome="success") == 2
    assert count(found, "eventbus.dead_letters", **ship_run) == 1
    metrics.close()  # the gauges stop: no broker watched, no client left
    after = points(reader)
    assert not [key for key in after if key[0].startswith(("eventbus.group", "eventbus.broker"))]
    broker.close()


def test_a_broker_that_does_not_answer_reads_as_down(
    reader: InMemoryMetricReader, metrics: Metrics
) -> None:
    broker = RedisBroker("redis://127.0.0.1:1/0", namespace="down", timeout=0.2)
    metrics.watch_broker(broker, timeout=0.2)
    found = points(reader)
    assert count(found, "eventbus.broker.up", namespace="down") == 0
    assert not [key for key in found if key[0] == "eventbus.group.pending"]
    metrics.close()
    broker.close()


def test_one_meter_provider_has_one_metrics(reader: InMemoryMetricReader, metrics: Metrics) -> None:
    """A second would get the first's instruments (fixed names) and lose its counts unsaid."""
    with pytest.raises(ValueError, match="has an eventbus Metrics already"):
        Metrics(reader.provider)  # type: ignore[attr-defined]


def test_a_broker_read_is_shared_by_the_five_gauges_of_a_collection_even_when_slow(
    reader: InMemoryMetricReader, metrics: Metrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Redis that hangs is read once per collection, not once per gauge."""
    from eventbus import _metrics

    reads: list[float] = []

    def slow(self: _metrics.BrokerReader) -> None:
        time.sleep(0.6)  # longer than a reading stays fresh (0.5 s)
        reads.append(time.monotonic())

    monkeypatch.setattr(_metrics.BrokerReader, "read", slow)
    broker = RedisBroker("redis://127.0.0.1:1/0", namespace="slow", timeout=0.2)
    metrics.watch_broker(broker, timeout=0.2)
    assert count(points(reader), "eventbus.broker.up", namespace="slow") == 0
    assert len(reads) == 1
    metrics.close()
    broker.close()


def test_a_watched_worker_is_watched_once_and_not_after_close(
    redis_url: str, reader: InMemoryMetricReader, metrics: Metrics
) -> None:
    with RedisBroker(redis_url, namespace="watched") as broker:
        bus = EventBus(broker=broker)
        bus.subscribe(OrderPlaced, name="shop.ship")(lambda event: None)
        worker = Worker(bus)
        metrics.watch_worker(worker)
        with pytest.raises(ValueError, match="watches"):
            metrics.watch_worker(worker)
        assert count(points(reader), "eventbus.worker.entries") == 0
        metrics.close()
        assert ("eventbus.worker.entries", frozenset()) not in points(reader)  # not a reset


def test_the_instruments_names_become_the_dashboard_s_series(
    redis_url: str, reader: InMemoryMetricReader, metrics: Metrics
) -> None:
    """Every instrument Metrics makes, through OpenTelemetry's Prometheus exporter's names,
    is a series the Grafana dashboard queries, and it queries no other."""
    import json
    import pathlib

    bus = EventBus(broker=RedisBroker(redis_url, namespace="named"), clock=FakeClock())
    broker = bus.broker
    assert isinstance(broker, RedisBroker)

    @bus.subscribe(name="shop.ship", retry=RetryPolicy(max_attempts=2))
    def ship(event: OrderPlaced) -> None:
        raise ValueError("no such address")

    worker = Worker(bus, block=0.05)
    metrics.install(bus)
    metrics.watch_broker(broker)
    metrics.watch_worker(worker)

    try:
        work(worker, bus, ["o1"], entries=1)
    finally:
        metrics.uninstall(bus)
    found = points(reader)  # a worker counts the attempts too: failed twice, retried once
    ship_run = {"event_type": OrderPlaced.event_type, "handler": "shop.ship"}
    assert count(found, "eventbus.failed_attempts", **ship_run) == 2
    assert count(found, "eventbus.retries", **ship_run) == 1
    assert count(found, "eventbus.dead_letters", **ship_run) == 1
    assert count(found, "eventbus.handled", **ship_run, outcome="dead_letter") == 1
    data = reader.get_metrics_data()
    assert data is not None
    kinds = {"Sum": "counter", "Histogram": "histogram", "Gauge": "gauge"}
    made = {
        prometheus_name(metric.name, kinds[type(metric.data).__name__])
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    dashboard = pathlib.Path(__file__).parent.parent / "docs" / "grafana" / "eventbus.json"
    queried = set(re.findall(r"eventbus_[a-z_]+", json.dumps(json.loads(dashboard.read_text()))))
    histogram = "eventbus_handler_duration_seconds"
    series = {re.sub(f"^{histogram}_(bucket|sum|count)$", histogram, q) for q in queried}
    assert made == series
    metrics.close()
    broker.close()


def test_the_global_meter_provider_has_one_metrics_before_and_after_it_is_set() -> None:
    """Made before the application sets its provider (the API's proxy), or after: one."""
    import subprocess
    import sys

    script = """
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from eventbus.otel import Metrics
Metrics()  # the proxy, before the application set its provider
metrics.set_meter_provider(MeterProvider())
for second in (lambda: Metrics(), lambda: Metrics(metrics.get_meter_provider())):
    try:
        second()
    except ValueError as error:
        assert "has an eventbus Metrics already" in str(error)
    else:
        raise SystemExit("a second Metrics on the global provider was accepted")
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert done.stdout.strip() == "ok"
