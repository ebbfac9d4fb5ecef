"""Redrive: run the handler of a dead letter on its event again, and settle the letter.

A redrive is a cascade of its own whose root runs one handler, the one the
letter names (or the one named by ``to_handler=``), under that handler's retry
policy and middleware; the events it publishes cascade as in ``publish``.
The letter of an outbox row that its relay could not send names no handler
(:data:`eventbus.outbox.RELAY`): its redrive publishes the event on the bus.
On success the letter leaves its store; if the handler fails again, the
same letter (same id) is stored with its attempts added and its last
failure updated. Every letter a redrive makes goes to the store the letter
came from. When a letter cannot be redriven, :class:`RedriveError` says why
in full: for a handler name that is not subscribed, the names that are.
"""

from __future__ import annotations

import collections.abc as c
import dataclasses
import logging
import typing as t
import uuid
from datetime import timedelta

from . import events as _events
from . import signals
from ._logs import event_fields
from .cascade import open_root, run, run_async
from .context import loop_is_running
from .dead_letters import DeadLetter, DeadLetterStore, UndefinedEvent
from .dead_letters.letter import RELAY
from .errors import RedriveError, SyncPublishError
from .naming import MAIN_MODULES
from .plans import Plan, compile_plan

if t.TYPE_CHECKING:
    from .bus import EventBus
    from .events import Event
    from .handlers.subscription import Subscription
    from .results import PublishResult

__all__ = [
    "RedriveOutcome",
    "redrive",
    "redrive_all",
    "redrive_all_async",
    "redrive_async",
    "redrive_problem",
]

logger = logging.getLogger("eventbus")


@dataclasses.dataclass(frozen=True, slots=True)
class RedriveOutcome:
    """What ``redrive_all`` did with one letter.

    ``result`` is the redrive's :class:`PublishResult`, or ``error`` the
    :class:`RedriveError` that stopped it before anything ran; neither, when
    the letter was no longer in its store (:attr:`gone`).
    """

    letter: DeadLetter
    result: PublishResult | None
    error: RedriveError | None

    @property
    def ok(self) -> bool:
        """True when the handler succeeded and the letter was removed."""
        return self.result is not None and self.failed_again is None

    @property
    def gone(self) -> bool:
        """True when the letter had left its store (purged or redriven elsewhere): nothing ran."""
        return self.result is None and self.error is None

    @property
    def failed_again(self) -> DeadLetter | None:
        """The letter as stored again, when the handler failed once more."""
        if self.result is None:
            return None
        return next((x for x in self.result.dead_letters if x.id == self.letter.id), None)

    @property
    def new_dead_letters(self) -> list[DeadLetter]:
        """The other letters the redrive made, all in the letter's store.

        Those of the events the redriven handler published; for an unhandled
        letter, those of the handlers its event was published to.
        """
        if self.result is None:
            return []
        return [x for x in self.result.dead_letters if x.id != self.letter.id]


def redrive(
    bus: EventBus, letter: DeadLetter, store: DeadLetterStore, *, to_handler: str | None = None
) -> PublishResult:
    """Run the letter's handler (or the one named ``to_handler``) again; settle it in ``store``."""
    if _unsent(letter, to_handler):
        result = bus.publish(letter.event)  # what the relay could not: a BrokerError keeps it
        _settle(bus, letter, store, result)
        return result
    plan, running = _plan(bus, letter, to_handler)
    if plan.has_async and loop_is_running():
        raise SyncPublishError(
            f"redrive() cannot run the async handler {running.handler} inside a running "
            "event loop; use `await bus.redrive_async(letter)` instead"
        )
    result = run(open_root(bus, letter.event, (running, store)), plan)
    _settle(bus, letter, store, result)
    return result


async def redrive_async(
    bus: EventBus, letter: DeadLetter, store: DeadLetterStore, *, to_handler: str | None = None
) -> PublishResult:
    """``redrive`` from asyncio."""
    if _unsent(letter, to_handler):
        result = await bus.publish_async(letter.event)
        _settle(bus, letter, store, result)
        return result
    plan, running = _plan(bus, letter, to_handler)
    result = await run_async(open_root(bus, letter.event, (running, store)), plan)
    _settle(bus, letter, store, result)
    return result


