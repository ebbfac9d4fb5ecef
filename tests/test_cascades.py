"""Cascades: events published from handlers are queued, ordered, linked by ids, and bounded."""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest

from eventbus import CascadeDepthError, Event, EventBus, PublishResult, SyncPublishError


class Root(Event):
    name: str = "root"


class Child(Event):
    name: str


class Grandchild(Event):
    name: str


class Ping(Event):
    n: int = 0


class Pong(Event):
    n: int = 0


class Other(Event):
    pass


# -- order -----------------------------------------------------------------------------


def _subscribe_tree(bus: EventBus, log: list[str], *, use_async: bool) -> None:
    """Root -> a, b (first handler), c (second handler); a -> a1, a2; b -> b1."""
    children = {"a": ["a1", "a2"], "b": ["b1"]}

    if use_async:

        @bus.subscribe
        async def root_first_async(event: Root) -> None:
            await bus.publish_async(Child(name="a"))
            bus.publish(Child(name="b"))  # either call queues from an async handler
            log.append("root_first done")

        @bus.subscribe
        async def root_second_async(event: Root) -> None:
            await bus.publish_async(Child(name="c"))
            log.append("root_second done")

        @bus.subscribe
        async def on_child_async(event: Child) -> None:
            log.append(event.name)
            for name in children.get(event.name, []):
                await bus.publish_async(Grandchild(name=name))

    else:

        @bus.subscribe
        def root_first(event: Root) -> None:
            bus.publish(Child(name="a"))
            bus.publish(Child(name="b"))
            log.append("root_first done")

        @bus.subscribe
        def root_second(event: Root) -> None:
            bus.publish(Child(name="c"))
            log.append("root_second done")

        @bus.subscribe
        def on_child(event: Child) -> None:
            log.append(event.name)
            for name in children.get(event.name, []):
                bus.publish(Grandchild(name=name))

    @bus.subscribe
    def on_grandchild(event: Grandchild) -> None:
        log.append(event.name)


EXPECTED_TREE_ORDER = ["root_first done", "root_second done", "a", "b", "c", "a1", "a2", "b1"]


@pytest.mark.parametrize("use_async", [False, True], ids=["sync_handlers", "async_handlers"])
def test_cascade_order_is_breadth_first(use_async: bool) -> None:
    bus = EventBus()
    log: list[str] = []
    _subscribe_tree(bus, log, use_async=use_async)
    result = bus.publish(Root())
    assert result.ok
    assert log == EXPECTED_TREE_ORDER


@pytest.mark.parametrize("use_async", [False, True], ids=["sync_handlers", "async_handlers"])
def test_cascade_order_is_breadth_first_async(use_async: bool) -> None:
    bus = EventBus()
    log: list[str] = []
    _subscribe_tree(bus, log, use_async=use_async)
    result = asyncio.run(bus.publish_async(Root()))
    assert result.ok
    assert log == EXPECTED_TREE_ORDER


def test_cascade_runs_within_the_top_level_call() -> None:
    bus = EventBus()
    log: list[str] = []

    @bus.subscribe
    def on_root(event: Root) -> None:
        bus.publish(Child(name="c"))

    @bus.subscribe
    def on_child(event: Child) -> None:
        log.append(event.name)

    bus.publish(Root())
    assert log == ["c"]  # dispatched before publish returned
    bus.publish(Root())
    assert log == ["c", "c"]


def test_concurrent_handlers_publish_into_the_cascade() -> None:
    bus = EventBus(concurrent=True)
    log: list[str] = []
    first_published = asyncio.Event()

    @bus.subscribe
    async def first(event: Root) -> None:
        await bus.publish_async(Child(name="from first"))
        first_published.set()

    @bus.subscribe
    async def second(event: Root) -> None:
        await first_published.wait()
        await bus.publish_async(Child(name="from second"))
        log.append("second done")

    @bus.subscribe
    def on_child(event: Child) -> None:
        log.append(event.name)

    async def main() -> PublishResult:
        return await asyncio.wait_for(bus.publish_async(Root()), timeout=10)

    assert asyncio.run(main()).ok
    assert log == ["second done", "from first", "from second"]


# -- the queued result -----------------------------------------------------------------


