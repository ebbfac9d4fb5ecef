"""OpenTelemetry spans of a bus: ``pip install "eventbus[otel]"``.

:class:`Tracing` installed on a bus makes, following OpenTelemetry's
messaging semantic conventions, a ``send {event_type}`` span (kind
PRODUCER) for every event published and a ``process {event_type}`` span
(kind CONSUMER) for every attempt of a handler, current while the handler
runs, so the application's own spans nest under it. In one process a
cascade is one trace: an event published by a handler is sent in that
handler's process span, and its handlers' process spans are children of
its send span.

:class:`Metrics` gives the same counts, histogram and broker gauges as
:mod:`eventbus.prometheus` through OpenTelemetry's metrics API, under names
that OpenTelemetry's Prometheus exporter turns into the very same series
(``eventbus.published`` -> ``eventbus_published_total``).

Across processes, on a broker bus, the send span is made as the event's
stream entry is, and its context travels in the entry (W3C ``traceparent``
and ``baggage`` fields, by OpenTelemetry's configured propagator); a
worker's process span links to it, or is its child with ``parent=True``,
so that a cascade across services is one trace.
"""

from __future__ import annotations

import collections
import collections.abc as c
import functools
import sys
import threading
import time
import typing as t
import uuid
import weakref

try:
    from opentelemetry import context, metrics, propagate, trace
except ImportError as missing:  # pragma: no cover - the dev environment has it
    raise ImportError(
        "eventbus.otel needs the OpenTelemetry API: pip install 'eventbus[otel]'"
    ) from missing

from . import _metrics, signals
from ._version import __version__
from .inbox.protocol import AlreadyHandled
from .middleware import AsyncCallNext, CallNext, HandlerCall, Middleware

if t.TYPE_CHECKING:
    from .bus import EventBus
    from .events import Event
    from .handlers.subscription import Subscription
    from .redis import RedisBroker, Worker

__all__ = ["Metrics", "Tracing"]

#: How many published events' send spans are remembered for their handlers to follow.
REMEMBERED = 10_000

#: Seconds a broker's reading serves its gauges: one read of Redis per collection.
FRESH = 0.5


