"""clear_dead_letters and assert_no_dead_letters, for a bus or any store."""

from __future__ import annotations

import contextlib
import typing as t

from ..dead_letters import DeadLetterStore
from ._format import describe_letter

if t.TYPE_CHECKING:
    from ..bus import EventBus

__all__ = ["assert_no_dead_letters", "clear_dead_letters"]

#: At most this many letters are shown by a failed assertion.
SHOWN = 10


def _store(target: EventBus | DeadLetterStore, helper: str) -> DeadLetterStore:
    from ..bus import EventBus

    if isinstance(target, EventBus):
        return target.dead_letters
    if isinstance(target, DeadLetterStore):
        return target
    raise TypeError(f"{helper}() takes an EventBus or a DeadLetterStore, got {target!r}")


def clear_dead_letters(target: EventBus | DeadLetterStore, /) -> None:
    """Forget every dead letter of a bus (or of a store).

    Calls the store's ``clear()`` (every store of eventbus has one); a store
    of your own without it has its letters removed one by one.
    """
    store = _store(target, "clear_dead_letters")
    clear = getattr(store, "clear", None)
    if callable(clear):
        clear()
        return
    for letter in list(store):
        with contextlib.suppress(KeyError):  # removed meanwhile
            store.remove(letter)


def assert_no_dead_letters(target: EventBus | DeadLetterStore, /) -> None:
    """Fail, showing each letter's handler, event, error and traceback, if there are any."""
    store = _store(target, "assert_no_dead_letters")
    letters = list(store)
    if not letters:
        return
    shown = "\n".join(describe_letter(letter) for letter in letters[:SHOWN])
    more = f"\n... and {len(letters) - SHOWN} more" if len(letters) > SHOWN else ""
    raise AssertionError(f"expected no dead letters, found {len(letters)}:\n{shown}{more}")