def test_publish_inside_handler_returns_queued_result() -> None:
    bus = EventBus()
    log: list[str] = []
    inner: list[tuple[Child, PublishResult]] = []

    @bus.subscribe
    def on_root(event: Root) -> None:
        child = Child(name="c")
        result = bus.publish(child)
        log.append("returned")
        assert isinstance(result, PublishResult)
        assert result.dead_letters == []
        inner.append((child, result))

    @bus.subscribe
    def on_child(event: Child) -> None:
        log.append("child handled")
        raise ValueError("child fails")

    root = Root()
    top = bus.publish(root)
    assert log == ["returned", "child handled"]
    [(child, result)] = inner
    # built inside the handler, the child took its ids when constructed: no copy was needed
    assert child.causation_id == root.event_id
    assert child.correlation_id == root.event_id
    assert result.event is child
    # filled in as the cascade went on, complete now
    assert not result.ok
    [letter] = result.dead_letters
    assert letter.event == result.event
    assert top.dead_letters == [letter]


def test_publish_async_inside_handler_returns_queued_result_async() -> None:
    bus = EventBus()
    log: list[str] = []
    inner: list[PublishResult] = []

    @bus.subscribe
    async def on_root(event: Root) -> None:
        result = await bus.publish_async(Child(name="c"))
        log.append("returned")
        inner.append(result)

    @bus.subscribe
    async def on_child(event: Child) -> None:
        log.append("child handled")
        raise ValueError("child fails")

    top = asyncio.run(bus.publish_async(Root()))
    assert log == ["returned", "child handled"]
    [result] = inner
    assert not result.ok
    assert top.dead_letters == result.dead_letters


# -- ids -------------------------------------------------------------------------------


def _record_cascade(bus: EventBus, delivered: list[Event], *, use_async: bool) -> None:
    if use_async:

        @bus.subscribe
        async def on_root_async(event: Root) -> None:
            await bus.publish_async(Child(name="c1"))
            await bus.publish_async(Child(name="c2"))

        @bus.subscribe
        async def on_child_async(event: Child) -> None:
            await bus.publish_async(Grandchild(name=event.name + "-g"))

    else:

        @bus.subscribe
        def on_root(event: Root) -> None:
            bus.publish(Child(name="c1"))
            bus.publish(Child(name="c2"))

        @bus.subscribe
        def on_child(event: Child) -> None:
            bus.publish(Grandchild(name=event.name + "-g"))

    bus.subscribe(Event)(delivered.append)


def _check_ids(delivered: list[Event], root: Root, correlation: uuid.UUID) -> None:
    assert [getattr(e, "name", None) for e in delivered] == ["root", "c1", "c2", "c1-g", "c2-g"]
    by_name = {getattr(e, "name", ""): e for e in delivered}
    assert by_name["root"] is root
    assert by_name["c1"].causation_id == root.event_id
    assert by_name["c2"].causation_id == root.event_id
    assert by_name["c1-g"].causation_id == by_name["c1"].event_id
    assert by_name["c2-g"].causation_id == by_name["c2"].event_id
    for name in ("c1", "c2", "c1-g", "c2-g"):
        assert by_name[name].correlation_id == correlation
    assert len({e.event_id for e in delivered}) == 5


@pytest.mark.parametrize("use_async", [False, True], ids=["sync_handlers", "async_handlers"])
def test_cascade_ids(use_async: bool) -> None:
    bus = EventBus()
    delivered: list[Event] = []
    _record_cascade(bus, delivered, use_async=use_async)
    root = Root()
    bus.publish(root)
    assert root.causation_id is None
    assert root.correlation_id is None
    _check_ids(delivered, root, root.event_id)


@pytest.mark.parametrize("use_async", [False, True], ids=["sync_handlers", "async_handlers"])
def test_cascade_ids_async(use_async: bool) -> None:
    bus = EventBus()
    delivered: list[Event] = []
    _record_cascade(bus, delivered, use_async=use_async)
    root = Root()
    asyncio.run(bus.publish_async(root))
    _check_ids(delivered, root, root.event_id)


def test_cascade_keeps_root_correlation_id() -> None:
    bus = EventBus()
    delivered: list[Event] = []
    _record_cascade(bus, delivered, use_async=False)
    request_id = uuid.uuid4()
    root = Root(correlation_id=request_id)
    bus.publish(root)
    _check_ids(delivered, root, request_id)


def test_cascade_keeps_root_correlation_id_async() -> None:
    bus = EventBus()
    delivered: list[Event] = []
    _record_cascade(bus, delivered, use_async=True)
    request_id = uuid.uuid4()
    root = Root(correlation_id=request_id)
    asyncio.run(bus.publish_async(root))
    _check_ids(delivered, root, request_id)


# -- dead letters across the cascade ---------------------------------------------------


