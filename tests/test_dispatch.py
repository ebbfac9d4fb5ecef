"""Dispatch: the four sync/async combinations, threads, concurrency, order and results.

Each test of the sync path (``bus.publish``) has an ``_async`` twin
(``await bus.publish_async``) wherever the two paths differ.
"""

from __future__ import annotations

import asyncio
import gc
import threading

import pytest

from eventbus import DeadLetter, Event, EventBus, PublishResult, SyncPublishError


class Placed(Event):
    order_id: str = "o1"


class PriorityPlaced(Placed):
    pass


class Shipped(Event):
    order_id: str = "o1"


# -- sync handler ----------------------------------------------------------------------


def test_publish_calls_sync_handler_in_this_thread() -> None:
    bus = EventBus()
    calls: list[tuple[Placed, int]] = []

    @bus.subscribe
    def on_placed(event: Placed) -> None:
        calls.append((event, threading.get_ident()))

    event = Placed()
    bus.publish(event)
    assert calls == [(event, threading.get_ident())]


def test_publish_calls_sync_handler_inside_running_loop() -> None:
    bus = EventBus()
    calls: list[Placed] = []

    @bus.subscribe
    def on_placed(event: Placed) -> None:
        calls.append(event)

    event = Placed()

    async def main() -> PublishResult:
        return bus.publish(event)  # only sync handlers: fine inside a loop

    result = asyncio.run(main())
    assert calls == [event]
    assert result.ok


def test_publish_async_calls_sync_handler_inline() -> None:
    bus = EventBus()
    calls: list[tuple[Placed, int, bool]] = []

    @bus.subscribe
    def on_placed(event: Placed) -> None:
        running = asyncio.get_running_loop().is_running()
        calls.append((event, threading.get_ident(), running))

    event = Placed()
    asyncio.run(bus.publish_async(event))
    assert calls == [(event, threading.get_ident(), True)]


# -- async handler ---------------------------------------------------------------------


def test_publish_runs_async_handler_to_completion_without_loop() -> None:
    bus = EventBus()
    steps: list[str] = []
    loops: list[asyncio.AbstractEventLoop] = []

    @bus.subscribe
    async def on_placed(event: Placed) -> None:
        loops.append(asyncio.get_running_loop())
        steps.append("start")
        await asyncio.sleep(0)
        steps.append("end")

    @bus.subscribe
    def after(event: Placed) -> None:
        steps.append("after")

    result = bus.publish(Placed())
    assert result.ok
    assert steps == ["start", "end", "after"]  # run to completion before the next handler
    [loop] = loops
    assert loop.is_closed()  # the private loop does not outlive the call


def test_async_handlers_of_one_publish_share_its_private_loop() -> None:
    bus = EventBus()
    loops: list[asyncio.AbstractEventLoop] = []

    @bus.subscribe
    async def first(event: Placed) -> None:
        loops.append(asyncio.get_running_loop())

    @bus.subscribe
    async def second(event: Placed) -> None:
        loops.append(asyncio.get_running_loop())

    bus.publish(Placed())
    bus.publish(Placed())
    assert len(loops) == 4
    assert loops[0] is loops[1]
    assert all(loop.is_closed() for loop in loops)


def test_publish_refuses_async_handler_inside_running_loop() -> None:
    bus = EventBus()
    calls: list[str] = []

    @bus.subscribe(priority=10)
    def sync_first(event: Placed) -> None:
        calls.append("sync_first")

    @bus.subscribe
    async def on_placed(event: Placed) -> None:
        calls.append("on_placed")

    async def main() -> None:
        with pytest.raises(SyncPublishError, match="publish_async") as caught:
            bus.publish(Placed())
        assert "on_placed" in str(caught.value)

    asyncio.run(main())
    assert calls == []  # refused before any handler ran
    assert len(bus.dead_letters) == 0
    assert isinstance(SyncPublishError("x"), RuntimeError)


def test_publish_async_awaits_async_handler() -> None:
    bus = EventBus()
    steps: list[str] = []

    @bus.subscribe
    async def on_placed(event: Placed) -> None:
        steps.append("start")
        await asyncio.sleep(0)
        steps.append("end")

    @bus.subscribe
    def after(event: Placed) -> None:
        steps.append("after")

    asyncio.run(bus.publish_async(Placed()))
    assert steps == ["start", "end", "after"]


