"""The recorder: :class:`Trace`, which listens to a bus's signals and keeps what they say.

Its receivers run in the dispatching thread and, under one lock, place each
signal in a tree of mutable records (``_Node`` per event, ``_Run`` per
handler run, ``_Failure`` per failed attempt). :attr:`Trace.roots` copies
that tree into the frozen dataclasses of :mod:`.records`; the text tree and
the diagram are drawn from such a copy by :mod:`.tree` and :mod:`.mermaid`.
"""

from __future__ import annotations

import collections
import collections.abc as c
import threading
import types
import typing as t
import uuid

from .. import signals
from ..dead_letters import NO_HANDLER, DeadLetter
from ..dead_letters.letter import RELAY, describe
from ..events import Event
from . import mermaid as _mermaid
from . import tree as _tree
from .records import Outcome, TracedEvent, TracedFailure, TracedHandler

if t.TYPE_CHECKING:
    from blinker import NamedSignal

    from ..bus import EventBus

__all__ = ["Trace"]

#: What a trace keeps of one failure's message (the dead letter keeps the full one).
_MAX_MESSAGE = 2_000


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

    __slots__ = (
        "__weakref__",  # so that one can check that a closed trace is freed
        "_bus",
        "_by_event",
        "_by_id",
        "_closed",
        "_lock",
        "_pending",
        "_roots",
    )

    def __init__(self, bus: EventBus) -> None:
        from ..bus import EventBus  # here, not at the top: `import eventbus` stays light

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
        return _tree.render(self.roots, ids=ids, strip_prefix=strip_prefix)

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
        return _mermaid.flowchart(self.roots, strip_prefix=strip_prefix)

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
        # Disconnect from every sender (blinker's default), not only from the bus: a
        # disconnect for one sender leaves the receiver in `signal.receivers`, where it would
        # keep this trace alive and keep the bus on its slower, observed paths. Each
        # receiver was connected for this one bus, so nothing else is lost.
        for signal, receiver in self._receivers():
            signal.disconnect(receiver)

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
        if dead_letter.handler == RELAY:  # an outbox row its relay could not send: no dispatch
            return
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
