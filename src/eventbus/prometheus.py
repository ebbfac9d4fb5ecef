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
import functools
import sys
import time
import typing as t
import weakref

try:
    import prometheus_client
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector, CollectorRegistry
except ImportError as missing:  # pragma: no cover - the dev environment has it
    raise ImportError(
        "eventbus.prometheus needs prometheus_client: pip install 'eventbus[prometheus]'"
    ) from missing

from blinker import NamedSignal

from . import signals
from .inbox.protocol import AlreadyHandled
from .middleware import AsyncCallNext, CallNext, HandlerCall, Middleware

if t.TYPE_CHECKING:
    from .bus import EventBus
    from .dead_letters import DeadLetter
    from .events import Event
    from .handlers.subscription import Subscription
    from .redis import RedisBroker, Worker

__all__ = [
    "BrokerCollector",
    "MetricsServer",
    "PrometheusMetrics",
    "WorkerCollector",
    "serve_metrics",
]

_clock = time.perf_counter

#: Handler attempts' durations: 0.5 ms to 30 s.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def _label(event: Event) -> str:
    """The ``event_type`` label: an unreadable entry's claimed type is data, so not that."""
    from .dead_letters import UndefinedEvent

    return event.event_type if not isinstance(event, UndefinedEvent) else UndefinedEvent.event_type


