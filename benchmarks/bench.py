"""Benchmarks: eventbus against its peers and the direct-call floor, in one process.

Run with ``make bench``, or ``python benchmarks/bench.py --quick`` for a
rougher look at the ratios in under a minute. Every repetition measures
every contender of every case, interleaved, so that a machine that slows
down mid-run slows everyone alike; the table reports the median of the
repetitions, their spread, and the ratio of eventbus to each contender.
Absolute times on shared machines drift; the ratios are the figures to read.

Every contender proves it did its work: its handlers count what they ran,
and after each measurement the harness checks that the counts advanced by
exactly what the iterations call for (n events x handlers, one dead letter
per failing publish, ...). A contender that did less, or more, stops the run
with :class:`BenchmarkError` instead of printing a ratio. So does a signal
receiver left connected after a case, since it would slow every case after it.

``--write PATH`` also renders the results into the performance page from
``benchmarks/performance.md.in`` (``make bench`` writes docs/performance.md).
"""

from __future__ import annotations

import argparse
import asyncio
import collections.abc as c
import contextlib
import dataclasses
import datetime
import gc
import importlib.metadata
import logging
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import typing as t
import uuid

from pydantic import BaseModel, Field

if __package__ in (None, ""):  # run as a script: the Redis benchmarks are a module beside it
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import redis_bench
from eventbus import Event, EventBus, InMemoryDeadLetterStore, RetryPolicy, Trace, signals


@dataclasses.dataclass(frozen=True)
class Settings:
    target_seconds: float  # one measurement runs about this long
    import_rounds: int  # fresh-process imports of each module per repetition
    memory_events: int


FULL = Settings(target_seconds=0.05, import_rounds=6, memory_events=1_000_000)
QUICK = Settings(target_seconds=0.04, import_rounds=4, memory_events=200_000)


class BenchmarkError(RuntimeError):
    """A contender did not do the work it is timed for, or a case left state behind."""


class Ping(Event):
    event_type = "bench.ping"

    n: int = 0


class Pong(Event):
    event_type = "bench.pong"

    n: int = 0


class ItemAdded(Event):
    event_type = "bench.item_added"

    cart_id: str
    sku: str
    quantity: int


class PlainItem(BaseModel):
    """ItemAdded's own three fields on a plain pydantic model: no metadata, default config."""

    cart_id: str
    sku: str
    quantity: int


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class PlainItemWithMetadata(BaseModel):
    """The same fields as ItemAdded, metadata included, on a plain pydantic model."""

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    occurred_at: datetime.datetime = Field(default_factory=_now)
    correlation_id: uuid.UUID | None = None
    causation_id: uuid.UUID | None = None
    cart_id: str
    sku: str
    quantity: int


# -- contenders ---------------------------------------------------------------------------

#: Runs ``n`` iterations. Returns None to be timed by the harness, or its own figure in
#: nanoseconds per iteration when only part of what it does is the thing measured (an
#: event loop's start and stop, a child process's start).
Runner = c.Callable[[int], float | None]


