"""Connections to one SQLite file, lent to one user at a time: what the inbox and outbox share.

A connection is lent for one block (a read, a write transaction, an inbox
transaction) and comes back idle afterwards, so two users never share one:
not two threads, and not two coroutines of one loop thread either (a
coroutine suspended inside its transaction keeps its connection). A
connection that failed (a ``sqlite3.Error``, a ROLLBACK that did not go
through) is closed rather than lent again. After a fork the child opens its
own connections and leaves the parent's alone.
"""

from __future__ import annotations

import collections.abc as c
import contextlib
import os
import sqlite3
import threading

from .errors import EventBusError

__all__ = ["Connections", "check_path"]

#: Idle connections kept for reuse; more are closed on return.
_IDLE = 8


def check_path(path: str | os.PathLike[str], why: str) -> str:
    """The path as a string, or ValueError saying ``why`` a file is needed."""
    name = os.fspath(path)
    if not isinstance(name, str) or not name or name == ":memory:" or name.startswith("file:"):
        raise ValueError(f"path must be the path of a SQLite file, got {path!r}; {why}")
    return name


class Connections:
    """Connections to ``path`` in autocommit mode (WAL, ``synchronous=FULL``, busy ``timeout``).

    ``schema`` runs on each new connection (``CREATE TABLE IF NOT EXISTS``);
    ``error`` is the exception a ``sqlite3.Error`` becomes, its message
    starting with ``owner`` (the inbox or outbox's repr).
    """

    def __init__(
        self,
        path: str,
        *,
        timeout: float,
        schema: c.Sequence[str],
        error: type[EventBusError],
        owner: str,
    ) -> None:
        self.path = path
        self.timeout = timeout
        self._schema = tuple(schema)
        self._error = error
        self._owner = owner
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._open: set[sqlite3.Connection] = set()
        self._pid = os.getpid()

    @contextlib.contextmanager
    def lend(self) -> c.Iterator[sqlite3.Connection]:
        """A connection of its own for the block; back to the idle ones after, if still sound."""
        db = self._take()
        sound = True
        try:
            yield db
        except sqlite3.IntegrityError:
            raise  # a constraint said no: the connection itself is fine
        except sqlite3.Error:
            sound = False  # locked, I/O, corrupt, closed: a new connection next time
            raise
        finally:
            if sound and db.in_transaction:  # never lent again with a transaction open
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    sound = False
            self._give_back(db, sound)

    @contextlib.contextmanager
    def write(self, doing: str) -> c.Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE ... COMMIT), rolled back on an exception."""
        with self.errors(doing), self.lend() as db:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")  # a failed COMMIT is rolled back by lend(), or the db closed

    @contextlib.contextmanager
    def errors(self, doing: str) -> c.Iterator[None]:
        """``sqlite3.Error`` as the owner's error, saying what it could not do."""
        try:
            yield
        except sqlite3.Error as error:
            raise self._error(
                f"{self._owner} could not {doing}: {type(error).__name__}: {error}; check that "
                "the file is a SQLite database this process can write"
            ) from error

    def close(self) -> None:
        """Close every connection (one lent out fails its next use); later uses open new ones."""
        with self._lock:
            connections, self._open, self._idle = self._open, set(), []
        for db in connections:
            with contextlib.suppress(sqlite3.Error):
                db.close()

    # -- the pool --------------------------------------------------------------------

    def _take(self) -> sqlite3.Connection:
        with self._lock:
            if self._pid != os.getpid():  # a forked child: the parent's are not ours to use
                self._pid, self._idle, self._open = os.getpid(), [], set()
            if self._idle:
                return self._idle.pop()
        db = sqlite3.connect(
            self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
            for statement in self._schema:
                db.execute(statement)
        except BaseException:
            db.close()
            raise
        with self._lock:
            self._open.add(db)
        return db

    def _give_back(self, db: sqlite3.Connection, sound: bool) -> None:
        with self._lock:
            if sound and db in self._open and len(self._idle) < _IDLE:
                self._idle.append(db)
                return
            self._open.discard(db)
        with contextlib.suppress(sqlite3.Error):
            db.close()
