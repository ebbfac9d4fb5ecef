"""OpenTelemetry spans of a bus: ``pip install "eventbus[otel]"``.

:class:`Tracing` installed on a bus makes, following OpenTelemetry's
messaging semantic conventions, a ``send {event_type}`` span (kind
PRODUCER) for every event published and a ``process {event_type}`` span
(kind CONSUMER) for every attempt of a handler, current while the handler
runs, so the application's own spans nest under it. In one process a
cascade is one trace: an event published by a handler is sent in that
handler's process span, and its handlers' process spans are children of
its send span. Spans only: metrics are :mod:`eventbus.prometheus`'s.

Across processes, on a broker bus, the send span is made as the event's
stream entry is, and its context travels in the entry (W3C ``traceparent``
and ``baggage`` fields, by OpenTelemetry's configured propagator); a
worker's process span links to it, or is its child with ``parent=True``,
so that a cascade across services is one trace.
"""

from __future__ import annotations

import collections
import functools
import sys
import threading
import typing as t
import uuid
import weakref

try:
    from opentelemetry import propagate, trace
except ImportError as missing:  # pragma: no cover - the dev environment has it
    raise ImportError(
        "eventbus.otel needs the OpenTelemetry API: pip install 'eventbus[otel]'"
    ) from missing

from . import signals
from ._version import __version__
from .inbox.protocol import AlreadyHandled
from .middleware import AsyncCallNext, CallNext, HandlerCall, Middleware

if t.TYPE_CHECKING:
    from .bus import EventBus
    from .events import Event
    from .handlers.subscription import Subscription

__all__ = ["Tracing"]

#: How many published events' send spans are remembered for their handlers to follow.
REMEMBERED = 10_000


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
        # event id -> the context of its send span, for its handlers' process spans.
        self._sent: collections.OrderedDict[uuid.UUID, trace.SpanContext] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()

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
        attributes = _attributes(event, system, "send")
        attributes["messaging.destination.name"] = destination
        span = self.tracer.start_span(
            f"send {destination}", kind=trace.SpanKind.PRODUCER, attributes=attributes
        )
        span.end()  # the publish itself: the bus took the event
        self._remember(event.event_id, span.get_span_context())
        return span

    def _remember(self, event_id: uuid.UUID, context: trace.SpanContext) -> None:
        with self._lock:
            sent = self._sent
            sent[event_id] = context
            sent.move_to_end(event_id)
            if len(sent) > REMEMBERED:
                sent.popitem(last=False)

    # -- process spans: the middleware ----------------------------------------------------

    def applies_to(self, subscription: Subscription, /) -> bool:
        return True

    def handle(self, call_next: CallNext, event: Event, call: HandlerCall, /) -> None:
        span = self._process_span(event, call)
        with trace.use_span(
            span, end_on_exit=True, record_exception=False, set_status_on_exception=False
        ):
            try:
                call_next(event, call)
            except Exception as error:
                _failed(span, error)
                raise

    async def handle_async(
        self, call_next: AsyncCallNext, event: Event, call: HandlerCall, /
    ) -> None:
        span = self._process_span(event, call)
        with trace.use_span(
            span, end_on_exit=True, record_exception=False, set_status_on_exception=False
        ):
            try:
                await call_next(event, call)
            except Exception as error:
                _failed(span, error)
                raise

    def _process_span(self, event: Event, call: HandlerCall) -> trace.Span:
        attributes = _attributes(event, _system(call.bus), "process")
        attributes["messaging.consumer.group.name"] = call.subscription.name
        attributes["eventbus.attempt"] = call.attempt
        name = f"process {event.event_type}"
        sent = self._sent.get(event.event_id)
        if sent is not None:  # sent in this process: the cascade goes on in one trace
            parent = trace.set_span_in_context(trace.NonRecordingSpan(sent))
            return self.tracer.start_span(
                name, context=parent, kind=trace.SpanKind.CONSUMER, attributes=attributes
            )
        fields = _entry_fields(call.bus)  # on a worker: the producer's context, in the entry
        remote = trace.get_current_span(propagate.extract(fields)).get_span_context()
        if fields and remote.is_valid:
            attributes["messaging.destination.name"] = _stream(call.bus)
            if self.parent:
                parent = trace.set_span_in_context(trace.NonRecordingSpan(remote))
                return self.tracer.start_span(
                    name, context=parent, kind=trace.SpanKind.CONSUMER, attributes=attributes
                )
            return self.tracer.start_span(
                name,
                kind=trace.SpanKind.CONSUMER,
                attributes=attributes,
                links=[trace.Link(remote)],
            )
        return self.tracer.start_span(name, kind=trace.SpanKind.CONSUMER, attributes=attributes)

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


def _attributes(event: Event, system: str, operation: str) -> dict[str, t.Any]:
    return {
        "messaging.system": system,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
        "messaging.destination.name": event.event_type,
        "eventbus.event_type": event.event_type,
        "messaging.message.id": str(event.event_id),
        "messaging.message.conversation_id": str(event.correlation_id or event.event_id),
    }


def _failed(span: trace.Span, error: Exception) -> None:
    if isinstance(error, AlreadyHandled):  # a duplicate skipped: an outcome, not an error
        span.set_attribute("eventbus.skipped", True)
        return
    span.record_exception(error)
    span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(error).__name__}: {error}"))
