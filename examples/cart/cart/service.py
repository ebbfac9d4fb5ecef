"""Carts: what each logged-in user is about to buy, and the checkout that turns it into an order.

The cart learns everything it needs from events: sessions from
``UserLoggedIn``, products and prices from ``ProductListed``. Checking out
empties the cart into a pending order; a cancelled order puts its lines back,
so the user can try again.
"""

from __future__ import annotations

import logging

from eventbus import HandlerRegistry

from ..catalog.events import ProductListed
from ..checkout.events import OrderCancelled, OrderConfirmed
from ..storage import MemoryStore, Store, Table, transactional
from ..users.events import UserLoggedIn
from .events import CheckoutRequested, OrderLine

logger = logging.getLogger(__name__)


class NotLoggedInError(PermissionError):
    """A cart action came without a valid session token."""


class Carts:
    """The cart module: one cart per user, in ``store``; sync handlers."""

    def __init__(self, store: Store | None = None) -> None:
        self.store = store if store is not None else MemoryStore()
        self._sessions: Table[str] = self.store.table("sessions", str)  # digest -> user id
        self.prices: Table[int] = self.store.table("prices", int)  # sku -> cents, as listed
        self.carts: Table[dict[str, int]] = self.store.table("carts", dict[str, int])  # by user
        #: order id -> its checkout, until the order ends
        self.pending: Table[CheckoutRequested] = self.store.table("pending", CheckoutRequested)
        self._orders_made: Table[int] = self.store.table("orders_made", int)

    def handlers(self) -> HandlerRegistry:
        """This module's handlers, for ``bus.include``, named ``cart.<event>``.

        The names are stable (dead letters and ``--handlers 'cart.*'`` use them).
        """
        handlers = HandlerRegistry()
        handlers.subscribe(self.on_user_logged_in, name="cart.user_logged_in", idempotent=True)
        handlers.subscribe(self.on_product_listed, name="cart.product_listed", idempotent=True)
        handlers.subscribe(self.on_order_confirmed, name="cart.order_confirmed", idempotent=True)
        handlers.subscribe(self.on_order_cancelled, name="cart.order_cancelled", idempotent=True)
        return handlers

    # -- user actions: each needs the session token that log-in returned --------------

    @transactional
    def add(self, token: str, sku: str, quantity: int = 1) -> None:
        user_id, cart = self._cart(token)
        if sku not in self.prices:
            raise ValueError(f"unknown product {sku!r}")
        _check_quantity(quantity)
        cart[sku] = cart.get(sku, 0) + quantity
        self.carts.put(user_id, cart)

    @transactional
    def change_quantity(self, token: str, sku: str, quantity: int) -> None:
        user_id, cart = self._cart(token)
        if sku not in cart:
            raise ValueError(f"{sku!r} is not in the cart; add it first")
        _check_quantity(quantity)
        cart[sku] = quantity
        self.carts.put(user_id, cart)

    @transactional
    def remove(self, token: str, sku: str) -> None:
        user_id, cart = self._cart(token)
        if cart.pop(sku, None) is None:
            raise ValueError(f"{sku!r} is not in the cart")
        self.carts.put(user_id, cart)

    def contents(self, token: str) -> dict[str, int]:
        return self._cart(token)[1]

    @transactional
    def checkout(self, token: str) -> str:
        """Turn the cart into an order and publish ``CheckoutRequested``; return the order id."""
        user_id = self._user(token)
        cart = self.carts.get(user_id)
        if not cart:
            raise ValueError("the cart is empty; add a product first")
        lines = tuple(
            OrderLine(sku=sku, quantity=quantity, unit_price_cents=self.prices[sku])
            for sku, quantity in cart.items()
        )
        number = self._orders_made.get("count", 0) + 1
        self._orders_made.put("count", number)
        order_id = f"order-{number}"
        checkout = CheckoutRequested(
            order_id=order_id,
            user_id=user_id,
            lines=lines,
            total_cents=sum(line.quantity * line.unit_price_cents for line in lines),
        )
        self.pending.put(order_id, checkout)
        self.carts.delete(user_id)
        self.store.publish(checkout)
        return order_id

    # -- handlers ------------------------------------------------------------------------

    @transactional
    def on_user_logged_in(self, event: UserLoggedIn) -> None:
        self._sessions.put(event.session_digest, event.user_id)

    @transactional
    def on_product_listed(self, event: ProductListed) -> None:
        self.prices.put(event.sku, event.price_cents)

    @transactional
    def on_order_confirmed(self, event: OrderConfirmed) -> None:
        self.pending.delete(event.order_id)

    @transactional
    def on_order_cancelled(self, event: OrderCancelled) -> None:
        """Put the lines back (once, however often the event comes) so the user can retry."""
        checkout = self.pending.get(event.order_id)
        if checkout is None:
            return
        self.pending.delete(event.order_id)
        cart = self.carts.get(checkout.user_id, {})
        for line in checkout.lines:
            cart[line.sku] = cart.get(line.sku, 0) + line.quantity
        self.carts.put(checkout.user_id, cart)

    # -- helpers -------------------------------------------------------------------------

    def _user(self, token: str) -> str:
        user_id = self._sessions.get(UserLoggedIn.digest(token))
        if user_id is None:
            raise NotLoggedInError("not logged in: log in first and pass the session token")
        return user_id

    def _cart(self, token: str) -> tuple[str, dict[str, int]]:
        """The user's id and a copy of their cart (``carts.put`` it back once changed)."""
        user_id = self._user(token)
        return user_id, self.carts.get(user_id, {})


def _check_quantity(quantity: int) -> None:
    if quantity < 1:
        raise ValueError(f"quantity must be at least 1, got {quantity}; use remove() instead")