class Tally:
    """A counter that handlers and receivers bump, so that a run can prove what it did."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


@dataclasses.dataclass(frozen=True)
class Check:
    """Over one measurement of n iterations, ``read()`` advances by n x ``per_iteration``.

    Exactly, unless ``at_least``.
    """

    what: str
    read: c.Callable[[], int]
    per_iteration: int
    at_least: bool = False


def counts(what: str, tally: Tally, per_iteration: int = 1) -> Check:
    return Check(what, lambda: tally.value, per_iteration)


@dataclasses.dataclass
class Contender:
    run: Runner
    checks: list[Check]
    #: Entered around each measurement, untimed: connects and disconnects receivers, etc.
    around: c.Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext
    iterations: int | None = None  # a fixed number per measurement instead of calibrating
    max_iterations: int | None = None

    def __post_init__(self) -> None:
        if not self.checks:
            raise ValueError("every contender must check that it did its work")


@dataclasses.dataclass
class Case:
    name: str
    contenders: dict[str, Contender]  # "eventbus" first; the others are what it is compared with
    rounds: int = 1  # measurements of each contender per repetition, interleaved


def _sync_handlers(count: int, tally: Tally) -> list[c.Callable[[t.Any], None]]:
    def make() -> c.Callable[[t.Any], None]:
        def handler(event: t.Any) -> None:
            tally.value += 1

        return handler

    return [make() for _ in range(count)]


def _async_handlers(count: int, tally: Tally) -> list[c.Callable[[t.Any], c.Awaitable[None]]]:
    def make(n: int) -> c.Callable[[t.Any], c.Awaitable[None]]:
        async def handler(event: t.Any) -> None:
            tally.value += 1

        # distinct names: bubus warns about handlers that share one
        handler.__name__ = handler.__qualname__ = f"handler_{n}"
        return handler

    return [make(n) for n in range(count)]


def _publisher(bus: EventBus, event: Event) -> Runner:
    def eventbus(n: int) -> None:
        publish = bus.publish
        for _ in range(n):
            publish(event)

    return eventbus


def _one_handler_bus() -> tuple[EventBus, Tally]:
    tally = Tally()
    bus = EventBus()
    bus.subscribe(Ping)(_sync_handlers(1, tally)[0])
    return bus, tally


def _plural(count: int) -> str:
    return f"{count} handler{'s' * (count > 1)}"


def sync_publish(count: int) -> Case:
    import blinker
    import pyee

    event = Ping()
    contenders: dict[str, Contender] = {}

    tally = Tally()
    bus = EventBus()
    for number, handler in enumerate(_sync_handlers(count, tally)):
        bus.subscribe(Ping, name=f"handler {number}")(handler)  # closures of one factory
    contenders["eventbus"] = Contender(
        _publisher(bus, event), [counts("handler runs", tally, count)]
    )

    floor_tally = Tally()
    handlers = _sync_handlers(count, floor_tally)

    def floor(n: int) -> None:
        for _ in range(n):
            for handler in handlers:
                handler(event)

    contenders["direct call"] = Contender(floor, [counts("handler runs", floor_tally, count)])

    pyee_tally = Tally()
    emitter = pyee.EventEmitter()
    for handler in _sync_handlers(count, pyee_tally):
        emitter.on("ping", handler)

    def pyee_emit(n: int) -> None:
        emit = emitter.emit
        for _ in range(n):
            emit("ping", event)

    contenders["pyee"] = Contender(pyee_emit, [counts("handler runs", pyee_tally, count)])

    blinker_tally = Tally()
    signal = blinker.Signal()
    for handler in _sync_handlers(count, blinker_tally):
        signal.connect(handler, weak=False)

    def blinker_send(n: int) -> None:
        send = signal.send
        for _ in range(n):
            send(event)

    contenders["blinker"] = Contender(blinker_send, [counts("receiver runs", blinker_tally, count)])
    return Case(f"sync publish, {_plural(count)}", contenders)


def _connected(what: str) -> None:
    if not any(getattr(signals, name).receivers for name in signals.__all__):
        raise BenchmarkError(f"{what} is not connected to any signal")


def _no_receiver() -> Contender:
    bus, tally = _one_handler_bus()
    return Contender(_publisher(bus, Ping()), [counts("handler runs", tally)])


def hook_for_another_bus() -> Case:
    """A receiver connected for another bus must not slow this bus down."""
    bus, tally = _one_handler_bus()
    other = EventBus()
    calls = Tally()

    def receiver(sender: object, **kwargs: object) -> None:
        calls.value += 1

    @contextlib.contextmanager
    def connected() -> c.Iterator[None]:
        signals.handler_succeeded.connect(receiver, sender=other, weak=False)
        try:
            _connected("the other bus's receiver")
            yield
        finally:
            signals.handler_succeeded.disconnect(receiver)

    ours = Contender(
        _publisher(bus, Ping()),
        [counts("handler runs", tally), counts("calls of the other bus's receiver", calls, 0)],
        around=connected,
    )
    return Case(
        "sync publish, 1 handler, a handler_succeeded receiver for another bus",
        {"eventbus": ours, "eventbus, no receiver": _no_receiver()},
    )


def after_a_trace() -> Case:
    """A closed trace must leave the bus as fast as one that was never traced."""
    bus, tally = _one_handler_bus()

    @contextlib.contextmanager
    def traced_before() -> c.Iterator[None]:
        with Trace(bus):
            _connected("the trace")
        yield

    ours = Contender(_publisher(bus, Ping()), [counts("handler runs", tally)], around=traced_before)
    return Case(
        "sync publish, 1 handler, after a Trace was opened and closed",
        {"eventbus": ours, "eventbus, no receiver": _no_receiver()},
    )


def hook_for_this_bus() -> Case:
    bus, tally = _one_handler_bus()
    calls = Tally()

    def receiver(sender: object, **kwargs: object) -> None:
        calls.value += 1

    @contextlib.contextmanager
    def connected() -> c.Iterator[None]:
        signals.handler_succeeded.connect(receiver, sender=bus, weak=False)
        try:
            yield
        finally:
            signals.handler_succeeded.disconnect(receiver)

    ours = Contender(
        _publisher(bus, Ping()),
        [counts("handler runs", tally), counts("receiver calls", calls)],
        around=connected,
    )
    return Case(
        "sync publish, 1 handler, a handler_succeeded receiver for this bus",
        {"eventbus": ours, "eventbus, no receiver": _no_receiver()},
    )


def prometheus_metrics(*, on_this_bus: bool) -> Case:
    """PrometheusMetrics installed: its cost on this bus, and none on another bus."""
    from prometheus_client import CollectorRegistry

    from eventbus.prometheus import PrometheusMetrics

    bus, tally = _one_handler_bus()
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    target = bus if on_this_bus else EventBus()

    def handled() -> int:
        found = registry.get_sample_value(
            "eventbus_handled_total",
            {"event_type": Ping.event_type, "handler": bus.subscriptions[0].name,
             "outcome": "success"},
        )  # fmt: skip
        return int(found or 0)

    @contextlib.contextmanager
    def installed() -> c.Iterator[None]:
        metrics.install(target)
        try:
            yield
        finally:
            metrics.uninstall(target)

    ours = Contender(
        _publisher(bus, Ping()),
        [counts("handler runs", tally), Check("runs counted", handled, int(on_this_bus))],
        around=installed,
    )
    where = "this bus" if on_this_bus else "another bus"
    return Case(
        f"sync publish, 1 handler, PrometheusMetrics installed on {where}",
        {"eventbus": ours, "eventbus, no metrics": _no_receiver()},
    )


def opentelemetry(*, on_this_bus: bool, metrics: bool) -> Case:
    """Tracing (and Metrics) with the OpenTelemetry SDK and a no-op exporter."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    from eventbus.otel import Metrics, Tracing

    exported = Tally()

    class NoOp(SpanExporter):
        """Exports nothing; counts the spans, to prove they were made."""

        def export(self, spans: c.Sequence[ReadableSpan]) -> SpanExportResult:
            exported.value += len(spans)
            return SpanExportResult.SUCCESS

    tracers = TracerProvider()
    tracers.add_span_processor(SimpleSpanProcessor(NoOp()))
    tracing = Tracing(tracers)
    meter = Metrics(MeterProvider(metric_readers=[InMemoryMetricReader()])) if metrics else None
    bus, tally = _one_handler_bus()
    target = bus if on_this_bus else EventBus()

    def counted() -> int:
        assert meter is not None
        return sum(meter.snapshot().handled.values())

    @contextlib.contextmanager
    def installed() -> c.Iterator[None]:
        tracing.install(target)
        if meter is not None:
            meter.install(target)
        try:
            yield
        finally:
            tracing.uninstall(target)
            if meter is not None:
                meter.uninstall(target)

    checks = [counts("handler runs", tally), counts("spans exported", exported, 2 * on_this_bus)]
    if meter is not None:
        checks.append(Check("runs counted", counted, int(on_this_bus)))
    ours = Contender(_publisher(bus, Ping()), checks, around=installed)
    where = "this bus" if on_this_bus else "another bus"
    what = "Tracing and Metrics" if metrics else "Tracing"
    return Case(
        f"sync publish, 1 handler, OpenTelemetry {what} (SDK, no-op exporter) on {where}",
        {"eventbus": ours, "eventbus, no instrumentation": _no_receiver()},
    )


