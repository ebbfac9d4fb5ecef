"""Catalog: products with price and stock; reserves stock for an order, all lines or none.

Reservations are kept per order id, which makes both handlers idempotent: a
``ReserveStock`` delivered twice reserves once and announces
``StockReserved`` again; a ``ReleaseStock`` delivered twice releases once.
"""

from __future__ import annotations

import collections
import collections.abc as c
import dataclasses
import logging

from eventbus import Event, HandlerRegistry

from .events import (
    OutOfStock,
    ProductListed,
    ReleaseStock,
    ReserveStock,
    StockLine,
    StockReleased,
    StockReserved,
)

logger = logging.getLogger(__name__)


@dataclasses.dataclass(slots=True)
class Product:
    sku: str
    name: str
    price_cents: int
    stock: int


class Catalog:
    """The catalog module: products and reservations; sync handlers."""

    def __init__(self, publish: c.Callable[[Event], object]) -> None:
        self._publish = publish
        self.products: dict[str, Product] = {}
        #: order id -> the lines reserved for it, until released
        self.reservations: dict[str, tuple[StockLine, ...]] = {}
        self.released: set[str] = set()

    def handlers(self) -> HandlerRegistry:
        """This module's handlers, for ``bus.include``, named ``catalog.<event>``.

        The names are stable (dead letters and ``--handlers 'catalog.*'`` use them).
        """
        handlers = HandlerRegistry()
        handlers.subscribe(self.on_reserve_stock, name="catalog.reserve_stock")
        handlers.subscribe(self.on_release_stock, name="catalog.release_stock")
        return handlers

    # -- actions (the shop's staff) ----------------------------------------------------

    def add_product(self, sku: str, name: str, *, price_cents: int, stock: int) -> None:
        if sku in self.products:
            raise ValueError(f"product {sku} is already listed")
        if price_cents <= 0 or stock < 0:
            raise ValueError(f"{sku}: the price must be > 0 and the stock >= 0")
        self.products[sku] = Product(sku, name, price_cents, stock)
        self._publish(ProductListed(sku=sku, name=name, price_cents=price_cents))

    # -- handlers ----------------------------------------------------------------------

    def on_reserve_stock(self, event: ReserveStock) -> None:
        if event.order_id in self.reservations:  # delivered again: announce, reserve nothing
            self._publish(StockReserved(order_id=event.order_id))
            return
        if event.order_id in self.released:
            logger.warning("ignoring ReserveStock for %s: already released", event.order_id)
            return
        wanted = collections.Counter[str]()
        for line in event.lines:
            wanted[line.sku] += line.quantity
        for sku, quantity in wanted.items():
            product = self.products.get(sku)
            available = product.stock if product else 0
            if available < quantity:  # all lines or none: nothing was taken yet
                self._publish(
                    OutOfStock(
                        order_id=event.order_id, sku=sku, requested=quantity, available=available
                    )
                )
                return
        for line in event.lines:
            self.products[line.sku].stock -= line.quantity
        self.reservations[event.order_id] = event.lines
        self._publish(StockReserved(order_id=event.order_id))

    def on_release_stock(self, event: ReleaseStock) -> None:
        lines = self.reservations.pop(event.order_id, None)
        if lines is None and event.order_id not in self.released:
            logger.warning("ignoring ReleaseStock for %s: nothing reserved", event.order_id)
            return
        for line in lines or ():  # None: released before, announce again only
            self.products[line.sku].stock += line.quantity
        self.released.add(event.order_id)
        self._publish(StockReleased(order_id=event.order_id))
