"""The dispatch core's design, pinned: one result type, hooks that cost nothing unheard,
the clock seam, the retry core, event ids, ids taken at construction, the transport seam,
a light ``import eventbus`` and no import cycle.

Tests whose behaviour depends on the path run on both (``publish`` and
``publish_async``); retry waits go to injected clocks and are never waited.
"""

from __future__ import annotations

import ast
import asyncio
import collections.abc as c
import dataclasses
import gc
import json
import math
import os
import pathlib
import random
import subprocess
import sys
import time
import typing as t
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

import eventbus
from eventbus import (
    DeadLetter,
    Event,
    EventBus,
    LocalTransport,
    PublishResult,
    RetryPolicy,
    SystemClock,
    Trace,
    new_event_id,
    signals,
)
from eventbus.plans import Plan
from eventbus.transport import Publish, PublishAsync
from tests.clocks import TestClock

PATHS = ["sync", "async"]
BOTH_PATHS = pytest.mark.parametrize("path", PATHS)


class CoreOrder(Event):
    order_id: str = "o1"
    fail: bool = False


class CoreRoot(Event):
    n: int = 0


class CoreKid(Event):
    n: int = 0


class CoreGrandkid(Event):
    n: int = 0


class CoreBoom(Exception):
    pass


def publish(bus: EventBus, event: Event, path: str) -> PublishResult:
    if path == "sync":
        return bus.publish(event)
    return asyncio.run(bus.publish_async(event))


def redrive(bus: EventBus, letter: DeadLetter, path: str) -> PublishResult:
    if path == "sync":
        return bus.redrive(letter)
    return asyncio.run(bus.redrive_async(letter))


def public_names(result: PublishResult) -> list[str]:
    return [name for name in dir(result) if not name.startswith("_")]


def failing_unless_fixed(bus: EventBus, fixed: dict[str, bool], **options: t.Any) -> None:
    """Subscribe a handler of CoreOrder that raises CoreBoom until ``fixed["yes"]``."""

    def on_order(event: CoreOrder) -> None:
        if not fixed["yes"]:
            raise CoreBoom("down")

    bus.subscribe(on_order, **options)


# -- PublishResult: one type, three public names --------------------------------------------


@BOTH_PATHS
def test_a_top_level_publish_returns_exactly_a_publish_result(path: str) -> None:
    bus = EventBus()
    bus.subscribe(CoreOrder)(lambda event: None)
    result = publish(bus, CoreOrder(), path)
    assert type(result) is PublishResult
    assert public_names(result) == ["dead_letters", "event", "ok"]


@BOTH_PATHS
def test_a_publish_from_a_handler_returns_exactly_a_publish_result(path: str) -> None:
    bus = EventBus()
    queued: list[PublishResult] = []

    if path == "sync":

        @bus.subscribe
        def on_root(event: CoreRoot) -> None:
            queued.append(bus.publish(CoreKid()))

    else:

        @bus.subscribe
        async def on_root_async(event: CoreRoot) -> None:
            queued.append(await bus.publish_async(CoreKid()))

    root = publish(bus, CoreRoot(), path)
    [kid] = queued
    assert type(kid) is PublishResult
    assert type(root) is PublishResult
    assert public_names(kid) == ["dead_letters", "event", "ok"]


@BOTH_PATHS
def test_a_redrive_returns_exactly_a_publish_result(path: str) -> None:
    bus = EventBus()
    fixed = {"yes": False}
    failing_unless_fixed(bus, fixed)
    [letter] = publish(bus, CoreOrder(), path).dead_letters
    fixed["yes"] = True
    result = redrive(bus, letter, path)
    assert result.ok
    assert type(result) is PublishResult
    assert public_names(result) == ["dead_letters", "event", "ok"]


# -- hooks cost nothing while nobody listens to this bus --------------------------------------


