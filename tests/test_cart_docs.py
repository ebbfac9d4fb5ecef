"""The cart example's docs cannot drift from its code: the diagram, the module tables, the tree.

- docs/cart.md's Mermaid diagram is the one ``make diagram`` draws now;
- the module table in docs/cart.md and in the README says what the shop's
  bus really subscribes (handles) and what a run of every scenario really
  publishes, module by module;
- the happy path's tree shown in docs/cart.md is the one the demo prints.
"""

from __future__ import annotations

import collections
import functools
import pathlib
import re

import pytest
from examples.cart import diagram
from examples.cart.app import PRODUCTS, Shop
from examples.cart.scenarios import PREFIX, SCENARIOS, NoWait, show

from eventbus.tracing import Trace, TracedEvent

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "cart.md"
README = ROOT / "README.md"

Table = dict[
    str, tuple[str, frozenset[str], frozenset[str]]
]  # module -> (path, handles, publishes)


@functools.cache
def drawn() -> str:
    """The diagram as the code draws it now (drawn once for this module's tests)."""
    return diagram.mermaid()


def test_the_diagram_in_the_docs_is_the_one_the_code_draws() -> None:
    fresh = drawn()
    assert fresh.startswith("flowchart LR\n")
    assert diagram.embedded(PAGE.read_text()) == fresh, "run `make diagram` and commit docs/cart.md"


def test_the_diagram_is_drawn_the_same_every_time() -> None:
    assert diagram.mermaid() == drawn()


def test_embedding_replaces_only_what_is_between_the_markers() -> None:
    page = f"intro\n{diagram.BEGIN}\n```mermaid\nold\n```\n{diagram.END}\noutro\n"
    updated = diagram.embed(page, "flowchart LR\n    a --> b")
    fence = "```mermaid\nflowchart LR\n    a --> b\n```"
    assert updated == f"intro\n{diagram.BEGIN}\n{fence}\n{diagram.END}\noutro\n"
    assert diagram.embedded(updated) == "flowchart LR\n    a --> b"
    assert diagram.embed(updated, "flowchart LR\n    a --> b") == updated
    with pytest.raises(ValueError, match="markers not found"):
        diagram.embed("no markers here", "x")


def test_make_diagram_writes_the_page(tmp_path: pathlib.Path) -> None:
    page = tmp_path / "cart.md"
    page.write_text(f"# t\n{diagram.BEGIN}\n{diagram.END}\n")
    assert diagram.main(["--write", str(page)]) == 0
    assert diagram.embedded(page.read_text()) == drawn()


def table(markdown: str) -> Table:
    """The module table (the one whose header is ``| module | path | handles | publishes |``)."""
    lines = markdown.splitlines()
    start = lines.index("| module | path | handles | publishes |")
    rows: Table = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        module, path, handles, publishes = (cell.strip() for cell in line.strip("|").split("|"))
        rows[module] = (
            path.strip("`"),
            frozenset(re.findall(r"`(\w+)`", handles)),
            frozenset(re.findall(r"`(\w+)`", publishes)),
        )
    return rows


@functools.cache
def real_table() -> Table:
    handles: dict[str, set[str]] = collections.defaultdict(set)
    publishes: dict[str, set[str]] = collections.defaultdict(set)
    shop = Shop(products=(), clock=NoWait())
    with shop, Trace(shop.bus) as trace:
        for sub in shop.bus.subscriptions:
            handles[module_of(sub.name)].update(cls.__name__ for cls in sub.event_types)
        shop.list_products(PRODUCTS)
        for scenario in SCENARIOS.values():
            scenario.play(shop)

    def visit(traced: TracedEvent) -> None:
        if traced.redrive_of is None:  # a redrive runs a handler again; nobody publishes
            # A top-level publish is a user action of the module that defines the event.
            publisher = traced.publisher or type(traced.event).__module__
            publishes[module_of(publisher)].add(type(traced.event).__name__)
        for child in traced.children:
            visit(child)

    for root in trace.roots:
        visit(root)
    modules = sorted(set(handles) | set(publishes))
    return {
        m: (f"examples/cart/{m}/", frozenset(handles[m]), frozenset(publishes[m])) for m in modules
    }


def module_of(name: str) -> str:
    """The module of a handler (``catalog.reserve_stock``) or an event class's module."""
    module = name.removeprefix(PREFIX).split(".")[0]
    assert module in {"cart", "catalog", "checkout", "notifications", "payments", "users"}, name
    return module


@pytest.mark.parametrize("document", [PAGE, README], ids=["docs/cart.md", "README.md"])
def test_the_module_table_matches_the_subscriptions_and_a_real_run(
    document: pathlib.Path,
) -> None:
    documented = table(document.read_text())
    real = real_table()
    assert sorted(documented) == sorted(real)
    for module, (path, handles, publishes) in real.items():
        assert documented[module] == (path, handles, publishes), module
        assert (ROOT / path / "events.py").is_file()


def test_the_readme_and_the_docs_show_the_same_table() -> None:
    assert table(README.read_text()) == table(PAGE.read_text())


def test_the_happy_path_tree_in_the_docs_is_the_one_the_demo_prints() -> None:
    shown = show(SCENARIOS["happy-path"])
    tree = shown.split("\n\n")[1]
    assert tree.startswith("UserRegistered\n")
    assert f"```text\n{tree}\n```" in PAGE.read_text()
