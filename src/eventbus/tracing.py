"""Trace: record what a bus dispatches, as it happens, and show it as a tree or a diagram.

A :class:`Trace` listens to the bus's lifecycle signals (``eventbus.signals``)
and builds the cascade they describe: each event, the handlers that ran on
it with their outcome, failed attempts and retries, dead letters, and the
events each handler published, under that handler. ``render()`` prints the
record as an indented tree for a terminal; ``mermaid()`` draws which handler
consumed which event type and published which, for a diagram that can be
committed and compared with a freshly generated one::

    with Trace(bus) as trace:
        bus.publish(CheckoutRequested(cart_id="c1"))
    print(trace.render())

A trace keeps every event it records (and the records of their handlers)
until it is cleared or dropped: it grows with what it records. Close it, or
use it as a context manager, when you are done: an open trace's receivers
stay connected, and keep it alive, for as long as the bus lives.
"""

from __future__ import annotations

import collections
import collections.abc as c
import dataclasses
import re
import threading
import types
import typing as t
import uuid

from blinker import NamedSignal

from . import signals
from .bus import EventBus
from .dead_letters import NO_HANDLER, DeadLetter
from .dead_letters.letter import describe
from .events import Event

__all__ = ["Outcome", "Trace", "TracedEvent", "TracedFailure", "TracedHandler"]

#: How a handler's run on an event ended: it finished, it ended as a dead letter, or it has
#: not ended yet (a trace looked at while the event is being dispatched).
Outcome: t.TypeAlias = t.Literal["succeeded", "dead-lettered", "running"]

#: What a trace keeps of one failure's message (the dead letter keeps the full one).
_MAX_MESSAGE = 2_000
#: What ``render`` shows of one failure's message: its first line, at most this long.
_SHOWN_MESSAGE = 120


@dataclasses.dataclass(frozen=True, slots=True)
class TracedFailure:
    """One failed attempt of a handler on an event.

    ``error_type`` is the exception's ``"module.QualName"`` (as in
    :class:`DeadLetter`), ``message`` its ``str()`` (at most 2,000
    characters); ``delay`` is the wait, in seconds, before the next attempt,
    or ``None`` when no attempt followed (the handler was dead-lettered).
    """

    attempt: int
    error_type: str
    message: str
    delay: float | None


@dataclasses.dataclass(frozen=True, slots=True)
class TracedHandler:
    """One handler's run on one event, as recorded.

    ``name`` is the subscription's name (``module.QualName``); ``outcome``
    says how the run ended; ``attempts`` counts the attempts of this run (0
    when the handler could not be run at all); ``failures`` lists its failed
    attempts in order; ``dead_letter`` is the letter it ended as, if it did;
    ``redrive`` is True when the run came from ``bus.redrive`` of a dead
    letter; ``children`` are the events the handler published, in order
    (each is also in the event's ``children``).

    An unhandled event that became a dead letter
    (``EventBus(report_unhandled=True)``) has one entry named
    :data:`NO_HANDLER`, with 0 attempts, that holds the letter.
    """

    name: str
    outcome: Outcome
    attempts: int
    failures: list[TracedFailure]
    dead_letter: DeadLetter | None
    redrive: bool
    children: list[TracedEvent]


@dataclasses.dataclass(frozen=True, slots=True)
class TracedEvent:
    """One event as dispatched, with what happened to it.

    ``event`` is the event as delivered (a child with its causation and
    correlation ids set); ``publisher`` is the name of the handler that
    published it, ``None`` for a top-level publish; ``handlers`` are the
    handlers' runs, in the order they started; ``children`` are the events
    those handlers published, in the order they were published.
    ``publisher_attempt`` is the attempt of the publisher that published it
    (a handler that fails after publishing publishes again on its next
    attempt). ``unhandled`` is True when no handler was subscribed to the
    event. ``redrive_of`` is, on a root made by ``bus.redrive``, the dead
    letter redriven, as it was before the redrive (set when the redrive ends).
    """

    event: Event
    publisher: str | None
    handlers: list[TracedHandler]
    children: list[TracedEvent]
    publisher_attempt: int | None = None
    unhandled: bool = False
    redrive_of: DeadLetter | None = None


