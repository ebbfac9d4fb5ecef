"""The cart example's import rule: a module may import another module's events, nothing else.

Each of the six module packages (``examples/cart/<module>/``) may import
anything from itself, the standard library, pydantic, eventbus and the
example's ``storage`` (how every module keeps its state); from the other
five, only their ``events`` module; and never the composition root
(``examples.cart.app``) or the rest of the example. Checked on the source,
with ``ast``, for every file of every module, imports inside functions
included.
"""

from __future__ import annotations

import ast
import importlib
import pathlib

import pytest

from eventbus import Event

CART = pathlib.Path(__file__).resolve().parent.parent / "examples" / "cart"
PACKAGE = "examples.cart"
MODULES = ("users", "catalog", "cart", "payments", "checkout", "notifications")


def violations(
    source: str, module: str, filename: str = "service.py", package: str | None = None
) -> list[str]:
    """The imports in ``source`` that break the rule.

    ``source`` is a file of module package ``module``, in the package
    ``package`` (``examples.cart.<module>``, or a subpackage of it).
    """
    package = package or f"{PACKAGE}.{module}"
    found: list[str] = []
    for node in ast.walk(ast.parse(source, filename)):
        # Each import as (the module imported from, the name imported from it, or None).
        imported: list[tuple[str, str | None]]
        if isinstance(node, ast.Import):
            imported = [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            imported = [(base, alias.name) for alias in node.names]
        else:
            continue
        for base, name in imported:
            if not _allowed(base, name, module):
                what = f"from {base} import {name}" if name else f"import {base}"
                found.append(f"{filename}:{node.lineno}: {what}")
    return found


def _allowed(base: str, name: str | None, module: str) -> bool:
    full = f"{base}.{name}" if name else base
    if not full.startswith(PACKAGE + ".") and full != PACKAGE and base != PACKAGE:
        return True  # outside the example: the standard library, pydantic, eventbus
    parts = base.split(".")
    if parts[2:] == ["storage"] or (parts[2:] == [] and name == "storage"):
        return True  # the tables and transactions every module keeps its state with
    if len(parts) >= 3 and parts[2] == module:
        return True  # its own package
    if len(parts) >= 3 and parts[2] in MODULES:
        # another module: its events module (``from ..catalog.events import X`` or
        # ``from ..catalog import events``), and nothing else
        rest = parts[3:] if name is None or parts[3:] else [name]
        return rest == ["events"]
    return False  # examples.cart itself, its app, scenarios, CLI


def module_files() -> list[tuple[str, pathlib.Path]]:
    return [(module, path) for module in MODULES for path in sorted((CART / module).rglob("*.py"))]


def package_of(path: pathlib.Path) -> str:
    return ".".join([PACKAGE, *path.parent.relative_to(CART).parts])


@pytest.mark.parametrize(
    ("module", "path"), module_files(), ids=lambda v: str(v).rsplit("examples/cart/", 1)[-1]
)
def test_each_module_imports_only_the_events_of_the_others(module: str, path: pathlib.Path) -> None:
    assert violations(path.read_text(), module, path.name, package_of(path)) == []


def test_every_module_package_has_its_events_and_its_service() -> None:
    packages = {p.name for p in CART.iterdir() if (p / "__init__.py").exists()}
    assert packages == {*MODULES, "services"}  # services: the composition on Redis, like app.py
    for module in MODULES:
        assert (CART / module / "events.py").is_file()
        assert (CART / module / "service.py").is_file()


def test_every_event_type_is_named_after_its_module() -> None:
    for module in MODULES:
        importlib.import_module(f"{PACKAGE}.{module}.events")
    cart_events = [cls for name, cls in _event_classes() if name.startswith(f"{PACKAGE}.")]
    assert len(cart_events) >= 20
    for cls in cart_events:
        module = cls.__module__.split(".")[2]
        assert cls.__module__ == f"{PACKAGE}.{module}.events", cls
        assert cls.event_type.startswith(f"{module}."), cls


def _event_classes() -> list[tuple[str, type[Event]]]:
    seen: list[type[Event]] = []
    pending: list[type[Event]] = [Event]
    while pending:
        cls = pending.pop()
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.append(sub)
                pending.append(sub)
    return [(cls.__module__, cls) for cls in seen]


# -- the checker itself catches what it should --------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "from ..catalog.service import Catalog",
        "from ..payments.gateway import FakeGateway",
        "from .. import catalog",
        "from ..catalog import service",
        "from .. import app",
        "from ..app import Shop",
        "from ..scenarios import SCENARIOS",
        "import examples.cart.catalog.service",
        "import examples.cart.catalog",
        "import examples.cart",
        "from examples.cart.payments.service import Payments",
        "from examples.cart import app",
        "def later():\n    from ..users.service import Users",
    ],
)
def test_the_checker_reports_a_violation(source: str) -> None:
    found = violations(source, "checkout", "bad.py")
    assert len(found) == 1, found
    assert found[0].startswith("bad.py:")


@pytest.mark.parametrize(
    "source",
    [
        "from ..catalog.events import StockReserved",
        "from ..catalog import events",
        "from ..catalog import events as catalog_events",
        "import examples.cart.catalog.events",
        "from examples.cart.payments.events import ChargePayment",
        "from .events import OrderConfirmed",
        "from . import events",
        "from .service import CheckoutSaga",
        "from examples.cart.checkout.service import CheckoutSaga",
        "import hashlib\nfrom pydantic import BaseModel\nfrom eventbus import Event",
    ],
)
def test_the_checker_allows_events_and_its_own_package(source: str) -> None:
    assert violations(source, "checkout") == []


def test_the_checker_names_the_offending_line() -> None:
    source = "from .events import A\nfrom ..cart.service import Carts\n"
    assert violations(source, "checkout", "service.py") == [
        "service.py:2: from examples.cart.cart.service import Carts"
    ]