def _in_loop(body: c.Callable[[int], c.Awaitable[None]]) -> Runner:
    """Runs ``body(n)`` in a fresh event loop, timing the body only."""

    def runner(n: int) -> float:
        async def timed() -> float:
            start = time.perf_counter_ns()
            await body(n)
            return (time.perf_counter_ns() - start) / n

        return asyncio.run(timed())

    return runner


def async_publish(count: int, *, concurrent: bool) -> Case:
    import blinker

    event = Ping()
    contenders: dict[str, Contender] = {}

    tally = Tally()
    bus = EventBus(concurrent=concurrent)
    for number, handler in enumerate(_async_handlers(count, tally)):
        bus.subscribe(Ping, name=f"handler {number}")(handler)  # closures of one factory

    async def eventbus(n: int) -> None:
        publish = bus.publish_async
        for _ in range(n):
            await publish(event)

    contenders["eventbus"] = Contender(_in_loop(eventbus), [counts("handler runs", tally, count)])

    floor_tally = Tally()
    handlers = _async_handlers(count, floor_tally)

    async def floor(n: int) -> None:
        for _ in range(n):
            if concurrent:
                await asyncio.gather(*(handler(event) for handler in handlers))
            else:
                for handler in handlers:
                    await handler(event)

    contenders["direct await"] = Contender(
        _in_loop(floor), [counts("handler runs", floor_tally, count)]
    )

    if not concurrent:  # blinker awaits its receivers one after another only
        blinker_tally = Tally()
        signal = blinker.Signal()
        for handler in _async_handlers(count, blinker_tally):
            signal.connect(handler, weak=False)

        async def blinker_send_async(n: int) -> None:
            send = signal.send_async
            for _ in range(n):
                await send(event)

        contenders["blinker"] = Contender(
            _in_loop(blinker_send_async), [counts("receiver runs", blinker_tally, count)]
        )
    contenders["bubus"] = _bubus(count, parallel=concurrent)
    mode = "concurrent" if concurrent else "sequential"
    return Case(f"async publish awaited, {_plural(count)}, {mode}", contenders)