class PrometheusMetrics(Middleware):
    """The counters and the histogram of the buses it is installed on, in ``registry``.

    ``registry`` is ``prometheus_client``'s default one unless given (a
    private ``CollectorRegistry()`` in tests). One object can be installed
    on several buses: their series add up.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else prometheus_client.REGISTRY
        labels = ("event_type", "handler")
        self.published = prometheus_client.Counter(
            "eventbus_published",
            "Events published (a handler's: when its attempt succeeded, on a broker bus).",
            ["event_type"],
            registry=self.registry,
        )
        self.handled = prometheus_client.Counter(
            "eventbus_handled",
            "Handler runs ended: outcome success, or dead_letter once the last attempt failed.",
            [*labels, "outcome"],
            registry=self.registry,
        )
        self.failed_attempts = prometheus_client.Counter(
            "eventbus_failed_attempts",
            "Handler attempts that raised (the retried ones and the last).",
            labels,
            registry=self.registry,
        )
        self.retries = prometheus_client.Counter(
            "eventbus_retries",
            "Failed attempts that another attempt follows.",
            labels,
            registry=self.registry,
        )
        self.dead_letters = prometheus_client.Counter(
            "eventbus_dead_letters",
            "Dead letters made (handler '(no handler)': an event nobody handles).",
            labels,
            registry=self.registry,
        )
        self.duration = prometheus_client.Histogram(
            "eventbus_handler_duration_seconds",
            "How long each handler attempt took, by outcome (success or failure).",
            [*labels, "outcome"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self._buses: weakref.WeakKeyDictionary[
            EventBus, list[tuple[NamedSignal, c.Callable[..., None]]]
        ] = weakref.WeakKeyDictionary()
        #: Label children, looked up once: (event type, handler) -> durations (ok, failed).
        self._durations: dict[tuple[str, str], tuple[t.Any, t.Any]] = {}
        self._succeeded: dict[tuple[str, str], t.Any] = {}
        self._published: dict[str, t.Any] = {}

    # -- installing ----------------------------------------------------------------------

    def install(self, bus: EventBus) -> None:
        """Count what ``bus`` does from now on, and time its handlers' attempts."""
        if bus in self._buses:
            raise ValueError(f"{self!r} is installed on {bus!r} already")
        # Receivers of this bus's own (blinker's disconnect(receiver, sender=bus) would leave
        # a receiver in the signal: each bus gets its own, disconnected whole).
        receivers: list[tuple[NamedSignal, c.Callable[..., None]]] = [
            (signal, functools.partial(method)) for signal, method in self._signals()
        ]
        for signal, receiver in receivers:
            signal.connect(receiver, sender=bus, weak=False)
        self._buses[bus] = receivers
        bus.add_middleware(self)

    def uninstall(self, bus: EventBus) -> None:
        """Stop counting what ``bus`` does (the series counted so far stay)."""
        receivers = self._buses.pop(bus, None)
        if receivers is None:
            raise ValueError(f"{self!r} is not installed on {bus!r}")
        for signal, receiver in receivers:
            signal.disconnect(receiver)  # this bus's own: the other buses' go on
        bus.remove_middleware(self)

    def _signals(self) -> list[tuple[NamedSignal, c.Callable[..., None]]]:
        return [
            (signals.event_published, self._on_published),
            (signals.handler_succeeded, self._on_succeeded),
            (signals.handler_failed, self._on_failed),
            (signals.handler_retrying, self._on_retrying),
            (signals.event_dead_lettered, self._on_dead_lettered),
        ]

    # -- the middleware: each attempt's duration -------------------------------------------
    #
    # The hot path: label children looked up once per (event type, handler). The runs and
    # their outcomes are counted from the signals, which the bus sends outside every
    # middleware (and a worker once the entry is acknowledged).

    def applies_to(self, subscription: Subscription, /) -> bool:
        return True

    def handle(self, call_next: CallNext, event: Event, call: HandlerCall, /) -> None:
        started = _clock()
        try:
            call_next(event, call)
        except Exception as error:
            if not isinstance(error, AlreadyHandled):  # a duplicate skipped: not timed
                self._timed(event, call, 1, _clock() - started)
            raise
        self._timed(event, call, 0, _clock() - started)

    async def handle_async(
        self, call_next: AsyncCallNext, event: Event, call: HandlerCall, /
    ) -> None:
        started = _clock()
        try:
            await call_next(event, call)
        except Exception as error:
            if not isinstance(error, AlreadyHandled):
                self._timed(event, call, 1, _clock() - started)
            raise
        self._timed(event, call, 0, _clock() - started)

    def _timed(self, event: Event, call: HandlerCall, failed: int, seconds: float) -> None:
        key = (event.event_type, call.subscription.name)
        series = self._durations.get(key)
        if series is None:
            series = self._durations[key] = (
                self.duration.labels(*key, "success"),
                self.duration.labels(*key, "failure"),
            )
        series[failed].observe(seconds)

    # -- the signals: counts ---------------------------------------------------------------

    def _on_published(self, sender: object, /, *, event: Event, **_: object) -> None:
        counter = self._published.get(event.event_type)
        if counter is None:
            counter = self._published[event.event_type] = self.published.labels(event.event_type)
        counter.inc()

    def _on_succeeded(self, sender: object, /, *, event: Event, handler: str, **_: object) -> None:
        key = (event.event_type, handler)
        counter = self._succeeded.get(key)
        if counter is None:
            counter = self._succeeded[key] = self.handled.labels(*key, "success")
        counter.inc()

    def _on_failed(self, sender: object, /, *, event: Event, handler: str, **_: object) -> None:
        self.failed_attempts.labels(_label(event), handler).inc()

    def _on_retrying(self, sender: object, /, *, event: Event, handler: str, **_: object) -> None:
        self.retries.labels(_label(event), handler).inc()

    def _on_dead_lettered(self, sender: object, /, *, dead_letter: DeadLetter, **_: object) -> None:
        event_type = _label(dead_letter.event)
        self.dead_letters.labels(event_type, dead_letter.handler).inc()
        if not dead_letter.unhandled:
            self.handled.labels(event_type, dead_letter.handler, "dead_letter").inc()


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
        from .redis import RedisDeadLetterStore
        from .redis._client import connect

        self.broker = broker
        self._client = connect(broker.url, timeout)
        self._letters = RedisDeadLetterStore(
            broker.url, namespace=broker.namespace, timeout=timeout
        )

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
        from .redis._worker import groups

        pending, lag, consumers, letters, up = self._families()
        namespace = self.broker.namespace
        try:
            found = groups(self.broker, self._client)
            stored = len(self._letters)
        except Exception:  # BrokerError, RedisDeadLetterStoreError: the scrape goes on
            up.add_metric([namespace], 0)
            yield up
            return
        for group in found:
            where = [namespace, group["handler"]]
            pending.add_metric(where, group["pending"])
            consumers.add_metric(where, group["consumers"])
            if group["lag"] is not None:
                lag.add_metric(where, group["lag"])
        letters.add_metric([namespace], stored)
        up.add_metric([namespace], 1)
        yield from (pending, lag, consumers, letters, up)

    def describe(self) -> c.Iterable[Metric]:
        """The families it exports (empty): what a registry checks names against."""
        return self._families()

    def close(self) -> None:
        """Close its clients."""
        self._client.close()
        self._letters.close()


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
