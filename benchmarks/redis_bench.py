"""Benchmarks on Redis: eventbus's worker against FastStream and a raw redis-py floor.

All contenders run against one private ``redis-server`` (started here on a
free loopback port, stopped after), interleaved repetition by repetition,
and every one proves it did its work: a run stops with
:class:`~bench.BenchmarkError` unless each handler ran exactly once per
event and its consumer group ends with nothing pending.

- **throughput**: publish N events and time until one consumer has handled
  (and acknowledged) all of them, the consumer running in the same process
  from the start. eventbus publishes with overlapping ``publish_async``
  calls, FastStream with overlapping ``broker.publish`` calls (windows of
  100 for both), the floor with pipelined ``XADD`` (100 per pipeline); the
  floor reads with ``XREADGROUP`` (a count of 100) and acknowledges each
  read with one ``XACK``. All build and parse the same pydantic event.
- **latency**: one event at a time, from the publish call to the handler
  starting; p50 and p99.
- **concurrency**: a handler that awaits 1 ms, one worker with
  ``concurrency=64`` against one with ``concurrency=1``, on a filled stream.
- **memory**: a worker process (``python -m eventbus worker``) handles
  100,000 events published in bursts; its resident memory and the stream's
  length after each burst.

``python benchmarks/redis_bench.py [--quick]`` prints the tables; ``make
bench`` puts them in docs/performance.md through ``bench.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections.abc as c
import dataclasses
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
import typing as t

import redis
import redis.asyncio as aredis

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: the tests' private server lives in tests/
    sys.path.insert(0, str(ROOT))

from tests.redis_server import RedisServer  # noqa: E402

from benchmarks.redis_events import Tick  # noqa: E402
from eventbus import Event, EventBus  # noqa: E402
from eventbus.redis import RedisBroker, Worker  # noqa: E402
from eventbus.redis._broker import entry  # noqa: E402


class BenchmarkError(RuntimeError):
    """A contender did not do the work it is timed for."""


@dataclasses.dataclass(frozen=True)
class Settings:
    events: int  # per throughput measurement
    latency_events: int  # one at a time, per contender and repetition
    slow_events: tuple[int, int]  # for concurrency 1 and 64
    memory_events: int
    memory_burst: int


FULL = Settings(20_000, 300, (300, 6_000), 100_000, 10_000)
QUICK = Settings(5_000, 100, (100, 2_000), 20_000, 5_000)

#: Overlapping publishes, and XADDs per pipeline of the floor.
WINDOW = 100

#: Entries the floor reads at most per XREADGROUP.
COUNT = 100

#: The worker's concurrency in the throughput and latency cases.
CONCURRENCY = 64

#: The worker process of the memory case.
WORKER = (sys.executable, "-m", "eventbus", "worker", "benchmarks.redis_app:bus")

PATIENCE = 120.0  # seconds a measurement may take before it counts as stuck


async def until(what: str, done: c.Callable[[], object]) -> None:
    """A bounded poll."""
    deadline = time.monotonic() + PATIENCE
    while not done():
        if time.monotonic() > deadline:
            raise BenchmarkError(f"{what}: not done after {PATIENCE:g}s")
        await asyncio.sleep(0.001)


async def settled(client: aredis.Redis, stream: str, group: str, events: int) -> None:
    """Wait (a bounded poll) until ``group`` has read ``events`` entries and acknowledged all."""
    deadline = time.monotonic() + PATIENCE
    while True:
        infos = {info["name"].decode(): info for info in await client.xinfo_groups(stream)}
        if group not in infos:
            raise BenchmarkError(f"no group {group} on {stream}")
        info = infos[group]
        if info["pending"] == 0 and info["entries-read"] == events:
            return
        if time.monotonic() > deadline:
            raise BenchmarkError(
                f"group {group} of {stream}: {info['pending']} pending, "
                f"{info['entries-read']} read of {events}: not all acknowledged"
            )
        await asyncio.sleep(0.001)


# -- the contenders ----------------------------------------------------------------


class Contender(t.Protocol):
    """One consumer and its publisher, set up on a stream of their own for one measurement."""

    async def start(self) -> None: ...
    async def publish(self, event: Tick) -> None: ...
    async def publish_many(self, events: list[Tick]) -> None: ...
    async def stop(self) -> None: ...

    handled: int  # events the handler ran on
    arrived: float  # perf_counter() when the handler last started


class Raw:
    """The floor: redis-py alone, pipelined XADD; XREADGROUP with a count of 100; XACK."""

    name = "raw redis-py"

    def __init__(self, url: str, tag: str) -> None:
        self.client = aredis.Redis.from_url(url)
        self.stream, self.group = f"raw:{tag}", "g"
        self.handled, self.arrived = 0, 0.0

    async def start(self) -> None:
        await self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        self.reading = True
        self.task = asyncio.create_task(self._consume())

    async def _consume(self) -> None:
        while self.reading:
            reply: t.Any = await self.client.xreadgroup(
                self.group, "c", {self.stream: ">"}, count=COUNT, block=100
            )
            for _, entries in reply or ():
                for _, fields in entries:
                    self.arrived = time.perf_counter()
                    Event.from_json(fields[b"event_type"].decode(), fields[b"payload"])
                    self.handled += 1
                await self.client.xack(self.stream, self.group, *(i for i, _ in entries))

    async def publish(self, event: Tick) -> None:
        await self.client.xadd(self.stream, entry(event))  # type: ignore[arg-type]

    async def publish_many(self, events: list[Tick]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for event in events:
                pipe.xadd(self.stream, entry(event))  # type: ignore[arg-type]
            await pipe.execute()

    async def stop(self) -> None:
        await settled(self.client, self.stream, self.group, self.handled)
        self.reading = False
        await self.task
        await self.client.aclose()


class Ours:
    """eventbus: a broker bus, its Worker in this process, one no-op async handler."""

    name = "eventbus"

    def __init__(self, url: str, tag: str, *, concurrency: int = CONCURRENCY) -> None:
        self.broker = RedisBroker(url, namespace=f"bench-{tag}")
        self.bus = EventBus(broker=self.broker)
        self.handled, self.arrived = 0, 0.0

        @self.bus.subscribe(name="noop")
        async def noop(event: Tick) -> None:
            self.arrived = time.perf_counter()
            self.handled += 1

        self.worker = Worker(self.bus, concurrency=concurrency, block=0.1)

    async def start(self) -> None:
        self.task = asyncio.create_task(self.worker.run())
        await until(
            "the worker's group", lambda: self.broker.client.exists(self.broker.keys.stream)
        )

    async def publish(self, event: Tick) -> None:
        await self.bus.publish_async(event)

    async def publish_many(self, events: list[Tick]) -> None:
        await asyncio.gather(*(self.bus.publish_async(event) for event in events))

    async def stop(self) -> None:
        client = aredis.Redis.from_url(self.broker.url)
        await settled(client, self.broker.keys.stream, "noop", self.handled)
        await client.aclose()
        self.worker.stop()
        await self.task
        self.broker.close()


class FastStream:
    """FastStream's Redis broker, a stream subscriber in a consumer group."""

    name = "FastStream"

    def __init__(self, url: str, tag: str) -> None:
        from faststream.redis import RedisBroker as Broker
        from faststream.redis import StreamSub

        self.url, self.stream = url, f"faststream:{tag}"
        quiet: t.Any = None  # no log line per message
        self.broker = Broker(url, logger=quiet, max_connections=WINDOW + 16)
        self.handled, self.arrived = 0, 0.0
        source = StreamSub(self.stream, group="g", consumer="c", max_records=COUNT)

        async def noop(event: Tick) -> None:
            self.arrived = time.perf_counter()
            self.handled += 1

        # Not as a decorator: without the bench extra, mypy sees FastStream as Any.
        self.broker.subscriber(stream=source)(noop)

    async def start(self) -> None:
        await self.broker.start()

    async def publish(self, event: Tick) -> None:
        await self.broker.publish(event, stream=self.stream)

    async def publish_many(self, events: list[Tick]) -> None:
        await asyncio.gather(*(self.broker.publish(e, stream=self.stream) for e in events))

    async def stop(self) -> None:
        client = aredis.Redis.from_url(self.url)
        await settled(client, self.stream, "g", self.handled)  # it acknowledges after the handler
        await self.broker.stop()
        await client.aclose()


