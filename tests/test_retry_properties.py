"""Properties of retries: every (event, handler) pair ends exactly once, and the wait schedules.

The bus gets injected sleeps, so a property's examples never wait; the
expected outcome of each pair comes from a small model of the policy. The
properties of a bus run in each of the ``hooks`` variants (conftest.py): no hook
receivers (the bus's fast paths), receivers for the bus, receivers for another bus.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import math
import random
import typing as t

from hypothesis import given
from hypothesis import strategies as st

from eventbus import MAX_DELAY, Event, EventBus, PublishResult, RetryPolicy, signals
from tests.clocks import TestClock

if t.TYPE_CHECKING:
    from tests.conftest import Hooks


class PropertyEvent(Event):
    n: int


class Retryable(Exception):
    pass


class GiveUp(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class HandlerSpec:
    max_attempts: int
    gives_up: bool  # the policy has give_up_on=(GiveUp,)
    use_async: bool
    priority: int

    @property
    def policy(self) -> RetryPolicy:
        give_up_on: tuple[type[BaseException], ...] = (GiveUp,) if self.gives_up else ()
        return RetryPolicy(max_attempts=self.max_attempts, initial_delay=0.5, give_up_on=give_up_on)


@dataclasses.dataclass(frozen=True)
class Scenario:
    handlers: list[HandlerSpec]
    #: plans[event][handler]: the errors of the failing attempts before success, in order
    #: (True: a GiveUp error, False: a Retryable one).
    plans: list[list[list[bool]]]
    first_uses_bus_default: bool

    def expected(self, event: int, handler: int) -> tuple[int, bool]:
        """(calls, ok) for one pair, from the policy's rules."""
        spec = self.handlers[handler]
        plan = self.plans[event][handler]
        attempt = 1
        while True:
            if attempt > len(plan):
                return attempt, True
            if (spec.gives_up and plan[attempt - 1]) or attempt == spec.max_attempts:
                return attempt, False
            attempt += 1


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    handlers = draw(
        st.lists(
            st.builds(
                HandlerSpec,
                max_attempts=st.integers(min_value=1, max_value=4),
                gives_up=st.booleans(),
                use_async=st.booleans(),
                priority=st.integers(min_value=0, max_value=1),
            ),
            min_size=1,
            max_size=3,
        )
    )
    n_events = draw(st.integers(min_value=1, max_value=3))
    plan = st.lists(st.booleans(), max_size=5)
    plans = [[draw(plan) for _ in handlers] for _ in range(n_events)]
    return Scenario(handlers, plans, draw(st.booleans()))


def run_scenario(scenario: Scenario, mode: str, hooks: Hooks) -> None:
    waits: list[float] = []

    def sleep(delay: float) -> None:
        waits.append(delay)

    async def async_sleep(delay: float) -> None:
        waits.append(delay)

    first = scenario.handlers[0]
    bus = EventBus(
        clock=TestClock(sleep=sleep, sleep_async=async_sleep),
        concurrent=mode == "concurrent",
        retry=first.policy if scenario.first_uses_bus_default else None,
    )
    calls: collections.Counter[tuple[int, int]] = collections.Counter()
    names: list[str] = []
    for index, spec in enumerate(scenario.handlers):
        handler = make_handler(scenario, index, calls)
        handler.__qualname__ = f"handler_{index}"
        names.append(f"{__name__}.handler_{index}")
        own = None if index == 0 and scenario.first_uses_bus_default else spec.policy
        bus.subscribe(PropertyEvent, retry=own, priority=spec.priority)(handler)

    results: list[PublishResult] = []
    with hooks.attach(bus) as heard:
        for n in range(len(scenario.plans)):
            if mode == "sync":
                results.append(bus.publish(PropertyEvent(n=n)))
            else:
                results.append(asyncio.run(bus.publish_async(PropertyEvent(n=n))))

    letters = {(t.cast(PropertyEvent, x.event).n, x.handler): x for x in bus.dead_letters}
    assert len(letters) == len(bus.dead_letters)  # at most one letter per pair
    expected_outcomes = []
    expected_waits = 0
    for n, result in enumerate(results):
        event_ok = True
        for index, name in enumerate(names):
            want_calls, ok = scenario.expected(n, index)
            assert calls[n, index] == want_calls, (n, index)
            expected_waits += want_calls - 1
            expected_outcomes.append(("handled" if ok else "dead", n, name))
            if ok:
                assert (n, name) not in letters
            else:
                letter = letters[n, name]
                assert letter.attempts == want_calls
                plan = scenario.plans[n][index]
                assert letter.error_type.endswith("GiveUp" if plan[want_calls - 1] else "Retryable")
                assert letter.error_message == f"attempt {want_calls}"
                event_ok = False
        assert result.ok == event_ok
        assert {x.id for x in result.dead_letters} == {
            x.id for (n_, _), x in letters.items() if n_ == n
        }
    # every pair ends exactly once: handled or dead-lettered, never both, never twice,
    # as the hooks tell when they listen to this bus
    if heard is not None:
        outcomes = []  # (kind, event n, handler name)
        for sent in heard.of(signals.handler_succeeded):
            outcomes.append(("handled", sent["event"].n, sent["handler"]))
        for sent in heard.of(signals.event_dead_lettered):
            outcomes.append(("dead", sent["dead_letter"].event.n, sent["dead_letter"].handler))
        assert sorted(outcomes) == sorted(expected_outcomes)
    assert len(waits) == expected_waits