def _failing_cascade(bus: EventBus) -> None:
    @bus.subscribe
    def on_root(event: Root) -> None:
        bus.publish(Child(name="c1"))
        bus.publish(Child(name="c2"))
        raise RuntimeError("root handler fails after publishing")

    @bus.subscribe
    async def on_child(event: Child) -> None:
        await bus.publish_async(Grandchild(name=event.name + "-g"))
        if event.name == "c1":
            raise RuntimeError("c1 fails")

    @bus.subscribe
    def on_grandchild(event: Grandchild) -> None:
        raise RuntimeError(f"{event.name} fails")


def _check_failing_cascade(top: PublishResult, bus: EventBus) -> None:
    messages = [letter.error_message for letter in top.dead_letters]
    assert messages == [
        "root handler fails after publishing",
        "c1 fails",
        "c1-g fails",
        "c2-g fails",
    ]
    assert list(bus.dead_letters) == top.dead_letters
    assert not top.ok


def test_root_result_holds_every_dead_letter_of_the_cascade() -> None:
    bus = EventBus()
    _failing_cascade(bus)
    top = bus.publish(Root())
    _check_failing_cascade(top, bus)


def test_root_result_holds_every_dead_letter_of_the_cascade_async() -> None:
    bus = EventBus()
    _failing_cascade(bus)
    top = asyncio.run(bus.publish_async(Root()))
    _check_failing_cascade(top, bus)


def test_child_result_holds_only_its_subtree() -> None:
    bus = EventBus()
    results: dict[str, PublishResult] = {}

    @bus.subscribe
    def on_root(event: Root) -> None:
        results["c1"] = bus.publish(Child(name="c1"))
        results["c2"] = bus.publish(Child(name="c2"))

    @bus.subscribe
    def on_child(event: Child) -> None:
        if event.name == "c1":
            results["c1-g"] = bus.publish(Grandchild(name="c1-g"))

    @bus.subscribe
    def on_grandchild(event: Grandchild) -> None:
        raise RuntimeError("grandchild fails")

    top = bus.publish(Root())
    [letter] = top.dead_letters
    assert results["c1"].dead_letters == [letter]
    assert results["c1-g"].dead_letters == [letter]
    assert results["c2"].ok


# -- depth limit -----------------------------------------------------------------------


def _always_republish(bus: EventBus, calls: list[int], *, use_async: bool) -> None:
    if use_async:

        @bus.subscribe
        async def again_async(event: Ping) -> None:
            calls.append(event.n)
            await bus.publish_async(Ping(n=event.n + 1))

    else:

        @bus.subscribe
        def again(event: Ping) -> None:
            calls.append(event.n)
            bus.publish(Ping(n=event.n + 1))


def _check_depth_stop(result: PublishResult, calls: list[int], limit: int) -> None:
    # generations 0..limit run; the one at the limit fails to publish generation limit+1
    assert calls == list(range(limit + 1))
    [letter] = result.dead_letters
    assert letter.error_type == "eventbus.errors.CascadeDepthError"
    assert f"max_cascade_depth={limit}" in letter.error_message
    assert f"generation {limit + 1}" in letter.error_message
    assert letter.handler.rsplit(".", 1)[-1] in ("again", "again_async")
    assert letter.event.n == limit  # type: ignore[attr-defined]


@pytest.mark.parametrize("limit", [1, 5, 32])
@pytest.mark.parametrize("use_async", [False, True], ids=["sync_handler", "async_handler"])
def test_depth_limit_stops_a_cycle(limit: int, use_async: bool) -> None:
    bus = EventBus() if limit == 32 else EventBus(max_cascade_depth=limit)
    calls: list[int] = []
    _always_republish(bus, calls, use_async=use_async)
    result = bus.publish(Ping())
    _check_depth_stop(result, calls, limit)


@pytest.mark.parametrize("limit", [1, 5, 32])
@pytest.mark.parametrize("use_async", [False, True], ids=["sync_handler", "async_handler"])
def test_depth_limit_stops_a_cycle_async(limit: int, use_async: bool) -> None:
    bus = EventBus() if limit == 32 else EventBus(max_cascade_depth=limit)
    calls: list[int] = []
    _always_republish(bus, calls, use_async=use_async)
    result = asyncio.run(bus.publish_async(Ping()))
    _check_depth_stop(result, calls, limit)


