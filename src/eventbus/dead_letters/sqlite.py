"""SQLiteDeadLetterStore: dead letters in a SQLite file that survive restarts and cross processes.

Standard library ``sqlite3`` only. The file is in WAL mode (readers never
block the writer) with ``synchronous=FULL`` (a letter whose ``add`` returned
is on disk, crash or power loss), and a busy timeout, so several threads and
several processes can add, list, redrive and remove letters in one file at
once. Events are stored as their ``event_type`` and ``model_dump_json()``,
and rebuilt with ``Event.class_for(event_type)``: nothing is pickled, nothing
is imported by name. A letter whose event cannot be rebuilt in the reading
process comes back with an :class:`UndefinedEvent`, never dropped.

The schema version is ``PRAGMA user_version``. ``_MIGRATIONS[n]`` takes a
database from version ``n`` to ``n + 1``; to change the schema, append one
function. A file made by a newer eventbus is refused, never altered.
"""

from __future__ import annotations

import collections.abc as c
import contextlib
import json
import os
import pathlib
import sqlite3
import threading
import time
import typing as t
import uuid
import weakref
from datetime import UTC, datetime

from pydantic import ValidationError

from ..events import Event, UnknownEventTypeError
from .letter import DeadLetter, UndefinedEvent

__all__ = ["SQLiteDeadLetterStore"]


def _create_v1(db: sqlite3.Connection) -> None:
    """Version 1: one row per letter; ``seq`` keeps the insertion order."""
    db.execute(
        """
        CREATE TABLE dead_letters (
            seq             INTEGER PRIMARY KEY AUTOINCREMENT,
            id              TEXT    NOT NULL UNIQUE,  -- DeadLetter.id, a UUID
            event_type      TEXT    NOT NULL,
            event           TEXT    NOT NULL,         -- event.model_dump_json()
            handler         TEXT    NOT NULL,
            attempts        INTEGER NOT NULL,
            error_type      TEXT    NOT NULL,
            error_message   TEXT    NOT NULL,
            traceback       TEXT    NOT NULL,
            failed_at       TEXT    NOT NULL,         -- ISO 8601, UTC, microseconds
            first_failed_at TEXT    NOT NULL,         -- ISO 8601, UTC, microseconds
            host            TEXT    NOT NULL,
            pid             INTEGER NOT NULL
        )
        """
    )


#: ``_MIGRATIONS[n]`` upgrades a database at ``user_version`` n to n + 1, inside the
#: transaction that then sets the new ``user_version``. Only ever append.
_MIGRATIONS: list[c.Callable[[sqlite3.Connection], None]] = [_create_v1]

#: The schema version this code reads and writes.
SCHEMA_VERSION = len(_MIGRATIONS)

_COLUMNS = (
    "id, event_type, event, handler, attempts, error_type, error_message, traceback, "
    "failed_at, first_failed_at, host, pid"
)
_ADD = (
    f"INSERT INTO dead_letters ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    # A letter already stored (a redrive that failed again) is updated in place: same seq.
    "ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{name} = excluded.{name}" for name in _COLUMNS.split(", ")[1:])
)
_PAGE = 256  # rows read per query while iterating

#: A row as written (the columns of ``_COLUMNS``, in order); as read, SQLite gives Any.
_Row = tuple[str, str, str, str, int, str, str, str, str, str, str, int]


