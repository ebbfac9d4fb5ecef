"""The services' OpenTelemetry spans, one JSON object per line in a file per process.

Every service's bus has ``Tracing(parent=True)`` (a worker's process span
is the child of the send span it handles, and each relay sends an event in
the trace it was added to its outbox in), so an action of the front and
everything that follows it across the six services is one trace. Each
process writes the spans it ends to ``{directory}/{service}-{pid}.jsonl``
as it ends them (a process killed keeps what it wrote); :func:`read` reads
them all back, and :func:`summary` says, per action of the front, what its
trace holds.
"""

from __future__ import annotations

import collections.abc as c
import dataclasses
import json
import os
import pathlib
import typing as t

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

#: The span kind of an action of the front (a request it serves).
FRONT = "front"


def provider(directory: str | os.PathLike[str], service: str) -> TracerProvider:
    """A tracer provider writing this process's spans to its own file in ``directory``."""
    folder = pathlib.Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    out = (folder / f"{service}-{os.getpid()}.jsonl").open("a", encoding="utf-8")
    tracers = TracerProvider(resource=Resource({"service.name": service}))
    exporter = _ToFile(out=out, formatter=_line(service))
    tracers.add_span_processor(SimpleSpanProcessor(exporter))  # written (and flushed) at end
    return tracers


class _ToFile(ConsoleSpanExporter):
    """Each span a line of the file, flushed as it is written; the file closed at shutdown."""

    def shutdown(self) -> None:
        self.out.close()


def _line(service: str) -> c.Callable[[ReadableSpan], str]:
    def line(span: ReadableSpan) -> str:
        context = span.get_span_context()
        assert context is not None
        return (
            json.dumps(
                {
                    "service": service,
                    "name": span.name,
                    "trace_id": f"{context.trace_id:032x}",
                    "span_id": f"{context.span_id:016x}",
                    "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
                    "kind": span.kind.name.lower(),
                    "start": span.start_time,
                    "end": span.end_time,
                    "attributes": dict(span.attributes or {}),
                },
                default=str,
            )
            + "\n"
        )

    return line


@dataclasses.dataclass(frozen=True, slots=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str | None
    kind: str
    start: int
    end: int
    attributes: dict[str, t.Any]


def read(directory: str | os.PathLike[str]) -> list[Span]:
    """Every span the processes wrote to ``directory``, by start time."""
    spans = [
        Span(**json.loads(line))
        for path in sorted(pathlib.Path(directory).glob("*.jsonl"))
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    return sorted(spans, key=lambda span: span.start)


def front_span(tracer: trace.Tracer, action: str) -> t.ContextManager[trace.Span]:
    """The span of an action of the front (as a web framework's instrumentation makes)."""
    return tracer.start_as_current_span(action, kind=trace.SpanKind.SERVER)


def summary(spans: c.Sequence[Span], since: int = 0) -> list[str]:
    """Per action of the front since ``since`` (ns) that set events going, what its trace holds.

    And, if any span began a trace of its own (its parent never written,
    or no parent but not an action of the front), a line saying so: the
    trace context was lost on the way.
    """
    written = {span.span_id for span in spans}
    traces: dict[str, list[Span]] = {}
    for span in spans:
        traces.setdefault(span.trace_id, []).append(span)
    lines = []
    for span in spans:
        if span.start < since or span.service != FRONT or span.parent_id is not None:
            continue
        following = [s for s in traces[span.trace_id] if s is not span]
        processed = [
            s for s in following if s.attributes.get("messaging.operation.type") == "process"
        ]
        if not processed:
            continue  # an action that published nothing (a read)
        services = sorted({s.service for s in following}, key=ORDER.index)
        last = max(processed, key=lambda s: s.end)
        handlers = sorted(
            s.attributes["messaging.consumer.group.name"]
            for s in processed
            if s.attributes["messaging.message.id"] == last.attributes["messaging.message.id"]
        )
        lines.append(
            f"{span.name}: one trace of {len(following) + 1} spans through "
            f"{', '.join(services)}; last: {last.attributes['eventbus.event_type']} "
            f"by {', '.join(dict.fromkeys(handlers))}"
        )
    lost = [
        s
        for s in spans
        if s.start >= since and (s.parent_id not in written if s.parent_id else s.service != FRONT)
    ]
    if lost:
        lines.append(
            f"{len(lost)} span(s) began a trace of their own: "
            + ", ".join(sorted({f"{s.name} in {s.service}" for s in lost}))
        )
    return lines


#: The services in the order the summary names them.
ORDER = (FRONT, "users", "catalog", "cart", "payments", "checkout", "notifications")
