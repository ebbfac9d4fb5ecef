"""What the testing helpers change, and the check that a test left nothing changed.

Each helper that changes a bus for a block (``override``, ``isolate``,
``use_clock``) registers a :class:`Change` here until its block ends. The
check (:func:`snapshot`, then the function it returns, after the test)
reports, and undoes, what a test left behind: receivers connected to the
signals of ``eventbus.signals``, helper blocks never ended, and clocks
replaced on buses that existed before the test.
"""

from __future__ import annotations

import collections.abc as c
import dataclasses
import gc
import sys
import threading
import typing as t
import weakref

import blinker
from blinker import NamedSignal

from .. import signals

if t.TYPE_CHECKING:
    from ..bus import EventBus
    from ..clock import Clock

__all__ = ["AfterTest", "Change", "active", "snapshot"]


@dataclasses.dataclass(eq=False)
class Change:
    """A change a helper made to a bus, and how to undo it (once, from any thread)."""

    what: str
    bus: object
    _undo: c.Callable[[], None]
    done: bool = False

    def undo(self) -> None:
        """Undo this change, after the changes made to its bus since (blocks nest)."""
        with _lock:
            if self.done:
                return
            since = active[active.index(self) + 1 :] if self in active else []
        for later in reversed([change for change in since if change.bus is self.bus]):
            later.undo()  # a block ended before those opened inside it: they end first
        with _lock:
            if self.done:
                return
            self.done = True
            if self in active:
                active.remove(self)
        self._undo()


#: The changes of helper blocks that have not ended, oldest first.
active: list[Change] = []
_lock = threading.Lock()


def add(change: Change) -> None:
    """Count ``change`` among those of blocks not yet ended."""
    with _lock:
        active.append(change)


#: What a snapshot returns: call it after the test for the problems (one message each).
AfterTest = c.Callable[[], list[str]]


def snapshot() -> AfterTest:
    """Take note of the global state now; the function returned reports and undoes changes."""
    checks = [_receivers(), _helper_blocks(), _clocks()]

    def after() -> list[str]:
        return [problem for check in checks for problem in check()]

    return after


# -- receivers ---------------------------------------------------------------------------

Held = weakref.ref[c.Callable[..., t.Any]] | c.Callable[..., t.Any]  # how blinker holds one


def _target(held: Held | None) -> c.Callable[..., t.Any] | None:
    return held() if isinstance(held, weakref.ref) else held


def live_receivers(signal: NamedSignal) -> dict[c.Hashable, c.Callable[..., t.Any]]:
    """``signal.receivers``, without the weakly held receivers that are already dead."""
    live = {}
    for key, held in list(signal.receivers.items()):
        receiver = _target(held)
        if receiver is not None:
            live[key] = receiver
    return live


def _receivers_left(
    before: dict[NamedSignal, dict[c.Hashable, Held]],
) -> dict[NamedSignal, dict[c.Hashable, c.Callable[..., t.Any]]]:
    left = {}
    for signal, was in before.items():
        new = {
            key: receiver
            for key, receiver in live_receivers(signal).items()
            if _target(was.get(key)) != receiver
        }
        if new:
            left[signal] = new
    return left


def _senders(signal: NamedSignal, key: c.Hashable) -> str:
    """For whom a receiver is connected, from blinker's private bookkeeping (diagnostics only)."""
    names = []
    for sender_id in signal._by_receiver.get(key, ()):
        if sender_id == blinker.base.ANY_ID:
            names.append("every sender")
        else:
            ref = signal._weak_senders.get(sender_id)
            sender = ref() if ref is not None else None
            names.append("?" if sender is None else f"{type(sender).__name__} at {id(sender):#x}")
    if not names:
        return (
            "no sender: disconnected with `disconnect(receiver, sender=...)`, "
            "or its sender was garbage-collected"
        )
    return ", ".join(sorted(names))


