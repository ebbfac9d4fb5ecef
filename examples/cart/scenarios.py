"""The named scenarios the demo plays, and how it shows each: the cascade tree, the final state.

A scenario is a plain function that acts on a :class:`Shop` the way its
users and operators would: plain method calls on the module that owns the
action (register, log in, fill the cart, check out, redrive a letter). What
follows each action happens through events alone.

Each scenario has its own shopper, so that all of them can also be played
one after another in a single shop (``examples.cart.diagram`` does).
"""

from __future__ import annotations

import argparse
import collections.abc as c
import dataclasses
import textwrap
import typing as t

from eventbus import DeadLetter, EventBus, SystemClock
from eventbus.tracing import Trace

from .app import PRODUCTS, Mode, Shop
from .cart.service import Carts
from .catalog.service import Catalog
from .checkout.service import Cancelled, CheckoutSaga, Compensating
from .notifications.service import Notifications
from .payments.events import ChargePayment
from .payments.gateway import FakeGateway
from .payments.service import Payments
from .users.service import Users

#: Every shopper's password (the tests check that it never leaves the users module).
PASSWORD = "correct horse battery staple"

#: What the traces and the diagram leave out of handler names.
PREFIX = "examples.cart."


class ShopFront(t.Protocol):
    """What a scenario acts on: the in-process :class:`Shop`, or the services demo's front.

    The modules (their actions are what users and staff do), the gateway's
    switches, the bus whose dead letters an operator reads, and the
    operator's redrive.
    """

    users: Users
    catalog: Catalog
    carts: Carts
    checkout: CheckoutSaga
    payments: Payments
    notifications: Notifications
    gateway: FakeGateway
    bus: EventBus

    def redrive(self, letter: DeadLetter) -> object: ...

    def payments_die_mid_charge(self) -> None:
        """The payments module dies while its next charge waits for the gateway's answer."""


@dataclasses.dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    summary: str  # one line, for --help
    play: c.Callable[[ShopFront], None]


SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str, summary: str) -> c.Callable[[c.Callable[[ShopFront], None]], Scenario]:
    def define(play: c.Callable[[ShopFront], None]) -> Scenario:
        SCENARIOS[name] = Scenario(name, summary, play)
        return SCENARIOS[name]

    return define


@scenario("happy-path", "Ada buys a book and two mugs: stock reserved, charged, confirmed")
def happy_path(shop: ShopFront) -> None:
    shop.gateway.accept()
    token = shopper(shop, "ada@example.com")
    shop.carts.add(token, "BOOK")
    shop.carts.add(token, "MUG")
    shop.carts.change_quantity(token, "MUG", 2)
    shop.carts.add(token, "LAMP")
    shop.carts.remove(token, "LAMP")
    shop.carts.checkout(token)


@scenario("payment-declined", "Bob's card is declined: stock released, order cancelled")
def payment_declined(shop: ShopFront) -> None:
    shop.gateway.decline("insufficient funds")
    shop.users.register("bob@example.com", PASSWORD)
    assert shop.users.log_in("bob@example.com", "correct horse battery stapler") is None  # typo
    token = shopper(shop, "bob@example.com", registered=True)
    shop.carts.add(token, "BOOK", 2)
    shop.carts.checkout(token)


@scenario("flaky-payment", "the gateway times out twice; retries get Cleo's payment through")
def flaky_payment(shop: ShopFront) -> None:
    shop.gateway.flaky(failures=2)
    token = shopper(shop, "cleo@example.com")
    shop.carts.add(token, "MUG", 3)
    shop.carts.checkout(token)


@scenario("gateway-down", "Dan's charge is dead-lettered; redriven once the gateway is back")
def gateway_down(shop: ShopFront) -> None:
    shop.gateway.down()
    token = shopper(shop, "dan@example.com")
    shop.carts.add(token, "BOOK")
    order_id = shop.carts.checkout(token)
    # The charge is a dead letter; the order waits, its stock reserved. Later:
    shop.gateway.accept()
    shop.redrive(charge_letter(shop, order_id))


@scenario("gateway-down-for-good", "Eve's charge is dead-lettered; abandoned, compensated")
def gateway_down_for_good(shop: ShopFront) -> None:
    shop.gateway.down()
    token = shopper(shop, "eve@example.com")
    shop.carts.add(token, "MUG")
    order_id = shop.carts.checkout(token)
    # The gateway does not come back: the operator gives up on the order, and on its letter
    # (so that nobody redrives it by mistake; if somebody did, the saga would refund).
    shop.checkout.abandon(order_id, "gateway down")
    shop.bus.dead_letters.remove(charge_letter(shop, order_id))


@scenario("late-charge-refunded", "Gina's order is abandoned, then its charge redriven: refunded")
def late_charge_refunded(shop: ShopFront) -> None:
    shop.gateway.down()
    token = shopper(shop, "gina@example.com")
    shop.carts.add(token, "BOOK")
    order_id = shop.carts.checkout(token)
    shop.checkout.abandon(order_id, "gateway down")
    # The letter was left in the store, and a sweep redrives it once the gateway is back:
    # the card is charged for a cancelled order, so the saga refunds it.
    shop.gateway.accept()
    shop.redrive(charge_letter(shop, order_id))