def test_publish_async_runs_async_handler_on_callers_loop() -> None:
    bus = EventBus()
    loops: list[asyncio.AbstractEventLoop] = []

    @bus.subscribe
    async def on_placed(event: Placed) -> None:
        loops.append(asyncio.get_running_loop())

    async def main() -> asyncio.AbstractEventLoop:
        await bus.publish_async(Placed())
        return asyncio.get_running_loop()

    caller_loop = asyncio.run(main())
    assert loops == [caller_loop]


def test_publish_mixed_handlers_from_a_thread_with_a_loop_elsewhere() -> None:
    """A loop running in another thread does not stop a sync publish here."""
    bus = EventBus()
    calls: list[str] = []

    @bus.subscribe
    async def on_placed(event: Placed) -> None:
        calls.append("async")

    errors: list[BaseException] = []

    def worker() -> None:
        try:
            bus.publish(Placed())
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    async def main() -> None:
        thread = threading.Thread(target=worker)
        thread.start()
        await asyncio.to_thread(thread.join)

    asyncio.run(main())
    assert errors == []
    assert calls == ["async"]


# -- run_in_thread ---------------------------------------------------------------------


def test_run_in_thread_handler_runs_in_worker_thread_async() -> None:
    bus = EventBus()
    threads: list[int] = []

    @bus.subscribe(run_in_thread=True)
    def blocking(event: Placed) -> None:
        threads.append(threading.get_ident())

    @bus.subscribe
    def inline(event: Placed) -> None:
        threads.append(threading.get_ident())

    asyncio.run(bus.publish_async(Placed()))
    assert len(threads) == 2
    assert threads[0] != threading.get_ident()
    assert threads[1] == threading.get_ident()


def test_run_in_thread_handler_is_called_directly_by_sync_publish() -> None:
    bus = EventBus()
    threads: list[int] = []

    @bus.subscribe(run_in_thread=True)
    def blocking(event: Placed) -> None:
        threads.append(threading.get_ident())

    bus.publish(Placed())
    assert threads == [threading.get_ident()]


def test_run_in_thread_does_not_block_the_loop() -> None:
    """While the worker thread blocks, the loop keeps running other tasks."""
    bus = EventBus()
    release = threading.Event()
    seen: list[str] = []

    @bus.subscribe(run_in_thread=True)
    def blocking(event: Placed) -> None:
        assert release.wait(timeout=10)
        seen.append("blocking")

    async def main() -> None:
        async def unblock() -> None:
            seen.append("loop alive")
            release.set()

        task = asyncio.create_task(unblock())
        await bus.publish_async(Placed())
        await task

    asyncio.run(main())
    assert seen == ["loop alive", "blocking"]


def test_run_in_thread_rejected_for_async_handler() -> None:
    bus = EventBus()

    async def on_placed(event: Placed) -> None:
        pass

    with pytest.raises(TypeError, match="run_in_thread"):
        bus.subscribe(run_in_thread=True)(on_placed)


# -- concurrent mode -------------------------------------------------------------------


def test_concurrent_mode_runs_equal_priorities_together() -> None:
    bus = EventBus(concurrent=True)
    a_started = asyncio.Event()
    b_started = asyncio.Event()
    log: list[str] = []

    @bus.subscribe(priority=5)
    async def before(event: Placed) -> None:
        assert not a_started.is_set()
        assert not b_started.is_set()
        log.append("before")

    @bus.subscribe
    async def a(event: Placed) -> None:
        a_started.set()
        await b_started.wait()  # would never return if a and b ran one after another
        log.append("a")

    @bus.subscribe
    async def b(event: Placed) -> None:
        b_started.set()
        await a_started.wait()
        log.append("b")

    @bus.subscribe(priority=-5)
    async def after(event: Placed) -> None:
        log.append("after")

    async def main() -> PublishResult:
        return await asyncio.wait_for(bus.publish_async(Placed()), timeout=10)

    result = asyncio.run(main())
    assert result.ok
    assert log[0] == "before"
    assert sorted(log[1:3]) == ["a", "b"]
    assert log[3] == "after"