def test_depth_limit_ping_pong_names_the_chain() -> None:
    bus = EventBus(max_cascade_depth=4)

    @bus.subscribe
    def ping(event: Ping) -> None:
        bus.publish(Pong(n=event.n + 1))

    @bus.subscribe
    def pong(event: Pong) -> None:
        bus.publish(Ping(n=event.n + 1))

    result = bus.publish(Ping())
    [letter] = result.dead_letters
    assert letter.error_type == "eventbus.errors.CascadeDepthError"
    assert "Ping -> " in letter.error_message
    assert "Pong" in letter.error_message


def test_depth_error_is_raised_inside_the_handler() -> None:
    bus = EventBus(max_cascade_depth=2)
    caught: list[CascadeDepthError] = []

    @bus.subscribe
    def again(event: Ping) -> None:
        try:
            bus.publish(Ping(n=event.n + 1))
        except CascadeDepthError as error:
            caught.append(error)

    result = bus.publish(Ping())
    assert result.ok  # the handler handled it
    [error] = caught
    assert "max_cascade_depth=2" in str(error)


def test_depth_limit_allows_exactly_the_limit() -> None:
    bus = EventBus(max_cascade_depth=3)
    calls: list[int] = []

    @bus.subscribe
    def chain(event: Ping) -> None:
        calls.append(event.n)
        if event.n < 3:
            bus.publish(Ping(n=event.n + 1))

    assert bus.publish(Ping()).ok
    assert calls == [0, 1, 2, 3]


def test_depth_limit_is_per_top_level_publish() -> None:
    bus = EventBus(max_cascade_depth=2)
    calls: list[int] = []
    _always_republish(bus, calls, use_async=False)
    for _ in range(3):
        result = bus.publish(Ping())
        assert len(result.dead_letters) == 1
    assert calls == [0, 1, 2] * 3


def test_deep_cascade_does_not_recurse() -> None:
    """Depth is a queue, not a call stack: a huge limit neither recurses nor hangs."""
    bus = EventBus(max_cascade_depth=5_000)
    calls: list[int] = []

    @bus.subscribe
    def chain(event: Ping) -> None:
        calls.append(event.n)
        if event.n < 4_000:
            bus.publish(Ping(n=event.n + 1))

    assert bus.publish(Ping()).ok
    assert len(calls) == 4_001


@pytest.mark.parametrize("bad", [0, -1])
def test_depth_limit_must_be_positive(bad: int) -> None:
    with pytest.raises(ValueError, match="max_cascade_depth"):
        EventBus(max_cascade_depth=bad)


def test_depth_limit_must_be_int() -> None:
    with pytest.raises(TypeError, match="max_cascade_depth"):
        EventBus(max_cascade_depth=True)
    with pytest.raises(TypeError, match="max_cascade_depth"):
        EventBus(max_cascade_depth=2.5)  # type: ignore[arg-type]


# -- nested paths ----------------------------------------------------------------------


def test_sync_handler_publishing_inside_publish_async() -> None:
    """A sync handler calls publish() inside a running loop: queued, and its async
    handlers are awaited on the caller's loop (no SyncPublishError)."""
    bus = EventBus()
    log: list[str] = []
    loops: list[asyncio.AbstractEventLoop] = []

    @bus.subscribe
    def on_root(event: Root) -> None:
        result = bus.publish(Child(name="c"))
        assert isinstance(result, PublishResult)
        log.append("queued")

    @bus.subscribe
    async def on_child(event: Child) -> None:
        loops.append(asyncio.get_running_loop())
        await asyncio.sleep(0)
        log.append(event.name)

    async def main() -> tuple[PublishResult, asyncio.AbstractEventLoop]:
        return await bus.publish_async(Root()), asyncio.get_running_loop()

    result, loop = asyncio.run(main())
    assert result.ok
    assert log == ["queued", "c"]
    assert loops == [loop]


def test_async_handler_publishing_inside_sync_publish() -> None:
    """An async handler on publish()'s private loop calls publish_async(): queued,
    dispatched by the sync path after the current event's handlers."""
    bus = EventBus()
    log: list[str] = []

    @bus.subscribe
    async def on_root(event: Root) -> None:
        result = await bus.publish_async(Child(name="via publish_async"))
        assert isinstance(result, PublishResult)
        bus.publish(Child(name="via publish"))
        log.append("queued")

    @bus.subscribe
    def on_child(event: Child) -> None:
        log.append(event.name)

    @bus.subscribe
    async def on_child_async(event: Child) -> None:
        log.append("async " + event.name)

    assert bus.publish(Root()).ok
    assert log == [
        "queued",
        "via publish_async",
        "async via publish_async",
        "via publish",
        "async via publish",
    ]


