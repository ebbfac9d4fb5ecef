"""Prometheus metrics of a bus, its broker and its workers: ``pip install "eventbus[prometheus]"``.

- :class:`PrometheusMetrics`: counters of what a bus does (published,
  handled, failed attempts, retries, dead letters) and a histogram of
  handler attempts' durations, in a ``prometheus_client`` registry.
  Installed on a bus (``metrics.install(bus)``): the counts from the bus's
  signals (sent outside every middleware, and on a worker once the entry is
  acknowledged), the durations from a middleware; a bus it is not
  installed on pays nothing.
- :class:`BrokerCollector`: what no peer exports, read from Redis at each
  scrape: each handler's group's pending entries, lag and consumers, and
  the dead letters in the store.
- :class:`WorkerCollector`: what a worker process counts (entries handled,
  entries taken over from dead workers).

``python -m eventbus worker ... --metrics-port 9464`` serves all three on
``/metrics``. The labels are the event type, the handler name and the
outcome, all fixed by the code, never an event id: the number of series
stays bounded. The names (docs/observability.md lists them) follow
Prometheus's conventions: ``eventbus_`` prefix, ``_total`` counters,
``_seconds`` durations.
"""

from __future__ import annotations

import collections.abc as c
import sys
import typing as t

try:
    import prometheus_client
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector, CollectorRegistry
    from prometheus_client.utils import floatToGoString
except ImportError as missing:  # pragma: no cover - the dev environment has it
    raise ImportError(
        "eventbus.prometheus needs prometheus_client: pip install 'eventbus[prometheus]'"
    ) from missing

from . import _metrics

if t.TYPE_CHECKING:
    from .bus import EventBus
    from .redis import RedisBroker, Worker

__all__ = [
    "BrokerCollector",
    "MetricsServer",
    "PrometheusMetrics",
    "WorkerCollector",
    "serve_metrics",
]

#: Handler attempts' durations: 0.5 ms to 30 s.
BUCKETS = _metrics.BUCKETS


class PrometheusMetrics(_metrics.Counts):
    """The counters and the histogram of the buses it is installed on, in ``registry``.

    ``registry`` is ``prometheus_client``'s default one unless given (a
    private ``CollectorRegistry()`` in tests). One object can be installed
    on several buses: their series add up. The counts are kept by the
    object itself (plain numbers behind a lock, cheaper on the hot path
    than ``prometheus_client``'s metric objects) and turned into series
    when the registry is scraped.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__()
        self.registry = registry if registry is not None else prometheus_client.REGISTRY
        self.registry.register(_CountsCollector(self))


class _CountsCollector(Collector):
    """The series of a PrometheusMetrics' counts, made at each scrape."""

    def __init__(self, counts: _metrics.Counts) -> None:
        self._counts = counts

    @staticmethod
    def _families() -> tuple[
        CounterMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
        HistogramMetricFamily,
    ]:
        labels = ["event_type", "handler"]
        return (
            CounterMetricFamily(
                "eventbus_published",
                "Events published (a handler's: when its attempt succeeded, on a broker bus).",
                labels=["event_type"],
            ),
            CounterMetricFamily(
                "eventbus_handled",
                "Handler runs ended: outcome success, or dead_letter once the last attempt failed.",
                labels=[*labels, "outcome"],
            ),
            CounterMetricFamily(
                "eventbus_failed_attempts",
                "Handler attempts that raised (the retried ones and the last).",
                labels=labels,
            ),
            CounterMetricFamily(
                "eventbus_retries", "Failed attempts that another attempt follows.", labels=labels
            ),
            CounterMetricFamily(
                "eventbus_dead_letters",
                "Dead letters made (handler '(no handler)': an event nobody handles).",
                labels=labels,
            ),
            HistogramMetricFamily(
                "eventbus_handler_duration_seconds",
                "How long each handler attempt took, by outcome (success or failure).",
                labels=[*labels, "outcome"],
            ),
        )

    def collect(self) -> c.Iterator[Metric]:
        published, handled, failed, retries, letters, durations = self._families()
        counts = self._counts.snapshot()
        for event_type, count in counts.published.items():
            published.add_metric([event_type], count)
        family: CounterMetricFamily
        for family, found in (
            (handled, counts.handled),
            (failed, counts.failed_attempts),
            (retries, counts.retries),
            (letters, counts.dead_letters),
        ):
            for key, count in found.items():
                family.add_metric(list(key), count)
        bounds = [*(str(floatToGoString(bound)) for bound in BUCKETS), "+Inf"]  # type: ignore[no-untyped-call]
        for key, histogram in counts.durations.items():
            durations.add_metric(
                list(key),
                buckets=list(zip(bounds, histogram.cumulative(), strict=True)),
                sum_value=histogram.sum,
            )
        yield from (published, handled, failed, retries, letters, durations)

    def describe(self) -> c.Iterable[Metric]:
        """The families it exports (empty): what a registry checks names against."""
        return self._families()


