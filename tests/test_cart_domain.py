"""The cart example's modules one rule at a time: users, cart, idempotency, compensation."""

from __future__ import annotations

import asyncio
import collections.abc as c
import hashlib
import logging

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
from examples.cart.checkout.service import CheckoutSaga, Order, Status
from examples.cart.payments.events import (
    ChargePayment,
    PaymentDeclined,
    PaymentRefunded,
    PaymentSucceeded,
    RefundPayment,
)
from examples.cart.payments.gateway import FakeGateway
from examples.cart.payments.service import Payments
from examples.cart.scenarios import PASSWORD, SCENARIOS, NoWait, shopper
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
    assert shop.notifications.outbox == []


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
    users = Users(published.append, cost=ScryptCost(n=2**10))
    users.register("ada@example.com", PASSWORD)
    users.register("bob@example.com", PASSWORD)
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
    assert [e.to for e in shop.notifications.outbox] == ["ada@example.com", "ada@example.com"]


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
    catalog = Catalog(bus.publish)
    catalog.add_product("MUG", "Event mug", price_cents=1200, stock=10)
    bus.subscribe(catalog.on_reserve_stock)
    bus.subscribe(catalog.on_release_stock)

    reserve = ReserveStock(order_id="o-1", lines=(StockLine(sku="MUG", quantity=3),))
    bus.publish(reserve)
    bus.publish(reserve)
    assert catalog.products["MUG"].stock == 7
    assert len(published.of(StockReserved)) == 2  # announced again, not reserved again

    release = ReleaseStock(order_id="o-1")
    bus.publish(release)
    bus.publish(release)
    assert catalog.products["MUG"].stock == 10
    assert len(published.of(StockReleased)) == 2
    bus.publish(reserve)  # a late duplicate after the release takes nothing
    assert catalog.products["MUG"].stock == 10


def test_catalog_reserves_all_lines_or_none(bus: EventBus, published: Published) -> None:
    catalog = Catalog(bus.publish)
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


@pytest.mark.parametrize("mode", ["accept", "decline"])
def test_payments_charge_once_per_order(mode: str, bus: EventBus, published: Published) -> None:
    gateway = FakeGateway()
    if mode == "decline":
        gateway.decline()
    payments = Payments(bus.publish, gateway)
    bus.subscribe(payments.on_charge_payment)

    charge = ChargePayment(order_id="o-1", user_id="u-1", amount_cents=900)
    bus.publish(charge)
    bus.publish(charge)
    assert gateway.calls == 1
    if mode == "accept":
        assert list(gateway.charges) == ["o-1"]
        first, second = published.of(PaymentSucceeded)
        assert first.payment_id == second.payment_id == "pay-1"
    else:
        assert gateway.charges == {}
        assert len(published.of(PaymentDeclined)) == 2


def test_payments_refund_once(bus: EventBus, published: Published) -> None:
    payments = Payments(bus.publish, FakeGateway())
    bus.subscribe(payments.on_charge_payment)
    bus.subscribe(payments.on_refund_payment)
    bus.publish(ChargePayment(order_id="o-1", user_id="u-1", amount_cents=900))
    refund = RefundPayment(order_id="o-1", user_id="u-1", payment_id="pay-1", amount_cents=900)
    bus.publish(refund)
    bus.publish(refund)
    assert payments.gateway.calls == 2  # one charge, one refund
    assert payments.payments["o-1"].status == "refunded"
    assert len(published.of(PaymentRefunded)) == 2
    bus.publish(ChargePayment(order_id="o-1", user_id="u-1", amount_cents=900))
    assert payments.gateway.calls == 2  # a refunded order is not charged again


def test_the_gateway_charges_a_reference_once() -> None:
    gateway = FakeGateway()
    first = asyncio.run(gateway.charge("o-1", 900))
    assert asyncio.run(gateway.charge("o-1", 900)) == first
    assert len(gateway.charges) == 1


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
        [(p.status, p.attempts, p.payment_id) for p in shop.payments.payments.values()],
        shop.gateway.calls,
        dict(shop.gateway.charges),
        list(shop.notifications.outbox),
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
    """The saga on a bus of its own: nobody answers its requests but the test."""
    bus = EventBus()
    saga = CheckoutSaga(bus.publish)
    for handler in (
        saga.on_checkout_requested,
        saga.on_stock_reserved,
        saga.on_out_of_stock,
        saga.on_payment_succeeded,
        saga.on_payment_declined,
        saga.on_payment_unavailable,
        saga.on_checkout_abandoned,
        saga.on_payment_refunded,
        saga.on_stock_released,
    ):
        bus.subscribe(handler)
    return bus, saga