@BOTH_PATHS
def test_plans_recompile_only_when_receivers_for_this_bus_change(path: str) -> None:
    bus, other = EventBus(), EventBus()
    bus.subscribe(CoreOrder)(lambda event: None)
    heard: list[tuple[object, dict[str, t.Any]]] = []

    def receiver(sender: object, **kwargs: t.Any) -> None:
        heard.append((sender, kwargs))

    publish(bus, CoreOrder(), path)
    plan = bus._compiled[CoreOrder]

    with signals.handler_succeeded.connected_to(receiver, sender=other):
        publish(bus, CoreOrder(), path)
        assert bus._compiled[CoreOrder] is plan
    assert heard == []

    with signals.handler_succeeded.connected_to(receiver, sender=bus):
        publish(bus, CoreOrder(), path)
        listened_plan = bus._compiled[CoreOrder]
        assert listened_plan is not plan
        assert signals.listened(bus) == {signals.handler_succeeded}
    [subscription] = bus.subscriptions_for(CoreOrder)
    assert [(sender, kwargs["handler"]) for sender, kwargs in heard] == [(bus, subscription.name)]

    publish(bus, CoreOrder(), path)
    assert len(heard) == 1
    assert signals.listened(bus) == frozenset()
    unheard_plan = bus._compiled[CoreOrder]
    assert unheard_plan is not listened_plan, "still the plan compiled with hooks"
    assert unheard_plan is not plan


@BOTH_PATHS
def test_a_garbage_collected_weak_receiver_makes_the_bus_recompile(path: str) -> None:
    bus = EventBus()
    bus.subscribe(CoreOrder)(lambda event: None)
    heard: list[object] = []

    def receiver(sender: object, **kwargs: t.Any) -> None:
        heard.append(sender)

    signals.handler_succeeded.connect(receiver, sender=bus)  # weak=True, the default
    publish(bus, CoreOrder(), path)
    listened_plan = bus._compiled[CoreOrder]
    assert heard == [bus]
    assert signals.listened(bus) == {signals.handler_succeeded}

    del receiver
    gc.collect()

    assert signals.listened(bus) == frozenset()
    publish(bus, CoreOrder(), path)
    assert heard == [bus]
    assert bus._compiled[CoreOrder] is not listened_plan, "still the plan compiled with hooks"


def test_a_closed_trace_leaves_no_receiver_on_any_signal() -> None:
    bus = EventBus()
    bus.subscribe(CoreOrder)(lambda event: None)
    assert not [sig.name for sig in signals.ALL if sig.receivers]
    with Trace(bus):
        bus.publish(CoreOrder())
    assert [sig.name for sig in signals.ALL if sig.receivers] == []
    assert signals.listened(bus) == frozenset()


def test_a_closed_trace_puts_the_bus_back_on_a_plan_without_hooks() -> None:
    bus = EventBus()
    bus.subscribe(CoreOrder)(lambda event: None)
    with Trace(bus):
        bus.publish(CoreOrder())
        traced_plan = bus._compiled[CoreOrder]
    bus.publish(CoreOrder())
    assert bus._compiled[CoreOrder] is not traced_plan, "still the plan compiled for the trace"


# -- the clock ---------------------------------------------------------------------------------

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)  # in the future: the real clock never says it


@dataclasses.dataclass
class FakeTime:
    """A clock's parts for a test: the waits recorded by path, a time the waits move."""

    now: datetime = T0
    sync: list[float] = dataclasses.field(default_factory=list)
    async_: list[float] = dataclasses.field(default_factory=list)

    def sleep(self, seconds: float) -> None:
        self.sync.append(seconds)
        self.now += timedelta(seconds=seconds)

    async def sleep_async(self, seconds: float) -> None:
        self.async_.append(seconds)
        self.now += timedelta(seconds=seconds)

    def clock(self) -> TestClock:
        return TestClock(sleep=self.sleep, sleep_async=self.sleep_async, now=lambda: self.now)

    def of(self, path: str) -> list[float]:
        return self.sync if path == "sync" else self.async_

    def other_than(self, path: str) -> list[float]:
        return self.async_ if path == "sync" else self.sync


