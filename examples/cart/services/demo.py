"""The services demo: six services as worker processes on a private Redis, and their front.

For each scenario: a namespace and a directory of its own (a fresh shop),
the six services started (:class:`Processes`), the scenario played through
:class:`ServicesShop` (what users and staff do runs in this process, on
the services' own files, like the web front of each service; everything
that follows runs in the workers, through Redis), and then its cascade, read
back from the stream, its traces (every action of the front and all it set
going across the services is one OpenTelemetry trace), and its final state,
read from the services' files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import pathlib
import signal
import sqlite3
import subprocess
import sys
import time
import typing as t
import uuid

import redis
from opentelemetry.trace import Tracer

from eventbus import DeadLetter, Event, EventBus, PublishResult

from ..app import PRODUCTS
from ..cart.service import Carts
from ..catalog.service import Catalog
from ..checkout.service import CheckoutSaga
from ..notifications.service import Notifications
from ..payments.gateway import FakeGateway
from ..payments.service import Payments
from ..scenarios import PREFIX, Scenario, final_state
from ..users.service import Users
from . import SERVICES, Service, open_service, spans

#: How long the services may take to start, or a scenario's cascade to settle (seconds).
PATIENCE = 60.0
#: The consumer group the demo reads the cascade back through; it never reads, so Redis
#: keeps every entry of the scenario (a stream is trimmed up to its slowest group).
TRACE_GROUP = "demo.trace"
#: The directory of the repository, where ``python -m eventbus`` finds ``examples``.
ROOT = pathlib.Path(__file__).resolve().parents[3]


class ServiceFailedError(RuntimeError):
    """A service's process ended on its own, or the services never settled."""


@dataclasses.dataclass
class Processes:
    """The six services' processes for one scenario (logs: ``{data}/{service}.log``)."""

    url: str
    namespace: str
    data: pathlib.Path
    handlers: dict[str, list[str]]  # service -> its handlers' names
    running: dict[str, subprocess.Popen[bytes]] = dataclasses.field(default_factory=dict)

    def command(self, service: str) -> list[str]:
        outbox = ["--outbox", str(self.data / f"{service}.db"), "--poll", "0.02", "--lease", "2"]
        app = f"examples.cart.services:{service}"
        if not self.handlers[service]:  # users: it only publishes
            return [sys.executable, "-m", "eventbus", "relay", app, *outbox]
        concurrency = str(len(self.handlers[service]))  # a slot per handler: none waits
        return [
            *(sys.executable, "-m", "eventbus", "worker", app),
            *("--handlers", f"{service}.*", "--concurrency", concurrency, *outbox),
        ]

    def start(self, service: str) -> subprocess.Popen[bytes]:
        environment = {
            **os.environ,
            "CART_REDIS_URL": self.url,
            "CART_NAMESPACE": self.namespace,
            "CART_DATA": str(self.data),
            "CART_TRACES": str(self.data / "traces"),
        }
        with (self.data / f"{service}.log").open("ab") as log:
            process = subprocess.Popen(
                self.command(service),
                cwd=ROOT,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        self.running[service] = process
        return process

    def start_all(self, broker_groups: t.Callable[[], set[str]]) -> None:
        for service in SERVICES:
            self.start(service)
        expected = {name for names in self.handlers.values() for name in names}
        deadline = time.monotonic() + PATIENCE
        while not expected <= broker_groups():  # each worker makes its groups as it starts
            self.check()
            if time.monotonic() > deadline:
                raise ServiceFailedError(f"the services did not start in {PATIENCE:g}s")
            time.sleep(0.02)

    def kill(self, service: str) -> int:
        """SIGKILL ``service``'s process; its pid."""
        process = self.running.pop(service)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=PATIENCE)
        return process.pid

    def check(self) -> None:
        for service, process in self.running.items():
            if process.poll() is not None:
                log = (self.data / f"{service}.log").read_text(errors="replace")
                raise ServiceFailedError(
                    f"the {service} service exited with status {process.returncode}:\n{log[-3000:]}"
                )

    def stop_all(self) -> None:
        """SIGTERM every service (each finishes what it runs, and exits 0), then wait.

        One that does not stop in time is killed (SIGKILL), after the others
        were waited for, and named in the error.
        """
        for process in self.running.values():
            if process.poll() is None:
                process.terminate()
        stuck = []
        for service, process in self.running.items():
            try:
                process.wait(timeout=PATIENCE)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                stuck.append(service)
        self.running.clear()
        if stuck:
            raise ServiceFailedError(f"did not stop on SIGTERM (killed): {', '.join(stuck)}")


