"""eventbus.testing: capture, override, isolate, the fake clock and the dead-letter helpers."""

from __future__ import annotations

import asyncio
import collections.abc as c
import threading
import typing as t
import uuid
from datetime import UTC, datetime, timedelta
from unittest.mock import AsyncMock, Mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventbus import (
    DeadLetter,
    DeadLetterStore,
    Event,
    EventBus,
    InMemoryDeadLetterStore,
    PublishResult,
    RetryPolicy,
    SQLiteDeadLetterStore,
    signals,
)
from eventbus.testing import (
    FakeClock,
    Published,
    _state,
    assert_no_dead_letters,
    capture,
    clear_dead_letters,
    isolate,
    override,
    use_clock,
)


class OrderPlaced(Event):
    order_id: str


class PaymentTaken(Event):
    order_id: str
    amount: int


class ReceiptMailed(Event):
    order_id: str


class Unrelated(Event):
    note: str = ""


class Flaky(Exception):
    pass


def shop(bus: EventBus) -> dict[str, list[str]]:
    """Three handlers in a chain: placed -> paid -> mailed. Returns who ran on what."""
    ran: dict[str, list[str]] = {"pay": [], "mail": []}

    @bus.subscribe(name="shop.pay")
    def pay(event: OrderPlaced) -> None:
        ran["pay"].append(event.order_id)
        bus.publish(PaymentTaken(order_id=event.order_id, amount=100))

    @bus.subscribe(name="shop.mail")
    def mail(event: PaymentTaken) -> None:
        ran["mail"].append(event.order_id)
        bus.publish(ReceiptMailed(order_id=event.order_id))

    return ran


BOTH_PATHS = pytest.mark.parametrize("use_async", [False, True], ids=["publish", "publish_async"])


def publish(bus: EventBus, event: Event, use_async: bool) -> PublishResult:
    """``bus.publish(event)``, or ``publish_async`` on a loop of its own."""
    return asyncio.run(bus.publish_async(event)) if use_async else bus.publish(event)


# -- capture -------------------------------------------------------------------------------


@BOTH_PATHS
def test_capture_records_a_cascade_in_publish_order(use_async: bool) -> None:
    bus = EventBus()
    shop(bus)
    with capture(bus) as published:
        placed = OrderPlaced(order_id="o1")
        publish(bus, placed, use_async)
        bus.publish(Unrelated())
    assert [type(e) for e in published] == [OrderPlaced, PaymentTaken, ReceiptMailed, Unrelated]
    assert published[0] is placed
    paid = published.find(PaymentTaken, order_id="o1")
    mailed = published.one(ReceiptMailed)
    assert published.cause_of(paid) is placed
    assert published.cause_of(mailed) is paid
    assert published.cause_of(placed) is None
    assert published.children(placed) == [paid]
    assert published.publisher_of(paid) == "shop.pay"
    assert published.publisher_of(placed) is None
    assert published.assert_caused(placed, ReceiptMailed) is mailed
    assert published.assert_caused(placed, mailed) is mailed
    assert published.assert_caused(placed, PaymentTaken, directly=True, amount=100) is paid


def test_of_filters_by_class_subclasses_fields_and_cause() -> None:
    class SpecialOrder(OrderPlaced):
        pass

    bus = EventBus()
    shop(bus)
    with capture(bus) as published:
        first = bus.publish(OrderPlaced(order_id="o1")).event
        bus.publish(SpecialOrder(order_id="o2"))
    assert [e.order_id for e in published.of(OrderPlaced)] == ["o1", "o2"]
    assert [e.order_id for e in published.of(SpecialOrder)] == ["o2"]
    assert published.of(PaymentTaken, order_id="o2") == [published[4]]
    assert [e.order_id for e in published.of(ReceiptMailed, caused_by=first)] == ["o1"]
    assert len(published.of(Event)) == len(published) == 6


