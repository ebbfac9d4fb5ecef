"""RetryPolicy: how many times a handler is attempted, and how long to wait between."""

from __future__ import annotations

import collections.abc as c
import dataclasses
import math

__all__ = ["RetryPolicy"]


@dataclasses.dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often a failing handler is attempted before its event is dead-lettered.

    ``max_attempts`` counts every attempt, the first included, so the default
    ``RetryPolicy()`` runs a handler once and never retries. Between attempts
    the bus waits ``initial_delay`` seconds, then ``backoff`` times longer
    after each further failure, never longer than ``max_delay``::

        >>> list(RetryPolicy(max_attempts=4, initial_delay=0.5).delays())
        [0.5, 1.0, 2.0]
    """

    max_attempts: int = 1
    initial_delay: float = 0.0
    backoff: float = 2.0
    max_delay: float = 60.0

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise TypeError(f"max_attempts must be an int, got {self.max_attempts!r}")
        if self.max_attempts < 1:
            raise ValueError(
                f"max_attempts counts every attempt, the first included, so it must be >= 1; "
                f"got {self.max_attempts}"
            )
        for name in ("initial_delay", "backoff", "max_delay"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.backoff < 1:
            raise ValueError(
                f"backoff multiplies each delay, so it must be >= 1; got {self.backoff}"
            )

    def delays(self) -> c.Iterator[float]:
        """The waits before attempts 2..max_attempts, in seconds (pure; for docs and tests)."""
        delay = float(self.initial_delay)
        for _ in range(self.max_attempts - 1):
            yield min(delay, self.max_delay)
            delay *= self.backoff


ONE_ATTEMPT = RetryPolicy()
