"""The cart example's modules one rule at a time: users, cart, idempotency, compensation."""

from __future__ import annotations

import asyncio
import collections.abc as c
import hashlib
import logging

import pydantic
import pytest
from examples.cart.app import Mode, Shop
from examples.cart.cart.events import CheckoutRequested, OrderLine
from examples.cart.cart.service import NotLoggedInError
from examples.cart.catalog.events import (
    ReleaseStock,
    ReserveStock,
    StockLine,
    StockReleased,
    StockReserved,
)
from examples.cart.catalog.service import Catalog
from examples.cart.checkout.events import CheckoutAbandoned, OrderCancelled, OrderConfirmed
from examples.cart.checkout.service import (
    AwaitingPayment,
    Cancelled,
    Charging,
    CheckoutSaga,
    Compensating,
    Confirmed,
    Order,
    Reserving,
    Status,
)
from examples.cart.payments.events import (
    ChargePayment,
    PaymentDeclined,
    PaymentRefunded,
    PaymentSucceeded,
    RefundPayment,
)
from examples.cart.payments.gateway import FakeGateway, GatewayUnavailableError
from examples.cart.payments.service import Payments
from examples.cart.scenarios import PASSWORD, SCENARIOS, NoWait, shopper
from examples.cart.storage import MemoryStore
from examples.cart.users.events import LoginFailed, UserLoggedIn, UserRegistered
from examples.cart.users.service import ScryptCost, Users

from eventbus import DeadLetter, Event, EventBus, signals
from eventbus.testing import Published, capture, override

pytestmark = pytest.mark.usefixtures("cheap_passwords")

MODES: list[Mode] = ["sync", "async"]


@pytest.fixture
def shop() -> c.Iterator[Shop]:
    with Shop(clock=NoWait()) as shop:
        yield shop


def names(published: c.Iterable[object]) -> list[str]:
    """The class names of the events published, in order."""
    return [type(event).__name__ for event in published]


# -- users ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "email",
    ["", "ada", "ada@", "@example.com", "ada@example", "a da@example.com", "ada@@example.com"],
)
def test_a_bad_email_is_refused_with_a_clear_message(shop: Shop, email: str) -> None:
    with pytest.raises(ValueError, match=r"not an email address: .* \(expected one '@'"):
        shop.users.register(email, PASSWORD)
    assert shop.notifications.sent == []


def test_an_email_is_trimmed_and_lower_cased_and_registered_once(shop: Shop) -> None:
    assert shop.users.register("  Ada@Example.COM ", PASSWORD) == "u-1"
    assert shop.users.user_id_of("ada@example.com") == "u-1"
    with pytest.raises(ValueError, match=r"ada@example\.com is already registered"):
        shop.users.register("ada@example.com", "another password")


def test_a_short_password_is_refused_without_repeating_it(shop: Shop) -> None:
    with pytest.raises(ValueError, match="at least 8 characters") as refused:
        shop.users.register("ada@example.com", "hunter2")
    assert "hunter2" not in str(refused.value)


def test_passwords_are_salted_scrypt_hashes() -> None:
    published: list[Event] = []
    users = Users(MemoryStore(published.append), cost=ScryptCost(n=2**10))
    users.register("ada@example.com", PASSWORD)
    users.register("bob@example.com", PASSWORD)
    assert names(published) == ["UserRegistered", "UserRegistered"]
    ada, bob = users._by_email.values()
    assert ada.salt != bob.salt
    assert ada.password_hash != bob.password_hash
    expected = hashlib.scrypt(PASSWORD.encode(), salt=ada.salt, n=2**10, r=8, p=1, dklen=32)
    assert ada.password_hash == expected
    assert PASSWORD not in repr(ada)
    assert PASSWORD.encode() not in ada.password_hash


