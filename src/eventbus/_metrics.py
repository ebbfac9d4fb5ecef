"""What the metrics of a bus count, once for both exporters (Prometheus, OpenTelemetry).

:class:`Counts` installed on a bus keeps, in plain dictionaries behind one
lock, the events published, the handler runs ended (by outcome), the failed
attempts, the retries, the dead letters and each attempt's duration (a
histogram of fixed buckets): the counts from the bus's signals (sent outside
every middleware, and on a worker once the entry is acknowledged), the
durations from a middleware. An exporter reads a :meth:`Counts.snapshot`
when it is scraped or collected, so the hot path never touches an exporter's
own machinery. :class:`BrokerReader` reads a broker's gauges from Redis.
"""

from __future__ import annotations

import bisect
import collections.abc as c
import dataclasses
import functools
import threading
import time
import typing as t
import weakref

from blinker import NamedSignal

from . import signals
from .dead_letters.letter import RELAY
from .inbox.protocol import AlreadyHandled
from .middleware import AsyncCallNext, CallNext, HandlerCall, Middleware

if t.TYPE_CHECKING:
    from .bus import EventBus
    from .dead_letters import DeadLetter
    from .events import Event
    from .handlers.subscription import Subscription
    from .redis import RedisBroker

__all__ = ["BUCKETS", "BrokerReader", "Counts", "Histogram", "Snapshot"]

_clock = time.perf_counter

#: Handler attempts' durations, upper bounds in seconds: 0.5 ms to 30 s (and +Inf).
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

HandlerKey: t.TypeAlias = tuple[str, str]  # (event type, handler)
OutcomeKey: t.TypeAlias = tuple[str, str, str]  # (event type, handler, outcome)


@dataclasses.dataclass(slots=True)
class Histogram:
    """Attempts per bucket (``BUCKETS``, then +Inf; not cumulative), their sum and count."""

    buckets: list[int] = dataclasses.field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    sum: float = 0.0
    count: int = 0

    def cumulative(self) -> list[int]:
        """Attempts at or under each bound, +Inf last (Prometheus's ``le`` buckets)."""
        total, found = 0, []
        for count in self.buckets:
            total += count
            found.append(total)
        return found


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """The counts at one moment, copied: what an exporter reads."""

    published: dict[str, int]
    handled: dict[OutcomeKey, int]  # outcome: success or dead_letter
    failed_attempts: dict[HandlerKey, int]
    retries: dict[HandlerKey, int]
    dead_letters: dict[HandlerKey, int]
    durations: dict[OutcomeKey, Histogram]  # outcome: success or failure


def label(event: Event) -> str:
    """The ``event_type`` label: an unreadable entry's claimed type is data, so not that."""
    from .dead_letters import UndefinedEvent

    return event.event_type if not isinstance(event, UndefinedEvent) else UndefinedEvent.event_type


