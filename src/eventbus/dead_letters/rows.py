"""How a dead letter becomes a row of the SQLite store, and any row a letter again.

Writing never refuses a letter: an event whose JSON does not validate back
into an equal event, or that is too large, is written with what can be kept
and marked not redrivable; text SQLite cannot hold (lone surrogates) is
backslash-escaped. Reading never refuses a row: a row that cannot be parsed
(text that is not UTF-8, a time that is not ISO 8601, an id that is not a
UUID) becomes a letter whose event is an ``UndefinedEvent`` saying so.
"""

from __future__ import annotations

import collections.abc as c
import contextlib
import json
import math
import typing as t
import uuid
from datetime import UTC, datetime

from pydantic import BaseModel, ValidationError

from ..events import Event, UnknownEventTypeError
from .letter import DeadLetter, UndefinedEvent, _bounded, describe

__all__ = ["Garbled", "Row", "read_id", "to_letter", "to_row"]

#: Where the ids of letters whose stored id is not a UUID come from: uuid5(_ODD_IDS, text).
_ODD_IDS = uuid.UUID("51212846-3b86-4968-8261-509659b15a9e")

#: A row's time that cannot be read.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: A row as written (the columns of ``_COLUMNS``, in order); as read, SQLite gives Any.
Row = tuple[str, str, str, str, int, str, str, str, str, str, str, int, str | None]


class Garbled(str):
    """A column's text that is not valid UTF-8, decoded with U+FFFD for what is not."""


# -- letters to rows -----------------------------------------------------------------


def to_row(letter: DeadLetter, limit: int, source: str) -> Row:
    payload, problem = _payload(letter.event, limit, source)
    event_type, escaped_type = _storable(letter.event_type)
    handler, escaped_handler = _storable(letter.handler)
    if problem is None and (escaped_type or escaped_handler):
        which = "event type" if escaped_type else "handler name"
        problem = (
            f"this letter cannot be redriven: its {which} holds characters that UTF-8 cannot "
            "encode (lone surrogates), stored backslash-escaped"
        )
    return (
        str(letter.id),
        event_type,
        payload,
        handler,
        _int64(letter.attempts),
        _storable(letter.error_type)[0],
        _storable(letter.error_message)[0],
        _storable(letter.traceback)[0],
        _timestamp(letter.failed_at),
        _timestamp(letter.first_failed_at),
        _storable(letter.host)[0],
        _int64(letter.pid),
        problem,
    )


def _payload(event: Event, limit: int, source: str) -> tuple[str, str | None]:
    """The JSON to store for ``event``, and None, or why it cannot rebuild the event."""
    problem: str | None = None
    if isinstance(event, UndefinedEvent):
        text, problem = event.payload, (None if event.redrivable else event.reason)
    else:
        try:
            text = event.to_json()
        except Exception as error:
            text = _best_effort_json(event)
            problem = (
                f"this letter cannot be redriven: its event does not serialize to JSON "
                f"({_cause(error)}); what is stored is a best-effort copy"
            )
    text, escaped = _storable(text)
    size = len(text.encode())
    if size > limit:
        over = (
            f"this letter cannot be redriven: its event's JSON is {size:,} bytes, over "
            f"{source} of {limit:,}; only its metadata and the start of its JSON are kept. "
            "To keep such events whole, give SQLiteDeadLetterStore a larger max_event_bytes "
            "(or None)"
        )
        return _truncated(event, text, limit), over if problem is None else f"{over}. {problem}"
    if problem is None and escaped:
        problem = (
            "this letter cannot be redriven: its stored JSON holds characters that UTF-8 "
            "cannot encode (lone surrogates), stored backslash-escaped"
        )
    if problem is None and not isinstance(event, UndefinedEvent):
        problem = _round_trip_problem(event, text)
    return text, problem


