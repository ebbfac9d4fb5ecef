"""Properties (hypothesis) of dispatch: order, nothing lost, cascade order, retry counts.

Every property runs on the sync path (``bus.publish``) and on the async path
(``await bus.publish_async``), with a fresh bus per example, and in each of the
``hooks`` variants (conftest.py): no hook receivers (the bus's fast paths),
receivers for the bus, receivers for another bus.
"""

from __future__ import annotations

import asyncio
import collections
import collections.abc as c
import itertools
import typing as t
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventbus import Event, EventBus, PublishResult, RetryPolicy
from tests.clocks import TestClock

if t.TYPE_CHECKING:
    from tests.conftest import Hooks


class Base(Event):
    n: int = 0


class Mid(Base):
    pass


class Leaf(Mid):
    pass


class Node(Event):
    node: int


CLASSES: tuple[type[Base], ...] = (Base, Mid, Leaf)
MODES = ["sync", "async"]
Mode = t.Literal["sync", "async", "concurrent"]
Kind = t.Literal["sync", "async", "thread"]


def _publish(bus: EventBus, event: Event, mode: str) -> PublishResult:
    if mode == "sync":
        return bus.publish(event)
    return asyncio.run(bus.publish_async(event))


def _handler(kind: Kind, body: c.Callable[[Base], None], name: str) -> c.Callable[[Base], object]:
    """A sync or async handler running ``body``, named ``name`` in dead letters."""
    if kind == "async":

        async def async_handler(event: Base) -> None:
            body(event)

        handler: c.Callable[[Base], object] = async_handler
    else:

        def sync_handler(event: Base) -> None:
            body(event)

        handler = sync_handler
    handler.__qualname__ = name
    return handler


# -- (a) delivery order ----------------------------------------------------------------

subscriptions = st.lists(
    st.tuples(
        st.integers(min_value=-3, max_value=3),  # priority
        st.sampled_from(CLASSES),  # the class subscribed to
        st.sampled_from(["sync", "async", "thread"]),  # handler kind
    ),
    max_size=12,
)


def _order_example(
    subs: list[tuple[int, type[Base], Kind]], published: type[Base], mode: Mode, hooks: Hooks
) -> tuple[list[int], list[int]]:
    bus = EventBus(concurrent=mode == "concurrent")
    log: list[int] = []

    def record(index: int) -> c.Callable[[Base], None]:
        return lambda event: log.append(index)

    for index, (priority, event_class, kind) in enumerate(subs):
        handler = _handler(kind, record(index), f"h{index}")
        bus.subscribe(event_class, priority=priority, run_in_thread=kind == "thread")(handler)
    with hooks.attach(bus):
        result = _publish(bus, published(), "sync" if mode == "sync" else "async")
    assert result.ok
    expected = [
        index
        for index, (_, event_class, _) in sorted(
            enumerate(subs), key=lambda item: (-item[1][0], item[0])
        )
        if issubclass(published, event_class)
    ]
    return log, expected


@given(subs=subscriptions, published=st.sampled_from(CLASSES))
def test_delivery_order(
    subs: list[tuple[int, type[Base], Kind]], published: type[Base], hooks: Hooks
) -> None:
    log, expected = _order_example(subs, published, "sync", hooks)
    assert log == expected


@given(subs=subscriptions, published=st.sampled_from(CLASSES))
def test_delivery_order_async(
    subs: list[tuple[int, type[Base], Kind]], published: type[Base], hooks: Hooks
) -> None:
    log, expected = _order_example(subs, published, "async", hooks)
    assert log == expected


@given(subs=subscriptions, published=st.sampled_from(CLASSES))
def test_delivery_order_concurrent_async(
    subs: list[tuple[int, type[Base], Kind]], published: type[Base], hooks: Hooks
) -> None:
    """Concurrent mode: priority groups in order; within a group, any order."""
    log, expected = _order_example(subs, published, "concurrent", hooks)
    priority = {index: subs[index][0] for index in expected}
    assert sorted(log) == sorted(expected)
    assert [priority[i] for i in log] == [priority[i] for i in expected]


# -- (b) nothing lost ------------------------------------------------------------------

handler_specs = st.lists(
    st.tuples(st.sampled_from(CLASSES), st.sampled_from(["sync", "async", "thread"])),
    min_size=1,
    max_size=8,
)
failure_sets = st.sets(st.tuples(st.integers(0, 3), st.integers(0, 7)))


