"""Threads and memory: concurrent publishers lose nothing; memory stays flat."""

from __future__ import annotations

import asyncio
import collections
import collections.abc as c
import contextvars
import gc
import logging
import sys
import threading
import tracemalloc
import uuid

from eventbus import Event, EventBus, HandlerRegistry, RetryPolicy
from tests.clocks import TestClock


class Tick(Event):
    n: int = 0


class Tock(Event):
    n: int = 0


THREADS = 8
PER_THREAD = 250


def _run_threads(target: c.Callable[[int], None], count: int = THREADS) -> list[BaseException]:
    """Start ``count`` threads together (a barrier) and return what they raised."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            target(index)
        except BaseException as error:  # reported by the test
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    return errors


# -- publishing from many threads ------------------------------------------------------


def _counting_bus() -> tuple[EventBus, collections.Counter[uuid.UUID], list[uuid.UUID]]:
    bus = EventBus()
    seen: collections.Counter[uuid.UUID] = collections.Counter()
    lock = threading.Lock()
    children: list[uuid.UUID] = []

    @bus.subscribe
    def count(event: Tick) -> None:
        with lock:
            seen[event.event_id] += 1
        bus.publish(Tock(n=event.n))  # each publish has its own cascade

    @bus.subscribe
    async def count_async(event: Tick) -> None:
        await asyncio.sleep(0)
        with lock:
            seen[event.event_id] += 1

    @bus.subscribe
    def on_tock(event: Tock) -> None:
        assert event.causation_id is not None
        with lock:
            children.append(event.causation_id)

    return bus, seen, children


def test_many_threads_publish_at_once() -> None:
    bus, seen, children = _counting_bus()
    published: list[list[uuid.UUID]] = [[] for _ in range(THREADS)]

    def publish_many(index: int) -> None:
        for n in range(PER_THREAD):
            event = Tick(n=n)
            published[index].append(event.event_id)
            assert bus.publish(event).ok

    assert _run_threads(publish_many) == []
    ids = [event_id for ids in published for event_id in ids]
    assert len(ids) == THREADS * PER_THREAD
    assert seen == {event_id: 2 for event_id in ids}  # nothing lost, nothing doubled
    assert collections.Counter(children) == {event_id: 1 for event_id in ids}


def test_many_threads_publish_at_once_async() -> None:
    bus, seen, children = _counting_bus()
    published: list[list[uuid.UUID]] = [[] for _ in range(THREADS)]

    def publish_many(index: int) -> None:
        async def main() -> None:
            for n in range(PER_THREAD // 2):
                event = Tick(n=n)
                published[index].append(event.event_id)
                assert (await bus.publish_async(event)).ok
            # and some at once on this thread's loop
            events = [Tick(n=n) for n in range(PER_THREAD // 2)]
            published[index].extend(e.event_id for e in events)
            results = await asyncio.gather(*(bus.publish_async(e) for e in events))
            assert all(r.ok for r in results)

        asyncio.run(main())

    assert _run_threads(publish_many) == []
    ids = [event_id for ids in published for event_id in ids]
    assert len(ids) == THREADS * PER_THREAD
    assert seen == {event_id: 2 for event_id in ids}
    assert collections.Counter(children) == {event_id: 1 for event_id in ids}


def test_failures_from_many_threads_are_all_dead_lettered() -> None:
    bus = EventBus(retry=RetryPolicy(max_attempts=2), clock=TestClock())

    @bus.subscribe
    def broken(event: Tick) -> None:
        raise ValueError(str(event.event_id))

    published: list[uuid.UUID] = []
    lock = threading.Lock()

    def publish_many(index: int) -> None:
        for n in range(PER_THREAD // 5):
            event = Tick(n=n)
            with lock:
                published.append(event.event_id)
            result = bus.publish(event)
            assert [letter.event.event_id for letter in result.dead_letters] == [event.event_id]

    assert _run_threads(publish_many) == []
    letters = list(bus.dead_letters)
    assert sorted(letter.event.event_id for letter in letters) == sorted(published)
    assert {letter.attempts for letter in letters} == {2}


# -- subscribing while others publish ---------------------------------------------------


def test_subscribe_while_other_threads_publish() -> None:
    bus = EventBus()
    lock = threading.Lock()
    early_seen: collections.Counter[uuid.UUID] = collections.Counter()
    late_seen: collections.Counter[str] = collections.Counter()
    published: list[uuid.UUID] = []
    late_names: list[str] = []

    @bus.subscribe
    def early(event: Tick) -> None:
        with lock:
            early_seen[event.event_id] += 1

    @bus.subscribe(priority=5)
    async def early_async(event: Tick) -> None:
        with lock:
            early_seen[event.event_id] += 1

    publishers = THREADS - 1
    subscribed_all = threading.Event()

    def work(index: int) -> None:
        if index == publishers:  # the subscriber thread
            registry = HandlerRegistry()
            for k in range(60):
                name = f"late_{k}"

                def late(event: Tick, name: str = name) -> None:
                    with lock:
                        late_seen[name] += 1

                late.__qualname__ = name
                late_names.append(name)
                if k % 3 == 0:
                    bus.subscribe(Tick, priority=k % 7 - 3)(late)
                elif k % 3 == 1:
                    registry.subscribe(Tick)(late)
                else:
                    bus.subscribe(Tick)(late)
                    bus.unsubscribe(late)
                    bus.subscribe(Tick)(late)
            bus.include(registry)
            subscribed_all.set()
            return
        n = 0
        while n < PER_THREAD or not subscribed_all.is_set():
            event = Tick(n=n)
            with lock:
                published.append(event.event_id)
            assert bus.publish(event).ok
            n += 1

    assert _run_threads(work) == []
    assert early_seen == {event_id: 2 for event_id in published}
    # every late handler is on the bus, exactly once, and sees what is published now
    assert len(bus.subscriptions) == 2 + 60
    total = len(published)
    for name in late_names:
        assert late_seen[name] <= total
    before = dict(late_seen)
    bus.publish(Tick())
    asyncio.run(bus.publish_async(Tick()))
    assert {name: late_seen[name] - before.get(name, 0) for name in late_names} == {
        name: 2 for name in late_names
    }


def test_subscribe_while_other_threads_publish_async() -> None:
    bus = EventBus()
    lock = threading.Lock()
    early_seen: collections.Counter[uuid.UUID] = collections.Counter()
    published: list[uuid.UUID] = []

    @bus.subscribe
    async def early(event: Tick) -> None:
        await asyncio.sleep(0)
        with lock:
            early_seen[event.event_id] += 1

    subscribed_all = threading.Event()

    def work(index: int) -> None:
        if index == 0:
            for k in range(60):

                async def late(event: Tick) -> None:
                    await asyncio.sleep(0)

                late.__qualname__ = f"late_{k}"
                bus.subscribe(Tick, priority=k % 5)(late)
            subscribed_all.set()
            return

        async def main() -> None:
            n = 0
            while n < PER_THREAD // 2 or not subscribed_all.is_set():
                event = Tick(n=n)
                with lock:
                    published.append(event.event_id)
                assert (await bus.publish_async(event)).ok
                n += 1

        asyncio.run(main())

    assert _run_threads(work) == []
    assert early_seen == {event_id: 1 for event_id in published}
    assert len(bus.subscriptions) == 61


# -- memory ----------------------------------------------------------------------------

WARMUP = 2_000
TOTAL = 20_000
BOUND = 100_000  # bytes of growth allowed between WARMUP and TOTAL events


def _growth(publish_some: c.Callable[[int], None], warmup: int = WARMUP, total: int = TOTAL) -> int:
    """Bytes still allocated after ``total`` events that were not after ``warmup`` events."""
    gc.collect()
    tracemalloc.start()
    try:
        publish_some(warmup)
        gc.collect()
        warm, _ = tracemalloc.get_traced_memory()
        publish_some(total - warmup)
        gc.collect()
        done, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return done - warm


def _memory_bus() -> tuple[EventBus, list[int]]:
    bus = EventBus()
    counter = [0]

    @bus.subscribe
    def on_tick(event: Tick) -> None:
        counter[0] += 1
        bus.publish(Tock(n=event.n))

    @bus.subscribe
    def on_tock(event: Tock) -> None:
        counter[0] += 1

    return bus, counter


def test_memory_stays_flat() -> None:
    bus, counter = _memory_bus()

    def publish_some(count: int) -> None:
        for n in range(count):
            bus.publish(Tick(n=n))

    growth = _growth(publish_some)
    assert counter[0] == 2 * TOTAL
    assert growth < BOUND, f"memory grew by {growth} bytes"


def test_memory_stays_flat_async() -> None:
    bus, counter = _memory_bus()

    @bus.subscribe
    async def on_tick_async(event: Tick) -> None:
        counter[0] += 1

    def publish_some(count: int) -> None:
        async def main() -> None:
            for n in range(count):
                await bus.publish_async(Tick(n=n))

        asyncio.run(main())

    growth = _growth(publish_some)
    assert counter[0] == 3 * TOTAL
    assert growth < BOUND, f"memory grew by {growth} bytes"


def test_memory_stays_flat_with_async_handler_on_sync_path() -> None:
    """Each publish() with an async handler makes and closes a private loop: none may leak."""
    bus = EventBus()
    counter = [0]

    @bus.subscribe
    async def on_tick(event: Tick) -> None:
        counter[0] += 1

    def publish_some(count: int) -> None:
        for n in range(count):
            bus.publish(Tick(n=n))

    # a loop per call is slow: a tenth of the events is plenty to see a leaked loop (KBs)
    growth = _growth(publish_some, WARMUP // 10, TOTAL // 10)
    assert counter[0] == TOTAL // 10
    assert growth < BOUND, f"memory grew by {growth} bytes"


def test_memory_of_failures_is_only_the_dead_letters() -> None:
    """Failed publishes keep their letters in the store, and nothing else."""
    bus = EventBus()

    @bus.subscribe
    def broken(event: Tick) -> None:
        raise ValueError("no")

    def publish_some(count: int) -> None:
        for n in range(count):
            bus.publish(Tick(n=n))
        bus.dead_letters.clear()  # type: ignore[attr-defined]

    # pytest keeps every captured log record: drop them here, so only the bus is measured
    logger = logging.getLogger("eventbus")
    drop_all = logging.Filter("no-such-logger")
    logger.addFilter(drop_all)
    try:  # formatting tracebacks is slow: a tenth of the events; a kept letter is KBs
        growth = _growth(publish_some, WARMUP // 10, TOTAL // 10)
    finally:
        logger.removeFilter(drop_all)
    assert len(bus.dead_letters) == 0
    assert growth < BOUND, f"memory grew by {growth} bytes"


class RacedChild(Event):
    n: int


def test_publish_racing_the_end_of_its_cascade_is_delivered_exactly_once() -> None:
    """A thread carrying a handler's context publishes while the top-level call finishes.

    Whichever side wins, the event is dispatched once: inside the cascade if it
    was still open, else as a top-level publish in that thread.
    """
    bus = EventBus()
    delivered: list[int] = []
    threads: list[threading.Thread] = []

    start = threading.Barrier(2)

    def publish_from_thread(event: RacedChild) -> None:
        start.wait()
        bus.publish(event)

    @bus.subscribe
    def on_tick(event: Tick) -> None:
        context = contextvars.copy_context()
        child = RacedChild(n=event.n)
        thread = threading.Thread(target=context.run, args=(publish_from_thread, child))
        threads.append(thread)
        thread.start()
        start.wait()  # both sides now race: this one to finish the cascade

    @bus.subscribe
    def on_child(event: RacedChild) -> None:
        delivered.append(event.n)

    rounds = 2000
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, to hit the race
    try:
        for n in range(rounds):
            bus.publish(Tick(n=n))
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert sorted(delivered) == list(range(rounds))
