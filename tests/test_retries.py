"""Retries, timeouts and unhandled events: RetryPolicy on its own, then the bus using it.

Nothing here waits for real: the bus gets injected ``sleep``/``async_sleep``
that record the delays, and a clock that the sleeps move forward. Timeouts
use ``timeout=0``, which expires at a handler's first real suspension.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import socket
import threading
import typing as t
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from eventbus import (
    NO_HANDLER,
    DeadLetter,
    Event,
    EventBus,
    HandlerTimeoutError,
    PublishResult,
    RetryPolicy,
    UnhandledEventError,
    signals,
)
from tests.clocks import TestClock


class RetriedOrder(Event):
    order_id: str = "o1"


class RetriedNobodyListens(Event):
    n: int = 0


class TransientError(Exception):
    pass


class PermanentError(Exception):
    pass


class FakeClock:
    """A clock that only moves when told (by the injected sleeps)."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Waits:
    """Injected sleeps: record each delay, the waiting thread, and move the clock."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.sync: list[float] = []
        self.async_: list[float] = []
        self.threads: list[int] = []

    def sleep(self, delay: float) -> None:
        self.sync.append(delay)
        self.threads.append(threading.get_ident())
        self.clock.advance(delay)

    async def async_sleep(self, delay: float) -> None:
        self.async_.append(delay)
        self.clock.advance(delay)

    def bus(
        self,
        *,
        retry: RetryPolicy | None = None,
        rng: random.Random | None = None,
        concurrent: bool = False,
        report_unhandled: bool = False,
    ) -> EventBus:
        return EventBus(
            clock=TestClock(
                sleep=self.sleep, sleep_async=self.async_sleep, now=self.clock, rng=rng
            ),
            retry=retry,
            concurrent=concurrent,
            report_unhandled=report_unhandled,
        )


def failing(
    calls: list[int], errors: t.Sequence[Exception], *, use_async: bool
) -> t.Callable[[RetriedOrder], object]:
    """A handler that raises ``errors`` in turn (one per attempt), then succeeds."""

    def body() -> None:
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]

    if use_async:

        async def handler_async(event: RetriedOrder) -> None:
            await asyncio.sleep(0)
            body()

        return handler_async

    def handler_sync(event: RetriedOrder) -> None:
        body()

    return handler_sync


def publish(bus: EventBus, event: Event, mode: str) -> PublishResult:
    if mode == "sync":
        return bus.publish(event)
    return asyncio.run(bus.publish_async(event))


MODES = ["sync", "async"]
HANDLER_KINDS = pytest.mark.parametrize("use_async", [False, True], ids=["sync_def", "async_def"])


# -- RetryPolicy: validation ---------------------------------------------------------------


@pytest.mark.parametrize("jitter", [0, 0.0, 0.25, 1, 1.0])
def test_jitter_accepts_zero_to_one(jitter: float) -> None:
    assert RetryPolicy(max_attempts=2, jitter=jitter).jitter == jitter


@pytest.mark.parametrize("jitter", [-0.01, 1.0001, 2, math.inf, -math.inf, math.nan])
def test_jitter_outside_zero_to_one_is_refused(jitter: float) -> None:
    with pytest.raises(ValueError, match="jitter"):
        RetryPolicy(max_attempts=2, jitter=jitter)


@pytest.mark.parametrize("jitter", [True, "0.5", None])
def test_jitter_must_be_a_number(jitter: object) -> None:
    with pytest.raises((TypeError, ValueError), match="jitter"):
        RetryPolicy(max_attempts=2, jitter=jitter)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["retry_on", "give_up_on"])
@pytest.mark.parametrize(
    "value",
    [
        (ValueError, 3),
        ("ValueError",),
        (int,),
        [ValueError],
        ValueError("an instance, not a class"),
        None,
        int,
        object,
    ],
    ids=repr,
)
def test_error_filters_must_be_exception_classes(name: str, value: object) -> None:
    with pytest.raises(TypeError, match=rf"{name} must be a tuple of exception classes"):
        RetryPolicy(max_attempts=2, **{name: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["retry_on", "give_up_on"])
def test_a_lone_exception_class_is_a_one_tuple(name: str) -> None:
    policy = RetryPolicy(max_attempts=2, **{name: TransientError})  # type: ignore[arg-type]
    assert getattr(policy, name) == (TransientError,)
    assert policy == RetryPolicy(max_attempts=2, **{name: (TransientError,)})  # type: ignore[arg-type]


def test_error_filters_accept_base_exceptions_and_empty_tuples() -> None:
    policy = RetryPolicy(max_attempts=2, retry_on=(), give_up_on=(KeyboardInterrupt, KeyError))
    assert policy.retry_on == ()
    assert policy.give_up_on == (KeyboardInterrupt, KeyError)


def test_policy_defaults() -> None:
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.initial_delay, policy.jitter) == (1, 0.0, 0.0)
    assert policy.retry_on == (Exception,)
    assert policy.give_up_on == ()


# -- RetryPolicy: delays() and retries() --------------------------------------------------


def test_nominal_delays_grow_then_cap() -> None:
    policy = RetryPolicy(max_attempts=7, initial_delay=0.1, backoff=3.0, max_delay=2.0, jitter=0.5)
    # without an rng, the nominal schedule: jitter is not applied
    assert list(policy.delays()) == pytest.approx([0.1, 0.3, 0.9, 2.0, 2.0, 2.0])


def test_initial_delay_above_the_cap_is_capped() -> None:
    policy = RetryPolicy(max_attempts=3, initial_delay=10.0, max_delay=1.5)
    assert list(policy.delays()) == [1.5, 1.5]


def test_delays_is_pure_and_lazy() -> None:
    policy = RetryPolicy(max_attempts=4, initial_delay=0.5, jitter=0.3)
    assert list(policy.delays()) == list(policy.delays())
    # the same seed gives the same jittered waits; the rng is consumed one wait at a time
    assert list(policy.delays(random.Random(7))) == list(policy.delays(random.Random(7)))
    rng = random.Random(7)
    iterator = policy.delays(rng)
    state = rng.getstate()
    assert rng.getstate() == state  # nothing drawn before the first wait is asked for
    next(iterator)
    assert rng.getstate() != state


def test_delays_without_jitter_ignore_the_rng() -> None:
    policy = RetryPolicy(max_attempts=4, initial_delay=0.5)
    rng = random.Random(3)
    state = rng.getstate()
    assert list(policy.delays(rng)) == [0.5, 1.0, 2.0]
    assert rng.getstate() == state


def test_jittered_delays_differ_from_nominal_and_stay_in_band() -> None:
    policy = RetryPolicy(max_attempts=6, initial_delay=1.0, jitter=0.5, max_delay=60.0)
    nominal = list(policy.delays())
    jittered = list(policy.delays(random.Random(1234)))
    assert jittered != nominal
    for wait, base in zip(jittered, nominal, strict=True):
        assert base * 0.5 <= wait <= base * 1.5


@pytest.mark.parametrize(
    ("policy", "error", "expected"),
    [
        (RetryPolicy(), ValueError(), True),
        (RetryPolicy(), KeyboardInterrupt(), False),  # not an Exception
        (RetryPolicy(retry_on=(ConnectionError,)), ConnectionResetError(), True),
        (RetryPolicy(retry_on=(ConnectionError,)), ValueError(), False),
        (RetryPolicy(give_up_on=(PermanentError,)), PermanentError(), False),
        (RetryPolicy(give_up_on=(PermanentError,)), TransientError(), True),
        # give_up_on wins over retry_on
        (RetryPolicy(retry_on=(LookupError,), give_up_on=(KeyError,)), KeyError(), False),
        (RetryPolicy(retry_on=(LookupError,), give_up_on=(KeyError,)), IndexError(), True),
        (RetryPolicy(retry_on=()), ValueError(), False),
        (RetryPolicy(retry_on=(TimeoutError,)), HandlerTimeoutError("t"), True),
    ],
)
def test_retries_filter(policy: RetryPolicy, error: BaseException, expected: bool) -> None:
    assert policy.retries(error) is expected


# -- the bus: waits ---------------------------------------------------------------------------


JITTERY = RetryPolicy(max_attempts=5, initial_delay=0.2, backoff=2.0, max_delay=1.0, jitter=0.4)


@pytest.mark.parametrize("seed", [0, 1, 99])
@pytest.mark.parametrize("mode", MODES)
@HANDLER_KINDS
def test_sleeps_receive_exactly_the_jittered_delays(seed: int, mode: str, use_async: bool) -> None:
    waits = Waits()
    bus = waits.bus(rng=random.Random(seed))
    calls: list[int] = []
    errors = [TransientError(str(i)) for i in range(99)]
    bus.subscribe(RetriedOrder, retry=JITTERY)(failing(calls, errors, use_async=use_async))
    result = publish(bus, RetriedOrder(), mode)
    expected = list(JITTERY.delays(random.Random(seed)))
    assert len(calls) == JITTERY.max_attempts
    assert (waits.sync if mode == "sync" else waits.async_) == expected
    assert (waits.async_ if mode == "sync" else waits.sync) == []
    assert expected != list(JITTERY.delays())  # the jitter was really applied
    [letter] = result.dead_letters
    assert letter.attempts == JITTERY.max_attempts


@pytest.mark.parametrize("mode", MODES)
def test_bus_draws_jitter_from_its_own_rng_once_per_wait(mode: str) -> None:
    """Two publishes on one bus continue one random stream: no reseeding per publish."""
    waits = Waits()
    bus = waits.bus(rng=random.Random(5))
    calls: list[int] = []
    errors = [TransientError("x")] * 2 + [TransientError("y")] * 2
    policy = RetryPolicy(max_attempts=3, initial_delay=1.0, jitter=1.0)
    bus.subscribe(RetriedOrder, retry=policy)(failing(calls, errors, use_async=False))
    publish(bus, RetriedOrder(), mode)  # fails twice, succeeds on the third
    publish(bus, RetriedOrder(), mode)  # fails once more, then succeeds
    rng = random.Random(5)
    first = list(policy.delays(rng))
    second = list(policy.delays(rng))[:1]
    assert (waits.sync if mode == "sync" else waits.async_) == first + second


@HANDLER_KINDS
def test_sync_retries_wait_in_the_calling_thread(use_async: bool) -> None:
    waits = Waits()
    bus = waits.bus()
    calls: list[int] = []
    errors = [TransientError("a"), TransientError("b")]
    bus.subscribe(RetriedOrder, retry=RetryPolicy(max_attempts=3, initial_delay=0.1))(
        failing(calls, errors, use_async=use_async)
    )
    result = bus.publish(RetriedOrder())
    assert result.ok
    assert waits.sync == pytest.approx([0.1, 0.2])
    assert waits.threads == [threading.get_ident()] * 2


def test_async_retry_wait_does_not_hold_up_a_sibling_of_equal_priority() -> None:
    """concurrent=True: while one handler waits to retry, its sibling runs to the end."""
    log: list[str] = []

    async def main() -> PublishResult:
        sleeping = asyncio.Event()
        gate = asyncio.Event()

        async def gated_sleep(delay: float) -> None:
            log.append(f"sleep {delay}")
            sleeping.set()
            await gate.wait()
            log.append("woke")

        bus = EventBus(
            concurrent=True, clock=TestClock(sleep=_no_sync_sleep, sleep_async=gated_sleep)
        )
        attempts: list[int] = []

        @bus.subscribe(retry=RetryPolicy(max_attempts=2, initial_delay=30.0))
        async def flaky(event: RetriedOrder) -> None:
            attempts.append(1)
            log.append(f"flaky attempt {len(attempts)}")
            if len(attempts) == 1:
                raise TransientError("first attempt")

        @bus.subscribe
        async def sibling(event: RetriedOrder) -> None:
            log.append("sibling waits for the retry wait")
            await sleeping.wait()
            log.append("sibling runs during the wait")
            gate.set()

        async with asyncio.timeout(10):  # only reached if the wait blocks the sibling
            return await bus.publish_async(RetriedOrder())

    result = asyncio.run(main())
    assert result.ok
    assert log == [
        "flaky attempt 1",
        "sleep 30.0",
        "sibling waits for the retry wait",
        "sibling runs during the wait",
        "woke",
        "flaky attempt 2",
    ]


def _no_sync_sleep(delay: float) -> None:
    raise AssertionError(f"the async path must not call the sync sleep ({delay})")


def test_async_retry_wait_lets_sibling_start_first_and_finish_during_the_wait() -> None:
    """The sibling registered first blocks on the retrier's wait; concurrent dispatch frees it."""
    log: list[str] = []

    async def main() -> PublishResult:
        sleeping = asyncio.Event()
        gate = asyncio.Event()

        async def gated_sleep(delay: float) -> None:
            sleeping.set()
            await gate.wait()

        bus = EventBus(
            concurrent=True, clock=TestClock(sleep=_no_sync_sleep, sleep_async=gated_sleep)
        )

        @bus.subscribe
        async def sibling(event: RetriedOrder) -> None:
            log.append("sibling started")
            await sleeping.wait()
            log.append("sibling done")
            gate.set()

        attempts: list[int] = []

        @bus.subscribe(retry=RetryPolicy(max_attempts=3))
        def flaky(event: RetriedOrder) -> None:  # a sync handler retried on the async path
            attempts.append(1)
            log.append(f"flaky attempt {len(attempts)}")
            if len(attempts) == 1:
                raise TransientError("first attempt")

        async with asyncio.timeout(10):
            return await bus.publish_async(RetriedOrder())

    result = asyncio.run(main())
    assert result.ok
    assert log == ["sibling started", "flaky attempt 1", "sibling done", "flaky attempt 2"]