def redrive_all(
    bus: EventBus,
    store: DeadLetterStore,
    letters: c.Iterable[DeadLetter],
    *,
    to_handler: str | None = None,
) -> list[RedriveOutcome]:
    """Redrive each of ``letters`` as it is in ``store`` now; skip those no longer there."""
    outcomes: list[RedriveOutcome] = []
    for selected in letters:
        letter = _current(store, selected)
        if letter is None:
            outcomes.append(RedriveOutcome(selected, None, None))
            continue
        try:
            result = redrive(bus, letter, store, to_handler=to_handler)
            outcomes.append(RedriveOutcome(letter, result, None))
        except RedriveError as error:
            outcomes.append(RedriveOutcome(letter, None, error))
    return outcomes


async def redrive_all_async(
    bus: EventBus,
    store: DeadLetterStore,
    letters: c.Iterable[DeadLetter],
    *,
    to_handler: str | None = None,
) -> list[RedriveOutcome]:
    """``redrive_all`` from asyncio."""
    outcomes: list[RedriveOutcome] = []
    for selected in letters:
        letter = _current(store, selected)
        if letter is None:
            outcomes.append(RedriveOutcome(selected, None, None))
            continue
        try:
            result = await redrive_async(bus, letter, store, to_handler=to_handler)
            outcomes.append(RedriveOutcome(letter, result, None))
        except RedriveError as error:
            outcomes.append(RedriveOutcome(letter, None, error))
    return outcomes


def redrive_problem(
    bus: EventBus | None, letter: DeadLetter, *, to_handler: str | None = None
) -> RedriveError | None:
    """Why ``letter`` cannot be redriven on ``bus`` now (what ``redrive`` would raise), or None.

    Runs nothing. With ``bus=None``, only what needs no bus is checked: that
    the letter's event was rebuilt. ``python -m eventbus dead-letters show``
    prints it.
    """
    if isinstance(letter.event, UndefinedEvent):
        return RedriveError(_cannot_rebuild(letter, letter.event))
    if bus is None or _unsent(letter, to_handler):
        return None
    try:
        _plan(bus, letter, to_handler)
    except RedriveError as error:
        return error
    return None


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


def _current(store: DeadLetterStore, letter: DeadLetter) -> DeadLetter | None:
    """``letter`` as its store holds it now, or None if it is gone.

    Letters are selected, then redriven one by one: meanwhile another process
    may have purged one (it must not run) or redriven it (its attempts changed).
    """
    try:
        return store.get(letter.id)
    except KeyError:
        logger.warning(
            "dead letter %s is no longer in its store (purged or redriven elsewhere since it "
            "was selected); not redriven",
            letter.id,
            extra=event_fields(letter.event, letter.handler, dead_letter_id=letter.id),
        )
        return None


def _plan(bus: EventBus, letter: DeadLetter, to_handler: str | None) -> tuple[Plan, DeadLetter]:
    """The plan that redrives ``letter``, and the letter as the run records it.

    That letter is ``letter`` itself, or, redriven to another handler by name,
    ``letter`` renamed to it: if that handler fails, the letter (same id) names it.
    """
    event = letter.event
    if isinstance(event, UndefinedEvent):
        raise RedriveError(_cannot_rebuild(letter, event))
    if to_handler is not None and (not isinstance(to_handler, str) or not to_handler):
        raise TypeError(
            f"to_handler must be a handler's name (a non-empty str), got {to_handler!r}"
        )
    event_class = type(event)
    if letter.unhandled and to_handler is None:
        return bus._compile(event_class), letter
    name = letter.handler if to_handler is None else to_handler
    # Names are unique on a bus, and a handler runs once per event even when subscribed to
    # two classes the event derives from: at most one subscription matches.
    matches = [s for s in bus.subscriptions_for(event_class) if s.name == name]
    if not matches:
        raise RedriveError(_not_subscribed(bus, letter, name, event_class))
    running = letter if name == letter.handler else dataclasses.replace(letter, handler=name)
    return compile_plan(bus, matches, bus.middleware, bus.default_retry, redrive=True), running


def _unsent(letter: DeadLetter, to_handler: str | None) -> bool:
    """A letter of an outbox row the relay could not send: its redrive publishes the event."""
    return (
        letter.handler == RELAY
        and to_handler is None
        and not isinstance(letter.event, UndefinedEvent)
    )


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
                extra=event_fields(letter.event, letter.handler, dead_letter_id=letter.id),
            )
    signals.send(signals.dead_letter_redriven, bus, dead_letter=letter, ok=ok)


# -- why a letter cannot be redriven ---------------------------------------------------------


