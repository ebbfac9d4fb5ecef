"""The cart example's storage: tables of copies, changed in transactions, in memory or in SQLite.

The rules every store keeps (a read is a copy, the keys keep the order they
were first written in, a transaction that raises leaves every table as it
was, a nested one joins the outer one, no write outside a transaction) run
on both stores; then what only a :class:`SQLiteStore` does: a file that
outlives the store, an outbox row that commits with the writes, and, inside
an idempotent handler of a bus whose inbox is the store's, the inbox's
transaction (the handler's writes, its events and its record stand or fall
together).
"""

from __future__ import annotations

import asyncio
import collections.abc as c
import contextlib
import dataclasses
import pathlib
import threading

import pytest
from examples.cart.storage import MemoryStore, SQLiteStore, Store, Table, transactional

from eventbus import Event, EventBus


class Boom(Exception):
    """The failure the tests raise inside transactions."""


@dataclasses.dataclass
class Item:
    name: str
    tags: list[str]


class Ping(Event):
    event_type = "tests.cart_storage.ping"

    n: int


class Pong(Event):
    event_type = "tests.cart_storage.pong"

    n: int


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> c.Iterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    sqlite = SQLiteStore(tmp_path / "module.db")
    try:
        yield sqlite
    finally:
        sqlite.close()


