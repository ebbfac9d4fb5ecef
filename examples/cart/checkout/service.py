"""The checkout saga: reserve stock, charge, confirm; on failure, undo what was done.

One :data:`Order` per order id holds the saga's state: a model per step,
holding only what that step can have (a confirmed order has a payment id;
an order still charging has none), so a state that cannot happen cannot be
written down either. Forward, each reply moves the order one step::

    CheckoutRequested -> Reserving        -> ReserveStock
    StockReserved     -> Charging         -> ChargePayment
    PaymentSucceeded  -> Confirmed        -> OrderConfirmed

When the order cannot go on (out of stock, payment declined, abandoned by an
operator), the saga compensates: an order given up before it was charged
holds at most its stock, so it releases the stock (``Compensating``) and,
once the catalog acknowledges, cancels the order (``Cancelled``). A step
acknowledged after the order was given up (a charge redriven after
abandoning, a reservation that arrives late) is undone at once: a late
charge refunded, a late reservation released.

A gateway that stays unreachable is not a reason to compensate: the charge
waits as a dead letter, and the order waits in ``AwaitingPayment`` with its
stock reserved, until the letter is redriven (the charge then goes through)
or an operator calls :meth:`CheckoutSaga.abandon`.

An event that does not fit the order's step (delivered twice, or late)
changes nothing, except as above.
"""

from __future__ import annotations

import enum
import logging
import typing as t

from pydantic import BaseModel, ConfigDict, Field, model_validator

from eventbus import HandlerRegistry

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
from ..storage import MemoryStore, Store, Table, transactional
from .events import CheckoutAbandoned, OrderCancelled, OrderConfirmed

logger = logging.getLogger(__name__)


class Status(enum.StrEnum):
    """What the demo prints for an order's step."""

    RESERVING = "reserving"
    CHARGING = "charging"
    AWAITING_PAYMENT = "awaiting_payment"
    CONFIRMED = "confirmed"
    COMPENSATING = "compensating"
    CANCELLED = "cancelled"


class _Step(BaseModel):
    """What every step of an order knows: the order itself."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    status: t.ClassVar[Status]

    order_id: str
    user_id: str
    lines: tuple[OrderLine, ...]
    total_cents: int

    def but(self, **changes: t.Any) -> t.Self:
        """This step with ``changes``, validated (``model_copy`` would not check them)."""
        return type(self).model_validate({**dict(self), **changes})

    def to(self, step: type[S], **fields: t.Any) -> S:
        """This order, moved to ``step`` with that step's own ``fields``."""
        return step(
            order_id=self.order_id,
            user_id=self.user_id,
            lines=self.lines,
            total_cents=self.total_cents,
            **fields,
        )


S = t.TypeVar("S", bound=_Step)


class Reserving(_Step):
    """ReserveStock sent; nothing held yet."""

    status = Status.RESERVING
    step: t.Literal["reserving"] = "reserving"


class Charging(_Step):
    """The stock is held; ChargePayment sent."""

    status = Status.CHARGING
    step: t.Literal["charging"] = "charging"


class AwaitingPayment(_Step):
    """The stock is held; the charge is a dead letter: redrive it, or abandon the order."""

    status = Status.AWAITING_PAYMENT
    step: t.Literal["awaiting_payment"] = "awaiting_payment"


class Confirmed(_Step):
    """Stock held and paid: done."""

    status = Status.CONFIRMED
    step: t.Literal["confirmed"] = "confirmed"
    payment_id: str


class _GivenUp(_Step):
    """Given up for ``reason``; the undos sent and not acknowledged yet."""

    reason: str
    releasing: bool = False  # ReleaseStock sent
    refunding: str | None = None  # the payment id of a RefundPayment sent
    refunded: bool = False  # a refund was acknowledged

    @model_validator(mode="after")
    def _one_charge(self) -> t.Self:
        if self.refunding is not None and self.refunded:
            raise ValueError("an order is charged once: it cannot be refunded and refunding")
        return self


class Compensating(_GivenUp):
    """Undoing what was done; the order is cancelled once the last undo is acknowledged."""

    status = Status.COMPENSATING
    step: t.Literal["compensating"] = "compensating"

    @model_validator(mode="after")
    def _undoing(self) -> t.Self:
        if not self.releasing and self.refunding is None:
            raise ValueError("a compensating order is undoing something: else it is cancelled")
        return self


class Cancelled(_GivenUp):
    """OrderCancelled was published; a late step is undone at once (and is shown here)."""

    status = Status.CANCELLED
    step: t.Literal["cancelled"] = "cancelled"


#: The saga's state for one order: one of its steps.
Order: t.TypeAlias = t.Annotated[
    Reserving | Charging | AwaitingPayment | Confirmed | Compensating | Cancelled,
    Field(discriminator="step"),
]
#: Where the order can still go forward; a failure there starts the compensation.
ACTIVE = (Reserving, Charging, AwaitingPayment)
GivenUp: t.TypeAlias = Compensating | Cancelled