class Tracing(Middleware):
    """The spans of the buses it is installed on (``tracing.install(bus)``).

    ``tracer_provider``: OpenTelemetry's global one unless given.
    ``parent``: a worker's process span is the child of the producer's send
    span (one trace across processes) instead of linking to it (a trace per
    consumer, the messaging conventions' default). A bus it is not
    installed on pays nothing.
    """

    def __init__(
        self, tracer_provider: trace.TracerProvider | None = None, *, parent: bool = False
    ) -> None:
        self.parent = parent
        self.tracer = trace.get_tracer(
            "eventbus", __version__, tracer_provider=tracer_provider, schema_url=None
        )
        self._buses: weakref.WeakKeyDictionary[EventBus, t.Any] = weakref.WeakKeyDictionary()
        # event id -> the context of its send span and its ids' attributes, for its handlers'
        # process spans.
        self._sent: collections.OrderedDict[uuid.UUID, _Sent] = collections.OrderedDict()
        self._lock = threading.Lock()
        # subscription -> its system, its span names' prefix, its static attributes (a
        # Subscription cannot be weakly referenced: emptied past REMEMBERED, and at uninstall).
        self._static: dict[Subscription, tuple[bool, dict[str, t.Any]]] = {}

    # -- installing ----------------------------------------------------------------------

    def install(self, bus: EventBus) -> None:
        """Trace what ``bus`` publishes and handles from now on."""
        if bus in self._buses:
            raise ValueError(f"{self!r} is installed on {bus!r} already")
        broker = bus.broker
        if _on_redis(bus):  # sent as the entry is made, its context in it
            assert broker is not None
            hook = functools.partial(self._entry_fields, stream=broker.keys.stream)  # type: ignore[attr-defined]
            broker.add_entry_fields(hook)  # type: ignore[attr-defined]
            self._buses[bus] = (broker, hook)
        else:
            receiver = functools.partial(self._on_published, system="eventbus")
            signals.event_published.connect(receiver, sender=bus, weak=False)
            self._buses[bus] = (None, receiver)
        bus.add_middleware(self)

    def uninstall(self, bus: EventBus) -> None:
        """Stop tracing ``bus``."""
        installed = self._buses.pop(bus, None)
        if installed is None:
            raise ValueError(f"{self!r} is not installed on {bus!r}")
        broker, hook = installed
        if broker is not None:
            broker.remove_entry_fields(hook)
        else:
            signals.event_published.disconnect(hook)
        bus.remove_middleware(self)
        self._static.clear()

    # -- send spans ----------------------------------------------------------------------

    def _on_published(self, sender: object, /, *, event: Event, system: str, **_: object) -> None:
        self._send(event, system, event.event_type)

    def _entry_fields(self, event: Event, *, stream: str) -> dict[str, str]:
        """A broker's entry hook: the send span, and its context for the entry."""
        span = self._send(event, "redis", stream)
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        return carrier

    def _send(self, event: Event, system: str, destination: str) -> trace.Span:
        ids = _ids(event)
        attributes = {
            **_SEND[system],
            "messaging.destination.name": destination,
            **ids,
        }
        if system != "eventbus":  # on a broker the destination is the stream: say the type
            attributes["eventbus.event_type"] = event.event_type
        span = self.tracer.start_span(
            f"send {destination}", kind=trace.SpanKind.PRODUCER, attributes=attributes
        )
        span.end()  # the publish itself: the bus took the event
        if system == "eventbus":  # its handlers run here (on a broker, the entry says it)
            self._remember(event.event_id, (span.get_span_context(), ids))
        return span

    def _remember(self, event_id: uuid.UUID, sent: _Sent) -> None:
        with self._lock:
            remembered = self._sent
            remembered[event_id] = sent
            remembered.move_to_end(event_id)
            if len(remembered) > REMEMBERED:
                remembered.popitem(last=False)

    # -- process spans: the middleware ----------------------------------------------------

    def applies_to(self, subscription: Subscription, /) -> bool:
        return True

    def handle(self, call_next: CallNext, event: Event, call: HandlerCall, /) -> None:
        span = self._process_span(event, call)
        token = context.attach(trace.set_span_in_context(span))
        try:
            call_next(event, call)
        except Exception as error:
            _failed(span, error)
            raise
        finally:
            context.detach(token)
            span.end()

    async def handle_async(
        self, call_next: AsyncCallNext, event: Event, call: HandlerCall, /
    ) -> None:
        span = self._process_span(event, call)
        token = context.attach(trace.set_span_in_context(span))
        try:
            await call_next(event, call)
        except Exception as error:
            _failed(span, error)
            raise
        finally:
            context.detach(token)
            span.end()

    def _process_span(self, event: Event, call: HandlerCall) -> trace.Span:
        static = self._static.get(call.subscription)
        if static is None:
            static = self._static_attributes(call)
        on_redis, base = static
        name = "process " + event.event_type
        kind = trace.SpanKind.CONSUMER
        if not on_redis:  # in process: the child of the send span, if sent here
            sent = self._sent.get(event.event_id)
            ids = sent[1] if sent is not None else _ids(event)
            attributes = {**base, **ids, "eventbus.attempt": call.attempt}
            attributes["messaging.destination.name"] = event.event_type
            if sent is None:
                return self.tracer.start_span(name, kind=kind, attributes=attributes)
            parent = trace.set_span_in_context(trace.NonRecordingSpan(sent[0]))
            return self.tracer.start_span(name, context=parent, kind=kind, attributes=attributes)
        # On a broker bus (base has the stream as destination): the producer's context is in
        # the entry, whoever sent it (this process too); none outside a worker (a redrive).
        attributes = {**base, **_ids(event), "eventbus.attempt": call.attempt}
        attributes["eventbus.event_type"] = event.event_type
        fields = _entry_fields(call.bus)
        remote = trace.get_current_span(propagate.extract(fields)).get_span_context()
        if not (fields and remote.is_valid):
            return self.tracer.start_span(name, kind=kind, attributes=attributes)
        if self.parent:
            parent = trace.set_span_in_context(trace.NonRecordingSpan(remote))
            return self.tracer.start_span(name, context=parent, kind=kind, attributes=attributes)
        return self.tracer.start_span(
            name, kind=kind, attributes=attributes, links=[trace.Link(remote)]
        )

    def _static_attributes(self, call: HandlerCall) -> tuple[bool, dict[str, t.Any]]:
        """What a subscription's process spans share, worked out on its first attempt."""
        system = _system(call.bus)
        base = {**_PROCESS[system], "messaging.consumer.group.name": call.subscription.name}
        if system != "eventbus":
            base["messaging.destination.name"] = _stream(call.bus)
        static = (system != "eventbus", base)
        if len(self._static) >= REMEMBERED:
            self._static.clear()
        self._static[call.subscription] = static
        return static

    def __repr__(self) -> str:
        return f"<Tracing on {len(self._buses)} bus(es)>"