# -- the bus: which errors are retried --------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@HANDLER_KINDS
def test_give_up_on_dead_letters_at_once(mode: str, use_async: bool) -> None:
    waits = Waits()
    bus = waits.bus()
    calls: list[int] = []
    policy = RetryPolicy(max_attempts=5, initial_delay=1.0, give_up_on=(PermanentError,))
    bus.subscribe(RetriedOrder, retry=policy)(
        failing(calls, [PermanentError("bad input")], use_async=use_async)
    )
    result = publish(bus, RetriedOrder(), mode)
    assert len(calls) == 1
    [letter] = result.dead_letters
    assert letter.attempts == 1
    assert letter.error_type == f"{__name__}.PermanentError"
    assert letter.error_message == "bad input"
    assert waits.sync == waits.async_ == []
    assert list(bus.dead_letters) == [letter]


@pytest.mark.parametrize("mode", MODES)
@HANDLER_KINDS
def test_give_up_error_after_retryable_ones_stops_there(mode: str, use_async: bool) -> None:
    waits = Waits()
    bus = waits.bus()
    calls: list[int] = []
    policy = RetryPolicy(max_attempts=5, initial_delay=1.0, give_up_on=PermanentError)  # type: ignore[arg-type]
    errors = [TransientError("1"), TransientError("2"), PermanentError("3"), TransientError("4")]
    bus.subscribe(RetriedOrder, retry=policy)(failing(calls, errors, use_async=use_async))
    result = publish(bus, RetriedOrder(), mode)
    assert len(calls) == 3
    [letter] = result.dead_letters
    assert (letter.attempts, letter.error_message) == (3, "3")
    assert (waits.sync if mode == "sync" else waits.async_) == [1.0, 2.0]