def test_concurrent_mode_overlaps_run_in_thread_with_async() -> None:
    bus = EventBus(concurrent=True)
    thread_started = threading.Event()
    loop_side_done = threading.Event()
    log: list[str] = []

    @bus.subscribe(run_in_thread=True)
    def in_thread(event: Placed) -> None:
        thread_started.set()
        assert loop_side_done.wait(timeout=10)
        log.append("thread")

    @bus.subscribe
    async def on_loop(event: Placed) -> None:
        # the worker thread is running while this coroutine runs
        await asyncio.to_thread(thread_started.wait, 10)
        loop_side_done.set()
        log.append("loop")

    result = asyncio.run(bus.publish_async(Placed()))
    assert result.ok
    assert sorted(log) == ["loop", "thread"]


def test_concurrent_mode_isolates_failures() -> None:
    bus = EventBus(concurrent=True)
    log: list[str] = []

    @bus.subscribe
    async def fails(event: Placed) -> None:
        raise ValueError("boom")

    @bus.subscribe
    async def works(event: Placed) -> None:
        await asyncio.sleep(0)
        log.append("works")

    @bus.subscribe
    def sync_works(event: Placed) -> None:
        log.append("sync_works")

    result = asyncio.run(bus.publish_async(Placed()))
    assert sorted(log) == ["sync_works", "works"]
    [letter] = result.dead_letters
    assert letter.handler.endswith("fails")


def test_default_mode_is_sequential_async() -> None:
    bus = EventBus()
    log: list[str] = []

    @bus.subscribe
    async def first(event: Placed) -> None:
        log.append("first start")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        log.append("first end")

    @bus.subscribe
    async def second(event: Placed) -> None:
        log.append("second")

    asyncio.run(bus.publish_async(Placed()))
    assert log == ["first start", "first end", "second"]


def test_concurrent_mode_does_not_affect_sync_publish() -> None:
    bus = EventBus(concurrent=True)
    log: list[str] = []

    @bus.subscribe
    async def first(event: Placed) -> None:
        log.append("first start")
        await asyncio.sleep(0)
        log.append("first end")

    @bus.subscribe
    async def second(event: Placed) -> None:
        log.append("second")

    bus.publish(Placed())
    assert log == ["first start", "first end", "second"]


# -- ordering and hierarchy ------------------------------------------------------------


def _subscribe_ordered(bus: EventBus, log: list[str]) -> None:
    @bus.subscribe
    def first_registered(event: Placed) -> None:
        log.append("first_registered")

    @bus.subscribe(priority=-5)
    async def last(event: Event) -> None:
        log.append("last")

    @bus.subscribe(priority=10)
    def urgent(event: PriorityPlaced) -> None:
        log.append("urgent")

    @bus.subscribe
    async def second_registered(event: Event) -> None:
        log.append("second_registered")

    @bus.subscribe(priority=10)
    def urgent_too(event: Placed) -> None:
        log.append("urgent_too")

    @bus.subscribe(priority=100)
    def unrelated(event: Shipped) -> None:
        log.append("unrelated")


EXPECTED_ORDER = ["urgent", "urgent_too", "first_registered", "second_registered", "last"]


def test_order_priority_then_registration() -> None:
    bus = EventBus()
    log: list[str] = []
    _subscribe_ordered(bus, log)
    bus.publish(PriorityPlaced())
    assert log == EXPECTED_ORDER


def test_order_priority_then_registration_async() -> None:
    bus = EventBus()
    log: list[str] = []
    _subscribe_ordered(bus, log)
    asyncio.run(bus.publish_async(PriorityPlaced()))
    assert log == EXPECTED_ORDER


def test_order_is_recomputed_after_subscribe() -> None:
    bus = EventBus()
    log: list[str] = []

    @bus.subscribe
    def low(event: Placed) -> None:
        log.append("low")

    bus.publish(Placed())

    @bus.subscribe(priority=1)
    def high(event: Placed) -> None:
        log.append("high")

    bus.publish(Placed())
    bus.unsubscribe(low)
    bus.publish(Placed())
    assert log == ["low", "high", "low", "high"]


