"""A tour of eventbus in one screen: sync and async handlers, a cascade, a dead letter.

Run it with `.venv/bin/python examples/basics.py` (`make demo` plays the cart example).
"""

from __future__ import annotations

import asyncio
import logging
import sys

from pydantic import Field

from eventbus import Event, EventBus, RetryPolicy

bus = EventBus()


class ItemAdded(Event):
    event_type = "cart.item_added"

    cart_id: str
    sku: str
    quantity: int = Field(gt=0)


class StockLow(Event):
    event_type = "catalog.stock_low"

    sku: str
    left: int


stock = {"A-1": 3}


@bus.subscribe
def reserve(event: ItemAdded) -> None:
    """A sync handler; publishing from a handler queues a child event."""
    stock[event.sku] -= event.quantity
    print(f"  reserve: {event.quantity} x {event.sku}, {stock[event.sku]} left")
    if stock[event.sku] < 2:
        bus.publish(StockLow(sku=event.sku, left=stock[event.sku]))


@bus.subscribe(priority=10)
async def audit(event: Event) -> None:
    """An async handler for every event; priority 10 runs before the default 0."""
    print(f"  audit: {event.event_type} (caused by {event.causation_id})")


@bus.subscribe(retry=RetryPolicy(max_attempts=3))
def notify_buyer(event: StockLow) -> None:
    """A handler that always fails: after 3 attempts its event becomes a dead letter."""
    raise ConnectionError("mail server unreachable")


class OneLineFormatter(logging.Formatter):
    """The demo prints the dead letter itself, so the log skips the traceback."""

    def formatException(self, ei: object) -> str:
        return ""


def main() -> None:
    log = logging.StreamHandler(sys.stdout)
    log.setFormatter(OneLineFormatter("  log %(levelname)s: %(message)s"))
    logging.getLogger("eventbus").addHandler(log)

    print("sync publish:")
    result = bus.publish(ItemAdded(cart_id="c1", sku="A-1", quantity=2))
    print(f"  ok={result.ok}, dead letters={len(result.dead_letters)}")

    print("async publish:")
    stock["A-1"] = 5
    result = asyncio.run(bus.publish_async(ItemAdded(cart_id="c2", sku="A-1", quantity=1)))
    print(f"  ok={result.ok}")

    print("dead letters kept by the bus:")
    for letter in bus.dead_letters:
        print(
            f"  {letter.event_type} -> {letter.handler}: {letter.error_type}: "
            f"{letter.error_message} ({letter.attempts} attempts)"
        )


if __name__ == "__main__":
    main()
