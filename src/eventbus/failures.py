"""Failures: the one place where a failed attempt is told and a dead letter is made.

Every path of the bus comes here when a handler's attempt fails: the
attempt is logged and signalled, and when no attempt follows, the
(event, handler) pair becomes a :class:`DeadLetter` that is added to the
result of the event and of every event above it in its cascade, logged once
(with the traceback formatted once, for the letter and the log alike),
stored, and announced.
"""

from __future__ import annotations

import logging
import typing as t
from datetime import datetime

from . import signals
from ._logs import event_fields
from .context import publisher
from .dead_letters import NO_HANDLER, DeadLetter
from .dead_letters.letter import describe, summary
from .errors import UnhandledEventError

if t.TYPE_CHECKING:
    from .bus import EventBus
    from .handlers.subscription import Subscription
    from .results import PublishResult
    from .retry import RetryPolicy

__all__ = ["attempt_failed", "gave_up", "give_up", "unhandled"]

logger = logging.getLogger("eventbus")


def attempt_failed(
    bus: EventBus,
    result: PublishResult,
    sub: Subscription,
    attempt: int,
    error: Exception,
    delay: float,
) -> None:
    """Attempt ``attempt`` of ``sub`` failed and another follows after ``delay`` seconds."""
    event = result.event
    logger.warning(
        "%s failed on %s (event_id=%s), attempt %d: %s: %s; retrying in %.3gs",
        sub.name,
        event.event_type,
        event.event_id,
        attempt,
        type(error).__name__,
        describe(error),
        delay,
        extra=event_fields(result.event, sub.name, attempt),
    )
    # What the receivers publish, they publish on the handler's behalf.
    token = publisher.set(sub.name)
    try:
        signals.send(
            signals.handler_failed,
            bus,
            event=event,
            handler=sub.name,
            attempt=attempt,
            error=error,
            final=False,
        )
        signals.send(
            signals.handler_retrying,
            bus,
            event=event,
            handler=sub.name,
            attempt=attempt,
            error=error,
            delay=delay,
        )
    finally:
        publisher.reset(token)


def gave_up(
    bus: EventBus,
    result: PublishResult,
    sub: Subscription,
    attempts: int,
    error: Exception,
    first_failure: datetime | None = None,
    policy: RetryPolicy | None = None,
) -> None:
    """The last attempt of ``sub`` on ``result``'s event failed: tell, then dead-letter."""
    token = publisher.set(sub.name)  # what the receivers publish, they publish on its behalf
    try:
        signals.send(
            signals.handler_failed,
            bus,
            event=result.event,
            handler=sub.name,
            attempt=attempts,
            error=error,
            final=True,
        )
        why = ""
        if policy is not None and attempts < policy.max_attempts and not policy.retries(error):
            why = " (not retried: its error type is excluded by the retry policy)"
        letter = dead_letter(bus, result, sub.name, attempts, error, first_failure, why=why)
        if sub.on_give_up is not None:
            give_up(sub, letter)
    finally:
        publisher.reset(token)


def give_up(sub: Subscription, letter: DeadLetter) -> bool:
    """Call ``sub``'s ``on_give_up`` with its letter; False (logged) if the hook failed.

    The letter is made and stored first, so that a failing hook loses
    nothing: the letter stands, and can be redriven.
    """
    assert sub.on_give_up is not None
    try:
        sub.on_give_up(letter)
    except Exception:
        logger.exception(
            "the on_give_up hook of %s failed on %s; the dead letter stands",
            sub.name,
            summary(letter),
            extra=event_fields(letter.event, sub.name, letter.attempts, dead_letter_id=letter.id),
        )
        return False
    return True


def unhandled(bus: EventBus, result: PublishResult, *, report: bool) -> None:
    """No handler is subscribed to ``result``'s event: tell, and dead-letter if ``report``."""
    signals.send(signals.event_unhandled, bus, event=result.event)
    if report:
        error = UnhandledEventError(
            f"no handler is subscribed to {result.event.event_type}; subscribe one, then "
            "redrive this letter"
        )
        dead_letter(bus, result, NO_HANDLER, 0, error, None, level=logging.WARNING)


def dead_letter(
    bus: EventBus,
    result: PublishResult,
    handler: str,
    attempts: int,
    error: Exception,
    first_failure: datetime | None,
    *,
    why: str = "",
    level: int = logging.ERROR,
) -> DeadLetter:
    """Make, record, log, store and announce the dead letter of (result's event, handler)."""
    now = bus.clock.now()
    store = bus.dead_letters
    cascade = result._cascade
    redriven = cascade.redriving if cascade is not None else None
    if redriven is not None:  # every letter of a redrive goes to the store redriven from
        store = redriven[1]
    if redriven is not None and redriven[0].handler == handler and result._parent is None:
        letter = redriven[0].failed_again(attempts, error, failed_at=now)
    else:
        letter = DeadLetter.from_exception(
            result.event, handler, attempts, error, failed_at=now, first_failed_at=first_failure
        )
    node: PublishResult | None = result
    while node is not None:  # each result covers its event and all it caused
        node.dead_letters.append(letter)
        node = node._parent
    _log(result, letter, attempts, error, why, level)
    try:
        store.add(letter)
    except Exception:
        logger.critical(
            "could not store the dead letter of %s on %s (event_id=%s); it is only in "
            "this publish's result (%s)",
            handler,
            result.event.event_type,
            result.event.event_id,
            summary(letter),
            exc_info=True,
            extra=event_fields(result.event, handler, attempts, dead_letter_id=letter.id),
        )
    signals.send(signals.event_dead_lettered, bus, dead_letter=letter)
    return letter


def _log(
    result: PublishResult,
    letter: DeadLetter,
    attempts: int,
    error: Exception,
    why: str,
    level: int,
) -> None:
    if not logger.isEnabledFor(level):
        return
    event = result.event
    if letter.unhandled:
        message = "no handler is subscribed to %s (event_id=%s); kept as dead letter %s"
        args: tuple[object, ...] = (event.event_type, event.event_id, letter.id)
        exc_info = None
    else:
        message = (
            "%s failed on %s (event_id=%s)%s after %d attempt(s)%s; dead letter %s "
            "(%d attempts in all)"
        )
        again = " on redrive" if letter.attempts != attempts else ""
        args = (
            letter.handler,
            event.event_type,
            event.event_id,
            again,
            attempts,
            why,
            letter.id,
            letter.attempts,
        )
        exc_info = (type(error), error, error.__traceback__)
    fn, lno, func, _ = logger.findCaller(False, 1)
    record = logger.makeRecord(
        logger.name,
        level,
        fn,
        lno,
        message,
        args,
        exc_info,
        func,
        event_fields(result.event, letter.handler, attempts, dead_letter_id=letter.id),
    )
    if exc_info is not None:
        # The letter's traceback, formatted once: a formatter uses exc_text when it is set
        # instead of formatting exc_info again.
        record.exc_text = letter.traceback.rstrip("\n")
    logger.handle(record)
