"""The pytest plugin: found through its entry point, its fixtures, and its check on leaks.

Each test writes a user's test files and runs pytest on them (``pytester``),
as a user of eventbus would: the plugin is not named anywhere, installing
eventbus is what loads it.
"""

from __future__ import annotations

import importlib.metadata
import textwrap

import pytest

from eventbus import signals
from eventbus.testing import _state

APP = """
from eventbus import Event, EventBus, RetryPolicy

class Ordered(Event):
    order_id: str

class Charged(Event):
    order_id: str

app_bus = EventBus(retry=RetryPolicy(max_attempts=3, initial_delay=30.0))
tries: list[str] = []

@app_bus.subscribe
def charge(event: Ordered) -> None:
    tries.append(event.order_id)
    if len(tries) % 2:
        raise RuntimeError("flaky")
    app_bus.publish(Charged(order_id=event.order_id))
"""


def write(pytester: pytest.Pytester, **files: str) -> None:
    pytester.makepyfile(**{name: textwrap.dedent(text) for name, text in files.items()})


def run(pytester: pytest.Pytester) -> pytest.RunResult:
    """pytest on the files written, as a user would run it (pytest-asyncio set up as it asks)."""
    return pytester.runpytest(
        "-p", "no:cacheprovider", "-o", "asyncio_default_fixture_loop_scope=function"
    )


def test_the_plugin_is_registered_through_the_pytest11_entry_point() -> None:
    [entry] = [
        e
        for e in importlib.metadata.entry_points(group="pytest11")
        if e.value.startswith("eventbus")
    ]
    assert (entry.name, entry.value) == ("eventbus", "eventbus.testing.plugin")


def test_the_fixtures_work_in_plain_pytest_asyncio_and_anyio_tests(
    pytester: pytest.Pytester,
) -> None:
    write(
        pytester,
        plug_app=APP,
        conftest="""
            import pytest
            from plug_app import app_bus

            @pytest.fixture
            def bus():
                return app_bus
        """,
        test_plug_flavours="""
            import pytest
            from plug_app import Charged, Ordered

            def check(published, fake_clock, dead_letters):
                charged = published.one(Charged, order_id="o1")
                published.assert_caused(published.find(Ordered), charged)
                assert fake_clock.sleeps == [30.0]
                assert len(dead_letters) == 0

            def test_plain(bus, published, fake_clock, dead_letters):
                bus.publish(Ordered(order_id="o1"))
                check(published, fake_clock, dead_letters)

            @pytest.mark.asyncio
            async def test_pytest_asyncio(bus, published, fake_clock, dead_letters):
                await bus.publish_async(Ordered(order_id="o1"))
                check(published, fake_clock, dead_letters)

            @pytest.mark.anyio
            async def test_anyio(bus, published, fake_clock, dead_letters):
                await bus.publish_async(Ordered(order_id="o1"))
                check(published, fake_clock, dead_letters)

            @pytest.fixture
            def anyio_backend():
                return "asyncio"
        """,
    )
    result = run(pytester)
    result.assert_outcomes(passed=3)


def test_the_default_bus_is_new_for_each_test(pytester: pytest.Pytester) -> None:
    write(
        pytester,
        test_plug_fresh="""
            from eventbus import Event, EventBus

            seen = []

            def test_one(bus):
                assert isinstance(bus, EventBus)
                seen.append(bus)
                bus.subscribe(Event, name="x")(lambda event: None)

            def test_two(bus):
                assert bus is not seen[0] and bus.subscriptions == ()
        """,
    )
    run(pytester).assert_outcomes(passed=2)


def test_each_test_starts_with_no_dead_letters_and_the_apps_own_clock(
    pytester: pytest.Pytester,
) -> None:
    write(
        pytester,
        plug_app2=APP.replace("max_attempts=3", "max_attempts=1"),
        conftest="""
            import pytest
            from plug_app2 import app_bus

            @pytest.fixture
            def bus():
                return app_bus
        """,
        test_plug_reset="""
            from eventbus import SystemClock
            from plug_app2 import Ordered

            def test_leaves_a_letter(bus, fake_clock):
                assert not bus.publish(Ordered(order_id="o1")).ok
                assert len(bus.dead_letters) == 1

            def test_starts_clean(bus):
                assert len(bus.dead_letters) == 0
                assert isinstance(bus.clock, SystemClock)
                assert type(bus.clock).__name__ == "SystemClock"
        """,
    )
    run(pytester).assert_outcomes(passed=2)


LEAKS = """
    from eventbus import Event, EventBus, signals
    from eventbus.testing import FakeClock, override, use_clock

    class Ordered(Event):
        order_id: str

    app_bus = EventBus()
    held = []

    @app_bus.subscribe
    def handler(event: Ordered) -> None: ...

    def on_failed(sender, **kwargs):
        pass

    def test_leaves_a_receiver():
        signals.handler_failed.connect(on_failed, sender=app_bus)

    def test_leaves_a_clock_block_open():
        held.append(use_clock(app_bus))
        held[-1].__enter__()

    def test_sets_a_clock_by_hand():
        app_bus.clock = FakeClock()

    def test_leaves_an_override_open():
        held.append(override(app_bus, handler, lambda event: None))
        held[-1].__enter__()

    def test_after_them_all_is_clean():
        assert not signals.handler_failed.receivers
        assert type(app_bus.clock).__name__ == "SystemClock"
        assert app_bus.subscriptions[0].handler is handler
"""


