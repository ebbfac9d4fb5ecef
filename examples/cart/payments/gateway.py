"""A fake payment gateway whose behaviour a scenario switches: accept, decline, flaky, down.

Like a real one (Stripe's idempotency keys), it charges a ``reference`` at
most once: charging it again returns the first payment's id. It is another
company's system: its state is in a store of its own (a file of its own
when the shop runs as services), changed at once by each request and never
rolled back with the payments module's transaction. Nothing leaves the
machine.
"""

from __future__ import annotations

import asyncio
import typing as t

from pydantic import BaseModel

from ..storage import MemoryStore, Store

Mode: t.TypeAlias = t.Literal["accept", "decline", "flaky", "down"]


class PaymentDeclinedError(Exception):
    """The card was refused: permanent, another attempt gets the same answer."""


class GatewayUnavailableError(ConnectionError):
    """The gateway could not be reached: transient, worth another attempt."""


class Charge(BaseModel):
    payment_id: str
    reference: str
    amount_cents: int


class GatewayState(BaseModel):
    mode: Mode = "accept"
    failures_left: int = 0
    decline_reason: str = ""
    calls: int = 0  # every request received
    charge_requests: dict[str, int] = {}  # reference -> charge requests received for it
    charges: dict[str, Charge] = {}  # reference -> the one charge made for it
    refunded: list[str] = []  # payment ids
    next_id: int = 1
    # The next charge is made, and then its caller never hears back:
    lose_answer: bool = False  # ... it gets an error instead (the in-process shop's stand-in)
    hang: bool = False  # ... the request hangs until released (the services demo kills it)
    hanging: str | None = None  # the reference of a charge request hanging now


class FakeGateway:
    """Async, like a real HTTP client; its state in ``store`` (a fresh one by default)."""

    def __init__(self, store: Store | None = None) -> None:
        self.store = store if store is not None else MemoryStore()
        self._table = self.store.table("gateway", GatewayState)

    # -- what it did, for the demo and the tests -------------------------------------------

    @property
    def state(self) -> GatewayState:
        return self._table.get("state") or GatewayState()

    @property
    def calls(self) -> int:
        return self.state.calls

    @property
    def charges(self) -> dict[str, Charge]:
        return self.state.charges

    @property
    def refunded(self) -> set[str]:
        return set(self.state.refunded)

    def charge_requests(self, reference: str) -> int:
        """How many charge requests came for ``reference`` (the caller's attempts)."""
        return self.state.charge_requests.get(reference, 0)

    # -- switches ------------------------------------------------------------------------

    def accept(self) -> None:
        self._change(mode="accept")

    def decline(self, reason: str = "card declined") -> None:
        self._change(mode="decline", decline_reason=reason)

    def flaky(self, failures: int = 2) -> None:
        """Fail the next ``failures`` requests, then accept."""
        self._change(mode="flaky", failures_left=failures)

    def down(self) -> None:
        self._change(mode="down")

    def lose_next_answer(self) -> None:
        """Make the next charge, then answer with an error, as if the answer was lost."""
        self._change(lose_answer=True)

    def hang_next_charge(self) -> None:
        """Make the next charge, then hang the request until :meth:`release` (or a kill)."""
        self._change(hang=True)

    def release(self) -> None:
        """Let a hanging request go on (its caller, if alive, gets its answer)."""
        self._change(hanging=None)

    # -- the API ---------------------------------------------------------------------------

    async def charge(self, reference: str, amount_cents: int) -> str:
        """Charge once per reference and return the payment id."""
        await asyncio.sleep(0)  # stands for the network round trip
        with self.store.transaction():  # the request is counted, whatever its answer
            state = self._request()
            state.charge_requests[reference] = state.charge_requests.get(reference, 0) + 1
            error: Exception | None = self._failure(state)
            if error is None and state.mode == "decline":
                error = PaymentDeclinedError(state.decline_reason)
            charge = state.charges.get(reference)
            if error is None and charge is None:
                charge = Charge(
                    payment_id=f"pay-{state.next_id}",
                    reference=reference,
                    amount_cents=amount_cents,
                )
                state.charges[reference], state.next_id = charge, state.next_id + 1
            lost, hang = error is None and state.lose_answer, error is None and state.hang
            if lost:
                state.lose_answer = False
            if hang:
                state.hang, state.hanging = False, reference
            self._table.put("state", state)
        if error is not None:
            raise error
        if lost:
            raise GatewayUnavailableError("payment gateway answer lost (the charge was made)")
        # Polled: the flag is in the gateway's file, set by another process.
        while self.state.hanging == reference:  # noqa: ASYNC110  (until released, or killed)
            await asyncio.sleep(0.02)
        assert charge is not None
        return charge.payment_id

    async def refund(self, payment_id: str) -> None:
        await asyncio.sleep(0)
        with self.store.transaction():
            state = self._request()
            error: Exception | None = self._failure(state)
            if error is None and payment_id not in {c.payment_id for c in state.charges.values()}:
                error = ValueError(f"no payment {payment_id}")
            if error is None and payment_id not in state.refunded:
                state.refunded.append(payment_id)
            self._table.put("state", state)
        if error is not None:
            raise error

    def _request(self) -> GatewayState:
        state = self.state
        state.calls += 1
        return state

    @staticmethod
    def _failure(state: GatewayState) -> GatewayUnavailableError | None:
        """The error of a request while the gateway is down or flaky (counting a flaky one)."""
        if state.mode == "down":
            return GatewayUnavailableError("payment gateway unreachable")
        if state.mode == "flaky" and state.failures_left > 0:
            state.failures_left -= 1
            return GatewayUnavailableError("payment gateway timed out")
        return None

    def _change(self, **fields: t.Any) -> None:
        with self.store.transaction():
            self._table.put("state", self.state.model_copy(update=fields))
