"""Each module's state: tables of JSON values, changed in transactions, in memory or in SQLite.

A module keeps its state in :class:`Table` objects from its :class:`Store`
and changes it inside ``with store.transaction():`` (its sync actions and
handlers through :func:`transactional`; its async handlers around the
writes that follow their awaits). A table reads a copy of a value
and ``put`` writes it back, so what a module sees is the same in memory and
on disk: nothing changes behind a ``put``, and a transaction that raises
leaves every table as it was.

- :class:`MemoryStore`: the in-process shop. A transaction that raises puts
  the tables back as they were; what it published is handed to the bus once
  it ended without raising.
- :class:`SQLiteStore`: a service of the shop on Redis. Its tables are rows
  of the service's own SQLite file. Inside one of the service's idempotent
  handlers, a transaction is the inbox's (``SQLiteInbox.transaction()``):
  the handler's writes, the events it publishes (``outbox.add`` into the same
  file) and the record that it handled the event commit together, so a
  service killed at any point neither loses nor repeats an effect.
"""

from __future__ import annotations

import abc
import collections.abc as c
import contextlib
import contextvars
import dataclasses
import functools
import inspect
import os
import sqlite3
import typing as t

from pydantic import TypeAdapter

from eventbus import Event, SQLiteInbox, SQLiteOutbox

V = t.TypeVar("V")
P = t.ParamSpec("P")
R = t.TypeVar("R")


class Table(c.Mapping[str, V]):
    """A mapping of string keys to values of one type, kept as JSON by a store.

    Reading (``table[key]``, ``get``, iteration, ``values()``) gives copies, in
    the order the keys were first written; ``put`` and ``delete`` change it.
    """

    def __init__(self, store: Store, name: str, adapter: TypeAdapter[V]) -> None:
        self._store = store
        self._name = name
        self._adapter = adapter

    def __getitem__(self, key: str) -> V:
        raw = self._store._read(self._name, key)
        if raw is None:
            raise KeyError(key)
        return self._adapter.validate_json(raw)

    def __iter__(self) -> c.Iterator[str]:
        return iter(self._store._keys(self._name))

    def __len__(self) -> int:
        return len(self._store._keys(self._name))

    def put(self, key: str, value: V) -> None:
        self._store._write(self._name, key, self._adapter.dump_json(value).decode())

    def delete(self, key: str) -> None:
        self._store._write(self._name, key, None)

    def __repr__(self) -> str:
        return f"<Table {self._name} of {self._store!r}>"


class Store(abc.ABC):
    """A module's tables and the transactions that change them (see the subclasses)."""

    def table(self, name: str, value_type: t.Any) -> Table[t.Any]:
        """The table ``name`` of values of ``value_type`` (any type pydantic can validate)."""
        return Table(self, name, TypeAdapter(value_type))

    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """The block's changes stand together or not at all; inside another, it joins it."""

    @abc.abstractmethod
    def publish(self, event: Event) -> None:
        """Publish ``event`` with the transaction under way (see the subclasses)."""

    @abc.abstractmethod
    def _read(self, table: str, key: str) -> str | None: ...

    @abc.abstractmethod
    def _keys(self, table: str) -> list[str]: ...

    @abc.abstractmethod
    def _write(self, table: str, key: str, value: str | None) -> None: ...


def transactional(method: c.Callable[P, R]) -> c.Callable[P, R]:
    """Run a module's (sync) method in a transaction of its ``store``.

    The method's first argument is the module object, with a ``store``
    attribute. The sync actions and handlers of the shop's modules are
    such methods. An async handler opens ``with self.store.transaction():``
    itself, after its awaits: an await inside a transaction would hold the
    store's SQLite write lock while other handlers wait for it.
    """
    if inspect.iscoroutinefunction(method):
        raise TypeError(
            f"@transactional is for sync methods; in {method.__qualname__}, do the awaits "
            "first and open `with self.store.transaction():` around the writes after them"
        )

    @functools.wraps(method)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        with args[0].store.transaction():  # type: ignore[attr-defined]
            return method(*args, **kwargs)

    return run


# -- in memory ---------------------------------------------------------------------------


@dataclasses.dataclass
class _Pending:
    """A memory transaction under way: the tables as they were, the events to publish."""

    before: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    events: list[Event] = dataclasses.field(default_factory=list)


