"""Notifications: the emails the shop sends, recorded in ``outbox`` instead of sent.

Async handlers, as a real mail client would be. Addresses are learnt from
``UserRegistered``, so the order events need carry only a user id. Every
handler is subscribed with ``idempotent=True``: an event delivered twice
(a redrive, a worker's reclaim) sends one email, by the bus's inbox.
"""

from __future__ import annotations

import asyncio
import collections.abc as c
import dataclasses

from eventbus import Event, HandlerRegistry

from ..checkout.events import OrderCancelled, OrderConfirmed
from ..payments.events import PaymentRefunded
from ..users.events import LoginFailed, UserRegistered
from .events import EmailSent


@dataclasses.dataclass(frozen=True, slots=True)
class Email:
    to: str
    subject: str


class Notifications:
    """The notifications module: an outbox of emails; async handlers."""

    def __init__(self, publish: c.Callable[[Event], object]) -> None:
        self._publish = publish
        self.addresses: dict[str, str] = {}  # user id -> email
        self.outbox: list[Email] = []  # in the order sent

    def handlers(self) -> HandlerRegistry:
        """This module's handlers, for ``bus.include``, named ``notifications.<event>``.

        The names are stable (dead letters and ``--handlers 'notifications.*'`` use them).
        """
        handlers = HandlerRegistry()
        handlers.subscribe(
            self.on_user_registered, name="notifications.user_registered", idempotent=True
        )
        handlers.subscribe(self.on_login_failed, name="notifications.login_failed", idempotent=True)
        handlers.subscribe(
            self.on_order_confirmed, name="notifications.order_confirmed", idempotent=True
        )
        handlers.subscribe(
            self.on_order_cancelled, name="notifications.order_cancelled", idempotent=True
        )
        handlers.subscribe(
            self.on_payment_refunded, name="notifications.payment_refunded", idempotent=True
        )
        return handlers

    async def on_user_registered(self, event: UserRegistered) -> None:
        self.addresses[event.user_id] = event.email
        await self._send(event.user_id, "Welcome to the shop")

    async def on_login_failed(self, event: LoginFailed) -> None:
        """Warn the owner of a known address; never write to an address nobody registered."""
        user_id = next((u for u, email in self.addresses.items() if email == event.email), None)
        if user_id is not None:
            await self._send(user_id, "Someone failed to log in to your account")

    async def on_order_confirmed(self, event: OrderConfirmed) -> None:
        await self._send(
            event.user_id,
            f"Order {event.order_id} confirmed: {money(event.total_cents)} paid",
        )

    async def on_order_cancelled(self, event: OrderCancelled) -> None:
        await self._send(event.user_id, f"Order {event.order_id} cancelled: {event.reason}")

    async def on_payment_refunded(self, event: PaymentRefunded) -> None:
        await self._send(
            event.user_id, f"Refund for order {event.order_id}: {money(event.amount_cents)}"
        )

    async def _send(self, user_id: str, subject: str) -> None:
        email = Email(self.addresses.get(user_id, f"<unknown user {user_id}>"), subject)
        await asyncio.sleep(0)  # stands for the SMTP round trip
        self.outbox.append(email)
        self._publish(EmailSent(to=email.to, subject=email.subject))


def money(cents: int) -> str:
    return f"${cents // 100}.{cents % 100:02d}"