def _bubus(count: int, *, parallel: bool) -> Contender:
    import bubus

    class BubusPing(bubus.BaseEvent[None]):  # type: ignore[misc]
        n: int = 0

    tally = Tally()

    def run_bubus(n: int) -> float:
        async def run() -> float:
            bus = bubus.EventBus(parallel_handlers=parallel)
            for handler in _async_handlers(count, tally):
                bus.on(BubusPing, handler)
            start = time.perf_counter_ns()
            for _ in range(n):
                await bus.dispatch(BubusPing())  # bubus events are single-use
            elapsed = time.perf_counter_ns() - start
            await bus.stop()
            return elapsed / n

        return asyncio.run(run())

    return Contender(run_bubus, [counts("handler runs", tally, count)])


def cascade(*, child_built_in_handler: bool) -> Case:
    """A handler publishes one child event, which has one handler.

    Either the same child instance, built once beforehand, or one the handler
    builds each time; every contender does the same and its child handler
    adds up the child's ``n`` (1), so a missing or wrong child shows.
    """
    import blinker
    import pyee

    parent, prebuilt = Ping(), Pong(n=1)
    contenders: dict[str, Contender] = {}

    def checks(parents: Tally, children: Tally) -> list[Check]:
        return [counts("parent handler runs", parents), counts("child handler runs", children)]

    parents, children = Tally(), Tally()
    bus = EventBus()

    def on_ping(event: Ping) -> None:
        parents.value += 1
        bus.publish(Pong(n=1) if child_built_in_handler else prebuilt)

    def on_pong(event: Pong) -> None:
        children.value += event.n

    bus.subscribe(Ping)(on_ping)
    bus.subscribe(Pong)(on_pong)
    contenders["eventbus"] = Contender(_publisher(bus, parent), checks(parents, children))

    floor_parents, floor_children = Tally(), Tally()

    def floor_child(event: Pong) -> None:
        floor_children.value += event.n

    def floor_parent(event: Ping) -> None:
        floor_parents.value += 1
        floor_child(Pong(n=1) if child_built_in_handler else prebuilt)

    def floor(n: int) -> None:
        for _ in range(n):
            floor_parent(parent)

    contenders["direct call"] = Contender(floor, checks(floor_parents, floor_children))

    pyee_parents, pyee_children = Tally(), Tally()
    emitter = pyee.EventEmitter()

    def pyee_pong(event: Pong) -> None:
        pyee_children.value += event.n

    def pyee_ping(event: Ping) -> None:
        pyee_parents.value += 1
        emitter.emit("pong", Pong(n=1) if child_built_in_handler else prebuilt)

    emitter.on("pong", pyee_pong)
    emitter.on("ping", pyee_ping)

    def pyee_emit(n: int) -> None:
        emit = emitter.emit
        for _ in range(n):
            emit("ping", parent)

    contenders["pyee"] = Contender(pyee_emit, checks(pyee_parents, pyee_children))

    blinker_parents, blinker_children = Tally(), Tally()
    ping, pong = blinker.Signal(), blinker.Signal()

    def blinker_pong(sender: Pong) -> None:
        blinker_children.value += sender.n

    def blinker_ping(sender: Ping) -> None:
        blinker_parents.value += 1
        pong.send(Pong(n=1) if child_built_in_handler else prebuilt)

    # held strongly: blinker's default weak reference would let these go, leaving no receiver
    pong.connect(blinker_pong, weak=False)
    ping.connect(blinker_ping, weak=False)

    def blinker_send(n: int) -> None:
        send = ping.send
        for _ in range(n):
            send(parent)

    contenders["blinker"] = Contender(blinker_send, checks(blinker_parents, blinker_children))
    how = (
        "builds the child it publishes" if child_built_in_handler else "publishes a prebuilt child"
    )
    return Case(f"cascade: a handler {how}", contenders)