@pytest.mark.parametrize("mode", MODES)
@HANDLER_KINDS
def test_retry_on_narrower_than_the_error_dead_letters_at_once(mode: str, use_async: bool) -> None:
    waits = Waits()
    bus = waits.bus()
    calls: list[int] = []
    policy = RetryPolicy(max_attempts=4, retry_on=(ConnectionError,))
    bus.subscribe(RetriedOrder, retry=policy)(
        failing(calls, [OSError("disk"), OSError("disk")], use_async=use_async)
    )
    result = publish(bus, RetriedOrder(), mode)
    assert len(calls) == 1
    [letter] = result.dead_letters
    assert (letter.attempts, letter.error_type) == (1, "builtins.OSError")
    assert waits.sync == waits.async_ == []


@pytest.mark.parametrize("mode", MODES)
def test_retry_on_subclass_is_retried(mode: str) -> None:
    waits = Waits()
    bus = waits.bus()
    calls: list[int] = []
    policy = RetryPolicy(max_attempts=4, retry_on=(ConnectionError,))
    errors = [ConnectionResetError("reset"), ConnectionRefusedError("refused")]
    bus.subscribe(RetriedOrder, retry=policy)(failing(calls, errors, use_async=True))
    result = publish(bus, RetriedOrder(), mode)
    assert result.ok
    assert len(calls) == 3


