"""Prometheus metrics of a bus, its broker and its workers: ``pip install "eventbus[prometheus]"``.

- :class:`PrometheusMetrics`: counters of what a bus does (published,
  handled, failed attempts, retries, dead letters) and a histogram of
  handler attempts' durations, in a ``prometheus_client`` registry.
  Installed on a bus (``metrics.install(bus)``): a middleware counts each
  attempt's outcome and duration, the bus's signals the rest (published,
  retries, dead letters); a bus it is not installed on pays nothing.
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
import time
import typing as t

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

__all__ = ["BrokerCollector", "PrometheusMetrics", "WorkerCollector", "serve_metrics"]

_clock = time.perf_counter

#: Handler attempts' durations: 0.5 ms to 30 s.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


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
        self._receivers: dict[int, list[tuple[NamedSignal, t.Any]]] = {}
        #: (event type, handler) -> its series: handled ok, duration ok, failed, duration failed.
        self._series: dict[tuple[str, str], tuple[t.Any, t.Any, t.Any, t.Any]] = {}
        self._published: dict[str, t.Any] = {}

    # -- installing ----------------------------------------------------------------------

    def install(self, bus: EventBus) -> None:
        """Count what ``bus`` does from now on, and time its handlers' attempts."""
        if id(bus) in self._receivers:
            raise ValueError(f"{self!r} is installed on {bus!r} already")
        receivers: list[tuple[NamedSignal, t.Any]] = [
            (signals.event_published, self._on_published),
            (signals.handler_retrying, self._on_retrying),
            (signals.event_dead_lettered, self._on_dead_lettered),
        ]
        for signal, receiver in receivers:
            signal.connect(receiver, sender=bus, weak=False)
        self._receivers[id(bus)] = receivers
        bus.add_middleware(self)

    def uninstall(self, bus: EventBus) -> None:
        """Stop counting what ``bus`` does (the series counted so far stay)."""
        receivers = self._receivers.pop(id(bus), None)
        if receivers is None:
            raise ValueError(f"{self!r} is not installed on {bus!r}")
        for signal, receiver in receivers:
            signal.disconnect(receiver)
        bus.remove_middleware(self)

    # -- the middleware: each attempt's outcome and duration --------------------------------
    #
    # The hot path: a success ends a run, so the run is counted here, with the attempt's
    # duration, through label children looked up once per (event type, handler).

    def applies_to(self, subscription: Subscription, /) -> bool:
        return True

    def handle(self, call_next: CallNext, event: Event, call: HandlerCall, /) -> None:
        started = _clock()
        try:
            call_next(event, call)
        except AlreadyHandled:
            raise  # a duplicate skipped: not a failed attempt
        except BaseException:
            self._failed(event, call, _clock() - started)
            raise
        self._succeeded(event, call, _clock() - started)

    async def handle_async(
        self, call_next: AsyncCallNext, event: Event, call: HandlerCall, /
    ) -> None:
        started = _clock()
        try:
            await call_next(event, call)
        except AlreadyHandled:
            raise  # a duplicate skipped: not a failed attempt
        except BaseException:
            self._failed(event, call, _clock() - started)
            raise
        self._succeeded(event, call, _clock() - started)

    def _succeeded(self, event: Event, call: HandlerCall, seconds: float) -> None:
        series = self._series.get((event.event_type, call.subscription.name))
        if series is None:
            series = self._series_of(event.event_type, call.subscription.name)
        series[0].inc()
        series[1].observe(seconds)

    def _failed(self, event: Event, call: HandlerCall, seconds: float) -> None:
        series = self._series.get((event.event_type, call.subscription.name))
        if series is None:
            series = self._series_of(event.event_type, call.subscription.name)
        series[2].inc()
        series[3].observe(seconds)

    def _series_of(self, event_type: str, handler: str) -> tuple[t.Any, t.Any, t.Any, t.Any]:
        series = (
            self.handled.labels(event_type, handler, "success"),
            self.duration.labels(event_type, handler, "success"),
            self.failed_attempts.labels(event_type, handler),
            self.duration.labels(event_type, handler, "failure"),
        )
        self._series[(event_type, handler)] = series
        return series

    # -- the signals: the rest -----------------------------------------------------------

    def _on_published(self, sender: object, /, *, event: Event, **_: object) -> None:
        counter = self._published.get(event.event_type)
        if counter is None:
            counter = self._published[event.event_type] = self.published.labels(event.event_type)
        counter.inc()

    def _on_retrying(self, sender: object, /, *, event: Event, handler: str, **_: object) -> None:
        self.retries.labels(event.event_type, handler).inc()

    def _on_dead_lettered(self, sender: object, /, *, dead_letter: DeadLetter, **_: object) -> None:
        self.dead_letters.labels(dead_letter.event_type, dead_letter.handler).inc()
        if not dead_letter.unhandled:
            self.handled.labels(dead_letter.event_type, dead_letter.handler, "dead_letter").inc()

    def __repr__(self) -> str:
        return f"<PrometheusMetrics on {len(self._receivers)} bus(es)>"


