"""The docs keep up with the code: every public name is documented."""

from __future__ import annotations

import pathlib

import eventbus

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"


def test_every_public_name_has_a_heading_in_the_reference() -> None:
    reference = (DOCS / "reference.md").read_text()
    missing = [name for name in eventbus.__all__ if f"### `{name}`" not in reference]
    assert missing == [], f"document these in docs/reference.md: {missing}"
