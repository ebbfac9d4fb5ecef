"""SQLiteDeadLetterStore: dead letters in a SQLite file that survive restarts and cross processes.

Standard library ``sqlite3`` only. The file is in WAL mode (readers never
block the writer) with ``synchronous=FULL`` (a letter whose ``add`` returned
is on disk, crash or power loss), and a busy timeout, so several threads and
several processes can add, list, redrive and remove letters in one file at
once. Events are stored as their ``event_type`` and ``to_json()``,
and rebuilt with ``Event.class_for(event_type)``: nothing is pickled, nothing
is imported by name. A letter whose event cannot be rebuilt in the reading
process comes back with an :class:`UndefinedEvent`, never dropped.

Every letter is stored: one whose event does not serialize to JSON that
validates back into an equal event (checked when it is added), or is over
``max_event_bytes``, is stored with what can be kept of it and a mark
(the ``not_redrivable`` column) saying why it cannot be redriven. Every row
is read: one that cannot be parsed comes back as a letter whose event is an
``UndefinedEvent`` ("row unreadable: ...").

The file is ours when its ``PRAGMA application_id`` is :data:`APPLICATION_ID`
(or, for files of schema version 1, written before the id was set, when it
has our ``dead_letters`` table); any other SQLite file is refused, never
altered. The schema version is ``PRAGMA user_version``. ``_MIGRATIONS[n]``
takes a database from version ``n`` to ``n + 1``; to change the schema,
append one function. A file made by a newer eventbus is refused, never
altered.
"""

from __future__ import annotations

import collections.abc as c
import contextlib
import os
import pathlib
import sqlite3
import stat
import threading
import time
import typing as t
import uuid
import weakref

from .letter import DeadLetter
from .protocol import DeadLetterStoreError
from .rows import Garbled, read_id, to_letter, to_row

__all__ = ["SQLiteDeadLetterStore", "SQLiteDeadLetterStoreError"]

#: ``PRAGMA application_id`` of every eventbus dead-letter store: ASCII "EBDL".
APPLICATION_ID = 0x4542444C

#: The default of ``max_event_bytes``: 16 MiB of JSON per event.
DEFAULT_MAX_EVENT_BYTES = 16 * 2**20

#: The path that makes a private in-memory store (SQLite's convention).
MEMORY = ":memory:"

#: Room left in a row for the columns besides the event (SQLite bounds a row's size).
_ROW_MARGIN = 2**20


class SQLiteDeadLetterStoreError(DeadLetterStoreError, sqlite3.DatabaseError):
    """A SQLite dead-letter store cannot be opened, read or written; the message names the file.

    Both a :class:`DeadLetterStoreError` and a ``sqlite3.DatabaseError``.
    Raised when the path cannot hold a store (a directory; a directory that
    is missing or not writable, for a new file), the file is another
    application's or was written by a newer eventbus, it is damaged, or it is
    read-only and a letter is added or removed. When SQLite reported the
    cause, ``sqlite_errorcode`` and ``sqlite_errorname`` are SQLite's.
    """


def _store_error(message: str, cause: BaseException | None = None) -> SQLiteDeadLetterStoreError:
    error = SQLiteDeadLetterStoreError(message)
    if isinstance(cause, sqlite3.Error) and hasattr(cause, "sqlite_errorcode"):
        error.sqlite_errorcode = cause.sqlite_errorcode
        error.sqlite_errorname = cause.sqlite_errorname
    return error


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


def _add_not_redrivable_v2(db: sqlite3.Connection) -> None:
    """Version 2: ``not_redrivable``, NULL, or why the stored event cannot be redriven."""
    db.execute("ALTER TABLE dead_letters ADD COLUMN not_redrivable TEXT")


#: ``_MIGRATIONS[n]`` upgrades a database at ``user_version`` n to n + 1, inside the
#: transaction that then sets the new ``user_version``. Only ever append.
_MIGRATIONS: list[c.Callable[[sqlite3.Connection], None]] = [_create_v1, _add_not_redrivable_v2]

