"""The cart module's events: a checkout, and the order lines it carries.

Adding, removing and changing quantities are the cart's private business and
publish nothing; checking out is what the rest of the shop hears about.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from eventbus import Event


class OrderLine(BaseModel):
    """A product in an order, priced when the user checked out."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sku: str
    quantity: int = Field(gt=0)
    unit_price_cents: int = Field(gt=0)


class CheckoutRequested(Event):
    event_type = "cart.checkout_requested"

    order_id: str
    user_id: str
    lines: tuple[OrderLine, ...] = Field(min_length=1)
    total_cents: int = Field(gt=0)
