"""The cart example's scenarios, each played in sync and in async mode, and the state they leave.

The two modes run the same scenario code; what differs is the dispatch path
(``bus.publish`` with the async handlers on the bus's private loop, or
``await bus.publish_async`` on the shop's loop) and so where retries wait.
"""

from __future__ import annotations

import asyncio
import collections.abc as c

import pytest
from examples.cart.app import Mode, Shop
from examples.cart.cart.events import OrderLine
from examples.cart.checkout.service import (
    AwaitingPayment,
    Cancelled,
    Confirmed,
    Order,
    Status,
)
from examples.cart.payments.events import ChargePayment, PaymentUnavailable
from examples.cart.scenarios import SCENARIOS, charge_letter, shopper

from eventbus.testing import assert_no_dead_letters
from eventbus.tracing import Trace, TracedEvent
from tests.clocks import TestClock

pytestmark = pytest.mark.usefixtures("cheap_passwords")

MODES: list[Mode] = ["sync", "async"]


class Waits:
    """Records the retry waits of each path instead of sleeping."""

    def __init__(self) -> None:
        self.sync: list[float] = []
        self.async_: list[float] = []

    def sleep(self, delay: float) -> None:
        self.sync.append(delay)

    async def async_sleep(self, delay: float) -> None:
        self.async_.append(delay)


@pytest.fixture
def waits() -> Waits:
    return Waits()


@pytest.fixture(params=MODES)
def shop(request: pytest.FixtureRequest, waits: Waits) -> c.Iterator[Shop]:
    with Shop(
        mode=request.param, clock=TestClock(sleep=waits.sleep, sleep_async=waits.async_sleep)
    ) as shop:
        yield shop


def stock(shop: Shop) -> dict[str, int]:
    return {sku: product.stock for sku, product in shop.catalog.products.items()}


def emails(shop: Shop) -> list[str]:
    return [f"{email.to}: {email.subject}" for email in shop.notifications.sent]


def the_order(shop: Shop) -> tuple[str, Status]:
    [order] = shop.checkout.orders.values()
    return order.order_id, order.status


def order(shop: Shop, order_id: str = "order-1") -> Order:
    return shop.checkout.orders[order_id]


def cancelled(shop: Shop, order_id: str = "order-1") -> Cancelled:
    """The order, which must be cancelled."""
    found = order(shop, order_id)
    assert isinstance(found, Cancelled), found
    return found


def walk(events: c.Iterable[TracedEvent]) -> c.Iterator[TracedEvent]:
    for traced in events:
        yield traced
        yield from walk(traced.children)


OPENING = {"BOOK": 5, "MUG": 10, "LAMP": 1}


def test_the_scenarios_are_the_ones_the_issue_names_plus_the_refund() -> None:
    assert list(SCENARIOS) == [
        "happy-path",
        "payment-declined",
        "flaky-payment",
        "gateway-down",
        "gateway-down-for-good",
        "late-charge-refunded",
        "out-of-stock",
        "payments-killed",
    ]


def test_happy_path(shop: Shop, waits: Waits) -> None:
    SCENARIOS["happy-path"].play(shop)
    assert stock(shop) == {"BOOK": 4, "MUG": 8, "LAMP": 1}
    assert the_order(shop) == ("order-1", Status.CONFIRMED)
    assert order(shop) == Confirmed(
        order_id="order-1",
        user_id="u-1",
        lines=(
            OrderLine(sku="BOOK", quantity=1, unit_price_cents=4500),
            OrderLine(sku="MUG", quantity=2, unit_price_cents=1200),
        ),
        total_cents=6900,
        payment_id="pay-1",
    )
    payment = shop.payments.payments["order-1"]
    assert (payment.status, payment.amount_cents) == ("charged", 6900)
    assert payment.payment_id == "pay-1"
    assert shop.gateway.charge_requests("order-1") == 1
    assert emails(shop) == [
        "ada@example.com: Welcome to the shop",
        "ada@example.com: Order order-1 confirmed: $69.00 paid",
    ]
    assert_no_dead_letters(shop.bus)
    assert dict(shop.carts.pending) == {}
    assert dict(shop.carts.carts) == {}
    assert list(shop.catalog.reservations) == ["order-1"]  # the stock sold stays taken
    assert waits.sync == waits.async_ == []


def test_payment_declined_restores_the_stock_and_the_cart(shop: Shop) -> None:
    SCENARIOS["payment-declined"].play(shop)
    assert stock(shop) == OPENING
    assert the_order(shop) == ("order-1", Status.CANCELLED)
    given_up = cancelled(shop)
    assert given_up.reason == "payment declined (insufficient funds)"
    assert (given_up.releasing, given_up.refunding, given_up.refunded) == (False, None, False)
    assert dict(shop.catalog.reservations) == {}
    assert "order-1" in shop.catalog.released
    payment = shop.payments.payments["order-1"]
    assert (payment.status, payment.payment_id) == ("declined", None)
    assert shop.gateway.charge_requests("order-1") == 1
    assert shop.gateway.calls == 1  # a decline is an answer: not retried
    assert shop.gateway.charges == {}
    assert emails(shop) == [
        "bob@example.com: Welcome to the shop",
        "bob@example.com: Someone failed to log in to your account",
        "bob@example.com: Order order-1 cancelled: payment declined (insufficient funds)",
    ]
    assert_no_dead_letters(shop.bus)
    assert dict(shop.carts.carts) == {"u-1": {"BOOK": 2}}  # back in the cart, to try again
    assert dict(shop.carts.pending) == {}