@pytest.mark.parametrize("path", ["publish", "publish_async"])
def test_hierarchy_delivery(path: str) -> None:
    bus = EventBus()
    got: dict[str, list[str]] = {"event": [], "placed": [], "priority": [], "shipped": []}

    @bus.subscribe
    def on_event(event: Event) -> None:
        got["event"].append(type(event).__name__)

    @bus.subscribe
    def on_placed(event: Placed) -> None:
        got["placed"].append(type(event).__name__)

    @bus.subscribe
    async def on_priority(event: PriorityPlaced) -> None:
        got["priority"].append(type(event).__name__)

    @bus.subscribe
    async def on_shipped(event: Shipped) -> None:
        got["shipped"].append(type(event).__name__)

    events: list[Event] = [Placed(), PriorityPlaced(), Shipped()]
    if path == "publish":
        for event in events:
            bus.publish(event)
    else:

        async def main() -> None:
            for event in events:
                await bus.publish_async(event)

        asyncio.run(main())
    assert got == {
        "event": ["Placed", "PriorityPlaced", "Shipped"],
        "placed": ["Placed", "PriorityPlaced"],
        "priority": ["PriorityPlaced"],
        "shipped": ["Shipped"],
    }


def test_union_annotation_delivers_once() -> None:
    bus = EventBus()
    got: list[str] = []

    @bus.subscribe
    def on_either(event: Placed | PriorityPlaced) -> None:
        got.append(type(event).__name__)

    bus.publish(PriorityPlaced())
    asyncio.run(bus.publish_async(PriorityPlaced()))
    assert got == ["PriorityPlaced", "PriorityPlaced"]


def test_publish_without_handlers() -> None:
    bus = EventBus()
    result = bus.publish(Shipped())
    assert result.ok
    assert result.dead_letters == []
    result = asyncio.run(bus.publish_async(Shipped()))
    assert result.ok


# -- what may be published -------------------------------------------------------------


@pytest.mark.parametrize("payload", [{"order_id": "o1"}, "Placed", None, 42, Placed], ids=repr)
def test_publish_non_event_raises_type_error(payload: object) -> None:
    bus = EventBus()
    calls: list[Event] = []
    bus.subscribe(Event)(calls.append)
    with pytest.raises(TypeError, match="only Event instances"):
        bus.publish(payload)  # type: ignore[arg-type]
    assert calls == []


@pytest.mark.parametrize("payload", [{"order_id": "o1"}, "Placed", None, 42, Placed], ids=repr)
def test_publish_non_event_raises_type_error_async(payload: object) -> None:
    bus = EventBus()
    calls: list[Event] = []
    bus.subscribe(Event)(calls.append)
    with pytest.raises(TypeError, match="only Event instances"):
        asyncio.run(bus.publish_async(payload))  # type: ignore[arg-type]
    assert calls == []


def test_publish_non_event_from_handler_fails_that_handler() -> None:
    bus = EventBus()

    @bus.subscribe
    def on_placed(event: Placed) -> None:
        bus.publish("not an event")  # type: ignore[arg-type]

    result = bus.publish(Placed())
    [letter] = result.dead_letters
    assert letter.error_type == "builtins.TypeError"


# -- sync handlers returning awaitables ------------------------------------------------


async def _coroutine_for(event: Placed) -> None:
    pass  # pragma: no cover - never awaited: the bus refuses it


def test_sync_handler_returning_coroutine_is_dead_lettered() -> None:
    bus = EventBus()

    def disguised(event: Placed) -> object:  # a coroutine behind a sync function
        return _coroutine_for(event)

    bus.subscribe(Placed)(disguised)
    result = bus.publish(Placed())
    gc.collect()  # a leaked coroutine would warn "never awaited" here (warnings are errors)
    [letter] = result.dead_letters
    assert letter.error_type == "builtins.TypeError"
    assert "async def" in letter.error_message
    assert letter.attempts == 1


def test_sync_handler_returning_coroutine_is_dead_lettered_async() -> None:
    bus = EventBus()

    def disguised(event: Placed) -> object:
        return _coroutine_for(event)

    bus.subscribe(Placed)(disguised)
    result = asyncio.run(bus.publish_async(Placed()))
    gc.collect()
    [letter] = result.dead_letters
    assert letter.error_type == "builtins.TypeError"
    assert "async def" in letter.error_message


