"""Catalog: products with price and stock; reserves stock for an order, all lines or none.

Both handlers are subscribed ``idempotent=True`` (an event delivered twice is
skipped), and reservations are kept per order id besides: a second
``ReserveStock`` for an order (another event) reserves nothing and
announces ``StockReserved`` again; a second ``ReleaseStock`` releases nothing.
"""

from __future__ import annotations

import collections
import dataclasses
import logging

from eventbus import HandlerRegistry

from ..storage import MemoryStore, Store, Table, transactional
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
    """The catalog module: products and reservations in ``store``; sync handlers."""

    def __init__(self, store: Store | None = None) -> None:
        self.store = store if store is not None else MemoryStore()
        self.products: Table[Product] = self.store.table("products", Product)
        #: order id -> the lines reserved for it, until released
        self.reservations: Table[tuple[StockLine, ...]] = self.store.table(
            "reservations", tuple[StockLine, ...]
        )
        self.released: Table[bool] = self.store.table("released", bool)  # order ids

    def handlers(self) -> HandlerRegistry:
        """This module's handlers, for ``bus.include``, named ``catalog.<event>``.

        The names are stable (dead letters and ``--handlers 'catalog.*'`` use them).
        """
        handlers = HandlerRegistry()
        handlers.subscribe(self.on_reserve_stock, name="catalog.reserve_stock", idempotent=True)
        handlers.subscribe(self.on_release_stock, name="catalog.release_stock", idempotent=True)
        return handlers

    # -- actions (the shop's staff) ----------------------------------------------------

    @transactional
    def add_product(self, sku: str, name: str, *, price_cents: int, stock: int) -> None:
        if sku in self.products:
            raise ValueError(f"product {sku} is already listed")
        if price_cents <= 0 or stock < 0:
            raise ValueError(f"{sku}: the price must be > 0 and the stock >= 0")
        self.products.put(sku, Product(sku, name, price_cents, stock))
        self.store.publish(ProductListed(sku=sku, name=name, price_cents=price_cents))

    # -- handlers ----------------------------------------------------------------------

    @transactional
    def on_reserve_stock(self, event: ReserveStock) -> None:
        if event.order_id in self.reservations:  # delivered again: announce, reserve nothing
            self.store.publish(StockReserved(order_id=event.order_id))
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
                self.store.publish(
                    OutOfStock(
                        order_id=event.order_id, sku=sku, requested=quantity, available=available
                    )
                )
                return
        self._add_stock(event.lines, -1)
        self.reservations.put(event.order_id, event.lines)
        self.store.publish(StockReserved(order_id=event.order_id))

    @transactional
    def on_release_stock(self, event: ReleaseStock) -> None:
        lines = self.reservations.get(event.order_id)
        if lines is None and event.order_id not in self.released:
            logger.warning("ignoring ReleaseStock for %s: nothing reserved", event.order_id)
            return
        if lines is not None:  # None: released before, announce again only
            self._add_stock(lines, +1)
            self.reservations.delete(event.order_id)
        self.released.put(event.order_id, True)
        self.store.publish(StockReleased(order_id=event.order_id))

    def _add_stock(self, lines: tuple[StockLine, ...], sign: int) -> None:
        for line in lines:
            product = self.products[line.sku]
            product.stock += sign * line.quantity
            self.products.put(product.sku, product)
