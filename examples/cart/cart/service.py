"""Carts: what each logged-in user is about to buy, and the checkout that turns it into an order.

The cart learns everything it needs from events: sessions from
``UserLoggedIn``, products and prices from ``ProductListed``. Checking out
empties the cart into a pending order; a cancelled order puts its lines back,
so the user can try again.
"""

from __future__ import annotations

import collections.abc as c
import itertools
import logging

from eventbus import Event, HandlerRegistry

from ..catalog.events import ProductListed
from ..checkout.events import OrderCancelled, OrderConfirmed
from ..users.events import UserLoggedIn
from .events import CheckoutRequested, OrderLine

logger = logging.getLogger(__name__)


class NotLoggedInError(PermissionError):
    """A cart action came without a valid session token."""


class Carts:
    """The cart module: one cart per user; sync handlers."""

    def __init__(self, publish: c.Callable[[Event], object]) -> None:
        self._publish = publish
        self._sessions: dict[str, str] = {}  # session digest -> user id
        self.prices: dict[str, int] = {}  # sku -> price in cents, as listed
        self.carts: dict[str, dict[str, int]] = {}  # user id -> sku -> quantity
        self.pending: dict[str, CheckoutRequested] = {}  # order id -> checkout, until it ends
        self._order_numbers = itertools.count(1)

    def handlers(self) -> HandlerRegistry:
        """This module's handlers, for ``bus.include``, named ``cart.<event>``.

        The names are stable (dead letters and ``--handlers 'cart.*'`` use them).
        """
        handlers = HandlerRegistry()
        handlers.subscribe(self.on_user_logged_in, name="cart.user_logged_in")
        handlers.subscribe(self.on_product_listed, name="cart.product_listed")
        handlers.subscribe(self.on_order_confirmed, name="cart.order_confirmed")
        handlers.subscribe(self.on_order_cancelled, name="cart.order_cancelled")
        return handlers

    # -- user actions: each needs the session token that log-in returned --------------

    def add(self, token: str, sku: str, quantity: int = 1) -> None:
        cart = self._cart(token)
        if sku not in self.prices:
            raise ValueError(f"unknown product {sku!r}")
        _check_quantity(quantity)
        cart[sku] = cart.get(sku, 0) + quantity

    def change_quantity(self, token: str, sku: str, quantity: int) -> None:
        cart = self._cart(token)
        if sku not in cart:
            raise ValueError(f"{sku!r} is not in the cart; add it first")
        _check_quantity(quantity)
        cart[sku] = quantity

    def remove(self, token: str, sku: str) -> None:
        cart = self._cart(token)
        if cart.pop(sku, None) is None:
            raise ValueError(f"{sku!r} is not in the cart")

    def contents(self, token: str) -> dict[str, int]:
        return dict(self._cart(token))

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
        order_id = f"order-{next(self._order_numbers)}"
        checkout = CheckoutRequested(
            order_id=order_id,
            user_id=user_id,
            lines=lines,
            total_cents=sum(line.quantity * line.unit_price_cents for line in lines),
        )
        self.pending[order_id] = checkout
        del self.carts[user_id]
        self._publish(checkout)
        return order_id

    # -- handlers ------------------------------------------------------------------------

    def on_user_logged_in(self, event: UserLoggedIn) -> None:
        self._sessions[event.session_digest] = event.user_id

    def on_product_listed(self, event: ProductListed) -> None:
        self.prices[event.sku] = event.price_cents

    def on_order_confirmed(self, event: OrderConfirmed) -> None:
        self.pending.pop(event.order_id, None)

    def on_order_cancelled(self, event: OrderCancelled) -> None:
        """Put the lines back (once, however often the event comes) so the user can retry."""
        checkout = self.pending.pop(event.order_id, None)
        if checkout is None:
            return
        cart = self.carts.setdefault(checkout.user_id, {})
        for line in checkout.lines:
            cart[line.sku] = cart.get(line.sku, 0) + line.quantity

    # -- helpers -------------------------------------------------------------------------

    def _user(self, token: str) -> str:
        user_id = self._sessions.get(UserLoggedIn.digest(token))
        if user_id is None:
            raise NotLoggedInError("not logged in: log in first and pass the session token")
        return user_id

    def _cart(self, token: str) -> dict[str, int]:
        return self.carts.setdefault(self._user(token), {})


def _check_quantity(quantity: int) -> None:
    if quantity < 1:
        raise ValueError(f"quantity must be at least 1, got {quantity}; use remove() instead")
