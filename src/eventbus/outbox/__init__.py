"""A transactional outbox: events committed with the caller's own writes, sent by a relay.

``sqlite.py`` is the outbox (a table in the application's SQLite file),
``relay.py`` what moves its rows to a bus. ``python -m eventbus relay``
runs a relay on its own; ``python -m eventbus worker --outbox PATH`` runs
one beside a worker's handlers.
"""

from __future__ import annotations

from .relay import RELAY, Relay
from .sqlite import OutboxError, OutboxRow, SQLiteOutbox

__all__ = ["RELAY", "OutboxError", "OutboxRow", "Relay", "SQLiteOutbox"]
