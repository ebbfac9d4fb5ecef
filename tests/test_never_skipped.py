"""No handler is silently skipped: generators are refused or dead-lettered, delays fit a sleep.

A handler that returns a generator has not run its body; nobody would
iterate it, so the bus treats it as a failure (a dead letter naming the
fix), exactly as it treats a sync handler that returns a coroutine. A retry
delay too long for ``time.sleep`` is refused when the policy is made.
"""

from __future__ import annotations

import asyncio
import collections.abc as c
import functools
import math
import time
import typing as t

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventbus import MAX_DELAY, Event, EventBus, RetryPolicy

Mode = t.Literal["sync", "async", "thread", "concurrent"]
MODES: tuple[Mode, ...] = ("sync", "async", "thread", "concurrent")


class Packed(Event):
    order_id: str


def publish(mode: Mode, handler: c.Callable[[Packed], object]) -> tuple[EventBus, list[str]]:
    """Publish one event to ``handler`` and to a well-behaved handler after it."""
    bus = EventBus(concurrent=mode == "concurrent")
    after: list[str] = []
    bus.subscribe(Packed, priority=1, run_in_thread=mode == "thread", name="under test")(handler)
    bus.subscribe(Packed, name="after")(lambda event: after.append(event.order_id))
    event = Packed(order_id="o-1")
    if mode == "sync":
        bus.publish(event)
    else:
        asyncio.run(bus.publish_async(event))
    return bus, after


def logged(function: c.Callable[[Packed], object]) -> c.Callable[[Packed], object]:
    """A decorator that hides what it wraps: the bus sees a plain function."""

    @functools.wraps(function)
    def wrapper(event: Packed) -> object:
        return function(event)

    del wrapper.__wrapped__  # as a decorator that does not use functools.wraps would
    return wrapper


ran: list[str] = []


@logged
def decorated_generator(event: Packed) -> c.Iterator[None]:
    ran.append("generator body")
    yield


async def _async_generator(event: Packed) -> c.AsyncIterator[None]:
    ran.append("async generator body")
    yield


HIDDEN_GENERATORS: dict[str, c.Callable[[Packed], object]] = {
    "decorated generator function": decorated_generator,
    "lambda returning an async generator": lambda event: _async_generator(event),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", sorted(HIDDEN_GENERATORS))
def test_a_handler_returning_a_generator_is_a_dead_letter(kind: str, mode: Mode) -> None:
    ran.clear()
    bus, after = publish(mode, HIDDEN_GENERATORS[kind])
    [letter] = bus.dead_letters
    assert letter.handler == "under test"
    assert letter.error_type == "builtins.TypeError"
    assert "generator that nobody would iterate" in letter.error_message
    assert "use return instead of yield" in letter.error_message
    assert ran == []  # its body never ran, and the bus says so instead of reporting success
    assert after == ["o-1"]  # the handlers after it still ran


class YieldingCall:
    def __call__(self, event: Packed) -> c.Iterator[None]:
        yield


class AsyncYieldingCall:
    async def __call__(self, event: Packed) -> c.AsyncIterator[None]:
        yield


@pytest.mark.parametrize("handler", [YieldingCall(), AsyncYieldingCall()], ids=["sync", "async"])
def test_a_callable_instance_whose_call_yields_is_refused_at_subscribe(
    bus: EventBus, handler: c.Callable[[Packed], object]
) -> None:
    with pytest.raises(TypeError, match=r"generator function.*use return instead of yield"):
        bus.subscribe(Packed)(handler)
    assert bus.subscriptions == ()


# -- delays that a sleep cannot take -------------------------------------------------------


@pytest.mark.parametrize("field", ["initial_delay", "max_delay"])
@pytest.mark.parametrize("value", [1e300, MAX_DELAY * 2, 2**64])
def test_a_delay_longer_than_a_sleep_can_wait_is_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=rf"{field} must be at most MAX_DELAY"):
        RetryPolicy(max_attempts=2, **{field: value})  # type: ignore[arg-type]


def test_the_longest_accepted_delay_fits_time_sleep_and_asyncio_sleep() -> None:
    async def sleep_briefly_for(seconds: float) -> None:
        await asyncio.wait_for(asyncio.sleep(seconds), timeout=0.01)

    with pytest.raises(TimeoutError):  # scheduled, as asked: not refused
        asyncio.run(sleep_briefly_for(MAX_DELAY))

    # time.sleep converts its argument to a deadline in nanoseconds on the monotonic clock;
    # it refuses (OverflowError) a deadline past 2**63 ns, which MAX_DELAY stays well within.
    assert (time.monotonic() + MAX_DELAY) * 1e9 < 2**63
    with pytest.raises(OverflowError):
        time.sleep(1e300)  # what a policy could ask for before
    policy = RetryPolicy(max_attempts=3, initial_delay=MAX_DELAY, max_delay=MAX_DELAY)
    assert list(policy.delays()) == [MAX_DELAY, MAX_DELAY]


def test_a_subscription_timeout_longer_than_max_delay_is_refused(bus: EventBus) -> None:
    async def pack(event: Packed) -> None: ...

    with pytest.raises(TypeError, match="timeout must be a number of seconds from 0 to MAX_DELAY"):
        bus.subscribe(timeout=1e300)(pack)


@given(
    initial=st.floats(min_value=0, max_value=MAX_DELAY),
    maximum=st.floats(min_value=0, max_value=MAX_DELAY),
    backoff=st.floats(min_value=1, max_value=1e300),
    jitter=st.floats(min_value=0, max_value=1),
    draws=st.lists(st.floats(min_value=0, max_value=1, exclude_max=True), min_size=8, max_size=8),
)
def test_every_wait_of_an_accepted_policy_is_one_a_sleep_accepts(
    initial: float, maximum: float, backoff: float, jitter: float, draws: list[float]
) -> None:
    policy = RetryPolicy(
        max_attempts=9, initial_delay=initial, max_delay=maximum, backoff=backoff, jitter=jitter
    )
    values = iter(draws)

    class Draws:
        def random(self) -> float:
            return next(values)

    for wait in policy.delays(Draws()):
        assert math.isfinite(wait)
        assert 0 <= wait <= MAX_DELAY
