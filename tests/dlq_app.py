"""A tiny app that tests/test_sqlite_store.py and its subprocesses both import.

Both processes import it as ``tests.dlq_app``, so the event type and the
handler's qualified name match across them, as they would in two processes
of one real application. ``main`` is the writer subprocess::

    python -c "import sys, tests.dlq_app as app; app.main(sys.argv[1:])" fail DB COUNT
    python -c "import sys, tests.dlq_app as app; app.main(sys.argv[1:])" add-forever DB
"""

from __future__ import annotations

from datetime import UTC, datetime

from eventbus import DeadLetter, Event, EventBus, SQLiteDeadLetterStore


class OrderPlaced(Event):
    event_type = "tests.dlq_app.order_placed"

    order_id: int


#: Orders ``reserve_stock`` handled; while ``broken`` it fails instead.
reserved: list[int] = []
broken = True


def reserve_stock(event: OrderPlaced) -> None:
    if broken:
        raise ConnectionError(f"stock service down (order {event.order_id})")
    reserved.append(event.order_id)


def make_bus(store: SQLiteDeadLetterStore) -> EventBus:
    bus = EventBus(dead_letters=store)
    bus.subscribe(reserve_stock)
    return bus


def fail(path: str, count: int) -> None:
    """Publish ``count`` orders to a broken handler: ``count`` letters in the store."""
    with SQLiteDeadLetterStore(path) as store:
        bus = make_bus(store)
        for order_id in range(count):
            assert not bus.publish(OrderPlaced(order_id=order_id)).ok


def add_forever(path: str) -> None:
    """Add letters until killed; print each letter's id once ``add`` has returned."""
    with SQLiteDeadLetterStore(path) as store:
        order_id = 0
        while True:
            letter = DeadLetter.from_exception(
                OrderPlaced(order_id=order_id),
                f"{__name__}.reserve_stock",
                1,
                ConnectionError("stock service down"),
                failed_at=datetime.now(UTC),
            )
            store.add(letter)
            print(letter.id, flush=True)
            order_id += 1


def main(argv: list[str]) -> None:
    command, path, *rest = argv
    if command == "fail":
        fail(path, int(rest[0]))
    elif command == "add-forever":
        add_forever(path)
    else:
        raise SystemExit(f"unknown command {command!r}")