def test_flaky_payment_is_recovered_by_retries_waiting_on_the_modes_path(
    shop: Shop, waits: Waits
) -> None:
    SCENARIOS["flaky-payment"].play(shop)
    assert stock(shop) == {"BOOK": 5, "MUG": 7, "LAMP": 1}
    assert the_order(shop) == ("order-1", Status.CONFIRMED)
    assert shop.payments.payments["order-1"].status == "charged"
    assert shop.gateway.charge_requests("order-1") == 3
    assert len(shop.gateway.charges) == 1
    assert emails(shop)[-1] == "cleo@example.com: Order order-1 confirmed: $36.00 paid"
    assert_no_dead_letters(shop.bus)
    # publish waits with `sleep`; publish_async awaits `async_sleep`
    assert (waits.sync, waits.async_) == (
        ([0.5, 1.0], []) if shop.mode == "sync" else ([], [0.5, 1.0])
    )


def test_payments_killed_mid_charge_asks_the_gateway_again_and_is_charged_once(
    shop: Shop, waits: Waits
) -> None:
    """In one process, the gateway's answer is lost: the charge was made, the handler failed."""
    SCENARIOS["payments-killed"].play(shop)
    assert stock(shop) == {"BOOK": 4, "MUG": 9, "LAMP": 1}
    assert the_order(shop) == ("order-1", Status.CONFIRMED)
    assert shop.gateway.charge_requests("order-1") == 2
    assert [charge.payment_id for charge in shop.gateway.charges.values()] == ["pay-1"]
    payment = shop.payments.payments["order-1"]
    assert (payment.status, payment.payment_id) == ("charged", "pay-1")
    assert emails(shop)[-1] == "hana@example.com: Order order-1 confirmed: $57.00 paid"
    assert_no_dead_letters(shop.bus)
    one_retry = [0.5]
    assert (waits.sync, waits.async_) == (
        (one_retry, []) if shop.mode == "sync" else ([], one_retry)
    )


def test_gateway_down_pauses_the_saga_until_the_letter_is_redriven(shop: Shop) -> None:
    """The first half of the gateway-down scenario, step by step, then its end."""
    shop.gateway.down()
    token = shopper(shop, "dan@example.com")
    shop.carts.add(token, "BOOK")
    order_id = shop.carts.checkout(token)

    # Paused, not compensated: the stock stays reserved for the redrive to come.
    waiting = order(shop, order_id)
    assert isinstance(waiting, AwaitingPayment)
    assert stock(shop)["BOOK"] == 4
    assert list(shop.catalog.reservations) == [order_id]
    letter = charge_letter(shop, order_id)
    assert list(shop.bus.dead_letters) == [letter]
    assert letter.attempts == 3
    assert letter.handler == "payments.charge_payment"
    assert letter.error_type == "examples.cart.payments.gateway.GatewayUnavailableError"
    payment = shop.payments.payments[order_id]
    assert payment.status == "unavailable"
    assert shop.gateway.charge_requests(order_id) == 3
    assert shop.gateway.charges == {}
    assert emails(shop) == ["dan@example.com: Welcome to the shop"]

    shop.gateway.accept()
    result = shop.redrive(letter)
    assert result.ok
    assert order(shop, order_id) == waiting.to(Confirmed, payment_id="pay-1")
    assert shop.payments.payments[order_id].status == "charged"
    assert shop.gateway.charge_requests(order_id) == 4
    assert_no_dead_letters(shop.bus)
    assert stock(shop)["BOOK"] == 4


def test_a_redrive_that_fails_again_keeps_the_letter_and_the_order_waiting(shop: Shop) -> None:
    shop.gateway.down()
    token = shopper(shop, "dan@example.com")
    shop.carts.add(token, "BOOK")
    order_id = shop.carts.checkout(token)
    letter = charge_letter(shop, order_id)

    assert not shop.redrive(letter).ok  # still down
    [again] = shop.bus.dead_letters
    assert (again.id, again.attempts) == (letter.id, 6)
    assert shop.checkout.orders[order_id].status == Status.AWAITING_PAYMENT
    assert stock(shop)["BOOK"] == 4

    shop.gateway.accept()
    assert shop.redrive(again).ok
    assert shop.checkout.orders[order_id].status == Status.CONFIRMED


