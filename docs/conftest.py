"""How the docs' code blocks run under pytest (pytest-markdown-docs).

Each page's code runs as a module named ``shop``, so that the handler names
it shows (``shop.reprice``) are those a reader's own ``shop.py`` would
have, rather than the plugin's placeholder module name. The plugin turns
pytest's output capture off while a block runs, so ``print`` is replaced by
one that writes to a buffer: the examples still build what they print,
without it spilling into pytest's progress lines.
"""

from __future__ import annotations

import io
import typing as t

from tests.redis_server import redis_server, redis_url  # noqa: F401  # for fixture:redis_url

MODULE = "shop"


def _quiet_print(
    *values: object, sep: str | None = " ", end: str | None = "\n", **_: t.Any
) -> None:
    print(*values, sep=sep, end=end, file=io.StringIO())


def pytest_markdown_docs_globals() -> dict[str, object]:
    return {"__name__": MODULE, "print": _quiet_print}
