"""The public, frozen picture of a trace: what :attr:`Trace.roots` returns.

These dataclasses are snapshots: the recorder builds fresh ones on every
call from its own mutable records, so a caller may keep, compare or change
the lists inside them without touching what the trace goes on recording.
"""

from __future__ import annotations

import dataclasses
import typing as t

from ..dead_letters import DeadLetter
from ..events import Event

__all__ = ["Outcome", "TracedEvent", "TracedFailure", "TracedHandler"]

#: How a handler's run on an event ended: it finished, it ended as a dead letter, or it has
#: not ended yet (a trace looked at while the event is being dispatched).
Outcome: t.TypeAlias = t.Literal["succeeded", "dead-lettered", "running"]


@dataclasses.dataclass(frozen=True, slots=True)
class TracedFailure:
    """One failed attempt of a handler on an event.

    ``error_type`` is the exception's ``"module.QualName"`` (as in
    :class:`DeadLetter`), ``message`` its ``str()`` (at most 2,000
    characters); ``delay`` is the wait, in seconds, before the next attempt,
    or ``None`` when no attempt followed (the handler was dead-lettered).
    """

    attempt: int
    error_type: str
    message: str
    delay: float | None


@dataclasses.dataclass(frozen=True, slots=True)
class TracedHandler:
    """One handler's run on one event, as recorded.

    ``name`` is the subscription's name (``module.QualName``); ``outcome``
    says how the run ended; ``attempts`` counts the attempts of this run (0
    when the handler could not be run at all); ``failures`` lists its failed
    attempts in order; ``dead_letter`` is the letter it ended as, if it did;
    ``redrive`` is True when the run came from ``bus.redrive`` of a dead
    letter; ``children`` are the events the handler published, in order
    (each is also in the event's ``children``).

    An unhandled event that became a dead letter
    (``EventBus(report_unhandled=True)``) has one entry named
    :data:`NO_HANDLER`, with 0 attempts, that holds the letter.
    """

    name: str
    outcome: Outcome
    attempts: int
    failures: list[TracedFailure]
    dead_letter: DeadLetter | None
    redrive: bool
    children: list[TracedEvent]


@dataclasses.dataclass(frozen=True, slots=True)
class TracedEvent:
    """One event as dispatched, with what happened to it.

    ``event`` is the event as delivered (a child with its causation and
    correlation ids set); ``publisher`` is the name of the handler that
    published it, ``None`` for a top-level publish; ``handlers`` are the
    handlers' runs, in the order they started; ``children`` are the events
    those handlers published, in the order they were published.
    ``publisher_attempt`` is the attempt of the publisher that published it
    (a handler that fails after publishing publishes again on its next
    attempt). ``unhandled`` is True when no handler was subscribed to the
    event. ``redrive_of`` is, on a root made by ``bus.redrive``, the dead
    letter redriven, as it was before the redrive (set when the redrive ends).
    """

    event: Event
    publisher: str | None
    handlers: list[TracedHandler]
    children: list[TracedEvent]
    publisher_attempt: int | None = None
    unhandled: bool = False
    redrive_of: DeadLetter | None = None
