"""Shared fixtures: a fresh bus per test, and hypothesis settings fit for shared CI machines."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

from eventbus import EventBus

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