Make = c.Callable[[str, str], Contender]
CONTENDERS: dict[str, Make] = {"raw redis-py": Raw, "eventbus": Ours, "FastStream": FastStream}


# -- the cases ---------------------------------------------------------------------


async def throughput(make: Make, url: str, tag: str, events: int) -> float:
    """Events per second, from the first publish to the last event handled."""
    contender = make(url, tag)
    await contender.start()
    ticks = [Tick(n=n) for n in range(events)]
    began = time.perf_counter()
    for start in range(0, events, WINDOW):
        await contender.publish_many(ticks[start : start + WINDOW])
    await until("handling every event", lambda: contender.handled >= events)
    elapsed = time.perf_counter() - began
    await contender.stop()
    if contender.handled != events:
        raise BenchmarkError(f"{make.__name__}: {contender.handled} handled of {events}")
    return events / elapsed


async def latency(make: Make, url: str, tag: str, events: int) -> list[float]:
    """Seconds from each publish call to its handler starting, one event at a time."""
    contender = make(url, tag)
    await contender.start()
    seconds = []
    for n in range(events + 10):  # the first ten warm up
        sent = time.perf_counter()
        await contender.publish(Tick(n=n))
        await until("the handler", lambda n=n: contender.handled > n)  # type: ignore[misc]
        if n >= 10:
            seconds.append(contender.arrived - sent)
    await contender.stop()
    if contender.handled != events + 10:
        raise BenchmarkError(f"{make.__name__}: {contender.handled} handled of {events + 10}")
    return seconds


