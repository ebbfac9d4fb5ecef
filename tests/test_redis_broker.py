"""Publishing on a broker bus, against the tests' private redis-server.

``publish`` and ``publish_async`` return once Redis has the entry; what
Redis does not take is a BrokerError, never a silent success. The entry is
JSON under the event's ``event_type``.
"""

from __future__ import annotations

import asyncio
import collections.abc as c
import json
import logging
import typing as t

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventbus import (
    Broker,
    BrokerError,
    Event,
    EventBus,
    InMemoryDeadLetterStore,
    LocalTransport,
    PublishResult,
    UndefinedEvent,
)
from eventbus.redis import RedisBroker, RedisDeadLetterStore, RedisDeadLetterStoreError
from eventbus.testing import capture
from tests.redis_server import RedisServer


class OrderPlaced(Event):
    order_id: str
    total: int = 0


@pytest.fixture
def broker(redis_url: str) -> c.Iterator[RedisBroker]:
    with RedisBroker(redis_url, namespace="shop", timeout=1.0) as made:
        yield made


def publish(bus: EventBus, event: Event, use_async: bool) -> PublishResult:
    return asyncio.run(bus.publish_async(event)) if use_async else bus.publish(event)


def entries(broker: RedisBroker) -> list[dict[bytes, bytes]]:
    raw: list[tuple[bytes, dict[bytes, bytes]]] = broker.client.xrange(broker.keys.stream)  # type: ignore[assignment]
    return [fields for _, fields in raw]


@pytest.mark.parametrize("use_async", [False, True], ids=["publish", "publish_async"])
def test_a_publish_returns_once_the_entry_is_in_the_stream(
    broker: RedisBroker, use_async: bool
) -> None:
    bus = EventBus(broker=broker)
    ran: list[OrderPlaced] = []
    bus.subscribe(OrderPlaced)(ran.append)  # handlers run in workers, not in the publishing process
    placed = OrderPlaced(order_id="o1", total=4500)
    result = publish(bus, placed, use_async)
    assert result.ok
    assert result.event is placed
    assert ran == []
    [fields] = entries(broker)
    assert fields[b"event_type"] == placed.event_type.encode()
    assert Event.from_json(placed.event_type, fields[b"payload"]) == placed
    assert json.loads(fields[b"payload"])["order_id"] == "o1"
    assert broker.keys.stream == "eventbus:shop:events"


@pytest.mark.parametrize("use_async", [False, True], ids=["publish", "publish_async"])
def test_entry_hooks_add_their_fields_to_each_entry_but_never_the_brokers_own(
    broker: RedisBroker, use_async: bool
) -> None:
    bus = EventBus(broker=broker)
    seen: list[Event] = []

    def trace_context(event: Event) -> dict[str, str]:
        seen.append(event)
        return {"traceparent": f"00-{event.event_id.hex}-0000000000000001-01", "payload": "x"}

    broker.add_entry_fields(trace_context)
    placed = OrderPlaced(order_id="o1")
    publish(bus, placed, use_async)
    broker.remove_entry_fields(trace_context)
    publish(bus, OrderPlaced(order_id="o2"), use_async)
    first, second = entries(broker)
    assert first[b"traceparent"] == f"00-{placed.event_id.hex}-0000000000000001-01".encode()
    assert Event.from_json(placed.event_type, first[b"payload"]) == placed  # not the hook's
    assert b"traceparent" not in second  # removed: no more fields
    assert seen == [placed]  # once per event
    with pytest.raises(ValueError, match="is not an entry hook"):
        broker.remove_entry_fields(trace_context)
    with pytest.raises(TypeError, match="takes a function"):
        broker.add_entry_fields("traceparent")  # type: ignore[arg-type]