class BrokerCollector(Collector):
    """Gauges read from Redis at each scrape: every handler's group, and the dead letters.

    ``eventbus_group_pending`` (entries read and not acknowledged: running,
    or held by a dead worker until taken over), ``eventbus_group_lag``
    (entries not read yet; absent when Redis cannot tell),
    ``eventbus_group_consumers``, each labelled ``handler``, and
    ``eventbus_dead_letter_store_letters``. A Redis that does not answer
    makes the scrape show ``eventbus_broker_up 0`` instead of failing it.
    Register it: ``registry.register(BrokerCollector(broker))``.
    """

    def __init__(self, broker: RedisBroker) -> None:
        self.broker = broker

    def collect(self) -> c.Iterator[Metric]:
        pending = GaugeMetricFamily(
            "eventbus_group_pending", "Entries read by a handler's group, not acknowledged.",
            labels=["handler"],
        )  # fmt: skip
        lag = GaugeMetricFamily(
            "eventbus_group_lag", "Entries of the stream a handler's group has not read yet.",
            labels=["handler"],
        )  # fmt: skip
        consumers = GaugeMetricFamily(
            "eventbus_group_consumers", "Consumers (workers seen) of a handler's group.",
            labels=["handler"],
        )  # fmt: skip
        letters = GaugeMetricFamily(
            "eventbus_dead_letter_store_letters", "Dead letters in the broker's store."
        )
        up = GaugeMetricFamily("eventbus_broker_up", "Whether Redis answered this scrape.")
        try:
            groups = self.broker.groups()
            stored = len(self.broker.dead_letters)
        except Exception:  # BrokerError, RedisDeadLetterStoreError: the scrape goes on
            up.add_metric([], 0)
            yield up
            return
        for group in groups:
            pending.add_metric([group["handler"]], group["pending"])
            consumers.add_metric([group["handler"]], group["consumers"])
            if group["lag"] is not None:
                lag.add_metric([group["handler"]], group["lag"])
        letters.add_metric([], stored)
        up.add_metric([], 1)
        yield from (pending, lag, consumers, letters, up)

    def describe(self) -> c.Iterable[Metric]:
        return ()  # read at scrape time only: nothing to check at registration


class WorkerCollector(Collector):
    """What a worker counted: ``eventbus_worker_entries_total`` (entries acknowledged) and
    ``eventbus_reclaimed_entries_total`` (entries it took over from dead workers, by handler).
    """

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def collect(self) -> c.Iterator[Metric]:
        entries = CounterMetricFamily(
            "eventbus_worker_entries", "Stream entries this worker acknowledged."
        )
        entries.add_metric([], self.worker.handled)
        reclaimed = CounterMetricFamily(
            "eventbus_reclaimed_entries",
            "Entries this worker took over from workers that died (idle past claim_idle).",
            labels=["handler"],
        )
        for sub in self.worker.subscriptions:
            reclaimed.add_metric([sub.name], self.worker.reclaimed[sub.name])
        yield entries
        yield reclaimed

    def describe(self) -> c.Iterable[Metric]:
        return ()


def serve_metrics(
    bus: EventBus,
    worker: Worker | None = None,
    *,
    port: int,
    host: str = "127.0.0.1",
    registry: CollectorRegistry | None = None,
) -> tuple[t.Any, t.Any]:
    """Serve ``/metrics`` on ``host:port`` in a thread: the bus's, its broker's, its worker's.

    Installs a :class:`PrometheusMetrics` on ``bus``, and registers a
    :class:`BrokerCollector` (a broker bus) and a :class:`WorkerCollector`
    (when ``worker`` is given), all in ``registry`` (a new one by default).
    Returns ``prometheus_client``'s ``(server, thread)``: ``server.shutdown()``
    then ``server.server_close()`` stop it (port 0: a free port,
    ``server.server_address[1]``). ``python -m eventbus worker --metrics-port`` calls this.
    """
    from .redis import RedisBroker

    registry = registry if registry is not None else CollectorRegistry()
    PrometheusMetrics(registry).install(bus)
    if isinstance(bus.broker, RedisBroker):
        registry.register(BrokerCollector(bus.broker))
    if worker is not None:
        registry.register(WorkerCollector(worker))
    server, thread = prometheus_client.start_http_server(port, addr=host, registry=registry)
    return server, thread
