"""SQLiteDeadLetterStore: the protocol, durability, threads, processes, fork, schema versions."""

from __future__ import annotations

import collections.abc as c
import contextlib
import dataclasses
import json
import os
import pathlib
import signal
import sqlite3
import subprocess
import sys
import threading
import typing as t
import uuid
import warnings
from datetime import UTC, datetime, timedelta, timezone

import pytest

from eventbus import (
    DeadLetter,
    DeadLetterStore,
    Event,
    EventBus,
    InMemoryDeadLetterStore,
    RedriveError,
    SQLiteDeadLetterStore,
    UndefinedEvent,
)
from eventbus.dead_letters import sqlite as sqlite_module
from tests import dlq_app

ROOT = pathlib.Path(__file__).resolve().parent.parent
APP = "import sys, tests.dlq_app as app; app.main(sys.argv[1:])"

T0 = datetime(2024, 5, 17, 9, 30, 15, 123456, tzinfo=UTC)


class Shipped(Event):
    event_type = "tests.sqlite.shipped"

    parcel: str
    weight: float
    tags: tuple[str, ...] = ()


def _letter(n: int = 0, **changes: t.Any) -> DeadLetter:
    letter = DeadLetter.from_exception(
        Shipped(parcel=f"P-{n}", weight=1.5 + n),
        "tests.sqlite.notify",
        1,
        ConnectionError(f"mail server down ({n})"),
        failed_at=T0 + timedelta(seconds=n),
    )
    return dataclasses.replace(letter, **changes)


