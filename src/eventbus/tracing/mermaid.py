"""The Mermaid diagram of a trace: what :meth:`Trace.mermaid` returns.

A ``flowchart LR`` of which handler consumed which event type and published
which, each edge drawn once; ids and order are made from the labels only,
so the same dispatch always gives the same text. Works on the frozen
snapshot (:mod:`.records`) only.
"""

from __future__ import annotations

import re

from ..dead_letters import NO_HANDLER
from .records import TracedEvent
from .tree import shown_name

__all__ = ["flowchart"]

_NOT_IN_ID = re.compile(r"[^0-9A-Za-z_]")


def flowchart(roots: list[TracedEvent], *, strip_prefix: str = "") -> str:
    """``roots`` as a Mermaid ``flowchart LR`` (no final newline)."""
    event_labels: dict[str, str] = {}  # event_type -> class name
    handler_labels: dict[str, str] = {}  # handler name -> shown name
    dead: set[str] = set()
    consumed: set[tuple[str, str]] = set()  # (event_type, handler)
    published: set[tuple[str, str]] = set()  # (handler, event_type)

    def visit(traced: TracedEvent) -> None:
        event_type = traced.event.event_type
        event_labels.setdefault(event_type, type(traced.event).__name__)
        if traced.publisher is not None:
            handler_labels.setdefault(traced.publisher, shown_name(traced.publisher, strip_prefix))
            published.add((traced.publisher, event_type))
        for run in traced.handlers:
            if run.name == NO_HANDLER:
                continue
            handler_labels.setdefault(run.name, shown_name(run.name, strip_prefix))
            consumed.add((event_type, run.name))
            if run.outcome == "dead-lettered":
                dead.add(run.name)
            for child in run.children:
                visit(child)

    for root in roots:
        visit(root)
    event_ids = _node_ids("ev_", event_labels)
    handler_ids = _node_ids("h_", handler_labels)
    lines = ["flowchart LR"]
    for key in sorted(event_labels, key=event_ids.__getitem__):
        lines.append(f'    {event_ids[key]}(["{_label(event_labels[key])}"])')
    for key in sorted(handler_labels, key=handler_ids.__getitem__):
        lines.append(f'    {handler_ids[key]}["{_label(handler_labels[key])}"]')
    edges = {(event_ids[e], handler_ids[h]) for e, h in consumed}
    edges |= {(handler_ids[h], event_ids[e]) for h, e in published}
    lines += [f"    {source} --> {target}" for source, target in sorted(edges)]
    if dead:
        lines.append("    classDef deadLettered fill:#fde2e2,stroke:#c0392b,stroke-width:2px")
        lines.append(f"    class {','.join(sorted(handler_ids[h] for h in dead))} deadLettered")
    return "\n".join(lines)


def _node_ids(prefix: str, labels: dict[str, str]) -> dict[str, str]:
    """A valid, distinct Mermaid id per key, from its label; collisions get ``_2``, ``_3``..."""
    ids: dict[str, str] = {}
    taken: set[str] = set()
    for key in sorted(labels, key=lambda k: (labels[k], k)):
        base = prefix + _NOT_IN_ID.sub("_", labels[key])
        candidate, n = base, 1
        while candidate in taken:
            n += 1
            candidate = f"{base}_{n}"
        taken.add(candidate)
        ids[key] = candidate
    return ids


def _label(text: str) -> str:
    """``text`` safe inside a quoted Mermaid label."""
    return text.replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")
