"""The fields every log record of the library about an event carries, as ``extra``.

``event_id``, ``event_type``, ``correlation_id`` (the cascade's root id for
a root event), and where they are known ``handler`` and ``attempt``, plus
a few more per record (``dead_letter_id``, ``worker``, ``relay``,
``entry_id``, ``outbox_row``), and ``trace_id`` when the event was sent in
an OpenTelemetry trace: the current span's in process, the one its stream
entry's ``traceparent`` names on a worker. Never a payload: events are data an
application may not want in its logs. The ids are ``uuid.UUID`` objects
(a JSON formatter writes them as strings; a plain one never pays for
``str()``). docs/observability.md lists them.
"""

from __future__ import annotations

import contextvars
import re
import sys
import typing as t

if t.TYPE_CHECKING:
    from .events import Event

__all__ = ["event_fields", "log_context", "trace_id_of"]

_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")

#: Fields every record about an event carries in this context too (a worker's name and
#: the stream entry it is running), set by whoever runs the handlers here.
log_context: contextvars.ContextVar[dict[str, object] | None] = contextvars.ContextVar(
    "eventbus_log_context", default=None
)


def event_fields(
    event: Event, handler: str | None = None, attempt: int | None = None, **more: object
) -> dict[str, object]:
    """The ``extra`` of a log record about ``event`` (and ``handler``'s ``attempt`` at it)."""
    fields: dict[str, object] = {
        "event_id": event.event_id,
        "event_type": event.event_type,
        "correlation_id": event.correlation_id or event.event_id,
    }
    if handler is not None:
        fields["handler"] = handler
    if attempt is not None:
        fields["attempt"] = attempt
    around = log_context.get()
    if around is not None:
        fields.update(around)
    if "trace_id" not in fields and "opentelemetry.trace" in sys.modules:
        from opentelemetry import trace

        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            fields["trace_id"] = f"{span.trace_id:032x}"
    fields.update(more)
    return fields


def trace_id_of(traceparent: object) -> str | None:
    """The trace id in a W3C ``traceparent`` (text or bytes), or None if it is not one."""
    if isinstance(traceparent, bytes):
        traceparent = traceparent.decode("ascii", "replace")
    if not isinstance(traceparent, str):
        return None
    found = _TRACEPARENT.fullmatch(traceparent.strip())
    if found is None or found[1] == "0" * 32:
        return None
    return found[1]