def test_run_in_thread_handler_publishing_joins_the_cascade() -> None:
    bus = EventBus()
    log: list[str] = []
    delivered: list[Child] = []

    @bus.subscribe(run_in_thread=True)
    def in_worker(event: Root) -> None:
        bus.publish(Child(name="from worker"))
        log.append("worker done")

    @bus.subscribe
    def on_child(event: Child) -> None:
        delivered.append(event)
        log.append(event.name)

    root = Root()
    assert asyncio.run(bus.publish_async(root)).ok
    assert log == ["worker done", "from worker"]
    assert delivered[0].causation_id == root.event_id


def test_thread_started_by_a_handler_publishes_top_level() -> None:
    bus = EventBus()
    log: list[str] = []
    delivered: list[Child] = []

    @bus.subscribe
    def on_root(event: Root) -> None:
        thread = threading.Thread(target=bus.publish, args=(Child(name="from thread"),))
        thread.start()
        thread.join()
        log.append("root handler done")

    @bus.subscribe
    def on_child(event: Child) -> None:
        delivered.append(event)
        log.append(event.name)

    root = Root()
    bus.publish(root)
    # delivered at once, as a top-level publish (not queued behind the root handler) ...
    assert log == ["from thread", "root handler done"]
    # ... of an event that, built inside the handler, names the event it came from
    assert delivered[0].causation_id == root.event_id


def test_publish_to_another_bus_is_not_queued() -> None:
    bus, other_bus = EventBus(), EventBus()
    log: list[str] = []

    @bus.subscribe
    def on_root(event: Root) -> None:
        other_bus.publish(Other())
        log.append("root handler done")

    @other_bus.subscribe
    def on_other(event: Other) -> None:
        log.append("other bus")

    bus.publish(Root())
    assert log == ["other bus", "root handler done"]


def test_async_child_handler_in_sync_cascade_inside_running_loop() -> None:
    """publish() inside a loop with only sync root handlers: a child's async handler
    cannot run, so it is dead-lettered (never silently skipped) and the rest goes on."""
    bus = EventBus()
    log: list[str] = []

    @bus.subscribe
    def on_root(event: Root) -> None:
        bus.publish(Child(name="c"))

    @bus.subscribe
    async def on_child_async(event: Child) -> None:
        log.append("async ran")  # pragma: no cover - must not run

    @bus.subscribe
    def on_child(event: Child) -> None:
        log.append("sync ran")

    async def main() -> PublishResult:
        return bus.publish(Root())

    result = asyncio.run(main())
    assert log == ["sync ran"]
    [letter] = result.dead_letters
    assert letter.attempts == 0
    assert letter.error_type.endswith("SyncPublishError")
    assert letter.error_type == f"{SyncPublishError.__module__}.SyncPublishError"
    assert "publish_async" in letter.error_message
    assert letter.handler.endswith("on_child_async")
    assert list(bus.dead_letters) == [letter]


# -- tasks left running ----------------------------------------------------------------


def test_task_left_running_publishes_top_level_after_return_async() -> None:
    bus = EventBus()
    delivered: list[Child] = []
    late_results: list[PublishResult] = []

    async def main() -> None:
        gate = asyncio.Event()
        tasks: list[asyncio.Task[None]] = []

        @bus.subscribe
        async def on_root(event: Root) -> None:
            async def later() -> None:
                await gate.wait()
                late_results.append(await bus.publish_async(Child(name="late")))

            tasks.append(asyncio.create_task(later()))

        @bus.subscribe
        def on_child(event: Child) -> None:
            delivered.append(event)

        result = await bus.publish_async(Root())
        assert result.ok
        assert delivered == []
        gate.set()
        await tasks[0]

    asyncio.run(main())
    [child] = delivered  # not lost
    [late] = late_results
    assert late.event is child  # a top-level publish: the event itself, as published
    assert late.ok


def test_task_left_running_sync_publish_after_return_async() -> None:
    bus = EventBus()
    delivered: list[Child] = []

    async def main() -> None:
        gate = asyncio.Event()
        tasks: list[asyncio.Task[None]] = []

        @bus.subscribe
        async def on_root(event: Root) -> None:
            async def later() -> None:
                await gate.wait()
                bus.publish(Child(name="late"))

            tasks.append(asyncio.create_task(later()))

        @bus.subscribe
        def on_child(event: Child) -> None:
            delivered.append(event)

        await bus.publish_async(Root())
        gate.set()
        await tasks[0]

    asyncio.run(main())
    assert [c.name for c in delivered] == ["late"]