def test_a_test_that_leaks_state_fails_and_the_next_ones_are_clean(
    pytester: pytest.Pytester,
) -> None:
    write(pytester, test_plug_leaks=LEAKS)
    result = run(pytester)
    result.assert_outcomes(passed=5, errors=4)
    output = result.stdout.str()
    assert "ERROR at teardown of test_leaves_a_receiver" in output
    assert "the test left receivers connected to eventbus signals:" in output
    assert "eventbus.signals.handler_failed: test_plug_leaks.on_failed, connected for EventBus" in (
        output
    )
    assert "the test left eventbus.testing blocks open" in output
    assert "use_clock(<FakeClock" in output
    assert "override(test_plug_leaks.handler)" in output
    assert "the test replaced the clock of buses that existed before it" in output


def test_the_check_can_be_turned_off(pytester: pytest.Pytester) -> None:
    write(pytester, test_plug_leaks_allowed=LEAKS)
    pytester.makeini("[pytest]\neventbus_check_state = false\n")
    after = _state.snapshot()
    result = run(pytester)
    result.assert_outcomes(passed=4, failed=1)  # the last test sees what the others left
    # Unchecked, the leaks outlive the run (this process runs it): undo them here. The
    # receiver is not reported (its module was imported during this test: see below).
    left = after()
    assert [problem.partition(":")[0] for problem in left] == [
        "the test left eventbus.testing blocks open, so the buses stay changed",
    ]
    assert signals.handler_failed.receivers
    for receiver in list(_state.live_receivers(signals.handler_failed).values()):
        if receiver.__module__ == "test_plug_leaks_allowed":
            signals.handler_failed.disconnect(receiver)


def test_a_receiver_a_module_connects_when_first_imported_in_a_test_stays(
    pytester: pytest.Pytester,
) -> None:
    write(
        pytester,
        plug_alerts="""
            from eventbus import signals

            alerts = []

            def alert(sender, **kwargs):
                alerts.append(kwargs["dead_letter"])

            signals.event_dead_lettered.connect(alert)
        """,
        test_plug_late_import="""
            from eventbus import Event, signals

            class Boom(Event):
                pass

            def test_first_import(bus):
                import plug_alerts

                bus.subscribe(Boom)(lambda event: 1 / 0)
                bus.publish(Boom())
                assert len(plug_alerts.alerts) == 1

            def test_second(bus):
                import plug_alerts

                bus.subscribe(Boom)(lambda event: 1 / 0)
                bus.publish(Boom())
                assert len(plug_alerts.alerts) == 2
        """,
    )
    after = _state.snapshot()
    run(pytester).assert_outcomes(passed=2)
    assert after() == []  # imported during this test too: its receiver is not this test's
    for receiver in list(_state.live_receivers(signals.event_dead_lettered).values()):
        if receiver.__module__ == "plug_alerts":
            signals.event_dead_lettered.disconnect(receiver)


def test_a_projects_own_bus_fixture_of_another_kind_is_left_alone(
    pytester: pytest.Pytester,
) -> None:
    write(
        pytester,
        test_plug_can_bus="""
            import pytest

            @pytest.fixture
            def bus():
                return "a CAN bus, not an event bus"

            def test_it(bus):
                assert bus.startswith("a CAN bus")
        """,
    )
    run(pytester).assert_outcomes(passed=1)


def test_the_bus_fixture_is_made_in_its_turn_after_the_projects_autouse_fixtures(
    pytester: pytest.Pytester,
) -> None:
    write(
        pytester,
        conftest="""
            import os
            import pytest
            from eventbus import EventBus

            @pytest.fixture(autouse=True)
            def settings(monkeypatch):
                monkeypatch.setenv("SHOP_RETRIES", "4")

            @pytest.fixture
            def bus():
                assert os.environ["SHOP_RETRIES"] == "4"
                return EventBus()
        """,
        test_plug_order="""
            def test_it(bus, published):
                assert len(published) == 0
        """,
    )
    run(pytester).assert_outcomes(passed=1)


def test_a_store_in_a_file_is_not_cleared_one_in_memory_is(pytester: pytest.Pytester) -> None:
    write(
        pytester,
        conftest="""
            import pytest
            from eventbus import Event, EventBus, SQLiteDeadLetterStore

            class Failing(Event):
                pass

            buses = {
                "file": EventBus(dead_letters=SQLiteDeadLetterStore("letters.db")),
                "memory": EventBus(dead_letters=SQLiteDeadLetterStore(":memory:")),
                "default": EventBus(),
            }
            for each in buses.values():
                each.subscribe(Failing)(lambda event: 1 / 0)

            @pytest.fixture(params=sorted(buses))
            def bus(request):
                return buses[request.param]
        """,
        test_plug_stores="""
            from conftest import Failing

            def test_one(bus):
                bus.publish(Failing())

            def test_two(bus, request):
                kept = 1 if request.node.callspec.params["bus"] == "file" else 0
                assert len(bus.dead_letters) == kept
        """,
    )
    run(pytester).assert_outcomes(passed=6)
