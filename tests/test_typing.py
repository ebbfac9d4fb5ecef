"""A handler's type mistake should show in the user's editor: mypy --strict on small programs.

mypy runs once per test session (a module-scoped fixture) over several snippet files.
Each line where mypy must report an error ends with ``# expect-error``; every other line
must be clean.
"""

from __future__ import annotations

import dataclasses
import re
import textwrap
from pathlib import Path

import mypy.api
import pytest

PRELUDE = """\
from eventbus import Event, EventBus, HandlerRegistry, RetryPolicy


class ItemAdded(Event):
    cart_id: str
    quantity: int


class OtherEvent(Event):
    pass


bus = EventBus()
"""

SNIPPETS: dict[str, str] = {
    # A correct program: every subscribe form, and the decorated functions used afterwards.
    "correct": """
        @bus.subscribe
        def on_added(event: ItemAdded) -> None: ...


        @bus.subscribe(ItemAdded, priority=1, retry=RetryPolicy(max_attempts=2))
        async def reserve(event: ItemAdded) -> None: ...


        @bus.subscribe(ItemAdded)
        def log_added(event: Event) -> None: ...


        @bus.subscribe(priority=2)
        def on_either(event: ItemAdded | OtherEvent) -> str:
            return "seen"


        registry = HandlerRegistry()


        @registry.subscribe
        def log_all(event: Event) -> int:
            return 1


        def plain(event: OtherEvent) -> None: ...


        bus.subscribe(plain)
        bus.include(registry)

        event = ItemAdded(cart_id="c1", quantity=2)
        on_added(event)
        log_added(event)
        text: str = on_either(event)
        count: int = log_all(OtherEvent())
        plain(OtherEvent())


        async def main() -> None:
            await reserve(event)
    """,
    # The three mistakes the guide promises to catch, and a few more.
    "mistakes": """
        @bus.subscribe(ItemAdded)  # expect-error
        def wrong_class(event: OtherEvent) -> None: ...


        @bus.subscribe  # expect-error
        def not_an_event(event: int) -> None: ...


        @bus.subscribe
        def on_added(event: ItemAdded) -> None: ...


        on_added(OtherEvent())  # expect-error


        @bus.subscribe  # expect-error
        def maybe(event: ItemAdded | None) -> None: ...


        @bus.subscribe  # expect-error
        def no_parameter() -> None: ...


        # A second required parameter type-checks (the decorator keeps extra parameters);
        # subscribe() refuses it with a TypeError at import time (see test_registry.py).
        @bus.subscribe
        def two_parameters(event: ItemAdded, extra: int) -> None: ...


        bus.subscribe(int)  # expect-error
    """,
    # The decorator returns the function unchanged, so its full signature should survive.
    "signature": """
        @bus.subscribe
        def on_added(event: ItemAdded, *, dry_run: bool = False) -> None: ...


        on_added(ItemAdded(cart_id="c1", quantity=2), dry_run=True)
        on_added(ItemAdded(cart_id="c1", quantity=2))
    """,
}

ERROR = re.compile(r"^(?P<path>.+?):(?P<line>\d+): error: (?P<message>.*)$")


def expected_error_lines(source: str) -> set[int]:
    return {n for n, line in enumerate(source.splitlines(), 1) if line.endswith("# expect-error")}


@dataclasses.dataclass(frozen=True)
class MypyRun:
    output: str
    sources: dict[str, str]
    flagged: dict[str, set[int]]  # snippet name -> line numbers mypy reported an error on


@pytest.fixture(scope="module")
def mypy_run(tmp_path_factory: pytest.TempPathFactory) -> MypyRun:
    """Run mypy --strict once over every snippet."""
    root = tmp_path_factory.mktemp("typing")
    sources: dict[str, str] = {}
    for name, body in SNIPPETS.items():
        sources[name] = PRELUDE + textwrap.dedent(body)
        (root / f"snippet_{name}.py").write_text(sources[name])

    stdout, stderr, _status = mypy.api.run(
        [
            "--strict",
            "--config-file=",
            "--no-incremental",
            "--cache-dir",
            str(root / ".mypy_cache"),
            "--show-error-codes",
            *(str(root / f"snippet_{name}.py") for name in SNIPPETS),
        ]
    )
    assert stderr == "", stderr

    flagged: dict[str, set[int]] = {name: set() for name in SNIPPETS}
    for line in stdout.splitlines():
        match = ERROR.match(line)
        if match is not None:
            name = Path(match["path"]).stem.removeprefix("snippet_")
            assert name in flagged, line
            flagged[name].add(int(match["line"]))
    return MypyRun(output=stdout, sources=sources, flagged=flagged)


def test_mypy_accepts_correct_handlers_and_flags_mistakes(mypy_run: MypyRun) -> None:
    assert mypy_run.flagged["correct"] == set(), mypy_run.output

    expected = expected_error_lines(mypy_run.sources["mistakes"])
    assert len(expected) == 6  # the markers are in place
    assert mypy_run.flagged["mistakes"] == expected, mypy_run.output


def test_decorated_function_keeps_its_full_signature(mypy_run: MypyRun) -> None:
    """Extra (defaulted) parameters survive the decorator for type checkers.

    The event parameter itself is positional-only to them (``Concatenate``), so
    ``on_added(event=...)`` is not accepted; nobody calls a handler that way.
    """
    assert mypy_run.flagged["signature"] == set(), mypy_run.output
