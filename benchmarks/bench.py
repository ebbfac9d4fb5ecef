"""Benchmarks: eventbus against its peers and the direct-call floor, in one process.

Run with ``make bench``. Every repetition measures every contender of every
case, interleaved, so that a machine that slows down mid-run slows everyone
alike; the table reports the median of the repetitions, their spread, and
the ratio of eventbus to each contender. Absolute times on shared machines
drift; the ratios are the figures to read.

``--write PATH`` also renders the results into the performance page from
``benchmarks/performance.md.in`` (``make bench`` writes docs/performance.md).
"""

from __future__ import annotations

import argparse
import asyncio
import collections.abc as c
import dataclasses
import datetime
import gc
import importlib.metadata
import os
import platform
import statistics
import sys
import time
import typing as t
import uuid

from pydantic import BaseModel, Field

from eventbus import Event, EventBus, RetryPolicy

# Each measurement runs long enough to dwarf the timer's resolution and loop set-up.
TARGET_SECONDS = 0.05


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


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class PlainItemAdded(BaseModel):
    """The same fields as ItemAdded, metadata included, on a plain pydantic model."""

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    occurred_at: datetime.datetime = Field(default_factory=_now)
    correlation_id: uuid.UUID | None = None
    causation_id: uuid.UUID | None = None
    cart_id: str
    sku: str
    quantity: int


# -- contenders ---------------------------------------------------------------------------

Runner = c.Callable[[int], None]


@dataclasses.dataclass
class Case:
    name: str
    contenders: dict[str, Runner]  # "eventbus" first; the others are what it is compared with
    unit_iterations: int = 1  # bubus is ~10,000x slower: it gets fewer iterations


def _sync_handlers(count: int) -> list[c.Callable[[Ping], None]]:
    def make() -> c.Callable[[Ping], None]:
        def handler(event: Ping) -> None:
            pass

        return handler

    return [make() for _ in range(count)]


def _async_handlers(count: int) -> list[c.Callable[[t.Any], c.Awaitable[None]]]:
    def make(n: int) -> c.Callable[[t.Any], c.Awaitable[None]]:
        async def handler(event: t.Any) -> None:
            pass

        # distinct names: bubus warns about handlers that share one
        handler.__name__ = handler.__qualname__ = f"handler_{n}"
        return handler

    return [make(n) for n in range(count)]


def sync_publish(count: int) -> Case:
    import blinker
    import pyee

    handlers = _sync_handlers(count)
    event = Ping()

    bus = EventBus()
    for handler in handlers:
        bus.subscribe(Ping)(handler)
    emitter = pyee.EventEmitter()
    for handler in handlers:
        emitter.on("ping", handler)
    signal = blinker.Signal()
    for handler in handlers:
        signal.connect(handler)

    def eventbus(n: int) -> None:
        publish = bus.publish
        for _ in range(n):
            publish(event)

    def floor(n: int) -> None:
        for _ in range(n):
            for handler in handlers:
                handler(event)

    def pyee_emit(n: int) -> None:
        emit = emitter.emit
        for _ in range(n):
            emit("ping", event)

    def blinker_send(n: int) -> None:
        send = signal.send
        for _ in range(n):
            send(event)

    return Case(
        f"sync publish, {count} handler{'s' * (count > 1)}",
        {"eventbus": eventbus, "direct call": floor, "pyee": pyee_emit, "blinker": blinker_send},
    )