class FormatOnly(logging.Handler):
    """Formats every record, traceback included, then drops it: logging's cost without I/O."""

    def __init__(self) -> None:
        super().__init__()
        self.records = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.format(record)
        self.records += 1


def failing_handler() -> Case:
    """A handler that raises, dead-lettered into the default store, logged as by default."""
    sink = FormatOnly()

    @contextlib.contextmanager
    def logging_formatted() -> c.Iterator[None]:
        # Not lastResort's stderr: the same formatting (exc_info included), written nowhere.
        logger = logging.getLogger("eventbus")
        logger.addHandler(sink)
        try:
            yield
        finally:
            logger.removeHandler(sink)

    def bus_and_store() -> tuple[EventBus, InMemoryDeadLetterStore]:
        bus = EventBus()
        store = bus.dead_letters
        if not isinstance(store, InMemoryDeadLetterStore):
            raise BenchmarkError(f"the default dead-letter store is {store!r}, not in memory")
        return bus, store

    bus, store = bus_and_store()
    runs = Tally()

    def fail(event: Ping) -> None:
        runs.value += 1
        raise ValueError("the handler fails")

    bus.subscribe(Ping)(fail)

    @contextlib.contextmanager
    def empty_store() -> c.Iterator[None]:
        store.clear()  # bounded anyway; cleared so that every measurement starts alike
        with logging_formatted():
            yield
        store.clear()

    failing = Contender(
        _publisher(bus, Ping()),
        [
            counts("handler runs", runs),
            Check("dead letters", lambda: len(store), 1),
            Check("log records formatted", lambda: sink.records, 1, at_least=True),
        ],
        around=empty_store,
        max_iterations=store.max_letters,  # a full store would drop letters and log more
    )

    ok_bus, ok_store = bus_and_store()
    ok_runs = Tally()
    ok_bus.subscribe(Ping)(_sync_handlers(1, ok_runs)[0])
    succeeding = Contender(
        _publisher(ok_bus, Ping()),
        [counts("handler runs", ok_runs), Check("dead letters", lambda: len(ok_store), 0)],
        around=logging_formatted,
    )
    return Case(
        "a failing handler, dead-lettered (default store and logging)",
        {"eventbus": failing, "eventbus, handler succeeds": succeeding},
    )


def retry_policy() -> Case:
    event = Ping()
    plain_runs, guarded_runs = Tally(), Tally()
    plain, guarded = EventBus(), EventBus()
    plain.subscribe(Ping)(_sync_handlers(1, plain_runs)[0])
    guarded.subscribe(Ping, retry=RetryPolicy(max_attempts=3, initial_delay=0.1))(
        _sync_handlers(1, guarded_runs)[0]
    )
    return Case(
        "success path of a handler with a retry policy (3 attempts)",
        {
            "eventbus": Contender(
                _publisher(guarded, event), [counts("handler runs", guarded_runs)]
            ),
            "eventbus, no policy": Contender(
                _publisher(plain, event), [counts("handler runs", plain_runs)]
            ),
        },
    )