def _round_trip_problem(event: Event, text: str) -> str | None:
    """None if ``text`` validates back into an event equal to ``event``; else what went wrong."""
    cls = type(event)
    try:
        back = cls.model_validate_json(text)
    except Exception as error:
        return (
            f"this letter cannot be redriven: its event's JSON does not validate back into "
            f"{cls.__qualname__} ({_cause(error)}); what is stored is that JSON"
        )
    try:
        if back == event or _same(back, event):
            return None
        changed = [
            name
            for name in cls.model_fields
            if not _same(getattr(event, name), getattr(back, name))
        ]
    except Exception as error:  # a field's __eq__ may raise, or recurse too deep
        return (
            f"this letter cannot be redriven: its event could not be compared with the "
            f"event its JSON validates back into ({_cause(error)}); what is stored is that JSON"
        )
    # Values under Any (a datetime, a tuple) come back as JSON gives them (a str, a list):
    # the event another process would receive. Redrivable if it writes the same JSON again;
    # a serializer that changes what it writes (doubling an amount) is not.
    try:
        if back.model_dump_json() == text:
            return None
    except Exception:  # what it could not write again is reported below
        pass
    return (
        f"this letter cannot be redriven: its event's JSON validates back into a different "
        f"{cls.__qualname__} (changed: {', '.join(changed) or 'extra or private attributes'}); "
        "what is stored is that JSON"
    )


def _same(a: object, b: object) -> bool:
    """``a == b``, but NaN equal to NaN, into models, dicts, lists and tuples."""
    if a is b:
        return True
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, BaseModel) and isinstance(b, BaseModel):
        return (
            type(a) is type(b)
            and _same(a.__dict__, b.__dict__)
            and _same(a.__pydantic_extra__, b.__pydantic_extra__)
            and _same(a.__pydantic_private__, b.__pydantic_private__)
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(value, b[key]) for key, value in a.items())
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return (
            isinstance(a, list) == isinstance(b, list)
            and len(a) == len(b)
            and all(_same(x, y) for x, y in zip(a, b, strict=True))
        )
    return bool(a == b)


def _cause(error: BaseException) -> str:
    return _bounded(f"{type(error).__qualname__}: {describe(error)}", 1_000)


def _metadata(event: Event) -> dict[str, object]:
    """The event's ids and time, as JSON values (an UndefinedEvent's are the stored event's)."""
    try:
        ids = (event.event_id, event.correlation_id, event.causation_id)
        return {
            "event_id": str(ids[0]),
            "occurred_at": event.occurred_at.isoformat(),
            "correlation_id": None if ids[1] is None else str(ids[1]),
            "causation_id": None if ids[2] is None else str(ids[2]),
        }
    except Exception:
        return {}


def _best_effort_json(event: Event) -> str:
    """JSON of what can be kept of an event that does not serialize: at least its metadata."""
    with contextlib.suppress(Exception):
        return event.model_dump_json(fallback=repr, warnings=False)
    metadata = _metadata(event)
    with contextlib.suppress(Exception):
        data = event.model_dump(warnings=False)
        return json.dumps(data | metadata, default=_jsonable, ensure_ascii=False, skipkeys=True)
    try:
        shown = _bounded(repr(event), 2_000)
    except Exception:
        shown = f"<{type(event).__qualname__}: repr() failed>"
    return json.dumps(metadata | {"eventbus.repr": shown}, ensure_ascii=False)


def _jsonable(value: object) -> object:
    """``json.dumps``'s ``default``: datetimes as ISO 8601, UUIDs as text, the rest by repr."""
    if isinstance(value, uuid.UUID):
        return str(value)
    isoformat = getattr(value, "isoformat", None)
    if callable(isoformat):
        return isoformat()
    if isinstance(value, bytes):
        with contextlib.suppress(UnicodeDecodeError):
            return value.decode()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return repr(value)


def _truncated(event: Event, text: str, limit: int) -> str:
    """At most ``limit`` bytes of JSON: the event's metadata and the start of its JSON."""
    metadata = _metadata(event)
    keep = limit
    while True:
        kept = json.dumps(metadata | {"eventbus.truncated_json": text[:keep]}, ensure_ascii=False)
        over = len(kept.encode()) - limit
        if over <= 0 or keep == 0:
            return kept
        keep = max(0, keep - over)  # each character cut takes at least one byte off


def _storable(text: str) -> tuple[str, bool]:
    """``text`` as SQLite can store it (lone surrogates backslash-escaped), and if it changed."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode(), True
    return text, False


def _int64(number: int) -> int:
    """``number``, within SQLite's 64-bit integers."""
    return max(-(2**63), min(number, 2**63 - 1))


def _timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC with microseconds: fixed width, so text order is time order."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


# -- rows to letters -------------------------------------------------------------------