def test_gateway_down_scenario(shop: Shop) -> None:
    with Trace(shop.bus) as trace:
        SCENARIOS["gateway-down"].play(shop)
    assert stock(shop) == {"BOOK": 4, "MUG": 10, "LAMP": 1}
    assert the_order(shop) == ("order-1", Status.CONFIRMED)
    assert shop.payments.payments["order-1"].status == "charged"
    assert shop.gateway.charge_requests("order-1") == 4  # 3, then the redrive
    assert emails(shop)[-1] == "dan@example.com: Order order-1 confirmed: $45.00 paid"
    assert_no_dead_letters(shop.bus)
    events = list(walk(trace.roots))
    [unavailable] = [t for t in events if isinstance(t.event, PaymentUnavailable)]
    assert unavailable.publisher == "payments.charge_payment"
    [redriven] = [t for t in trace.roots if t.redrive_of is not None]
    assert isinstance(redriven.event, ChargePayment)


def test_gateway_down_for_good_is_abandoned_and_compensated(shop: Shop) -> None:
    SCENARIOS["gateway-down-for-good"].play(shop)
    assert stock(shop) == OPENING
    assert the_order(shop) == ("order-1", Status.CANCELLED)
    given_up = cancelled(shop)
    assert given_up.reason == "abandoned (gateway down)"
    assert (given_up.releasing, given_up.refunding, given_up.refunded) == (False, None, False)
    assert dict(shop.catalog.reservations) == {}
    assert shop.payments.payments["order-1"].status == "unavailable"
    assert shop.gateway.charge_requests("order-1") == 3
    assert shop.gateway.charges == {}
    assert emails(shop)[-1] == "eve@example.com: Order order-1 cancelled: abandoned (gateway down)"
    assert_no_dead_letters(shop.bus)  # the operator discarded it
    assert dict(shop.carts.carts) == {"u-1": {"MUG": 1}}


def test_a_charge_redriven_after_abandoning_is_refunded(shop: Shop) -> None:
    SCENARIOS["late-charge-refunded"].play(shop)
    assert stock(shop) == OPENING
    assert the_order(shop) == ("order-1", Status.CANCELLED)
    given_up = cancelled(shop)
    assert given_up.reason == "abandoned (gateway down)"
    assert (given_up.releasing, given_up.refunding, given_up.refunded) == (False, None, True)
    payment = shop.payments.payments["order-1"]
    assert (payment.status, payment.payment_id) == ("refunded", "pay-1")
    assert shop.gateway.charge_requests("order-1") == 4  # 3, then the redrive
    assert shop.gateway.refunded == {"pay-1"}
    assert emails(shop) == [
        "gina@example.com: Welcome to the shop",
        "gina@example.com: Order order-1 cancelled: abandoned (gateway down)",
        "gina@example.com: Refund for order order-1: $45.00",
    ]
    assert_no_dead_letters(shop.bus)


def test_out_of_stock_reserves_nothing(shop: Shop) -> None:
    SCENARIOS["out-of-stock"].play(shop)
    assert stock(shop) == OPENING  # the mug was not taken either: all lines or none
    assert the_order(shop) == ("order-1", Status.CANCELLED)
    given_up = cancelled(shop)
    assert given_up.reason == "out of stock: LAMP (2 wanted, 1 left)"
    assert (given_up.releasing, given_up.refunding, given_up.refunded) == (False, None, False)
    assert dict(shop.catalog.reservations) == {}
    assert dict(shop.payments.payments) == {}
    assert shop.gateway.calls == 0
    assert emails(shop)[-1] == (
        "finn@example.com: Order order-1 cancelled: out of stock: LAMP (2 wanted, 1 left)"
    )
    assert_no_dead_letters(shop.bus)
    assert dict(shop.carts.carts) == {"u-1": {"MUG": 1, "LAMP": 2}}


def test_every_scenario_can_follow_the_others_in_one_shop(waits: Waits) -> None:
    """What the diagram does: each scenario brings its own shopper and gateway mode."""
    with Shop(clock=TestClock(sleep=waits.sleep, sleep_async=waits.async_sleep)) as shop:
        for scenario in SCENARIOS.values():
            scenario.play(shop)
        statuses = {o.order_id: o.status for o in shop.checkout.orders.values()}
    assert statuses == {
        "order-1": Status.CONFIRMED,
        "order-2": Status.CANCELLED,
        "order-3": Status.CONFIRMED,
        "order-4": Status.CONFIRMED,
        "order-5": Status.CANCELLED,
        "order-6": Status.CANCELLED,
        "order-7": Status.CANCELLED,
        "order-8": Status.CONFIRMED,
    }
    assert_no_dead_letters(shop.bus)


@pytest.mark.parametrize("mode", MODES)
def test_in_async_mode_even_the_sync_handlers_run_in_the_shops_event_loop(
    mode: Mode, waits: Waits
) -> None:
    loop_running: list[bool] = []

    def probe(event: ChargePayment) -> None:
        loop_running.append(_loop_is_running())

    with Shop(mode=mode, clock=TestClock(sleep=waits.sleep, sleep_async=waits.async_sleep)) as shop:
        shop.bus.subscribe(probe)
        token = shopper(shop, "ada@example.com")
        shop.carts.add(token, "MUG")
        shop.carts.checkout(token)
    assert loop_running == [mode == "async"]


def _loop_is_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