def test_task_left_running_after_a_deep_cascade_is_not_refused_async() -> None:
    """BUG: a task left running by an async handler, publishing after the top-level call
    returned, should be a top-level publish of its own. But the closed cascade still
    checks the depth against the last event it dispatched, so after a cascade that
    reached max_cascade_depth the late publish raises CascadeDepthError instead (with
    a chain naming events that did not cause it)."""
    bus = EventBus(max_cascade_depth=1)
    delivered: list[str] = []
    errors: list[BaseException] = []

    async def main() -> None:
        gate = asyncio.Event()
        tasks: list[asyncio.Task[None]] = []

        @bus.subscribe
        async def on_root(event: Root) -> None:
            async def later() -> None:
                await gate.wait()
                try:
                    await bus.publish_async(Other())
                except CascadeDepthError as error:
                    errors.append(error)

            tasks.append(asyncio.create_task(later()))
            await bus.publish_async(Child(name="c"))  # generation 1: the limit, allowed

        @bus.subscribe
        def on_child(event: Child) -> None:
            delivered.append(event.name)

        @bus.subscribe
        def on_other(event: Other) -> None:
            delivered.append("other")

        assert (await bus.publish_async(Root())).ok
        gate.set()
        await tasks[0]

    asyncio.run(main())
    assert errors == []
    assert delivered == ["c", "other"]


def test_task_left_running_by_sync_publish_is_cancelled_when_it_returns() -> None:
    """Documented: publish()'s private loop closes with the call; a task an async handler
    left running there is cancelled, not run later on some other loop."""
    bus = EventBus()
    tasks: list[asyncio.Task[None]] = []
    log: list[str] = []

    @bus.subscribe
    async def on_root(event: Root) -> None:
        async def forever() -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                log.append("cancelled")
                raise

        tasks.append(asyncio.create_task(forever()))
        await asyncio.sleep(0)  # let it start

    assert bus.publish(Root()).ok
    [task] = tasks
    assert task.cancelled()
    assert log == ["cancelled"]


def test_task_started_by_a_handler_publishes_as_a_child_of_that_handlers_event_async() -> None:
    """Causation follows the event whose handler started the task, not whatever runs later."""
    bus = EventBus()
    gate = asyncio.Event()
    seen: dict[str, Event] = {}
    tasks: list[asyncio.Task[None]] = []

    async def later() -> None:
        await gate.wait()
        await bus.publish_async(Other())

    @bus.subscribe
    async def on_root(event: Root) -> None:
        tasks.append(asyncio.create_task(later()))
        await bus.publish_async(Child(name="b"))

    @bus.subscribe
    async def on_child(event: Child) -> None:
        gate.set()
        await asyncio.sleep(0)  # let the task publish while Child is being dispatched
        await asyncio.sleep(0)

    @bus.subscribe
    def on_other(event: Other) -> None:
        seen["other"] = event

    async def main() -> Root:
        root = Root()
        await bus.publish_async(root)
        await asyncio.gather(*tasks)
        return root

    root = asyncio.run(main())
    assert seen["other"].causation_id == root.event_id
    assert seen["other"].correlation_id == root.event_id


def test_async_handlers_in_sync_publish_see_their_own_event_as_the_cause() -> None:
    """The private loop's context is refreshed per handler, so ids stay right down a cascade."""
    bus = EventBus()
    children: list[Event] = []

    @bus.subscribe
    async def on_root(event: Root) -> None:
        await bus.publish_async(Child(name="c"))

    @bus.subscribe
    async def on_child(event: Child) -> None:
        await bus.publish_async(Grandchild(name="g"))

    @bus.subscribe
    def record(event: Child | Grandchild) -> None:
        children.append(event)

    root = Root()
    bus.publish(root)
    child, grandchild = children
    assert child.causation_id == root.event_id
    assert grandchild.causation_id == child.event_id
    assert grandchild.correlation_id == root.event_id


def test_explicit_causation_keeps_it_and_still_gets_a_correlation_id() -> None:
    bus = EventBus()
    explicit = uuid.uuid4()
    seen: list[Child] = []

    @bus.subscribe
    def on_root(event: Root) -> None:
        bus.publish(Child(name="c", causation_id=explicit))

    bus.subscribe(Child)(seen.append)
    root = Root()
    bus.publish(root)
    [child] = seen
    assert child.causation_id == explicit
    assert child.correlation_id == root.event_id