def test_find_fails_with_a_tree_of_what_was_published() -> None:
    bus = EventBus()
    shop(bus)
    with capture(bus) as published:
        bus.publish(OrderPlaced(order_id="o1"))
    with pytest.raises(AssertionError) as failed:
        published.find(PaymentTaken, amount=5)
    assert str(failed.value) == (
        "no PaymentTaken(amount=5) was published\n"
        "3 events were published:\n"
        "  - OrderPlaced(order_id='o1')\n"
        "    - PaymentTaken(order_id='o1', amount=100)  by shop.pay\n"
        "      - ReceiptMailed(order_id='o1')  by shop.mail"
    )


def test_one_and_assert_none_show_the_events_that_matched() -> None:
    bus = EventBus()
    shop(bus)
    with capture(bus) as published:
        bus.publish(OrderPlaced(order_id="o1"))
        bus.publish(OrderPlaced(order_id="o2"))
    with pytest.raises(AssertionError, match=r"expected one PaymentTaken, 2 were published"):
        published.one(PaymentTaken)
    with pytest.raises(AssertionError, match=r"expected no ReceiptMailed\(order_id='o2'\), 1 w"):
        published.assert_none(ReceiptMailed, order_id="o2")
    published.assert_none(ReceiptMailed, order_id="o3")
    published.assert_none(Unrelated)


def test_assert_caused_says_where_the_effect_came_from_instead() -> None:
    bus = EventBus()
    shop(bus)
    with capture(bus) as published:
        one = bus.publish(OrderPlaced(order_id="o1")).event
        two = bus.publish(OrderPlaced(order_id="o2")).event
    paid_two = published.find(PaymentTaken, order_id="o2")
    with pytest.raises(AssertionError) as failed:
        published.assert_caused(one, paid_two)
    assert str(failed.value).startswith(
        "PaymentTaken(order_id='o2', amount=100) was not caused by OrderPlaced(order_id='o1'); "
        "it was caused by OrderPlaced(order_id='o2')\n"
    )
    with pytest.raises(AssertionError) as failed:
        published.assert_caused(one, ReceiptMailed, directly=True)
    assert str(failed.value).startswith(
        "no ReceiptMailed was directly caused by OrderPlaced(order_id='o1'); 2 matching event(s) "
        "were published, caused by: PaymentTaken(order_id='o1', amount=100), "
        "PaymentTaken(order_id='o2', amount=100)\n"
    )
    with pytest.raises(AssertionError, match="it was caused by a top-level publish"):
        published.assert_caused(one, two)


def test_a_field_the_class_does_not_have_is_a_type_error_not_a_miss() -> None:
    published = Published()
    with pytest.raises(TypeError, match=r"PaymentTaken has no field 'amout'; its fields: order_id"):
        published.of(PaymentTaken, amout=1)
    with pytest.raises(TypeError, match="field conditions go with an event class"):
        published.assert_caused(  # type: ignore[call-overload]
            OrderPlaced(order_id="o"), OrderPlaced(order_id="p"), order_id="o"
        )
    with pytest.raises(TypeError, match="expected an Event class"):
        published.of(dict)  # type: ignore[type-var]


def test_capture_stops_at_the_end_of_its_block_and_leaves_no_receiver() -> None:
    bus = EventBus()
    with capture(bus) as published:
        bus.publish(Unrelated(note="in"))
        assert signals.event_published.receivers
    bus.publish(Unrelated(note="out"))
    assert [e.note for e in published.of(Unrelated)] == ["in"]
    assert not signals.event_published.receivers
    assert repr(published) == "<Published 1 events>"
    published.clear()
    assert len(published) == 0
    assert published.tree() == "nothing was published"


