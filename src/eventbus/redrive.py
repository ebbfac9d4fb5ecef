"""Redrive: run the handler of a dead letter on its event again, and settle the letter.

A redrive is a cascade of its own whose root runs one handler, the one the
letter names, under that handler's retry policy and middleware; the events
it publishes cascade as in ``publish``. On success the letter leaves its
store; if the handler fails again, the same letter (same id) is stored
with its attempts added and its last failure updated.
"""

from __future__ import annotations

import collections.abc as c
import dataclasses
import logging
import typing as t
import uuid
from datetime import timedelta

from . import signals
from .cascade import open_root, run, run_async
from .context import loop_is_running
from .dead_letters import DeadLetter, DeadLetterStore, UndefinedEvent
from .errors import RedriveError, SyncPublishError
from .plans import Plan, compile_plan

if t.TYPE_CHECKING:
    from .bus import EventBus
    from .results import PublishResult

__all__ = ["RedriveOutcome", "redrive", "redrive_all", "redrive_all_async", "redrive_async"]

logger = logging.getLogger("eventbus")


@dataclasses.dataclass(frozen=True, slots=True)
class RedriveOutcome:
    """What ``redrive_all`` did with one letter: a ``result``, or the ``error`` that stopped it."""

    letter: DeadLetter
    result: PublishResult | None
    error: RedriveError | None

    @property
    def ok(self) -> bool:
        """True when the handler succeeded and the letter was removed."""
        return self.result is not None and self.failed_again is None

    @property
    def failed_again(self) -> DeadLetter | None:
        """The letter as stored again, when the handler failed once more."""
        if self.result is None:
            return None
        return next((x for x in self.result.dead_letters if x.id == self.letter.id), None)

    @property
    def new_dead_letters(self) -> list[DeadLetter]:
        """Letters of the events the redriven handler published (not the redriven one)."""
        if self.result is None:
            return []
        return [x for x in self.result.dead_letters if x.id != self.letter.id]


def redrive(bus: EventBus, letter: DeadLetter, store: DeadLetterStore) -> PublishResult:
    plan = _plan(bus, letter)
    if plan.has_async and loop_is_running():
        raise SyncPublishError(
            f"redrive() cannot run the async handler {letter.handler} inside a running "
            "event loop; use `await bus.redrive_async(letter)` instead"
        )
    result = run(open_root(bus, letter.event, (letter, store)), plan)
    _settle(bus, letter, store, result)
    return result


async def redrive_async(bus: EventBus, letter: DeadLetter, store: DeadLetterStore) -> PublishResult:
    result = await run_async(open_root(bus, letter.event, (letter, store)), _plan(bus, letter))
    _settle(bus, letter, store, result)
    return result


def redrive_all(
    bus: EventBus, store: DeadLetterStore, letters: c.Iterable[DeadLetter]
) -> list[RedriveOutcome]:
    outcomes: list[RedriveOutcome] = []
    for letter in letters:
        try:
            outcomes.append(RedriveOutcome(letter, redrive(bus, letter, store), None))
        except RedriveError as error:
            outcomes.append(RedriveOutcome(letter, None, error))
    return outcomes


async def redrive_all_async(
    bus: EventBus, store: DeadLetterStore, letters: c.Iterable[DeadLetter]
) -> list[RedriveOutcome]:
    outcomes: list[RedriveOutcome] = []
    for letter in letters:
        try:
            result = await redrive_async(bus, letter, store)
            outcomes.append(RedriveOutcome(letter, result, None))
        except RedriveError as error:
            outcomes.append(RedriveOutcome(letter, None, error))
    return outcomes


def select(
    bus: EventBus,
    store: DeadLetterStore,
    *,
    event_type: str | None,
    handler: str | None,
    older_than: timedelta | None,
    ids: c.Collection[uuid.UUID] | None,
) -> list[DeadLetter]:
    """The letters of ``store`` that match every filter given, oldest first."""
    cutoff = bus.clock.now() - older_than if older_than is not None else None
    return [
        letter
        for letter in store
        if (event_type is None or letter.event_type == event_type)
        and (handler is None or letter.handler == handler)
        and (cutoff is None or letter.failed_at <= cutoff)
        and (ids is None or letter.id in ids)
    ]


def _plan(bus: EventBus, letter: DeadLetter) -> Plan:
    if isinstance(letter.event, UndefinedEvent):
        raise RedriveError(
            f"dead letter {letter.id}: its event type {letter.event_type!r} is not defined "
            "in this process; import the module that defines it, then redrive"
        )
    event_class = type(letter.event)
    if letter.unhandled:
        return bus._compile(event_class)
    matches = [s for s in bus.subscriptions if s.name == letter.handler and s.receives(event_class)]
    if not matches:
        raise RedriveError(
            f"dead letter {letter.id}: no handler named {letter.handler!r} is subscribed to "
            f"{letter.event_type} on this bus (renamed, moved, or not imported?); "
            "subscribe it, then redrive"
        )
    if len(matches) > 1:
        raise RedriveError(
            f"dead letter {letter.id}: {len(matches)} subscriptions are named "
            f"{letter.handler!r} (methods of several instances?), so the one that failed "
            "cannot be told apart; give them distinct names, e.g. distinct functions"
        )
    return compile_plan(bus, matches, bus.middleware, bus.default_retry, redrive=True)


def _settle(
    bus: EventBus, letter: DeadLetter, store: DeadLetterStore, result: PublishResult
) -> None:
    """Remove a redriven letter that succeeded; the failed-again one was stored already."""
    ok = all(other.id != letter.id for other in result.dead_letters)
    if ok:
        try:
            store.remove(letter)
        except KeyError:
            logger.warning(
                "dead letter %s was redriven but was no longer in its store "
                "(redriven or purged elsewhere meanwhile?)",
                letter.id,
            )
    signals.send(signals.dead_letter_redriven, bus, dead_letter=letter, ok=ok)