class Trace:
    """Records what one bus dispatches, from now until :meth:`close`.

    ``Trace(bus)`` connects receivers to every signal of ``eventbus.signals``
    for ``bus`` (strong references: an open trace is kept alive by the
    signals); other buses are not recorded. ``with Trace(bus) as trace:``
    does the same and closes the trace at the end of the block.

    What was recorded stays readable after :meth:`close`: :attr:`roots`,
    :meth:`render`, :meth:`mermaid`. Every method is safe to call from any
    thread, including while the bus dispatches in others.

    The signals say which event and which handler each step concerns, by
    the event object itself and the handler's name, and say which handler
    published each event. A redrive is recognised when its first handler
    signal arrives for an event that is not waiting for that handler: it
    becomes a root, marked as a redrive when ``dead_letter_redriven`` is
    sent at its end. Runs of several subscriptions that share one name
    (methods of two instances of one class) cannot be told apart.
    """

    __slots__ = ("_bus", "_by_event", "_by_id", "_closed", "_lock", "_pending", "_roots")

    def __init__(self, bus: EventBus) -> None:
        if not isinstance(bus, EventBus):
            raise TypeError(f"Trace records an EventBus, got {bus!r}")
        self._bus = bus
        self._lock = threading.Lock()
        self._roots: list[_Node] = []
        # Every recorded event, by the identity of its object and by its event_id.
        self._by_event: dict[int, list[_Node]] = collections.defaultdict(list)
        self._by_id: dict[uuid.UUID, list[_Node]] = collections.defaultdict(list)
        # Events published by a handler whose run the trace has not seen yet (a redrive's
        # root is known only from its handler's first signal, sent after the handler
        # published): keyed by (causation_id, publisher), adopted by that run.
        self._pending: dict[tuple[uuid.UUID | None, str], list[_Node]] = collections.defaultdict(
            list
        )
        self._closed = False
        for signal, receiver in self._receivers():
            signal.connect(receiver, sender=bus, weak=False)

    # -- the public side ---------------------------------------------------------------

    @property
    def bus(self) -> EventBus:
        """The bus this trace records."""
        return self._bus

    @property
    def recording(self) -> bool:
        """True until :meth:`close`."""
        return not self._closed

    @property
    def roots(self) -> list[TracedEvent]:
        """A snapshot of what was recorded: the top-level events and redrives, in order.

        Each call builds a fresh snapshot; handlers still running when it is
        taken have the outcome ``"running"``.
        """
        with self._lock:
            return [_snapshot(node) for node in self._roots]

    def render(self, *, ids: bool = False, strip_prefix: str = "") -> str:
        """The recorded cascades as an indented tree, one line per step (no final newline).

        Each root event starts a tree at the left margin. Under an event,
        its handlers' runs: the handler's name without ``strip_prefix``,
        ``✓`` (succeeded), ``✗`` (dead-lettered, with the letter's short id)
        or ``…`` (still running), and "after N attempts" when it took more
        than one. Under a handler, in the order they happened: the events it
        published (each with its own handlers below it) and its failed
        attempts, with the error and the wait before the next attempt. An
        event without handlers is marked ``(no handler)``; a redrive's root
        says which dead letter it redrove. ``ids=True`` adds each event's
        short id (the first 8 characters of its ``event_id``).
        """
        roots = self.roots
        lines: list[str] = []
        for root in roots:
            _render_event(root, "", "", lines, root=True, ids=ids, strip_prefix=strip_prefix)
        return "\n".join(lines)

    def mermaid(self, *, strip_prefix: str = "") -> str:
        """A Mermaid ``flowchart LR`` of the recorded dispatch (no final newline).

        One stadium-shaped node per event type (labelled with its class
        name) and one rectangle per handler (its name without
        ``strip_prefix``); an edge from an event type to each handler that
        consumed it, and from a handler to each event type it published,
        each drawn once however often it happened. Handlers dead-lettered at
        least once are in the class ``deadLettered``. Node ids are made from
        the labels; nodes and edges are sorted, so the same dispatch always
        gives the same text, whatever the order of its concurrent parts.
        """
        return _mermaid(self.roots, strip_prefix)

    def clear(self) -> None:
        """Forget everything recorded so far; go on recording (if not closed)."""
        with self._lock:
            self._roots.clear()
            self._by_event.clear()
            self._by_id.clear()
            self._pending.clear()

    def close(self) -> None:
        """Stop recording: disconnect from the bus's signals. Calling it again does nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for signal, receiver in self._receivers():
            signal.disconnect(receiver, sender=self._bus)

    def __enter__(self) -> t.Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "recording" if self.recording else "closed"
        return f"<Trace {state} roots={len(self._roots)} bus={self._bus!r}>"

    # -- receivers (called by the bus, in the dispatching thread) ----------------------

    def _receivers(self) -> list[tuple[NamedSignal, c.Callable[..., None]]]:
        return [
            (signals.event_published, self._on_published),
            (signals.handler_succeeded, self._on_succeeded),
            (signals.handler_failed, self._on_failed),
            (signals.handler_retrying, self._on_retrying),
            (signals.event_dead_lettered, self._on_dead_lettered),
            (signals.event_unhandled, self._on_unhandled),
            (signals.dead_letter_redriven, self._on_redriven),
        ]

    def _on_published(
        self, sender: object, /, *, event: Event, publisher: str | None, **_: object
    ) -> None:
        with self._lock:
            node = self._new_node(event, publisher)
            if publisher is None:
                self._roots.append(node)
                return
            cause = event.causation_id
            for parent in self._by_id.get(cause, []) if cause is not None else []:
                if parent.open_for(publisher):
                    parent.run_of(publisher).add_child(node)
                    return
            node.pending = True
            self._pending[(event.causation_id, publisher)].append(node)

    def _on_succeeded(
        self, sender: object, /, *, event: Event, handler: str, attempts: int, **_: object
    ) -> None:
        with self._lock:
            run = self._run_of(event, handler)
            run.outcome = "succeeded"
            run.attempts = attempts

    def _on_failed(
        self,
        sender: object,
        /,
        *,
        event: Event,
        handler: str,
        attempt: int,
        error: BaseException,
        **_: object,
    ) -> None:
        kind = type(error)
        failure = _Failure(
            attempt,
            f"{kind.__module__}.{kind.__qualname__}",
            _bounded(describe(error), _MAX_MESSAGE),
        )
        with self._lock:
            run = self._run_of(event, handler)
            run.failures.append(failure)
            run.attempts = attempt

    def _on_retrying(
        self,
        sender: object,
        /,
        *,
        event: Event,
        handler: str,
        attempt: int,
        error: BaseException,
        delay: float,
        **_: object,
    ) -> None:
        with self._lock:
            run = self._run_of(event, handler)
            for failure in reversed(run.failures):
                if failure.attempt == attempt:
                    failure.delay = delay
                    return
            kind = type(error)  # its handler_failed came before this trace began
            qualified = f"{kind.__module__}.{kind.__qualname__}"
            message = _bounded(describe(error), _MAX_MESSAGE)
            run.failures.append(_Failure(attempt, qualified, message, delay))
            run.attempts = max(run.attempts, attempt)

    def _on_dead_lettered(self, sender: object, /, *, dead_letter: DeadLetter, **_: object) -> None:
        with self._lock:
            if dead_letter.unhandled:
                node = self._unhandled_node(dead_letter.event, reported=True)
                run = _Run(NO_HANDLER)
                node.runs.append(run)
            else:
                run = self._run_of(dead_letter.event, dead_letter.handler)
            run.outcome = "dead-lettered"
            run.dead_letter = dead_letter

    def _on_unhandled(self, sender: object, /, *, event: Event, **_: object) -> None:
        with self._lock:
            self._unhandled_node(event, reported=False).unhandled = True

    def _on_redriven(
        self, sender: object, /, *, dead_letter: DeadLetter, ok: bool, **_: object
    ) -> None:
        with self._lock:
            for node in reversed(self._by_event.get(id(dead_letter.event), ())):
                if not (node.inferred and node.event is dead_letter.event and not node.closed):
                    continue
                if dead_letter.unhandled or node.last_run(dead_letter.handler) is not None:
                    node.redrive_of = dead_letter
                    node.closed = True  # the redrive is over: nothing more happens to it
                    for run in node.runs:
                        if dead_letter.unhandled or run.name == dead_letter.handler:
                            run.redrive = True
                    return

    # -- finding where a signal belongs (the lock is held) -----------------------------

    def _new_node(self, event: Event, publisher: str | None) -> _Node:
        node = _Node(event, publisher)
        self._by_event[id(event)].append(node)
        self._by_id[event.event_id].append(node)
        return node

    def _run_of(self, event: Event, handler: str) -> _Run:
        """The run of ``handler`` on ``event`` that a handler signal is about."""
        found = [n for n in self._by_event.get(id(event), []) if n.open_for(handler)]
        if found:
            node = found[0]
            self._dispatched(node)
        else:  # a redrive, or a dispatch that began before this trace
            node = self._new_node(event, None)
            node.inferred = True
            self._roots.append(node)
        run = node.run_of(handler)
        for child in self._pending.pop((event.event_id, handler), ()):
            if child.pending:
                child.pending = False
                run.add_child(child)
        return run

    def _unhandled_node(self, event: Event, *, reported: bool) -> _Node:
        """The node of an event that no handler is subscribed to."""
        for node in self._by_event.get(id(event), ()):
            if node.event is not event or node.closed or node.runs:
                continue
            if node.unhandled if reported else not node.unhandled:
                self._dispatched(node)
                return node
        node = self._new_node(event, None)
        node.inferred = True
        node.unhandled = True
        self._roots.append(node)
        return node

    def _dispatched(self, node: _Node) -> None:
        """An event is being dispatched: if its publisher's run was never seen, it is a root."""
        if node.pending:
            node.pending = False
            assert node.publisher is not None
            waiting = self._pending.get((node.event.causation_id, node.publisher))
            if waiting is not None and node in waiting:
                waiting.remove(node)
            self._roots.append(node)