def construction() -> Case:
    # Each contender adds up the quantity of what it built: proof that it built it.
    built, plain_built, metadata_built = Tally(), Tally(), Tally()

    def event(n: int) -> None:
        for _ in range(n):
            built.value += ItemAdded(cart_id="c1", sku="A-1", quantity=2).quantity

    def plain(n: int) -> None:
        for _ in range(n):
            plain_built.value += PlainItem(cart_id="c1", sku="A-1", quantity=2).quantity

    def plain_with_metadata(n: int) -> None:
        for _ in range(n):
            metadata_built.value += PlainItemWithMetadata(
                cart_id="c1", sku="A-1", quantity=2
            ).quantity

    return Case(
        "Event construction (3 fields)",
        {
            "eventbus": Contender(event, [counts("quantity built", built, 2)]),
            "plain pydantic, same 3 fields": Contender(
                plain, [counts("quantity built", plain_built, 2)]
            ),
            "plain pydantic, 3 fields + metadata": Contender(
                plain_with_metadata, [counts("quantity built", metadata_built, 2)]
            ),
        },
    )


_IMPORT_TIMER = """\
import sys, time
fresh = {module!r} not in sys.modules
start = time.perf_counter()
import {module}
elapsed = time.perf_counter() - start
print(fresh, {module!r} in sys.modules, elapsed)
"""


def import_time(rounds: int) -> Case:
    """``import x`` timed inside a fresh interpreter; only the import, not the start-up."""

    def contender(module: str) -> Contender:
        fresh = Tally()
        code = _IMPORT_TIMER.format(module=module)

        def run(n: int) -> float:
            total = 0.0
            for _ in range(n):
                # -P: the working directory is not put on sys.path
                child = subprocess.run(
                    [sys.executable, "-P", "-c", code], capture_output=True, text=True
                )
                if child.returncode:
                    raise BenchmarkError(f"`import {module}` failed:\n{child.stderr}")
                out = child.stdout.split()
                if out[:2] != ["True", "True"]:
                    raise BenchmarkError(f"`import {module}` was not a fresh import: {out}")
                fresh.value += 1
                total += float(out[2])
            return total * 1e9 / n

        return Contender(run, [counts("fresh imports", fresh)], iterations=1)

    return Case(
        "import, in a fresh process",
        {"eventbus": contender("eventbus"), "pydantic": contender("pydantic")},
        rounds=rounds,
    )


# -- measuring ----------------------------------------------------------------------------


def _receivers_left(where: str) -> None:
    for name in signals.__all__:
        signal = getattr(signals, name)
        if signal.receivers:
            raise BenchmarkError(
                f"{where}: signals.{name} has receivers {list(signal.receivers.values())!r}; "
                "a receiver left connected would slow every case measured after it"
            )


def execute(case: Case, name: str, n: int, *, collect: bool = True) -> tuple[float, float]:
    """Run ``n`` iterations of one contender and check its work.

    Returns the seconds the run took, wall clock, and its nanoseconds per iteration.
    """
    contender = case.contenders[name]
    where = f"{case.name} / {name}"
    _receivers_left(f"before {where}")
    with contender.around():
        before = [check.read() for check in contender.checks]
        if collect:
            gc.collect()
        start = time.perf_counter_ns()
        own = contender.run(n)
        elapsed = time.perf_counter_ns() - start
        after = [check.read() for check in contender.checks]
    _receivers_left(f"after {where}")
    for check, first, last in zip(contender.checks, before, after, strict=True):
        done, expected = last - first, n * check.per_iteration
        if done < expected or (done > expected and not check.at_least):
            raise BenchmarkError(
                f"{where}: {done} {check.what} in {n} iterations, expected "
                f"{'at least ' if check.at_least else ''}{expected}; "
                "it did not do the work it is timed for"
            )
    return elapsed / 1e9, own if own is not None else elapsed / n


def calibrate(case: Case, name: str, target_seconds: float) -> int:
    """Iterations for one measurement of about ``target_seconds``."""
    contender = case.contenders[name]
    if contender.iterations is not None:
        execute(case, name, contender.iterations, collect=False)  # warm up, check
        return contender.iterations
    limit = min(contender.max_iterations or 10_000_000, 10_000_000)
    n = 1
    while True:
        elapsed, _ = execute(case, name, n, collect=False)
        if elapsed >= target_seconds / 4 or n >= limit:
            return max(1, min(limit, int(n * target_seconds / max(elapsed, 1e-9))))
        n = min(n * 4, limit)


