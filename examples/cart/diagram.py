"""``python -m examples.cart.diagram [--write FILE]``: the Mermaid diagram of a real run.

Plays every scenario, one after another, in one shop whose bus a
:class:`~eventbus.tracing.Trace` records from the moment it exists, and
prints ``trace.mermaid()``: which handler consumed which event type and
published which. ``--write docs/cart.md`` (``make diagram``) puts it between
the markers of that page instead; a test checks that the page's copy is the
one the code draws now.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys

from eventbus.tracing import Trace

from .app import PRODUCTS, Shop
from .scenarios import PREFIX, SCENARIOS, NoWait

BEGIN = "<!-- begin diagram: made by `make diagram` from a run of every scenario; do not edit -->"
END = "<!-- end diagram -->"


def mermaid() -> str:
    """The diagram of every scenario, played in one shop."""
    shop = Shop(products=(), clock=NoWait())
    with shop, Trace(shop.bus) as trace:
        shop.list_products(PRODUCTS)
        for scenario in SCENARIOS.values():
            scenario.play(shop)
    return trace.mermaid(strip_prefix=PREFIX)


def embedded(page: str) -> str:
    """The diagram between the markers of ``page`` (a Markdown text)."""
    start, end = _markers(page)
    block = page[start:end].strip()
    fence_open, fence_close = "```mermaid\n", "\n```"
    if not (block.startswith(fence_open) and block.endswith(fence_close)):
        raise ValueError("the diagram markers must hold exactly one ```mermaid block")
    return block[len(fence_open) : -len(fence_close)]


def embed(page: str, diagram: str) -> str:
    """``page`` with ``diagram`` between its markers."""
    start, end = _markers(page)
    return f"{page[:start]}\n```mermaid\n{diagram}\n```\n{page[end:]}"


def _markers(page: str) -> tuple[int, int]:
    start, end = page.find(BEGIN), page.find(END)
    if start < 0 or end < start:
        raise ValueError(f"markers not found; the page needs the lines\n{BEGIN}\n{END}")
    return start + len(BEGIN), end


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.cart.diagram", description=__doc__)
    parser.add_argument(
        "--write",
        metavar="FILE",
        type=pathlib.Path,
        help="put the diagram between the markers of this Markdown file",
    )
    args = parser.parse_args(argv)
    logging.getLogger().addHandler(logging.NullHandler())  # retries and dead letters are expected
    diagram = mermaid()
    if args.write is None:
        print(diagram)
        return 0
    page = args.write.read_text()
    updated = embed(page, diagram)
    if updated != page:
        args.write.write_text(updated)
        print(f"{args.write}: diagram updated")
    else:
        print(f"{args.write}: diagram already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
