"""FakeClock and use_clock(bus): retry waits that take no time, and time a test moves."""

from __future__ import annotations

import collections.abc as c
import contextlib
import math
import threading
import typing as t
from datetime import UTC, datetime, timedelta

from ..clock import Clock, SystemClock
from ..retry import MAX_DELAY
from . import _state

if t.TYPE_CHECKING:
    from ..bus import EventBus

__all__ = ["FakeClock", "use_clock"]

C = t.TypeVar("C", bound=Clock)


class FakeClock(SystemClock):
    """A :class:`~eventbus.Clock` whose time moves only when a test (or a wait) moves it.

    ``now()`` is ``start`` (by default the real time when the clock was
    made) plus every advance since. A retry's wait returns at once and
    moves the time forward by what it would have waited, so a letter's
    ``failed_at`` is as late as with the real clock; ``sleeps`` lists the
    waits, in seconds, in order. ``sleep_async`` also lets the event loop
    run other tasks once, as a real wait would. Jitter comes from a
    ``random.Random(seed)``: the same delays on every run.

    Thread-safe. Install it on a bus for a block with :func:`use_clock`,
    or make a bus with it: ``EventBus(clock=FakeClock())``.
    """

    __slots__ = ("_lock", "_now", "sleeps")

    def __init__(self, start: datetime | None = None, *, seed: int | None = 0) -> None:
        super().__init__(seed=seed)
        if start is None:
            start = datetime.now(UTC)
        elif not isinstance(start, datetime) or start.utcoffset() is None:
            raise TypeError(
                f"start must be a timezone-aware datetime, got {start!r}; "
                "e.g. datetime(2026, 1, 1, tzinfo=UTC)"
            )
        self._now = start.astimezone(UTC)
        self._lock = threading.Lock()
        #: Every wait asked of this clock, in seconds, in order.
        self.sleeps: list[float] = []

    def now(self) -> datetime:
        return self._now

    def advance(self, by: float | timedelta, /) -> datetime:
        """Move the time forward by ``by`` (seconds, or a timedelta); return the new time."""
        step = _step(by, "advance()")
        with self._lock:
            self._now = _later(self._now, step)
            return self._now

    def sleep(self, seconds: float, /) -> None:
        step = _step(seconds, "sleep()")
        with self._lock:
            self.sleeps.append(seconds)
            self._now = _later(self._now, step)

    async def sleep_async(self, seconds: float, /) -> None:
        import asyncio

        self.sleep(seconds)
        await asyncio.sleep(0)

    def __repr__(self) -> str:
        return f"<FakeClock now={self._now.isoformat()} sleeps={len(self.sleeps)}>"


def _step(by: object, what: str) -> timedelta:
    """``by`` (seconds or a timedelta) as a step forward; errors name ``what`` was called."""
    if isinstance(by, timedelta):
        step = by
    elif isinstance(by, bool) or not isinstance(by, int | float):
        raise TypeError(f"{what} takes seconds or a timedelta, got {by!r}")
    elif abs(by) > MAX_DELAY or not math.isfinite(by):  # abs first: a huge int is no float
        raise ValueError(f"{what} takes a finite number of seconds up to {MAX_DELAY:g}, got {by!r}")
    else:
        step = timedelta(seconds=by)
    if step < timedelta(0):
        raise ValueError(f"time only moves forward; {what} got {by!r}")
    return step


def _later(now: datetime, step: timedelta) -> datetime:
    try:
        return now + step
    except OverflowError:
        raise ValueError(
            f"a FakeClock at {now.isoformat()} cannot move {step} forward: past year 9999"
        ) from None


@t.overload
def use_clock(bus: EventBus, /) -> contextlib.AbstractContextManager[FakeClock]: ...


@t.overload
def use_clock(bus: EventBus, clock: C, /) -> contextlib.AbstractContextManager[C]: ...


def use_clock(
    bus: EventBus, clock: Clock | None = None, /
) -> contextlib.AbstractContextManager[t.Any]:
    """Give ``bus`` another clock inside the block (a new :class:`FakeClock` by default).

    Works on a bus that already exists, one built when the application was
    imported included; at the end of the block the bus has its own clock
    back. Yields the clock installed::

        with use_clock(bus) as clock:
            bus.publish(OrderPlaced(order_id="o1"))   # retries wait no time
        assert clock.sleeps == [0.1, 0.2]
    """
    from ..bus import EventBus, _checked_clock

    if not isinstance(bus, EventBus):
        raise TypeError(f"use_clock() takes an EventBus, got {bus!r}")
    return _installed(bus, FakeClock() if clock is None else _checked_clock(clock))


@contextlib.contextmanager
def _installed(bus: EventBus, clock: C) -> c.Iterator[C]:
    previous = bus.clock
    bus.clock = clock

    def restore() -> None:
        bus.clock = previous

    change = _state.Change(f"use_clock({clock!r})", bus, restore)
    _state.add(change)
    try:
        yield clock
    finally:
        change.undo()
