"""SQLiteInbox: records in the application's own SQLite file, and transactions that hold them.

The records are a table (``eventbus_inbox`` by default) in the file the
application keeps its own tables in, so that :meth:`SQLiteInbox.transaction`
commits a handler's writes and its record together: a crash at any point
either leaves both (the event is handled, a redelivery is skipped) or
neither (a redelivery runs it again, from scratch).

Standard library ``sqlite3`` only; WAL mode, ``synchronous=FULL``, a busy
timeout, a connection per user at a time; several processes may share the file.
"""

from __future__ import annotations

import collections.abc as c
import contextlib
import os
import re
import sqlite3
import time
import typing as t
import uuid

from .._sqlite import Connections, check_path, writing
from .protocol import AlreadyHandled, InboxError, handling

__all__ = ["SQLiteInbox"]

_TABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class SQLiteInbox:
    """Records in a table of the application's SQLite file at ``path``.

    ::

        inbox = SQLiteInbox("shop.db")
        bus = EventBus(inbox=inbox)

        @bus.subscribe(idempotent=True)
        def record_payment(event: PaymentCaptured) -> None:
            with inbox.transaction() as db:  # its writes and the record: one commit
                db.execute("INSERT INTO payments VALUES (?, ?)", (event.order_id, event.amount))

    ``table`` names the records' table (created when missing);
    ``timeout`` is how many seconds a write waits for another writer of the
    file before it fails.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        table: str = "eventbus_inbox",
        timeout: float = 5.0,
    ) -> None:
        name = check_path(
            path,
            "an in-memory database is one per connection, so for records in memory use "
            "InMemoryInbox()",
        )
        if not isinstance(table, str) or not _TABLE.fullmatch(table):
            raise ValueError(
                f"table must be a SQL name (letters, digits and '_', not starting with a digit), "
                f"got {table!r}"
            )
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.path = name
        self.table = table
        self.timeout = float(timeout)
        self._db = Connections(
            name,
            timeout=self.timeout,
            schema=(
                f"CREATE TABLE IF NOT EXISTS {table} ("
                "handler TEXT NOT NULL, event_id TEXT NOT NULL, handled_at REAL NOT NULL, "
                "PRIMARY KEY (handler, event_id)) WITHOUT ROWID",
            ),
            error=InboxError,
            owner=repr(self),
        )
        with self._db.errors("create its table"), self._db.lend():
            pass  # fail here, at construction, on a path that cannot be a database

    # -- the Inbox protocol ----------------------------------------------------------

    def seen(self, handler: str, event_id: uuid.UUID, /) -> bool:
        """Whether the pair is in the table."""
        with self._db.errors("read a record"), self._db.lend() as db:
            row = db.execute(
                f"SELECT 1 FROM {self.table} WHERE handler = ? AND event_id = ?",
                (handler, str(event_id)),
            ).fetchone()
        return row is not None

    def record(self, handler: str, event_id: uuid.UUID, /) -> None:
        """Add the pair (on disk when this returns); already there is no error."""
        self._db.refuse_a_second_writer("write a record")
        with self._db.errors("write a record"), self._db.lend() as db:
            db.execute(
                f"INSERT OR IGNORE INTO {self.table} (handler, event_id, handled_at) "
                "VALUES (?, ?, ?)",
                (handler, str(event_id), time.time()),
            )

    # -- the strong form -------------------------------------------------------------

    @property
    def handling(self) -> bool:
        """Whether an idempotent handler of a bus with this inbox runs here.

        That is, whether its writes go in :meth:`transaction` (once per run:
        a second one raises): code shared by handlers and by other callers
        (a web request) can ask, and open a plain transaction of its own
        when not.
        """
        state = handling.get()
        return state is not None and state.inbox is self

    @contextlib.contextmanager
    def transaction(self) -> c.Iterator[sqlite3.Connection]:
        """The running idempotent handler's writes and its record, in one SQLite transaction.

        Yields the connection to write with; the block's end commits the
        writes together with the record of (handler, event). An exception
        in the block rolls both back (the attempt failed; the next one
        starts clean). If another run of the same handler on the same event
        committed first, the writes are rolled back and
        :class:`AlreadyHandled` is raised, which the bus counts as a
        duplicate skipped.

        Call it from a handler subscribed with ``idempotent=True`` on a bus
        whose inbox is this one, once per run.
        """
        state = handling.get()
        if state is None or state.inbox is not self:
            raise InboxError(
                f"{self!r}.transaction() records the event being handled, and no idempotent "
                "handler of a bus with this inbox is running here: call it from a handler "
                "subscribed with idempotent=True on EventBus(inbox=this inbox)"
            )
        if state.recorded or state.writing:
            raise InboxError(
                f"{state.handler} opened a second inbox transaction in one run; a run commits "
                "its writes in one `with inbox.transaction()` block, so that they and the "
                "record stand or fall together: put them in one block"
            )
        self._db.refuse_a_second_writer("open the transaction of " + state.handler)
        with self._db.lend() as db:
            with self._db.errors("begin a transaction"):
                db.execute("BEGIN IMMEDIATE")
            state.writing = True
            try:
                with writing(self.path, state.handler):
                    yield db  # an exception here: lend() rolls the transaction back
                if not db.in_transaction:
                    raise InboxError(
                        f"{state.handler} ended the inbox transaction itself (commit or "
                        "rollback inside the block), so its writes were not kept with the "
                        "record: leave the commit to the end of the `with` block"
                    )
                with self._db.errors("commit a transaction"):
                    try:
                        db.execute(
                            f"INSERT INTO {self.table} (handler, event_id, handled_at) "
                            "VALUES (?, ?, ?)",
                            (state.handler, str(state.event_id), time.time()),
                        )
                    except sqlite3.IntegrityError:
                        db.execute("ROLLBACK")
                        raise AlreadyHandled(
                            f"{state.handler} already handled event {state.event_id}: another "
                            "run committed first; this run's writes were rolled back"
                        ) from None
                    db.execute("COMMIT")  # if it fails, lend() rolls back or drops the db
                state.recorded = True
            finally:
                state.writing = False

    # -- housekeeping ----------------------------------------------------------------

    def purge(self, *, older_than: float) -> int:
        """Remove the records older than ``older_than`` seconds; how many were removed.

        A duplicate of a purged record runs again: keep records longer than
        any redelivery can come (a broker's retention, an outbox's retries).
        """
        if isinstance(older_than, bool) or not isinstance(older_than, int | float):
            raise TypeError(f"older_than must be a number of seconds, got {older_than!r}")
        with self._db.errors("purge records"), self._db.lend() as db:
            cursor = db.execute(
                f"DELETE FROM {self.table} WHERE handled_at < ?", (time.time() - older_than,)
            )
        return cursor.rowcount

    def __len__(self) -> int:
        with self._db.errors("count records"), self._db.lend() as db:
            (count,) = db.execute(f"SELECT count(*) FROM {self.table}").fetchone()
        return int(count)

    def close(self) -> None:
        """Close the inbox's connections; a later use opens new ones."""
        self._db.close()

    def __enter__(self) -> t.Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SQLiteInbox {self.path!r} table={self.table!r}>"
