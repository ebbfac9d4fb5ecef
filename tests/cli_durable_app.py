"""An application whose bus keeps its letters in SQLite: ``--app tests.cli_durable_app:bus``.

It builds its store when it is imported, as an application module may: a
``SQLiteDeadLetterStore`` makes its file at its first letter, so importing
this module for a command aimed at another store (``--db``) must leave no
file at ``CLI_DURABLE_DLQ``, its store's path.
"""

from __future__ import annotations

import os
import tempfile

from eventbus import EventBus, SQLiteDeadLetterStore
from tests.cli_app import open_claim  # and, with it, cli_app's event classes

path = os.environ.get("CLI_DURABLE_DLQ") or os.path.join(tempfile.gettempdir(), "durable-dlq.db")
bus = EventBus(dead_letters=SQLiteDeadLetterStore(path))
bus.subscribe(open_claim)
