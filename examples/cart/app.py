"""The composition root: one bus, one object per module, each module's handlers joined.

This is the only file that imports every module. The modules never call
one another: each gets a ``publish`` function, and its ``handlers()``
registry (its bound methods, named ``module.what``) is included in the bus,
so every ``Shop`` starts with fresh state. Each module keeps its state in a
store of its own (in memory here; in its service's SQLite file when the shop
runs as services, ``examples.cart.services``) and publishes through it.
"""

from __future__ import annotations

import asyncio
import collections.abc as c
import types
import typing as t

from eventbus import Clock, DeadLetter, Event, EventBus, PublishResult

from .cart.service import Carts
from .catalog.service import Catalog
from .checkout.service import CheckoutSaga
from .notifications.service import Notifications
from .payments.gateway import FakeGateway
from .payments.service import Payments
from .storage import MemoryStore
from .users.service import ScryptCost, Users

Mode: t.TypeAlias = t.Literal["sync", "async"]

#: What the shop sells when it opens: (sku, name, price in cents, stock).
PRODUCTS: tuple[tuple[str, str, int, int], ...] = (
    ("BOOK", "Domain-Driven Design", 4500, 5),
    ("MUG", "Event mug", 1200, 10),
    ("LAMP", "Desk lamp", 3900, 1),
)


class Shop:
    """The shopping cart application: six modules on one :class:`EventBus`.

    ``mode`` chooses how the user's actions are dispatched: ``"sync"`` with
    ``bus.publish`` (the async handlers run on the bus's private loop),
    ``"async"`` with ``await bus.publish_async`` on the shop's own event
    loop. ``clock`` is the bus's :class:`~eventbus.Clock`, which waits
    between retries (tests and the demo pass one that returns at once).

    Use it as a context manager, or call :meth:`close`: in async mode it owns
    an event loop, so its actions are called from plain (sync) code, as the
    scenarios do, not from inside another running loop.
    """

    def __init__(
        self,
        *,
        mode: Mode = "sync",
        products: c.Iterable[tuple[str, str, int, int]] = PRODUCTS,
        clock: Clock | None = None,
        password_cost: ScryptCost | None = None,
    ) -> None:
        if mode not in ("sync", "async"):
            raise ValueError(f"mode must be 'sync' or 'async', got {mode!r}")
        self.mode = mode
        self._runner = asyncio.Runner() if mode == "async" else None
        self.bus = bus = EventBus(clock=clock)
        publish = self.publish

        self.users = Users(MemoryStore(publish), cost=password_cost)
        self.catalog = Catalog(MemoryStore(publish))
        self.carts = Carts(MemoryStore(publish))
        self.gateway = FakeGateway()  # another company's system: its own store
        self.payments = Payments(self.gateway, MemoryStore(publish))
        self.checkout = CheckoutSaga(MemoryStore(publish))
        self.notifications = Notifications(MemoryStore(publish))

        # Each module subscribes its own handlers; the shop only joins them.
        for module in (
            self.catalog,
            self.carts,
            self.payments,
            self.checkout,
            self.notifications,
        ):
            bus.include(module.handlers())

        self.list_products(products)

    def list_products(self, products: c.Iterable[tuple[str, str, int, int]]) -> None:
        for sku, name, price_cents, stock in products:
            self.catalog.add_product(sku, name, price_cents=price_cents, stock=stock)

    # -- dispatch ------------------------------------------------------------------------

    def publish(self, event: Event) -> None:
        """What the modules publish with.

        From a handler, ``bus.publish`` queues the event after the current
        one, whatever the mode. From a user action, the event is dispatched in
        the shop's mode: in async mode, on the shop's loop (a user action
        runs outside it, a handler inside it).
        """
        if self._runner is not None and not _loop_is_running():
            self._runner.run(self.bus.publish_async(event))
        else:
            self.bus.publish(event)

    def payments_die_mid_charge(self) -> None:
        """In one process nothing can die alone: the gateway's answer to the next charge is
        lost instead (the charge is made; the handler fails, and its retry asks again)."""
        self.gateway.lose_next_answer()

    def redrive(self, letter: DeadLetter) -> PublishResult:
        """An operator's redrive of a dead letter, in the shop's mode."""
        if self._runner is not None:
            return self._runner.run(self.bus.redrive_async(letter))
        return self.bus.redrive(letter)

    # -- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()

    def __enter__(self) -> t.Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        self.close()


def _loop_is_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