class Counts(Middleware):
    """The counts of the buses it is installed on (their numbers add up).

    ``install(bus)`` connects receivers of the bus's own (blinker's
    ``disconnect(receiver, sender=bus)`` would leave one in the signal) and
    adds the middleware; ``uninstall(bus)`` takes both away. A bus it is not
    installed on pays nothing.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._published: dict[str, int] = {}
        self._handled: dict[OutcomeKey, int] = {}
        self._failed: dict[HandlerKey, int] = {}
        self._retries: dict[HandlerKey, int] = {}
        self._letters: dict[HandlerKey, int] = {}
        self._durations: dict[OutcomeKey, Histogram] = {}
        self._buses: weakref.WeakKeyDictionary[
            EventBus, list[tuple[NamedSignal, c.Callable[..., None]]]
        ] = weakref.WeakKeyDictionary()

    # -- installing ----------------------------------------------------------------------

    def install(self, bus: EventBus) -> None:
        """Count what ``bus`` does from now on, and time its handlers' attempts."""
        if bus in self._buses:
            raise ValueError(f"{self!r} is installed on {bus!r} already")
        receivers: list[tuple[NamedSignal, c.Callable[..., None]]] = [
            (signals.event_published, functools.partial(self._on_published)),
            (signals.handler_succeeded, functools.partial(self._on_succeeded)),
            (signals.handler_failed, functools.partial(self._on_failed)),
            (signals.handler_retrying, functools.partial(self._on_retrying)),
            (signals.event_dead_lettered, functools.partial(self._on_dead_lettered)),
        ]
        for signal, receiver in receivers:
            signal.connect(receiver, sender=bus, weak=False)
        self._buses[bus] = receivers
        bus.add_middleware(self)

    def uninstall(self, bus: EventBus) -> None:
        """Stop counting what ``bus`` does (what was counted so far stays)."""
        receivers = self._buses.pop(bus, None)
        if receivers is None:
            raise ValueError(f"{self!r} is not installed on {bus!r}")
        for signal, receiver in receivers:
            signal.disconnect(receiver)  # this bus's own: the other buses' go on
        bus.remove_middleware(self)

    def snapshot(self) -> Snapshot:
        """A copy of the counts so far."""
        with self._lock:
            return Snapshot(
                dict(self._published),
                dict(self._handled),
                dict(self._failed),
                dict(self._retries),
                dict(self._letters),
                {
                    key: Histogram(list(h.buckets), h.sum, h.count)
                    for key, h in self._durations.items()
                },
            )

    # -- the middleware: each attempt's duration -------------------------------------------

    def applies_to(self, subscription: Subscription, /) -> bool:
        return True

    def handle(self, call_next: CallNext, event: Event, call: HandlerCall, /) -> None:
        started = _clock()
        try:
            call_next(event, call)
        except Exception as error:
            if not isinstance(error, AlreadyHandled):  # a duplicate skipped: not timed
                self._timed(event.event_type, call.subscription.name, False, _clock() - started)
            raise
        self._timed(event.event_type, call.subscription.name, True, _clock() - started)

    async def handle_async(
        self, call_next: AsyncCallNext, event: Event, call: HandlerCall, /
    ) -> None:
        started = _clock()
        try:
            await call_next(event, call)
        except Exception as error:
            if not isinstance(error, AlreadyHandled):
                self._timed(event.event_type, call.subscription.name, False, _clock() - started)
            raise
        self._timed(event.event_type, call.subscription.name, True, _clock() - started)

    def _timed(self, event_type: str, handler: str, ok: bool, seconds: float) -> None:
        key = (event_type, handler, "success" if ok else "failure")
        bucket = bisect.bisect_left(BUCKETS, seconds)
        with self._lock:
            histogram = self._durations.get(key)
            if histogram is None:  # both outcomes at once: a first failure is an increase
                for outcome in ("success", "failure"):
                    self._durations[(event_type, handler, outcome)] = Histogram()
                histogram = self._durations[key]
            histogram.buckets[bucket] += 1
            histogram.sum += seconds
            histogram.count += 1

    # -- the signals: counts ---------------------------------------------------------------

    def _on_published(self, sender: object, /, *, event: Event, **_: object) -> None:
        event_type = event.event_type
        with self._lock:
            self._published[event_type] = self._published.get(event_type, 0) + 1

    def _on_succeeded(self, sender: object, /, *, event: Event, handler: str, **_: object) -> None:
        key = (event.event_type, handler, "success")
        with self._lock:
            self._handled[key] = self._handled.get(key, 0) + 1

    def _on_failed(self, sender: object, /, *, event: Event, handler: str, **_: object) -> None:
        key = (label(event), handler)
        with self._lock:
            self._failed[key] = self._failed.get(key, 0) + 1

    def _on_retrying(self, sender: object, /, *, event: Event, handler: str, **_: object) -> None:
        key = (label(event), handler)
        with self._lock:
            self._retries[key] = self._retries.get(key, 0) + 1

    def _on_dead_lettered(self, sender: object, /, *, dead_letter: DeadLetter, **_: object) -> None:
        key = (label(dead_letter.event), dead_letter.handler)
        with self._lock:
            self._letters[key] = self._letters.get(key, 0) + 1
            if not dead_letter.unhandled and dead_letter.handler != RELAY:  # a handler's run
                run = (*key, "dead_letter")
                self._handled[run] = self._handled.get(run, 0) + 1

    def __repr__(self) -> str:
        return f"<{type(self).__name__} on {len(self._buses)} bus(es)>"


@dataclasses.dataclass(frozen=True, slots=True)
class BrokerReading:
    """A broker's gauges, read from Redis at one moment."""

    groups: list[dict[str, t.Any]]  # eventbus.redis.groups(): handler, pending, lag, consumers
    letters: int


class BrokerReader:
    """Reads a broker's groups and dead letters through clients of its own.

    Each command gives up after about three times ``timeout`` seconds, so a
    Redis that hangs reads as down (``None``) within an exporter's scrape
    timeout instead of failing the scrape.
    """

    def __init__(self, broker: RedisBroker, *, timeout: float = 1.0) -> None:
        from .redis import RedisDeadLetterStore
        from .redis._client import connect

        self.broker = broker
        self._client = connect(broker.url, timeout)
        self._letters = RedisDeadLetterStore(
            broker.url, namespace=broker.namespace, timeout=timeout
        )

    def read(self) -> BrokerReading | None:
        """The gauges now, or None when Redis did not answer."""
        from .redis._worker import groups

        try:
            return BrokerReading(groups(self.broker, self._client), len(self._letters))
        except Exception:  # BrokerError, RedisDeadLetterStoreError: reported as down
            return None

    def close(self) -> None:
        """Close its clients."""
        self._client.close()
        self._letters.close()