@pytest.mark.parametrize("mode", MODES)
def test_bus_default_policy_applies_and_a_subscription_policy_overrides(mode: str) -> None:
    waits = Waits()
    default = RetryPolicy(max_attempts=3, initial_delay=0.5, give_up_on=(PermanentError,))
    bus = waits.bus(retry=default)
    by_default: list[int] = []
    own: list[int] = []
    default_gives_up: list[int] = []
    own_retries: list[int] = []
    never = [PermanentError(str(i)) for i in range(9)]
    # no policy of its own: the default's give_up_on stops it at once
    bus.subscribe(RetriedOrder, priority=4, name="default gives up")(
        failing(default_gives_up, never, use_async=True)
    )
    # its own policy has no give_up_on: PermanentError is retried up to its max_attempts
    own_policy = RetryPolicy(max_attempts=2, initial_delay=7.0)
    bus.subscribe(RetriedOrder, priority=3, retry=own_policy, name="own retries")(
        failing(own_retries, never, use_async=False)
    )
    transient = [TransientError(str(i)) for i in range(9)]
    bus.subscribe(RetriedOrder, priority=2, name="by default")(
        failing(by_default, transient, use_async=False)
    )
    # a policy of its own with retry_on excluding the error: no retry, default or not
    keys_only = RetryPolicy(max_attempts=9, retry_on=KeyError)  # type: ignore[arg-type]
    bus.subscribe(RetriedOrder, priority=1, retry=keys_only, name="own")(
        failing(own, transient, use_async=True)
    )
    result = publish(bus, RetriedOrder(), mode)
    counts = (len(default_gives_up), len(own_retries), len(by_default), len(own))
    assert counts == (1, 2, 3, 1)
    assert [letter.attempts for letter in result.dead_letters] == [1, 2, 3, 1]
    assert (waits.sync if mode == "sync" else waits.async_) == [7.0, 0.5, 1.0]