class SQLiteDeadLetterStore:
    """Dead letters in a SQLite file: durable, shared by threads and processes, oldest first.

    ::

        bus = EventBus(dead_letters=SQLiteDeadLetterStore("dlq.db"))

    A letter added by one process is listed, redriven and removed by any
    other that opens the same file. ``create=False`` opens an existing store
    only: a missing file raises :class:`FileNotFoundError` and nothing is
    created. ``timeout`` is how many seconds an operation waits for another
    connection's write to finish before ``sqlite3.OperationalError``
    ("database is locked").

    Besides the :class:`DeadLetterStore` protocol: ``close()`` (also on
    leaving a ``with`` block) and the ``path`` attribute. Give the store a
    file of its own: its schema version is the file's ``PRAGMA
    user_version``. A file that is not a dead-letter store, or was written
    by a newer eventbus (a higher schema version), raises
    ``sqlite3.DatabaseError``. A store inherited across ``fork()`` opens a
    connection of its own in the child when the child first uses it.

    Reading rebuilds each event with ``Event.class_for(event_type)``; if that
    type is not defined in this process, or its stored JSON no longer
    validates, the letter's ``event`` is an :class:`UndefinedEvent` holding
    the stored JSON (the letter's ``event_type`` stays the stored name).
    Adding such a letter stores its original type and JSON again. Datetimes
    are stored in UTC; a naive one is taken to be UTC.
    """

    # One connection behind a lock, not one per thread: close() then closes
    # every connection this store opened, deterministically (a per-thread
    # connection of an ended worker thread could only be left to the garbage
    # collector); SQLite runs one write at a time per file anyway; and every
    # operation is a short statement, so the lock is held briefly (longer only
    # while another process writes, which a second connection would wait for
    # too). Processes coordinate through SQLite's file locks and the busy timeout.

    def __init__(
        self, path: str | os.PathLike[str], *, create: bool = True, timeout: float = 30.0
    ) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0:
            raise ValueError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
        if sqlite3.sqlite_version_info < (3, 24, 0):  # for INSERT ... ON CONFLICT (upsert)
            raise RuntimeError(
                f"SQLiteDeadLetterStore needs SQLite 3.24 or newer; this Python's sqlite3 "
                f"module uses SQLite {sqlite3.sqlite_version}"
            )
        self.path = pathlib.Path(path)
        self._create = create
        self._timeout = float(timeout)
        self._lock = threading.Lock()
        self._closed = False
        # None after a fork until this process first uses the store: then it opens its own.
        self._db: sqlite3.Connection | None = self._connect(create=create)
        # Connections inherited across fork(): never used nor closed in the child.
        self._inherited: list[sqlite3.Connection] = []
        _open_stores.add(self)

    # -- opening ------------------------------------------------------------------

    def _connect(self, *, create: bool) -> sqlite3.Connection:
        if not create and not self.path.exists():
            raise FileNotFoundError(
                f"no dead-letter store at {str(self.path)!r} (create=False creates none); "
                "check the path"
            )
        # mode=rw never creates the file, even if it disappears after the check above.
        uri = self.path.absolute().as_uri() + ("?mode=rwc" if create else "?mode=rw")
        # isolation_level=None: no implicit transactions; writes use BEGIN IMMEDIATE.
        db = sqlite3.connect(
            uri, uri=True, timeout=self._timeout, isolation_level=None, check_same_thread=False
        )
        try:
            self._prepare(db, create=create)
        except BaseException:
            db.close()
            raise
        return db

    def _prepare(self, db: sqlite3.Connection, *, create: bool) -> None:
        try:
            mode = self._wal(db)
        except sqlite3.OperationalError:
            raise
        except sqlite3.DatabaseError as error:  # "file is not a database"
            raise sqlite3.DatabaseError(
                f"{str(self.path)!r} is not a dead-letter store: {error}"
            ) from error
        if mode.lower() != "wal":
            raise sqlite3.DatabaseError(
                f"{str(self.path)!r}: SQLite refused WAL mode (journal_mode is {mode!r}); "
                "use a file on a local file system"
            )
        db.execute("PRAGMA synchronous = FULL")
        version = self._version(db)
        if version == SCHEMA_VERSION:
            return
        if not create and version == 0:
            raise sqlite3.DatabaseError(
                f"{str(self.path)!r} is not a dead-letter store (it has no schema; "
                "create=False creates none)"
            )
        with _write(db):
            version = self._version(db)  # another process may have migrated meanwhile
            for migrate in _MIGRATIONS[version:]:
                migrate(db)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")

    def _wal(self, db: sqlite3.Connection) -> str:
        """Switch to WAL mode (persistent: a no-op once the file is in WAL mode)."""
        # Switching needs an exclusive lock and SQLite does not wait for it with
        # the busy handler: when several connections create the file at once,
        # the losers get "database is locked" at once. Retry until the timeout.
        deadline = time.monotonic() + self._timeout
        pause = 0.001
        while True:
            try:
                return str(db.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            except sqlite3.OperationalError as error:
                busy = error.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
                if not busy or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def _version(self, db: sqlite3.Connection) -> int:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"{str(self.path)!r} has dead-letter schema version {version}, newer than "
                f"version {SCHEMA_VERSION}, the newest this eventbus knows; upgrade eventbus "
                "to read it"
            )
        return version

    @contextlib.contextmanager
    def _connection(self) -> c.Iterator[sqlite3.Connection]:
        """The connection, held by this thread for the duration of the block."""
        with self._lock:
            if self._closed:
                raise sqlite3.ProgrammingError(f"{self!r} is closed")
            if self._db is None:  # the first use in a forked child
                self._db = self._connect(create=self._create)
            yield self._db

    def _forked(self) -> None:
        """In a child process, right after fork(): set aside the parent's connection."""
        # SQLite forbids using a connection across fork(), and closing it in the
        # child could disturb the parent's locks: keep it, unused and open; the
        # child opens its own on first use. A lock another thread held at fork
        # time would never be released in the child, so the lock is replaced too.
        self._lock = threading.Lock()
        if self._db is not None:
            self._inherited.append(self._db)
            self._db = None

    # -- the DeadLetterStore protocol ---------------------------------------------

    def add(self, letter: DeadLetter, /) -> None:
        """Keep ``letter``; a letter with the same ``id`` is replaced and keeps its place."""
        row = _row(letter)
        with self._connection() as db, _write(db):
            db.execute(_ADD, row)

    def remove(self, letter: DeadLetter, /) -> None:
        """Forget ``letter``; ``KeyError`` if no letter has its ``id``."""
        with self._connection() as db, _write(db):
            removed = db.execute("DELETE FROM dead_letters WHERE id = ?", (str(letter.id),))
            if removed.rowcount == 0:
                raise KeyError(letter.id)

    def get(self, letter_id: uuid.UUID, /) -> DeadLetter:
        """The letter with this ``id``; ``KeyError`` if absent."""
        with self._connection() as db:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM dead_letters WHERE id = ?", (str(letter_id),)
            ).fetchone()
        if row is None:
            raise KeyError(letter_id)
        return _letter(row)

    def __len__(self) -> int:
        with self._connection() as db:
            return int(db.execute("SELECT count(*) FROM dead_letters").fetchone()[0])

    def __iter__(self) -> c.Iterator[DeadLetter]:
        """The letters, oldest first (in the order they were first added).

        Read a page at a time, so no transaction stays open between letters:
        letters added meanwhile may appear at the end, removed ones may not.
        """
        after = 0
        while True:
            with self._connection() as db:
                rows = db.execute(
                    f"SELECT seq, {_COLUMNS} FROM dead_letters WHERE seq > ? ORDER BY seq LIMIT ?",
                    (after, _PAGE),
                ).fetchall()
            for seq, *row in rows:
                after = seq
                yield _letter(row)
            if len(rows) < _PAGE:
                return

    # -- lifetime -----------------------------------------------------------------

    def close(self) -> None:
        """Close the connection; later operations raise ``sqlite3.ProgrammingError``."""
        with self._lock:
            if not self._closed:
                self._closed = True
                _open_stores.discard(self)
                if self._db is not None:
                    self._db.close()

    def __enter__(self) -> t.Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<SQLiteDeadLetterStore {str(self.path)!r}{state}>"