# -- what the recorder mutates while recording (under its lock) -----------------------------


class _Failure:
    __slots__ = ("attempt", "delay", "error_type", "message")

    def __init__(
        self, attempt: int, error_type: str, message: str, delay: float | None = None
    ) -> None:
        self.attempt = attempt
        self.error_type = error_type
        self.message = message
        self.delay = delay


class _Run:
    """One handler's run on one event, while it is recorded."""

    __slots__ = (
        "attempts",
        "children",
        "dead_letter",
        "failures",
        "name",
        "node",
        "outcome",
        "redrive",
    )

    def __init__(self, name: str, node: _Node | None = None) -> None:
        self.name = name
        self.node = node
        self.outcome: Outcome = "running"
        self.attempts = 0
        self.failures: list[_Failure] = []
        self.dead_letter: DeadLetter | None = None
        self.redrive = False
        self.children: list[_Node] = []

    def add_child(self, child: _Node) -> None:
        child.publisher_attempt = len(self.failures) + 1
        self.children.append(child)
        if self.node is not None:
            self.node.children.append(child)


class _Node:
    """One event, while it is recorded."""

    __slots__ = (
        "children",
        "closed",
        "event",
        "inferred",
        "pending",
        "publisher",
        "publisher_attempt",
        "redrive_of",
        "runs",
        "unhandled",
    )

    def __init__(self, event: Event, publisher: str | None) -> None:
        self.event = event
        self.publisher = publisher
        self.publisher_attempt: int | None = None
        self.runs: list[_Run] = []
        self.children: list[_Node] = []
        self.unhandled = False
        self.redrive_of: DeadLetter | None = None
        self.inferred = False  # made from a handler signal: no event_published was seen
        self.pending = False  # published by a run not seen yet: in Trace._pending
        self.closed = False  # a finished redrive

    def last_run(self, handler: str) -> _Run | None:
        for run in reversed(self.runs):
            if run.name == handler:
                return run
        return None

    def open_for(self, handler: str) -> bool:
        """Can a signal about ``handler`` on this event belong here? (No, once it ended.)"""
        if self.closed or self.unhandled:
            return False
        run = self.last_run(handler)
        return run is None or run.outcome == "running"

    def run_of(self, handler: str) -> _Run:
        """The running run of ``handler``, started now if there is none."""
        run = self.last_run(handler)
        if run is None or run.outcome != "running":
            run = _Run(handler, self)
            self.runs.append(run)
        return run