def test_run_in_thread_handler_returning_coroutine_is_dead_lettered_async() -> None:
    bus = EventBus()

    def disguised(event: Placed) -> object:
        return _coroutine_for(event)

    bus.subscribe(Placed, run_in_thread=True)(disguised)
    result = asyncio.run(bus.publish_async(Placed()))
    gc.collect()
    [letter] = result.dead_letters
    assert "async def" in letter.error_message


def test_sync_handler_returning_a_value_is_fine() -> None:
    bus = EventBus()

    def returns_value(event: Placed) -> int:
        return 42

    bus.subscribe(Placed)(returns_value)
    assert bus.publish(Placed()).ok
    assert asyncio.run(bus.publish_async(Placed())).ok


def test_async_callable_instance_is_awaited() -> None:
    bus = EventBus()
    seen: list[Placed] = []

    class Handler:
        async def __call__(self, event: Placed) -> None:
            await asyncio.sleep(0)
            seen.append(event)

    bus.subscribe(Placed)(Handler())
    first, second = Placed(), Placed()
    assert bus.publish(first).ok
    assert asyncio.run(bus.publish_async(second)).ok
    assert seen == [first, second]


# -- PublishResult ---------------------------------------------------------------------


def test_publish_result_fields() -> None:
    bus = EventBus()

    @bus.subscribe
    def fine(event: Placed) -> None:
        pass

    event = Placed()
    result = bus.publish(event)
    assert isinstance(result, PublishResult)
    assert result.event is event
    assert result.ok is True
    assert result.dead_letters == []
    assert "ok=True" in repr(result)


def test_publish_result_fields_async() -> None:
    bus = EventBus()

    @bus.subscribe
    async def fine(event: Placed) -> None:
        pass

    event = Placed()
    result = asyncio.run(bus.publish_async(event))
    assert isinstance(result, PublishResult)
    assert result.event is event
    assert result.ok is True
    assert result.dead_letters == []


def test_publish_result_with_failure() -> None:
    bus = EventBus()

    @bus.subscribe
    def broken(event: Placed) -> None:
        raise ValueError("nope")

    event = Placed()
    result = bus.publish(event)
    assert result.ok is False
    [letter] = result.dead_letters
    assert isinstance(letter, DeadLetter)
    assert letter.event is event
    assert "ok=False" in repr(result)
    assert "dead_letters=1" in repr(result)


def test_publish_result_with_failure_async() -> None:
    bus = EventBus()

    @bus.subscribe
    async def broken(event: Placed) -> None:
        raise ValueError("nope")

    event = Placed()
    result = asyncio.run(bus.publish_async(event))
    assert result.ok is False
    [letter] = result.dead_letters
    assert letter.event is event


def test_each_publish_has_its_own_result() -> None:
    bus = EventBus()

    @bus.subscribe
    def broken(event: Placed) -> None:
        raise ValueError("nope")

    first = bus.publish(Placed())
    second = bus.publish(Placed())
    assert len(first.dead_letters) == 1
    assert len(second.dead_letters) == 1
    assert first.dead_letters[0] is not second.dead_letters[0]
    assert len(bus.dead_letters) == 2


class Abort(BaseException):
    """Not a handler failure: escapes the bus (as cancellation or SystemExit would)."""


def test_concurrent_group_is_cancelled_together_when_one_handler_escapes_async() -> None:
    """A BaseException out of one concurrent handler cancels its siblings, never orphans them."""
    bus = EventBus(concurrent=True)
    outcome: list[str] = []
    never = asyncio.Event()

    @bus.subscribe
    async def escapes(event: Placed) -> None:
        await asyncio.sleep(0)
        raise Abort

    @bus.subscribe
    async def waits_forever(event: Placed) -> None:
        try:
            await never.wait()
        except asyncio.CancelledError:
            outcome.append("sibling cancelled")
            raise

    async def main() -> None:
        with pytest.raises(Abort):
            await bus.publish_async(Placed(order_id="o1"))
        await asyncio.sleep(0)  # let the cancellation be delivered
        assert outcome == ["sibling cancelled"]

    asyncio.run(main())
