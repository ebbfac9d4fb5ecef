"""SQLiteDeadLetterStore at its edges: every letter is stored, every row is read, every file
is either a store or refused untouched, and open errors name the file and the cause."""

from __future__ import annotations

import collections.abc as c
import contextlib
import dataclasses
import json
import math
import os
import pathlib
import sqlite3
import typing as t
import uuid
import warnings
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import field_serializer

from eventbus import (
    DeadLetter,
    Event,
    EventBus,
    RedriveError,
    SQLiteDeadLetterStore,
    UndefinedEvent,
)
from eventbus.dead_letters import (
    DeadLetterStoreError,
    DeadLetterStoreFullError,
    SQLiteDeadLetterStoreError,
)
from eventbus.dead_letters import rows as rows_module
from eventbus.dead_letters import sqlite as sqlite_module
from tests.permissions import unprivileged

T0 = datetime(2024, 5, 17, 9, 30, 15, 123456, tzinfo=UTC)
APPLICATION_ID = 0x4542444C


class Parcel(Event):
    event_type = "tests.store_edges.parcel"

    parcel: str
    weight: float = 1.0


class Loose(Event):
    """Takes anything, including what does not serialize."""

    event_type = "tests.store_edges.loose"

    data: t.Any = None


class Doubled(Event):
    """Serializes ``amount`` doubled: its JSON validates back into another event."""

    event_type = "tests.store_edges.doubled"

    amount: int

    @field_serializer("amount")
    def _double(self, amount: int) -> int:
        return amount * 2


class Hidden(Event):
    """Serializes ``amount`` as text its own field refuses: its JSON does not validate back."""

    event_type = "tests.store_edges.hidden"

    amount: int

    @field_serializer("amount")
    def _hide(self, amount: int) -> str:
        return "n/a"


class Exploding(Event):
    """Serializing it raises."""

    event_type = "tests.store_edges.exploding"

    amount: int

    @field_serializer("amount")
    def _explode(self, amount: int) -> int:
        raise RuntimeError("the serializer gave up")


class Blob(Event):
    event_type = "tests.store_edges.blob"

    data: bytes


