"""Handler names: stable however the program was started, unique on a bus, settable.

A dead letter names the handler it will be redriven to, and a broker will name
its consumer groups after handlers, so a name must not depend on whether the
module ran as ``__main__`` and must not be shared by two handlers of one bus.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pathlib
import subprocess
import sys
import types
import typing as t

import pytest

from eventbus import Event, EventBus, HandlerRegistry, InMemoryDeadLetterStore
from eventbus.naming import importable_module_name

ROOT = pathlib.Path(__file__).resolve().parent.parent


class Packed(Event):
    order_id: str


class Weighed(Event):
    order_id: str


# -- a script's handlers are named by its importable module, not __main__ -----------------

ORDERS = '''\
"""A shop's order script: run it, and its handlers' letters can be redriven by name."""

import os
import pathlib

from eventbus import Event, EventBus, SQLiteDeadLetterStore


class Shipped(Event):
    order_id: str


bus = EventBus(dead_letters=SQLiteDeadLetterStore(os.environ["ORDERS_DLQ"]))


@bus.subscribe
def ship(event: Shipped) -> None:
    if os.environ.get("CARRIER_DOWN"):
        raise ConnectionError("carrier unreachable")
    with open(os.environ["SHIPPED_LOG"], "a") as log:
        log.write(event.order_id + "\\n")


if __name__ == "__main__":
    bus.publish(Shipped(order_id="o-1"))
'''


def _run(args: list[str], cwd: pathlib.Path, **env: str) -> subprocess.CompletedProcess[str]:
    pythonpath = os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": pythonpath, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("layout", "started_as", "app"),
    [
        ("orders.py", ["orders.py"], "orders:bus"),
        ("orders.py", ["-m", "orders"], "orders:bus"),
        ("shop/orders.py", ["shop/orders.py"], "shop.orders:bus"),
        ("shop/orders.py", ["-m", "shop.orders"], "shop.orders:bus"),
        ("orders.py", ["-m", "cProfile", "-o", os.devnull, "orders.py"], "orders:bus"),
    ],
    ids=["script", "module", "script-in-package", "module-in-package", "under-a-tool"],
)
def test_a_letter_left_by_a_script_is_redriven_by_the_command_line(
    tmp_path: pathlib.Path, layout: str, started_as: list[str], app: str
) -> None:
    script = tmp_path / layout
    script.parent.mkdir(exist_ok=True)
    if script.parent != tmp_path:
        (script.parent / "__init__.py").write_text("")
    script.write_text(ORDERS)
    env = {"ORDERS_DLQ": str(tmp_path / "dlq.db"), "SHIPPED_LOG": str(tmp_path / "shipped")}

    failed = _run(started_as, tmp_path, CARRIER_DOWN="1", **env)
    assert failed.returncode == 0, failed.stderr
    listed = _run(["-m", "eventbus", "dead-letters", "list", "--db", env["ORDERS_DLQ"]], tmp_path)
    module = app.partition(":")[0]
    assert f"{module}.ship" in listed.stdout, listed.stdout + listed.stderr
    assert "__main__" not in listed.stdout

    redriven = _run(
        [
            "-m",
            "eventbus",
            "dead-letters",
            "redrive",
            "--db",
            env["ORDERS_DLQ"],
            "--app",
            app,
            "--all",
        ],
        tmp_path,
        **env,
    )
    assert redriven.returncode == 0, redriven.stdout + redriven.stderr
    assert (tmp_path / "shipped").read_text() == "o-1\n"


def _main_module(monkeypatch: pytest.MonkeyPatch, **attributes: object) -> None:
    main = types.ModuleType("__main__")
    for name, value in attributes.items():
        setattr(main, name, value)
    monkeypatch.setitem(sys.modules, "__main__", main)


def test_python_dash_m_names_the_module_from_its_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    _main_module(monkeypatch, __spec__=types.SimpleNamespace(name="shop.orders"))
    assert importable_module_name("__main__") == "shop.orders"
    assert importable_module_name("shop.payments") == "shop.payments"  # others untouched


def test_a_script_is_named_after_its_file_and_enclosing_packages(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "shop" / "orders"
    package.mkdir(parents=True)
    (tmp_path / "shop" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    _main_module(monkeypatch, __spec__=None, __file__=str(package / "ship.py"))
    assert importable_module_name("__main__") == "shop.orders.ship"


@pytest.mark.parametrize(
    "attributes",
    [
        {"__spec__": None},  # an interactive session, a notebook: no file
        {"__spec__": None, "__file__": "/tmp/ship-orders.py"},  # not importable as a module
        {"__spec__": None, "__file__": "/tmp/orders.pyw"},
    ],
    ids=["no-file", "not-an-identifier", "not-a-py-file"],
)
def test_main_stays_main_where_no_importable_name_exists(
    monkeypatch: pytest.MonkeyPatch, attributes: dict[str, object]
) -> None:
    _main_module(monkeypatch, **attributes)
    assert importable_module_name("__main__") == "__main__"


# -- two handlers, one name: refused when subscribing, with the fix -----------------------


def _ship_v1(event: Packed) -> None: ...


def _ship_v2(event: Packed) -> None: ...


_ship_v2.__qualname__ = _ship_v1.__qualname__  # as a re-run notebook cell would define it


def test_a_redefined_function_is_refused_and_replaced_by_unsubscribing_its_name(
    bus: EventBus,
) -> None:
    bus.subscribe(_ship_v1)
    name = f"{__name__}._ship_v1"
    with pytest.raises(ValueError, match="already subscribed under the name") as refused:
        bus.subscribe(_ship_v2)
    message = str(refused.value)
    assert repr(name) in message
    assert "name=" in message
    assert f"unsubscribe({name!r})" in message
    assert [sub.handler for sub in bus.subscriptions_for(Packed)] == [_ship_v1]

    bus.unsubscribe(name)  # the earlier version, whose function object is gone
    bus.subscribe(_ship_v2)
    assert [sub.handler for sub in bus.subscriptions_for(Packed)] == [_ship_v2]


def test_two_lambdas_need_names_of_their_own(bus: EventBus) -> None:
    seen: list[str] = []
    bus.subscribe(Packed)(lambda event: seen.append("first"))
    with pytest.raises(ValueError, match=r"<lambda>"):
        bus.subscribe(Weighed)(lambda event: seen.append("second"))
    bus.subscribe(Weighed, name="weigh")(lambda event: seen.append("second"))
    bus.publish(Packed(order_id="o-1"))
    bus.publish(Weighed(order_id="o-1"))
    assert seen == ["first", "second"]


def test_closures_from_one_factory_need_names_of_their_own(bus: EventBus) -> None:
    def make(label: str) -> t.Callable[[Packed], None]:
        def record(event: Packed) -> None: ...

        return record

    bus.subscribe(Packed)(make("a"))
    with pytest.raises(ValueError, match=r"make\.<locals>\.record"):
        bus.subscribe(Packed)(make("b"))
    bus.subscribe(Packed, name="record b")(make("b"))
    assert [sub.name for sub in bus.subscriptions_for(Packed)] == [
        f"{__name__}.test_closures_from_one_factory_need_names_of_their_own.<locals>.make"
        ".<locals>.record",
        "record b",
    ]


def _log_any(event: Event) -> None: ...


def test_one_handler_on_two_classes_keeps_one_name(bus: EventBus) -> None:
    bus.subscribe(Packed)(_log_any)
    bus.subscribe(Weighed)(_log_any)  # the same handler again: no clash
    assert [sub.name for sub in bus.subscriptions] == [f"{__name__}._log_any"] * 2


def test_an_explicit_name_clashes_like_a_default_one(bus: EventBus) -> None:
    bus.subscribe(Packed, name="ship")(_ship_v1)
    with pytest.raises(ValueError, match="'ship'"):
        bus.subscribe(Weighed, name="ship")(lambda event: None)


def test_include_refuses_a_clash_and_adds_nothing(bus: EventBus) -> None:
    bus.subscribe(_ship_v1)
    registry = HandlerRegistry()
    registry.subscribe(Weighed, name="weigh")(lambda event: None)
    registry.subscribe(_ship_v2)  # named like _ship_v1, by another function
    with pytest.raises(ValueError, match="already subscribed under the name"):
        bus.include(registry)
    assert [sub.name for sub in bus.subscriptions] == [f"{__name__}._ship_v1"]


def test_methods_of_builtin_objects_are_numbered_not_refused(bus: EventBus) -> None:
    # ``seen.append`` has no module, so no other process could name it anyway.
    packed: list[Event] = []
    weighed: list[Event] = []
    bus.subscribe(Packed)(packed.append)
    bus.subscribe(Weighed)(weighed.append)
    bus.subscribe(Weighed)(packed.append)  # the same handler again keeps its name
    names = [sub.name for sub in bus.subscriptions]
    assert names == ["?.list.append", "?.list.append#2", "?.list.append"]
    bus.publish(Weighed(order_id="o-1"))
    assert len(weighed) == 1
    assert len(packed) == 1

    bus.unsubscribe("?.list.append#2")
    bus.publish(Weighed(order_id="o-2"))
    assert len(weighed) == 1
    assert len(packed) == 2


# -- an explicit name ----------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", "   ", " ship", "ship\n", 3, b"ship"])
def test_a_bad_name_is_refused_with_an_example(bus: EventBus, bad: object) -> None:
    with pytest.raises(TypeError, match=r'name must be a non-empty string.*name="orders.ship"'):
        bus.subscribe(Packed, name=bad)(_ship_v1)  # type: ignore[call-overload]
    assert bus.subscriptions == ()


def test_an_explicit_name_is_what_letters_carry_and_redrive_finds() -> None:
    store = InMemoryDeadLetterStore()
    bus = EventBus(dead_letters=store)
    broken = True

    @bus.subscribe(name="orders.pack")
    def pack(event: Packed) -> None:
        if broken:
            raise ConnectionError("scale offline")

    [letter] = bus.publish(Packed(order_id="o-1")).dead_letters
    assert letter.handler == "orders.pack"
    broken = False
    assert bus.redrive(letter).ok
    assert len(store) == 0


def test_an_explicit_name_is_what_letters_carry_and_redrive_finds_async() -> None:
    store = InMemoryDeadLetterStore()
    bus = EventBus(dead_letters=store)
    broken = True

    @bus.subscribe(name="orders.pack")
    async def pack(event: Packed) -> None:
        if broken:
            raise ConnectionError("scale offline")

    async def scenario() -> None:
        nonlocal broken
        [letter] = (await bus.publish_async(Packed(order_id="o-1"))).dead_letters
        assert letter.handler == "orders.pack"
        broken = False
        assert (await bus.redrive_async(letter)).ok
        assert len(store) == 0

    asyncio.run(scenario())


def test_unsubscribing_a_name_that_is_not_there_says_so(bus: EventBus) -> None:
    with pytest.raises(ValueError, match=r"'orders\.ship'.*not subscribed"):
        bus.unsubscribe("orders.ship")


DOUBLE = """\
import os