def _on_redis(bus: EventBus) -> bool:
    """Whether ``bus`` is on a RedisBroker (never importing redis for a bus that is not)."""
    module = sys.modules.get("eventbus.redis")
    return module is not None and isinstance(bus.broker, module.RedisBroker)


def _entry_fields(bus: EventBus) -> dict[str, str]:
    if not _on_redis(bus):
        return {}
    from .redis import entry_fields

    return entry_fields()


def _system(bus: EventBus) -> str:
    return "redis" if _on_redis(bus) else "eventbus"


def _stream(bus: EventBus) -> str:
    keys = getattr(bus.broker, "keys", None)
    return str(keys.stream) if keys is not None else ""


#: The attributes every send span of a system has, and every process span: [operation][system].
_SEND, _PROCESS = (
    {
        system: {
            "messaging.system": system,
            "messaging.operation.type": operation,
            "messaging.operation.name": operation,
        }
        for system in ("eventbus", "redis")
    }
    for operation in ("send", "process")
)

#: A sent event's send span context and its ids' attributes.
_Sent: t.TypeAlias = "tuple[trace.SpanContext, dict[str, str]]"


def _ids(event: Event) -> dict[str, str]:
    """The event's ids as attributes (worked out once per event published here)."""
    event_id = str(event.event_id)
    correlation = event.correlation_id
    return {
        "messaging.message.id": event_id,
        "messaging.message.conversation_id": str(correlation) if correlation else event_id,
    }


def _failed(span: trace.Span, error: Exception) -> None:
    if isinstance(error, AlreadyHandled):  # a duplicate skipped: an outcome, not an error
        span.set_attribute("eventbus.skipped", True)
        return
    span.record_exception(error)
    span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(error).__name__}: {error}"))