def _snapshot(node: _Node) -> TracedEvent:
    """The frozen picture of ``node`` and everything below it, as recorded so far."""
    traced_children: dict[int, TracedEvent] = {}
    runs: list[TracedHandler] = []
    for run in node.runs:
        children: list[TracedEvent] = []
        for child in run.children:
            traced = _snapshot(child)
            traced_children[id(child)] = traced
            children.append(traced)
        runs.append(
            TracedHandler(
                name=run.name,
                outcome=run.outcome,
                attempts=run.attempts,
                failures=[
                    TracedFailure(f.attempt, f.error_type, f.message, f.delay) for f in run.failures
                ],
                dead_letter=run.dead_letter,
                redrive=run.redrive,
                children=children,
            )
        )
    return TracedEvent(
        event=node.event,
        publisher=node.publisher,
        handlers=runs,
        children=[traced_children[id(child)] for child in node.children],
        publisher_attempt=node.publisher_attempt,
        unhandled=node.unhandled,
        redrive_of=node.redrive_of,
    )


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- render ------------------------------------------------------------------------------


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
        text += f" (published by {_strip(traced.publisher, strip_prefix)})"
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
        f"{lead}{_strip(run.name, strip_prefix)} {mark}" + "".join(f" {d}" for d in details)
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


def _strip(name: str, prefix: str) -> str:
    return name[len(prefix) :] if prefix and name.startswith(prefix) else name


# -- mermaid -----------------------------------------------------------------------------

_NOT_IN_ID = re.compile(r"[^0-9A-Za-z_]")


def _mermaid(roots: list[TracedEvent], strip_prefix: str) -> str:
    event_labels: dict[str, str] = {}  # event_type -> class name
    handler_labels: dict[str, str] = {}  # handler name -> shown name
    dead: set[str] = set()
    consumed: set[tuple[str, str]] = set()  # (event_type, handler)
    published: set[tuple[str, str]] = set()  # (handler, event_type)

    def visit(traced: TracedEvent) -> None:
        event_type = traced.event.event_type
        event_labels.setdefault(event_type, type(traced.event).__name__)
        if traced.publisher is not None:
            handler_labels.setdefault(traced.publisher, _strip(traced.publisher, strip_prefix))
            published.add((traced.publisher, event_type))
        for run in traced.handlers:
            if run.name == NO_HANDLER:
                continue
            handler_labels.setdefault(run.name, _strip(run.name, strip_prefix))
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
