"""The pytest plugin of eventbus, registered through the ``pytest11`` entry point.

Installing eventbus is enough: pytest loads it. Fixtures:

- ``bus``: a new :class:`~eventbus.EventBus` for each test. Override it in
  your ``conftest.py`` to test your application's bus instead; the other
  fixtures use whatever ``bus`` gives.
- ``published``: a :class:`~eventbus.testing.Published` capturing what
  ``bus`` publishes during the test.
- ``fake_clock``: a :class:`~eventbus.testing.FakeClock` installed on
  ``bus`` for the test, so retries wait no time.
- ``dead_letters``: ``bus.dead_letters``.

Between tests: each time the ``bus`` fixture is made, the letters of its
store are forgotten when the store is in memory (the default store, or
``SQLiteDeadLetterStore(":memory:")``); a store in a file is left as it
is, since it may hold letters that matter: give a test's bus a file under
``tmp_path``, or call ``clear_dead_letters``. Every helper block ends with
its fixture. After each test, a check fails the test (an error at teardown)
if it left a receiver connected to a signal of ``eventbus.signals``, an
``override``/``isolate``/``use_clock`` block open, or another clock on a
bus that existed before it; it then puts things back, so the next tests
are not affected. Turn the check off with ``eventbus_check_state = false``
in the ``[pytest]`` ini section (or ``[tool.pytest.ini_options]``).

The fixtures are plain (sync) fixtures: they work in plain, pytest-asyncio
and anyio tests alike.
"""

from __future__ import annotations

import collections.abc as c

import pytest

from ..bus import EventBus
from ..dead_letters import DeadLetterStore, InMemoryDeadLetterStore
from . import _state
from ._capture import Published, capture
from ._clock import FakeClock, use_clock
from ._dead_letters import clear_dead_letters

__all__ = ["bus", "dead_letters", "fake_clock", "published"]

CHECK_OPTION = "eventbus_check_state"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        CHECK_OPTION,
        type="bool",
        default=True,
        help="fail a test that leaves eventbus signal receivers connected, eventbus.testing "
        "blocks open or clocks replaced (default: true)",
    )


@pytest.fixture
def bus() -> EventBus:
    """A new EventBus; override this fixture to test your application's bus."""
    return EventBus()


@pytest.fixture
def published(bus: EventBus) -> c.Iterator[Published]:
    """What ``bus`` publishes during the test, cascades included."""
    with capture(bus) as record:
        yield record


@pytest.fixture
def fake_clock(bus: EventBus) -> c.Iterator[FakeClock]:
    """A FakeClock installed on ``bus`` for the test: retries wait no time."""
    with use_clock(bus, FakeClock()) as clock:
        yield clock


@pytest.fixture
def dead_letters(bus: EventBus) -> DeadLetterStore:
    """The dead-letter store of ``bus`` (empty when the test starts, if it is in memory)."""
    return bus.dead_letters


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(
    fixturedef: pytest.FixtureDef[object], request: pytest.FixtureRequest
) -> c.Generator[None, object, object]:
    """Each time the ``bus`` fixture is made, forget the letters of its in-memory store."""
    made = yield
    # A project's own `bus` fixture may be something else; a store that persists (a file)
    # may hold letters that matter, and is left alone.
    if fixturedef.argname == "bus" and isinstance(made, EventBus) and _in_memory(made):
        clear_dead_letters(made)
    return made


def _in_memory(bus: EventBus) -> bool:
    store = bus.dead_letters
    if isinstance(store, InMemoryDeadLetterStore):
        return True
    from ..dead_letters.sqlite import MEMORY, SQLiteDeadLetterStore

    return isinstance(store, SQLiteDeadLetterStore) and str(store.path) == MEMORY


@pytest.fixture(autouse=True)
def _eventbus_test_state(request: pytest.FixtureRequest) -> c.Iterator[None]:
    """Fail a test that leaves global state behind (see the module's documentation)."""
    after = _state.snapshot() if request.config.getini(CHECK_OPTION) else None
    yield
    if after is not None:
        problems = after()
        if problems:
            pytest.fail("\n\n".join(problems), pytrace=False)