@BOTH_PATHS
@pytest.mark.parametrize("given_how", ["constructor", "assigned"])
def test_the_bus_clock_paces_retries_and_dates_dead_letters(path: str, given_how: str) -> None:
    fake = FakeTime()
    clock = fake.clock()
    bus = EventBus(clock=clock) if given_how == "constructor" else EventBus()

    @bus.subscribe(retry=RetryPolicy(max_attempts=3, initial_delay=1))
    def on_order(event: CoreOrder) -> None:
        if event.fail:
            raise CoreBoom("down")

    if given_how == "assigned":
        assert publish(bus, CoreOrder(), path).ok  # plans compiled before the clock changes
        bus.clock = clock
    assert bus.clock is clock

    [letter] = publish(bus, CoreOrder(fail=True), path).dead_letters

    assert fake.of(path) == [1.0, 2.0]
    assert fake.other_than(path) == []
    assert letter.first_failed_at == T0
    assert letter.failed_at == T0 + timedelta(seconds=3)


@BOTH_PATHS
def test_redrive_all_older_than_goes_by_the_bus_clock(path: str) -> None:
    fake = FakeTime()
    bus = EventBus(clock=fake.clock())
    fixed = {"yes": False}
    failing_unless_fixed(bus, fixed)
    [letter] = publish(bus, CoreOrder(), path).dead_letters
    assert letter.failed_at == T0
    fixed["yes"] = True
    fake.now = T0 + timedelta(minutes=10)

    def redrive_all(older_than: timedelta) -> list[eventbus.RedriveOutcome]:
        if path == "sync":
            return bus.redrive_all(older_than=older_than)
        return asyncio.run(bus.redrive_all_async(older_than=older_than))

    assert redrive_all(timedelta(minutes=15)) == []
    assert list(bus.dead_letters) == [letter]
    [outcome] = redrive_all(timedelta(minutes=5))  # by the real clock, T0 is yet to come
    assert outcome.ok
    assert outcome.letter == letter
    assert len(bus.dead_letters) == 0


@pytest.mark.parametrize(
    "not_a_clock", [time.sleep, lambda: None, object()], ids=["time.sleep", "lambda", "object"]
)
def test_a_non_clock_is_a_type_error_mentioning_clock(not_a_clock: object) -> None:
    with pytest.raises(TypeError, match="Clock"):
        EventBus(clock=t.cast(t.Any, not_a_clock))
    bus = EventBus()
    before = bus.clock
    with pytest.raises(TypeError, match="Clock"):
        bus.clock = t.cast(t.Any, not_a_clock)
    assert bus.clock is before


