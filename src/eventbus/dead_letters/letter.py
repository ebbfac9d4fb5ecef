"""DeadLetter: a failed (event, handler) pair, with everything needed to redrive it."""

from __future__ import annotations

import dataclasses
import linecache
import os
import socket
import traceback as tb
import uuid
from datetime import datetime

from pydantic import ValidationError

from ..events import Event

__all__ = ["NO_HANDLER", "RELAY", "DeadLetter", "UndefinedEvent"]

#: The ``handler`` of the letter of an event that had no handler at all
#: (kept only when the bus is made with ``report_unhandled=True``).
NO_HANDLER = "(no handler)"

#: The handler of the letter of an outbox row its relay could not send (see eventbus.outbox).
RELAY = "(outbox relay)"

#: Bounds on what a letter keeps of an error: enough to understand it, never megabytes.
MAX_MESSAGE = 2_000
MAX_TRACEBACK = 16_000

_HOST = socket.gethostname()


class UndefinedEvent(Event):
    """Stands in for a stored event that this process cannot rebuild.

    Its ``event_type`` is not defined here (the module was not imported, or
    the class was renamed), or its stored JSON no longer validates against
    the class. A store returns it instead of losing the letter: the stored
    JSON is in ``payload``, the cause in ``reason``. Such a letter can be
    listed, shown and purged; to redrive it, define (import) the event class.

    ``redrivable`` is False when no class can rebuild the event: the store
    could not keep it faithfully (it did not serialize to JSON that
    validates back into an equal event, or it was over the store's size
    limit) and ``payload`` is a best-effort copy, or its row could not be
    read. ``reason`` then says so ("cannot be redriven: ...", "row
    unreadable: ..."), and the mark stays with the letter when it is added
    to another store.
    """

    event_type = "eventbus.UndefinedEvent"

    stored_type: str
    payload: str
    reason: str = ""
    redrivable: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetter:
    """One (event, handler) pair whose last attempt failed.

    It keeps everything needed to understand the failure and to run the
    handler again with ``bus.redrive(letter)``: the event itself, the
    handler's qualified name, how many attempts were made in all, and the
    last error's type, message and formatted traceback (both bounded in
    size), when the first and the last attempts failed, and on which host
    and process.
    """

    event: Event
    handler: str
    attempts: int
    error_type: str
    error_message: str
    traceback: str
    failed_at: datetime
    first_failed_at: datetime
    event_type: str
    host: str = _HOST
    pid: int = dataclasses.field(default_factory=os.getpid)
    # Random (UUID4), not time-ordered: the command line and traces name a letter by the
    # first 8 characters of its id, which must differ between letters made together.
    id: uuid.UUID = dataclasses.field(default_factory=uuid.uuid4)

    @property
    def unhandled(self) -> bool:
        """True for the letter of an event that no handler was subscribed to."""
        return self.handler == NO_HANDLER

    @classmethod
    def from_exception(
        cls,
        event: Event,
        handler: str,
        attempts: int,
        error: BaseException,
        *,
        failed_at: datetime,
        first_failed_at: datetime | None = None,
    ) -> DeadLetter:
        """Build a letter for ``error``, raised by ``handler`` on its last attempt."""
        kind = type(error)
        return cls(
            event=event,
            handler=handler,
            attempts=attempts,
            error_type=f"{kind.__module__}.{kind.__qualname__}",
            error_message=_bounded(describe(error), MAX_MESSAGE),
            traceback=_bounded(format_traceback(error), MAX_TRACEBACK),
            failed_at=failed_at,
            first_failed_at=first_failed_at or failed_at,
            event_type=event.event_type,
        )

    def failed_again(
        self, attempts: int, error: BaseException, *, failed_at: datetime
    ) -> DeadLetter:
        """This letter after a redrive that failed: attempts added, last failure updated."""
        again = DeadLetter.from_exception(
            self.event, self.handler, self.attempts + attempts, error, failed_at=failed_at
        )
        return dataclasses.replace(again, first_failed_at=self.first_failed_at, id=self.id)


def summary(letter: DeadLetter) -> str:
    """What a log line may say of a letter: ids, types and the error, never the event's fields.

    Payloads carry personal data (names, addresses, card numbers) that must
    not end up in log storage; the letter itself, with its event, is in the
    store or the publish's result.
    """
    event = letter.event
    return (
        f"letter {letter.id}: {letter.handler} on {letter.event_type} "
        f"(event_id={event.event_id}, correlation_id={event.correlation_id}), "
        f"{letter.attempts} attempt(s), {letter.error_type}: {letter.error_message}"
    )


def format_traceback(error: BaseException) -> str:
    """``error``'s traceback, as ``traceback.format_exception`` prints it, less the carets.

    Python 3.11 locates the failing part of each line (``^^^^``) by decoding
    every frame's position table, and checks each source file on disk: most
    of the cost of a dead letter, for marks that the line's text already
    shows. This walks the frames itself; chained exceptions are shown as
    Python shows them. Exception groups take the standard formatter.
    """
    if isinstance(error, BaseExceptionGroup):
        return "".join(tb.format_exception(error))
    parts: list[str] = []
    _format_chain(error, parts, set())
    return "".join(parts)


def _format_chain(error: BaseException, parts: list[str], seen: set[int]) -> None:
    seen.add(id(error))
    cause, context = error.__cause__, error.__context__
    if cause is not None and id(cause) not in seen:
        _format_chain(cause, parts, seen)
        parts.append(_CAUSE)
    elif context is not None and not error.__suppress_context__ and id(context) not in seen:
        _format_chain(context, parts, seen)
        parts.append(_CONTEXT)
    frames = error.__traceback__
    if frames is not None:
        parts.append("Traceback (most recent call last):\n")
        while frames is not None:
            frame = frames.tb_frame
            code = frame.f_code
            lineno = frames.tb_lineno
            parts.append(f'  File "{code.co_filename}", line {lineno}, in {code.co_name}\n')
            if lineno is not None:
                line = linecache.getline(code.co_filename, lineno, frame.f_globals).strip()
                if line:
                    parts.append(f"    {line}\n")
            frames = frames.tb_next
    parts.extend(tb.format_exception_only(type(error), error))


_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"


def describe(error: BaseException) -> str:
    """``str(error)``, even for an exception whose ``__str__`` raises.

    A pydantic ``ValidationError`` is told without the values it refused
    (its ``str()`` quotes them: a payload's data, in letters and logs).
    """
    try:
        if isinstance(error, ValidationError):
            problems = "; ".join(
                f"{'.'.join(map(str, problem['loc'])) or '(the value)'}: {problem['msg']} "
                f"[type={problem['type']}]"
                for problem in error.errors(include_input=False, include_url=False)
            )
            count = error.error_count()
            return (
                f"{count} validation error{'s' if count != 1 else ''} for {error.title}: {problems}"
            )
        return str(error)
    except Exception:
        return f"<str() of {type(error).__qualname__} failed>"


def _bounded(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, keeping its head and its tail (where errors are)."""
    if len(text) <= limit:
        return text
    marker = f"\n... [{len(text) - limit} characters cut] ...\n"
    keep = limit - len(marker)
    head = keep // 3
    return text[:head] + marker + text[len(text) - (keep - head) :]
