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


def test_retries_dead_letters_and_hooks_sections() -> None:
    """api.md, sections Retries and dead letters, and Hooks."""
    from eventbus import DeadLetter
    from eventbus.signals import (
        event_dead_lettered,
        event_published,
        handler_failed,
        handler_retrying,
    )

    policy = RetryPolicy(max_attempts=3, initial_delay=0.0)  # total attempts, first included
    assert policy.max_attempts == 3
    assert RetryPolicy().max_attempts == 1  # the default: one attempt

    bus = EventBus()
    seen: dict[str, list[object]] = {"published": [], "failed": [], "retrying": [], "dead": []}

    def on_published(sender: EventBus, **kwargs: object) -> None:
        seen["published"].append(kwargs["event"])

    def on_failed(sender: EventBus, **kwargs: object) -> None:
        seen["failed"].append(kwargs["attempt"])

    def on_retrying(sender: EventBus, **kwargs: object) -> None:
        seen["retrying"].append((kwargs["attempt"], type(kwargs["error"]), kwargs["delay"]))

    def on_dead(sender: EventBus, **kwargs: object) -> None:
        seen["dead"].append(kwargs["dead_letter"])

    recovered = False

    @bus.subscribe(ItemAdded, retry=policy)
    def reserve(event: ItemAdded) -> None:
        if not recovered:
            raise ConnectionError("stock service down")

    with (
        event_published.connected_to(on_published, sender=bus),
        handler_failed.connected_to(on_failed, sender=bus),
        handler_retrying.connected_to(on_retrying, sender=bus),
        event_dead_lettered.connected_to(on_dead, sender=bus),
    ):
        event = ItemAdded(cart_id="c1", sku="A-1", quantity=2)
        result = bus.publish(event)

    assert not result.ok
    [letter] = result.dead_letters
    assert isinstance(letter, DeadLetter)
    assert letter.event == event
    assert letter.handler.endswith("reserve")
    assert letter.attempts == 3
    assert letter.error_type == "builtins.ConnectionError"
    assert letter.error_message == "stock service down"
    assert "ConnectionError: stock service down" in letter.traceback
    assert letter.failed_at.tzinfo is not None
    assert len(bus.dead_letters) == 1
    assert list(bus.dead_letters) == [letter]
    assert seen == {
        "published": [event],
        "failed": [1, 2, 3],
        "retrying": [(1, ConnectionError, 0.0), (2, ConnectionError, 0.0)],
        "dead": [letter],
    }

    recovered = True
    assert bus.redrive(letter).ok
    assert len(bus.dead_letters) == 0