def async_publish(count: int, *, concurrent: bool) -> Case:
    import blinker

    handlers = _async_handlers(count)
    event = Ping()
    bus = EventBus(concurrent=concurrent)
    for handler in handlers:
        bus.subscribe(Ping)(handler)
    signal = blinker.Signal()
    for handler in handlers:
        signal.connect(handler)

    def eventbus(n: int) -> None:
        async def run() -> None:
            publish = bus.publish_async
            for _ in range(n):
                await publish(event)

        asyncio.run(run())

    def floor(n: int) -> None:
        async def run() -> None:
            for _ in range(n):
                if concurrent:
                    await asyncio.gather(*(handler(event) for handler in handlers))
                else:
                    for handler in handlers:
                        await handler(event)

        asyncio.run(run())

    def blinker_send_async(n: int) -> None:
        async def run() -> None:
            send = signal.send_async
            for _ in range(n):
                await send(event)

        asyncio.run(run())

    contenders: dict[str, Runner] = {"eventbus": eventbus, "direct await": floor}
    if not concurrent:  # blinker awaits its receivers one after another only
        contenders["blinker"] = blinker_send_async
    contenders["bubus"] = _bubus(count, parallel=concurrent)
    mode = "concurrent" if concurrent else "sequential"
    return Case(
        f"async publish awaited, {count} handler{'s' * (count > 1)}, {mode}",
        contenders,
        unit_iterations=1,
    )


def _bubus(count: int, *, parallel: bool) -> Runner:
    import bubus

    class BubusPing(bubus.BaseEvent[None]):  # type: ignore[misc]
        n: int = 0

    def run_bubus(n: int) -> None:
        async def run() -> None:
            bus = bubus.EventBus(parallel_handlers=parallel)
            for handler in _async_handlers(count):
                bus.on(BubusPing, handler)
            for _ in range(n):
                await bus.dispatch(BubusPing())  # bubus events are single-use
            await bus.stop()

        asyncio.run(run())

    return run_bubus


def cascade() -> Case:
    import blinker
    import pyee

    parent, child_event = Ping(), Pong()
    bus = EventBus()

    @bus.subscribe
    def on_ping(event: Ping) -> None:
        bus.publish(child_event)  # queued, then stamped with causation and correlation ids

    @bus.subscribe
    def on_pong(event: Pong) -> None:
        pass

    emitter = pyee.EventEmitter()
    emitter.on("pong", lambda event: None)
    emitter.on("ping", lambda event: emitter.emit("pong", event))
    ping, pong = blinker.Signal(), blinker.Signal()
    pong.connect(lambda sender: None)

    def relay(sender: object) -> None:
        pong.send(sender)

    ping.connect(relay)

    def child(event: object) -> None:
        pass

    def eventbus(n: int) -> None:
        publish = bus.publish
        for _ in range(n):
            publish(parent)

    def floor(n: int) -> None:
        for _ in range(n):
            child(parent)

    def pyee_emit(n: int) -> None:
        for _ in range(n):
            emitter.emit("ping", parent)

    def blinker_send(n: int) -> None:
        for _ in range(n):
            ping.send(parent)

    return Case(
        "cascade: a handler publishes one child",
        {"eventbus": eventbus, "direct call": floor, "pyee": pyee_emit, "blinker": blinker_send},
    )


def retry_policy() -> Case:
    event = Ping()
    plain, guarded = EventBus(), EventBus()
    plain.subscribe(Ping)(_sync_handlers(1)[0])
    guarded.subscribe(Ping, retry=RetryPolicy(max_attempts=3, initial_delay=0.1))(
        _sync_handlers(1)[0]
    )

    def with_policy(n: int) -> None:
        publish = guarded.publish
        for _ in range(n):
            publish(event)

    def without(n: int) -> None:
        publish = plain.publish
        for _ in range(n):
            publish(event)

    return Case(
        "success path of a handler with a retry policy (3 attempts)",
        {"eventbus": with_policy, "eventbus, no policy": without},
    )


def construction() -> Case:
    def event(n: int) -> None:
        for _ in range(n):
            ItemAdded(cart_id="c1", sku="A-1", quantity=2)

    def plain(n: int) -> None:
        for _ in range(n):
            PlainItemAdded(cart_id="c1", sku="A-1", quantity=2)

    return Case(
        "Event construction (3 fields + metadata)", {"eventbus": event, "plain pydantic": plain}
    )


# -- measuring ----------------------------------------------------------------------------


def calibrate(runner: Runner) -> int:
    """Iterations for one measurement of about TARGET_SECONDS."""
    n = 1
    while True:
        start = time.perf_counter()
        runner(n)
        elapsed = time.perf_counter() - start
        if elapsed >= TARGET_SECONDS / 4 or n >= 10_000_000:
            return max(1, int(n * TARGET_SECONDS / max(elapsed, 1e-9)))
        n *= 4