@dataclasses.dataclass
class Row:
    case: str
    contender: str
    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def spread(self) -> float:
        """(max - min) / median, in percent."""
        return 100 * (max(self.samples) - min(self.samples)) / self.median


def run(cases: list[Case], repetitions: int, settings: Settings) -> list[Row]:
    sizes = {
        (case.name, name): calibrate(case, name, settings.target_seconds)
        for case in cases
        for name in case.contenders
    }
    rows = {
        (case.name, name): Row(case.name, name, []) for case in cases for name in case.contenders
    }
    for repetition in range(repetitions):
        for case in cases:
            names = list(case.contenders)
            for round_ in range(case.rounds):
                shift = (repetition * case.rounds + round_) % len(names)  # rotate who goes first
                for name in names[shift:] + names[:shift]:
                    _, ns = execute(case, name, sizes[case.name, name])
                    rows[case.name, name].samples.append(ns)
        print(f"  repetition {repetition + 1}/{repetitions} done", file=sys.stderr)
    return list(rows.values())


def memory(events: int) -> list[tuple[int, float]]:
    """Resident memory (MiB) after 0, 1/4, 1/2 and all of ``events`` sync publishes."""
    bus, tally = _one_handler_bus()
    event = Ping()
    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def rss() -> float:
        try:
            with open("/proc/self/statm") as statm:
                return int(statm.read().split()[1]) * page / 2**20
        except OSError:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    warm_up = 10_000  # plans, caches
    for _ in range(warm_up):
        bus.publish(event)
    gc.collect()
    points = [(0, rss())]
    done = 0
    for checkpoint in (events // 4, events // 2, events):
        for _ in range(checkpoint - done):
            bus.publish(event)
        done = checkpoint
        gc.collect()
        points.append((done, rss()))
    if tally.value != warm_up + events:
        raise BenchmarkError(f"memory: {tally.value} handler runs for {warm_up + events} events")
    return points


# -- reporting ----------------------------------------------------------------------------

SYNC_1 = "sync publish, 1 handler"
SYNC_10 = "sync publish, 10 handlers"
ASYNC_1 = "async publish awaited, 1 handler, sequential"
NO_RECEIVER = "eventbus, no receiver"

OTEL = "sync publish, 1 handler, OpenTelemetry Tracing and Metrics (SDK, no-op exporter) on "
OTEL_THIS_BUS, OTEL_OTHER_BUS = OTEL + "this bus", OTEL + "another bus"

TARGETS = [
    # (case, contender, at most this ratio of eventbus to it)
    (SYNC_1, "pyee", 0.65),
    (SYNC_10, "pyee", 0.5),
    ("sync publish, 1 handler, a handler_succeeded receiver for another bus", NO_RECEIVER, 1.1),
    ("sync publish, 1 handler, after a Trace was opened and closed", NO_RECEIVER, 1.1),
    ("sync publish, 1 handler, a handler_succeeded receiver for this bus", NO_RECEIVER, 2.0),
    (OTEL_THIS_BUS, "eventbus, no instrumentation", 5.0),
    (OTEL_OTHER_BUS, "eventbus, no instrumentation", 1.1),
    ("cascade: a handler publishes a prebuilt child", "pyee", 1.5),
    ("cascade: a handler builds the child it publishes", "pyee", 1.2),
    (
        "a failing handler, dead-lettered (default store and logging)",
        "eventbus, handler succeeds",
        60.0,
    ),
    ("Event construction (3 fields)", "plain pydantic, same 3 fields", 2.0),
    (ASYNC_1, "blinker", 0.5),
    ("import, in a fresh process", "pydantic", 2.5),
    # earlier targets that the ones above do not replace
    (SYNC_1, "blinker", 0.5),
    (SYNC_10, "direct call", 4.0),
    (ASYNC_1, "bubus", 0.01),
]


def _ns(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def table(rows: list[Row]) -> str:
    lines = [
        "| case | contender | median ns | spread | eventbus / contender |",
        "|---|---|---:|---:|---:|",
    ]
    by_case: dict[str, list[Row]] = {}
    for row in rows:
        by_case.setdefault(row.case, []).append(row)
    for case, case_rows in by_case.items():
        ours = next(r for r in case_rows if r.contender == "eventbus")
        for row in case_rows:
            ratio = "" if row is ours else f"{ours.median / row.median:.3g}x"
            lines.append(
                f"| {case if row is ours else ''} | {row.contender} | {_ns(row.median)} | "
                f"{row.spread:.0f}% | {ratio} |"
            )
    return "\n".join(lines)


def targets(rows: list[Row]) -> str:
    medians = {(r.case, r.contender): r.median for r in rows}
    lines = ["| target | measured | |", "|---|---:|---|"]
    for case, contender, limit in TARGETS:
        ratio = medians[case, "eventbus"] / medians[case, contender]
        verdict = "met" if ratio <= limit else f"missed by {ratio / limit:.2f}x"
        lines.append(f"| {case}: at most {limit:g}x {contender} | {ratio:.3g}x | {verdict} |")
    return "\n".join(lines)


def memory_table(points: list[tuple[int, float]]) -> str:
    lines = ["| events published | resident memory (MiB) |", "|---:|---:|"]
    lines += [f"| {events:,} | {mib:.1f} |" for events, mib in points]
    growth = points[-1][1] - points[1][1]
    lines.append("")
    lines.append(
        f"Growth from {points[1][0]:,} to {points[-1][0]:,} events: {growth:+.1f} MiB "
        f"({'flat' if abs(growth) < 1 else 'NOT flat'})."
    )
    return "\n".join(lines)


def environment(argv: c.Sequence[str]) -> str:
    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    packages = ", ".join(
        f"{name} {version(name)}"
        for name in (
            "eventbus",
            "pydantic",
            "blinker",
            "pyee",
            "bubus",
            "redis",
            "hiredis",
            "faststream",
        )
    )
    return (
        f"- command: `{shlex.join(['python', 'benchmarks/bench.py', *argv])}`\n"
        f"- date: {datetime.date.today().isoformat()}\n"
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()} "
        f"{platform.release()}\n"
        f"- Python {platform.python_version()} ({platform.python_implementation()})\n"
        f"- {packages}"
    )


def main(argv: c.Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repetitions", type=int, help="5 by default, 3 with --quick")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer repetitions and shorter measurements: rough ratios in under a minute",
    )
    parser.add_argument("--events", type=int, help="for the memory case")
    parser.add_argument("--write", metavar="PATH", help="render docs/performance.md here")
    parser.add_argument(
        "--no-redis",
        action="store_true",
        help="skip the benchmarks on Redis (benchmarks/redis_bench.py; needs redis-server)",
    )
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    least = 3 if args.quick else 5
    repetitions = args.repetitions if args.repetitions is not None else least
    if repetitions < least:
        parser.error(f"at least {least} repetitions: a median of fewer says little")
    events = args.events if args.events is not None else settings.memory_events

    cases = [
        sync_publish(1),
        sync_publish(10),
        hook_for_another_bus(),
        after_a_trace(),
        hook_for_this_bus(),
        prometheus_metrics(on_this_bus=True),
        prometheus_metrics(on_this_bus=False),
        opentelemetry(on_this_bus=True, metrics=False),
        opentelemetry(on_this_bus=True, metrics=True),
        opentelemetry(on_this_bus=False, metrics=True),
        async_publish(1, concurrent=False),
        async_publish(10, concurrent=False),
        async_publish(10, concurrent=True),
        cascade(child_built_in_handler=False),
        cascade(child_built_in_handler=True),
        failing_handler(),
        retry_policy(),
        construction(),
        import_time(settings.import_rounds),
    ]
    rows = run(cases, repetitions, settings)
    points = memory(events)
    results = table(rows)
    checks = targets(rows)
    memory_text = memory_table(points)
    redis_text = "Not run (`--no-redis`)."
    if not args.no_redis:
        redis_settings = redis_bench.QUICK if args.quick else redis_bench.FULL
        redis_text = redis_bench.report(
            redis_bench.run(redis_settings, repetitions), redis_settings
        )
    env = environment(argv)
    print(results, checks, memory_text, redis_text, env, sep="\n\n")
    if args.write:
        with open(os.path.join(os.path.dirname(__file__), "performance.md.in")) as source:
            template = source.read()
        page = template.format(
            environment=env, results=results, targets=checks, memory=memory_text, redis=redis_text
        )
        with open(args.write, "w") as out:
            out.write(page)
        print(f"\nwrote {args.write}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
