"""The checkout saga: reserve stock, charge, confirm; on failure, undo in reverse.

One :class:`Order` (a pydantic model) per order id holds the saga's state.
Forward, each reply moves the order one step::

    CheckoutRequested -> ReserveStock
    StockReserved     -> ChargePayment
    PaymentSucceeded  -> OrderConfirmed

When the order cannot go on (out of stock, payment declined, abandoned by an
operator), the saga compensates: it undoes the completed steps in reverse
order, one at a time, each after the previous one is acknowledged (refund
if charged, then release the stock if reserved), and cancels the order last.

A gateway that stays unreachable is not a reason to compensate: the charge
waits as a dead letter, and the order waits in ``awaiting_payment`` with its
stock reserved, until the letter is redriven (the charge then goes through)
or an operator calls :meth:`CheckoutSaga.abandon`.

Every handler is idempotent: an event that does not fit the order's state
(delivered twice, or late) changes nothing, except that a step acknowledged
after the order was given up (a charge redriven after abandoning) is undone.
"""

from __future__ import annotations

import collections.abc as c
import enum
import logging

from pydantic import BaseModel, ConfigDict

from eventbus import Event, HandlerRegistry

from ..cart.events import CheckoutRequested, OrderLine
from ..catalog.events import (
    OutOfStock,
    ReleaseStock,
    ReserveStock,
    StockLine,
    StockReleased,
    StockReserved,
)
from ..payments.events import (
    ChargePayment,
    PaymentDeclined,
    PaymentRefunded,
    PaymentSucceeded,
    PaymentUnavailable,
    RefundPayment,
)
from .events import CheckoutAbandoned, OrderCancelled, OrderConfirmed

logger = logging.getLogger(__name__)


class Status(enum.StrEnum):
    RESERVING = "reserving"  # ReserveStock sent
    CHARGING = "charging"  # stock reserved, ChargePayment sent
    AWAITING_PAYMENT = "awaiting_payment"  # the charge is a dead letter: redrive or abandon
    CONFIRMED = "confirmed"
    COMPENSATING = "compensating"  # undoing the completed steps, last first
    CANCELLED = "cancelled"


#: Where the order can still go forward; a failure there starts the compensation.
ACTIVE = frozenset({Status.RESERVING, Status.CHARGING, Status.AWAITING_PAYMENT})
#: Where the order was given up; a step acknowledged now is undone at once.
GIVEN_UP = frozenset({Status.COMPENSATING, Status.CANCELLED})


class Order(BaseModel):
    """The saga's state for one order."""

    model_config = ConfigDict(validate_assignment=True, extra="forbid")

    order_id: str
    user_id: str
    lines: tuple[OrderLine, ...]
    total_cents: int
    status: Status = Status.RESERVING
    reserved: bool = False  # the catalog holds stock for it
    charged: bool = False  # money was taken and not refunded
    payment_id: str | None = None
    refunded: bool = False
    undoing: str | None = None  # the compensation sent and not yet acknowledged
    reason: str | None = None  # why it was cancelled