@contextlib.contextmanager
def _write(db: sqlite3.Connection) -> c.Iterator[None]:
    """A write transaction, taking SQLite's write lock first (waiting up to the timeout)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


#: Open stores, for fork(): the child must not use its parent's connections.
_open_stores: weakref.WeakSet[SQLiteDeadLetterStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_open_stores):
        store._forked()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


# -- letters to rows and back ------------------------------------------------------


def _row(letter: DeadLetter) -> _Row:
    event = letter.event
    payload = event.payload if isinstance(event, UndefinedEvent) else event.model_dump_json()
    return (
        str(letter.id),
        letter.event_type,
        payload,
        letter.handler,
        letter.attempts,
        letter.error_type,
        letter.error_message,
        letter.traceback,
        _timestamp(letter.failed_at),
        _timestamp(letter.first_failed_at),
        letter.host,
        letter.pid,
    )


def _letter(row: c.Sequence[t.Any]) -> DeadLetter:
    id_, event_type, payload, handler, attempts, error_type, message, traceback = row[:8]
    failed_at, first_failed_at, host, pid = row[8:]
    return DeadLetter(
        event=_event(event_type, payload),
        handler=handler,
        attempts=attempts,
        error_type=error_type,
        error_message=message,
        traceback=traceback,
        failed_at=datetime.fromisoformat(failed_at),
        first_failed_at=datetime.fromisoformat(first_failed_at),
        event_type=event_type,
        host=host,
        pid=pid,
        id=uuid.UUID(id_),
    )


def _event(event_type: str, payload: str) -> Event:
    """The stored event rebuilt, or an UndefinedEvent saying why it cannot be."""
    try:
        return Event.class_for(event_type).model_validate_json(payload)
    except UnknownEventTypeError:
        reason = f"event type {event_type!r} is not defined in this process"
    except ValidationError as error:
        reason = f"the stored JSON no longer validates as {event_type!r}: {error}"
    except Exception as error:  # a user validator may raise anything: keep the letter
        reason = f"rebuilding {event_type!r} raised {type(error).__qualname__}: {error}"
    return _undefined(event_type, payload, reason)


def _undefined(event_type: str, payload: str, reason: str) -> UndefinedEvent:
    """An UndefinedEvent keeping, where they are readable, the stored event's own ids and time."""
    fields: dict[str, object] = {"stored_type": event_type, "payload": payload, "reason": reason}
    try:
        data = json.loads(payload)
    except ValueError:
        data = None
    if isinstance(data, dict):
        metadata = ("event_id", "occurred_at", "correlation_id", "causation_id")
        with contextlib.suppress(ValidationError):
            return UndefinedEvent.model_validate(
                fields | {k: v for k, v in data.items() if k in metadata}
            )
    return UndefinedEvent.model_validate(fields)


def _timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC with microseconds: fixed width, so text order is time order."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")