class BrokerCollector(Collector):
    """Gauges read from Redis at each scrape: every handler's group, and the dead letters.

    ``eventbus_group_pending`` (entries read and not acknowledged: running,
    or held by a dead worker until taken over), ``eventbus_group_lag``
    (entries not read yet; absent when Redis cannot tell),
    ``eventbus_group_consumers`` (consumers Redis keeps for the group: every
    worker that ever read, until deleted), each labelled ``namespace`` and
    ``handler``, ``eventbus_dead_letter_store_letters`` and
    ``eventbus_broker_up``. It reads through clients of its own whose every
    command gives up after about three times ``timeout`` seconds (1 by
    default), so a Redis that hangs shows as ``eventbus_broker_up 0`` within
    Prometheus's scrape timeout instead of failing the scrape. Register it:
    ``registry.register(BrokerCollector(broker))``.
    """

    def __init__(self, broker: RedisBroker, *, timeout: float = 1.0) -> None:
        self.broker = broker
        self._reader = _metrics.BrokerReader(broker, timeout=timeout)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        labels = ["namespace", "handler"]
        return (
            GaugeMetricFamily(
                "eventbus_group_pending",
                "Entries read by a handler's group, not acknowledged.",
                labels=labels,
            ),
            GaugeMetricFamily(
                "eventbus_group_lag",
                "Entries of the stream a handler's group has not read yet.",
                labels=labels,
            ),
            GaugeMetricFamily(
                "eventbus_group_consumers",
                "Consumers Redis keeps for a handler's group.",
                labels=labels,
            ),
            GaugeMetricFamily(
                "eventbus_dead_letter_store_letters",
                "Dead letters in the broker's store.",
                labels=["namespace"],
            ),
            GaugeMetricFamily(
                "eventbus_broker_up", "Whether Redis answered this scrape.", labels=["namespace"]
            ),
        )

    def collect(self) -> c.Iterator[Metric]:
        pending, lag, consumers, letters, up = self._families()
        namespace = self.broker.namespace
        reading = self._reader.read()
        if reading is None:  # Redis did not answer: the scrape goes on
            up.add_metric([namespace], 0)
            yield up
            return
        for group in reading.groups:
            where = [namespace, group["handler"]]
            pending.add_metric(where, group["pending"])
            consumers.add_metric(where, group["consumers"])
            if group["lag"] is not None:
                lag.add_metric(where, group["lag"])
        letters.add_metric([namespace], reading.letters)
        up.add_metric([namespace], 1)
        yield from (pending, lag, consumers, letters, up)

    def describe(self) -> c.Iterable[Metric]:
        """The families it exports (empty): what a registry checks names against."""
        return self._families()

    def close(self) -> None:
        """Close its clients."""
        self._reader.close()


class WorkerCollector(Collector):
    """What a worker counted: ``eventbus_worker_entries_total`` (entries acknowledged, once
    per group that read them, run or not) and ``eventbus_reclaimed_entries_total`` (entries
    it took over from dead workers, by handler).
    """

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, CounterMetricFamily]:
        return (
            CounterMetricFamily(
                "eventbus_worker_entries", "Stream entries this worker acknowledged, per group."
            ),
            CounterMetricFamily(
                "eventbus_reclaimed_entries",
                "Entries this worker took over from workers that died (idle past claim_idle).",
                labels=["handler"],
            ),
        )

    def collect(self) -> c.Iterator[Metric]:
        entries, reclaimed = self._families()
        entries.add_metric([], self.worker.handled)
        for sub in self.worker.subscriptions:
            reclaimed.add_metric([sub.name], self.worker.reclaimed[sub.name])
        yield entries
        yield reclaimed

    def describe(self) -> c.Iterable[Metric]:
        """The families it exports (empty)."""
        return self._families()


class MetricsServer:
    """``/metrics`` served in a thread: what :func:`serve_metrics` returns. ``close()`` stops it."""

    def __init__(
        self,
        bus: EventBus,
        metrics: PrometheusMetrics,
        server: t.Any,
        thread: t.Any,
        broker: BrokerCollector | None,
    ) -> None:
        self.bus, self.metrics = bus, metrics
        self._server, self._thread, self._broker = server, thread, broker

    @property
    def port(self) -> int:
        """The port it serves on (the one chosen when ``port=0`` was asked)."""
        return int(self._server.server_address[1])

    def close(self) -> None:
        """Stop serving, free the port, and uninstall the metrics from the bus."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        self.metrics.uninstall(self.bus)
        if self._broker is not None:
            self._broker.close()

    def __enter__(self) -> t.Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def serve_metrics(
    bus: EventBus,
    worker: Worker | None = None,
    *,
    port: int,
    host: str = "127.0.0.1",
    registry: CollectorRegistry | None = None,
) -> MetricsServer:
    """Serve ``/metrics`` on ``host:port`` in a thread: the bus's, its broker's, its worker's.

    Binds the port first (an ``OSError`` if it is taken), then installs a
    :class:`PrometheusMetrics` on ``bus`` and registers a
    :class:`BrokerCollector` (a broker bus) and a :class:`WorkerCollector`
    (when ``worker`` is given) in ``registry`` (a new one by default). Call
    it before the worker runs: a running worker does not see middleware
    added later. ``python -m eventbus worker --metrics-port`` calls this.
    """
    registry = registry if registry is not None else CollectorRegistry()
    server, thread = prometheus_client.start_http_server(port, addr=host, registry=registry)
    metrics = PrometheusMetrics(registry)
    metrics.install(bus)
    broker = None
    redis_module = sys.modules.get("eventbus.redis")  # a RedisBroker means it was imported
    if redis_module is not None and isinstance(bus.broker, redis_module.RedisBroker):
        broker = BrokerCollector(bus.broker)
        registry.register(broker)
    if worker is not None:
        registry.register(WorkerCollector(worker))
    return MetricsServer(bus, metrics, server, thread, broker)