class CheckoutSaga:
    """The checkout module: the orders and the saga's handlers (all sync)."""

    def __init__(self, publish: c.Callable[[Event], object]) -> None:
        self._publish = publish
        self.orders: dict[str, Order] = {}

    def handlers(self) -> HandlerRegistry:
        """This module's handlers, for ``bus.include``, named ``checkout.<event>``.

        The names are stable (dead letters and ``--handlers 'checkout.*'`` use them).
        """
        handlers = HandlerRegistry()
        handlers.subscribe(self.on_checkout_requested, name="checkout.checkout_requested")
        handlers.subscribe(self.on_stock_reserved, name="checkout.stock_reserved")
        handlers.subscribe(self.on_out_of_stock, name="checkout.out_of_stock")
        handlers.subscribe(self.on_payment_succeeded, name="checkout.payment_succeeded")
        handlers.subscribe(self.on_payment_declined, name="checkout.payment_declined")
        handlers.subscribe(self.on_payment_unavailable, name="checkout.payment_unavailable")
        handlers.subscribe(self.on_checkout_abandoned, name="checkout.checkout_abandoned")
        handlers.subscribe(self.on_payment_refunded, name="checkout.payment_refunded")
        handlers.subscribe(self.on_stock_released, name="checkout.stock_released")
        return handlers

    # -- operator action -------------------------------------------------------------------

    def abandon(self, order_id: str, reason: str = "payment unavailable") -> None:
        """Give up on an order that waits for its payment: publish ``CheckoutAbandoned``."""
        order = self.orders.get(order_id)
        if order is None:
            raise KeyError(f"no order {order_id!r}")
        if order.status not in ACTIVE:
            raise ValueError(f"order {order_id} is {order.status}: nothing to abandon")
        self._publish(CheckoutAbandoned(order_id=order_id, reason=reason))

    # -- forward -----------------------------------------------------------------------------

    def on_checkout_requested(self, event: CheckoutRequested) -> None:
        if event.order_id in self.orders:
            return  # delivered again
        self.orders[event.order_id] = Order(
            order_id=event.order_id,
            user_id=event.user_id,
            lines=event.lines,
            total_cents=event.total_cents,
        )
        lines = tuple(StockLine(sku=line.sku, quantity=line.quantity) for line in event.lines)
        self._publish(ReserveStock(order_id=event.order_id, lines=lines))

    def on_stock_reserved(self, event: StockReserved) -> None:
        order = self._order(event.order_id)
        if order is None or order.reserved:
            return
        order.reserved = True
        if order.status in GIVEN_UP:  # reserved after all, too late: give it back
            self._compensate(order)
            return
        order.status = Status.CHARGING
        self._publish(
            ChargePayment(
                order_id=order.order_id, user_id=order.user_id, amount_cents=order.total_cents
            )
        )

    def on_payment_succeeded(self, event: PaymentSucceeded) -> None:
        order = self._order(event.order_id)
        if order is None or order.charged or order.refunded:
            return
        order.charged, order.payment_id = True, event.payment_id
        if order.status in GIVEN_UP:  # charged after it was given up: refund
            self._compensate(order)
            return
        order.status = Status.CONFIRMED
        self._publish(
            OrderConfirmed(
                order_id=order.order_id,
                user_id=order.user_id,
                total_cents=order.total_cents,
                payment_id=event.payment_id,
            )
        )

    def on_payment_unavailable(self, event: PaymentUnavailable) -> None:
        order = self._order(event.order_id)
        if order is not None and order.status == Status.CHARGING:
            order.status = Status.AWAITING_PAYMENT  # no compensation: the letter may be redriven

    # -- reasons to give up --------------------------------------------------------------------

    def on_out_of_stock(self, event: OutOfStock) -> None:
        self._give_up(
            event.order_id,
            f"out of stock: {event.sku} ({event.requested} wanted, {event.available} left)",
        )

    def on_payment_declined(self, event: PaymentDeclined) -> None:
        self._give_up(event.order_id, f"payment declined ({event.reason})")

    def on_checkout_abandoned(self, event: CheckoutAbandoned) -> None:
        self._give_up(event.order_id, f"abandoned ({event.reason})")

    # -- compensation ---------------------------------------------------------------------------

    def on_payment_refunded(self, event: PaymentRefunded) -> None:
        order = self._order(event.order_id)
        if order is None or order.undoing != "refund":
            return
        order.charged, order.refunded, order.undoing = False, True, None
        self._compensate(order)

    def on_stock_released(self, event: StockReleased) -> None:
        order = self._order(event.order_id)
        if order is None or order.undoing != "release":
            return
        order.reserved, order.undoing = False, None
        self._compensate(order)

    def _give_up(self, order_id: str, reason: str) -> None:
        order = self._order(order_id)
        if order is None or order.status not in ACTIVE:
            return  # delivered again, or too late to matter
        order.status, order.reason = Status.COMPENSATING, reason
        self._compensate(order)

    def _compensate(self, order: Order) -> None:
        """Undo the last completed step still standing; cancel the order when none is left.

        The steps were reserve, then charge: so refund first, then release.
        Each undo is acknowledged by an event that calls this again.
        """
        if order.undoing is not None:
            return  # an undo is on its way; its acknowledgement continues from here
        if order.charged:
            assert order.payment_id is not None
            order.undoing = "refund"
            self._publish(
                RefundPayment(
                    order_id=order.order_id,
                    user_id=order.user_id,
                    payment_id=order.payment_id,
                    amount_cents=order.total_cents,
                )
            )
        elif order.reserved:
            order.undoing = "release"
            self._publish(ReleaseStock(order_id=order.order_id))
        elif order.status != Status.CANCELLED:
            order.status = Status.CANCELLED
            self._publish(
                OrderCancelled(
                    order_id=order.order_id,
                    user_id=order.user_id,
                    reason=order.reason or "cancelled",
                )
            )

    def _order(self, order_id: str) -> Order | None:
        order = self.orders.get(order_id)
        if order is None:
            logger.warning("ignoring an event about %s: no such order", order_id)
        return order