def test_compensation_undoes_the_completed_steps_in_reverse_one_at_a_time() -> None:
    bus, saga = saga_alone()
    line = OrderLine(sku="MUG", quantity=1, unit_price_cents=900)
    saga.orders["o-1"] = order = Order(
        order_id="o-1",
        user_id="u-1",
        lines=(line,),
        total_cents=900,
        status=Status.CHARGING,
        reserved=True,
        charged=True,
        payment_id="pay-7",
    )

    with capture(bus) as published:
        abandoned = bus.publish(CheckoutAbandoned(order_id="o-1", reason="test")).event
        # The last step done is undone first.
        published.assert_caused(abandoned, RefundPayment, directly=True, payment_id="pay-7")
        assert (order.status, order.undoing) == (Status.COMPENSATING, "refund")
        bus.publish(CheckoutAbandoned(order_id="o-1", reason="again"))  # nothing new meanwhile
        bus.publish(StockReleased(order_id="o-1"))  # not what it waits for
        assert names(published)[-1] == "StockReleased"

        refunded = bus.publish(
            PaymentRefunded(order_id="o-1", user_id="u-1", payment_id="pay-7", amount_cents=900)
        ).event
        assert published.children(refunded) == [published.one(ReleaseStock)]
        assert (order.charged, order.refunded, order.undoing) == (False, True, "release")

        bus.publish(StockReleased(order_id="o-1"))
        bus.publish(StockReleased(order_id="o-1"))
    requests = [
        name
        for name in names(published)
        if name in {"RefundPayment", "ReleaseStock", "OrderCancelled", "ChargePayment"}
    ]
    assert requests == ["RefundPayment", "ReleaseStock", "OrderCancelled"]
    published.one(OrderCancelled, reason="abandoned (test)")
    assert (order.status, order.reserved, order.charged) == (Status.CANCELLED, False, False)


def test_a_confirmation_that_fails_after_the_charge_is_compensated_with_a_refund() -> None:
    """The confirm step fails (here: its handler raises) after the card was charged.

    The order is then given up by an operator, and the saga refunds before
    releasing the stock.
    """
    with Shop(clock=NoWait()) as shop:
        confirm = shop.checkout.on_payment_succeeded

        def confirm_fails(event: PaymentSucceeded) -> None:
            order = shop.checkout.orders[event.order_id]
            order.charged, order.payment_id = True, event.payment_id  # the charge is recorded
            raise RuntimeError("order database unavailable")

        token = shopper(shop, "ada@example.com")
        shop.carts.add(token, "BOOK")
        with override(shop.bus, confirm, confirm_fails):
            order_id = shop.carts.checkout(token)
        [letter] = shop.bus.dead_letters
        assert letter.handler == "checkout.payment_succeeded"
        assert letter.error_message == "order database unavailable"
        order = shop.checkout.orders[order_id]
        assert (order.status, order.reserved, order.charged) == (Status.CHARGING, True, True)

        with capture(shop.bus) as published:
            shop.checkout.abandon(order_id, "confirmation failed")
        after = [name for name in names(published) if name != "EmailSent"]
        assert after == [
            "CheckoutAbandoned",
            "RefundPayment",  # the charge was the last step done: undone first
            "PaymentRefunded",
            "ReleaseStock",
            "StockReleased",
            "OrderCancelled",
        ]
        assert order.status == Status.CANCELLED
        assert order.refunded
        assert shop.payments.payments[order_id].status == "refunded"
        assert shop.catalog.products["BOOK"].stock == 5
        published.assert_none(OrderConfirmed)


def test_abandon_refuses_what_cannot_be_abandoned(shop: Shop) -> None:
    with pytest.raises(KeyError, match="no order 'order-9'"):
        shop.checkout.abandon("order-9")
    SCENARIOS["happy-path"].play(shop)
    with pytest.raises(ValueError, match="order-1 is confirmed: nothing to abandon"):
        shop.checkout.abandon("order-1")


def test_the_saga_state_is_a_validated_pydantic_model() -> None:
    order = Order(order_id="o-1", user_id="u-1", lines=(), total_cents=1)
    with pytest.raises(ValueError, match="status"):
        order.status = "lost"  # type: ignore[assignment]
    assert Order.model_validate_json(order.model_dump_json()) == order


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
        assert [e.subject for e in shop.notifications.outbox] == [
            "Welcome to the shop",
            "Order order-9 confirmed: $12.00 paid",
        ]
        assert shop.bus.inbox.seen("notifications.order_confirmed", confirmed.event_id)
