"""docs/performance.md is written by `make bench` from its template, never by hand."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_the_performance_page_is_the_rendered_template() -> None:
    template = (ROOT / "benchmarks" / "performance.md.in").read_text()
    page = (ROOT / "docs" / "performance.md").read_text()
    # Every fixed part of the template, in order, with the measured parts in between.
    pattern = ".*?".join(re.escape(part) for part in re.split(r"\{[a-z_]+\}", template))
    assert re.fullmatch(pattern, page, flags=re.DOTALL), (
        "docs/performance.md does not match benchmarks/performance.md.in: run `make bench`"
    )
    assert "| sync publish, 1 handler | eventbus |" in page
    assert "resident memory (MiB)" in page
