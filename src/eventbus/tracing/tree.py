"""The text tree of a trace: what :meth:`Trace.render` returns.

Each root event starts a tree at the left margin; under an event, its
handlers' runs; under a run, the events it published and its failed
attempts, in the order they happened. Works on the frozen snapshot
(:mod:`.records`) only, never on the recorder's live state.
"""

from __future__ import annotations

from ..dead_letters import NO_HANDLER, DeadLetter
from .records import TracedEvent, TracedFailure, TracedHandler

__all__ = ["render", "shown_name"]

#: What ``render`` shows of one failure's message: its first line, at most this long.
_SHOWN_MESSAGE = 120


def render(roots: list[TracedEvent], *, ids: bool = False, strip_prefix: str = "") -> str:
    """``roots`` as an indented tree, one line per step (no final newline)."""
    lines: list[str] = []
    for root in roots:
        _render_event(root, "", "", lines, root=True, ids=ids, strip_prefix=strip_prefix)
    return "\n".join(lines)


def shown_name(name: str, prefix: str) -> str:
    """A handler's name as shown: without ``prefix``, if it starts with it."""
    return name[len(prefix) :] if prefix and name.startswith(prefix) else name


def _render_event(
    traced: TracedEvent,
    lead: str,
    below: str,
    lines: list[str],
    *,
    root: bool,
    ids: bool,
    strip_prefix: str,
) -> None:
    """Append ``traced``'s line (after ``lead``) and its subtree (each line after ``below``)."""
    text = type(traced.event).__name__
    if ids:
        text += f" [{str(traced.event.event_id)[:8]}]"
    if root and traced.publisher is not None:
        text += f" (published by {shown_name(traced.publisher, strip_prefix)})"
    if traced.unhandled:
        text += " (no handler)"
    for run in traced.handlers:
        if run.name == NO_HANDLER and run.dead_letter is not None:
            text += f" ✗ dead letter {_short(run.dead_letter)}"
    if traced.redrive_of is not None:
        text += f" ↻ redrive of dead letter {_short(traced.redrive_of)}"
    lines.append(lead + text)
    runs = [run for run in traced.handlers if run.name != NO_HANDLER]
    for index, run in enumerate(runs):
        last = index == len(runs) - 1
        _render_handler(
            run,
            below + ("└── " if last else "├── "),
            below + ("    " if last else "│   "),
            lines,
            ids=ids,
            strip_prefix=strip_prefix,
        )


def _render_handler(
    run: TracedHandler,
    lead: str,
    below: str,
    lines: list[str],
    *,
    ids: bool,
    strip_prefix: str,
) -> None:
    mark = {"succeeded": "✓", "dead-lettered": "✗", "running": "… running"}[run.outcome]
    details: list[str] = []
    if run.attempts > 1:
        details.append(f"after {run.attempts} attempts")
    if run.dead_letter is not None:
        details.append(f"→ dead letter {_short(run.dead_letter)}")
    lines.append(
        f"{lead}{shown_name(run.name, strip_prefix)} {mark}" + "".join(f" {d}" for d in details)
    )

    # In the order they happened: attempt k published its events, then failed.
    items: list[tuple[tuple[int, int], TracedEvent | TracedFailure]] = []
    for child in run.children:
        items.append(((child.publisher_attempt or 0, 0), child))
    for failure in run.failures:
        items.append(((failure.attempt, 1), failure))
    items.sort(key=lambda item: item[0])  # stable: children keep their order
    body: list[TracedEvent | TracedFailure | str] = [item for _, item in items]
    if run.dead_letter is not None and not run.failures:  # it could not be run at all
        letter = run.dead_letter
        body.append(f"failed: {_error_text(letter.error_type, letter.error_message)}")
    for index, item in enumerate(body):
        last = index == len(body) - 1
        item_lead = below + ("└── " if last else "├── ")
        item_below = below + ("    " if last else "│   ")
        if isinstance(item, TracedEvent):
            _render_event(
                item, item_lead, item_below, lines, root=False, ids=ids, strip_prefix=strip_prefix
            )
        elif isinstance(item, TracedFailure):
            # attempt 0: the handler could not be run at all
            attempt = f"attempt {item.attempt} " if item.attempt else ""
            text = f"{attempt}failed: {_error_text(item.error_type, item.message)}"
            if item.delay is not None:
                text += f" (retry in {_seconds(item.delay)})"
            lines.append(item_lead + text)
        else:
            lines.append(item_lead + item)


def _error_text(error_type: str, message: str) -> str:
    """``"ConnectionError: gateway timeout"``: the class's name, the message's first line."""
    name = error_type.rsplit(".", 1)[-1]
    first = message.strip().splitlines()[0] if message.strip() else ""
    if len(first) > _SHOWN_MESSAGE:
        first = first[: _SHOWN_MESSAGE - 1] + "…"
    return f"{name}: {first}" if first else name


def _seconds(delay: float) -> str:
    """``0.5s``, ``1s``, ``0.125s``: at most millisecond precision, no trailing zeros."""
    return f"{delay:.3f}".rstrip("0").rstrip(".") + "s"


def _short(letter: DeadLetter) -> str:
    """The 8-character id prefix that ``python -m eventbus dead-letters`` shows and accepts."""
    return str(letter.id)[:8]
