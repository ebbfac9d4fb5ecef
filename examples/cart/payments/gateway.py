"""A fake payment gateway whose behaviour a scenario switches: accept, decline, flaky, down.

Like a real one (Stripe's idempotency keys), it charges a ``reference`` at
most once: charging it again returns the first payment's id. Nothing leaves
the process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import typing as t

Mode: t.TypeAlias = t.Literal["accept", "decline", "flaky", "down"]


class PaymentDeclinedError(Exception):
    """The card was refused: permanent, another attempt gets the same answer."""


class GatewayUnavailableError(ConnectionError):
    """The gateway could not be reached: transient, worth another attempt."""


@dataclasses.dataclass(frozen=True, slots=True)
class Charge:
    payment_id: str
    reference: str
    amount_cents: int


class FakeGateway:
    """Async, like a real HTTP client; ``calls`` counts every request it received."""

    def __init__(self) -> None:
        self.mode: Mode = "accept"
        self.failures_left = 0
        self.decline_reason = ""
        self.calls = 0
        self.charges: dict[str, Charge] = {}  # reference -> the one charge made for it
        self.refunded: set[str] = set()  # payment ids
        self._ids = itertools.count(1)

    # -- switches ------------------------------------------------------------------------

    def accept(self) -> None:
        self.mode = "accept"

    def decline(self, reason: str = "card declined") -> None:
        self.mode, self.decline_reason = "decline", reason

    def flaky(self, failures: int = 2) -> None:
        """Fail the next ``failures`` requests, then accept."""
        self.mode, self.failures_left = "flaky", failures

    def down(self) -> None:
        self.mode = "down"

    # -- the API ---------------------------------------------------------------------------

    async def charge(self, reference: str, amount_cents: int) -> str:
        """Charge once per reference and return the payment id."""
        await self._request()
        if self.mode == "decline":
            raise PaymentDeclinedError(self.decline_reason)
        charge = self.charges.get(reference)
        if charge is None:
            charge = Charge(f"pay-{next(self._ids)}", reference, amount_cents)
            self.charges[reference] = charge
        return charge.payment_id

    async def refund(self, payment_id: str) -> None:
        await self._request()
        if payment_id not in {charge.payment_id for charge in self.charges.values()}:
            raise ValueError(f"no payment {payment_id}")
        self.refunded.add(payment_id)

    async def _request(self) -> None:
        self.calls += 1
        await asyncio.sleep(0)  # stands for the network round trip
        if self.mode == "down":
            raise GatewayUnavailableError("payment gateway unreachable")
        if self.mode == "flaky" and self.failures_left > 0:
            self.failures_left -= 1
            raise GatewayUnavailableError("payment gateway timed out")
