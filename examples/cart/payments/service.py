"""Payments: charge and refund orders through the gateway; async handlers with retries.

- A decline is an answer, not a failure: the handler publishes
  ``PaymentDeclined`` and returns.
- An unreachable gateway is a failure worth retrying (``CHARGE_RETRY``).
  When the retries run out the charge becomes a dead letter; its
  ``on_give_up`` hook, ``charge_gave_up``, tells the rest of the shop with
  ``PaymentUnavailable``. Redriving the letter later charges.
- Payments are remembered per order id: a ``ChargePayment`` delivered twice
  charges once and announces the first outcome again.
"""

from __future__ import annotations

import collections.abc as c
import dataclasses
import logging
import typing as t

from eventbus import DeadLetter, Event, HandlerRegistry, RetryPolicy

from .events import (
    ChargePayment,
    PaymentDeclined,
    PaymentRefunded,
    PaymentSucceeded,
    PaymentUnavailable,
    RefundPayment,
)
from .gateway import FakeGateway, GatewayUnavailableError, PaymentDeclinedError

logger = logging.getLogger(__name__)

#: Only an unreachable gateway is worth another attempt; anything else (a bug, bad data)
#: is dead-lettered at once. Waits: 0.5 s, then 1 s.
CHARGE_RETRY = RetryPolicy(max_attempts=3, initial_delay=0.5, retry_on=(GatewayUnavailableError,))
REFUND_RETRY = CHARGE_RETRY

Status: t.TypeAlias = t.Literal["pending", "charged", "declined", "unavailable", "refunded"]


@dataclasses.dataclass(slots=True)
class Payment:
    order_id: str
    amount_cents: int
    status: Status = "pending"
    attempts: int = 0  # charge requests sent to the gateway
    payment_id: str | None = None
    detail: str = ""  # why it was declined or is unavailable


class Payments:
    """The payments module: one ``Payment`` per order; async handlers."""

    def __init__(self, publish: c.Callable[[Event], object], gateway: FakeGateway) -> None:
        self._publish = publish
        self.gateway = gateway
        self.payments: dict[str, Payment] = {}  # order id -> its payment

    def handlers(self) -> HandlerRegistry:
        """This module's handlers, for ``bus.include``, named ``payments.<event>``.

        The names are stable (dead letters and ``--handlers 'payments.*'`` use them).
        """
        handlers = HandlerRegistry()
        handlers.subscribe(
            self.on_charge_payment,
            name="payments.charge_payment",
            retry=CHARGE_RETRY,
            on_give_up=self.charge_gave_up,
        )
        handlers.subscribe(
            self.on_refund_payment, name="payments.refund_payment", retry=REFUND_RETRY
        )
        return handlers

    # -- handlers ------------------------------------------------------------------------

    async def on_charge_payment(self, event: ChargePayment) -> None:
        payment = self.payments.setdefault(
            event.order_id, Payment(event.order_id, event.amount_cents)
        )
        if self._announce_again(payment):
            return
        payment.attempts += 1
        try:
            payment_id = await self.gateway.charge(event.order_id, event.amount_cents)
        except PaymentDeclinedError as declined:
            payment.status, payment.detail = "declined", str(declined)
            self._publish(PaymentDeclined(order_id=event.order_id, reason=str(declined)))
            return
        # GatewayUnavailableError propagates: the bus retries, then dead-letters.
        payment.status, payment.payment_id, payment.detail = "charged", payment_id, ""
        self._publish(
            PaymentSucceeded(
                order_id=event.order_id, payment_id=payment_id, amount_cents=event.amount_cents
            )
        )

    async def on_refund_payment(self, event: RefundPayment) -> None:
        payment = self.payments.get(event.order_id)
        if payment is None or payment.payment_id != event.payment_id:
            raise ValueError(f"no payment {event.payment_id} for {event.order_id} to refund")
        if payment.status != "refunded":  # delivered again: announce, refund nothing
            await self.gateway.refund(event.payment_id)
            payment.status = "refunded"
        self._publish(
            PaymentRefunded(
                order_id=event.order_id,
                user_id=event.user_id,
                payment_id=event.payment_id,
                amount_cents=event.amount_cents,
            )
        )

    # -- hooks ---------------------------------------------------------------------------

    def charge_gave_up(self, letter: DeadLetter) -> None:
        """``on_give_up`` of ``on_charge_payment``: the charge gave up; say so, never go quiet."""
        event = letter.event
        assert isinstance(event, ChargePayment)  # the hook of the charge handler only
        payment = self.payments.get(event.order_id)
        error = f"{letter.error_type.rsplit('.', 1)[-1]}: {letter.error_message}"
        if payment is not None and payment.status == "pending":
            payment.status, payment.detail = "unavailable", error
        self._publish(PaymentUnavailable(order_id=event.order_id, error=error))

    # -- helpers -------------------------------------------------------------------------

    def _announce_again(self, payment: Payment) -> bool:
        """For a charge already settled, repeat its outcome instead of charging again."""
        if payment.status == "charged":
            assert payment.payment_id is not None
            self._publish(
                PaymentSucceeded(
                    order_id=payment.order_id,
                    payment_id=payment.payment_id,
                    amount_cents=payment.amount_cents,
                )
            )
        elif payment.status == "declined":
            self._publish(PaymentDeclined(order_id=payment.order_id, reason=payment.detail))
        elif payment.status == "refunded":
            logger.warning("not charging %s again: it was refunded", payment.order_id)
        else:
            return False
        return True
