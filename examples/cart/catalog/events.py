"""The catalog module's events: what it lists, and its stock conversation with checkout.

``ReserveStock`` and ``ReleaseStock`` are requests addressed to the catalog
(the checkout saga publishes them); the catalog answers each with one of its
own events. A product's price is in cents.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from eventbus import Event


class StockLine(BaseModel):
    """A quantity of one product."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sku: str
    quantity: int = Field(gt=0)


class ProductListed(Event):
    event_type = "catalog.product_listed"

    sku: str
    name: str
    price_cents: int = Field(gt=0)


class ReserveStock(Event):
    event_type = "catalog.reserve_stock"

    order_id: str
    lines: tuple[StockLine, ...] = Field(min_length=1)


class StockReserved(Event):
    event_type = "catalog.stock_reserved"

    order_id: str


class OutOfStock(Event):
    event_type = "catalog.out_of_stock"

    order_id: str
    sku: str
    requested: int
    available: int


class ReleaseStock(Event):
    event_type = "catalog.release_stock"

    order_id: str


class StockReleased(Event):
    event_type = "catalog.stock_released"

    order_id: str
