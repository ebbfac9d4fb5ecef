"""Shared fixtures: a fresh bus per test, hypothesis settings fit for shared CI machines,
a check that no test leaves global state behind, and hooks for the property tests."""

from __future__ import annotations

import collections.abc as c
import contextlib
import dataclasses
import gc
import typing as t
import weakref

import blinker
import pytest
from blinker import NamedSignal
from hypothesis import HealthCheck, settings

from eventbus import EventBus, signals

# Shared 2-core machines: timing-based health checks would make tests flaky, not stricter.
settings.register_profile(
    "eventbus", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=100
)
settings.load_profile("eventbus")


@pytest.fixture
def bus() -> EventBus:
    return EventBus()


@pytest.fixture
def cheap_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hash the cart example's passwords with a low scrypt cost, for speed.

    The default cost is still used by the tests that run the demo, the
    diagram and the docs.
    """
    from examples.cart.users import service

    monkeypatch.setattr(service, "DEFAULT_COST", service.ScryptCost(n=2**8))


# -- no test leaves global state behind ------------------------------------------------
#
# One function per kind of global state: called before a test, it takes a snapshot and
# returns the function to call after the test, which returns what the test left behind
# (one message per problem) and puts the state back, so that one leak does not make
# later tests fail too. To check another kind of state (an installed clock, ...), write
# such a function and add it to GLOBAL_STATE_CHECKS.

AfterTest = c.Callable[[], list[str]]


def eventbus_signals() -> list[NamedSignal]:
    """Every signal of ``eventbus.signals``."""
    return [getattr(signals, name) for name in signals.__all__]


Held = weakref.ref[c.Callable[..., t.Any]] | c.Callable[..., t.Any]  # how blinker holds one


def _target(held: Held | None) -> c.Callable[..., t.Any] | None:
    return held() if isinstance(held, weakref.ref) else held


def _live_receivers(signal: NamedSignal) -> dict[c.Hashable, c.Callable[..., t.Any]]:
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
            for key, receiver in _live_receivers(signal).items()
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


def _name(receiver: c.Callable[..., t.Any]) -> str:
    module = getattr(receiver, "__module__", None) or "?"
    return f"{module}.{getattr(receiver, '__qualname__', repr(receiver))}"


def signal_receivers() -> AfterTest:
    """Every receiver a test connects to a signal of ``eventbus.signals`` is gone at its end.

    A receiver left behind keeps ``signal.receivers`` non-empty, so every later test runs
    the bus's slow paths (its fast paths are taken only while no hook has a receiver), and
    it may fire in them. Weakly held receivers that are dead do not count.
    """
    # blinker's own references, weak or strong: a snapshot must not keep a receiver alive
    before = {signal: dict(signal.receivers) for signal in eventbus_signals()}
    name_of = {getattr(signals, name): name for name in signals.__all__}

    def after() -> list[str]:
        if not _receivers_left(before):
            return []
        gc.collect()  # a receiver that only the garbage collector would free is no leak
        left = _receivers_left(before)
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


GLOBAL_STATE_CHECKS: list[c.Callable[[], AfterTest]] = [signal_receivers]


@pytest.fixture(autouse=True)
def no_global_state_left() -> c.Iterator[None]:
    """Fail a test that leaves global state changed (see GLOBAL_STATE_CHECKS), then restore it."""
    checks = [check() for check in GLOBAL_STATE_CHECKS]
    yield
    problems = [problem for after in checks for problem in after()]
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


# -- hooks, or none, around a property's bus ---------------------------------------------

HOOK_VARIANTS = ["no hooks", "hooks for this bus", "hooks for another bus"]


@dataclasses.dataclass
class Heard:
    """What the hooks of one ``Hooks.attach`` block received: (signal, sender, keywords)."""

    calls: list[tuple[NamedSignal, object, dict[str, t.Any]]] = dataclasses.field(
        default_factory=list
    )

    def of(self, signal: NamedSignal) -> list[dict[str, t.Any]]:
        """The keyword arguments of each call of ``signal``'s hook, in order."""
        return [kwargs for sent, _, kwargs in self.calls if sent is signal]


@dataclasses.dataclass(frozen=True)
class Hooks:
    """One of HOOK_VARIANTS, for a test to run its bus under: ``with hooks.attach(bus):``.

    "no hooks": no receiver on any signal of ``eventbus.signals`` (checked), so the
    bus takes its fast paths. "hooks for this bus": a receiver on every one of them,
    for ``bus``; "hooks for another bus": the same, for another EventBus, which ``bus``
    must never call. The block yields a :class:`Heard` with the calls for ``bus``, or
    None when no hook listens to ``bus``. At its end (unless it raised), the hooks are
    disconnected and, with hooks for this bus, must have been called, by ``bus`` only;
    with hooks for another bus, never.
    """

    variant: str

    @contextlib.contextmanager
    def attach(self, bus: EventBus) -> c.Iterator[Heard | None]:
        if self.variant == "no hooks":
            connected = [signal.name for signal in eventbus_signals() if _live_receivers(signal)]
            assert not connected, f"'no hooks', but receivers are connected to {connected}"
            yield None
            return
        assert self.variant in HOOK_VARIANTS, self.variant
        other = EventBus() if self.variant == "hooks for another bus" else None
        heard = Heard()

        def hook(signal: NamedSignal) -> c.Callable[..., None]:
            def receiver(sender: object, **kwargs: t.Any) -> None:
                heard.calls.append((signal, sender, kwargs))

            return receiver

        receivers = [(signal, hook(signal)) for signal in eventbus_signals()]
        for signal, receiver in receivers:
            signal.connect(receiver, sender=bus if other is None else other, weak=False)
        try:
            yield heard if other is None else None
        finally:
            for signal, receiver in receivers:
                signal.disconnect(receiver)
        if other is None:
            assert heard.calls, "hooks for this bus, but none was called"
            assert all(sender is bus for _, sender, _ in heard.calls)
        else:
            assert not heard.calls, f"hooks for another bus were called: {heard.calls}"


@pytest.fixture(scope="module", params=HOOK_VARIANTS)
def hooks(request: pytest.FixtureRequest) -> Hooks:
    """Each of HOOK_VARIANTS in turn.

    Not function-scoped, so that hypothesis accepts it in a ``@given`` test: it holds
    no state, each ``attach`` block has its own receivers.
    """
    return Hooks(request.param)