#: The schema version this code reads and writes.
SCHEMA_VERSION = len(_MIGRATIONS)

#: The columns of version 1: a file with this table and no application_id is an old store.
_V1_COLUMNS = frozenset(
    {
        *("seq", "id", "event_type", "event", "handler", "attempts", "error_type"),
        *("error_message", "traceback", "failed_at", "first_failed_at", "host", "pid"),
    }
)

_COLUMNS = (
    "id, event_type, event, handler, attempts, error_type, error_message, traceback, "
    "failed_at, first_failed_at, host, pid, not_redrivable"
)
#: What a version 1 file that cannot be upgraded (it is read-only) is read with.
_COLUMNS_V1 = _COLUMNS.replace("not_redrivable", "NULL")
_ADD = (
    f"INSERT INTO dead_letters ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    # A letter already stored (a redrive that failed again) is updated in place: same seq.
    "ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{name} = excluded.{name}" for name in _COLUMNS.split(", ")[1:])
)
_PAGE = 256  # rows read per query while iterating

#: An id as eventbus writes it (``str(uuid)``); rows whose id is not are looked up by scanning.
_CANONICAL_ID = "-".join("[0-9a-f]" * n for n in (8, 4, 4, 4, 12))
_ODD_ID_ROWS = (
    "SELECT seq, id FROM dead_letters "
    f"WHERE NOT (typeof(id) = 'text' AND id GLOB '{_CANONICAL_ID}')"
)

_Kind = t.Literal["empty", "older", "current"]
_T = t.TypeVar("_T")


