"""Choosing handlers by name, shell-style glob or function: ``isolate`` in tests, workers later.

A selector is a handler's name (``"shop.reserve_stock"``), a glob over
names (``"shop.catalog.*"``, matched with :func:`fnmatch.fnmatchcase`, so
case counts and ``*`` crosses dots), or the handler itself (told apart by
identity, as ``subscribe`` tells handlers apart).
"""

from __future__ import annotations

import collections.abc as c
import difflib
import fnmatch

from .registry import same_handler
from .subscription import Subscription, handler_name

__all__ = ["Selector", "describe", "select", "unmatched_error"]

#: A handler's name, a glob over names, or the handler itself.
Selector = str | c.Callable[..., object]


def _matches(selector: Selector, sub: Subscription) -> bool:
    if isinstance(selector, str):
        return fnmatch.fnmatchcase(sub.name, selector)
    return same_handler(sub.handler, selector)


def select(
    subscriptions: c.Iterable[Subscription], selectors: c.Sequence[Selector]
) -> tuple[list[Subscription], list[Selector]]:
    """The subscriptions that some selector matches, in order, and the selectors that match none."""
    subscriptions = list(subscriptions)
    chosen = [sub for sub in subscriptions if any(_matches(s, sub) for s in selectors)]
    unmatched = [s for s in selectors if not any(_matches(s, sub) for sub in subscriptions)]
    return chosen, unmatched


def describe(selector: Selector) -> str:
    """A selector as an error message shows it."""
    return repr(selector) if isinstance(selector, str) else handler_name(selector)


def unmatched_error(
    selectors: c.Sequence[Selector], subscriptions: c.Iterable[Subscription], where: str
) -> str:
    """Why ``selectors`` chose nothing ``where``, with the names there are and close ones."""
    names = sorted({sub.name for sub in subscriptions})
    missing = ", ".join(describe(s) for s in selectors)
    if not names:
        return f"{missing} matches no handler: {where} has no handlers subscribed"
    hints = []
    for selector in selectors:
        if isinstance(selector, str):
            close = difflib.get_close_matches(selector, names, n=1)
            if close:
                hints.append(f"did you mean {close[0]!r} for {selector!r}?")
    shown = ", ".join(names[:20]) + (f", ... ({len(names) - 20} more)" if len(names) > 20 else "")
    hint = (" " + " ".join(hints)) if hints else ""
    return (
        f"{missing} matches no handler subscribed to {where} (handlers are chosen by name, "
        f"a shell-style glob over names, or the function itself).{hint} Its handlers: {shown}"
    )