def _module(receiver: c.Callable[..., t.Any]) -> str | None:
    """The module a receiver was defined in (a bound method's: its function's)."""
    module = getattr(getattr(receiver, "__func__", receiver), "__module__", None)
    return module if isinstance(module, str) else None


def _name(receiver: c.Callable[..., t.Any]) -> str:
    module = getattr(receiver, "__module__", None) or "?"
    return f"{module}.{getattr(receiver, '__qualname__', repr(receiver))}"


def _receivers() -> AfterTest:
    """Every receiver a test connects to a signal of ``eventbus.signals`` is gone at its end.

    A receiver left behind keeps ``signal.receivers`` non-empty, so every later test runs
    the bus's slow paths (its fast paths are taken only while no hook has a receiver), and
    it may fire in them. Weakly held receivers that are dead do not count.
    """
    # blinker's own references, weak or strong: a snapshot must not keep a receiver alive
    before = {signal: dict(signal.receivers) for signal in signals.ALL}
    name_of = {getattr(signals, name): name for name in signals.__all__}
    imported = set(sys.modules)

    def after() -> list[str]:
        if not _receivers_left(before):
            return []
        gc.collect()  # a receiver that only the garbage collector would free is no leak
        # A module first imported during the test connects what it connects for good.
        left = {
            signal: kept
            for signal, receivers in _receivers_left(before).items()
            if (kept := {k: r for k, r in receivers.items() if _module(r) in imported | {None}})
        }
        if not left:
            return []
        lines = [
            f"  {signals.__name__}.{name_of[signal]}: {_name(receiver)}, "
            f"connected for {_senders(signal, key)}"
            for signal, receivers in left.items()
            for key, receiver in receivers.items()
        ]
        for signal, receivers in left.items():
            for receiver in receivers.values():
                signal.disconnect(receiver)
        return [
            "the test left receivers connected to eventbus signals:\n"
            + "\n".join(lines)
            + "\nDisconnect each one at the end of the test, in a `finally`, with "
            "`signal.disconnect(receiver)`, without `sender=` "
            "(`signal.disconnect(receiver, sender=bus)` leaves it in `signal.receivers`); "
            "or connect it for a block only: `with signal.connected_to(receiver, sender=bus):`. "
            "(They have been disconnected now, for the next tests.)"
        ]

    return after


# -- helper blocks -----------------------------------------------------------------------


def _helper_blocks() -> AfterTest:
    """Every ``override``, ``isolate`` and ``use_clock`` block the test entered has ended."""
    with _lock:
        before = list(active)

    def after() -> list[str]:
        with _lock:
            left = [change for change in active if change not in before]
        if not left:
            return []
        lines = [f"  {change.what} on {change.bus!r}" for change in left]
        for change in reversed(left):
            change.undo()
        return [
            "the test left eventbus.testing blocks open, so the buses stay changed:\n"
            + "\n".join(lines)
            + "\nUse each as a `with` block (`with override(bus, handler, fake):`), or a "
            "fixture that yields inside one. (They have been undone now, for the next tests.)"
        ]

    return after


# -- clocks ------------------------------------------------------------------------------


def _clocks() -> AfterTest:
    """No bus that existed before the test has another clock after it."""
    before: list[tuple[weakref.ref[EventBus], Clock]] = [
        (weakref.ref(bus), bus.clock) for bus in _live_buses()
    ]

    def after() -> list[str]:
        changed = []
        for ref, clock in before:
            bus = ref()
            if bus is not None and bus.clock is not clock:
                changed.append(f"  {bus!r}: {bus.clock!r}, was {clock!r}")
                bus.clock = clock
        if not changed:
            return []
        return [
            "the test replaced the clock of buses that existed before it:\n"
            + "\n".join(changed)
            + "\nInstall a clock for a block only: `with use_clock(bus) as clock:`, or use "
            "the fake_clock fixture. (The old clocks are back now, for the next tests.)"
        ]

    return after


def _live_buses() -> list[EventBus]:
    from ..bus import EventBus

    return [bus for bus in signals.watched() if isinstance(bus, EventBus)]
