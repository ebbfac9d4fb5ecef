"""Clocks for tests: a bus's waits recorded instead of waited, its time set by the test."""

from __future__ import annotations

import collections.abc as c
import random
from datetime import datetime

from eventbus import SystemClock


class TestClock(SystemClock):
    """A :class:`~eventbus.Clock` made of the parts a test wants to see or control.

    ``sleep`` and ``sleep_async`` replace the waits (by default: no wait at
    all), ``now`` the time (by default the real one), ``rng`` the source of
    jitter (by default a private ``random.Random``).
    """

    __test__ = False  # not a test class, whatever its name says
    __slots__ = ("_now", "_rng", "_sleep", "_sleep_async")

    def __init__(
        self,
        *,
        sleep: c.Callable[[float], object] | None = None,
        sleep_async: c.Callable[[float], c.Awaitable[object]] | None = None,
        now: c.Callable[[], datetime] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__()
        self._sleep = sleep
        self._sleep_async = sleep_async
        self._now = now
        self._rng = rng

    def now(self) -> datetime:
        return self._now() if self._now is not None else super().now()

    def sleep(self, seconds: float, /) -> None:
        if self._sleep is not None:
            self._sleep(seconds)

    async def sleep_async(self, seconds: float, /) -> None:
        if self._sleep_async is not None:
            await self._sleep_async(seconds)

    def random(self) -> float:
        return self._rng.random() if self._rng is not None else super().random()