def test_a_wrong_password_or_an_unknown_email_publishes_login_failed(shop: Shop) -> None:
    shop.users.register("ada@example.com", PASSWORD)
    with capture(shop.bus) as published:
        assert shop.users.log_in("ada@example.com", "not the password") is None
        assert shop.users.log_in("nobody@example.com", PASSWORD) is None
    assert [(e.email, e.reason) for e in published.of(LoginFailed)] == [
        ("ada@example.com", "wrong password"),
        ("nobody@example.com", "unknown email"),
    ]
    published.assert_none(UserLoggedIn)
    # The owner of a known address is warned; nobody writes to an unknown one.
    assert [e.to for e in shop.notifications.sent] == ["ada@example.com", "ada@example.com"]


def test_log_in_returns_a_token_that_the_events_carry_only_as_a_digest(shop: Shop) -> None:
    shop.users.register("ada@example.com", PASSWORD)
    with capture(shop.bus) as published:
        token = shop.users.log_in("ADA@example.com", PASSWORD)
    assert token is not None
    assert len(token) >= 32
    logged_in = published.one(UserLoggedIn)
    assert logged_in.session_digest == hashlib.sha256(token.encode()).hexdigest()
    assert token not in logged_in.model_dump_json()
    assert shop.users.log_in("ada@example.com", PASSWORD) != token  # a new session each time