async def concurrency(url: str, tag: str, slots: int, events: int) -> float:
    """Events per second of one worker with ``slots`` slots and a handler awaiting 1 ms."""
    broker = RedisBroker(url, namespace=f"bench-{tag}")
    bus = EventBus(broker=broker)
    ran = 0

    @bus.subscribe(name="io")
    async def io(event: Tick) -> None:
        nonlocal ran
        await asyncio.sleep(0.001)
        ran += 1

    with broker.client.pipeline(transaction=False) as pipe:
        for n in range(events):
            pipe.xadd(broker.keys.stream, entry(Tick(n=n)))  # type: ignore[arg-type]
        pipe.execute()
    worker = Worker(bus, concurrency=slots, block=0.1)
    began = time.perf_counter()
    task = asyncio.create_task(worker.run())
    await until("the slow handler", lambda: worker.handled >= events)
    elapsed = time.perf_counter() - began
    worker.stop()
    await task
    client = aredis.Redis.from_url(url)
    await settled(client, broker.keys.stream, "io", events)
    await client.aclose()
    broker.close()
    if ran != events:
        raise BenchmarkError(f"concurrency {slots}: the handler ran {ran} times for {events}")
    return events / elapsed


def memory(server: RedisServer, settings: Settings) -> list[tuple[int, float, int, int]]:
    """(events handled, worker RSS in MiB, stream length, longest seen) after each burst."""
    namespace = "bench-memory"
    env = {**os.environ, "BENCH_REDIS_URL": server.url, "BENCH_REDIS_NAMESPACE": namespace}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    broker = RedisBroker(server.url, namespace=namespace)
    client, stream = broker.client, broker.keys.stream
    worker = subprocess.Popen(
        [*WORKER, "--concurrency", str(CONCURRENCY)],
        env=env,
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    points: list[tuple[int, float, int, int]] = []
    try:
        deadline = time.monotonic() + PATIENCE
        while not client.exists(stream):  # the worker made its group
            if worker.poll() is not None or time.monotonic() > deadline:
                raise BenchmarkError("the memory worker did not start")
            time.sleep(0.01)
        published = 0
        longest = 0
        while published < settings.memory_events:
            with client.pipeline(transaction=False) as pipe:
                for n in range(published, published + settings.memory_burst):
                    pipe.xadd(stream, entry(Tick(n=n)))  # type: ignore[arg-type]
                pipe.execute()
            published += settings.memory_burst
            deadline = time.monotonic() + PATIENCE
            while True:
                longest = max(longest, int(client.xlen(stream)))
                (info,) = t.cast(t.Any, client.xinfo_groups(stream))
                if info["pending"] == 0 and info["entries-read"] == published:
                    break
                if time.monotonic() > deadline:
                    raise BenchmarkError(f"the memory worker is stuck: {info}")
                time.sleep(0.01)
            points.append((published, _rss_mib(worker.pid), int(client.xlen(stream)), longest))
    finally:
        worker.terminate()
        _, errors = worker.communicate(timeout=PATIENCE)
        broker.close()
    if worker.returncode != 0 or f"stopped after {published} entries" not in errors:
        raise BenchmarkError(
            f"the memory worker (status {worker.returncode}) did not handle {published} "
            f"entries: {errors[-2000:]}"
        )
    return points


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise BenchmarkError(f"no VmRSS for {pid}")


# -- running and reporting ---------------------------------------------------------


@dataclasses.dataclass
class Results:
    rates: dict[str, list[float]]
    latencies: dict[str, list[float]]
    slow: dict[int, list[float]]
    memory: list[tuple[int, float, int, int]]
    server: str = "?"  # redis-server's version


def run(settings: Settings, repetitions: int) -> Results:
    with tempfile.TemporaryDirectory(prefix="eventbus-bench-redis-") as directory:
        server = RedisServer(pathlib.Path(directory))
        server.start()
        try:
            results = Results({}, {}, {}, [])
            with redis.Redis.from_url(server.url) as client:
                results.server = str(t.cast(t.Any, client.info("server"))["redis_version"])
            for repetition in range(repetitions):
                for name, make in CONTENDERS.items():
                    tag = f"{repetition}-{len(results.rates.get(name, ()))}"
                    rate = asyncio.run(throughput(make, server.url, tag, settings.events))
                    results.rates.setdefault(name, []).append(rate)
                    seconds = asyncio.run(
                        latency(make, server.url, tag + "-l", settings.latency_events)
                    )
                    results.latencies.setdefault(name, []).extend(seconds)
                for slots, events in zip((1, 64), settings.slow_events, strict=True):
                    rate = asyncio.run(
                        concurrency(server.url, f"{repetition}-c{slots}", slots, events)
                    )
                    results.slow.setdefault(slots, []).append(rate)
                print(f"repetition {repetition + 1}/{repetitions} done", file=sys.stderr)
                server_flush(server)
            results.memory = memory(server, settings)
        finally:
            server.stop()
    return results


def server_flush(server: RedisServer) -> None:
    with redis.Redis.from_url(server.url) as client:
        client.flushall()


def _spread(values: list[float]) -> str:
    return f"{(max(values) - min(values)) / statistics.median(values):.0%}"


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def report(results: Results, settings: Settings) -> str:
    """The Redis section of the performance page."""
    floor = statistics.median(results.rates["raw redis-py"])
    faststream = statistics.median(results.rates["FastStream"])
    ours = statistics.median(results.rates["eventbus"])
    lines = [
        f"One private redis-server {results.server} on loopback for every contender.",
        "",
        f"Throughput, {settings.events:,} events published and handled, one consumer "
        "in the same process:",
        "",
        "| contender | events/s (median) | spread | eventbus / contender |",
        "|---|---:|---:|---:|",
    ]
    for name, rates in results.rates.items():
        median = statistics.median(rates)
        lines.append(f"| {name} | {median:,.0f} | {_spread(rates)} | {ours / median:.2f} |")
    lines += [
        "",
        "Latency, one event at a time, from the publish call to the handler starting:",
        "",
        "| contender | p50 (ms) | p99 (ms) |",
        "|---|---:|---:|",
    ]
    for name, seconds in results.latencies.items():
        p50, p99 = _percentile(seconds, 0.5) * 1e3, _percentile(seconds, 0.99) * 1e3
        lines.append(f"| {name} | {p50:.2f} | {p99:.2f} |")
    one, many = (statistics.median(results.slow[slots]) for slots in (1, 64))
    lines += [
        "",
        "A handler that awaits 1 ms, one worker:",
        "",
        "| concurrency | events/s (median) | spread |",
        "|---:|---:|---:|",
        f"| 1 | {one:,.0f} | {_spread(results.slow[1])} |",
        f"| 64 | {many:,.0f} | {_spread(results.slow[64])} |",
        "",
        f"A worker process over {settings.memory_events:,} events, published in bursts of "
        f"{settings.memory_burst:,} (each handled before the next):",
        "",
        "| events handled | worker RSS (MiB) | stream length after | longest seen |",
        "|---:|---:|---:|---:|",
    ]
    for handled, rss, length, longest in results.memory:
        lines.append(f"| {handled:,} | {rss:.1f} | {length:,} | {longest:,} |")
    growth = results.memory[-1][1] - results.memory[1][1] if len(results.memory) > 1 else 0.0
    longest = max(point[3] for point in results.memory)
    checks = [
        (f"throughput at least FastStream's: {ours / faststream:.2f}x", ours >= faststream),
        (f"throughput at least 40% of the raw floor: {ours / floor:.0%}", ours >= 0.4 * floor),
        (f"concurrency 64 at least 20x concurrency 1: {many / one:.1f}x", many >= 20 * one),
        (
            f"worker memory flat: {growth:+.1f} MiB from the second burst to the last",
            growth < 10,
        ),
        (
            f"stream length bounded: at most {longest:,} entries for "
            f"{settings.memory_events:,} events",
            longest <= settings.memory_burst + 1_000,
        ),
    ]
    lines += ["", "Targets:", ""]
    lines += [f"- {'met' if ok else 'MISSED'}: {text}" for text, ok in checks]
    return "\n".join(lines)


def main(argv: c.Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer and smaller measurements")
    parser.add_argument("--repetitions", type=int, default=None, help="5 by default, 3 quick")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    repetitions = args.repetitions or (3 if args.quick else 5)
    print(report(run(settings, repetitions), settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