def _nothing_lost_example(
    specs: list[tuple[type[Base], Kind]],
    failing: set[tuple[int, int]],
    published: list[type[Base]],
    mode: str,
    hooks: Hooks,
) -> None:
    bus = EventBus()
    handled: collections.Counter[tuple[uuid.UUID, str]] = collections.Counter()

    def make_body(index: int) -> c.Callable[[Base], None]:
        def body(event: Base) -> None:
            if (event.n, index) in failing:
                raise ValueError(f"h{index} fails on event {event.n}")
            handled[event.event_id, f"h{index}"] += 1

        return body

    for index, (event_class, kind) in enumerate(specs):
        handler = _handler(kind, make_body(index), f"h{index}")
        bus.subscribe(event_class, run_in_thread=kind == "thread")(handler)

    events = [event_class(n=n) for n, event_class in enumerate(published)]
    with hooks.attach(bus):
        results = [_publish(bus, event, mode) for event in events]

    lettered = collections.Counter(
        (letter.event.event_id, letter.handler.rsplit(".", 1)[-1]) for letter in bus.dead_letters
    )
    expected_handled: set[tuple[uuid.UUID, str]] = set()
    expected_lettered: set[tuple[uuid.UUID, str]] = set()
    for event in events:
        for index, (event_class, _) in enumerate(specs):
            if isinstance(event, event_class):
                pair = (event.event_id, f"h{index}")
                if (event.n, index) in failing:
                    expected_lettered.add(pair)
                else:
                    expected_handled.add(pair)
    assert handled == dict.fromkeys(expected_handled, 1)  # handled once
    assert lettered == dict.fromkeys(expected_lettered, 1)  # or dead-lettered once
    for event, result in zip(events, results, strict=True):
        assert result.event is event
        assert all(letter.event is event for letter in result.dead_letters)
        assert result.ok == (not any(pair[0] == event.event_id for pair in expected_lettered))
    assert list(itertools.chain.from_iterable(r.dead_letters for r in results)) == list(
        bus.dead_letters
    )


@given(
    specs=handler_specs,
    failing=failure_sets,
    published=st.lists(st.sampled_from(CLASSES), min_size=1, max_size=4),
)
def test_nothing_lost(
    specs: list[tuple[type[Base], Kind]],
    failing: set[tuple[int, int]],
    published: list[type[Base]],
    hooks: Hooks,
) -> None:
    _nothing_lost_example(specs, failing, published, "sync", hooks)


@given(
    specs=handler_specs,
    failing=failure_sets,
    published=st.lists(st.sampled_from(CLASSES), min_size=1, max_size=4),
)
def test_nothing_lost_async(
    specs: list[tuple[type[Base], Kind]],
    failing: set[tuple[int, int]],
    published: list[type[Base]],
    hooks: Hooks,
) -> None:
    _nothing_lost_example(specs, failing, published, "async", hooks)


# -- (c) cascade order -----------------------------------------------------------------

# A random tree: node i + 1 has parent ``draws[i] % (i + 1)``; children in index order.
# At most 25 nodes, so its depth stays under the default max_cascade_depth (32).
trees = st.lists(st.integers(min_value=0, max_value=10**6), max_size=25).map(
    lambda draws: [d % (i + 1) for i, d in enumerate(draws)]
)


def _children(parents: list[int]) -> dict[int, list[int]]:
    children: dict[int, list[int]] = {i: [] for i in range(len(parents) + 1)}
    for index, parent in enumerate(parents):
        children[parent].append(index + 1)
    return children


def _breadth_first(children: dict[int, list[int]]) -> list[int]:
    order: list[int] = []
    queue = collections.deque([0])
    while queue:
        node = queue.popleft()
        order.append(node)
        queue.extend(children[node])
    return order


def _cascade_example(
    parents: list[int], kind: str, via_async: list[bool], mode: str, hooks: Hooks
) -> None:
    bus = EventBus()
    children = _children(parents)
    delivered: list[Node] = []
    results: dict[int, PublishResult] = {}

    if kind == "async":

        @bus.subscribe
        async def spread_async(event: Node) -> None:
            for child in children[event.node]:
                if via_async[child % len(via_async)]:
                    results[child] = await bus.publish_async(Node(node=child))
                else:
                    results[child] = bus.publish(Node(node=child))

    else:

        @bus.subscribe
        def spread(event: Node) -> None:
            for child in children[event.node]:
                results[child] = bus.publish(Node(node=child))

    bus.subscribe(Node)(delivered.append)
    root = Node(node=0)
    with hooks.attach(bus):
        top = _publish(bus, root, mode)
    assert top.ok
    assert [event.node for event in delivered] == _breadth_first(children)
    by_node = {event.node: event for event in delivered}
    assert by_node[0] is root
    assert root.causation_id is None
    for index, parent in enumerate(parents):
        event = by_node[index + 1]
        assert event.causation_id == by_node[parent].event_id
        assert event.correlation_id == root.event_id
        assert results[index + 1].event == event
    assert len({event.event_id for event in delivered}) == len(delivered)


