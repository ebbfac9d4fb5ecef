"""RetryPolicy: how often a handler is attempted, which errors are worth it, how long to wait.

This is the whole retry core, and it does no I/O: :meth:`RetryPolicy.next_delay`
answers, after a failed attempt, whether there is another and how long to
wait for it. The bus's sync and async drivers (``eventbus.plans``) only call
the handler, ask, and wait with the bus's clock.
"""

from __future__ import annotations

import collections.abc as c
import dataclasses
import math
import typing as t

__all__ = ["MAX_DELAY", "RetryPolicy"]

#: The longest wait a policy may ask for, in seconds (about 31 years). ``time.sleep``
#: refuses waits whose deadline does not fit the platform's clock (near 2**63
#: nanoseconds, less the time since boot), and ``asyncio.sleep`` waits as asked
#: however long: a policy made with a longer delay is refused when it is created.
MAX_DELAY: t.Final = 1e9


@dataclasses.dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often a failing handler is attempted before its event is dead-lettered.

    ``max_attempts`` counts every attempt, the first included, so the default
    ``RetryPolicy()`` runs a handler once and never retries.

    Waits: ``initial_delay`` seconds before the second attempt, then
    ``backoff`` times longer before each further one, never more than
    ``max_delay``. ``jitter`` (0 to 1) spreads each wait at random over
    ``[delay * (1 - jitter), delay * (1 + jitter)]``, still capped by
    ``max_delay``, so that many handlers failing at once do not all retry at
    once. Delays are refused (``ValueError``) beyond :data:`MAX_DELAY`.

    Errors: an error is retried when it is an instance of ``retry_on``
    (default: every ``Exception``) and not of ``give_up_on`` (default:
    none); any other error dead-letters the event at once. Put errors that
    a retry cannot fix (a validation error, a 4xx answer) in ``give_up_on``.

    >>> list(RetryPolicy(max_attempts=4, initial_delay=0.5).delays())
    [0.5, 1.0, 2.0]
    """

    max_attempts: int = 1
    initial_delay: float = 0.0
    backoff: float = 2.0
    max_delay: float = 60.0
    jitter: float = 0.0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    give_up_on: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise TypeError(f"max_attempts must be an int, got {self.max_attempts!r}")
        if self.max_attempts < 1:
            raise ValueError(
                f"max_attempts counts every attempt, the first included, so it must be >= 1; "
                f"got {self.max_attempts}"
            )
        for name in ("initial_delay", "backoff", "max_delay", "jitter"):
            value = getattr(self, name)
            if not finite_non_negative(value):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        for name in ("initial_delay", "max_delay"):
            value = getattr(self, name)
            if value > MAX_DELAY:
                raise ValueError(
                    f"{name} must be at most MAX_DELAY = {MAX_DELAY:g} seconds (about 31 years; "
                    f"time.sleep cannot wait longer on every platform), got {value!r}; "
                    "a wait that long is better left to a redrive of the dead letter"
                )
        if self.backoff < 1:
            raise ValueError(
                f"backoff multiplies each delay, so it must be >= 1; got {self.backoff}"
            )
        if self.jitter > 1:
            raise ValueError(f"jitter is a fraction of each delay, from 0 to 1; got {self.jitter}")
        for name in ("retry_on", "give_up_on"):
            value = getattr(self, name)
            if isinstance(value, type):  # a lone class is a common slip; accept it
                value = (value,)
                object.__setattr__(self, name, value)
            if not isinstance(value, tuple) or not all(
                isinstance(k, type) and issubclass(k, BaseException) for k in value
            ):
                raise TypeError(
                    f"{name} must be a tuple of exception classes, e.g. (ConnectionError,); "
                    f"got {value!r}"
                )

    def delays(self, rng: _Random | None = None) -> c.Iterator[float]:
        """The waits before attempts 2..max_attempts, in seconds.

        Without ``rng`` the nominal schedule (no jitter), for docs and tests;
        with one (anything with a ``random()`` method: a ``random.Random``, a
        :class:`~eventbus.Clock`), the jittered waits the bus would use.
        """
        for attempt in range(1, self.max_attempts):
            yield self.wait_after(attempt, rng)

    def next_delay(
        self, attempt: int, error: BaseException, rng: _Random | None = None
    ) -> float | None:
        """After ``attempt`` (1 for the first) failed with ``error``: the wait before the next.

        None means give up now: the attempts are used up, or ``error`` is not
        worth retrying under this policy.

        >>> RetryPolicy(max_attempts=3, initial_delay=0.5).next_delay(1, OSError())
        0.5
        >>> RetryPolicy(max_attempts=3).next_delay(3, OSError()) is None
        True
        """
        if attempt >= self.max_attempts or not self.retries(error):
            return None
        return self.wait_after(attempt, rng)

    def wait_after(self, attempt: int, rng: _Random | None = None) -> float:
        """The wait after failed ``attempt``, before the next one (jittered if ``rng``)."""
        nominal = min(float(self.initial_delay), self.max_delay)
        for _ in range(attempt - 1):  # grown step by step, capped each time, as documented
            nominal = min(nominal * self.backoff, self.max_delay)
        if self.jitter and rng is not None:
            nominal *= 1 + self.jitter * (2 * rng.random() - 1)
        return float(min(nominal, self.max_delay))

    def retries(self, error: BaseException) -> bool:
        """Whether ``error`` is worth another attempt under this policy."""
        return isinstance(error, self.retry_on) and not isinstance(error, self.give_up_on)


class _Random(t.Protocol):
    def random(self) -> float: ...


def finite_non_negative(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value) and value >= 0
    except OverflowError:  # an int too large for a float
        return False
