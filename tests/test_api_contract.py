"""The examples of api.md's sections Events, Registering handlers and Publishing, as written.

api.md is the contract outside checks call; if one of these stops running,
the contract broke. (Top-level ``await`` is wrapped in a coroutine.)
"""

from __future__ import annotations

import asyncio

from pydantic import Field

from eventbus import Event, EventBus, HandlerRegistry, PublishResult, RetryPolicy


class ItemAdded(Event):
    cart_id: str
    sku: str
    quantity: int = Field(gt=0)


def test_registering_and_publishing_examples_run_as_written() -> None:
    bus = EventBus()

    @bus.subscribe  # event type inferred from the annotation
    def on_item_added(event: ItemAdded) -> None: ...

    @bus.subscribe(ItemAdded, retry=RetryPolicy(max_attempts=5, initial_delay=0.05))
    async def reserve_stock(event: ItemAdded) -> None: ...

    cart = HandlerRegistry()  # declare handlers without a bus instance

    @cart.subscribe
    def log_all(event: Event) -> None: ...  # subscribing to a base class receives subclasses

    bus.include(cart)

    result = bus.publish(ItemAdded(cart_id="c1", sku="A-1", quantity=2))
    assert result.ok
    assert result.dead_letters == []
    assert [s.handler for s in bus.subscriptions_for(ItemAdded)] == [
        on_item_added,
        reserve_stock,
        log_all,
    ]

    async def main(event: Event) -> PublishResult:
        return await bus.publish_async(event)

    result = asyncio.run(main(ItemAdded(cart_id="c1", sku="A-1", quantity=2)))
    assert result.ok
    assert result.dead_letters == []