@pytest.mark.parametrize("use_async", [False, True], ids=["publish", "publish_async"])
@pytest.mark.parametrize("fault", ["raises", "not-text"])
def test_an_entry_hook_that_fails_is_logged_and_the_event_written_all_the_same(
    broker: RedisBroker, use_async: bool, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Instrumentation never loses an event: the failing hook's fields are left out."""
    bus = EventBus(broker=broker)

    def broken(event: Event) -> dict[str, t.Any]:
        if fault == "raises":
            raise RuntimeError("the tracer is broken")
        return {"traceparent": 7}

    def good(event: Event) -> dict[str, str]:
        return {"tenant": "acme"}

    broker.add_entry_fields(broken)
    broker.add_entry_fields(good)
    placed = OrderPlaced(order_id="o1")
    with caplog.at_level(logging.ERROR, logger="eventbus.redis"):
        result = publish(bus, placed, use_async)
    broker.remove_entry_fields(broken)
    broker.remove_entry_fields(good)
    assert result.ok
    [fields] = entries(broker)
    assert Event.from_json(placed.event_type, fields[b"payload"]) == placed
    assert b"traceparent" not in fields
    assert fields[b"tenant"] == b"acme"  # the other hooks' fields stay
    [record] = [r for r in caplog.records if "entry hook" in r.getMessage()]
    assert "without its fields" in record.getMessage()
    assert record.event_id == placed.event_id  # type: ignore[attr-defined]
    assert record.exc_info is not None


def test_events_keep_their_publish_order(broker: RedisBroker) -> None:
    bus = EventBus(broker=broker)
    for n in range(50):
        bus.publish(OrderPlaced(order_id=str(n)))
    assert [json.loads(f[b"payload"])["order_id"] for f in entries(broker)] == [
        str(n) for n in range(50)
    ]


@pytest.mark.parametrize("use_async", [False, True], ids=["publish", "publish_async"])
def test_a_publish_redis_cannot_take_raises_broker_error(
    redis_server: RedisServer, redis_url: str, use_async: bool
) -> None:
    bus = EventBus(broker=RedisBroker(redis_url, namespace="shop", timeout=0.2))
    redis_server.stop()
    try:
        with pytest.raises(BrokerError, match=r"could not publish .*OrderPlaced") as raised:
            publish(bus, OrderPlaced(order_id="o1"), use_async)
    finally:
        redis_server.start()
    assert isinstance(raised.value.__cause__, redis.ConnectionError)
    assert "the event was not published" in str(raised.value)
    with redis.Redis.from_url(redis_url) as client:
        assert client.xlen("eventbus:shop:events") == 0


def order_ids(broker: RedisBroker) -> list[str]:
    return [json.loads(f[b"payload"])["order_id"] for f in entries(broker)]


def test_overlapping_async_publishes_share_a_round_trip_and_keep_their_order(
    broker: RedisBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    bus = EventBus(broker=broker)
    writes: list[int] = []
    write = broker._write

    def counted(batch: list[dict[str, str]]) -> list[object]:
        writes.append(len(batch))
        return write(batch)

    monkeypatch.setattr(broker, "_write", counted)
    events = [OrderPlaced(order_id=str(n)) for n in range(200)]

    async def main() -> list[PublishResult]:
        return await asyncio.gather(*(bus.publish_async(event) for event in events))

    results = asyncio.run(main())
    assert [result.event for result in results] == events
    assert all(result.ok for result in results)
    assert order_ids(broker) == [str(n) for n in range(200)]
    assert sum(writes) == 200
    assert len(writes) <= 2, writes  # one pipeline for the lot (two if the first went alone)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(waves=st.lists(st.integers(min_value=1, max_value=30), min_size=1, max_size=8))
def test_async_publishes_land_once_each_in_call_order_however_they_overlap(
    broker: RedisBroker, waves: list[int]
) -> None:
    broker.client.delete(broker.keys.stream)
    bus = EventBus(broker=broker)

    async def main() -> None:
        started: list[asyncio.Task[PublishResult]] = []
        n = 0
        for size in waves:  # each wave starts while the ones before may still be written
            for _ in range(size):
                started.append(asyncio.create_task(bus.publish_async(OrderPlaced(order_id=str(n)))))
                n += 1
            await asyncio.sleep(0)
        await asyncio.gather(*started)

    asyncio.run(main())
    assert order_ids(broker) == [str(n) for n in range(sum(waves))]


def test_an_entry_redis_refuses_fails_its_own_publish_only(
    broker: RedisBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    bus = EventBus(broker=broker)
    write = broker._write

    def refusing_the_second(batch: list[dict[str, str]]) -> list[object]:
        replies = write(batch)
        if len(batch) > 1:
            replies[1] = redis.ResponseError("OOM command not allowed")  # as Redis would say
        return replies

    monkeypatch.setattr(broker, "_write", refusing_the_second)

    async def main() -> list[PublishResult | BaseException]:
        return await asyncio.gather(
            *(bus.publish_async(OrderPlaced(order_id=str(n))) for n in range(3)),
            return_exceptions=True,
        )

    first, second, third = asyncio.run(main())
    assert isinstance(first, PublishResult)
    assert isinstance(third, PublishResult)
    assert isinstance(second, BrokerError)
    assert isinstance(second.__cause__, redis.ResponseError)
    assert "OrderPlaced" in str(second)
    assert "OOM" in str(second)


def test_a_publish_after_redis_restarted_reconnects(
    redis_server: RedisServer, broker: RedisBroker
) -> None:
    bus = EventBus(broker=broker)
    bus.publish(OrderPlaced(order_id="before"))
    redis_server.restart()
    bus.publish(OrderPlaced(order_id="after"))  # the pooled connection was dropped: a new one
    assert [json.loads(f[b"payload"])["order_id"] for f in entries(broker)] == ["before", "after"]


def test_a_broker_bus_keeps_its_letters_in_the_brokers_store(broker: RedisBroker) -> None:
    bus = EventBus(broker=broker)
    assert bus.broker is broker
    assert bus.transport is broker
    assert bus.dead_letters is broker.dead_letters
    assert isinstance(broker, Broker)
    assert isinstance(bus.dead_letters, RedisDeadLetterStore)
    own = InMemoryDeadLetterStore()
    assert EventBus(broker=broker, dead_letters=own).dead_letters is own
    assert EventBus().broker is None


def test_a_broker_bus_refuses_what_is_not_a_broker(broker: RedisBroker) -> None:
    with pytest.raises(TypeError, match="not both"):
        EventBus(broker=broker, transport=LocalTransport())
    with pytest.raises(TypeError, match="broker must be a Broker"):
        EventBus(broker=LocalTransport())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"namespace": ""}, "namespace must be"),
        ({"namespace": "a b"}, "namespace must be"),
        ({"claim_idle": 0}, "claim_idle must be"),
        ({"claim_idle": float("nan")}, "claim_idle must be"),
        ({"timeout": 0}, "timeout must be"),
    ],
)
def test_bad_broker_options_are_refused_naming_them(
    options: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        RedisBroker("redis://127.0.0.1:1/0", **options)  # type: ignore[arg-type]


def test_a_url_that_is_not_redis_is_refused() -> None:
    with pytest.raises(ValueError, match="url must be a Redis URL"):
        RedisBroker("http://127.0.0.1:6379")


def test_a_password_never_shows_in_a_repr() -> None:
    broker = RedisBroker("redis://user:s3cret@127.0.0.1:1/0", namespace="shop")
    assert "s3cret" not in repr(broker)
    assert "s3cret" not in repr(broker.dead_letters)
    assert repr(broker) == "<RedisBroker redis://***@127.0.0.1:1/0 namespace='shop'>"
    broker.close()


def test_capture_sees_what_a_broker_bus_published(broker: RedisBroker) -> None:
    bus = EventBus(broker=broker)
    with capture(bus) as published:
        bus.publish(OrderPlaced(order_id="o1"))
    assert published.one(OrderPlaced).order_id == "o1"


def test_a_store_that_cannot_reach_redis_says_where(
    redis_server: RedisServer, redis_url: str
) -> None:
    store = RedisDeadLetterStore(redis_url, namespace="shop", timeout=0.2)
    redis_server.stop()
    try:
        with pytest.raises(RedisDeadLetterStoreError, match="could not count the letters of"):
            len(store)
    finally:
        redis_server.start()
        store.close()


def test_a_stored_letter_that_is_not_json_still_comes_back(broker: RedisBroker) -> None:
    store = broker.dead_letters
    broker.client.hset(store.keys.letters, "1b4e28ba-2fa1-11d2-883f-0016d3cca427", b"\xff{not json")
    broker.client.zadd(store.keys.letters_order, {"1b4e28ba-2fa1-11d2-883f-0016d3cca427": 1})
    [letter] = list(store)
    assert str(letter.id) == "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
    assert isinstance(letter.event, UndefinedEvent)
    assert "cannot be read" in letter.event.reason
    assert not letter.event.redrivable
    assert store.get(letter.id).id == letter.id