def _letter(event: Event | int = 0, **changes: t.Any) -> DeadLetter:
    if isinstance(event, int):
        event = Parcel(parcel=f"P-{event}", weight=1.5 + event)
    letter = DeadLetter.from_exception(
        event, "tests.store_edges.ship", 2, ConnectionError("carrier down"), failed_at=T0
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


def _not_redrivable(letter: DeadLetter, *words: str) -> UndefinedEvent:
    """The letter's event, checked to be marked not redrivable with ``words`` in its reason."""
    event = letter.event
    assert isinstance(event, UndefinedEvent), event
    assert not event.redrivable
    for word in words:
        assert word in event.reason, event.reason
    return event


def _same(a: object, b: object) -> bool:
    """Equality, with NaN equal to NaN (the test's own, not the store's)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, Event) and isinstance(b, Event):
        return type(a) is type(b) and _same(a.__dict__, b.__dict__)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return a == b


def _escaped(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode()


# -- 1. a letter is always stored -------------------------------------------------------------


def test_an_event_that_does_not_serialize_is_stored_marked_not_redrivable(
    store: SQLiteDeadLetterStore, path: pathlib.Path
) -> None:
    class Opaque:
        def __repr__(self) -> str:
            return "<Opaque thing>"

    unserializable = [_letter(Loose(data=Opaque())), _letter(Exploding(amount=3))]
    for letter in unserializable:
        store.add(letter)
    with SQLiteDeadLetterStore(path) as reopened:
        read = list(reopened)
    assert len(read) == 2
    for stored, letter in zip(read, unserializable, strict=True):
        event = _not_redrivable(stored, "cannot be redriven", "does not serialize to JSON")
        assert stored.event_type == event.stored_type == letter.event_type
        assert event.event_id == letter.event.event_id  # the metadata is kept exactly
        assert event.occurred_at == letter.event.occurred_at
        assert json.loads(event.payload)["event_id"] == str(letter.event.event_id)
        assert dataclasses.replace(stored, event=letter.event) == letter
    assert "Opaque thing" in _not_redrivable(read[0]).payload  # the best that can be kept
    assert "the serializer gave up" in _not_redrivable(read[1]).reason
    with pytest.raises(RedriveError):
        EventBus().redrive(read[0])


def test_an_event_nested_past_the_serializers_depth_is_stored(
    store: SQLiteDeadLetterStore,
) -> None:
    nested: list[t.Any] = []
    for _ in range(400):
        nested = [nested]
    letter = _letter(Loose.model_construct(data=nested))  # whether or not Loose would accept it
    store.add(letter)
    [stored] = store
    event = _not_redrivable(stored, "cannot be redriven")
    assert event.event_id == letter.event.event_id
    json.loads(event.payload)  # JSON, whatever could be kept


def test_json_that_validates_back_into_another_event_is_stored_marked(
    store: SQLiteDeadLetterStore,
) -> None:
    doubled, hidden = _letter(Doubled(amount=2)), _letter(Hidden(amount=2))
    store.add(doubled)
    store.add(hidden)
    stored_doubled = store.get(doubled.id)
    event = _not_redrivable(stored_doubled, "validates back into a different", "changed: amount")
    assert json.loads(event.payload)["amount"] == 4  # what the event serialized to
    _not_redrivable(store.get(hidden.id), "does not validate back into Hidden", "amount")


@pytest.mark.parametrize(
    "data",
    [{"at": T0, "ids": (1, 2)}, T0, uuid.UUID(int=7), (1, "a")],
    ids=["dict-of-datetime-and-tuple", "datetime", "uuid", "tuple"],
)
def test_values_under_any_come_back_as_json_gives_them_and_redrive(
    store: SQLiteDeadLetterStore, data: object
) -> None:
    letter = _letter(Loose(data=data))
    store.add(letter)
    [stored] = store
    assert type(stored.event) is Loose  # not an UndefinedEvent: it can be redriven
    assert stored.event.data == json.loads(Loose(data=data).model_dump_json())["data"]
    bus = EventBus(dead_letters=store)
    seen: list[object] = []
    bus.subscribe(Loose, name=stored.handler)(lambda event: seen.append(event.data))
    assert bus.redrive(stored).ok
    assert seen == [stored.event.data]
    assert len(store) == 0


def test_bytes_that_are_not_utf8_are_stored(store: SQLiteDeadLetterStore) -> None:
    letter = _letter(Blob(data=b"\xff\x00\xfe"))
    store.add(letter)  # raised UnicodeDecodeError-like errors before
    [stored] = store
    if isinstance(stored.event, UndefinedEvent):  # unless Event serializes bytes as base64
        _not_redrivable(stored, "cannot be redriven")
    else:
        assert stored == letter


def test_nan_and_infinities_round_trip_and_stay_redrivable(store: SQLiteDeadLetterStore) -> None:
    letters = [_letter(Parcel(parcel="P", weight=x)) for x in (math.nan, math.inf, -math.inf)]
    letters.append(_letter(Loose(data={"a": [math.nan, {"b": -0.0}]})))
    for letter in letters:
        store.add(letter)
    for stored, letter in zip(store, letters, strict=True):
        assert type(stored.event) is type(letter.event)
        assert _same(stored.event, letter.event)


def test_text_that_utf8_cannot_encode_is_stored_backslash_escaped(
    store: SQLiteDeadLetterStore,
) -> None:
    odd = os.fsdecode(b"caf\xff")  # "caf\udcff": a lone surrogate
    letter = _letter(
        error_message=f"cannot open {odd}",
        traceback=f"Traceback ...\nOSError: {odd}\n",
        host=odd,
        error_type=f"errors.{odd}",
    )
    store.add(letter)
    stored = store.get(letter.id)
    assert stored.error_message == r"cannot open caf\udcff" == _escaped(letter.error_message)
    assert stored.traceback == _escaped(letter.traceback)
    assert stored.host == r"caf\udcff"
    assert stored.error_type == r"errors.caf\udcff"
    assert stored.event == letter.event  # the event is untouched, still redrivable

    misnamed = _letter(1, handler=f"tests.{odd}")  # redrive would look up the escaped name
    store.add(misnamed)
    stored = store.get(misnamed.id)
    assert stored.handler == r"tests.caf\udcff"
    _not_redrivable(stored, "handler name", "lone surrogates")


def test_a_not_redrivable_letter_keeps_its_mark_in_another_store(
    store: SQLiteDeadLetterStore, tmp_path: pathlib.Path
) -> None:
    store.add(_letter(Doubled(amount=5)))
    [stored] = store
    with SQLiteDeadLetterStore(tmp_path / "other.db") as other:
        other.add(stored)
        [moved] = other
    assert moved == stored
    _not_redrivable(moved, "validates back into a different")


# -- 8. every valid event round-trips, or is stored marked ------------------------------------

_TEXT = st.text(st.characters(exclude_categories=()), max_size=12)  # surrogates, controls
_FLOATS = st.floats(allow_nan=True, allow_infinity=True)
_LEAVES = st.none() | st.booleans() | st.integers() | _FLOATS | _TEXT
_JSONISH = st.recursive(
    _LEAVES,
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(_TEXT, children, max_size=4)
    ),
    max_leaves=12,
)


def _nested(depth: int) -> t.Any:
    value: t.Any = "bottom"
    for _ in range(depth):
        value = {"down": [value]}
    return value


_DATA = (
    _JSONISH
    | st.integers(min_value=0, max_value=300).map(_nested)
    | st.binary(max_size=8)
    | st.datetimes(timezones=st.none() | st.timezones())
    | st.uuids()
)


class Anything(Event):
    event_type = "tests.store_edges.anything"

    text: str
    number: float
    data: t.Any
    blob: bytes
    when: datetime
    ident: uuid.UUID
    items: list[t.Any]


def test_every_event_comes_back_equal_or_marked_never_lost(path: pathlib.Path) -> None:
    with SQLiteDeadLetterStore(path) as store:

        @settings(max_examples=150)
        @given(
            st.builds(
                Anything,
                text=_TEXT,
                number=_FLOATS,
                data=_DATA,
                blob=st.binary(max_size=8),
                when=st.datetimes(timezones=st.none() | st.timezones()),
                ident=st.uuids(),
                items=st.lists(_DATA, max_size=3),
            ),
            _TEXT,
        )
        def check(event: Anything, message: str) -> None:
            letter = _letter(event, error_message=message)
            count = len(store)
            store.add(letter)
            assert len(store) == count + 1
            stored = store.get(letter.id)
            assert stored.error_message == _escaped(message)
            assert dataclasses.replace(stored, event=event, error_message=message) == letter
            if isinstance(stored.event, UndefinedEvent):
                _not_redrivable(stored, "cannot be redriven")
                assert stored.event.event_id == event.event_id
            else:
                assert type(stored.event) is Anything
                # Equal, but for values under Any, which come back as JSON gives them.
                as_json = Anything.model_validate_json(event.model_dump_json())
                assert _same(stored.event, as_json)
                for name in ("text", "number", "blob", "ident"):
                    assert _same(getattr(stored.event, name), getattr(event, name))
                # The same instant; an ambiguous local time (a DST fold) with a ZoneInfo
                # comes back with its fixed offset, and Python never calls those equal.
                when, back = event.when, stored.event.when
                assert (back.tzinfo is None) == (when.tzinfo is None)
                if when.tzinfo is not None:
                    when, back = when.astimezone(UTC), back.astimezone(UTC)
                assert back == when

        check()


class Typed(Event):
    event_type = "tests.store_edges.typed"

    text: str
    number: float
    when: datetime
    ident: uuid.UUID
    tags: tuple[str, ...]
    scores: dict[str, float]
    grid: list[list[int]]


_PLAIN_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)  # controls too
# Offsets of whole minutes: JSON (ISO 8601) drops the seconds of historic offsets such as
# Asia/Aden's +02:59:54 in 1950; events write those in UTC (tests/test_event_edges.py).
_MINUTES = st.integers(min_value=-1439, max_value=1439).map(lambda m: timedelta(minutes=m))
_OFFSETS = st.none() | st.just(UTC) | _MINUTES.map(timezone)


def test_events_of_json_types_come_back_equal_and_redrivable(path: pathlib.Path) -> None:
    with SQLiteDeadLetterStore(path) as store:

        @given(
            st.builds(
                Typed,
                text=_PLAIN_TEXT,
                number=_FLOATS,
                when=st.datetimes(timezones=_OFFSETS),
                ident=st.uuids(),
                tags=st.lists(_PLAIN_TEXT, max_size=3).map(tuple),
                scores=st.dictionaries(_PLAIN_TEXT, _FLOATS, max_size=3),
                grid=st.lists(st.lists(st.integers(), max_size=3), max_size=3),
            )
        )
        def check(event: Typed) -> None:
            letter = _letter(event)
            store.add(letter)
            stored = store.get(letter.id)
            assert type(stored.event) is Typed, stored.event
            assert _same(stored.event, event)

        check()


# -- 2. one unreadable row costs that row alone --------------------------------------------


def test_unreadable_rows_come_back_as_letters_and_can_be_purged(
    store: SQLiteDeadLetterStore, path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "_PAGE", 2)  # bad rows on every page
    good = [_letter(n) for n in range(3)]
    bad = [_letter(10 + n) for n in range(6)]
    for one, other in zip(good, bad[:3], strict=True):
        store.add(one)
        store.add(other)
    for letter in bad[3:]:
        store.add(letter)
    damage = [
        ("error_message = CAST(X'4f6f7073ff' AS TEXT)", "error_message is not valid UTF-8"),
        ("failed_at = 'yesterday'", "failed_at 'yesterday' is not an ISO 8601 time"),
        ("id = 'letter-1'", "id 'letter-1' is not a UUID"),
        ("attempts = 'many'", "attempts 'many' is not an integer"),
        ("event = X'00ff'", "event is a BLOB, not text"),
        ("id = CAST(X'ff01' AS TEXT), host = CAST(X'c3' AS TEXT)", "host is not valid UTF-8"),
    ]
    with _raw(path) as db:
        for letter, (change, _) in zip(bad, damage, strict=True):
            db.execute(f"UPDATE dead_letters SET {change} WHERE id = ?", (str(letter.id),))

    read = list(store)  # neither stops nor skips
    assert len(read) == len(store) == 9
    assert [letter for letter in read if not isinstance(letter.event, UndefinedEvent)] == good
    unreadable = [letter for letter in read if isinstance(letter.event, UndefinedEvent)]
    assert len(unreadable) == 6
    by_cause = {}
    for letter in unreadable:
        event = _not_redrivable(letter, "row unreadable: ")
        [cause] = [cause for _, cause in damage if cause in event.reason]
        by_cause[cause] = letter
        assert letter.event_type == "tests.store_edges.parcel"
    assert len(by_cause) == 6

    assert by_cause[damage[0][1]].error_message == "Oops\ufffd"  # decoded with U+FFFD
    assert by_cause[damage[0][1]].event.event_id == bad[0].event.event_id  # metadata kept
    assert by_cause[damage[1][1]].failed_at == datetime(1970, 1, 1, tzinfo=UTC)
    odd = by_cause[damage[2][1]]
    assert odd.id == uuid.uuid5(rows_module._ODD_IDS, "letter-1")
    assert by_cause[damage[3][1]].attempts == 0
    garbled = by_cause[damage[5][1]]
    assert garbled.id == uuid.uuid5(rows_module._ODD_IDS, "\ufffd\x01")
    assert "is not a UUID" in _not_redrivable(garbled).reason
    for letter in unreadable:
        assert store.get(letter.id) == letter
    for letter in unreadable:  # as `purge <id>` does
        store.remove(letter)
        with pytest.raises(KeyError):
            store.get(letter.id)
    assert list(store) == good


def test_an_id_written_in_another_spelling_is_found(
    store: SQLiteDeadLetterStore, path: pathlib.Path
) -> None:
    letter = _letter()
    store.add(letter)
    with _raw(path) as db:
        db.execute("UPDATE dead_letters SET id = upper(id)")
    assert store.get(letter.id) == letter  # a UUID all the same: the letter is readable
    store.remove(letter)
    assert len(store) == 0


# -- 3. our stores are identified; other files are refused, untouched -----------------------


def _files(directory: pathlib.Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _users_db(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    db.execute("INSERT INTO users (name) VALUES ('ada')")


def _users_db_v1(db: sqlite3.Connection) -> None:
    _users_db(db)
    db.execute("PRAGMA user_version = 1")


def _geopackage(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA application_id = 1196444487")  # 0x47504B47, "GPKG"


def _own_dead_letters(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE dead_letters (id TEXT, body TEXT)")


FOREIGN: dict[str, tuple[c.Callable[[sqlite3.Connection], None], str]] = {
    "another app at user_version 1": (_users_db_v1, "tables: users"),
    "another app at user_version 0": (_users_db, "tables: users"),
    "another application_id": (_geopackage, "application_id is 0x47504b47"),
    "a dead_letters table of its own": (_own_dead_letters, "no dead-letter table"),
}


@pytest.mark.parametrize("kind", FOREIGN)
@pytest.mark.parametrize("create", [True, False])
def test_another_applications_file_is_refused_and_left_unchanged(
    tmp_path: pathlib.Path, kind: str, create: bool
) -> None:
    build, why = FOREIGN[kind]
    path = tmp_path / "app.db"
    with _raw(path) as db:
        build(db)
    before = _files(tmp_path)
    with pytest.raises(SQLiteDeadLetterStoreError, match="is not a dead-letter store") as raised:
        SQLiteDeadLetterStore(path, create=create)
    assert isinstance(raised.value, sqlite3.DatabaseError)  # as the docs promise
    assert isinstance(raised.value, DeadLetterStoreError)
    assert str(path) in str(raised.value)
    assert why in str(raised.value)
    assert _files(tmp_path) == before  # not a byte changed, no -wal or -shm left


def test_an_empty_file_is_made_a_store(path: pathlib.Path) -> None:
    path.touch()
    with SQLiteDeadLetterStore(path) as store:
        store.add(_letter())
        assert len(store) == 1
    with _raw(path) as db:
        assert db.execute("PRAGMA application_id").fetchone() == (APPLICATION_ID,)


def _v1_store(path: pathlib.Path, letters: c.Sequence[DeadLetter]) -> None:
    """A store as eventbus wrote it at schema version 1: no application_id, no mark column."""
    columns = sqlite_module._COLUMNS.replace(", not_redrivable", "")
    with _raw(path) as db:
        db.execute("PRAGMA journal_mode = WAL")
        sqlite_module._create_v1(db)
        db.execute("PRAGMA user_version = 1")
        for letter in letters:
            row = rows_module.to_row(letter, 2**20, "")[:12]
            db.execute(f"INSERT INTO dead_letters ({columns}) VALUES ({', '.join('?' * 12)})", row)


def test_a_version_1_store_is_accepted_and_upgraded(path: pathlib.Path) -> None:
    letters = [_letter(n) for n in range(3)]
    _v1_store(path, letters)
    with SQLiteDeadLetterStore(path, create=False) as store:
        assert list(store) == letters
        assert all(type(letter.event) is Parcel for letter in store)
        store.add(_letter(Doubled(amount=1)))
    with _raw(path) as db:
        assert db.execute("PRAGMA application_id").fetchone() == (APPLICATION_ID,)
        assert db.execute("PRAGMA user_version").fetchone() == (2,)
        assert db.execute("SELECT count(not_redrivable) FROM dead_letters").fetchone() == (1,)


# -- 4. open errors name the file and the cause ----------------------------------------------


def test_a_directory_is_refused_naming_it(tmp_path: pathlib.Path) -> None:
    for create in (True, False):
        with pytest.raises(SQLiteDeadLetterStoreError, match="is a directory") as raised:
            SQLiteDeadLetterStore(tmp_path, create=create)
        assert str(tmp_path) in str(raised.value)
        assert "unable to open database file" not in str(raised.value)


def test_a_missing_or_unusable_directory_is_refused_at_once(tmp_path: pathlib.Path) -> None:
    with pytest.raises(SQLiteDeadLetterStoreError, match="does not exist") as raised:
        SQLiteDeadLetterStore(tmp_path / "typo" / "dlq.db")
    assert str(tmp_path / "typo") in str(raised.value)
    (tmp_path / "file").write_text("")
    with pytest.raises(SQLiteDeadLetterStoreError, match="is not a directory"):
        SQLiteDeadLetterStore(tmp_path / "file" / "dlq.db")
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_a_damaged_file_raises_a_store_error_naming_it(path: pathlib.Path) -> None:
    with SQLiteDeadLetterStore(path) as store:
        for n in range(300):
            store.add(_letter(Parcel(parcel="x" * 500 + str(n))))
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8192] = b"\xa5" * 8192
    path.write_bytes(bytes(data))
    with (
        pytest.raises(SQLiteDeadLetterStoreError, match="is damaged") as raised,
        SQLiteDeadLetterStore(path) as store,
    ):
        list(store)  # the file opens (its first page is intact), its rows do not read
    assert isinstance(raised.value, sqlite3.DatabaseError)
    assert str(path) in str(raised.value)
    assert "malformed" in str(raised.value)


def _read_only_checks(path: pathlib.Path, letters: list[DeadLetter]) -> None:
    for create in (True, False):
        with SQLiteDeadLetterStore(path, create=create) as store:
            assert list(store) == letters
            assert len(store) == len(letters)
            assert store.get(letters[0].id) == letters[0]
            with pytest.raises(DeadLetterStoreError, match="read-only") as raised:
                store.add(_letter(99))
            assert str(path) in str(raised.value)
            assert isinstance(raised.value, sqlite3.DatabaseError)
            with pytest.raises(DeadLetterStoreError, match="read-only"):
                store.remove(letters[0])
            with pytest.raises(DeadLetterStoreError, match="read-only"):
                store.clear()
            assert len(store) == len(letters)


def _three_letters(directory: pathlib.Path) -> tuple[pathlib.Path, list[DeadLetter]]:
    """A store of three letters, as this user makes it, in ``directory``."""
    path = directory / "dlq.db"
    letters = [_letter(n) for n in range(3)]
    with SQLiteDeadLetterStore(path) as store:
        for letter in letters:
            store.add(letter)
    return path, letters


def test_a_read_only_file_opens_for_reading_and_refuses_writes() -> None:
    def scenario(directory: pathlib.Path) -> None:
        path, letters = _three_letters(directory)
        path.chmod(0o444)
        _read_only_checks(path, letters)

        old = directory / "old.db"  # a version 1 store cannot be upgraded: read as it is
        _v1_store(old, letters)
        old.chmod(0o444)
        with SQLiteDeadLetterStore(old, create=False) as store:
            assert list(store) == letters

    unprivileged(scenario)


def test_clearing_an_empty_read_only_store_is_no_error() -> None:
    def scenario(directory: pathlib.Path) -> None:
        path, _ = _three_letters(directory)
        with SQLiteDeadLetterStore(path) as store:
            store.clear()
        path.chmod(0o444)
        with SQLiteDeadLetterStore(path) as store:
            store.clear()  # nothing to forget: nothing to write
            assert len(store) == 0

    unprivileged(scenario)


def test_a_store_in_a_read_only_directory_opens_for_reading() -> None:
    def scenario(directory: pathlib.Path) -> None:
        path, letters = _three_letters(directory)
        assert sorted(p.name for p in directory.iterdir()) == ["dlq.db"]
        directory.chmod(0o555)  # no room for SQLite's -shm and -wal files
        _read_only_checks(path, letters)
        with pytest.raises(DeadLetterStoreError, match="is not writable") as raised:
            SQLiteDeadLetterStore(directory / "new.db")  # refused at once, not at the first add
        assert str(directory) in str(raised.value)

    unprivileged(scenario)


def test_an_unreadable_file_is_refused_naming_it() -> None:
    def scenario(directory: pathlib.Path) -> None:
        path = directory / "dlq.db"
        with SQLiteDeadLetterStore(path) as store:
            store.add(_letter())
        path.chmod(0o000)
        with pytest.raises(DeadLetterStoreError, match="not readable") as raised:
            SQLiteDeadLetterStore(path)
        assert str(path) in str(raised.value)
        assert isinstance(raised.value, sqlite3.DatabaseError)

    unprivileged(scenario)


# -- 5. no file before the first write -----------------------------------------------------


def test_no_file_is_created_before_the_first_add(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "app.db"
    store = SQLiteDeadLetterStore(path)  # as an app module does when it is imported
    try:
        assert len(store) == 0
        assert list(store) == []
        with pytest.raises(KeyError):
            store.get(uuid.uuid4())
        with pytest.raises(KeyError):
            store.remove(_letter())
        assert list(tmp_path.iterdir()) == []
        letter = _letter()
        store.add(letter)
        assert path.exists()
        assert list(store) == [letter]
    finally:
        store.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]


def test_a_store_made_before_its_file_sees_the_letters_another_adds(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "shared.db"
    with SQLiteDeadLetterStore(path) as early:
        assert len(early) == 0
        with SQLiteDeadLetterStore(path) as writer:
            letter = _letter()
            writer.add(letter)
        assert list(early) == [letter]
        assert early.get(letter.id) == letter


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_store_without_its_file_yet_works_across_fork(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "forked.db"
    with SQLiteDeadLetterStore(path) as store:
        in_child = _letter(2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads, 3.12+
            pid = os.fork()
        if pid == 0:
            status = 1
            try:
                store.add(in_child)
                store.close()
                status = 0
            finally:
                os._exit(status)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert list(store) == [in_child]


# -- 6. ":memory:" ---------------------------------------------------------------------------


def test_memory_is_a_private_in_memory_store(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with SQLiteDeadLetterStore(":memory:") as one, SQLiteDeadLetterStore(":memory:") as two:
        letter = _letter()
        one.add(letter)
        assert list(one) == [letter]
        assert one.get(letter.id) == letter
        assert len(two) == 0  # each store its own database
        one.remove(letter)
        assert len(one) == 0
        marked = _letter(Doubled(amount=1))
        two.add(marked)
        _not_redrivable(next(iter(two)), "validates back into a different")
    assert list(tmp_path.iterdir()) == []  # no file named ":memory:"
    with pytest.raises(ValueError, match="create=False"):
        SQLiteDeadLetterStore(":memory:", create=False)


# -- 7. the size guard -------------------------------------------------------------------------


def test_an_event_over_max_event_bytes_is_kept_in_part_and_marked(tmp_path: pathlib.Path) -> None:
    big = _letter(Loose(data=list(range(2_000))))
    small = _letter(1)
    with SQLiteDeadLetterStore(tmp_path / "small.db", max_event_bytes=2048) as store:
        assert store.max_event_bytes == 2048
        store.add(big)
        store.add(small)
        stored, kept = store
    assert kept == small
    size = len(big.event.model_dump_json())
    event = _not_redrivable(stored, f"{size:,} bytes", "max_event_bytes of 2,048", "(or None)")
    assert len(event.payload.encode()) <= 2048
    data = json.loads(event.payload)
    assert data["event_id"] == str(big.event.event_id)
    assert big.event.model_dump_json().startswith(data["eventbus.truncated_json"])
    assert event.event_id == big.event.event_id
    assert dataclasses.replace(stored, event=big.event) == big


def test_the_default_limit_is_16_mib_and_none_lifts_it(tmp_path: pathlib.Path) -> None:
    letter = _letter(Parcel(parcel="x" * (16 * 2**20)))
    with SQLiteDeadLetterStore(tmp_path / "default.db") as store:
        assert store.max_event_bytes == 16 * 2**20
        store.add(letter)
        [stored] = store
    _not_redrivable(stored, "max_event_bytes of 16,777,216")
    with SQLiteDeadLetterStore(tmp_path / "unlimited.db", max_event_bytes=None) as store:
        store.add(letter)
        [stored] = store
    assert stored == letter


def test_a_bad_max_event_bytes_is_refused(path: pathlib.Path) -> None:
    for bad in (0, 1023, -1, True, 1.5e6, "1MiB"):
        with pytest.raises(ValueError, match="max_event_bytes"):
            SQLiteDeadLetterStore(path, max_event_bytes=bad)  # type: ignore[arg-type]
    assert not path.exists()


# -- errors ----------------------------------------------------------------------------------------


def test_store_errors_share_one_base() -> None:
    assert issubclass(SQLiteDeadLetterStoreError, DeadLetterStoreError)
    assert issubclass(SQLiteDeadLetterStoreError, sqlite3.DatabaseError)
    assert issubclass(DeadLetterStoreFullError, DeadLetterStoreError)
    assert sqlite_module.APPLICATION_ID == APPLICATION_ID


def test_a_relative_path_is_resolved_when_the_store_is_made(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(home)
    store = SQLiteDeadLetterStore("dlq.db")  # no file yet: it is made at the first add
    assert store.path == home / "dlq.db"
    monkeypatch.chdir(elsewhere)  # a daemon, a test, a library changing directory
    with store:
        store.add(_letter())
    assert (home / "dlq.db").exists()
    assert not (elsewhere / "dlq.db").exists()
    with SQLiteDeadLetterStore(home / "dlq.db", create=False) as reopened:
        assert len(reopened) == 1


def test_a_store_with_a_damaged_header_is_called_damaged_not_foreign(path: pathlib.Path) -> None:
    with SQLiteDeadLetterStore(path) as store:
        store.add(_letter())
    data = bytearray(path.read_bytes())
    data[16:100] = b"\xff" * 84  # page size, format numbers: the header after the magic
    path.write_bytes(bytes(data))
    with pytest.raises(SQLiteDeadLetterStoreError) as raised:
        SQLiteDeadLetterStore(path)
    message = str(raised.value)
    assert "is damaged" in message
    assert ".recover" in message
    assert "of its own" not in message  # the advice for another application's file
    path.write_bytes(b"name,email\nada,ada@example.com\n")  # not SQLite at all: foreign
    with pytest.raises(SQLiteDeadLetterStoreError, match="not a dead-letter store"):
        SQLiteDeadLetterStore(path)
