"""The payments module's events: charge and refund requests, and their outcomes.

``ChargePayment`` and ``RefundPayment`` are requests addressed to payments
(the checkout saga publishes them). A decline is an answer
(``PaymentDeclined``); a gateway that stays unreachable after the retries is
not (``PaymentUnavailable``: the charge waits as a dead letter).
"""

from __future__ import annotations

from pydantic import Field

from eventbus import Event


class ChargePayment(Event):
    event_type = "payments.charge_payment"

    order_id: str
    user_id: str
    amount_cents: int = Field(gt=0)


class PaymentSucceeded(Event):
    event_type = "payments.payment_succeeded"

    order_id: str
    payment_id: str
    amount_cents: int


class PaymentDeclined(Event):
    event_type = "payments.payment_declined"

    order_id: str
    reason: str


class PaymentUnavailable(Event):
    event_type = "payments.payment_unavailable"

    order_id: str
    error: str


class RefundPayment(Event):
    event_type = "payments.refund_payment"

    order_id: str
    user_id: str
    payment_id: str
    amount_cents: int = Field(gt=0)


class PaymentRefunded(Event):
    event_type = "payments.payment_refunded"

    order_id: str
    user_id: str
    payment_id: str
    amount_cents: int