@pytest.mark.parametrize("mode", MODES)
def test_no_password_or_token_in_any_event_log_record_or_dead_letter(
    mode: Mode, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    letters: list[DeadLetter] = []

    def keep(sender: object, *, dead_letter: DeadLetter, **kwargs: object) -> None:
        letters.append(dead_letter)

    tokens: list[str] = []
    with (
        Shop(mode=mode, clock=NoWait()) as shop,
        signals.event_dead_lettered.connected_to(keep, sender=shop.bus),
        capture(shop.bus) as published,
    ):
        for scenario in SCENARIOS.values():  # every path, dead letters included
            scenario.play(shop)
        tokens.append(shopper(shop, "zoe@example.com"))
        shop.users.log_in("zoe@example.com", PASSWORD + "!")

    assert len(letters) == 3
    assert len(published) > 50
    assert caplog.records
    secrets = [PASSWORD, *tokens]
    everything = [event.model_dump_json() for event in published]
    everything += [record.getMessage() for record in caplog.records]
    everything += [caplog.text]
    everything += [
        repr(letter) + letter.traceback + letter.event.model_dump_json() for letter in letters
    ]
    for secret in secrets:
        assert not [text for text in everything if secret in text]


# -- cart --------------------------------------------------------------------------------------


def test_cart_actions_need_a_session(shop: Shop) -> None:
    shop.users.register("ada@example.com", PASSWORD)
    for action in (
        lambda: shop.carts.add("forged-token", "MUG"),
        lambda: shop.carts.remove("forged-token", "MUG"),
        lambda: shop.carts.change_quantity("forged-token", "MUG", 2),
        lambda: shop.carts.checkout("forged-token"),
    ):
        with pytest.raises(NotLoggedInError, match="log in first"):
            action()


def test_the_cart_learns_sessions_from_user_logged_in_alone(shop: Shop) -> None:
    shop.publish(
        UserLoggedIn(user_id="u-9", email="x@example.com", session_digest=UserLoggedIn.digest("t"))
    )
    shop.carts.add("t", "MUG")
    assert shop.carts.carts == {"u-9": {"MUG": 1}}


def test_cart_add_change_remove(shop: Shop) -> None:
    token = shopper(shop, "ada@example.com")
    shop.carts.add(token, "MUG")
    shop.carts.add(token, "MUG", 2)
    shop.carts.add(token, "BOOK")
    assert shop.carts.contents(token) == {"MUG": 3, "BOOK": 1}
    shop.carts.change_quantity(token, "MUG", 1)
    shop.carts.remove(token, "BOOK")
    assert shop.carts.contents(token) == {"MUG": 1}
    with pytest.raises(ValueError, match="unknown product 'TEA'"):
        shop.carts.add(token, "TEA")
    with pytest.raises(ValueError, match="quantity must be at least 1"):
        shop.carts.add(token, "MUG", 0)
    with pytest.raises(ValueError, match="use remove"):
        shop.carts.change_quantity(token, "MUG", 0)
    with pytest.raises(ValueError, match="'BOOK' is not in the cart; add it first"):
        shop.carts.change_quantity(token, "BOOK", 2)
    with pytest.raises(ValueError, match="'BOOK' is not in the cart"):
        shop.carts.remove(token, "BOOK")


def test_checkout_prices_the_lines_and_empties_the_cart(shop: Shop) -> None:
    token = shopper(shop, "ada@example.com")
    with pytest.raises(ValueError, match="the cart is empty"):
        shop.carts.checkout(token)
    shop.carts.add(token, "BOOK")
    shop.carts.add(token, "MUG", 2)
    with capture(shop.bus) as published:
        assert shop.carts.checkout(token) == "order-1"
    checkout = published.one(CheckoutRequested)
    assert checkout == CheckoutRequested(
        order_id="order-1",
        user_id="u-1",
        lines=(
            OrderLine(sku="BOOK", quantity=1, unit_price_cents=4500),
            OrderLine(sku="MUG", quantity=2, unit_price_cents=1200),
        ),
        total_cents=6900,
        event_id=checkout.event_id,
        occurred_at=checkout.occurred_at,
    )
    assert shop.carts.contents(token) == {}


# -- idempotency: the same event delivered twice --------------------------------------------


def test_catalog_reserves_and_releases_once_per_order(bus: EventBus, published: Published) -> None:
    catalog = Catalog(MemoryStore(bus.publish))
    catalog.add_product("MUG", "Event mug", price_cents=1200, stock=10)
    # Subscribed without the inbox: the catalog's own per-order records are under test.
    bus.subscribe(catalog.on_reserve_stock)
    bus.subscribe(catalog.on_release_stock)

    lines = (StockLine(sku="MUG", quantity=3),)
    reserve = ReserveStock(order_id="o-1", lines=lines)
    bus.publish(reserve)
    bus.publish(reserve)
    assert catalog.products["MUG"].stock == 7
    assert dict(catalog.reservations) == {"o-1": lines}
    assert len(published.of(StockReserved)) == 2  # announced again, not reserved again

    release = ReleaseStock(order_id="o-1")
    bus.publish(release)
    bus.publish(release)
    assert catalog.products["MUG"].stock == 10
    assert dict(catalog.reservations) == {}
    assert "o-1" in catalog.released
    assert len(published.of(StockReleased)) == 2
    bus.publish(reserve)  # a late duplicate after the release takes nothing
    assert catalog.products["MUG"].stock == 10
    assert len(published.of(StockReserved)) == 2


def test_the_catalog_hands_out_copies_of_its_products() -> None:
    catalog = Catalog(MemoryStore(lambda event: None))
    catalog.add_product("MUG", "Event mug", price_cents=1200, stock=10)
    product = catalog.products["MUG"]
    product.stock = 0
    assert catalog.products["MUG"].stock == 10  # only the catalog's own handlers change it


def test_catalog_reserves_all_lines_or_none(bus: EventBus, published: Published) -> None:
    catalog = Catalog(MemoryStore(bus.publish))
    catalog.add_product("MUG", "Event mug", price_cents=1200, stock=10)
    catalog.add_product("LAMP", "Desk lamp", price_cents=3900, stock=1)
    bus.subscribe(catalog.on_reserve_stock)
    lines = (
        StockLine(sku="MUG", quantity=1),
        StockLine(sku="LAMP", quantity=1),
        StockLine(sku="LAMP", quantity=1),
    )  # two lines of one product add up
    reserve = bus.publish(ReserveStock(order_id="o-1", lines=lines)).event
    assert names(published.children(reserve)) == ["OutOfStock"]
    assert {sku: p.stock for sku, p in catalog.products.items()} == {"MUG": 10, "LAMP": 1}
    assert dict(catalog.reservations) == {}


@pytest.mark.parametrize("mode", ["accept", "decline"])
def test_payments_charge_once_per_order(mode: str, bus: EventBus, published: Published) -> None:
    gateway = FakeGateway()
    if mode == "decline":
        gateway.decline()
    payments = Payments(gateway, MemoryStore(bus.publish))
    bus.subscribe(payments.on_charge_payment)  # without the inbox: the payments' own records

    charge = ChargePayment(order_id="o-1", user_id="u-1", amount_cents=900)
    bus.publish(charge)
    bus.publish(charge)
    assert gateway.calls == 1
    assert gateway.charge_requests("o-1") == 1
    if mode == "accept":
        assert list(gateway.charges) == ["o-1"]
        first, second = published.of(PaymentSucceeded)
        assert first.payment_id == second.payment_id == "pay-1"
        assert payments.payments["o-1"].status == "charged"
    else:
        assert gateway.charges == {}
        assert len(published.of(PaymentDeclined)) == 2
        assert payments.payments["o-1"].status == "declined"


def test_a_charge_whose_answer_is_lost_leaves_no_payment_and_is_asked_again(
    bus: EventBus, published: Published
) -> None:
    gateway = FakeGateway()
    payments = Payments(gateway, MemoryStore(bus.publish))
    bus.subscribe(payments.on_charge_payment)  # no retry policy: one attempt per publish
    gateway.lose_next_answer()

    charge = ChargePayment(order_id="o-1", user_id="u-1", amount_cents=900)
    assert not bus.publish(charge).ok
    [letter] = bus.dead_letters
    assert letter.error_type.endswith("GatewayUnavailableError")
    assert list(gateway.charges) == ["o-1"]  # the gateway did charge
    assert dict(payments.payments) == {}  # the attempt rolled back: nothing settled
    published.assert_none(PaymentSucceeded)

    assert bus.redrive(letter).ok
    assert gateway.charge_requests("o-1") == 2
    assert len(gateway.charges) == 1  # asked again, charged once
    assert published.one(PaymentSucceeded).payment_id == "pay-1"
    assert payments.payments["o-1"].payment_id == "pay-1"


def test_payments_refund_once(bus: EventBus, published: Published) -> None:
    payments = Payments(FakeGateway(), MemoryStore(bus.publish))
    bus.subscribe(payments.on_charge_payment)
    bus.subscribe(payments.on_refund_payment)
    bus.publish(ChargePayment(order_id="o-1", user_id="u-1", amount_cents=900))
    refund = RefundPayment(order_id="o-1", user_id="u-1", payment_id="pay-1", amount_cents=900)
    bus.publish(refund)
    bus.publish(refund)
    assert payments.gateway.calls == 2  # one charge, one refund
    assert payments.gateway.refunded == {"pay-1"}
    assert payments.payments["o-1"].status == "refunded"
    assert len(published.of(PaymentRefunded)) == 2
    bus.publish(ChargePayment(order_id="o-1", user_id="u-1", amount_cents=900))
    assert payments.gateway.calls == 2  # a refunded order is not charged again


def test_the_gateway_charges_a_reference_once() -> None:
    gateway = FakeGateway()
    first = asyncio.run(gateway.charge("o-1", 900))
    assert asyncio.run(gateway.charge("o-1", 900)) == first
    assert len(gateway.charges) == 1
    assert (gateway.charge_requests("o-1"), gateway.charge_requests("o-2")) == (2, 0)
    assert gateway.calls == 2


def test_a_lost_answer_is_lost_once_and_the_charge_it_hid_is_returned_again() -> None:
    gateway = FakeGateway()
    gateway.lose_next_answer()
    with pytest.raises(GatewayUnavailableError, match="answer lost"):
        asyncio.run(gateway.charge("o-1", 900))
    assert gateway.charges["o-1"].payment_id == "pay-1"
    assert asyncio.run(gateway.charge("o-1", 900)) == "pay-1"
    assert asyncio.run(gateway.charge("o-2", 900)) == "pay-2"  # the switch was for one answer
    assert gateway.charge_requests("o-1") == 2


def test_the_gateways_state_is_read_only_from_outside() -> None:
    gateway = FakeGateway()
    asyncio.run(gateway.charge("o-1", 900))
    gateway.charges.clear()
    gateway.refunded.add("pay-1")
    assert list(gateway.charges) == ["o-1"]
    assert gateway.refunded == set()


@pytest.mark.parametrize("mode", MODES)
def test_every_event_of_the_happy_path_delivered_again_changes_nothing(mode: Mode) -> None:
    with Shop(mode=mode, clock=NoWait()) as shop:
        with capture(shop.bus) as published:
            SCENARIOS["happy-path"].play(shop)
        delivered = list(published)
        before = snapshot(shop)
        for event in delivered:
            shop.publish(event)
        assert snapshot(shop) == before
        assert len(delivered) == 10


def snapshot(shop: Shop) -> object:
    return (
        {sku: p.stock for sku, p in shop.catalog.products.items()},
        dict(shop.catalog.reservations),
        [o.model_dump() for o in shop.checkout.orders.values()],
        [
            (p.status, shop.gateway.charge_requests(p.order_id), p.payment_id)
            for p in shop.payments.payments.values()
        ],
        shop.gateway.calls,
        dict(shop.gateway.charges),
        list(shop.notifications.sent),
        {u: dict(c) for u, c in shop.carts.carts.items()},
        len(shop.bus.dead_letters),
    )


def test_the_saga_ignores_events_that_do_not_fit_the_order(shop: Shop) -> None:
    SCENARIOS["happy-path"].play(shop)
    with capture(shop.bus) as published:
        shop.publish(StockReserved(order_id="order-1"))  # a fresh duplicate (a new event id)
        shop.publish(PaymentSucceeded(order_id="order-1", payment_id="pay-1", amount_cents=6900))
        shop.publish(PaymentDeclined(order_id="order-1", reason="too late"))
        shop.publish(StockReleased(order_id="order-1"))
        shop.publish(PaymentSucceeded(order_id="order-404", payment_id="pay-9", amount_cents=1))
    assert len(published) == 5  # each was published, none caused anything
    assert shop.checkout.orders["order-1"].status == Status.CONFIRMED


# -- the saga's compensation ----------------------------------------------------------------


def saga_alone() -> tuple[EventBus, CheckoutSaga]:
    """The saga on a bus of its own: nobody answers its requests but the test.

    Its handlers are subscribed as the shop subscribes them (idempotent), so
    a test repeats an event as a new one (a fresh event id) to reach the
    saga's own rules rather than the inbox's.
    """
    bus = EventBus()
    saga = CheckoutSaga(MemoryStore(bus.publish))
    bus.include(saga.handlers())
    return bus, saga


LINE = OrderLine(sku="MUG", quantity=1, unit_price_cents=900)


def charging(order_id: str = "o-1") -> Charging:
    return Charging(order_id=order_id, user_id="u-1", lines=(LINE,), total_cents=900)


def seed(saga: CheckoutSaga, order: Order) -> None:
    with saga.store.transaction():
        saga.orders.put(order.order_id, order)


def state(saga: CheckoutSaga, order_id: str = "o-1") -> Order:
    """The order's state now (a function: mypy does not narrow it from one read to the next)."""
    return saga.orders[order_id]


def requests(published: c.Iterable[Event]) -> list[str]:
    """The saga's requests and announcements among ``published``, in order."""
    wanted = {"ReserveStock", "ChargePayment", "RefundPayment", "ReleaseStock"}
    wanted |= {"OrderCancelled", "OrderConfirmed"}
    return [name for name in names(published) if name in wanted]


def test_abandoning_an_order_being_charged_releases_its_stock_then_cancels_it_once() -> None:
    bus, saga = saga_alone()
    seed(saga, charging())

    with capture(bus) as published:
        abandoned = bus.publish(CheckoutAbandoned(order_id="o-1", reason="test")).event
        published.assert_caused(abandoned, ReleaseStock, directly=True, order_id="o-1")
        compensating = charging().to(Compensating, reason="abandoned (test)", releasing=True)
        assert state(saga) == compensating

        # Nothing new meanwhile: given up once; an ack of something never asked for.
        again = bus.publish(CheckoutAbandoned(order_id="o-1", reason="again")).event
        refunded = PaymentRefunded(
            order_id="o-1", user_id="u-1", payment_id="pay-7", amount_cents=900
        )
        bus.publish(refunded)
        assert published.children(again) == published.children(refunded) == []
        assert state(saga) == compensating

        released = bus.publish(StockReleased(order_id="o-1")).event
        assert published.children(released) == [published.one(OrderCancelled)]
        bus.publish(StockReleased(order_id="o-1"))  # acknowledged again: already cancelled
    assert requests(published) == ["ReleaseStock", "OrderCancelled"]
    published.one(OrderCancelled, order_id="o-1", user_id="u-1", reason="abandoned (test)")
    assert state(saga) == charging().to(Cancelled, reason="abandoned (test)")


@pytest.mark.parametrize("first", ["release", "refund"])
def test_a_charge_acknowledged_while_compensating_is_refunded_alongside_the_release(
    first: str,
) -> None:
    bus, saga = saga_alone()
    seed(saga, charging())
    with capture(bus) as published:
        bus.publish(PaymentDeclined(order_id="o-1", reason="timeout"))
        # The gateway charged after all (a retry that went through): the order is given up.
        late = bus.publish(PaymentSucceeded(order_id="o-1", payment_id="pay-7", amount_cents=900))
        published.assert_caused(late.event, RefundPayment, directly=True, payment_id="pay-7")
        given_up = charging().to(Compensating, reason="payment declined (timeout)", releasing=True)
        assert state(saga) == given_up.but(refunding="pay-7")
        bus.publish(PaymentSucceeded(order_id="o-1", payment_id="pay-7", amount_cents=900))
        assert len(published.of(RefundPayment)) == 1  # refunding already

        acks: dict[str, Event] = {
            "release": StockReleased(order_id="o-1"),
            "refund": PaymentRefunded(
                order_id="o-1", user_id="u-1", payment_id="pay-7", amount_cents=900
            ),
        }
        bus.publish(acks.pop(first))
        published.assert_none(OrderCancelled)  # one undo is still in flight
        [(_, last)] = acks.items()
        if first == "release":
            assert state(saga) == given_up.but(releasing=False, refunding="pay-7")
            # A refund of another payment is not the one it waits for.
            bus.publish(
                PaymentRefunded(order_id="o-1", user_id="u-1", payment_id="pay-8", amount_cents=1)
            )
            assert state(saga) == given_up.but(releasing=False, refunding="pay-7")
        else:
            assert state(saga) == given_up.but(refunded=True)
        bus.publish(last)
    assert sorted(requests(published)) == ["OrderCancelled", "RefundPayment", "ReleaseStock"]
    published.assert_none(OrderConfirmed)
    assert state(saga) == charging().to(
        Cancelled, reason="payment declined (timeout)", refunded=True
    )


def test_a_reservation_acknowledged_after_the_order_was_cancelled_is_released_at_once() -> None:
    bus, saga = saga_alone()
    checkout = CheckoutRequested(order_id="o-1", user_id="u-1", lines=(LINE,), total_cents=900)
    with capture(bus) as published:
        bus.publish(checkout)
        assert state(saga) == charging().to(Reserving)
        # Abandoned while reserving: nothing is held yet, so it is cancelled at once.
        bus.publish(CheckoutAbandoned(order_id="o-1", reason="test"))
        cancelled = charging().to(Cancelled, reason="abandoned (test)")
        assert state(saga) == cancelled
        assert requests(published) == ["ReserveStock", "OrderCancelled"]

        reserved = bus.publish(StockReserved(order_id="o-1")).event  # the catalog was slow
        published.assert_caused(reserved, ReleaseStock, directly=True, order_id="o-1")
        assert state(saga) == cancelled.but(releasing=True)
        bus.publish(StockReleased(order_id="o-1"))
    assert state(saga) == cancelled  # still cancelled, nothing left in flight
    assert requests(published) == ["ReserveStock", "OrderCancelled", "ReleaseStock"]
    published.assert_none(ChargePayment)


@pytest.mark.parametrize("mode", MODES)
def test_a_confirmation_that_fails_after_the_charge_is_refunded_once_redriven(
    mode: Mode,
) -> None:
    """The confirm step fails (here: its handler raises) after the card was charged.

    The failed handler leaves nothing behind (its transaction rolled back),
    so the order is still being charged: an operator gives it up (the stock
    is released, the order cancelled); redriving the letter then tells the
    saga about the charge, too late, and the saga refunds it.
    """
    with Shop(mode=mode, clock=NoWait()) as shop:
        saga = shop.checkout

        def confirm_fails(event: PaymentSucceeded) -> None:
            with saga.store.transaction():  # as the real handler: its writes, rolled back
                order = saga.orders[event.order_id]
                saga.orders.put(order.order_id, order.to(Confirmed, payment_id=event.payment_id))
                raise RuntimeError("order database unavailable")

        token = shopper(shop, "ada@example.com")
        shop.carts.add(token, "BOOK")
        with override(shop.bus, "checkout.payment_succeeded", confirm_fails):
            order_id = shop.carts.checkout(token)
        [letter] = shop.bus.dead_letters
        assert letter.handler == "checkout.payment_succeeded"
        assert letter.error_message == "order database unavailable"
        assert type(shop.checkout.orders[order_id]) is Charging
        assert shop.payments.payments[order_id].status == "charged"
        assert shop.catalog.products["BOOK"].stock == 4

        with capture(shop.bus) as published:
            shop.checkout.abandon(order_id, "confirmation failed")
        assert [name for name in names(published) if name != "EmailSent"] == [
            "CheckoutAbandoned",
            "ReleaseStock",  # the stock is all it knows it holds
            "StockReleased",
            "OrderCancelled",
        ]
        cancelled = shop.checkout.orders[order_id]
        assert isinstance(cancelled, Cancelled)
        assert (cancelled.reason, cancelled.refunded) == ("abandoned (confirmation failed)", False)
        assert shop.catalog.products["BOOK"].stock == 5

        with capture(shop.bus) as published:
            assert shop.redrive(letter).ok  # the real handler, on the charge that did happen
        assert [name for name in names(published) if name != "EmailSent"] == [
            "RefundPayment",
            "PaymentRefunded",
        ]
        published.assert_none(OrderConfirmed)
        published.assert_none(OrderCancelled)  # cancelled once
        assert shop.checkout.orders[order_id] == cancelled.but(refunded=True)
        assert shop.payments.payments[order_id].status == "refunded"
        assert shop.gateway.refunded == {"pay-1"}
        assert shop.catalog.products["BOOK"].stock == 5
        assert list(shop.bus.dead_letters) == []
        assert [e.subject for e in shop.notifications.sent][-2:] == [
            f"Order {order_id} cancelled: abandoned (confirmation failed)",
            f"Refund for order {order_id}: $45.00",
        ]


def test_abandon_refuses_what_cannot_be_abandoned(shop: Shop) -> None:
    with pytest.raises(KeyError, match="no order 'order-9'"):
        shop.checkout.abandon("order-9")
    SCENARIOS["happy-path"].play(shop)
    with pytest.raises(ValueError, match="order-1 is confirmed: nothing to abandon"):
        shop.checkout.abandon("order-1")
    SCENARIOS["out-of-stock"].play(shop)
    with pytest.raises(ValueError, match="order-2 is cancelled: nothing to abandon"):
        shop.checkout.abandon("order-2")


def test_an_order_state_that_cannot_happen_cannot_be_built() -> None:
    order = charging()
    with pytest.raises(pydantic.ValidationError, match="payment_id"):
        order.to(Confirmed)  # confirmed, but paid with what?
    with pytest.raises(pydantic.ValidationError, match="payment_id"):
        order.to(Charging, payment_id="pay-1")  # no payment yet (extra="forbid")
    with pytest.raises(pydantic.ValidationError, match="undoing something"):
        order.to(Compensating, reason="test")  # nothing in flight
    with pytest.raises(pydantic.ValidationError, match="refunded and refunding"):
        order.to(Cancelled, reason="test", refunding="pay-1", refunded=True)
    with pytest.raises(pydantic.ValidationError, match="refunded and refunding"):
        order.to(Compensating, reason="test", releasing=True, refunding="pay-1", refunded=True)

    compensating = order.to(Compensating, reason="test", releasing=True)
    with pytest.raises(pydantic.ValidationError, match="undoing something"):
        compensating.but(releasing=False)  # but() validates what it changes
    assert compensating.but(releasing=False, refunding="pay-1").refunding == "pay-1"
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        compensating.releasing = False  # type: ignore[misc]
    assert compensating.releasing

    assert (order.status, compensating.status) == (Status.CHARGING, Status.COMPENSATING)
    assert "status" not in Charging.model_fields  # the class says it, not the data
    assert order.to(AwaitingPayment).status == "awaiting_payment"


def test_every_order_state_comes_back_from_json_as_its_own_class() -> None:
    adapter: pydantic.TypeAdapter[Order] = pydantic.TypeAdapter(Order)
    order = charging()
    states: list[Order] = [
        order.to(Reserving),
        order,
        order.to(AwaitingPayment),
        order.to(Confirmed, payment_id="pay-1"),
        order.to(Compensating, reason="test", releasing=True, refunding="pay-1"),
        order.to(Cancelled, reason="test", refunded=True),
    ]
    for state in states:
        back = adapter.validate_json(adapter.dump_json(state))
        assert type(back) is type(state)
        assert back == state
    assert {type(state).status for state in states} == set(Status)
    with pytest.raises(pydantic.ValidationError):
        adapter.validate_python({**order.model_dump(), "step": "lost"})


def test_user_registered_carries_no_secret() -> None:
    assert set(UserRegistered.model_fields) - set(Event.model_fields) == {"user_id", "email"}
    assert set(LoginFailed.model_fields) - set(Event.model_fields) == {"email", "reason"}


def test_each_module_subscribes_every_handler_it_defines_under_its_own_name() -> None:
    """A handler method left out of its module's registry would silently never run."""
    with Shop(clock=NoWait()) as shop:
        subscribed = {sub.name: sub for sub in shop.bus.subscriptions}
        for module, obj in [
            ("catalog", shop.catalog),
            ("cart", shop.carts),
            ("payments", shop.payments),
            ("checkout", shop.checkout),
            ("notifications", shop.notifications),
        ]:
            defined = {name for name in dir(obj) if name.startswith("on_")}
            assert defined, module
            for method in defined:
                name = f"{module}.{method.removeprefix('on_')}"
                assert name in subscribed, f"{type(obj).__name__}.{method} is not subscribed"
                assert subscribed[name].handler == getattr(obj, method)
        assert len(subscribed) == 22


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_notifications_send_one_email_per_event_however_often_it_comes(mode: Mode) -> None:
    with Shop(mode=mode, clock=NoWait()) as shop:
        shop.publish(UserRegistered(user_id="u-1", email="ada@example.com"))
        confirmed = OrderConfirmed(
            order_id="order-9", user_id="u-1", total_cents=1200, payment_id="pay-1"
        )
        shop.publish(confirmed)
        shop.publish(confirmed)  # redelivered (a redrive, a worker's reclaim)
        assert [e.subject for e in shop.notifications.sent] == [
            "Welcome to the shop",
            "Order order-9 confirmed: $12.00 paid",
        ]
        assert shop.bus.inbox.seen("notifications.order_confirmed", confirmed.event_id)