@pytest.fixture
def sqlite_path(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "service.db"


def numbers_of(store: Store, name: str = "numbers") -> Table[int]:
    numbers: Table[int] = store.table(name, int)
    return numbers


def put(table: Table[int], store: Store, **values: int) -> None:
    with store.transaction():
        for key, value in values.items():
            table.put(key, value)


@contextlib.contextmanager
def rolled_back(store: Store) -> c.Iterator[None]:
    """A transaction of ``store`` whose block ends by raising (the exception caught here)."""
    with contextlib.suppress(Boom), store.transaction():
        yield
        raise Boom


# -- the rules of every store -------------------------------------------------------------


def test_a_read_is_a_copy_and_only_put_changes_the_table(store: Store) -> None:
    items: Table[Item] = store.table("items", Item)
    with store.transaction():
        items.put("a", Item("mug", ["blue"]))

    every_read = [items["a"], items.get("a"), next(iter(items.values())), dict(items.items())["a"]]
    for read in every_read:
        assert isinstance(read, Item)
        read.name = "cup"
        read.tags.append("big")
    assert items["a"] == Item("mug", ["blue"])  # nothing changes behind a put
    assert items["a"] is not items["a"]

    changed = items["a"]
    changed.tags.append("big")
    with store.transaction():
        assert items["a"] == Item("mug", ["blue"])  # not even inside a transaction
        items.put("a", changed)
        assert items["a"] == Item("mug", ["blue", "big"])  # a transaction reads its writes
    assert items["a"] == Item("mug", ["blue", "big"])


def test_the_keys_keep_the_order_they_were_first_written_in(store: Store) -> None:
    numbers = numbers_of(store)
    put(numbers, store, c=3, a=1, b=2)
    assert list(numbers) == ["c", "a", "b"]

    put(numbers, store, a=10)  # an update keeps its place
    assert list(numbers.items()) == [("c", 3), ("a", 10), ("b", 2)]

    with store.transaction():
        numbers.delete("a")
    assert list(numbers) == ["c", "b"]
    assert "a" not in numbers
    assert numbers.get("a") is None
    assert numbers.get("a", 0) == 0
    with pytest.raises(KeyError, match="'a'"):
        numbers["a"]

    put(numbers, store, a=1)  # written again: last
    assert list(numbers) == ["c", "b", "a"]
    assert len(numbers) == 3


def test_tables_are_kept_by_name(store: Store) -> None:
    put(numbers_of(store), store, a=1)
    assert dict(numbers_of(store)) == {"a": 1}  # the same table, asked for again
    assert dict(numbers_of(store, "others")) == {}


def test_a_transaction_that_raises_restores_every_table(store: Store) -> None:
    numbers = numbers_of(store)
    words: Table[str] = store.table("words", str)
    put(numbers, store, a=1, b=2, c=3)
    with store.transaction():
        words.put("x", "ex")

    with rolled_back(store):
        numbers.put("a", 10)  # updated
        numbers.delete("b")  # deleted
        numbers.put("d", 4)  # added, then updated, then deleted
        numbers.put("d", 5)
        numbers.delete("d")
        numbers.put("e", 6)  # added
        words.delete("x")
        words.put("y", "why")
        assert dict(numbers) == {"a": 10, "c": 3, "e": 6}

    assert dict(numbers) == {"a": 1, "b": 2, "c": 3}
    assert list(numbers) == ["a", "b", "c"]  # in their order, "b" where it was
    assert dict(words) == {"x": "ex"}


def test_a_transaction_that_ends_keeps_every_write(store: Store) -> None:
    numbers = numbers_of(store)
    put(numbers, store, a=1, b=2)
    with store.transaction():
        numbers.put("a", 10)
        numbers.delete("b")
        numbers.put("c", 3)
    assert dict(numbers) == {"a": 10, "c": 3}


def test_a_nested_transaction_joins_the_outer_one(store: Store) -> None:
    numbers = numbers_of(store)
    with rolled_back(store):  # the inner one ends, and is undone with the outer one
        numbers.put("outer", 1)
        with store.transaction():
            numbers.put("inner", 2)
        assert dict(numbers) == {"outer": 1, "inner": 2}
    assert dict(numbers) == {}

    with store.transaction():
        numbers.put("outer", 1)
        with store.transaction():
            numbers.put("inner", 2)
    assert dict(numbers) == {"outer": 1, "inner": 2}


def test_a_write_outside_a_transaction_is_refused(store: Store) -> None:
    numbers = numbers_of(store)
    with pytest.raises(RuntimeError, match="a write to numbers outside a transaction"):
        numbers.put("a", 1)
    put(numbers, store, b=2)
    with pytest.raises(RuntimeError, match="outside a transaction"):
        numbers.delete("b")  # the transaction is over
    assert dict(numbers) == {"b": 2}


class Module:
    """A module as the shop's are: a ``store``, tables, and transactional methods."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.numbers = numbers_of(store)

    @transactional
    def add(self, key: str, value: int, *, fail: bool = False) -> int:
        self.numbers.put(key, value)
        if fail:
            raise Boom
        return len(self.numbers)

    @transactional
    def add_two(self, first: str, second: str, *, fail: bool = False) -> None:
        self.add(first, 1)
        self.add(second, 2, fail=fail)

    async def add_later(self, key: str, value: int, *, fail: bool = False) -> None:
        """An async method: its awaits first, then its writes in a transaction."""
        await asyncio.sleep(0)
        with self.store.transaction():
            self.numbers.put(key, value)
            if fail:
                raise Boom


def test_a_transactional_method_runs_in_one_transaction(store: Store) -> None:
    module = Module(store)
    assert module.add("a", 1) == 1
    with pytest.raises(Boom):
        module.add("b", 2, fail=True)
    assert dict(module.numbers) == {"a": 1}
    with pytest.raises(Boom):
        module.add_two("c", "d", fail=True)  # the first add joined, and is undone too
    assert dict(module.numbers) == {"a": 1}
    module.add_two("c", "d")
    assert dict(module.numbers) == {"a": 1, "c": 1, "d": 2}
    assert Module.add.__name__ == "add"


def test_an_async_method_writes_in_a_transaction_after_its_awaits(store: Store) -> None:
    module = Module(store)
    asyncio.run(module.add_later("a", 1))
    with pytest.raises(Boom):
        asyncio.run(module.add_later("b", 2, fail=True))
    assert dict(module.numbers) == {"a": 1}


def test_transactional_refuses_an_async_method() -> None:
    async def handler(module: Module, event: Ping) -> None:
        await asyncio.sleep(0)

    # An await inside a transaction would hold a service's SQLite write lock.
    with pytest.raises(TypeError, match=r"@transactional is for sync methods; in .*handler"):
        transactional(handler)


# -- in memory -----------------------------------------------------------------------------


def test_a_memory_store_publishes_what_a_transaction_published_once_it_committed() -> None:
    published: list[Event] = []
    store = MemoryStore(published.append)
    ping, pong = Ping(n=1), Ping(n=2)
    with rolled_back(store):
        store.publish(ping)
        assert published == []  # held until the end of the transaction...
    assert published == []  # ... and dropped with its rollback, as an outbox row would be
    with store.transaction():
        store.publish(ping)
        store.publish(pong)
        assert published == []
    assert published == [ping, pong]  # committed: in the order published
    store.publish(ping)  # outside a transaction: at once
    assert published == [ping, pong, ping]
    with pytest.raises(RuntimeError, match="was given no function to publish with"):
        MemoryStore().publish(ping)


def test_a_handler_reached_by_a_memory_transactions_publish_runs_outside_it() -> None:
    """As the in-process bus runs it: a sync handler that fails keeps none of its writes."""

    def deliver(event: Event) -> None:  # the bus: the handler's failure is its own
        with contextlib.suppress(RuntimeError), store.transaction():
            numbers.put("handler", 1)
            raise RuntimeError("the handler fails")

    store = MemoryStore(deliver)
    numbers = numbers_of(store)
    with store.transaction():
        numbers.put("action", 1)
        store.publish(Ping(n=1))
    assert dict(numbers) == {"action": 1}  # not joined to the action's: undone on its own


def test_memory_stores_and_their_transactions_are_separate() -> None:
    first, second = MemoryStore(), MemoryStore()
    put(numbers_of(first), first, a=1)
    assert dict(numbers_of(second)) == {}
    with first.transaction(), pytest.raises(RuntimeError, match="outside a transaction"):
        numbers_of(second).put("b", 2)  # a transaction of one store admits no other's writes


def test_a_memory_transaction_admits_the_writes_of_its_own_thread_only() -> None:
    store = MemoryStore()
    numbers = numbers_of(store)
    errors: list[BaseException] = []

    def write() -> None:
        try:
            numbers.put("other thread", 1)
        except RuntimeError as error:
            errors.append(error)

    with rolled_back(store):
        numbers.put("this thread", 1)
        thread = threading.Thread(target=write)
        thread.start()
        thread.join()
    assert [str(error) for error in errors] == [
        "a write to numbers outside a transaction: wrap it in one"
    ]
    assert dict(numbers) == {}


# -- in a service's SQLite file ------------------------------------------------------------


def test_a_sqlite_stores_tables_outlive_it_in_its_file(sqlite_path: pathlib.Path) -> None:
    with contextlib.closing(SQLiteStore(sqlite_path)) as store:
        numbers = numbers_of(store)
        put(numbers, store, c=3, a=1, b=2)
        put(numbers, store, a=10)
        with rolled_back(store):
            numbers.put("lost", 0)
            numbers.delete("c")

    with contextlib.closing(SQLiteStore(sqlite_path)) as again:
        assert list(numbers_of(again).items()) == [("c", 3), ("a", 10), ("b", 2)]


def test_a_sqlite_transaction_is_seen_by_others_once_committed(
    sqlite_path: pathlib.Path,
) -> None:
    with (
        contextlib.closing(SQLiteStore(sqlite_path)) as store,
        contextlib.closing(SQLiteStore(sqlite_path)) as other,  # another process, say
    ):
        with store.transaction():
            numbers_of(store).put("a", 1)
            assert numbers_of(store).get("a") == 1
            assert numbers_of(other).get("a") is None  # not committed yet
        assert numbers_of(other).get("a") == 1


def test_sqlite_publish_adds_to_the_outbox_with_the_transaction_under_way(
    sqlite_path: pathlib.Path,
) -> None:
    with contextlib.closing(SQLiteStore(sqlite_path)) as store:
        numbers = numbers_of(store)
        with pytest.raises(RuntimeError, match=r"publishing tests\.cart_storage\.ping outside"):
            store.publish(Ping(n=0))

        committed = Ping(n=1)
        with store.transaction():
            numbers.put("a", 1)
            store.publish(committed)
            assert len(store.outbox) == 0  # sent once committed, not before
        [row] = store.outbox.rows()
        assert row.event_type == Ping.event_type
        assert Event.from_json(row.event_type, row.payload) == committed

        with rolled_back(store):
            numbers.put("b", 2)
            store.publish(Ping(n=2))
        assert store.outbox.rows() == [row]  # rolled back with the write
        assert dict(numbers) == {"a": 1}


class Counter:
    """A service's module: counts its pings, answers each with a Pong."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.counts = numbers_of(store, "counts")
        self.fail = False

    @transactional
    def on_ping(self, event: Ping) -> None:
        self.counts.put("pings", self.counts.get("pings", 0) + 1)
        self.store.publish(Pong(n=event.n))
        if self.fail:
            raise Boom("the handler failed after its writes")

    async def on_ping_async(self, event: Ping) -> None:
        await asyncio.sleep(0)  # a round trip, before the transaction
        self.on_ping(event)


HANDLERS = ["sync", "async"]


def service(store: SQLiteStore, kind: str) -> tuple[EventBus, Counter]:
    """A service's bus, whose inbox is the store's, with the counter's idempotent handler."""
    bus = EventBus(inbox=store.inbox)
    counter = Counter(store)
    handler = counter.on_ping if kind == "sync" else counter.on_ping_async
    bus.subscribe(handler, name="counter.ping", idempotent=True)
    return bus, counter


def pongs(store: SQLiteStore) -> list[int]:
    """The n of each Pong waiting in the store's outbox."""
    events = [Event.from_json(row.event_type, row.payload) for row in store.outbox.rows()]
    return [event.n for event in events if isinstance(event, Pong)]


@pytest.mark.parametrize("kind", HANDLERS)
def test_an_idempotent_handlers_writes_events_and_record_commit_together(
    sqlite_path: pathlib.Path, kind: str
) -> None:
    with contextlib.closing(SQLiteStore(sqlite_path)) as store:
        bus, counter = service(store, kind)
        ping = Ping(n=1)
        assert bus.publish(ping).ok
        assert bus.publish(ping).ok  # delivered again: skipped
        assert dict(counter.counts) == {"pings": 1}
        assert pongs(store) == [1]
        assert store.inbox.seen("counter.ping", ping.event_id)

        assert bus.publish(Ping(n=2)).ok  # another event runs it again
        assert dict(counter.counts) == {"pings": 2}
        assert pongs(store) == [1, 2]
        assert len(store.inbox) == 2


@pytest.mark.parametrize("kind", HANDLERS)
def test_an_idempotent_handler_that_raises_leaves_no_write_event_or_record(
    sqlite_path: pathlib.Path, kind: str
) -> None:
    with contextlib.closing(SQLiteStore(sqlite_path)) as store:
        bus, counter = service(store, kind)
        counter.fail = True
        ping = Ping(n=1)
        assert not bus.publish(ping).ok
        assert dict(counter.counts) == {}
        assert pongs(store) == []
        assert not store.inbox.seen("counter.ping", ping.event_id)

        counter.fail = False
        [letter] = bus.dead_letters
        assert bus.redrive(letter).ok  # not recorded: a redrive runs it, from scratch
        assert dict(counter.counts) == {"pings": 1}
        assert pongs(store) == [1]
        assert store.inbox.seen("counter.ping", ping.event_id)


@pytest.mark.parametrize("kind", HANDLERS)
def test_a_run_beaten_to_the_record_by_another_is_rolled_back_whole(
    sqlite_path: pathlib.Path, kind: str
) -> None:
    """Another worker handled the same event and committed first, while this run went on."""
    with contextlib.closing(SQLiteStore(sqlite_path)) as store:
        bus = EventBus(inbox=store.inbox)
        counter = Counter(store)

        def beaten(event: Ping) -> None:
            store.inbox.record("counter.ping", event.event_id)  # the other worker's commit
            counter.on_ping(event)

        async def beaten_async(event: Ping) -> None:
            await asyncio.sleep(0)
            beaten(event)

        handler = beaten if kind == "sync" else beaten_async
        bus.subscribe(handler, name="counter.ping", idempotent=True)
        result = bus.publish(Ping(n=1))
        assert result.ok  # a duplicate, skipped
        assert list(bus.dead_letters) == []
        assert dict(counter.counts) == {}  # its writes went with the inbox's transaction
        assert pongs(store) == []


def test_outside_an_idempotent_handler_a_transaction_is_the_stores_own(
    sqlite_path: pathlib.Path,
) -> None:
    with contextlib.closing(SQLiteStore(sqlite_path)) as store:
        bus = EventBus(inbox=store.inbox)
        counter = Counter(store)
        bus.subscribe(counter.on_ping, name="counter.plain")  # not idempotent: no record
        bus.publish(Ping(n=1))
        assert dict(counter.counts) == {"pings": 1}
        assert pongs(store) == [1]
        assert len(store.inbox) == 0


def test_on_commit_is_called_after_each_commit_of_the_stores_own(
    sqlite_path: pathlib.Path,
) -> None:
    commits: list[dict[str, int]] = []
    with contextlib.closing(SQLiteStore(sqlite_path)) as reader:

        def committed() -> None:
            commits.append(dict(numbers_of(reader)))

        with contextlib.closing(SQLiteStore(sqlite_path, on_commit=committed)) as store:
            with store.transaction(), store.transaction():  # joined: one commit
                numbers_of(store).put("a", 1)
            with rolled_back(store):
                numbers_of(store).put("b", 2)
    assert commits == [{"a": 1}]  # once, after the commit (seen by others), never for a rollback