@pytest.mark.parametrize("mode", MODES)
def test_default_bus_makes_one_attempt(mode: str) -> None:
    waits = Waits()
    bus = waits.bus()
    calls: list[int] = []
    bus.subscribe(RetriedOrder)(failing(calls, [TransientError("once")], use_async=True))
    result = publish(bus, RetriedOrder(), mode)
    assert len(calls) == 1
    assert [letter.attempts for letter in result.dead_letters] == [1]


# -- the bus: timeouts ---------------------------------------------------------------------


def never_finishing(calls: list[str]) -> t.Callable[[RetriedOrder], t.Awaitable[None]]:
    """An async handler that waits forever, and records that it was cancelled."""

    async def stuck(event: RetriedOrder) -> None:
        calls.append("started")
        try:
            await asyncio.Event().wait()  # never set: timeout=0 expires here
        except asyncio.CancelledError:
            calls.append("cancelled")
            raise

    return stuck


@pytest.mark.parametrize("mode", MODES)
def test_timed_out_attempt_is_a_failed_attempt_and_retried(mode: str) -> None:
    waits = Waits()
    bus = waits.bus()
    calls: list[str] = []
    handler = never_finishing(calls)
    bus.subscribe(RetriedOrder, timeout=0, retry=RetryPolicy(max_attempts=3, initial_delay=0.1))(
        handler
    )
    result = publish(bus, RetriedOrder(), mode)
    assert calls == ["started", "cancelled"] * 3
    [letter] = result.dead_letters
    assert letter.attempts == 3
    assert letter.error_type == "eventbus.errors.HandlerTimeoutError"
    assert letter.handler.endswith("never_finishing.<locals>.stuck")
    assert "timeout" in letter.error_message
    assert (waits.sync if mode == "sync" else waits.async_) == pytest.approx([0.1, 0.2])


@pytest.mark.parametrize("mode", MODES)
def test_timed_out_attempt_then_success(mode: str) -> None:
    waits = Waits()
    bus = waits.bus()
    calls: list[str] = []
    stuck = never_finishing(calls)

    async def slow_then_fast(event: RetriedOrder) -> None:
        if not calls:
            await stuck(event)
        calls.append("fast")

    bus.subscribe(RetriedOrder, timeout=0, retry=RetryPolicy(max_attempts=2))(slow_then_fast)
    result = publish(bus, RetriedOrder(), mode)
    assert result.ok
    assert calls == ["started", "cancelled", "fast"]


@pytest.mark.parametrize("mode", MODES)
def test_timeout_without_retry_policy_dead_letters_after_one_attempt(mode: str) -> None:
    bus = Waits().bus()
    calls: list[str] = []
    bus.subscribe(RetriedOrder, timeout=0)(never_finishing(calls))
    result = publish(bus, RetriedOrder(), mode)
    assert calls == ["started", "cancelled"]
    [letter] = result.dead_letters
    assert (letter.attempts, letter.error_type) == (1, "eventbus.errors.HandlerTimeoutError")