def measure(runner: Runner, n: int) -> float:
    """Nanoseconds per iteration of one run of ``n`` iterations."""
    gc.collect()
    start = time.perf_counter_ns()
    runner(n)
    return (time.perf_counter_ns() - start) / n


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


def run(cases: list[Case], repetitions: int) -> list[Row]:
    sizes = {
        (case.name, name): calibrate(runner)
        for case in cases
        for name, runner in case.contenders.items()
    }
    rows = {
        (case.name, name): Row(case.name, name, [])
        for case in cases
        for name in case.contenders
    }
    for repetition in range(repetitions):
        for case in cases:
            names = list(case.contenders)
            shift = repetition % len(names)  # rotate who goes first
            for name in names[shift:] + names[:shift]:
                rows[case.name, name].samples.append(
                    measure(case.contenders[name], sizes[case.name, name])
                )
        print(f"  repetition {repetition + 1}/{repetitions} done", file=sys.stderr)
    return list(rows.values())


def memory(events: int = 1_000_000) -> list[tuple[int, float]]:
    """Resident memory (MiB) after 0, 1/4, 1/2 and all of ``events`` sync publishes."""
    bus = EventBus()
    bus.subscribe(Ping)(_sync_handlers(1)[0])
    event = Ping()
    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def rss() -> float:
        try:
            with open("/proc/self/statm") as statm:
                return int(statm.read().split()[1]) * page / 2**20
        except OSError:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    for _ in range(10_000):  # warm up: plans, caches
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
    return points


# -- reporting ----------------------------------------------------------------------------

TARGETS = [
    # (case, contender, at most this ratio of eventbus to it)
    ("sync publish, 1 handler", "pyee", 0.8),
    ("sync publish, 1 handler", "blinker", 0.5),
    ("sync publish, 10 handlers", "pyee", 0.8),
    ("sync publish, 10 handlers", "direct call", 4.0),
    ("async publish awaited, 1 handler, sequential", "blinker", 0.7),
    ("async publish awaited, 1 handler, sequential", "bubus", 0.01),
    ("Event construction (3 fields + metadata)", "plain pydantic", 2.0),
]


def _ns(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def table(rows: list[Row]) -> str:
    lines = [
        "| case | contender | median ns/event | spread | eventbus / contender |",
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
        lines.append(f"| {case}: at most {limit}x {contender} | {ratio:.3g}x | {verdict} |")
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


def environment(repetitions: int) -> str:
    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    packages = ", ".join(
        f"{name} {version(name)}" for name in ("eventbus", "pydantic", "blinker", "pyee", "bubus")
    )
    return (
        f"- command: `make bench` (`python benchmarks/bench.py --repetitions {repetitions}`)\n"
        f"- date: {datetime.date.today().isoformat()}\n"
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()} "
        f"{platform.release()}\n"
        f"- Python {platform.python_version()} ({platform.python_implementation()})\n"
        f"- {packages}"
    )


def main(argv: c.Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--events", type=int, default=1_000_000, help="for the memory case")
    parser.add_argument("--write", metavar="PATH", help="render docs/performance.md here")
    args = parser.parse_args(argv)
    if args.repetitions < 5:
        parser.error("at least 5 repetitions: a median of fewer says little")

    cases = [
        sync_publish(1),
        sync_publish(10),
        async_publish(1, concurrent=False),
        async_publish(10, concurrent=False),
        async_publish(10, concurrent=True),
        cascade(),
        retry_policy(),
        construction(),
    ]
    rows = run(cases, args.repetitions)
    points = memory(args.events)
    results = table(rows)
    checks = targets(rows)
    memory_text = memory_table(points)
    env = environment(args.repetitions)
    print(results, checks, memory_text, env, sep="\n\n")
    if args.write:
        with open(os.path.join(os.path.dirname(__file__), "performance.md.in")) as source:
            template = source.read()
        page = template.format(environment=env, results=results, targets=checks, memory=memory_text)
        with open(args.write, "w") as out:
            out.write(page)
        print(f"\nwrote {args.write}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
