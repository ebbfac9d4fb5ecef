"""SQLiteOutbox: events written in the caller's own SQLite transaction, for a relay to send.

A web request that writes an order and publishes ``OrderPlaced`` must not
lose the event if the process dies between the two, nor send it for an
order that rolled back. Writing the event into a table of the same
database, in the same transaction as the order, makes the two one fact:
both are committed or neither is. A :class:`~eventbus.outbox.Relay` then
reads the table in order and publishes each event on a bus (to Redis, on a
broker bus), deleting the rows it sent.

Tables (created when missing): ``{table}`` holds the rows waiting, in the
order they were added (``seq``), with the attempts made to send each, the
time of the next, and the trace context the event was added in (its
``headers``, for the relay to send it in that context); ``{table}_lease``
holds the one lease that lets a single relay send at a time, with a
fencing token that grows with every new holder, so a relay that lost its
lease cannot delete rows it no longer owns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import sqlite3
import time
import typing as t

from .._propagation import capture
from .._sqlite import Connections, check_path
from ..errors import EventBusError
from ..events import Event

__all__ = ["OutboxError", "OutboxRow", "SQLiteOutbox"]

_TABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,56}")


class OutboxError(EventBusError):
    """An outbox that cannot be read or written, or a connection to another database."""


@dataclasses.dataclass(frozen=True, slots=True)
class OutboxRow:
    """One event waiting in an outbox, as a relay reads it."""

    seq: int
    event_type: str
    payload: str
    attempts: int
    next_try_at: float
    last_error: str | None
    #: The trace context current when the event was added (W3C ``traceparent``, ``baggage``):
    #: the relay publishes the event in it. Empty without OpenTelemetry.
    headers: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def _read(cls, found: tuple[t.Any, ...]) -> OutboxRow:
        """A row from ``SELECT {COLUMNS}``; headers that are not a JSON object of text, none."""
        seq, event_type, payload, attempts, next_try_at, last_error, headers = found
        try:
            parsed = json.loads(headers) if headers else {}
        except ValueError:
            parsed = {}
        if not isinstance(parsed, dict) or not all(
            isinstance(key, str) and isinstance(value, str) for key, value in parsed.items()
        ):
            parsed = {}  # a trace context is a hint: a damaged one never stops the event
        return cls(seq, event_type, payload, attempts, next_try_at, last_error, parsed)


#: The columns an OutboxRow is read from, in its fields' order.
COLUMNS = "seq, event_type, payload, attempts, next_try_at, last_error, headers"


class SQLiteOutbox:
    """An outbox table in the application's SQLite file at ``path``.

    ::

        outbox = SQLiteOutbox("shop.db")

        with sqlite3.connect("shop.db") as db:  # the request's own transaction
            db.execute("INSERT INTO orders VALUES (?, ?)", (order_id, total))
            outbox.add(db, OrderPlaced(order_id=order_id))  # committed with the order

    ``table`` names the rows' table (``{table}_lease`` is its lease);
    ``timeout`` is how many seconds a write waits for another writer.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        table: str = "eventbus_outbox",
        timeout: float = 5.0,
    ) -> None:
        name = check_path(
            path,
            "the outbox lives in the file the application writes its own tables in, "
            "for a relay to read",
        )
        if not isinstance(table, str) or not _TABLE.fullmatch(table):
            raise ValueError(
                f"table must be a SQL name of at most 57 characters (letters, digits and '_', "
                f"not starting with a digit), got {table!r}"
            )
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.path = name
        self.table = table
        self.lease_table = f"{table}_lease"
        self.timeout = float(timeout)
        self._real = os.path.realpath(name)
        self._db = Connections(
            name,
            timeout=self.timeout,
            schema=(
                f"CREATE TABLE IF NOT EXISTS {table} ("
                "seq INTEGER PRIMARY KEY AUTOINCREMENT, event_type TEXT NOT NULL, "
                "payload TEXT NOT NULL, added_at REAL NOT NULL, "
                "attempts INTEGER NOT NULL DEFAULT 0, next_try_at REAL NOT NULL DEFAULT 0, "
                "last_error TEXT, headers TEXT)",
                f"CREATE TABLE IF NOT EXISTS {self.lease_table} ("
                "id INTEGER PRIMARY KEY CHECK (id = 1), owner TEXT NOT NULL, "
                "token INTEGER NOT NULL, until REAL NOT NULL)",
            ),
            error=OutboxError,
            owner=repr(self),
        )
        with self._db.errors("create its tables"), self._db.lend() as db:
            # fail here, at construction, on a path that cannot be a database
            columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if "headers" not in columns:
            self._add_headers_column()

    def _add_headers_column(self) -> None:
        """Migrate a table made before outbox rows kept their trace context."""
        with self._db.write("add the headers column to its table") as db:
            columns = {row[1] for row in db.execute(f"PRAGMA table_info({self.table})")}
            if "headers" not in columns:  # another process may have added it meanwhile
                db.execute(f"ALTER TABLE {self.table} ADD COLUMN headers TEXT")

    # -- writing, in the caller's transaction ----------------------------------------

    def add(self, db: sqlite3.Connection, event: Event, /) -> None:
        """Write ``event`` to the outbox through ``db``, in the transaction ``db`` has open.

        It is sent once that transaction commits, and never if it rolls
        back. ``db`` must be a connection to this outbox's file (the
        application's, or the one ``SQLiteInbox.transaction()`` yields);
        the event is serialized here, so an event that cannot be is refused
        before anything is written. In a process that uses OpenTelemetry,
        the trace context current here is written with the event, and the
        relay sends the event in it: the send span is a child of the span
        that added the event (a request's, a handler's).
        """
        if not isinstance(event, Event):
            raise TypeError(f"outbox.add() takes an Event, got {event!r}")
        if not isinstance(db, sqlite3.Connection):
            raise TypeError(
                f"outbox.add() takes the sqlite3.Connection whose transaction the event joins, "
                f"got {db!r}"
            )
        payload = event.to_json()  # an unserializable event fails here, before any write
        if not db.in_transaction and (
            db.isolation_level is None or getattr(db, "autocommit", None) is True
        ):
            raise OutboxError(
                f"outbox.add() was given {db!r} in autocommit mode with no transaction open, "
                "so the event would commit alone, whatever happens to the writes it goes "
                "with: open the transaction first (db.execute('BEGIN')), or use a connection "
                "in the default mode, where the first write opens one"
            )
        self._check(db)  # a PRAGMA, microseconds: the same file, or the event is refused
        headers = capture()
        with self._db.errors("add an event"):
            db.execute(
                f"INSERT INTO {self.table} (event_type, payload, added_at, headers) "
                "VALUES (?, ?, ?, ?)",
                (event.event_type, payload, time.time(), json.dumps(headers) if headers else None),
            )

    def _check(self, db: sqlite3.Connection) -> None:
        with self._db.errors("check the connection it was given"):
            files = [row[2] for row in db.execute("PRAGMA database_list") if row[1] == "main"]
        if not files or os.path.realpath(files[0]) != self._real:
            raise OutboxError(
                f"outbox.add() was given a connection to {files[0] if files else 'memory'!r}, "
                f"but {self!r} lives in {self.path!r}: an event commits with the writes of its "
                "own database only; connect to the outbox's file"
            )

    # -- reading, for a relay --------------------------------------------------------

    def __len__(self) -> int:
        """Rows waiting to be sent."""
        with self._db.errors("count its rows"), self._db.lend() as db:
            (count,) = db.execute(f"SELECT count(*) FROM {self.table}").fetchone()
        return int(count)

    def rows(self, limit: int | None = None) -> list[OutboxRow]:
        """The rows waiting, oldest first (all, or the first ``limit``)."""
        with self._db.errors("read its rows"), self._db.lend() as db:
            found = db.execute(
                f"SELECT {COLUMNS} FROM {self.table} ORDER BY seq LIMIT ?",
                (-1 if limit is None else limit,),
            ).fetchall()
        return [OutboxRow._read(row) for row in found]

    def _transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """A write transaction on a connection of the outbox's own (the relay's)."""
        return self._db.write("write")

    def close(self) -> None:
        """Close the outbox's connections; a later use opens new ones."""
        self._db.close()

    def __enter__(self) -> t.Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SQLiteOutbox {self.path!r} table={self.table!r}>"
