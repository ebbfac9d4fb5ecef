"""Connections to one SQLite file, lent to one user at a time: what the inbox and outbox share.

A connection is lent for one block (a read, a write transaction, an inbox
transaction) and comes back idle afterwards, so two users never share one:
not two threads, and not two coroutines of one loop thread either (a
coroutine suspended inside its transaction keeps its connection). A
connection that failed (a ``sqlite3.Error``, a ROLLBACK that did not go
through) is closed rather than lent again. After a fork the child opens its
own connections and leaves the parent's alone (never used, never closed).

A write transaction of an inbox marks the file written in its thread
(:func:`writing`): another write from that thread meanwhile can only be
another coroutine of the same loop, which would wait for the lock with the
loop stopped, so it is refused at once with the fix in its message.
"""

from __future__ import annotations

import collections.abc as c
import contextlib
import os
import sqlite3
import threading

from .errors import EventBusError

__all__ = ["Connections", "check_path", "writing"]

#: Idle connections kept for reuse; more are closed on return.
_IDLE = 8

#: (file, thread) -> who holds a write transaction open there now (an inbox transaction).
_WRITERS: dict[tuple[str, int], str] = {}
_WRITERS_LOCK = threading.Lock()


@contextlib.contextmanager
def writing(path: str, who: str) -> c.Iterator[None]:
    """Mark a write transaction of ``who`` open on ``path`` in this thread, for the block."""
    key = (os.path.realpath(path), threading.get_ident())
    with _WRITERS_LOCK:
        _WRITERS[key] = who
    try:
        yield
    finally:
        with _WRITERS_LOCK:
            _WRITERS.pop(key, None)


def writer_here(path: str) -> str | None:
    """Who holds a write transaction on ``path`` open in this thread (another coroutine)."""
    return _WRITERS.get((os.path.realpath(path), threading.get_ident()))


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
        self._abandoned: list[sqlite3.Connection] = []  # a forked parent's

    @contextlib.contextmanager
    def lend(self) -> c.Iterator[sqlite3.Connection]:
        """A connection of its own for the block; back to the idle ones after, if still sound."""
        db = self._take()
        sound = True
        try:
            yield db
        except BaseException as error:
            cause = error if isinstance(error, sqlite3.Error) else error.__cause__
            if isinstance(cause, sqlite3.Error) and not isinstance(cause, sqlite3.IntegrityError):
                sound = False  # locked, I/O, corrupt, closed: a new connection next time
            raise  # (a constraint that said no leaves the connection fine)
        finally:
            if sound and db.in_transaction:  # never lent again with a transaction open
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    sound = False
            self._give_back(db, sound)

    @contextlib.contextmanager
    def write(self, doing: str) -> c.Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE ... COMMIT), rolled back on an exception.

        Refused at once, instead of waiting ``timeout`` seconds with the event
        loop stopped, when this thread holds the file's write lock already
        (another coroutine's inbox transaction, suspended at an await).
        """
        self.refuse_a_second_writer(doing)
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
            if isinstance(error, sqlite3.OperationalError) and "locked" in str(error):
                fix = (
                    f"another writer held the file's write lock for the whole timeout "
                    f"({self.timeout:g}s): a transaction left open across an await, or a slow "
                    "writer; keep transactions short, or give a longer timeout"
                )
            else:
                fix = "check that the file is a SQLite database this process can write"
            raise self._error(
                f"{self._owner} could not {doing}: {type(error).__name__}: {error}; {fix}"
            ) from error

    def refuse_a_second_writer(self, doing: str) -> None:
        """Raise the owner's error if this thread holds the file's write lock already."""
        holder = writer_here(self.path)
        if holder is not None:
            raise self._error(
                f"{self._owner} could not {doing}: {holder}'s inbox transaction is open on "
                "this thread (an async handler awaited inside its `with inbox.transaction()` "
                "block). SQLite has one writer at a time, so waiting for it here would block "
                "the event loop: do the awaits before or after the block, and only the writes "
                "inside it"
            )

    def close(self) -> None:
        """Close every connection (one lent out fails its next use); later uses open new ones."""
        with self._lock:
            if self._pid != os.getpid():  # a forked child: never close the parent's
                self._forked()
                return
            connections, self._open, self._idle = self._open, set(), []
        for db in connections:
            with contextlib.suppress(sqlite3.Error):
                db.close()

    # -- the pool --------------------------------------------------------------------

    def _take(self) -> sqlite3.Connection:
        with self._lock:
            if self._pid != os.getpid():  # a forked child: the parent's are not ours to use
                self._forked()
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

    def _forked(self) -> None:
        """In a forked child: leave the parent's connections alone, open and unused."""
        self._abandoned += list(self._open)  # kept referenced: never closed from here
        self._pid, self._idle, self._open = os.getpid(), [], set()

    def _give_back(self, db: sqlite3.Connection, sound: bool) -> None:
        with self._lock:
            if sound and db in self._open and len(self._idle) < _IDLE:
                self._idle.append(db)
                return
            self._open.discard(db)
        with contextlib.suppress(sqlite3.Error):
            db.close()
