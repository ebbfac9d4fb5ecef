"""Notifications: the emails the shop sends, recorded in ``sent`` instead of sent.

Async handlers, as a real mail client would be. Addresses are learnt from
``UserRegistered``, so the order events need carry only a user id. Every
handler is subscribed with ``idempotent=True``: an event delivered twice
(a redrive, a worker's reclaim) sends one email, by the bus's inbox.
"""

from __future__ import annotations

import asyncio
import dataclasses

from eventbus import HandlerRegistry

from ..checkout.events import OrderCancelled, OrderConfirmed
from ..payments.events import PaymentRefunded
from ..storage import MemoryStore, Store, Table
from ..users.events import LoginFailed, UserRegistered
from .events import EmailSent


@dataclasses.dataclass(frozen=True, slots=True)
class Email:
    to: str
    subject: str


class Notifications:
    """The notifications module: the addresses and the emails sent, in ``store``; async handlers."""

    def __init__(self, store: Store | None = None) -> None:
        self.store = store if store is not None else MemoryStore()
        self.addresses: Table[str] = self.store.table("addresses", str)  # user id -> email
        self._sent: Table[Email] = self.store.table("sent", Email)  # by number, in order

    @property
    def sent(self) -> list[Email]:
        """The emails sent, in order."""
        return list(self._sent.values())

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
        await self._send(event.user_id, "Welcome to the shop", to=event.email)

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

    async def _send(self, user_id: str, subject: str, *, to: str | None = None) -> None:
        """Send, then record the email (and ``to`` as the user's address) in one transaction.

        The SMTP round trip comes first, outside the transaction (an await
        inside it would hold the service's SQLite write lock): a service
        killed between the two sends that email again when the event comes
        again, as any mail client that cannot take part in the transaction.
        """
        email = Email(to or self.addresses.get(user_id, f"<unknown user {user_id}>"), subject)
        await asyncio.sleep(0)  # stands for the SMTP round trip
        with self.store.transaction():
            if to is not None:
                self.addresses.put(user_id, to)
            self._sent.put(f"{len(self._sent) + 1:06d}", email)
            self.store.publish(EmailSent(to=email.to, subject=email.subject))


def money(cents: int) -> str:
    return f"${cents // 100}.{cents % 100:02d}"