class SQLiteDeadLetterStore:
    """Dead letters in a SQLite file: durable, shared by threads and processes, oldest first.

    ::

        bus = EventBus(dead_letters=SQLiteDeadLetterStore("dlq.db"))

    A letter added by one process is listed, redriven and removed by any
    other that opens the same file. The file is created by the first
    ``add``, not before: until then the store is empty, and making one (say,
    when a module is imported) leaves no file behind; the path is checked
    at once (its directory must exist and be writable). An existing file is
    opened, and checked to be a dead-letter store, at once. ``create=False``
    opens an existing store only: a missing file raises
    :class:`FileNotFoundError` and nothing is created. ``timeout`` is how
    many seconds an operation waits for another connection's write to
    finish before ``sqlite3.OperationalError`` ("database is locked").
    ``SQLiteDeadLetterStore(":memory:")`` is a private in-memory store (no
    file; its letters go with it), like SQLite's own ``":memory:"``; a file
    named so is ``"./:memory:"``.

    Every letter is stored. Adding checks that the event's JSON validates
    back into an equal event (NaN equal to NaN); if it does not, or the
    event does not serialize at all, or its JSON is over ``max_event_bytes``
    (16 MiB by default; None: no limit but SQLite's own), the letter is
    stored with what can be kept of the event and marked: read back, its
    ``event`` is an :class:`UndefinedEvent` with ``redrivable=False`` and a
    ``reason`` that says why and what to do. Text SQLite cannot store (lone
    surrogates, as ``os.fsdecode`` makes of undecodable bytes) is stored
    backslash-escaped (``"\\udcff"``).

    Every row is read: a row that cannot be parsed (text that is not UTF-8,
    a time that is not ISO 8601, an id that is not a UUID) comes back as a
    letter whose event is an ``UndefinedEvent`` with ``redrivable=False``
    and the reason ``"row unreadable: ..."``; undecodable bytes are read as
    U+FFFD, an unreadable time as the Unix epoch, an unreadable number as 0,
    and an id that is not a UUID as ``uuid5`` of its text, which ``get`` and
    ``remove`` accept.

    Besides the :class:`DeadLetterStore` protocol: ``close()`` (also on
    leaving a ``with`` block), and the ``path`` (absolute, resolved when the
    store is made) and ``max_event_bytes`` attributes. Give the store a
    file of its own: it is marked with ``PRAGMA application_id`` 0x4542444C
    ("EBDL"), and its schema version is
    the file's ``PRAGMA user_version``. A file that is not a dead-letter
    store (another application's), was written by a newer eventbus, is
    damaged, or cannot be opened raises :class:`SQLiteDeadLetterStoreError`
    (a ``sqlite3.DatabaseError``) naming the file, and is left unchanged. A
    file this user cannot write (a read-only file or directory) is opened
    read-only: letters can be listed and read, and adding or removing one
    raises ``SQLiteDeadLetterStoreError``. A store inherited across
    ``fork()`` opens a connection of its own in the child when the child
    first uses it (an in-memory store starts empty there).

    Reading rebuilds each event with ``Event.class_for(event_type)``; if that
    type is not defined in this process, or its stored JSON no longer
    validates, the letter's ``event`` is an :class:`UndefinedEvent` holding
    the stored JSON (the letter's ``event_type`` stays the stored name).
    Adding such a letter stores its original type, JSON and mark again.
    Datetimes are stored in UTC; a naive one is taken to be UTC.
    """

    # One connection behind a lock, not one per thread: close() then closes
    # every connection this store opened, deterministically (a per-thread
    # connection of an ended worker thread could only be left to the garbage
    # collector); SQLite runs one write at a time per file anyway; and every
    # operation is a short statement, so the lock is held briefly (longer only
    # while another process writes, which a second connection would wait for
    # too). Processes coordinate through SQLite's file locks and the busy timeout.
    # The same design makes ":memory:" work: one connection, one private database.

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        create: bool = True,
        timeout: float = 30.0,
        max_event_bytes: int | None = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0:
            raise ValueError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
        if max_event_bytes is not None and (
            isinstance(max_event_bytes, bool)
            or not isinstance(max_event_bytes, int)
            or max_event_bytes < 1024
        ):
            raise ValueError(
                f"max_event_bytes must be None (no limit) or an int >= 1024, "
                f"got {max_event_bytes!r}"
            )
        if sqlite3.sqlite_version_info < (3, 24, 0):  # for INSERT ... ON CONFLICT (upsert)
            raise RuntimeError(
                f"SQLiteDeadLetterStore needs SQLite 3.24 or newer; this Python's sqlite3 "
                f"module uses SQLite {sqlite3.sqlite_version}"
            )
        self._memory = os.fspath(path) == MEMORY
        # Absolute from the start: the file may be made long after (at the first add), when
        # the working directory may have changed.
        self.path = pathlib.Path(path) if self._memory else pathlib.Path(path).absolute()
        self.max_event_bytes = max_event_bytes
        if self._memory and not create:
            raise ValueError(
                'SQLiteDeadLetterStore(":memory:") is a new, empty store: create=False, which '
                "opens an existing store only, cannot apply; drop create=False, or give a file"
            )
        self._name = repr(str(self.path))
        self._create = create
        self._timeout = float(timeout)
        self._lock = threading.Lock()
        self._closed = False
        self._columns = _COLUMNS  # what this file's rows are read with
        self._length_limit = 1_000_000_000  # SQLite's default; the connection's once opened
        # None until the file exists (no file is created before the first add), and
        # after a fork until this process first uses the store: then it opens its own.
        self._db: sqlite3.Connection | None = None
        if self._memory or self._locate():
            self._db = self._connect()
        # Connections inherited across fork(): never used nor closed in the child.
        self._inherited: list[sqlite3.Connection] = []
        _open_stores.add(self)

    # -- opening ------------------------------------------------------------------

    def _locate(self) -> bool:
        """True if the file exists; False if it can be created; a clear error otherwise."""
        try:
            mode = os.stat(self.path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            mode = None
        except OSError as error:  # a directory of the path cannot be searched, ...
            raise _store_error(
                f"cannot open the dead-letter store {self._name}: {error.strerror}; check the "
                "permissions of the directories on its path",
                error,
            ) from None
        if mode is not None:
            if stat.S_ISDIR(mode):
                raise _store_error(
                    f"{self._name} is a directory, not a dead-letter store file; give the path "
                    f"of a file in it, such as {str(self.path / 'dead_letters.db')!r}"
                )
            return True
        if not self._create:
            raise FileNotFoundError(
                f"no dead-letter store at {str(self.path)!r} (create=False creates none); "
                "check the path"
            )
        parent = self.path.absolute().parent
        if not os.path.isdir(parent):
            problem = "is not a directory" if os.path.exists(parent) else "does not exist"
            raise _store_error(
                f"cannot create the dead-letter store {self._name}: its directory "
                f"{str(parent)!r} {problem}; create the directory first, or check the path"
            )
        if not os.access(parent, os.W_OK | os.X_OK):
            raise _store_error(
                f"cannot create the dead-letter store {self._name}: its directory "
                f"{str(parent)!r} is not writable by this user; make it writable, or choose "
                "another path"
            )
        return False

    def _connect(self) -> sqlite3.Connection:
        """Open this process's connection: to the file, created if need be, or to memory."""
        try:
            if self._memory:
                return self._open_memory()
            exists = self._locate()
            uri = self.path.absolute().as_uri()
            try:
                # mode=rw never creates the file, even if it disappears after the check above.
                return self._open(uri + ("?mode=rw" if exists else "?mode=rwc"), read_only=False)
            except sqlite3.OperationalError as error:
                if not exists or _code(error) not in (sqlite3.SQLITE_READONLY, _CANTOPEN):
                    raise
                return self._open_read_only(uri, error)
        except sqlite3.DatabaseError as error:
            raise self._failure(error) from None

    def _open(self, uri: str, *, read_only: bool) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; writes use BEGIN IMMEDIATE.
        db = sqlite3.connect(
            uri, uri=True, timeout=self._timeout, isolation_level=None, check_same_thread=False
        )
        try:
            self._columns = self._prepare(db, read_only=read_only)
            self._length_limit = db.getlimit(sqlite3.SQLITE_LIMIT_LENGTH)
        except BaseException:
            db.close()
            raise
        return db

    def _open_read_only(self, uri: str, cause: sqlite3.Error) -> sqlite3.Connection:
        """The file when this user cannot write it or its directory: immutable, for reading."""
        # A WAL file needs its -shm file, which a read-only directory cannot hold:
        # SQLite then reads it only as immutable, which ignores the -wal file.
        if not os.access(self.path, os.R_OK):
            raise _store_error(
                f"cannot open the dead-letter store {self._name}: the file is not readable by "
                f"this user ({cause}); check its permissions",
                cause,
            )
        wal = self.path.with_name(self.path.name + "-wal")
        with contextlib.suppress(OSError):
            if wal.stat().st_size > 0:
                raise _store_error(
                    f"cannot open the dead-letter store {self._name}: its directory is not "
                    f"writable by this user and its write-ahead log {wal.name!r} holds letters "
                    f"that SQLite reads only with a writable directory ({cause}); open it as a "
                    "user who can write the directory",
                    cause,
                )
        return self._open(uri + "?mode=ro&immutable=1", read_only=True)

    def _open_memory(self) -> sqlite3.Connection:
        db = sqlite3.connect(MEMORY, isolation_level=None, check_same_thread=False)
        with _write(db):
            for migrate in _MIGRATIONS:
                migrate(db)
            db.execute(f"PRAGMA application_id = {APPLICATION_ID:d}")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
        self._length_limit = db.getlimit(sqlite3.SQLITE_LIMIT_LENGTH)
        return db

    def _prepare(self, db: sqlite3.Connection, *, read_only: bool) -> str:
        """Check that the file is a store, make it one if it is empty; the columns to read."""
        db.text_factory = _text  # the file may be anyone's: its names may not be UTF-8
        try:
            kind, version = self._retrying(lambda: self._first_look(db, read_only=read_only))
        finally:
            db.text_factory = str
        if read_only:
            return _COLUMNS if version >= 2 else _COLUMNS_V1
        db.execute("PRAGMA synchronous = FULL")
        if kind == "current":
            return _COLUMNS
        try:
            with _write(db):
                kind, version = self._identify(db)  # another process may have migrated meanwhile
                for migrate in _MIGRATIONS[version:]:
                    migrate(db)
                db.execute(f"PRAGMA application_id = {APPLICATION_ID:d}")
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
        except sqlite3.OperationalError as error:
            if _code(error) != sqlite3.SQLITE_READONLY or kind == "empty":
                raise
            # An older store this user cannot upgrade (a read-only file): read it as it is.
            return _COLUMNS if version >= 2 else _COLUMNS_V1
        return _COLUMNS

    def _first_look(self, db: sqlite3.Connection, *, read_only: bool) -> tuple[_Kind, int]:
        try:
            with _read(db):  # one snapshot: another connection may be creating the store
                kind, version = self._identify(db)
        except sqlite3.DatabaseError as error:
            if _code(error) != sqlite3.SQLITE_NOTADB:
                raise
            if self._sqlite_header():  # a SQLite file, damaged: say so, not "someone else's"
                raise self._failure(error) from None
            raise self._foreign(str(error), error) from None
        if read_only:
            if kind == "empty":
                raise _store_error(
                    f"{self._name} is empty and read-only: there is no dead-letter store to "
                    "read, and none can be made in it; make the file writable"
                )
            return kind, version
        # Only now, the file known to be a store or empty: WAL mode is a change to the file.
        mode = str(db.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        if mode.lower() != "wal":
            raise _store_error(
                f"{self._name}: SQLite refused WAL mode (journal_mode is {mode!r}); "
                "use a file on a local file system"
            )
        return kind, version

    def _sqlite_header(self) -> bool:
        """Whether the file starts as every SQLite database does."""
        try:
            with open(self.path, "rb") as file:
                return file.read(16) == b"SQLite format 3\x00"
        except OSError:
            return False

    def _identify(self, db: sqlite3.Connection) -> tuple[_Kind, int]:
        """What the file is: an empty one, or a store older than this code, or current."""
        app_id = int(db.execute("PRAGMA application_id").fetchone()[0])
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        objects = db.execute("SELECT type, name FROM sqlite_master").fetchall()
        if app_id not in (0, APPLICATION_ID):
            raise self._foreign(
                f"its application_id is {app_id & 0xFFFFFFFF:#010x}, another application's "
                f"(a dead-letter store's is {APPLICATION_ID:#010x})"
            )
        if not objects and version == 0:
            if not self._create:
                raise _store_error(
                    f"{self._name} is not a dead-letter store (it has no schema; "
                    "create=False creates none)"
                )
            return "empty", 0
        if app_id == 0:
            columns = {
                str(name)
                for (name,) in db.execute(
                    "SELECT name FROM pragma_table_info(?)", ("dead_letters",)
                )
            }
            if not columns >= _V1_COLUMNS or version == 0:
                tables = sorted(
                    str(name)
                    for kind, name in objects
                    if kind == "table" and not str(name).startswith("sqlite_")
                )
                raise self._foreign(
                    f"it has no dead-letter table (user_version {version}, tables: "
                    f"{', '.join(tables) or 'none'})"
                )
        if version > SCHEMA_VERSION:
            raise _store_error(
                f"{self._name} has dead-letter schema version {version}, newer than "
                f"version {SCHEMA_VERSION}, the newest this eventbus knows; upgrade eventbus "
                "to read it"
            )
        if version == 0:
            raise self._foreign("it has the application_id of a dead-letter store, but no schema")
        # A file of version 1 has no application_id yet: it is set with the upgrade.
        return ("current" if version == SCHEMA_VERSION and app_id else "older"), version

    def _foreign(self, why: str, cause: BaseException | None = None) -> SQLiteDeadLetterStoreError:
        return _store_error(
            f"{self._name} is not a dead-letter store: {why}. It was left unchanged; give "
            "the store a file of its own",
            cause,
        )

    def _retrying(self, attempt: c.Callable[[], _T]) -> _T:
        """``attempt()``, again while SQLite says the file is busy, until the timeout."""
        # Switching to WAL mode needs an exclusive lock and SQLite does not wait for it
        # with the busy handler: when several connections create the file at once, the
        # losers get "database is locked" at once. Retry until the timeout.
        deadline = time.monotonic() + self._timeout
        pause = 0.001
        while True:
            try:
                return attempt()
            except sqlite3.OperationalError as error:
                if _code(error) not in _BUSY or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def _failure(self, error: sqlite3.DatabaseError) -> sqlite3.DatabaseError:
        """``error`` as the store's error, naming the file, the cause and the fix."""
        code = _code(error)
        if (
            isinstance(error, SQLiteDeadLetterStoreError | sqlite3.ProgrammingError)
            or code in _BUSY
        ):
            return error  # ours already; a misuse; or "database is locked", worth a retry
        if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
            message = (
                f"the dead-letter store {self._name} is damaged ({error}); restore it from a "
                f"backup, or salvage its rows with `sqlite3 {str(self.path)!r} .recover`"
            )
        elif code == sqlite3.SQLITE_READONLY:
            message = (
                f"the dead-letter store {self._name} is read-only for this user ({error}): "
                "its letters can be listed and read, not added or removed; make the file and "
                "its directory writable"
            )
        elif code == sqlite3.SQLITE_FULL:
            message = f"the dead-letter store {self._name}: the disk is full ({error})"
        elif code == _CANTOPEN:
            message = (
                f"cannot open the dead-letter store {self._name} ({error}); check that the "
                "file and its directory exist and can be read and written by this user"
            )
        else:
            message = f"the dead-letter store {self._name}: {error}"
        return _store_error(message, error)

    @contextlib.contextmanager
    def _use(self, *, make_file: bool) -> c.Iterator[sqlite3.Connection | None]:
        """The connection, held by this thread for the block; store errors made clear.

        Without ``make_file``, None (and no file created) while there is no file yet.
        """
        with self._lock:
            if self._closed:
                raise sqlite3.ProgrammingError(f"{self!r} is closed")
            try:
                if self._db is None:  # before the first add, or the first use in a forked child
                    no_file = self._create and not self._memory and not self.path.exists()
                    if no_file and not make_file:
                        yield None
                        return
                    self._db = self._connect()
                yield self._db
            except sqlite3.DatabaseError as error:
                failure = self._failure(error)
                if failure is error:
                    raise
                raise failure from None

    @contextlib.contextmanager
    def _connection(self) -> c.Iterator[sqlite3.Connection]:
        """The connection (the file created if need be), held by this thread for the block."""
        with self._use(make_file=True) as db:
            assert db is not None  # made above
            yield db

    def _reader(self) -> contextlib.AbstractContextManager[sqlite3.Connection | None]:
        """Like ``_connection``, but None, and no file created, while there is no file."""
        return self._use(make_file=False)

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
        """Keep ``letter``; a letter with the same ``id`` is replaced and keeps its place.

        Never refused for what the letter holds: see the class's documentation.
        """
        limit = self._length_limit - _ROW_MARGIN
        if self.max_event_bytes is not None and self.max_event_bytes < limit:
            limit, source = self.max_event_bytes, "this store's max_event_bytes"
        else:
            source = "SQLite's limit on a value"
        # Outside the lock: the round-trip check runs the event class's validators.
        row = to_row(letter, limit, source)
        with self._connection() as db, _write(db):
            db.execute(_ADD, row)

    def remove(self, letter: DeadLetter, /) -> None:
        """Forget ``letter``; ``KeyError`` if no letter has its ``id``."""
        with self._reader() as db:
            if db is None:
                raise KeyError(letter.id)
            with _write(db):
                removed = db.execute("DELETE FROM dead_letters WHERE id = ?", (str(letter.id),))
                if removed.rowcount == 0:
                    seq = _odd_id_seq(db, letter.id)
                    if seq is None:
                        raise KeyError(letter.id)
                    db.execute("DELETE FROM dead_letters WHERE seq = ?", (seq,))

    def clear(self) -> None:
        """Forget every letter, in one transaction.

        A store whose file is not made yet stays so, and an empty store is
        left untouched (so clearing an empty read-only store is no error).
        """
        with self._reader() as db:
            if db is None or db.execute("SELECT 1 FROM dead_letters LIMIT 1").fetchone() is None:
                return
            with _write(db):
                db.execute("DELETE FROM dead_letters")

    def get(self, letter_id: uuid.UUID, /) -> DeadLetter:
        """The letter with this ``id``; ``KeyError`` if absent."""
        with self._reader() as db:
            rows = []
            if db is not None:
                select = f"SELECT {self._columns} FROM dead_letters"
                rows = _fetch(db, f"{select} WHERE id = ?", (str(letter_id),))
                if not rows:
                    seq = _odd_id_seq(db, letter_id)
                    if seq is not None:
                        rows = _fetch(db, f"{select} WHERE seq = ?", (seq,))
        if not rows:
            raise KeyError(letter_id)
        return to_letter(rows[0])

    def __len__(self) -> int:
        with self._reader() as db:
            if db is None:
                return 0
            return int(db.execute("SELECT count(*) FROM dead_letters").fetchone()[0])

    def __iter__(self) -> c.Iterator[DeadLetter]:
        """The letters, oldest first (in the order they were first added).

        Read a page at a time, so no transaction stays open between letters:
        letters added meanwhile may appear at the end, removed ones may not.
        """
        after = 0
        while True:
            with self._reader() as db:
                if db is None:
                    return
                rows = _fetch(
                    db,
                    f"SELECT seq, {self._columns} FROM dead_letters "
                    "WHERE seq > ? ORDER BY seq LIMIT ?",
                    (after, _PAGE),
                )
            for seq, *row in rows:
                after = seq
                yield to_letter(row)
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


_CANTOPEN = 14  # SQLITE_CANTOPEN (not exported by the sqlite3 module of every Python)
_BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _code(error: sqlite3.Error) -> int | None:
    """SQLite's primary result code of ``error``, if SQLite raised it."""
    code = getattr(error, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


@contextlib.contextmanager
def _write(db: sqlite3.Connection) -> c.Iterator[None]:
    """A write transaction, taking SQLite's write lock first (waiting up to the timeout)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # the first error is the one to report
                db.execute("ROLLBACK")
        raise


@contextlib.contextmanager
def _read(db: sqlite3.Connection) -> c.Iterator[None]:
    """A read transaction: the statements of the block see one state of the file."""
    db.execute("BEGIN DEFERRED")
    try:
        yield
    finally:
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                db.execute("COMMIT")


#: Open stores, for fork(): the child must not use its parent's connections.
_open_stores: weakref.WeakSet[SQLiteDeadLetterStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_open_stores):
        store._forked()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


# -- reading text that may not be UTF-8 ----------------------------------------------


def _text(raw: bytes) -> str:
    """The ``text_factory`` for rows that the default one cannot decode."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return Garbled(raw.decode(errors="replace"))


def _fetch(db: sqlite3.Connection, sql: str, parameters: tuple[object, ...]) -> list[t.Any]:
    """The rows; decoded with U+FFFD for what is not UTF-8 if the quick way cannot."""
    try:
        return db.execute(sql, parameters).fetchall()
    except sqlite3.OperationalError as error:
        if not str(error).startswith("Could not decode"):
            raise
    db.text_factory = _text
    try:
        return db.execute(sql, parameters).fetchall()
    finally:
        db.text_factory = str


def _odd_id_seq(db: sqlite3.Connection, letter_id: uuid.UUID) -> int | None:
    """The ``seq`` of the row whose id is not written as eventbus writes ids but reads as this."""
    for seq, raw in _fetch(db, _ODD_ID_ROWS, ()):
        if read_id(raw)[0] == letter_id:
            return int(seq)
    return None