@pytest.mark.parametrize("mode", MODES)
def test_timeout_is_not_retried_when_retry_on_excludes_it(mode: str) -> None:
    bus = Waits().bus()
    calls: list[str] = []
    policy = RetryPolicy(max_attempts=3, retry_on=(ConnectionError,))
    bus.subscribe(RetriedOrder, timeout=0, retry=policy)(never_finishing(calls))
    result = publish(bus, RetriedOrder(), mode)
    assert calls == ["started", "cancelled"]
    assert [letter.attempts for letter in result.dead_letters] == [1]


@pytest.mark.parametrize("mode", MODES)
def test_timeout_is_retried_under_retry_on_timeout_error(mode: str) -> None:
    bus = Waits().bus()
    calls: list[str] = []
    policy = RetryPolicy(max_attempts=2, retry_on=(TimeoutError,))
    bus.subscribe(RetriedOrder, timeout=0, retry=policy)(never_finishing(calls))
    publish(bus, RetriedOrder(), mode)
    assert calls == ["started", "cancelled"] * 2


@pytest.mark.parametrize("mode", MODES)
def test_timeout_in_concurrent_group_spares_the_sibling(mode: str) -> None:
    bus = EventBus(concurrent=True)
    calls: list[str] = []
    bus.subscribe(RetriedOrder, timeout=0)(never_finishing(calls))

    @bus.subscribe
    async def sibling(event: RetriedOrder) -> None:
        await asyncio.sleep(0)
        calls.append("sibling")

    result = publish(bus, RetriedOrder(), mode)
    assert sorted(calls) == ["cancelled", "sibling", "started"]
    assert [letter.error_type for letter in result.dead_letters] == [
        "eventbus.errors.HandlerTimeoutError"
    ]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("awaits_first", [False, True])
def test_handler_raising_timeout_error_itself_is_not_a_handler_timeout(
    mode: str, awaits_first: bool
) -> None:
    bus = Waits().bus()

    async def own_timeout(event: RetriedOrder) -> None:
        if awaits_first:
            await asyncio.sleep(0)
        raise TimeoutError("the upstream API timed out")

    bus.subscribe(RetriedOrder, timeout=3600)(own_timeout)
    result = publish(bus, RetriedOrder(), mode)
    [letter] = result.dead_letters
    assert letter.error_type == "builtins.TimeoutError"
    assert letter.error_message == "the upstream API timed out"


@pytest.mark.parametrize("mode", MODES)
def test_handler_raising_timeout_error_before_any_await_under_timeout_zero(mode: str) -> None:
    bus = Waits().bus()

    async def own_timeout(event: RetriedOrder) -> None:
        raise TimeoutError("mine")

    bus.subscribe(RetriedOrder, timeout=0)(own_timeout)
    [letter] = publish(bus, RetriedOrder(), mode).dead_letters
    assert letter.error_type == "builtins.TimeoutError"


@pytest.mark.parametrize("mode", MODES)
def test_handler_finishing_without_suspending_beats_timeout_zero(mode: str) -> None:
    bus = Waits().bus()
    calls: list[str] = []

    async def instant(event: RetriedOrder) -> None:
        calls.append("done")

    bus.subscribe(RetriedOrder, timeout=0)(instant)
    assert publish(bus, RetriedOrder(), mode).ok
    assert calls == ["done"]


def test_timeout_is_kept_on_the_subscription() -> None:
    bus = EventBus()

    async def bounded(event: RetriedOrder) -> None: ...

    bus.subscribe(RetriedOrder, timeout=2)(bounded)
    [sub] = bus.subscriptions
    assert sub.timeout == 2.0
    assert isinstance(sub.timeout, float)


@pytest.mark.parametrize("run_in_thread", [False, True])
def test_timeout_refused_for_sync_handlers(run_in_thread: bool) -> None:
    bus = EventBus()

    def blocking(event: RetriedOrder) -> None: ...

    with pytest.raises(TypeError, match=r"timeout=1\.5.*sync function.*async def"):
        bus.subscribe(RetriedOrder, timeout=1.5, run_in_thread=run_in_thread)(blocking)
    assert bus.subscriptions == ()


@pytest.mark.parametrize("timeout", [-1, math.nan, math.inf, "5", True])
def test_timeout_must_be_a_number_of_seconds(timeout: object) -> None:
    bus = EventBus()

    async def bounded(event: RetriedOrder) -> None: ...

    with pytest.raises((TypeError, ValueError), match="timeout"):
        bus.subscribe(RetriedOrder, timeout=timeout)(bounded)  # type: ignore[call-overload]
    assert bus.subscriptions == ()