@pytest.fixture
def path(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "dlq.db"


@pytest.fixture
def store(path: pathlib.Path) -> c.Iterator[SQLiteDeadLetterStore]:
    with SQLiteDeadLetterStore(path) as store:
        yield store


@contextlib.contextmanager
def _raw(path: pathlib.Path) -> c.Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection to the file (autocommit), closed on exit."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        yield db
    finally:
        db.close()


# -- the protocol, as the in-memory store implements it --------------------------------


@pytest.fixture(params=["memory", "sqlite", "redis"])
def any_store(request: pytest.FixtureRequest, path: pathlib.Path) -> c.Iterator[DeadLetterStore]:
    """Each store of eventbus in turn (Redis's on the tests' private server)."""
    if request.param == "memory":
        yield InMemoryDeadLetterStore()
    elif request.param == "sqlite":
        with SQLiteDeadLetterStore(path) as store:
            yield store
    else:
        from eventbus.redis import RedisDeadLetterStore

        with RedisDeadLetterStore(request.getfixturevalue("redis_url"), namespace="t") as redis:
            yield redis


def test_both_stores_implement_the_protocol(any_store: DeadLetterStore) -> None:
    assert isinstance(any_store, DeadLetterStore)
    assert isinstance(EventBus(dead_letters=any_store).dead_letters, type(any_store))


def test_len_and_iteration_are_oldest_first(any_store: DeadLetterStore) -> None:
    letters = [_letter(n) for n in range(5)]
    assert len(any_store) == 0
    assert list(any_store) == []
    for letter in letters:
        any_store.add(letter)
    assert len(any_store) == 5
    assert list(any_store) == letters


def test_adding_a_known_id_replaces_the_letter_in_its_place(any_store: DeadLetterStore) -> None:
    first, second, third = _letter(1), _letter(2), _letter(3)
    for letter in (first, second, third):
        any_store.add(letter)
    again = first.failed_again(2, TimeoutError("still down"), failed_at=T0 + timedelta(hours=1))
    any_store.add(again)
    assert len(any_store) == 3
    assert [letter.id for letter in any_store] == [first.id, second.id, third.id]
    stored = any_store.get(first.id)
    assert stored == again
    assert stored.attempts == 3
    assert stored.error_type == "builtins.TimeoutError"
    assert stored.first_failed_at == first.first_failed_at
    assert stored.failed_at == T0 + timedelta(hours=1)


def test_clear_forgets_every_letter_and_the_store_goes_on(any_store: DeadLetterStore) -> None:
    for n in range(3):
        any_store.add(_letter(n))
    clear = getattr(any_store, "clear")  # noqa: B009  # not in the protocol: every store has it
    clear()
    assert len(any_store) == 0
    assert list(any_store) == []
    clear()  # an empty store stays empty
    later = _letter(9)
    any_store.add(later)
    assert list(any_store) == [later]


def test_clear_on_a_store_whose_file_is_not_made_makes_none(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "never.db"
    with SQLiteDeadLetterStore(path) as store:
        store.clear()
        assert len(store) == 0
    assert not path.exists()


def test_remove_and_get_raise_key_error_when_absent(any_store: DeadLetterStore) -> None:
    kept, gone = _letter(1), _letter(2)
    any_store.add(kept)
    any_store.add(gone)
    any_store.remove(gone)
    assert list(any_store) == [kept]
    with pytest.raises(KeyError):
        any_store.remove(gone)
    with pytest.raises(KeyError):
        any_store.get(gone.id)
    with pytest.raises(KeyError):
        any_store.get(uuid.uuid4())
    assert any_store.get(kept.id) == kept


# -- SQLite: what is stored comes back --------------------------------------------------


def test_every_field_round_trips(store: SQLiteDeadLetterStore, path: pathlib.Path) -> None:
    cause = uuid.uuid4()
    event = Shipped(
        parcel="P-ü/🚚",
        weight=float("inf"),
        tags=("fragile", ""),
        correlation_id=cause,
        causation_id=cause,
        occurred_at=datetime(2024, 5, 17, 11, 0, tzinfo=timezone(timedelta(hours=2))),
    )
    letter = DeadLetter(
        event=event,
        handler="billing.Invoicer.on_shipped",
        attempts=7,
        error_type="billing.errors.LedgerLocked",
        error_message="ledger locked\nby 'someone' \"else\"",
        traceback="Traceback (most recent call last):\n  ...\nLedgerLocked\n",
        failed_at=datetime(2024, 5, 17, 12, 0, 0, 1, tzinfo=timezone(timedelta(hours=-5))),
        first_failed_at=T0,
        event_type=event.event_type,
        host="worker-7.example",
        pid=4242,
    )
    store.add(letter)
    with SQLiteDeadLetterStore(path) as reopened:  # another connection: nothing cached
        [read] = reopened
    assert read == letter
    for field in dataclasses.fields(DeadLetter):
        assert getattr(read, field.name) == getattr(letter, field.name), field.name
    assert type(read.event) is Shipped
    for moment in (read.failed_at, read.first_failed_at, read.event.occurred_at):
        assert moment.utcoffset() == timedelta(0)
    assert read.failed_at == datetime(2024, 5, 17, 17, 0, 0, 1, tzinfo=UTC)
    assert store.get(letter.id) == letter


def test_a_naive_datetime_is_taken_as_utc(store: SQLiteDeadLetterStore) -> None:
    letter = _letter(failed_at=datetime(2024, 1, 2, 3, 4, 5))
    store.add(letter)
    assert store.get(letter.id).failed_at == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_iteration_pages_and_survives_removal_while_iterating(
    store: SQLiteDeadLetterStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "_PAGE", 3)
    letters = [_letter(n) for n in range(10)]
    for letter in letters:
        store.add(letter)
    assert list(store) == letters
    seen = []
    for letter in store:  # as a redrive loop would: each letter removed once handled
        seen.append(letter)
        store.remove(letter)
    assert seen == letters
    assert len(store) == 0


def test_letters_survive_a_restart(path: pathlib.Path) -> None:
    letters = [_letter(n) for n in range(3)]
    with SQLiteDeadLetterStore(path) as store:
        for letter in letters:
            store.add(letter)
    with SQLiteDeadLetterStore(path) as store:
        assert list(store) == letters
        store.remove(letters[1])
    with SQLiteDeadLetterStore(path, create=False) as store:
        assert list(store) == [letters[0], letters[2]]


# -- SQLite with a bus ---------------------------------------------------------------------


def test_bus_stores_its_letters_and_redrive_removes_them(store: SQLiteDeadLetterStore) -> None:
    bus = EventBus(dead_letters=store)
    failures = ["smtp down", "smtp still down"]

    @bus.subscribe
    def notify(event: Shipped) -> None:
        if failures:
            raise ConnectionError(failures.pop(0))

    result = bus.publish(Shipped(parcel="P-1", weight=2.0))
    assert not result.ok
    [letter] = result.dead_letters
    assert list(store) == [letter]
    assert letter.handler.endswith("notify")

    again = bus.redrive(letter)  # fails again: the stored letter is updated, not duplicated
    assert not again.ok
    [stored] = store
    assert stored.id == letter.id
    assert stored.attempts == 2
    assert stored.error_message == "smtp still down"
    assert stored.first_failed_at == letter.first_failed_at

    assert bus.redrive(stored).ok  # fixed
    assert len(store) == 0
    assert "SQLiteDeadLetterStore" in repr(store)


# -- SQLite: opening -----------------------------------------------------------------------


def test_a_new_store_is_wal_full_versioned_and_marked(
    store: SQLiteDeadLetterStore, path: pathlib.Path
) -> None:
    assert not path.exists()  # until the first add
    store.add(_letter())
    assert path.exists()
    with _raw(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("PRAGMA user_version").fetchone() == (sqlite_module.SCHEMA_VERSION,)
        assert db.execute("PRAGMA application_id").fetchone() == (0x4542444C,)
        assert sqlite_module.SCHEMA_VERSION == 2
    with store._connection() as db:
        assert db.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
        assert db.execute("PRAGMA busy_timeout").fetchone() == (30_000,)


def test_create_false_on_a_missing_path_raises_and_creates_nothing(
    tmp_path: pathlib.Path,
) -> None:
    missing = tmp_path / "typo.db"
    with pytest.raises(FileNotFoundError, match=r"typo\.db"):
        SQLiteDeadLetterStore(missing, create=False)
    assert list(tmp_path.iterdir()) == []


def test_create_false_refuses_a_file_that_is_not_a_store(tmp_path: pathlib.Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    with pytest.raises(sqlite3.DatabaseError, match="not a dead-letter store"):
        SQLiteDeadLetterStore(empty, create=False)
    text = tmp_path / "notes.txt"
    text.write_text("not a database, " * 100)
    for create in (False, True):
        with pytest.raises(sqlite3.DatabaseError, match="not a dead-letter store"):
            SQLiteDeadLetterStore(text, create=create)
    assert text.read_text() == "not a database, " * 100


def test_a_newer_schema_version_is_refused(path: pathlib.Path) -> None:
    letter = _letter()
    with SQLiteDeadLetterStore(path) as store:
        store.add(letter)
    with _raw(path) as db:
        db.execute("PRAGMA user_version = 3")
    with pytest.raises(sqlite3.DatabaseError, match=r"version 3, newer than version 2"):
        SQLiteDeadLetterStore(path)
    with _raw(path) as db:  # refused, not altered
        assert db.execute("PRAGMA user_version").fetchone() == (3,)
        assert db.execute("SELECT id FROM dead_letters").fetchall() == [(str(letter.id),)]


def test_an_older_schema_is_migrated_one_step_at_a_time(
    path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    letter = _letter()
    with SQLiteDeadLetterStore(path) as store:
        store.add(letter)
    steps: list[int] = []

    def _add_note_v3(db: sqlite3.Connection) -> None:
        steps.append(db.execute("PRAGMA user_version").fetchone()[0])
        db.execute("ALTER TABLE dead_letters ADD COLUMN note TEXT NOT NULL DEFAULT ''")

    monkeypatch.setattr(sqlite_module, "_MIGRATIONS", [*sqlite_module._MIGRATIONS, _add_note_v3])
    monkeypatch.setattr(sqlite_module, "SCHEMA_VERSION", 3)
    with SQLiteDeadLetterStore(path) as store:
        assert list(store) == [letter]
    with SQLiteDeadLetterStore(path) as store:  # already at version 3: nothing runs
        assert len(store) == 1
    assert steps == [2]
    with _raw(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (3,)
        assert db.execute("SELECT note FROM dead_letters").fetchall() == [("",)]


class _FakeTime:
    """Stands in for the ``time`` module in sqlite.py: a clock that moves only on sleep."""

    def __init__(self, on_sleep: c.Callable[[], object]) -> None:
        self.now = 0.0
        self.pauses: list[float] = []
        self.on_sleep = on_sleep

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds
        self.on_sleep()


def test_opening_retries_while_another_connection_locks_the_new_file(
    path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _raw(path) as other:
        other.execute("BEGIN EXCLUSIVE")  # as another process creating the file would
        clock = _FakeTime(on_sleep=lambda: other.execute("COMMIT"))
        monkeypatch.setattr(sqlite_module, "time", clock)
        with SQLiteDeadLetterStore(path, timeout=0.01) as store:
            assert len(store) == 0
    assert len(clock.pauses) == 1


def test_opening_gives_up_at_the_timeout_with_the_lock_error(
    path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _raw(path) as other:
        other.execute("BEGIN EXCLUSIVE")
        clock = _FakeTime(on_sleep=lambda: None)
        monkeypatch.setattr(sqlite_module, "time", clock)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            SQLiteDeadLetterStore(path, timeout=0.01)
        other.execute("ROLLBACK")
    assert clock.pauses == [0.001, 0.002, 0.004]  # the next, 0.008, would pass the timeout
    assert not path.with_name(path.name + "-wal").exists()


def _open_at_once(path: pathlib.Path, count: int) -> list[BaseException]:
    """``count`` threads open a store on ``path`` together and add a letter; what they raised."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def open_store() -> None:
        try:
            barrier.wait(timeout=30)
            with SQLiteDeadLetterStore(path) as store:
                store.add(_letter())
        except BaseException as error:
            errors.append(error)

    openers = [threading.Thread(target=open_store) for _ in range(count)]
    for opener in openers:
        opener.start()
    for opener in openers:
        opener.join(timeout=60)
    return errors


def test_many_connections_creating_one_file_at_once_all_succeed(tmp_path: pathlib.Path) -> None:
    # SQLite does not wait with the busy handler when two connections both try
    # to switch a new file to WAL mode: one of them gets "database is locked".
    for round_ in range(10):
        path = tmp_path / f"race-{round_}.db"
        assert _open_at_once(path, 8) == []
        with SQLiteDeadLetterStore(path, create=False) as store:
            assert len(store) == 8


def test_bad_timeout_is_refused(path: pathlib.Path) -> None:
    for timeout in (-1, "30", True):
        with pytest.raises(ValueError, match="timeout"):
            SQLiteDeadLetterStore(path, timeout=timeout)  # type: ignore[arg-type]
    assert not path.exists()


def test_a_closed_store_says_so(path: pathlib.Path) -> None:
    store = SQLiteDeadLetterStore(path)
    store.close()
    store.close()  # twice is fine
    assert "closed" in repr(store)
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        len(store)
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        store.add(_letter())


# -- SQLite: events this process cannot rebuild ---------------------------------------------


def test_an_event_type_not_defined_here_comes_back_as_undefined_event(
    path: pathlib.Path,
) -> None:
    script = """
import sys
from datetime import UTC, datetime
from eventbus import DeadLetter, Event, SQLiteDeadLetterStore

class ParcelLost(Event):  # defined in this process only
    event_type = "elsewhere.parcel_lost"
    parcel: str

letter = DeadLetter.from_exception(
    ParcelLost(parcel="P-9"), "elsewhere.claims", 3, KeyError("P-9"), failed_at=datetime.now(UTC)
)
with SQLiteDeadLetterStore(sys.argv[1]) as store:
    store.add(letter)
print(letter.event.event_id)
"""
    written = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    with SQLiteDeadLetterStore(path) as store:
        [letter] = store
        assert store.get(letter.id) == letter
    event = letter.event
    assert isinstance(event, UndefinedEvent)
    assert letter.event_type == event.stored_type == "elsewhere.parcel_lost"
    assert "not defined in this process" in event.reason
    assert json.loads(event.payload)["parcel"] == "P-9"
    assert str(event.event_id) == written.stdout.strip()  # its metadata is kept
    assert letter.attempts == 3
    assert letter.error_type == "builtins.KeyError"
    with pytest.raises(RedriveError, match=r"elsewhere\.parcel_lost"):
        EventBus().redrive(letter)

    # Moved to another store, it keeps its original type and JSON.
    with SQLiteDeadLetterStore(path.with_name("moved.db")) as other:
        other.add(letter)
        assert other.get(letter.id) == letter


def test_json_that_no_longer_validates_comes_back_as_undefined_event(
    store: SQLiteDeadLetterStore, path: pathlib.Path
) -> None:
    drifted, garbled, fine = _letter(1), _letter(2), _letter(3)
    for letter in (drifted, garbled, fine):
        store.add(letter)
    with _raw(path) as db:
        db.execute(
            "UPDATE dead_letters SET event = json_set(event, '$.weight', 'heavy') WHERE id = ?",
            (str(drifted.id),),
        )
        db.execute("UPDATE dead_letters SET event = '{not json' WHERE id = ?", (str(garbled.id),))

    first, second, third = store  # iteration neither stops nor skips
    assert third == fine
    for read, original in ((first, drifted), (second, garbled)):
        assert isinstance(read.event, UndefinedEvent)
        assert read.event.stored_type == read.event_type == "tests.sqlite.shipped"
        assert "no longer validates" in read.event.reason
        assert dataclasses.replace(read, event=original.event) == original
    assert isinstance(first.event, UndefinedEvent)
    assert json.loads(first.event.payload)["weight"] == "heavy"
    assert first.event.event_id == drifted.event.event_id


# -- SQLite: threads, processes, crashes ---------------------------------------------------


def test_many_threads_adding_at_once_lose_nothing(store: SQLiteDeadLetterStore) -> None:
    threads, per_thread = 8, 25
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []
    added: list[list[DeadLetter]] = [[] for _ in range(threads)]

    def work(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            for n in range(per_thread):
                letter = _letter(index * 1000 + n)
                store.add(letter)
                added[index].append(letter)
                if n % 5 == 0:  # readers interleaved with writers
                    assert len(store) >= 1
                    assert any(True for _ in store)
        except BaseException as error:
            errors.append(error)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert errors == []
    stored = list(store)
    assert len(stored) == len(store) == threads * per_thread
    assert {letter.id for letter in stored} == {x.id for xs in added for x in xs}
    for letters in added:  # each thread's letters in the order it added them
        mine = {letter.id for letter in letters}
        assert [x.id for x in stored if x.id in mine] == [x.id for x in letters]


def test_a_letter_written_by_one_process_is_redriven_and_removed_by_another(
    path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    subprocess.run(
        [sys.executable, "-c", APP, "fail", str(path), "3"],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=True,
    )
    monkeypatch.setattr(dlq_app, "broken", False)
    monkeypatch.setattr(dlq_app, "reserved", [])
    with SQLiteDeadLetterStore(path, create=False) as store:
        letters = list(store)
        events = [letter.event for letter in letters]
        assert all(type(event) is dlq_app.OrderPlaced for event in events)
        assert [event.model_dump()["order_id"] for event in events] == [0, 1, 2]
        assert {letter.handler for letter in letters} == {"tests.dlq_app.reserve_stock"}
        assert {letter.pid for letter in letters} != {os.getpid()}
        assert {letter.error_type for letter in letters} == {"builtins.ConnectionError"}
        bus = dlq_app.make_bus(store)
        assert all(bus.redrive(letter).ok for letter in letters)
        assert dlq_app.reserved == [0, 1, 2]
    with SQLiteDeadLetterStore(path, create=False) as store:
        assert list(store) == []


def test_processes_writing_at_once_lose_nothing(path: pathlib.Path) -> None:
    # Started together on a file that does not exist yet: creation races too.
    count, per_process = 3, 40
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", APP, "fail", str(path), str(per_process)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for _ in range(count)
    ]
    for writer in writers:
        with writer:
            _, stderr = writer.communicate(timeout=60)
            assert writer.returncode == 0, stderr.decode()[-3000:]
    with SQLiteDeadLetterStore(path, create=False) as store:
        letters = list(store)
    assert len(letters) == count * per_process
    by_pid: dict[int, list[int]] = {}
    for letter in letters:
        assert isinstance(letter.event, dlq_app.OrderPlaced)
        by_pid.setdefault(letter.pid, []).append(letter.event.order_id)
    assert sorted(by_pid) == sorted(writer.pid for writer in writers)
    assert all(ids == list(range(per_process)) for ids in by_pid.values())


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_process_killed_while_writing_leaves_every_reported_letter(path: pathlib.Path) -> None:
    reported: list[uuid.UUID] = []
    with subprocess.Popen(
        [sys.executable, "-c", APP, "add-forever", str(path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as writer:
        assert writer.stdout is not None
        assert writer.stderr is not None
        while len(reported) < 50:
            line = writer.stdout.readline()
            assert line, f"the writer exited early: {writer.stderr.read()[-3000:]}"
            reported.append(uuid.UUID(line.strip()))
        os.kill(writer.pid, signal.SIGKILL)
        assert writer.wait(timeout=60) == -signal.SIGKILL
        reported += [uuid.UUID(line.strip()) for line in writer.stdout if line.strip()]
    with _raw(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    with SQLiteDeadLetterStore(path, create=False) as store:
        for letter_id in reported:
            assert store.get(letter_id).id == letter_id
        stored = [letter.id for letter in store]
    assert stored[: len(reported)] == reported  # at most the one being added when killed follows
    assert len(stored) - len(reported) <= 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_store_inherited_across_fork_opens_its_own_connection(
    store: SQLiteDeadLetterStore,
) -> None:
    before, in_child = _letter(1), _letter(2)
    store.add(before)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads, 3.12+
        pid = os.fork()
    if pid == 0:  # the child: report by exit status only, never return into pytest
        status = 1
        try:
            assert store._db is None  # the parent's connection was set aside at fork
            assert list(store) == [before]
            store.add(in_child)
            store.close()
            status = 0
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert list(store) == [before, in_child]  # the parent's connection is intact
    with store._connection() as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
