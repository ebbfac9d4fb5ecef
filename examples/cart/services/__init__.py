"""The shop as six services on Redis: the same modules, each in worker processes of its own.

Each service is one of the six modules with a bus of its own on one Redis
stream (``EventBus(broker=RedisBroker(...))``), its state in its own SQLite
file (:class:`~examples.cart.storage.SQLiteStore`), which holds its inbox
(every handler is ``idempotent=True``: a handler's writes, the events it
publishes and the record that it handled the event commit together) and
its outbox (a relay sends what the service published, once committed).
The payment gateway, another company's system, keeps its state in a file
of its own.

A worker of a service is::

    python -m eventbus worker examples.cart.services:catalog --handlers 'catalog.*' \\
        --outbox DATA/catalog.db

(users handles no events: it runs only a relay, ``python -m eventbus relay
examples.cart.services:users --outbox DATA/users.db``). The attribute
named is built on first use from the environment: ``CART_REDIS_URL``,
``CART_NAMESPACE`` and ``CART_DATA`` (the directory of the files), and
``CART_TRACES``, if set, a directory where the service writes its
OpenTelemetry spans (:mod:`.spans`): every bus has ``Tracing(parent=True)``,
so an action and all it sets going across the services is one trace.
``python -m examples.cart.services`` starts a private Redis and the six
services, and plays the scenarios through them.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import typing as t

from eventbus import EventBus
from eventbus.redis import RedisBroker

if t.TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

from ..cart.service import Carts
from ..catalog.service import Catalog
from ..checkout.service import CheckoutSaga
from ..notifications.service import Notifications
from ..payments.gateway import FakeGateway
from ..payments.service import Payments
from ..scenarios import NoWait
from ..storage import SQLiteStore
from ..users.service import Users

#: The services, in the order the demo starts them.
SERVICES = ("users", "catalog", "cart", "payments", "checkout", "notifications")

#: Seconds before another worker takes over what a killed worker held (a live one renews).
CLAIM_IDLE = 1.0

Module: t.TypeAlias = Users | Catalog | Carts | Payments | CheckoutSaga | Notifications


@dataclasses.dataclass(frozen=True, slots=True)
class Service:
    """One service: its bus, its store (its SQLite file), and its module on that store."""

    name: str
    bus: EventBus
    broker: RedisBroker
    store: SQLiteStore
    module: Module
    gateway: FakeGateway | None = None  # payments' gateway

    @property
    def handlers(self) -> list[str]:
        """The names of its handlers: one consumer group each."""
        return [subscription.name for subscription in self.bus.subscriptions]

    def close(self) -> None:
        self.store.close()
        if self.gateway is not None and isinstance(self.gateway.store, SQLiteStore):
            self.gateway.store.close()
        self.broker.close()


def open_service(
    name: str,
    *,
    url: str,
    namespace: str,
    data: str | os.PathLike[str],
    on_commit: t.Callable[[], object] | None = None,
    tracer_provider: TracerProvider | None = None,
) -> Service:
    """The service ``name`` of the shop on the Redis at ``url``, its files in ``data``.

    ``on_commit`` is called after each commit of an action (not of a
    handler): the services demo's front waits there for the cascade.
    ``tracer_provider``: the service's bus is traced, with ``parent=True``.
    """
    if name not in SERVICES:
        raise LookupError(f"no service {name!r}; the services are {', '.join(SERVICES)}")
    directory = pathlib.Path(data)
    store = SQLiteStore(directory / f"{name}.db", on_commit=on_commit)
    broker = RedisBroker(url, namespace=namespace, claim_idle=CLAIM_IDLE)
    bus = EventBus(broker=broker, inbox=store.inbox, clock=NoWait())
    gateway = None
    module: Module
    if name == "users":
        module = Users(store)
    elif name == "catalog":
        module = Catalog(store)
    elif name == "cart":
        module = Carts(store)
    elif name == "payments":
        gateway = FakeGateway(SQLiteStore(directory / "gateway.db"))
        module = Payments(gateway, store)
    elif name == "checkout":
        module = CheckoutSaga(store)
    else:
        module = Notifications(store)
    if not isinstance(module, Users):  # users publishes; it handles nothing
        bus.include(module.handlers())
    if tracer_provider is not None:
        from eventbus.otel import Tracing

        Tracing(tracer_provider, parent=True).install(bus)  # before the worker starts
    return Service(name, bus, broker, store, module, gateway)


def from_environment(name: str) -> Service:
    """The service ``name`` configured by the environment (``CART_REDIS_URL`` and the others)."""
    try:
        url, namespace, data = (
            os.environ[variable] for variable in ("CART_REDIS_URL", "CART_NAMESPACE", "CART_DATA")
        )
    except KeyError as missing:
        raise LookupError(
            f"{missing.args[0]} is not set: a service of the shop needs CART_REDIS_URL, "
            "CART_NAMESPACE and CART_DATA (python -m examples.cart.services sets them)"
        ) from None
    tracer_provider = None
    if traces := os.environ.get("CART_TRACES"):
        from .spans import provider

        tracer_provider = provider(traces, name)
    return open_service(
        name, url=url, namespace=namespace, data=data, tracer_provider=tracer_provider
    )


def __getattr__(name: str) -> EventBus:
    """``examples.cart.services:catalog`` and the others: the service's bus, built once."""
    if name not in SERVICES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    bus = from_environment(name).bus
    globals()[name] = bus
    return bus