def _cannot_rebuild(letter: DeadLetter, event: UndefinedEvent) -> str:
    reason = event.reason or "its event could not be rebuilt"
    if not event.redrivable:
        what = (
            "Its stored row is damaged: `show` prints what could be read of it, and it can "
            "only be purged"
            if reason.startswith("row unreadable")
            else "No class can rebuild its event from what was stored: `show` prints what was "
            "kept, to act on by hand"
        )
        reason = reason.removeprefix("this letter cannot be redriven: ")  # said once, here
        return f"dead letter {letter.id} cannot be redriven: {reason}. {what}"
    module, _, qualname = event.stored_type.partition(".")
    if module in MAIN_MODULES and qualname:
        # Made by a script, before eventbus named a script's event types by its module.
        now = sorted(name for name, cls in _event_types() if name.endswith("." + qualname))
        return (
            f"dead letter {letter.id}: its event type {event.stored_type!r} was recorded by "
            "a program run as a script, under the name __main__, which no process can import; "
            "eventbus now names such types by the script's module"
            + (f" (here: {', '.join(map(repr, now))})" if now else "")
            + ". `show` prints its stored JSON: publish that event again by hand "
            f"(Event.from_json({now[0] if now else 'NEW_TYPE'!r}, payload)) and purge the "
            "letter, or give the class `event_type = " + repr(event.stored_type) + "` "
            "while you redrive such letters"
        )
    return (
        f"dead letter {letter.id}: its event cannot be rebuilt in this process: {reason}; "
        f"import the module that defines {letter.event_type!r} (or make the class accept its "
        "stored JSON again), then redrive"
    )


def _event_types() -> list[tuple[str, type[Event]]]:
    return _events._types.items()


def _not_subscribed(bus: EventBus, letter: DeadLetter, name: str, event_class: type[Event]) -> str:
    """The whole story of a handler name that is not subscribed for the letter's event."""
    here = bus.subscriptions_for(event_class)
    parts = [
        f"dead letter {letter.id}: no handler named {name!r} is subscribed to "
        f"{letter.event_type} ({event_class.__qualname__}) on this bus"
    ]
    elsewhere = [s for s in bus.subscriptions if s.name == name]
    if elsewhere:
        classes = ", ".join(k.__qualname__ for s in elsewhere for k in s.event_types)
        parts.append(
            f"a handler of that name is subscribed, but to {classes}, which "
            f"{event_class.__qualname__} is not (a subclass of)"
        )
    if here:
        parts.append(
            f"the handlers subscribed to it here are: {', '.join(repr(s.name) for s in here)}"
        )
    else:
        parts.append(
            "no handler at all is subscribed to it here (is the module that subscribes its "
            "handlers imported by the application?)"
        )
    twin = next((pair for s in here if (pair := _differs_by_module(name, s)) is not None), None)
    if twin is not None:
        theirs, ours, other = twin
        started = (
            "the letter was made where the handler's module was '__main__' (a script started "
            "as `python FILE.py` or `python -m MODULE`, or an interactive session)"
            if theirs == "__main__"
            else f"the letter was made where the handler's module was {theirs!r}"
        )
        parts.append(
            f"{name!r} and {other!r} differ only by module: {started}, and here it is "
            f"{ours!r}. To run it, redrive the letter to that handler by name: "
            f"bus.redrive(letter, to_handler={other!r}) (on the command line: "
            f"--to-handler {other}); to keep the name the same however the program is "
            "started, subscribe the handler with a name of its own: subscribe(..., name=...)"
        )
    else:
        parts.append(
            f"subscribe the handler that should run it under that name "
            f"(subscribe(..., name={name!r})), or redrive the letter to a handler by name: "
            "bus.redrive(letter, to_handler=NAME) (on the command line: --to-handler NAME)"
        )
    return "; ".join(parts)


def _differs_by_module(name: str, sub: Subscription) -> tuple[str, str, str] | None:
    """(the letter's module, the subscription's, its name) if ``name`` is it in another module."""
    handler = sub.handler
    qualname = getattr(handler, "__qualname__", None)
    if not isinstance(qualname, str):  # a callable instance: named after its class
        qualname = f"{type(handler).__qualname__}()"
    rest = "." + qualname
    if name == sub.name or not (sub.name.endswith(rest) and name.endswith(rest)):
        return None
    return name[: -len(rest)], sub.name[: -len(rest)], sub.name