# -- the bus: unhandled events ----------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_unhandled_event_is_not_a_failure_by_default(mode: str) -> None:
    bus = EventBus()
    seen: list[Event] = []

    def on_unhandled(sender: EventBus, *, event: Event) -> None:
        seen.append(event)

    event = RetriedNobodyListens()
    with signals.event_unhandled.connected_to(on_unhandled, sender=bus):
        result = publish(bus, event, mode)
    assert result.ok
    assert result.dead_letters == []
    assert len(bus.dead_letters) == 0
    assert seen == [event]


@pytest.mark.parametrize("mode", MODES)
def test_report_unhandled_makes_a_letter(mode: str) -> None:
    waits = Waits()
    bus = waits.bus(report_unhandled=True)
    seen: list[Event] = []
    lettered: list[DeadLetter] = []

    def on_unhandled(sender: EventBus, *, event: Event) -> None:
        seen.append(event)

    def on_letter(sender: EventBus, *, dead_letter: DeadLetter) -> None:
        lettered.append(dead_letter)

    event = RetriedNobodyListens(n=4)
    with (
        signals.event_unhandled.connected_to(on_unhandled, sender=bus),
        signals.event_dead_lettered.connected_to(on_letter, sender=bus),
    ):
        result = publish(bus, event, mode)
    assert not result.ok
    [letter] = result.dead_letters
    assert letter.handler == NO_HANDLER
    assert letter.unhandled
    assert letter.attempts == 0
    assert letter.error_type.endswith("UnhandledEventError")
    assert letter.error_type == f"{UnhandledEventError.__module__}.UnhandledEventError"
    assert letter.event == event
    assert letter.event_type == RetriedNobodyListens.event_type
    assert letter.failed_at == letter.first_failed_at == waits.clock.now
    assert list(bus.dead_letters) == [letter]
    assert seen == [event]
    assert lettered == [letter]


@pytest.mark.parametrize("mode", MODES)
def test_unhandled_letter_redriven_after_subscribing_is_delivered_and_removed(mode: str) -> None:
    bus = EventBus(report_unhandled=True)
    event = RetriedNobodyListens(n=9)
    [letter] = publish(bus, event, mode).dead_letters
    received: list[RetriedNobodyListens] = []

    @bus.subscribe
    async def late(event: RetriedNobodyListens) -> None:
        received.append(event)

    result = bus.redrive(letter) if mode == "sync" else asyncio.run(bus.redrive_async(letter))
    assert result.ok
    assert received == [event]
    assert len(bus.dead_letters) == 0


@pytest.mark.parametrize("mode", MODES)
def test_unhandled_letter_redriven_while_still_unhandled_stays(mode: str) -> None:
    waits = Waits()
    bus = waits.bus(report_unhandled=False)
    reporting = waits.bus(report_unhandled=True)
    [letter] = publish(reporting, RetriedNobodyListens(), mode).dead_letters
    waits.clock.advance(60)
    # redriven on a bus that does not report unhandled events: still a failure, same letter
    if mode == "sync":
        result = bus.redrive(letter, store=reporting.dead_letters)
    else:
        result = asyncio.run(bus.redrive_async(letter, store=reporting.dead_letters))
    assert not result.ok
    [again] = result.dead_letters
    assert again.id == letter.id
    assert again.unhandled
    assert again.attempts == 0
    assert again.failed_at == letter.failed_at + timedelta(seconds=60)
    assert again.first_failed_at == letter.first_failed_at
    assert list(reporting.dead_letters) == [again]
    assert len(bus.dead_letters) == 0


def test_unhandled_child_of_a_cascade_is_reported_too() -> None:
    bus = EventBus(report_unhandled=True)

    @bus.subscribe
    def parent(event: RetriedOrder) -> None:
        bus.publish(RetriedNobodyListens(n=1))

    result = bus.publish(RetriedOrder())
    [letter] = result.dead_letters
    assert letter.unhandled
    assert isinstance(letter.event, RetriedNobodyListens)
    assert letter.event.causation_id == result.event.event_id