class Metrics(_metrics.Counts):
    """The metrics of the buses it is installed on, through OpenTelemetry's metrics API.

    ``meter_provider``: OpenTelemetry's global one unless given. The same
    counts as :class:`eventbus.prometheus.PrometheusMetrics`, kept by the
    object and reported at each collection (observable counters), and each
    attempt's duration recorded in a histogram (seconds, the same buckets
    advised). The attributes are the Prometheus labels (``event_type``,
    ``handler``, ``outcome``, ``namespace``), so a dashboard of the
    Prometheus series reads what OpenTelemetry's Prometheus exporter makes
    of these. :meth:`watch_broker` and :meth:`watch_worker` add a broker's
    gauges and a worker's counts; :meth:`close` stops reporting them.
    """

    def __init__(self, meter_provider: metrics.MeterProvider | None = None) -> None:
        super().__init__()
        provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
        # The global provider under one key, whether it is set yet or still the API's proxy.
        key = _GLOBAL if meter_provider is None else meter_provider
        with _PROVIDERS_LOCK:
            if (
                key in _PROVIDERS
                or provider in _PROVIDERS  # the global one, given by name before
                or (_GLOBAL in _PROVIDERS and provider is metrics.get_meter_provider())
            ):
                raise ValueError(
                    f"{provider!r} has an eventbus Metrics already: its instruments have fixed "
                    "names, so a second one's counts would be lost. Install that one on every "
                    "bus (their series add up)"
                )
            _PROVIDERS[key] = True
            _PROVIDERS[provider] = True
        self.meter = metrics.get_meter("eventbus", __version__, meter_provider=provider)
        meter = self.meter
        for name, unit, description, read in (
            ("published", "{event}", "Events published.", self._published_now),
            ("handled", "{run}", "Handler runs ended, by outcome.", self._handled_now),
            ("failed_attempts", "{attempt}", "Handler attempts that raised.", self._failed_now),
            ("retries", "{attempt}", "Failed attempts another follows.", self._retries_now),
            ("dead_letters", "{letter}", "Dead letters made.", self._letters_now),
        ):
            meter.create_observable_counter(
                f"eventbus.{name}", callbacks=[read], unit=unit, description=description
            )
        self._duration = meter.create_histogram(
            "eventbus.handler.duration",
            unit="s",
            description="How long each handler attempt took, by outcome (success or failure).",
            explicit_bucket_boundaries_advisory=_metrics.BUCKETS,
        )
        #: (event type, handler, outcome) -> its attributes, made once.
        self._attributes: dict[tuple[str, str, bool], dict[str, str]] = {}
        self._brokers: dict[int, tuple[_metrics.BrokerReader, list[t.Any]]] = {}
        self._workers: list[Worker] = []
        self._watching = threading.Lock()
        self._gauges_made = False
        self._worker_counters_made = False

    # -- durations: recorded as they are timed ------------------------------------------

    def _timed(self, event_type: str, handler: str, ok: bool, seconds: float) -> None:
        key = (event_type, handler, ok)
        attributes = self._attributes.get(key)
        if attributes is None:
            attributes = self._attributes[key] = {
                "event_type": event_type,
                "handler": handler,
                "outcome": "success" if ok else "failure",
            }
        self._duration.record(seconds, attributes)

    # -- counts: observed at each collection ----------------------------------------------

    def _published_now(self, options: metrics.CallbackOptions) -> c.Iterable[metrics.Observation]:
        return [
            metrics.Observation(count, {"event_type": event_type})
            for event_type, count in self.snapshot().published.items()
        ]

    def _handled_now(self, options: metrics.CallbackOptions) -> c.Iterable[metrics.Observation]:
        return [
            metrics.Observation(count, {"event_type": k[0], "handler": k[1], "outcome": k[2]})
            for k, count in self.snapshot().handled.items()
        ]

    def _failed_now(self, options: metrics.CallbackOptions) -> c.Iterable[metrics.Observation]:
        return _by_handler(self.snapshot().failed_attempts)

    def _retries_now(self, options: metrics.CallbackOptions) -> c.Iterable[metrics.Observation]:
        return _by_handler(self.snapshot().retries)

    def _letters_now(self, options: metrics.CallbackOptions) -> c.Iterable[metrics.Observation]:
        return _by_handler(self.snapshot().dead_letters)

    # -- a broker's gauges and a worker's counts ------------------------------------------

    def watch_broker(self, broker: RedisBroker, *, timeout: float = 1.0) -> None:
        """Report ``broker``'s gauges, read from Redis at each collection (clients of its own).

        ``eventbus.group.pending``, ``eventbus.group.lag``,
        ``eventbus.group.consumers`` (attributes ``namespace``, ``handler``),
        ``eventbus.dead_letter_store.letters`` and ``eventbus.broker.up``
        (``namespace``): what :class:`eventbus.prometheus.BrokerCollector`
        exports, read once per collection with the same timeouts.
        """
        with self._watching:
            if id(broker) in self._brokers:
                raise ValueError(f"{self!r} watches {broker!r} already")
            self._brokers[id(broker)] = (_metrics.BrokerReader(broker, timeout=timeout), [])
            if not self._gauges_made:
                self._gauges_made = True
                for name, description in (
                    ("group.pending", "Entries read by a handler's group, not acknowledged."),
                    ("group.lag", "Entries of the stream a handler's group has not read yet."),
                    ("group.consumers", "Consumers Redis keeps for a handler's group."),
                    ("dead_letter_store.letters", "Dead letters in the broker's store."),
                    ("broker.up", "Whether Redis answered this collection."),
                ):
                    self.meter.create_observable_gauge(
                        f"eventbus.{name}",
                        callbacks=[functools.partial(self._gauge, name)],
                        description=description,
                    )

    def watch_worker(self, worker: Worker) -> None:
        """Report ``worker``'s counts (``eventbus.worker.entries``, ``.reclaimed_entries``)."""
        with self._watching:
            if worker in self._workers:
                raise ValueError(f"{self!r} watches {worker!r} already")
            self._workers.append(worker)
            if not self._worker_counters_made:
                self._worker_counters_made = True
                self.meter.create_observable_counter(
                    "eventbus.worker.entries",
                    callbacks=[self._worker_entries],
                    unit="{entry}",
                    description="Stream entries the worker acknowledged, per group.",
                )
                self.meter.create_observable_counter(
                    "eventbus.reclaimed_entries",
                    callbacks=[self._reclaimed],
                    unit="{entry}",
                    description="Entries the worker took over from workers that died.",
                )

    def close(self) -> None:
        """Stop reporting the brokers' gauges and the workers' counts; close the clients."""
        with self._watching:
            brokers, self._brokers, self._workers = self._brokers, {}, []
        for reader, _ in brokers.values():
            reader.close()

    def _gauge(
        self, name: str, options: metrics.CallbackOptions
    ) -> c.Iterable[metrics.Observation]:
        with self._watching:
            watched = list(self._brokers.values())
        found = []
        for reader, cached in watched:
            if not cached or time.monotonic() - cached[0] > FRESH:  # once for the five gauges
                reading = reader.read()
                cached[:] = [time.monotonic(), reading]  # stamped once read: a slow read counts

            reading = cached[1]
            namespace = reader.broker.namespace
            if name == "broker.up":
                up = int(reading is not None)
                found.append(metrics.Observation(up, {"namespace": namespace}))
            elif reading is not None and name == "dead_letter_store.letters":
                found.append(metrics.Observation(reading.letters, {"namespace": namespace}))
            elif reading is not None:
                field = name.removeprefix("group.")
                found += [
                    metrics.Observation(
                        group[field], {"namespace": namespace, "handler": group["handler"]}
                    )
                    for group in reading.groups
                    if group[field] is not None
                ]
        return found

    def _worker_entries(self, options: metrics.CallbackOptions) -> c.Iterable[metrics.Observation]:
        workers = list(self._workers)
        if not workers:  # none watched (closed): no point, rather than a reset to 0
            return []
        return [metrics.Observation(sum(worker.handled for worker in workers))]

    def _reclaimed(self, options: metrics.CallbackOptions) -> c.Iterable[metrics.Observation]:
        totals: collections.Counter[str] = collections.Counter()
        for worker in self._workers:
            for sub in worker.subscriptions:
                totals[sub.name] += worker.reclaimed[sub.name]
        return [metrics.Observation(n, {"handler": name}) for name, n in totals.items()]


class _Global:
    """The key of OpenTelemetry's global meter provider in _PROVIDERS."""


_GLOBAL = _Global()

#: The meter providers that have a Metrics, each one at most (weakly: a provider may go).
_PROVIDERS: weakref.WeakKeyDictionary[t.Any, bool] = weakref.WeakKeyDictionary()
_PROVIDERS_LOCK = threading.Lock()


def _by_handler(counts: dict[tuple[str, str], int]) -> list[metrics.Observation]:
    return [
        metrics.Observation(count, {"event_type": event_type, "handler": handler})
        for (event_type, handler), count in counts.items()
    ]