class SeededRecordingClock(SystemClock):
    """The system clock's seeded jitter, with waits recorded instead of waited."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed=seed)
        self.waits: list[float] = []

    def sleep(self, seconds: float, /) -> None:
        self.waits.append(seconds)

    async def sleep_async(self, seconds: float, /) -> None:
        self.waits.append(seconds)


@BOTH_PATHS
def test_a_seeded_system_clock_gives_reproducible_jitter(path: str) -> None:
    policy = RetryPolicy(max_attempts=4, initial_delay=1, jitter=0.5)
    recorded: list[list[float]] = []
    for _ in range(2):
        clock = SeededRecordingClock(seed=1)
        bus = EventBus(clock=clock)

        @bus.subscribe(retry=policy)
        def on_order(event: CoreOrder) -> None:
            raise CoreBoom("down")

        assert not publish(bus, CoreOrder(), path).ok
        recorded.append(clock.waits)

    first, second = recorded
    assert first == second
    assert len(first) == 3
    for wait, nominal in zip(first, [1.0, 2.0, 4.0], strict=True):
        assert nominal * 0.5 <= wait <= nominal * 1.5
    assert first != [1.0, 2.0, 4.0]  # the jitter was drawn from the clock


# -- RetryPolicy: the retry core ----------------------------------------------------------------

policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(1, 8),
    initial_delay=st.floats(0, 10, allow_nan=False),
    backoff=st.floats(1, 4, allow_nan=False),
    max_delay=st.floats(0, 100, allow_nan=False),
    jitter=st.floats(0, 1, allow_nan=False),
)


@given(policy=policies, seed=st.integers(0, 2**64))
def test_next_delay_walks_the_same_schedule_as_delays(policy: RetryPolicy, seed: int) -> None:
    rng_a, rng_b = random.Random(seed), random.Random(seed)
    stepped = [
        policy.next_delay(attempt, OSError(), rng_a) for attempt in range(1, policy.max_attempts)
    ]
    assert stepped == list(policy.delays(rng_b))
    assert policy.next_delay(policy.max_attempts, OSError(), rng_a) is None
    picky = dataclasses.replace(policy, give_up_on=(ValueError,))
    assert picky.next_delay(1, ValueError(), rng_a) is None
    for delay in [*stepped, *policy.delays(), *policy.delays(rng_a)]:
        assert delay is not None
        assert 0 <= delay <= policy.max_delay
        assert math.isfinite(delay)


# -- event ids ----------------------------------------------------------------------------------


def test_an_event_id_is_a_version_7_rfc_uuid() -> None:
    made = new_event_id()
    assert made.version == 7
    assert made.variant == uuid.RFC_4122
    assert CoreOrder().event_id.version == 7


def test_ten_thousand_event_ids_are_distinct() -> None:
    assert len({new_event_id() for _ in range(10_000)}) == 10_000


def unix_ms(made: uuid.UUID) -> int:
    return made.int >> 80


def test_ids_made_in_a_later_millisecond_sort_after() -> None:
    first = new_event_id()
    deadline = time.monotonic() + 2.0
    while time.time_ns() // 1_000_000 <= unix_ms(first):  # a bounded busy poll, no sleep
        assert time.monotonic() < deadline, "the wall clock did not advance in 2 s"
    second = new_event_id()
    assert unix_ms(first) < unix_ms(second)
    assert first < second


def test_an_event_id_carries_the_current_unix_millisecond() -> None:
    made = new_event_id()
    now_ms = time.time_ns() // 1_000_000
    assert abs(unix_ms(made) - now_ms) <= 1000


def test_an_event_id_round_trips_through_its_string() -> None:
    made = new_event_id()
    parsed = uuid.UUID(str(made))
    assert parsed == made
    assert hash(parsed) == hash(made)
    assert str(parsed) == str(made)
    assert parsed.version == 7


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_draws_other_ids_than_its_parent() -> None:
    count = 4
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send its next ids, then leave at once, whatever happens
        code = 1
        try:
            os.close(read_end)
            os.write(write_end, b"".join(new_event_id().bytes for _ in range(count)))
            os.close(write_end)
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    parent_ids = [new_event_id() for _ in range(count)]
    data = b""
    with os.fdopen(read_end, "rb") as reader:
        data = reader.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(data) == 16 * count
    child_ids = [uuid.UUID(bytes=data[i : i + 16]) for i in range(0, len(data), 16)]
    # Compare the random bits only (the low 80: version, variant and 74 random bits): ids
    # made in different milliseconds would differ by their timestamps alone.
    low = (1 << 80) - 1
    assert {u.int & low for u in child_ids}.isdisjoint({u.int & low for u in parent_ids})
    assert all(u.version == 7 for u in child_ids)


# -- ids taken at construction inside a handler ----------------------------------------------


@BOTH_PATHS
def test_events_built_in_a_handler_take_their_ids_when_constructed(path: str) -> None:
    bus = EventBus()
    kids: list[tuple[CoreKid, PublishResult]] = []
    grandkids: list[tuple[CoreGrandkid, PublishResult]] = []

    if path == "sync":

        @bus.subscribe
        def on_root(event: CoreRoot) -> None:
            kid = CoreKid(n=event.n)
            kids.append((kid, bus.publish(kid)))

        @bus.subscribe
        def on_kid(event: CoreKid) -> None:
            grandkid = CoreGrandkid(n=event.n)
            grandkids.append((grandkid, bus.publish(grandkid)))

    else:

        @bus.subscribe
        async def on_root_async(event: CoreRoot) -> None:
            kid = CoreKid(n=event.n)
            kids.append((kid, await bus.publish_async(kid)))

        @bus.subscribe
        async def on_kid_async(event: CoreKid) -> None:
            grandkid = CoreGrandkid(n=event.n)
            grandkids.append((grandkid, await bus.publish_async(grandkid)))

    root = CoreRoot(n=3)
    assert root.causation_id is None
    assert root.correlation_id is None
    assert publish(bus, root, path).ok

    [(kid, kid_result)] = kids
    assert kid.causation_id == root.event_id
    assert kid.correlation_id == root.event_id
    assert kid_result.event is kid
    [(grandkid, grandkid_result)] = grandkids
    assert grandkid.causation_id == kid.event_id
    assert grandkid.correlation_id == root.event_id
    assert grandkid_result.event is grandkid


@BOTH_PATHS
def test_an_event_built_outside_and_published_from_a_handler_is_copied(path: str) -> None:
    bus = EventBus()
    prebuilt = CoreKid(n=1)
    results: list[PublishResult] = []

    if path == "sync":

        @bus.subscribe
        def on_root(event: CoreRoot) -> None:
            results.append(bus.publish(prebuilt))

    else:

        @bus.subscribe
        async def on_root_async(event: CoreRoot) -> None:
            results.append(await bus.publish_async(prebuilt))

    delivered: list[CoreKid] = []
    bus.subscribe(CoreKid)(delivered.append)
    root = CoreRoot()
    publish(bus, root, path)

    [result] = results
    assert result.event is not prebuilt
    assert prebuilt.causation_id is None
    assert prebuilt.correlation_id is None
    assert result.event.causation_id == root.event_id
    assert result.event.correlation_id == root.event_id
    assert result.event.event_id == prebuilt.event_id
    assert result.event == prebuilt.model_copy(
        update={"causation_id": root.event_id, "correlation_id": root.event_id}
    )
    assert delivered == [result.event]
    assert delivered[0] is result.event


@BOTH_PATHS
def test_an_explicit_correlation_id_is_kept(path: str) -> None:
    bus = EventBus()
    request_id = uuid.uuid4()
    prebuilt = CoreKid(n=2, correlation_id=request_id)
    built: list[CoreKid] = []
    results: list[PublishResult] = []

    if path == "sync":

        @bus.subscribe
        def on_root(event: CoreRoot) -> None:
            kid = CoreKid(n=1, correlation_id=request_id)
            built.append(kid)
            results.append(bus.publish(kid))
            results.append(bus.publish(prebuilt))

    else:

        @bus.subscribe
        async def on_root_async(event: CoreRoot) -> None:
            kid = CoreKid(n=1, correlation_id=request_id)
            built.append(kid)
            results.append(await bus.publish_async(kid))
            results.append(await bus.publish_async(prebuilt))

    root = CoreRoot()
    publish(bus, root, path)

    [kid] = built
    assert kid.correlation_id == request_id
    assert kid.causation_id == root.event_id
    built_result, prebuilt_result = results
    assert built_result.event is kid
    assert prebuilt_result.event.correlation_id == request_id
    assert prebuilt_result.event.causation_id == root.event_id
    assert prebuilt.causation_id is None


def test_an_event_built_at_top_level_has_no_cause_or_correlation() -> None:
    made = CoreRoot()
    assert made.causation_id is None
    assert made.correlation_id is None
    bus = EventBus()
    bus.subscribe(CoreRoot)(lambda event: None)
    result = bus.publish(made)
    assert result.event is made
    assert made.causation_id is None


# -- the transport seam ----------------------------------------------------------------------


class CountingTransport(LocalTransport):
    """The local cascade, counting the binds (plan compiles) of each event class."""

    def __init__(self) -> None:
        self.binds: list[type] = []

    def bind(self, bus: EventBus, plan: Plan, /) -> tuple[Publish, PublishAsync] | None:
        kinds = {kind for sub in plan.subscriptions for kind in sub.event_types}
        self.binds.extend(kinds)
        return super().bind(bus, plan)


@BOTH_PATHS
def test_a_transport_is_bound_once_per_event_class_per_plan_compile(path: str) -> None:
    transport = CountingTransport()
    bus = EventBus(transport=transport)
    assert bus.transport is transport
    delivered: list[CoreOrder] = []
    bus.subscribe(CoreOrder)(delivered.append)

    def publish_many(count: int) -> None:
        if path == "sync":
            for _ in range(count):
                bus.publish(CoreOrder())
            return

        async def main() -> None:
            for _ in range(count):
                await bus.publish_async(CoreOrder())

        asyncio.run(main())

    publish_many(50)
    assert transport.binds == [CoreOrder]
    assert len(delivered) == 50

    also: list[CoreOrder] = []
    bus.subscribe(CoreOrder)(also.append)
    publish_many(1)
    assert transport.binds == [CoreOrder, CoreOrder]
    assert len(delivered) == 51
    assert len(also) == 1


def test_a_transport_must_be_a_transport() -> None:
    with pytest.raises(TypeError, match="Transport"):
        EventBus(transport=t.cast(t.Any, object()))


# -- import cost and structure ----------------------------------------------------------------

IMPORT_PROBE = """
import json, sys
heavy = ("asyncio", "sqlite3", "eventbus.tracing", "eventbus.dead_letters.sqlite")
already = {name for name in heavy if name in sys.modules}
import eventbus
after_import = sorted(name for name in heavy if name in sys.modules and name not in already)
trace = eventbus.Trace
store = eventbus.SQLiteDeadLetterStore
lazy_loaded = sorted(name for name in heavy if name in sys.modules)
tracing = sys.modules.get("eventbus.tracing")
sqlite_store = sys.modules.get("eventbus.dead_letters.sqlite")
print(json.dumps({
    "already": sorted(already),
    "after_import": after_import,
    "lazy_loaded": lazy_loaded,
    "trace_is_tracing_trace": tracing is not None and trace is tracing.Trace,
    "store_is_sqlite_store": sqlite_store is not None
    and store is sqlite_store.SQLiteDeadLetterStore,
}))
"""


def test_import_eventbus_is_light_and_the_heavy_names_resolve_lazily() -> None:
    completed = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    probe = json.loads(completed.stdout)
    assert probe["already"] == [], f"imported before eventbus was: {probe['already']}"
    assert probe["after_import"] == [], f"`import eventbus` imported {probe['after_import']}"
    assert {"sqlite3", "eventbus.tracing", "eventbus.dead_letters.sqlite"} <= set(
        probe["lazy_loaded"]
    ), probe["lazy_loaded"]
    assert probe["trace_is_tracing_trace"]
    assert probe["store_is_sqlite_store"]


PACKAGE_DIR = pathlib.Path(eventbus.__file__).resolve().parent


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_type_checking(test: ast.expr) -> bool:
    """``TYPE_CHECKING``, ``t.TYPE_CHECKING``, ``typing.TYPE_CHECKING``."""
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def runtime_imports(tree: ast.Module) -> c.Iterator[ast.Import | ast.ImportFrom]:
    """The import statements that run when the module is imported.

    Not those inside functions (they run when called), nor those under
    ``if TYPE_CHECKING:`` (its ``else:`` does run).
    """
    pending: list[ast.AST] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        elif isinstance(node, ast.If) and is_type_checking(node.test):
            pending.extend(node.orelse)
        else:
            pending.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    """Module-level imports between eventbus's modules: module -> modules it imports."""
    files = {module_name(path): path for path in PACKAGE_DIR.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in runtime_imports(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base_parts = package.split(".")
                    if node.level > 1:
                        base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                    base = ".".join(base_parts)
                    source = f"{base}.{node.module}" if node.module else base
                else:
                    source = node.module or ""
                submodules = [f"{source}.{alias.name}" for alias in node.names]
                if node.module is None:  # from . import x: x is a module, or a name of .
                    targets = [sub if sub in files else source for sub in submodules]
                else:  # from .x import y: .x, and .x.y if that is a module
                    targets = [source, *submodules]
            graph[name].update(
                target
                for target in targets
                if target in files and target != name and target.split(".")[0] == "eventbus"
            )
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state:
                found = visit(target)
                if found is not None:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found is not None:
                return found
    return None


def test_the_import_graph_sees_the_known_edges() -> None:
    graph = import_graph()
    assert "eventbus.signals" in graph["eventbus.plans"]  # from . import failures, signals
    assert "eventbus.middleware" in graph["eventbus.plans"]  # from .middleware import ...
    assert "eventbus.handlers.registry" in graph["eventbus.bus"]  # from .handlers.registry
    assert "eventbus.signals" in graph["eventbus.tracing.recorder"]  # from .. import signals
    assert "eventbus.bus" not in graph["eventbus.plans"]  # only under TYPE_CHECKING
    assert "eventbus.bus" not in graph["eventbus.tracing.recorder"]  # only inside a function


def test_eventbus_has_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
