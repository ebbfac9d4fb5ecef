"""Clock: what time it is, how a retry waits, where jitter comes from; one object per bus.

A bus asks its clock for everything time-related: ``now()`` when a handler
fails or a letter is filtered by age, ``sleep``/``sleep_async`` between
attempts, ``random()`` for jitter. :class:`SystemClock` is the real one.
Replace it, even on a bus that was built at import time, to make retry
waits instant in a test::

    class InstantClock(SystemClock):
        def sleep(self, seconds: float) -> None:
            pass

        async def sleep_async(self, seconds: float) -> None:
            pass

    bus.clock = InstantClock()
"""

from __future__ import annotations

import random as _random
import time
import typing as t
from datetime import UTC, datetime

__all__ = ["Clock", "SystemClock"]


@t.runtime_checkable
class Clock(t.Protocol):
    """The interface of a bus's clock (``EventBus(clock=...)``, ``bus.clock = ...``)."""

    def now(self) -> datetime:
        """The current time, timezone-aware (UTC)."""
        ...

    def sleep(self, seconds: float, /) -> None:
        """Wait ``seconds`` before a retry, on the sync path (blocks the thread)."""

    async def sleep_async(self, seconds: float, /) -> None:
        """Wait ``seconds`` before a retry, on the async path (lets the loop run)."""

    def random(self) -> float:
        """A number in [0, 1), for retry jitter."""
        ...


class SystemClock:
    """The real clock: ``datetime.now(UTC)``, ``time.sleep``, ``asyncio.sleep``, a private RNG.

    ``seed`` makes the jitter reproducible.
    """

    __slots__ = ("_random",)

    def __init__(self, *, seed: int | None = None) -> None:
        self._random = _random.Random(seed)

    def now(self) -> datetime:
        return datetime.now(UTC)

    def sleep(self, seconds: float, /) -> None:
        time.sleep(seconds)

    async def sleep_async(self, seconds: float, /) -> None:
        import asyncio  # only a retrying async handler needs it

        await asyncio.sleep(seconds)

    def random(self) -> float:
        return self._random.random()

    def __repr__(self) -> str:
        return "<SystemClock>"
