"""Shared fixtures: hypothesis settings fit for shared CI machines,
a check that no test leaves global state behind, and hooks for the property tests."""

from __future__ import annotations

import collections.abc as c
import contextlib
import dataclasses
import typing as t

import pytest
from blinker import NamedSignal
from hypothesis import HealthCheck, settings

from eventbus import EventBus, signals
from eventbus.testing._state import live_receivers
from tests.redis_server import redis_server, redis_url  # noqa: F401  # the fixtures

# Shared 2-core machines: timing-based health checks would make tests flaky, not stricter.
settings.register_profile(
    "eventbus", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=100
)
settings.load_profile("eventbus")


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
# eventbus's own pytest plugin (eventbus.testing.plugin, loaded through its entry point)
# fails a test that leaves receivers connected to eventbus signals, eventbus.testing
# blocks open, or clocks replaced on buses that existed before it.


def eventbus_signals() -> list[NamedSignal]:
    """Every signal of ``eventbus.signals``."""
    return [getattr(signals, name) for name in signals.__all__]


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
            connected = [signal.name for signal in eventbus_signals() if live_receivers(signal)]
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