from eventbus import Event, EventBus


class Shipped(Event):
    event_type = "orders.shipped"
    order_id: str


bus = EventBus()
"""

ORDERS_TWICE = """\
from shared import bus, Shipped


@bus.subscribe
def ship(event: Shipped) -> None:
    pass


if __name__ == "__main__":
    import orders  # the same file again, by its module name: a second ship
"""


def test_a_script_imported_twice_is_told_so_not_run_twice(tmp_path: pathlib.Path) -> None:
    (tmp_path / "shared.py").write_text(DOUBLE)
    (tmp_path / "orders.py").write_text(ORDERS_TWICE)
    run = _run(["orders.py"], tmp_path)
    assert run.returncode == 1
    assert "ValueError" in run.stderr
    assert "imported twice, once as __main__" in run.stderr


SELF_IMPORTING = """\
from eventbus import Event, EventBus


class Shipped(Event):
    order_id: str


bus = EventBus()  # each copy of the module has its own bus, as before

if __name__ == "__main__":
    import orders  # a module that imports the script, as Flask-style apps do

    assert Shipped.event_type == orders.Shipped.event_type == "orders.Shipped"
    print("ok")
"""


def test_a_script_that_defines_events_may_still_be_imported_by_its_name(
    tmp_path: pathlib.Path,
) -> None:
    (tmp_path / "orders.py").write_text(SELF_IMPORTING)
    run = _run(["orders.py"], tmp_path)
    assert (run.returncode, run.stdout, run.stderr) == (0, "ok\n", "")


SPAWNING = """\
import multiprocessing