# -- dead letters: bounded sizes and failure times ------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@HANDLER_KINDS
def test_huge_error_message_is_cut_keeping_head_and_tail(mode: str, use_async: bool) -> None:
    bus = EventBus()
    head, tail = "HEAD-of-the-message:", ":end-of-the-MESSAGE"
    message = head + "x" * 100_000 + tail
    assert len(message) > 100_000
    calls: list[int] = []
    bus.subscribe(RetriedOrder)(failing(calls, [ValueError(message)], use_async=use_async))
    [letter] = publish(bus, RetriedOrder(), mode).dead_letters
    assert len(letter.error_message) <= 2_000
    assert letter.error_message.startswith(head)
    assert letter.error_message.endswith(tail)
    assert "cut" in letter.error_message
    assert len(letter.traceback) <= 16_000
    assert letter.traceback.startswith("Traceback")
    assert letter.traceback.rstrip().endswith(tail)  # the error line is at the end


def test_message_at_the_limit_is_kept_whole() -> None:
    bus = EventBus()
    message = "m" * 2_000
    calls: list[int] = []
    bus.subscribe(RetriedOrder)(failing(calls, [ValueError(message)], use_async=False))
    [letter] = bus.publish(RetriedOrder()).dead_letters
    assert letter.error_message == message


def test_huge_traceback_is_cut_keeping_the_error_line() -> None:
    bus = EventBus()

    def deep(n: int) -> None:
        if n == 0:
            raise ValueError("at the bottom")
        deep(n - 1)

    @bus.subscribe
    def recursive(event: RetriedOrder) -> None:
        deep(400)

    [letter] = bus.publish(RetriedOrder()).dead_letters
    assert len(letter.traceback) <= 16_000
    assert letter.traceback.startswith("Traceback")
    assert letter.traceback.rstrip().endswith("ValueError: at the bottom")


@pytest.mark.parametrize("mode", MODES)
@HANDLER_KINDS
def test_first_and_last_failure_times_from_the_injected_clock(mode: str, use_async: bool) -> None:
    waits = Waits()
    start = waits.clock.now
    bus = waits.bus()
    calls: list[int] = []
    policy = RetryPolicy(max_attempts=4, initial_delay=10.0, backoff=3.0)
    errors = [TransientError(str(i)) for i in range(9)]
    bus.subscribe(RetriedOrder, retry=policy)(failing(calls, errors, use_async=use_async))
    [letter] = publish(bus, RetriedOrder(), mode).dead_letters
    assert letter.first_failed_at == start
    # the waits: 10, 30, then 90 capped at max_delay=60
    assert letter.failed_at == start + timedelta(seconds=10 + 30 + 60)
    assert letter.failed_at > letter.first_failed_at


@pytest.mark.parametrize("mode", MODES)
def test_single_attempt_failure_times_are_equal(mode: str) -> None:
    waits = Waits()
    bus = waits.bus()
    calls: list[int] = []
    bus.subscribe(RetriedOrder)(failing(calls, [TransientError("x")], use_async=False))
    [letter] = publish(bus, RetriedOrder(), mode).dead_letters
    assert letter.first_failed_at == letter.failed_at == waits.clock.now


@pytest.mark.parametrize("mode", MODES)
def test_dead_letter_records_where_it_failed(mode: str) -> None:
    bus = Waits().bus()
    calls: list[int] = []
    bus.subscribe(RetriedOrder)(failing(calls, [TransientError("x")], use_async=True))
    event = RetriedOrder(order_id="o-42")
    [letter] = publish(bus, event, mode).dead_letters
    assert letter.event == event
    assert letter.event_type == RetriedOrder.event_type
    assert letter.host == socket.gethostname()
    assert letter.pid == os.getpid()
    assert isinstance(letter.id, uuid.UUID)
    assert letter.handler.endswith("failing.<locals>.handler_async")


class UnprintableError(Exception):
    """An error whose ``str()`` itself fails (a buggy ``__str__``, a bad format string)."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")


@pytest.mark.parametrize("mode", MODES)
def test_error_with_a_broken_str_is_still_dead_lettered(mode: str) -> None:
    """A handler's failure never stops the other handlers, even when its error cannot print.

    An unguarded ``str(error)`` once let the RuntimeError from ``__str__`` escape
    ``publish``, so the next handler never ran.
    """
    bus = EventBus()
    ran: list[str] = []

    @bus.subscribe(priority=1)
    def unprintable(event: RetriedOrder) -> None:
        raise UnprintableError

    @bus.subscribe
    def next_one(event: RetriedOrder) -> None:
        ran.append("next")

    result = publish(bus, RetriedOrder(), mode)
    assert ran == ["next"]
    [letter] = result.dead_letters
    assert letter.error_type == f"{__name__}.UnprintableError"
    assert isinstance(letter.error_message, str)
    assert list(bus.dead_letters) == [letter]