class MemoryStore(Store):
    """Tables in a dict. A transaction that raises puts back the tables it changed, as
    they were; the events it published go to ``publish`` once it ended without raising
    (as a service's go to its outbox with its commit), and never if it raised.

    ``publish`` is the function the module publishes with in this process (the
    shop's, which hands the event to the bus).
    """

    def __init__(self, publish: c.Callable[[Event], object] | None = None) -> None:
        self._publish = publish
        self._tables: dict[str, dict[str, str]] = {}
        self._pending: contextvars.ContextVar[_Pending | None] = contextvars.ContextVar(
            f"pending-{id(self)}", default=None
        )

    @contextlib.contextmanager
    def transaction(self) -> c.Iterator[None]:
        if self._pending.get() is not None:
            yield  # joined: the outer transaction commits or undoes
            return
        pending = _Pending()
        token = self._pending.set(pending)
        try:
            yield
        except BaseException:
            self._tables.update(pending.before)  # each table changed, as it was (its order too)
            raise
        finally:
            self._pending.reset(token)
        for event in pending.events:  # committed; the handlers they reach run outside it
            self._send(event)

    def publish(self, event: Event) -> None:
        pending = self._pending.get()
        if pending is None:
            self._send(event)
        else:
            pending.events.append(event)

    def _send(self, event: Event) -> None:
        if self._publish is None:
            raise RuntimeError(f"{self!r} was given no function to publish with")
        self._publish(event)

    def _read(self, table: str, key: str) -> str | None:
        return self._tables.get(table, {}).get(key)

    def _keys(self, table: str) -> list[str]:
        return list(self._tables.get(table, {}))

    def _write(self, table: str, key: str, value: str | None) -> None:
        pending = self._pending.get()
        if pending is None:
            raise RuntimeError(f"a write to {table} outside a transaction: wrap it in one")
        rows = self._tables.setdefault(table, {})
        pending.before.setdefault(table, dict(rows))  # copied at its first write
        if value is None:
            rows.pop(key, None)
        else:
            rows[key] = value

    def __repr__(self) -> str:
        return f"<MemoryStore tables={sorted(self._tables)}>"


# -- in a service's SQLite file ------------------------------------------------------------


class SQLiteStore(Store):
    """Tables as rows of the service's SQLite file at ``path``, with its inbox and outbox.

    A transaction inside one of the service's idempotent handlers is the
    inbox's (the record commits with the writes); anywhere else, a write
    transaction of its own, after whose commit ``on_commit`` is called (the
    services demo waits there for what an action started). ``publish`` adds
    the event to the outbox in the transaction under way, for the service's
    relay to send once it commits.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float = 10.0,
        on_commit: c.Callable[[], object] | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self._on_commit = on_commit
        self.inbox = SQLiteInbox(self.path, timeout=timeout)
        self.outbox = SQLiteOutbox(self.path, timeout=timeout)
        self._timeout = timeout
        self._db: contextvars.ContextVar[sqlite3.Connection | None] = contextvars.ContextVar(
            f"db-{self.path}", default=None
        )
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS shop_state (tbl TEXT NOT NULL, key TEXT NOT NULL, "
                "value TEXT NOT NULL, PRIMARY KEY (tbl, key))"
            )

    @contextlib.contextmanager
    def transaction(self) -> c.Iterator[None]:
        if self._db.get() is not None:
            yield  # joined
            return
        if self.inbox.handling:  # an idempotent handler of this service: its record too
            with self.inbox.transaction() as db:
                token = self._db.set(db)
                try:
                    yield
                finally:
                    self._db.reset(token)
            return
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            token = self._db.set(db)
            try:
                yield
            except BaseException:
                if db.in_transaction:  # (SQLite may have rolled back already)
                    db.execute("ROLLBACK")
                raise
            finally:
                self._db.reset(token)
            db.execute("COMMIT")
        if self._on_commit is not None:
            self._on_commit()

    def publish(self, event: Event) -> None:
        db = self._db.get()
        if db is None:
            raise RuntimeError(f"publishing {event.event_type} outside a transaction of {self!r}")
        self.outbox.add(db, event)

    def _read(self, table: str, key: str) -> str | None:
        with self._reading() as db:
            row = db.execute(
                "SELECT value FROM shop_state WHERE tbl = ? AND key = ?", (table, key)
            ).fetchone()
        return None if row is None else str(row[0])

    def _keys(self, table: str) -> list[str]:
        with self._reading() as db:
            rows = db.execute(
                "SELECT key FROM shop_state WHERE tbl = ? ORDER BY rowid", (table,)
            ).fetchall()
        return [str(row[0]) for row in rows]

    def _write(self, table: str, key: str, value: str | None) -> None:
        db = self._db.get()
        if db is None:
            raise RuntimeError(f"a write to {table} outside a transaction: wrap it in one")
        if value is None:
            db.execute("DELETE FROM shop_state WHERE tbl = ? AND key = ?", (table, key))
        else:  # an update keeps the row (and its place in the order of keys)
            db.execute(
                "INSERT INTO shop_state (tbl, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT (tbl, key) DO UPDATE SET value = excluded.value",
                (table, key, value),
            )

    @contextlib.contextmanager
    def _reading(self) -> c.Iterator[sqlite3.Connection]:
        db = self._db.get()
        if db is not None:
            yield db  # inside the transaction: read what it wrote
            return
        with self._connect() as db:
            yield db

    @contextlib.contextmanager
    def _connect(self) -> c.Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
            yield db
        finally:
            db.close()

    def close(self) -> None:
        self.inbox.close()
        self.outbox.close()

    def __repr__(self) -> str:
        return f"<SQLiteStore {self.path!r}>"
