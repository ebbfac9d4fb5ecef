"""Inboxes: what the idempotent handlers of a bus already handled, by (handler, event id).

``protocol.py`` is the interface, one module per inbox beside it; the
Redis inbox of a broker is ``eventbus.redis.RedisInbox``.
"""

from __future__ import annotations

import typing as t

from .memory import InMemoryInbox
from .protocol import AlreadyHandled, Inbox, InboxError

if t.TYPE_CHECKING:
    from .sqlite import SQLiteInbox

__all__ = ["AlreadyHandled", "InMemoryInbox", "Inbox", "InboxError", "SQLiteInbox"]


def __getattr__(name: str) -> t.Any:
    if name == "SQLiteInbox":
        from .sqlite import SQLiteInbox  # sqlite3 is imported only by those who use it

        return SQLiteInbox
    raise AttributeError(f"module 'eventbus.inbox' has no attribute {name!r}")