class CheckoutSaga:
    """The checkout module: the orders and the saga's handlers (all sync).

    Its state lives in ``store`` (a fresh :class:`MemoryStore` by default);
    it publishes with ``store.publish``.
    """

    def __init__(self, store: Store | None = None) -> None:
        self.store = store if store is not None else MemoryStore()
        self.orders: Table[Order] = self.store.table("orders", Order)

    def handlers(self) -> HandlerRegistry:
        """This module's handlers, for ``bus.include``, named ``checkout.<event>``.

        The names are stable (dead letters and ``--handlers 'checkout.*'`` use them).
        """
        handlers = HandlerRegistry()
        for name in (
            "checkout_requested",
            "stock_reserved",
            "out_of_stock",
            "payment_succeeded",
            "payment_declined",
            "payment_unavailable",
            "checkout_abandoned",
            "payment_refunded",
            "stock_released",
        ):
            handlers.subscribe(
                getattr(self, f"on_{name}"), name=f"checkout.{name}", idempotent=True
            )
        return handlers

    # -- operator action -------------------------------------------------------------------

    @transactional
    def abandon(self, order_id: str, reason: str = "payment unavailable") -> None:
        """Give up on an order that waits for its payment: publish ``CheckoutAbandoned``."""
        order = self.orders.get(order_id)
        if order is None:
            raise KeyError(f"no order {order_id!r}")
        if not isinstance(order, ACTIVE):
            raise ValueError(f"order {order_id} is {order.status}: nothing to abandon")
        self.store.publish(CheckoutAbandoned(order_id=order_id, reason=reason))

    # -- forward -----------------------------------------------------------------------------

    @transactional
    def on_checkout_requested(self, event: CheckoutRequested) -> None:
        if event.order_id in self.orders:
            return  # delivered again
        self._save(
            Reserving(
                order_id=event.order_id,
                user_id=event.user_id,
                lines=event.lines,
                total_cents=event.total_cents,
            )
        )
        lines = tuple(StockLine(sku=line.sku, quantity=line.quantity) for line in event.lines)
        self.store.publish(ReserveStock(order_id=event.order_id, lines=lines))

    @transactional
    def on_stock_reserved(self, event: StockReserved) -> None:
        match self._order(event.order_id):
            case Reserving() as order:
                self._save(order.to(Charging))
                self.store.publish(
                    ChargePayment(
                        order_id=order.order_id,
                        user_id=order.user_id,
                        amount_cents=order.total_cents,
                    )
                )
            case Compensating() | Cancelled() as order if not order.releasing:
                self._release(order)  # reserved after all, too late: give it back

    @transactional
    def on_payment_succeeded(self, event: PaymentSucceeded) -> None:
        match self._order(event.order_id):
            case Charging() | AwaitingPayment() as order:
                self._save(order.to(Confirmed, payment_id=event.payment_id))
                self.store.publish(
                    OrderConfirmed(
                        order_id=order.order_id,
                        user_id=order.user_id,
                        total_cents=order.total_cents,
                        payment_id=event.payment_id,
                    )
                )
            case Compensating() | Cancelled() as order if not (order.refunding or order.refunded):
                # Charged after it was given up (a charge redriven after abandoning): refund.
                self._save(order.but(refunding=event.payment_id))
                self.store.publish(
                    RefundPayment(
                        order_id=order.order_id,
                        user_id=order.user_id,
                        payment_id=event.payment_id,
                        amount_cents=order.total_cents,
                    )
                )

    @transactional
    def on_payment_unavailable(self, event: PaymentUnavailable) -> None:
        match self._order(event.order_id):
            case Charging() as order:  # no compensation: the letter may be redriven
                self._save(order.to(AwaitingPayment))

    # -- reasons to give up --------------------------------------------------------------------

    @transactional
    def on_out_of_stock(self, event: OutOfStock) -> None:
        self._give_up(
            event.order_id,
            f"out of stock: {event.sku} ({event.requested} wanted, {event.available} left)",
        )

    @transactional
    def on_payment_declined(self, event: PaymentDeclined) -> None:
        self._give_up(event.order_id, f"payment declined ({event.reason})")

    @transactional
    def on_checkout_abandoned(self, event: CheckoutAbandoned) -> None:
        self._give_up(event.order_id, f"abandoned ({event.reason})")

    # -- compensation ---------------------------------------------------------------------------

    @transactional
    def on_payment_refunded(self, event: PaymentRefunded) -> None:
        match self._order(event.order_id):
            case Compensating() | Cancelled() as order if order.refunding == event.payment_id:
                self._settle(order, refunding=None, refunded=True)

    @transactional
    def on_stock_released(self, event: StockReleased) -> None:
        match self._order(event.order_id):
            case Compensating() | Cancelled() as order if order.releasing:
                self._settle(order, releasing=False)

    def _give_up(self, order_id: str, reason: str) -> None:
        """Undo what an active order holds (its stock, if reserved), then cancel it."""
        match self._order(order_id):
            case Reserving() as order:  # nothing held: cancelled at once
                self._cancel(order, reason, refunded=False)
            case Charging() | AwaitingPayment() as order:  # the stock is held, not the money
                self._release(order.to(Compensating, reason=reason, releasing=True))
            case _:
                pass  # delivered again, or too late to matter

    def _release(self, order: GivenUp) -> None:
        self._save(order.but(releasing=True))
        self.store.publish(ReleaseStock(order_id=order.order_id))

    def _settle(self, order: GivenUp, **undone: t.Any) -> None:
        """Record an undo acknowledged; a compensating order with none left is cancelled."""
        left = {**dict(order), **undone}
        if isinstance(order, Compensating) and not left["releasing"] and not left["refunding"]:
            self._cancel(order, order.reason, refunded=left["refunded"])
        else:
            self._save(order.but(**undone))

    def _cancel(self, order: _Step, reason: str, *, refunded: bool) -> None:
        """The order's last step: cancelled, and announced (once: a cancelled order stays so)."""
        self._save(order.to(Cancelled, reason=reason, refunded=refunded))
        self.store.publish(
            OrderCancelled(order_id=order.order_id, user_id=order.user_id, reason=reason)
        )

    def _save(self, order: Order) -> None:
        self.orders.put(order.order_id, order)

    def _order(self, order_id: str) -> Order | None:
        order = self.orders.get(order_id)
        if order is None:
            logger.warning("ignoring an event about %s: no such order", order_id)
        return order