@scenario("out-of-stock", "Finn wants two lamps, one is left: nothing reserved, cancelled")
def out_of_stock(shop: ShopFront) -> None:
    token = shopper(shop, "finn@example.com")
    shop.carts.add(token, "MUG")
    shop.carts.add(token, "LAMP", 2)
    shop.carts.checkout(token)


@scenario("payments-killed", "payments dies mid-charge and comes back: Hana is charged once")
def payments_killed(shop: ShopFront) -> None:
    token = shopper(shop, "hana@example.com")
    shop.carts.add(token, "BOOK")
    shop.carts.add(token, "MUG")
    # In process, the gateway's answer to the charge is lost (the handler fails and is
    # retried); as services, the payments worker is killed with SIGKILL while it waits for
    # it, and started again. Either way the gateway is asked twice and charges once.
    shop.payments_die_mid_charge()
    shop.carts.checkout(token)


def shopper(shop: ShopFront, email: str, *, registered: bool = False) -> str:
    """Register (unless ``registered``), log in, and return the session token."""
    if not registered:
        shop.users.register(email, PASSWORD)
    token = shop.users.log_in(email, PASSWORD)
    assert token is not None
    return token


def charge_letter(shop: ShopFront, order_id: str) -> DeadLetter:
    """The dead letter of an order's charge."""
    for letter in shop.bus.dead_letters:
        if isinstance(letter.event, ChargePayment) and letter.event.order_id == order_id:
            return letter
    raise LookupError(f"no dead letter for the charge of {order_id}")


def command_line(prog: str, description: str) -> argparse.ArgumentParser:
    """The parser of a demo's command line: the scenarios to play, listed in ``--help``."""
    width = max(map(len, SCENARIOS))
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog="scenarios:\n"
        + "\n".join(f"  {s.name:<{width}}  {s.summary}" for s in SCENARIOS.values()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "scenarios", nargs="*", metavar="SCENARIO", help="scenarios to play (default: all)"
    )
    return parser


def chosen(parser: argparse.ArgumentParser, names: list[str]) -> list[Scenario]:
    """The scenarios named (all, in order, when none is), or the parser's error for a typo."""
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}; choose from: {', '.join(SCENARIOS)}")
    return [SCENARIOS[name] for name in names] or list(SCENARIOS.values())


# -- playing and showing --------------------------------------------------------------------


class NoWait(SystemClock):
    """The demo's and the tests' clock: retries do not wait (the trace shows what they would)."""

    def sleep(self, seconds: float, /) -> None:
        pass

    async def sleep_async(self, seconds: float, /) -> None:
        pass


def open_shop(mode: Mode = "sync") -> Shop:
    return Shop(mode=mode, clock=NoWait())


def show(scenario: Scenario, mode: Mode = "sync") -> str:
    """Play ``scenario`` in a fresh shop; return its heading, cascade tree and final state."""
    with open_shop(mode) as shop:
        with Trace(shop.bus) as trace:
            scenario.play(shop)
        heading = f"== {scenario.name}: {scenario.summary}"
        return "\n".join([heading, "", trace.render(strip_prefix=PREFIX), "", final_state(shop)])


def final_state(shop: ShopFront) -> str:
    """Stock per product, orders, payments, emails and dead letters, as the demo prints them."""
    opening = {sku: stock for sku, _, _, stock in PRODUCTS}
    stock = [
        f"{p.sku} {p.stock}" + (f" (was {opening[p.sku]})" if opening.get(p.sku) != p.stock else "")
        for p in shop.catalog.products.values()
    ]
    orders = [
        f"{o.order_id}  {o.status}  {money(o.total_cents)}"
        + (
            f"  {o.reason}" + ("  (refunded)" if o.refunded else "")
            if isinstance(o, Compensating | Cancelled)
            else ""
        )
        for o in shop.checkout.orders.values()
    ]
    payments = []
    for p in shop.payments.payments.values():
        tries = shop.gateway.charge_requests(p.order_id)  # the gateway counts them
        payments.append(
            f"{p.order_id}  {p.status}  {money(p.amount_cents)}"
            + (f"  {p.payment_id}" if p.payment_id else "")
            + (f"  {p.detail}" if p.detail else "")
            + f"  ({tries} charge attempt{'s' if tries != 1 else ''})"
        )
    emails = [f"to {e.to}: {e.subject}" for e in shop.notifications.sent]
    letters = [
        f"{letter.event_type} -> {letter.handler.removeprefix(PREFIX)} ({letter.attempts} attempts)"
        for letter in shop.bus.dead_letters
    ]
    sections = {
        "stock": [", ".join(stock)],
        "orders": orders,
        "payments": payments,
        "emails": emails,
        "dead letters": letters,
    }
    lines = ["final state:"]
    for title, items in sections.items():
        lines.append(f"  {title}:")
        lines += [textwrap.indent(item, "    ") for item in items or ["none"]]
    return "\n".join(lines)


def money(cents: int) -> str:
    return f"${cents // 100}.{cents % 100:02d}"