def make_handler(
    scenario: Scenario, index: int, calls: collections.Counter[tuple[int, int]]
) -> t.Callable[[PropertyEvent], object]:
    def attempt(event: PropertyEvent) -> None:
        calls[event.n, index] += 1
        made = calls[event.n, index]
        plan = scenario.plans[event.n][index]
        if made <= len(plan):
            error = GiveUp if plan[made - 1] else Retryable
            raise error(f"attempt {made}")

    if scenario.handlers[index].use_async:

        async def handler_async(event: PropertyEvent) -> None:
            await asyncio.sleep(0)
            attempt(event)

        return handler_async

    def handler_sync(event: PropertyEvent) -> None:
        attempt(event)

    return handler_sync


@given(scenario=scenarios())
def test_every_pair_ends_exactly_once(scenario: Scenario, hooks: Hooks) -> None:
    run_scenario(scenario, "sync", hooks)


@given(scenario=scenarios(), concurrent=st.booleans())
def test_every_pair_ends_exactly_once_async(
    scenario: Scenario, concurrent: bool, hooks: Hooks
) -> None:
    run_scenario(scenario, "concurrent" if concurrent else "async", hooks)


def test_model_examples(hooks: Hooks) -> None:
    """The model's rules, spelled out: calls == min(f + 1, m), or the first give-up error."""

    def spec(m: int, gives_up: bool) -> HandlerSpec:
        return HandlerSpec(max_attempts=m, gives_up=gives_up, use_async=False, priority=0)

    cases = [
        (spec(3, False), [], (1, True)),
        (spec(3, False), [False, False], (3, True)),
        (spec(3, False), [False, False, False], (3, False)),
        (spec(3, False), [True, True, True, True], (3, False)),  # GiveUp is retried here
        (spec(3, True), [True], (1, False)),
        (spec(3, True), [False, True], (2, False)),
        (spec(1, True), [False], (1, False)),
        (spec(4, True), [False, False], (3, True)),
    ]
    for handler, plan, expected in cases:
        scenario = Scenario([handler], [[plan]], False)
        assert scenario.expected(0, 0) == expected
        for mode in ("sync", "async"):
            run_scenario(scenario, mode, hooks)


# -- the wait schedule ----------------------------------------------------------------------

seconds = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)
any_seconds = st.floats(min_value=0, max_value=MAX_DELAY, allow_nan=False)  # all a sleep takes

policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(min_value=2, max_value=12),
    initial_delay=st.one_of(seconds, any_seconds),
    backoff=st.floats(min_value=1, max_value=10, allow_nan=False),
    max_delay=st.one_of(seconds, any_seconds),
    jitter=st.floats(min_value=0, max_value=1),
)


@given(policies)
def test_nominal_delays_grow_to_the_cap(policy: RetryPolicy) -> None:
    delays = list(policy.delays())
    assert len(delays) == policy.max_attempts - 1
    assert delays[0] == min(policy.initial_delay, policy.max_delay)
    assert all(math.isfinite(d) and 0 <= d <= policy.max_delay for d in delays)
    assert all(a <= b for a, b in itertools.pairwise(delays))


@given(policies, st.integers())
def test_jittered_delays_stay_in_their_band(policy: RetryPolicy, seed: int) -> None:
    nominal = list(policy.delays())
    jittered = list(policy.delays(random.Random(seed)))
    assert len(jittered) == len(nominal)
    for wait, base in zip(jittered, nominal, strict=True):
        low = base * (1 - policy.jitter)
        high = min(base * (1 + policy.jitter), policy.max_delay)
        assert low <= wait <= high, (wait, base)


@given(
    policy=st.builds(
        RetryPolicy,
        max_attempts=st.integers(min_value=2, max_value=6),
        initial_delay=st.floats(min_value=0, max_value=10),
        max_delay=st.floats(min_value=0, max_value=20),
        jitter=st.floats(min_value=0, max_value=1),
    ),
    seed=st.integers(),
    failures=st.integers(min_value=0, max_value=7),
    mode=st.sampled_from(["sync", "async"]),
)
def test_bus_waits_are_the_policy_schedule_for_its_seed(
    policy: RetryPolicy, seed: int, failures: int, mode: str, hooks: Hooks
) -> None:
    waits: list[float] = []

    def sleep(delay: float) -> None:
        waits.append(delay)

    async def async_sleep(delay: float) -> None:
        waits.append(delay)

    bus = EventBus(clock=TestClock(sleep=sleep, sleep_async=async_sleep, rng=random.Random(seed)))
    calls: list[int] = []

    @bus.subscribe(retry=policy)
    def flaky(event: PropertyEvent) -> None:
        calls.append(1)
        if len(calls) <= failures:
            raise Retryable(str(len(calls)))

    event = PropertyEvent(n=0)
    with hooks.attach(bus):
        result = bus.publish(event) if mode == "sync" else asyncio.run(bus.publish_async(event))
    assert len(calls) == min(failures + 1, policy.max_attempts)
    assert result.ok == (failures < policy.max_attempts)
    assert waits == list(policy.delays(random.Random(seed)))[: len(calls) - 1]