class ServicesShop:
    """The front of the six services for one scenario: what :class:`ShopFront` asks of a shop.

    The modules here work on the services' files, as their web front
    would: an action commits its writes and the events it publishes (to the
    service's outbox) in one transaction, and the front then waits until
    the cascade it started has settled (:meth:`settle`): every outbox sent,
    every entry of the stream acknowledged by every handler.
    """

    def __init__(self, url: str, data: pathlib.Path) -> None:
        self.namespace = f"cart-{uuid.uuid4().hex[:8]}"
        self.data = data
        self.notes: list[str] = []  # what happened to the services themselves, for the output
        self._kill_when_hanging = False
        self._services: dict[str, Service] = {}
        self._tracers = spans.provider(data / "traces", spans.FRONT)  # the front's own spans
        try:
            for name in SERVICES:
                self._services[name] = open_service(
                    name,
                    url=url,
                    namespace=self.namespace,
                    data=data,
                    on_commit=self.settle,
                    tracer_provider=self._tracers,
                )
        except BaseException:
            self._close()
            raise
        services = self._services
        self._tracer = tracer = self._tracers.get_tracer("examples.cart.front")
        self.users = t.cast(Users, Served(services["users"].module, "users", tracer))
        self.catalog = t.cast(Catalog, Served(services["catalog"].module, "catalog", tracer))
        self.carts = t.cast(Carts, Served(services["cart"].module, "cart", tracer))
        self.payments = t.cast(Payments, Served(services["payments"].module, "payments", tracer))
        self.checkout = t.cast(
            CheckoutSaga, Served(services["checkout"].module, "checkout", tracer)
        )
        self.notifications = t.cast(
            Notifications, Served(services["notifications"].module, "notifications", tracer)
        )
        gateway = services["payments"].gateway
        assert gateway is not None
        self.gateway: FakeGateway = gateway
        self.bus: EventBus = services["payments"].bus  # any: they share the dead letters
        self._broker = broker = services["payments"].broker
        self._client: redis.Redis = broker.client
        self._stream = broker.keys.stream
        self.processes = Processes(
            url, self.namespace, data, {name: s.handlers for name, s in services.items()}
        )
        self._opened: bytes = b"0-0"  # the stream's last entry once the shop had opened
        self._opened_at = 0  # and when (ns since the epoch), for the traces since

    # -- the lifetime of the services -------------------------------------------------

    def __enter__(self) -> t.Self:
        try:
            self._client.xgroup_create(self._stream, TRACE_GROUP, id="0", mkstream=True)
            self.processes.start_all(lambda: {g["handler"] for g in self._broker.groups()})
            for sku, name, price_cents, stock in PRODUCTS:  # the shop opens
                self.catalog.add_product(sku, name, price_cents=price_cents, stock=stock)
            self._opened = self._client.xinfo_stream(self._stream)["last-generated-id"]
            self._opened_at = time.time_ns()
        except BaseException:
            self.__exit__()  # whatever was started is stopped
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.processes.stop_all()
        finally:
            self._close()

    def _close(self) -> None:
        for service in self._services.values():
            service.close()
        self._tracers.shutdown()

    # -- what ShopFront asks --------------------------------------------------------------

    def redrive(self, letter: DeadLetter) -> PublishResult:
        """An operator's redrive: the handler runs again here, on its service's files."""
        service = self._services[letter.handler.split(".", 1)[0]]
        with spans.front_span(self._tracer, "operator.redrive"):
            result = service.bus.redrive(letter)
            self.settle()
        return result

    def payments_die_mid_charge(self) -> None:
        """The gateway holds the next charge (made) unanswered; the front then SIGKILLs payments."""
        self.gateway.hang_next_charge()
        self._kill_when_hanging = True

    # -- waiting for a cascade ----------------------------------------------------------

    def settle(self) -> None:
        """Wait until nothing moves: outboxes empty, every entry acknowledged, twice alike."""
        deadline = time.monotonic() + PATIENCE
        previous: tuple[object, ...] | None = None
        while True:
            self.processes.check()
            if self._kill_when_hanging and self.gateway.state.hanging is not None:
                self._kill_payments()
            now = self._quiet()
            if now is not None and now == previous:
                return
            previous = now
            if time.monotonic() > deadline:
                raise ServiceFailedError(
                    f"the services did not settle in {PATIENCE:g}s: {self._broker.groups()}"
                )
            time.sleep(0.02)

    def _quiet(self) -> tuple[object, ...] | None:
        """What the stream and the outboxes hold, if nothing is waiting; None if busy.

        A group is done when it read up to the stream's last entry and has
        none pending (its ``lag`` would say the first, but Redis before 7.0
        does not tell it).
        """
        last = self._client.xinfo_stream(self._stream)["last-generated-id"]
        newest = last.decode() if isinstance(last, bytes) else str(last)
        for group in self._broker.groups():
            if group["handler"] != TRACE_GROUP and (
                group["pending"] or group["last_delivered"] != newest
            ):
                return None
        if any(len(service.store.outbox) for service in self._services.values()):
            return None
        return (last,)

    def _kill_payments(self) -> None:
        self._kill_when_hanging = False
        killed = self.processes.kill("payments")
        self.gateway.release()  # the request was never answered: its caller is gone
        restarted = self.processes.start("payments").pid
        self.notes.append(
            f"payments (pid {killed}) killed with SIGKILL while its charge waited for the "
            f"gateway's answer; started again (pid {restarted})"
        )

    # -- what the demo shows ------------------------------------------------------------

    def cascade(self) -> str:
        """The events since the shop opened, by causation, with who handled each.

        From the stream (the trace group kept every entry), the services'
        inbox records (which handler handled which event) and the dead
        letters. Unlike the in-process trace it cannot tell which handler
        published an event, so an event's handlers and the events it
        caused are shown side by side.
        """
        entries: list[tuple[bytes, dict[bytes, bytes]]] = self._client.xrange(  # type: ignore[assignment]
            self._stream, min=b"(" + self._opened
        )
        events = [Event.from_json(f[b"event_type"].decode(), f[b"payload"]) for _, f in entries]
        handled: dict[str, list[str]] = {}
        for service in self._services.values():
            with contextlib.closing(sqlite3.connect(service.store.path)) as db:
                for handler, event_id in db.execute(
                    f"SELECT handler, event_id FROM {service.store.inbox.table}"
                ):
                    handled.setdefault(event_id, []).append(f"{handler} ✓")
        for letter in self.bus.dead_letters:
            handled.setdefault(str(letter.event.event_id), []).append(
                f"{letter.handler} ✗ dead letter ({letter.attempts} attempts)"
            )
        ids = {str(event.event_id) for event in events}
        children: dict[str | None, list[Event]] = {}
        for event in events:
            cause = str(event.causation_id) if event.causation_id else None
            children.setdefault(cause if cause in ids else None, []).append(event)
        lines: list[str] = []

        def show(event: Event, indent: str, last: bool, top: bool) -> None:
            runs = sorted(handled.get(str(event.event_id), []))
            below = children.get(str(event.event_id), [])
            label = type(event).__name__ + ("" if runs or below else " (no handler)")
            lines.append(label if top else f"{indent}{'└── ' if last else '├── '}{label}")
            inner = "" if top else indent + ("    " if last else "│   ")
            items: list[str | Event] = [*runs, *below]
            for number, item in enumerate(items):
                end = number == len(items) - 1
                if isinstance(item, str):
                    lines.append(f"{inner}{'└── ' if end else '├── '}{item}")
                else:
                    show(item, inner, end, top=False)

        for root in children.get(None, []):
            show(root, "", True, top=True)
        return "\n".join(lines).replace(PREFIX, "")

    def traces(self) -> list[str]:
        """Per action since the shop opened that set events going, its trace; and lost ones.

        From the spans every process of the scenario wrote (its services',
        the front's): see :func:`.spans.summary`.
        """
        found = spans.read(self.data / "traces")
        return [line.replace(PREFIX, "") for line in spans.summary(found, self._opened_at)]