def test_capture_sees_only_its_bus_and_nests() -> None:
    bus, other = EventBus(), EventBus()
    with capture(bus) as outer:
        with capture(bus) as inner, capture(other) as elsewhere:
            bus.publish(Unrelated(note="a"))
            other.publish(Unrelated(note="b"))
        bus.publish(Unrelated(note="c"))
    assert [e.note for e in outer.of(Unrelated)] == ["a", "c"]
    assert [e.note for e in inner.of(Unrelated)] == ["a"]
    assert [e.note for e in elsewhere.of(Unrelated)] == ["b"]
    with pytest.raises(TypeError, match="capture\\(\\) takes an EventBus"):
        capture(object())  # type: ignore[arg-type]


def test_capture_from_many_threads_loses_nothing() -> None:
    bus = EventBus()
    with capture(bus) as published:
        threads = [
            threading.Thread(
                target=lambda n=n: [bus.publish(Unrelated(note=f"{n}-{i}")) for i in range(200)]
            )
            for n in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sorted(e.note for e in published.of(Unrelated)) == sorted(
        f"{n}-{i}" for n in range(4) for i in range(200)
    )


def test_a_long_tree_is_cut() -> None:
    bus = EventBus()
    with capture(bus) as published:
        for n in range(100):
            bus.publish(Unrelated(note=str(n)))
    tree = published.tree().splitlines()
    assert tree[0] == "100 events were published:"
    assert tree[-1] == "  ... and 60 more"
    assert len(tree) == 42
    long = Unrelated(note="x" * 500)
    with capture(bus) as published:
        bus.publish(long)
    assert len(published.tree().splitlines()[1]) < 120


# A random cascade: each event names the children its handler publishes, by their index.
Shape = list[list[int]]


@st.composite
def cascades(draw: st.DrawFn) -> Shape:
    size = draw(st.integers(1, 12))
    children: Shape = [[] for _ in range(size)]
    for child in range(1, size):
        children[draw(st.integers(0, child - 1))].append(child)
    return children


class Node(Event):
    index: int


@given(cascades())
def test_capture_holds_every_event_once_and_causation_matches_the_cascade(shape: Shape) -> None:
    bus = EventBus()

    @bus.subscribe
    def fan_out(event: Node) -> None:
        for child in shape[event.index]:
            bus.publish(Node(index=child))

    with capture(bus) as published:
        bus.publish(Node(index=0))
    nodes = published.of(Node)
    assert sorted(n.index for n in nodes) == list(range(len(shape)))
    assert [n.index for n in nodes] == breadth_first(shape)
    by_index = {n.index: n for n in nodes}
    parent = {child: p for p, kids in enumerate(shape) for child in kids}

    def ancestors(index: int) -> set[int]:
        found = set()
        while index in parent:
            index = parent[index]
            found.add(index)
        return found

    for index, node in by_index.items():
        for other, candidate in by_index.items():
            caused = other in ancestors(index)
            try:
                published.assert_caused(candidate, node)
            except AssertionError:
                assert not caused
            else:
                assert caused
        assert published.children(node) == [by_index[k] for k in shape[index]]


def breadth_first(shape: Shape) -> list[int]:
    """The order a bus dispatches a cascade in: each generation after the one before."""
    order, queue = [], [0]
    while queue:
        index = queue.pop(0)
        order.append(index)
        queue.extend(shape[index])
    return order


# -- override and isolate --------------------------------------------------------------------


def test_override_runs_the_fake_in_the_handlers_place_and_puts_it_back() -> None:
    bus = EventBus()
    ran = shop(bus)
    before = bus.subscriptions
    with override(bus, "shop.pay", Mock()) as fake, capture(bus) as published:
        bus.publish(OrderPlaced(order_id="o1"))
    fake.assert_called_once()
    assert fake.call_args.args[0].order_id == "o1"
    assert ran["pay"] == []
    assert [type(e) for e in published] == [OrderPlaced]
    assert bus.subscriptions == before
    bus.publish(OrderPlaced(order_id="o2"))
    assert ran == {"pay": ["o2"], "mail": ["o2"]}


def test_an_overridden_handlers_dead_letter_names_the_handler() -> None:
    bus = EventBus(retry=RetryPolicy(max_attempts=2))
    shop(bus)
    failing = Mock(side_effect=Flaky("card declined"))
    with override(bus, "shop.pay", failing), use_clock(bus):
        result = bus.publish(OrderPlaced(order_id="o1"))
    assert failing.call_count == 2
    [letter] = result.dead_letters
    assert (letter.handler, letter.error_type, letter.attempts) == (
        "shop.pay",
        f"{__name__}.Flaky",
        2,
    )


@BOTH_PATHS
def test_an_async_fake_replaces_a_sync_handler_and_back(use_async: bool) -> None:
    bus = EventBus()
    seen: list[str] = []

    @bus.subscribe(priority=5)
    def first(event: OrderPlaced) -> None:
        seen.append("first")

    @bus.subscribe
    def second(event: OrderPlaced) -> None:
        seen.append("second")

    fake = AsyncMock(side_effect=lambda event: seen.append("fake"))
    with override(bus, first, fake):
        publish(bus, OrderPlaced(order_id="o1"), use_async)
    fake.assert_awaited_once()
    assert seen == ["fake", "second"]  # in the handler's place: its priority kept
    seen.clear()
    bus.publish(OrderPlaced(order_id="o2"))
    assert seen == ["first", "second"]


def test_a_sync_fake_of_an_async_handler_with_a_timeout_drops_the_timeout() -> None:
    bus = EventBus()

    @bus.subscribe(timeout=1.0)
    async def slow(event: OrderPlaced) -> None:
        raise AssertionError("replaced")

    calls: list[OrderPlaced] = []
    with override(bus, slow, calls.append) as fake:
        assert fake == calls.append
        [sub] = bus.subscriptions
        assert (sub.is_async, sub.timeout, sub.name) == (
            False,
            None,
            f"{__name__}.{slow.__qualname__}",
        )
        bus.publish(OrderPlaced(order_id="o1"))
    assert len(calls) == 1
    [sub] = bus.subscriptions
    assert (sub.handler, sub.timeout) == (slow, 1.0)


def test_override_refuses_what_cannot_take_the_handlers_place() -> None:
    bus = EventBus()
    shop(bus)

    def wrong(event: Unrelated) -> None:
        pass

    with pytest.raises(TypeError, match="annotated Unrelated"):
        override(bus, "shop.pay", wrong)
    with pytest.raises(TypeError, match="it is not callable"):
        override(bus, "shop.pay", 42)  # type: ignore[type-var]
    with pytest.raises(TypeError, match="is a glob"):
        override(bus, "shop.*", Mock())
    with pytest.raises(
        LookupError, match=r"'shop.pya' matches no handler .*did you mean 'shop.pay'"
    ):
        override(bus, "shop.pya", Mock())
    with pytest.raises(LookupError, match="has no handlers subscribed"):
        override(EventBus(), "shop.pay", Mock())
    assert [sub.name for sub in bus.subscriptions] == ["shop.pay", "shop.mail"]
    assert not _state.active


def test_override_replaces_every_subscription_of_a_handler() -> None:
    bus = EventBus()
    seen: list[str] = []

    def either(event: OrderPlaced | Unrelated) -> None:
        seen.append("real")

    bus.subscribe(OrderPlaced)(either)
    bus.subscribe(Unrelated)(either)

    with override(bus, either, lambda event: seen.append("fake")):
        bus.publish(OrderPlaced(order_id="o1"))
        bus.publish(Unrelated())
    assert seen == ["fake", "fake"]


@BOTH_PATHS
def test_isolate_runs_only_the_handlers_chosen(use_async: bool) -> None:
    bus = EventBus()
    ran = shop(bus)
    extra: list[str] = []
    bus.subscribe(OrderPlaced, name="audit.log")(lambda event: extra.append("audit"))
    with isolate(bus, "shop.*") as kept, capture(bus) as published:
        publish(bus, OrderPlaced(order_id="o1"), use_async)
    assert [sub.name for sub in kept] == ["shop.pay", "shop.mail"]
    assert extra == []
    assert ran == {"pay": ["o1"], "mail": ["o1"]}
    with isolate(bus, "audit.log"):
        bus.publish(OrderPlaced(order_id="o2"))
    assert extra == ["audit"]
    assert ran["pay"] == ["o1"]
    assert [sub.name for sub in bus.subscriptions] == ["shop.pay", "shop.mail", "audit.log"]
    assert len(published) == 3


def test_isolate_refuses_a_selector_that_chooses_nothing() -> None:
    bus = EventBus()
    shop(bus)
    with pytest.raises(LookupError, match=r"'catalog\.\*' matches no handler"):
        isolate(bus, "shop.pay", "catalog.*")
    with pytest.raises(TypeError, match="needs the handlers to keep"):
        isolate(bus)
    assert len(bus.subscriptions) == 2


def test_overrides_and_isolation_nest_and_unwind() -> None:
    bus = EventBus()
    ran = shop(bus)
    mail = Mock()
    with isolate(bus, "shop.*"), override(bus, "shop.mail", mail):
        bus.publish(OrderPlaced(order_id="o1"))
    mail.assert_called_once()
    assert ran == {"pay": ["o1"], "mail": []}
    assert not _state.active


# -- the fake clock ------------------------------------------------------------------------


START = datetime(2026, 1, 1, tzinfo=UTC)


def flaky_bus(clock: FakeClock | None = None) -> tuple[EventBus, list[int]]:
    bus = EventBus(clock=clock)
    tries: list[int] = []

    @bus.subscribe(retry=RetryPolicy(max_attempts=3, initial_delay=10.0, backoff=2.0))
    async def charge(event: OrderPlaced) -> None:
        tries.append(1)
        raise Flaky("again")

    return bus, tries


@BOTH_PATHS
def test_a_fake_clock_makes_waits_instant_and_moves_time_by_them(use_async: bool) -> None:
    bus, tries = flaky_bus()
    with use_clock(bus, FakeClock(START)) as clock:
        result = publish(bus, OrderPlaced(order_id="o1"), use_async)
    assert len(tries) == 3
    assert clock.sleeps == [10.0, 20.0]
    assert clock.now() == START + timedelta(seconds=30)
    assert result.dead_letters[0].failed_at == START + timedelta(seconds=30)


def test_advancing_a_fake_clock_drives_older_than() -> None:
    clock = FakeClock(START)
    bus, tries = flaky_bus(clock)
    bus.publish(OrderPlaced(order_id="o1"))
    assert bus.redrive_all(older_than=timedelta(hours=1)) == []
    assert clock.advance(timedelta(minutes=59)) == START + timedelta(seconds=30, minutes=59)
    assert bus.redrive_all(older_than=timedelta(hours=1)) == []
    clock.advance(30)  # 30 s short of the hour since the letter's last failure
    assert bus.redrive_all(older_than=timedelta(hours=1)) == []
    clock.advance(30)
    [outcome] = bus.redrive_all(older_than=timedelta(hours=1))
    assert outcome.result is not None
    assert not outcome.result.ok
    assert len(tries) == 6


def test_use_clock_puts_the_buses_own_clock_back() -> None:
    bus = EventBus()
    own = bus.clock
    with use_clock(bus) as clock:
        assert bus.clock is clock
        assert isinstance(clock, FakeClock)
        with use_clock(bus, FakeClock(START)) as inner:
            assert bus.clock is inner
        assert bus.clock is clock
    assert bus.clock is own
    assert not _state.active


def test_fake_clock_refuses_bad_times() -> None:
    with pytest.raises(TypeError, match="timezone-aware"):
        FakeClock(datetime(2026, 1, 1))
    clock = FakeClock(START)
    with pytest.raises(ValueError, match="only moves forward"):
        clock.advance(-1)
    with pytest.raises(TypeError, match="seconds or a timedelta"):
        clock.advance("1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="clock must be a Clock"):
        use_clock(EventBus(), object())  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="takes an EventBus"):
        use_clock(object())  # type: ignore[call-overload]
    assert FakeClock(seed=1).random() == FakeClock(seed=1).random()
    assert repr(clock) == "<FakeClock now=2026-01-01T00:00:00+00:00 sleeps=0>"


# -- dead letters --------------------------------------------------------------------------


class OwnStore:
    """A store of the protocol only: no clear()."""

    def __init__(self) -> None:
        self.letters: dict[uuid.UUID, DeadLetter] = {}

    def add(self, letter: DeadLetter, /) -> None:
        self.letters[letter.id] = letter

    def remove(self, letter: DeadLetter, /) -> None:
        del self.letters[letter.id]

    def get(self, letter_id: uuid.UUID, /) -> DeadLetter:
        return self.letters[letter_id]

    def __len__(self) -> int:
        return len(self.letters)

    def __iter__(self) -> c.Iterator[DeadLetter]:
        return iter(list(self.letters.values()))


@pytest.fixture(params=["memory", "sqlite", "own"])
def store(request: pytest.FixtureRequest, tmp_path: t.Any) -> c.Iterator[DeadLetterStore]:
    if request.param == "memory":
        yield InMemoryDeadLetterStore()
    elif request.param == "sqlite":
        with SQLiteDeadLetterStore(tmp_path / "letters.db") as sqlite:
            yield sqlite
    else:
        yield OwnStore()


def test_clear_dead_letters_empties_every_kind_of_store(store: DeadLetterStore) -> None:
    bus, _ = flaky_bus()
    bus = EventBus(dead_letters=store, clock=FakeClock())

    @bus.subscribe
    def fail(event: OrderPlaced) -> None:
        raise Flaky(event.order_id)

    for n in range(3):
        bus.publish(OrderPlaced(order_id=str(n)))
    assert len(store) == 3
    clear_dead_letters(bus)
    assert len(store) == 0
    assert_no_dead_letters(store)
    clear_dead_letters(store)  # nothing to clear
    with pytest.raises(TypeError, match="takes an EventBus or a DeadLetterStore"):
        clear_dead_letters(object())  # type: ignore[arg-type]


def test_assert_no_dead_letters_shows_each_letters_error_and_where_it_was_raised() -> None:
    bus = EventBus()

    @bus.subscribe(name="shop.charge")
    def charge(event: OrderPlaced) -> None:
        raise Flaky(f"card declined for {event.order_id}")

    bus.publish(OrderPlaced(order_id="o1"))
    with pytest.raises(AssertionError) as failed:
        assert_no_dead_letters(bus)
    message = str(failed.value)
    assert message.startswith(
        "expected no dead letters, found 1:\n- shop.charge on OrderPlaced(order_id='o1'), "
        f"after 1 attempt(s): {__name__}.Flaky: card declined for o1\n"
        "    Traceback (most recent call last):"
    )
    assert 'raise Flaky(f"card declined for {event.order_id}")' in message
    for n in range(12):
        bus.publish(OrderPlaced(order_id=str(n)))
    with pytest.raises(AssertionError, match=r"found 13:(.|\n)*\.\.\. and 3 more$"):
        assert_no_dead_letters(bus)


# -- the state check -----------------------------------------------------------------------


def test_the_state_check_reports_and_undoes_what_a_test_left() -> None:
    app_bus = EventBus()  # as if built when the application was imported
    own = app_bus.clock
    after = _state.snapshot()

    def receiver(sender: object, **kwargs: object) -> None:
        pass

    signals.handler_failed.connect(receiver, sender=app_bus)
    # Entered and never exited (a block dropped unreferenced ends when it is collected).
    app_bus.subscribe(OrderPlaced, name="app.noop")(lambda event: None)
    left_open = [use_clock(app_bus), isolate(app_bus, "*")]
    for block in left_open:
        block.__enter__()
    problems = after()
    assert len(problems) == 2, problems
    assert problems[0].startswith("the test left receivers connected to eventbus signals:\n")
    assert f"{__name__}." in problems[0]
    assert "receiver" in problems[0]
    assert problems[1].startswith("the test left eventbus.testing blocks open")
    assert "use_clock(<FakeClock" in problems[1]
    assert "isolate('*')" in problems[1]
    assert app_bus.clock is own
    assert not signals.handler_failed.receivers
    assert not _state.active
    assert _state.snapshot()() == []


def test_a_clock_set_by_hand_on_an_existing_bus_is_reported_and_put_back() -> None:
    app_bus = EventBus()
    own = app_bus.clock
    after = _state.snapshot()
    app_bus.clock = FakeClock()
    [problem] = after()
    assert problem.startswith("the test replaced the clock of buses that existed before it:\n")
    assert "<FakeClock" in problem
    assert "was <SystemClock>" in problem
    assert app_bus.clock is own


# -- a bus whose transport takes the events (as a broker's does) ----------------------------


class QueueTransport:
    """Takes every event into a list, as a broker's transport takes them into a stream."""

    def __init__(self) -> None:
        self.queue: list[Event] = []
        self.publish: t.Any = None

    def bind(self, bus: EventBus, plan: t.Any, /) -> tuple[t.Any, t.Any]:
        def publish(event: Event) -> PublishResult:
            self.queue.append(event)
            return PublishResult(event)

        async def publish_async(event: Event) -> PublishResult:
            return publish(event)

        self.publish = publish
        return publish, publish_async


@BOTH_PATHS
def test_capture_sees_what_a_transport_accepted(use_async: bool) -> None:
    transport = QueueTransport()
    bus = EventBus(transport=transport)
    with capture(bus) as published:
        placed = OrderPlaced(order_id="o1")
        publish(bus, placed, use_async)
    assert published.one(OrderPlaced) is placed
    assert published.publisher_of(placed) is None
    assert transport.queue == [placed]


def test_a_transport_bus_pays_for_the_announcement_only_while_someone_listens() -> None:
    transport = QueueTransport()
    bus = EventBus(transport=transport)
    bus.publish(OrderPlaced(order_id="o1"))
    assert bus._compiled[OrderPlaced].publish is transport.publish
    with capture(bus):
        bus.publish(OrderPlaced(order_id="o2"))
        assert bus._compiled[OrderPlaced].publish is not transport.publish
    bus.publish(OrderPlaced(order_id="o3"))
    assert bus._compiled[OrderPlaced].publish is transport.publish


def test_the_helpers_types_follow_the_classes_asked_for() -> None:
    """Checked by mypy --strict (``make test``) as much as by running it."""
    bus = EventBus()
    shop(bus)
    with capture(bus) as published, use_clock(bus) as clock, use_clock(bus, FakeClock()) as again:
        placed = bus.publish(OrderPlaced(order_id="o1")).event
    t.assert_type(published, Published)
    t.assert_type(clock, FakeClock)
    t.assert_type(again, FakeClock)
    t.assert_type(published.of(PaymentTaken), list[PaymentTaken])
    t.assert_type(published.find(PaymentTaken), PaymentTaken)
    t.assert_type(published.one(ReceiptMailed), ReceiptMailed)
    t.assert_type(published.assert_caused(placed, ReceiptMailed), ReceiptMailed)
    mailed = published.one(ReceiptMailed)
    t.assert_type(published.assert_caused(placed, mailed), ReceiptMailed)
    t.assert_type(published.cause_of(mailed), Event | None)
    fake = Mock()
    with override(bus, "shop.mail", fake) as same:
        t.assert_type(same, Mock)
    assert published.find(PaymentTaken).amount == 100


# -- what a test may do inside the blocks, and odd fakes --------------------------------------


def test_override_ends_right_when_the_test_unsubscribed_part_of_the_fake() -> None:
    bus = EventBus()
    seen: list[str] = []

    def either(event: OrderPlaced | Unrelated) -> None:
        seen.append("real")

    bus.subscribe(either, name="either")
    with override(bus, either, lambda event: seen.append("fake")):
        bus.unsubscribe("either", Unrelated)  # the fake's subscription is a new object now
        bus.publish(Unrelated())
        bus.publish(OrderPlaced(order_id="o1"))
    assert seen == ["fake"]
    [sub] = bus.subscriptions
    assert (sub.handler, sub.name) == (either, "either")
    bus.publish(Unrelated())
    bus.publish(OrderPlaced(order_id="o2"))
    assert seen == ["fake", "real", "real"]


def test_a_handler_subscribed_again_inside_isolate_is_not_doubled() -> None:
    bus = EventBus()
    ran = shop(bus)
    [mail] = [sub.handler for sub in bus.subscriptions if sub.name == "shop.mail"]
    with isolate(bus, "shop.pay"):
        bus.subscribe(mail, name="shop.mail")  # left out, and subscribed again by the test
    assert [sub.name for sub in bus.subscriptions] == ["shop.pay", "shop.mail"]
    bus.publish(PaymentTaken(order_id="o1", amount=1))
    assert ran["mail"] == ["o1"]


def test_blocks_ended_out_of_order_leave_the_original_handler() -> None:
    bus = EventBus()
    ran = shop(bus)
    first, second = override(bus, "shop.pay", Mock()), None
    first.__enter__()
    second = override(bus, "shop.pay", Mock())
    second.__enter__()
    first.__exit__(None, None, None)
    second.__exit__(None, None, None)
    assert [sub.name for sub in bus.subscriptions] == ["shop.pay", "shop.mail"]
    bus.publish(OrderPlaced(order_id="o1"))
    assert ran["pay"] == ["o1"]


def test_a_mock_specced_on_the_handler_is_a_fake() -> None:
    bus = EventBus()
    shop(bus)
    [pay] = [sub.handler for sub in bus.subscriptions if sub.name == "shop.pay"]
    with override(bus, pay, Mock(spec=pay)) as fake:
        bus.publish(OrderPlaced(order_id="o1"))
    fake.assert_called_once()


def test_a_fake_that_cannot_take_the_place_is_named_in_the_error() -> None:
    bus = EventBus()
    shop(bus)

    def two(event: OrderPlaced, extra: int) -> None:
        pass

    with pytest.raises(
        TypeError, match=r"^cannot override shop\.pay with <function .*two.*requires 'extra'"
    ):
        override(bus, "shop.pay", two)


def test_a_change_is_undone_once_whoever_ends_it() -> None:
    undone: list[int] = []
    change = _state.Change("test", None, lambda: undone.append(1))
    _state.add(change)
    threads = [threading.Thread(target=change.undo) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert undone == [1]
    assert change not in _state.active


def test_publisher_of_an_event_not_captured_says_so() -> None:
    with pytest.raises(LookupError, match=r"OrderPlaced\(order_id='x'\) \(event_id=.*\) was not "):
        Published().publisher_of(OrderPlaced(order_id="x"))


@pytest.mark.parametrize("seconds", [-5, float("nan"), float("inf"), 1e20, 10**400])
def test_a_fake_clock_never_moves_back_or_out_of_range(seconds: float) -> None:
    clock = FakeClock(START)
    with pytest.raises(ValueError, match=r"time only moves forward|a finite number of seconds"):
        clock.sleep(seconds)
    with pytest.raises(ValueError, match=r"time only moves forward|a finite number of seconds"):
        clock.advance(seconds)
    assert clock.now() == START
    assert clock.sleeps == []


def test_a_fake_clock_at_the_end_of_time_says_so() -> None:
    clock = FakeClock(datetime(9999, 12, 31, 23, 59, tzinfo=UTC))
    with pytest.raises(ValueError, match="past year 9999"):
        clock.advance(timedelta(days=2))
