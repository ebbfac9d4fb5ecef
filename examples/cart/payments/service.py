"""Payments: charge and refund orders through the gateway; async handlers with retries.

- A decline is an answer, not a failure: the handler publishes
  ``PaymentDeclined`` and returns.
- An unreachable gateway is a failure worth retrying (``CHARGE_RETRY``).
  When the retries run out the charge becomes a dead letter; its
  ``on_give_up`` hook, ``charge_gave_up``, tells the rest of the shop with
  ``PaymentUnavailable``. Redriving the letter later charges.
- Both handlers are idempotent (``idempotent=True``: an event delivered
  twice is skipped), and payments are remembered per order id besides: a
  second ``ChargePayment`` for an order charges nothing and announces the
  first outcome again. The gateway, like a real one, charges a reference
  once however often it is asked: a charge whose answer never arrived (the
  service died waiting) is asked again and returns the same payment.
"""

from __future__ import annotations

import dataclasses
import logging
import typing as t

from eventbus import DeadLetter, HandlerRegistry, RetryPolicy

from ..storage import MemoryStore, Store, Table, transactional
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

Status: t.TypeAlias = t.Literal["charged", "declined", "unavailable", "refunded"]


@dataclasses.dataclass(slots=True)
class Payment:
    order_id: str
    amount_cents: int
    status: Status
    payment_id: str | None = None
    detail: str = ""  # why it was declined or is unavailable


class Payments:
    """The payments module: one ``Payment`` per order in ``store``; async handlers."""

    def __init__(self, gateway: FakeGateway, store: Store | None = None) -> None:
        self.store = store if store is not None else MemoryStore()
        self.gateway = gateway
        self.payments: Table[Payment] = self.store.table("payments", Payment)  # by order id

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
            idempotent=True,
        )
        handlers.subscribe(
            self.on_refund_payment,
            name="payments.refund_payment",
            retry=REFUND_RETRY,
            idempotent=True,
        )
        return handlers

    # -- handlers ------------------------------------------------------------------------

    # Each handler calls the gateway first and opens its transaction after the answer:
    # an await inside the transaction would hold the service's SQLite write lock.

    async def on_charge_payment(self, event: ChargePayment) -> None:
        payment = self.payments.get(event.order_id)
        if payment is not None and payment.status != "unavailable":
            with self.store.transaction():
                self._announce_again(payment)  # settled before: repeat, never charge again
            return
        try:
            payment_id = await self.gateway.charge(event.order_id, event.amount_cents)
        except PaymentDeclinedError as declined:
            reason = str(declined)
            with self.store.transaction():
                self._save(Payment(event.order_id, event.amount_cents, "declined", detail=reason))
                self.store.publish(PaymentDeclined(order_id=event.order_id, reason=reason))
            return
        # GatewayUnavailableError propagates: the bus retries, then dead-letters.
        with self.store.transaction():
            self._save(Payment(event.order_id, event.amount_cents, "charged", payment_id))
            self.store.publish(
                PaymentSucceeded(
                    order_id=event.order_id, payment_id=payment_id, amount_cents=event.amount_cents
                )
            )

    async def on_refund_payment(self, event: RefundPayment) -> None:
        payment = self.payments.get(event.order_id)
        if payment is None or payment.payment_id != event.payment_id:
            raise ValueError(f"no payment {event.payment_id} for {event.order_id} to refund")
        if payment.status != "refunded":  # delivered again: announce, refund nothing
            await self.gateway.refund(event.payment_id)  # the gateway refunds a payment once
            payment.status = "refunded"
        with self.store.transaction():
            self._save(payment)
            self.store.publish(
                PaymentRefunded(
                    order_id=event.order_id,
                    user_id=event.user_id,
                    payment_id=event.payment_id,
                    amount_cents=event.amount_cents,
                )
            )

    # -- hooks ---------------------------------------------------------------------------

    @transactional
    def charge_gave_up(self, letter: DeadLetter) -> None:
        """``on_give_up`` of ``on_charge_payment``: the charge gave up; say so, never go quiet."""
        event = letter.event
        assert isinstance(event, ChargePayment)  # the hook of the charge handler only
        error = f"{letter.error_type.rsplit('.', 1)[-1]}: {letter.error_message}"
        payment = self.payments.get(event.order_id)
        if payment is None or payment.status == "unavailable":  # not settled meanwhile
            self._save(Payment(event.order_id, event.amount_cents, "unavailable", detail=error))
        self.store.publish(PaymentUnavailable(order_id=event.order_id, error=error))

    # -- helpers -------------------------------------------------------------------------

    def _announce_again(self, payment: Payment) -> None:
        """For a charge already settled, repeat its outcome instead of charging again."""
        if payment.status == "charged":
            assert payment.payment_id is not None
            self.store.publish(
                PaymentSucceeded(
                    order_id=payment.order_id,
                    payment_id=payment.payment_id,
                    amount_cents=payment.amount_cents,
                )
            )
        elif payment.status == "declined":
            self.store.publish(PaymentDeclined(order_id=payment.order_id, reason=payment.detail))
        else:
            logger.warning("not charging %s again: it was %s", payment.order_id, payment.status)

    def _save(self, payment: Payment) -> None:
        self.payments.put(payment.order_id, payment)
