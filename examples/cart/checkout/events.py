"""The checkout saga's events: how an order ends, and the operator's "give up on it"."""

from __future__ import annotations

from eventbus import Event


class OrderConfirmed(Event):
    event_type = "checkout.order_confirmed"

    order_id: str
    user_id: str
    total_cents: int
    payment_id: str


class OrderCancelled(Event):
    event_type = "checkout.order_cancelled"

    order_id: str
    user_id: str
    reason: str


class CheckoutAbandoned(Event):
    """An operator gave up on an order waiting for its payment: undo what was done."""

    event_type = "checkout.checkout_abandoned"

    order_id: str
    reason: str