class Served:
    """A module as its web front serves it: each of its actions in a span of the front.

    As a web framework's OpenTelemetry instrumentation would make for the
    request; the events the action publishes go on in that span's trace.
    """

    def __init__(self, module: object, service: str, tracer: Tracer) -> None:
        self._module = module
        self._service = service
        self._tracer = tracer

    def __getattr__(self, name: str) -> t.Any:
        value = getattr(self._module, name)
        if name.startswith("_") or not callable(value) or isinstance(value, type):
            return value

        @functools.wraps(value)
        def served(*args: t.Any, **kwargs: t.Any) -> t.Any:
            with spans.front_span(self._tracer, f"{self._service}.{name}"):
                return value(*args, **kwargs)

        return served


def show(scenario: Scenario, url: str, data: pathlib.Path) -> str:
    """Play ``scenario`` through six fresh services; its heading, cascade, notes, final state."""
    data.mkdir(parents=True, exist_ok=True)
    with ServicesShop(url, data) as shop:
        scenario.play(shop)
        shop.settle()
        parts = [f"== {scenario.name}: {scenario.summary}", "", shop.cascade()]
        parts += ["", *(f"! {note}" for note in shop.notes)] if shop.notes else []
        parts += ["", "traces (OpenTelemetry spans of every process):"]
        parts += [f"  {line}" for line in shop.traces()]
        parts += ["", final_state(shop)]
    return "\n".join(parts)