class _RowReader:
    """Reads a row's columns; what cannot be read gets a placeholder and a cause."""

    def __init__(self, row: c.Sequence[object]) -> None:
        self.row = row
        self.causes: list[str] = []

    def text(self, index: int, name: str) -> str:
        value = self.row[index]
        if type(value) is str:
            return value
        if isinstance(value, Garbled):
            self.causes.append(f"{name} is not valid UTF-8")
            return str(value)
        if isinstance(value, bytes):
            self.causes.append(f"{name} is a BLOB, not text")
            return value.decode(errors="replace")
        self.causes.append(f"{name} is {_shown(value)}, not text")
        return "" if value is None else str(value)

    def integer(self, index: int, name: str) -> int:
        value = self.row[index]
        if type(value) is int:
            return value
        self.causes.append(f"{name} {_shown(value)} is not an integer")
        return 0

    def moment(self, index: int, name: str) -> datetime:
        value = self.text(index, name)
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            self.causes.append(f"{name} {_shown(value)} is not an ISO 8601 time")
            return _EPOCH
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _shown(value: object) -> str:
    return _bounded(repr(value), 80)


def read_id(value: object) -> tuple[uuid.UUID, str | None]:
    """A stored id as a UUID, and None; or, if it is not one, ``uuid5`` of its text and why."""
    reader = _RowReader((value,))
    text = reader.text(0, "id")
    if not reader.causes:
        with contextlib.suppress(ValueError):
            return uuid.UUID(text), None
    return uuid.uuid5(_ODD_IDS, text), f"id {_shown(text)} is not a UUID"


def to_letter(row: c.Sequence[t.Any]) -> DeadLetter:
    """The letter of a row; never raises (see SQLiteDeadLetterStore on unreadable rows)."""
    read = _RowReader(row)
    letter_id, odd = read_id(row[0])
    if odd is not None:
        read.causes.append(odd)
    event_type = read.text(1, "event_type")
    payload = read.text(2, "event")
    handler = read.text(3, "handler")
    attempts = read.integer(4, "attempts")
    error_type = read.text(5, "error_type")
    message = read.text(6, "error_message")
    traceback = read.text(7, "traceback")
    failed_at = read.moment(8, "failed_at")
    first_failed_at = read.moment(9, "first_failed_at")
    host = read.text(10, "host")
    pid = read.integer(11, "pid")
    mark = None if row[12] is None else read.text(12, "not_redrivable")
    if read.causes:
        reason = "row unreadable: " + "; ".join(read.causes)
        event: Event = _undefined(letter_id, event_type, payload, reason, redrivable=False)
    elif mark is not None:
        event = _undefined(letter_id, event_type, payload, mark, redrivable=False)
    else:
        event = _event(letter_id, event_type, payload)
    return DeadLetter(
        event=event,
        handler=handler,
        attempts=attempts,
        error_type=error_type,
        error_message=message,
        traceback=traceback,
        failed_at=failed_at,
        first_failed_at=first_failed_at,
        event_type=event_type,
        host=host,
        pid=pid,
        id=letter_id,
    )


def _event(letter_id: uuid.UUID, event_type: str, payload: str) -> Event:
    """The stored event rebuilt, or an UndefinedEvent saying why it cannot be."""
    try:
        return Event.class_for(event_type).model_validate_json(payload)
    except UnknownEventTypeError:
        reason = f"event type {event_type!r} is not defined in this process"
    except ValidationError as error:
        reason = f"the stored JSON no longer validates as {event_type!r}: {error}"
    except Exception as error:  # a user validator may raise anything: keep the letter
        reason = f"rebuilding {event_type!r} raised {type(error).__qualname__}: {error}"
    return _undefined(letter_id, event_type, payload, reason)


def _undefined(
    letter_id: uuid.UUID, event_type: str, payload: str, reason: str, *, redrivable: bool = True
) -> UndefinedEvent:
    """An UndefinedEvent keeping, where they are readable, the stored event's own ids and time.

    Where they are not, the same placeholders at every read: an id made from the
    letter's, the Unix epoch, no correlation or causation (not the current cascade's).
    """
    fields: dict[str, object] = {
        "stored_type": event_type,
        "payload": payload,
        "reason": reason,
        "redrivable": redrivable,
        "event_id": uuid.uuid5(_ODD_IDS, f"event of {letter_id}"),
        "occurred_at": _EPOCH,
        "correlation_id": None,
        "causation_id": None,
    }
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        data = None
    if isinstance(data, dict):
        metadata = ("event_id", "occurred_at", "correlation_id", "causation_id")
        with contextlib.suppress(ValidationError):
            return UndefinedEvent.model_validate(
                fields | {k: v for k, v in data.items() if k in metadata}
            )
    return UndefinedEvent.model_validate(fields)
