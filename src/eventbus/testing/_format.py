"""Events, letters and handlers as the testing helpers' failure messages show them."""

from __future__ import annotations

import reprlib

from ..dead_letters import DeadLetter
from ..events import Event

__all__ = ["describe", "describe_letter", "fields_of"]

#: The fields every event has; a message leaves them out of an event's description.
METADATA = frozenset(Event.model_fields)

_repr = reprlib.Repr()
_repr.maxstring = 40
_repr.maxother = 40
_repr.maxlist = _repr.maxdict = _repr.maxset = _repr.maxtuple = 4

#: An event's description is cut to this many characters.
WIDTH = 110

#: How many lines of a letter's traceback a message shows (its end, where the error is).
TRACEBACK_LINES = 12


def fields_of(cls: type[Event]) -> list[str]:
    """The fields of ``cls`` that are its own payload, not the metadata."""
    return [name for name in cls.model_fields if name not in METADATA]


def describe(event: Event) -> str:
    """``ItemAdded(cart_id='c1', sku='BOOK', quantity=1)``: the payload, short."""
    cls = type(event)
    shown = ", ".join(f"{name}={_repr.repr(getattr(event, name))}" for name in fields_of(cls))
    text = f"{cls.__qualname__}({shown})"
    return text if len(text) <= WIDTH else text[: WIDTH - 4] + "...)"


def describe_letter(letter: DeadLetter) -> str:
    """A dead letter as a test failure shows it: who failed on what, why, and where."""
    lines = [
        f"- {letter.handler} on {describe(letter.event)}, after {letter.attempts} "
        f"attempt(s): {letter.error_type}: {letter.error_message}"
    ]
    traceback = letter.traceback.rstrip().splitlines()
    if traceback:
        if len(traceback) > TRACEBACK_LINES:
            traceback = ["...", *traceback[-TRACEBACK_LINES:]]
        lines.extend(f"    {line}" for line in traceback)
    return "\n".join(lines)