from eventbus import Event, EventBus


class Shipped(Event):
    order_id: str


bus = EventBus()


@bus.subscribe
def ship(event: Shipped) -> None:
    pass


def names() -> tuple[str, list[str]]:
    return Shipped.event_type, [sub.name for sub in bus.subscriptions]


def report(queue: "multiprocessing.Queue[object]") -> None:
    queue.put(names())


if __name__ == "__main__":
    context = multiprocessing.get_context("spawn")  # the child imports this file as __mp_main__
    queue = context.Queue()
    child = context.Process(target=report, args=(queue,))
    child.start()
    print(queue.get(timeout=60))
    child.join()
    print(names())
"""


def test_a_spawned_child_names_handlers_and_events_as_its_parent(tmp_path: pathlib.Path) -> None:
    (tmp_path / "orders.py").write_text(SPAWNING)
    run = _run(["orders.py"], tmp_path)
    assert run.returncode == 0, run.stderr
    child, parent = run.stdout.splitlines()
    assert child == parent == str(("orders.Shipped", ["orders.ship"]))


# -- one handler, one name; handlers told apart by identity --------------------------------


class Boxed(Packed, Weighed):
    """Derives from two unrelated classes."""


def test_built_in_methods_included_from_a_registry_are_numbered_too(bus: EventBus) -> None:
    here: list[Event] = []
    there: list[Event] = []
    bus.subscribe(Packed)(here.append)
    registry = HandlerRegistry()
    registry.subscribe(Packed)(there.append)
    bus.include(registry)
    assert [sub.name for sub in bus.subscriptions] == ["?.list.append", "?.list.append#2"]
    bus.publish(Packed(order_id="o-1"))
    assert len(here) == len(there) == 1


def test_a_number_is_never_given_twice(bus: EventBus) -> None:
    first: list[Event] = []
    second: list[Event] = []
    third: list[Event] = []
    bus.subscribe(Packed)(first.append)
    bus.subscribe(Packed)(second.append)
    bus.unsubscribe("?.list.append#2")  # its letters may still wait for it
    bus.subscribe(Packed)(third.append)
    assert [sub.name for sub in bus.subscriptions] == ["?.list.append", "?.list.append#3"]


def test_a_handler_has_one_name(bus: EventBus) -> None:
    bus.subscribe(Packed, name="on_packed")(_log_any)
    with pytest.raises(ValueError, match=r"already subscribed as 'on_packed'.*name='on_packed'"):
        bus.subscribe(Weighed, name="on_weighed")(_log_any)
    with pytest.raises(ValueError, match="already subscribed as 'on_packed'"):
        bus.subscribe(Weighed)(_log_any)  # its default name is another name
    bus.subscribe(Weighed, name="on_packed")(_log_any)
    [sub] = bus.subscriptions_for(Boxed)  # runs once, under its one name
    assert sub.name == "on_packed"


@dataclasses.dataclass
class Counter:
    """Equal to any other Counter of the same count: two of them are still two handlers."""

    count: int = 0

    def __call__(self, event: Event) -> None:
        self.count += 1


def test_handlers_equal_by_value_are_two_handlers(bus: EventBus) -> None:
    packed, weighed = Counter(), Counter()
    assert packed == weighed
    bus.subscribe(Packed, name="count packed")(packed)
    bus.subscribe(Weighed, name="count weighed")(weighed)
    bus.subscribe(Packed, name="count again")(Counter())  # equal to both, and accepted
    bus.publish(Boxed(order_id="o-1"))  # derives from both classes: each counter runs
    assert (packed.count, weighed.count) == (1, 1)
    bus.unsubscribe(weighed)
    assert [sub.name for sub in bus.subscriptions] == ["count packed", "count again"]


def _ship_in_main(event: Packed) -> None: ...


_ship_in_main.__module__ = "__main__"


def test_the_imported_twice_explanation_is_only_for_a_default_name_of_one_function(
    bus: EventBus,
) -> None:
    bus.subscribe(name="ship")(_ship_in_main)
    with pytest.raises(ValueError, match="another handler") as refused:
        bus.subscribe(name="ship")(_ship_v1)  # two functions that were given one name
    assert "imported twice" not in str(refused.value)