@given(
    parents=trees,
    kind=st.sampled_from(["sync", "async"]),
    via_async=st.lists(st.booleans(), min_size=1, max_size=5),
)
def test_cascade_order(parents: list[int], kind: str, via_async: list[bool], hooks: Hooks) -> None:
    _cascade_example(parents, kind, via_async, "sync", hooks)


@given(
    parents=trees,
    kind=st.sampled_from(["sync", "async"]),
    via_async=st.lists(st.booleans(), min_size=1, max_size=5),
)
def test_cascade_order_async(
    parents: list[int], kind: str, via_async: list[bool], hooks: Hooks
) -> None:
    _cascade_example(parents, kind, via_async, "async", hooks)


# -- (d) retry counts ------------------------------------------------------------------


def _retry_example(
    failures: int,
    policy: RetryPolicy,
    kind: Kind,
    bus_default: bool,
    mode: str,
    hooks: Hooks,
) -> None:
    sleeps: list[float] = []
    async_sleeps: list[float] = []

    async def async_sleep(delay: float) -> None:
        async_sleeps.append(delay)

    bus = EventBus(
        clock=TestClock(sleep=sleeps.append, sleep_async=async_sleep),
        retry=policy if bus_default else None,
    )
    calls: list[int] = []

    def body(event: Base) -> None:
        calls.append(1)
        if len(calls) <= failures:
            raise ValueError(f"failure {len(calls)}")

    handler = _handler(kind, body, "flaky")
    bus.subscribe(Base, retry=None if bus_default else policy, run_in_thread=kind == "thread")(
        handler
    )
    with hooks.attach(bus):
        result = _publish(bus, Base(), mode)

    m = policy.max_attempts
    assert len(calls) == min(failures + 1, m)
    assert result.ok == (failures < m)
    if failures >= m:
        [letter] = result.dead_letters
        assert letter.attempts == m
        assert letter.error_message == f"failure {m}"
        assert list(bus.dead_letters) == [letter]
    else:
        assert len(bus.dead_letters) == 0
    waited = sleeps if mode == "sync" else async_sleeps
    assert waited == list(policy.delays())[: len(calls) - 1]
    assert (async_sleeps if mode == "sync" else sleeps) == []


policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(min_value=1, max_value=5),
    initial_delay=st.sampled_from([0.0, 0.01, 0.5, 2.0]),
    backoff=st.sampled_from([1.0, 1.5, 2.0]),
    max_delay=st.sampled_from([0.1, 1.0, 60.0]),
)


@given(
    failures=st.integers(min_value=0, max_value=6),
    policy=policies,
    kind=st.sampled_from(["sync", "async"]),
    bus_default=st.booleans(),
)
def test_retry_counts(
    failures: int, policy: RetryPolicy, kind: Kind, bus_default: bool, hooks: Hooks
) -> None:
    _retry_example(failures, policy, kind, bus_default, "sync", hooks)


@given(
    failures=st.integers(min_value=0, max_value=6),
    policy=policies,
    kind=st.sampled_from(["sync", "async", "thread"]),
    bus_default=st.booleans(),
)
def test_retry_counts_async(
    failures: int, policy: RetryPolicy, kind: Kind, bus_default: bool, hooks: Hooks
) -> None:
    _retry_example(failures, policy, kind, bus_default, "async", hooks)


@pytest.mark.parametrize("mode", MODES)
def test_retry_counts_examples(mode: str, hooks: Hooks) -> None:
    """The boundaries, spelled out: f = m - 1 succeeds on the last attempt; f = m does not."""
    for failures, attempts in [(0, 1), (2, 3), (3, 3), (5, 3)]:
        _retry_example(failures, RetryPolicy(max_attempts=attempts), "sync", False, mode, hooks)
        _retry_example(failures, RetryPolicy(max_attempts=attempts), "async", True, mode, hooks)
