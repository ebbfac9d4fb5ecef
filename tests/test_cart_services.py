"""``python -m examples.cart.services`` (``make demo-services``): the shop as six services.

End to end, as a user runs it: the demo starts its own redis-server (the
program ``make test`` installs) and six worker processes per scenario, plays
every scenario through them, and stops everything. Each scenario must end
in the same final state as in one process, and the scenario that kills the
payments service mid-charge must show it was killed, and still one
reservation, one charge and one confirmation.
"""

from __future__ import annotations

import collections.abc as c
import functools
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import pytest
from examples.cart.scenarios import SCENARIOS, show
from examples.cart.services import spans
from examples.cart.services.demo import Processes, ServiceFailedError, ServicesShop

from tests.test_cart_demo import final_state

ROOT = pathlib.Path(__file__).resolve().parent.parent


def services_running() -> list[str]:
    """The command lines of processes still running a service of the shop."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue  # ended meanwhile
            if "examples.cart.services:" in command:
                found.append(command)
    return found


#: Where the demo run by played() kept its files (``--keep``), removed after this module.
KEPT = pathlib.Path(tempfile.gettempdir()) / f"eventbus-cart-services-{os.getpid()}"


@pytest.fixture(scope="module", autouse=True)
def _remove_kept_files() -> c.Iterator[None]:
    yield
    shutil.rmtree(KEPT, ignore_errors=True)


@functools.cache
def played() -> dict[str, str]:
    """Every scenario's section of the services demo's output, by name (its files in KEPT)."""
    before = services_running()
    shutil.rmtree(KEPT, ignore_errors=True)
    done = subprocess.run(
        [sys.executable, "-m", "examples.cart.services", "--keep", str(KEPT)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stderr == ""
    assert services_running() == before  # it stopped every process it started
    parts = re.split(r"^== ", done.stdout, flags=re.MULTILINE)
    assert parts[0] == ""
    return {part.split(":", 1)[0]: part for part in parts[1:]}


def test_every_scenario_is_played_through_the_services() -> None:
    assert list(played()) == list(SCENARIOS)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_the_services_end_in_the_same_state_as_one_process(name: str) -> None:
    in_process = final_state(show(SCENARIOS[name]))
    assert final_state(played()[name]) == in_process


def test_the_payments_service_killed_mid_charge_charges_once() -> None:
    killed = played()["payments-killed"]
    note = re.search(
        r"! payments \(pid (\d+)\) killed with SIGKILL while its charge waited for the "
        r"gateway's answer; started again \(pid (\d+)\)",
        killed,
    )
    assert note is not None, killed
    assert note[1] != note[2]
    state = final_state(killed)
    assert "BOOK 4 (was 5), MUG 9 (was 10)" in state  # one reservation
    assert "order-1  charged  $57.00  pay-1  (2 charge attempts)" in state  # asked twice, one pay-1
    assert state.count("confirmed: $57.00 paid") == 1  # one confirmation email
    assert len(re.findall(r"[├└]── PaymentSucceeded", killed)) == 1  # one on the stream


def test_the_cascade_is_read_back_from_the_stream() -> None:
    happy = played()["happy-path"]
    for line in (
        "CheckoutRequested\n├── checkout.checkout_requested ✓\n└── ReserveStock",
        "├── payments.charge_payment ✓",
        "├── cart.order_confirmed ✓",
        "├── notifications.order_confirmed ✓",
    ):
        assert line in happy, happy
    assert "ProductListed" not in happy  # the shop's opening is not the scenario's
    down = played()["gateway-down-for-good"]
    assert "PaymentUnavailable\n" in down


#: The event type of an email sent: the last event of a checkout.
EMAIL = "notifications.email_sent"


def traced(name: str) -> list[spans.Span]:
    """The spans every process of scenario ``name`` wrote (its services', the front's)."""
    played()
    return spans.read(KEPT / name / "traces")


def trace_of(found: list[spans.Span], action: str) -> list[spans.Span]:
    [root] = [s for s in found if s.name == action and s.service == spans.FRONT]
    return [s for s in found if s.trace_id == root.trace_id]


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_no_span_of_any_process_begins_a_trace_of_its_own(name: str) -> None:
    """Every span follows from an action of the front: the context crossed every hop."""
    found = traced(name)
    assert [s for s in found if s.attributes.get("messaging.operation.type") == "process"]
    summary = spans.summary(found)
    assert not [line for line in summary if "began a trace of their own" in line], summary
    assert "began a trace of their own" not in played()[name]


def test_a_checkout_is_one_trace_from_the_front_to_the_last_email() -> None:
    checkout = trace_of(traced("happy-path"), "cart.checkout")
    services = {s.service for s in checkout}
    assert services == {"front", "cart", "checkout", "catalog", "payments", "notifications"}
    handlers = [
        s.attributes["messaging.consumer.group.name"]
        for s in checkout
        if s.attributes.get("messaging.operation.type") == "process"
    ]
    for handler in (
        "checkout.checkout_requested",
        "catalog.reserve_stock",
        "payments.charge_payment",
        "checkout.payment_succeeded",
        "notifications.order_confirmed",
    ):
        assert sum(h.endswith(handler) for h in handlers) == 1, (handler, handlers)
    [email] = [  # the last event: the email
        s for s in checkout if s.attributes.get("eventbus.event_type") == EMAIL
    ]
    assert email.kind == "producer"
    assert email.service == "notifications"
    ids = {s.span_id for s in checkout}
    assert all(s.parent_id in ids for s in checkout if s.service != "front")  # one tree
    assert (
        "cart.checkout: one trace of 15 spans through catalog, cart, payments, checkout, "
        "notifications; last: checkout.order_confirmed by cart.order_confirmed, "
        "notifications.order_confirmed"
    ) in played()["happy-path"]


def test_the_charge_taken_over_from_the_killed_payments_stays_in_the_checkout_s_trace() -> None:
    found = traced("payments-killed")
    processes = {p.name.split("-")[0] for p in (KEPT / "payments-killed" / "traces").iterdir()}
    assert len(list((KEPT / "payments-killed" / "traces").glob("payments-*.jsonl"))) == 2
    assert processes >= {"front", "payments", "checkout"}
    checkout = trace_of(found, "cart.checkout")
    [charge] = [  # the killed worker's never ended; the one that took its entry over did
        s
        for s in checkout
        if s.attributes.get("messaging.consumer.group.name", "").endswith("charge_payment")
    ]
    assert charge.service == "payments"
    assert any(s.attributes.get("eventbus.event_type") == EMAIL for s in checkout)


def test_a_redrive_is_an_action_of_its_own_and_its_cascade_in_its_trace() -> None:
    redrive = trace_of(traced("gateway-down"), "operator.redrive")
    handlers = {s.attributes.get("messaging.consumer.group.name", "") for s in redrive}
    assert any(h.endswith("payments.charge_payment") for h in handlers)  # redriven in the front
    assert any(h.endswith("notifications.order_confirmed") for h in handlers)


def test_the_trace_summary_says_when_a_span_lost_its_trace() -> None:
    """The check above can fail: a span whose parent no process wrote is named."""

    def span(name: str, service: str, span_id: str, parent: str | None) -> spans.Span:
        process = {
            "messaging.operation.type": "process",
            "messaging.message.id": "e1",
            "eventbus.event_type": "x.e",
        }
        attributes = {**process, "messaging.consumer.group.name": "x.y"} if parent else {}
        return spans.Span(service, name, "t1", span_id, parent, "consumer", 1, 2, attributes)

    whole = [span("cart.checkout", "front", "a", None), span("process E", "cart", "b", "a")]
    assert spans.summary(whole) == [
        "cart.checkout: one trace of 2 spans through cart; last: x.e by x.y"
    ]
    broken = [*whole, span("process F", "checkout", "c", "gone")]
    assert spans.summary(broken)[-1] == (
        "1 span(s) began a trace of their own: process F in checkout"
    )
    orphan = [*whole, span("send G", "payments", "d", None)]
    assert spans.summary(orphan)[-1] == "1 span(s) began a trace of their own: send G in payments"


def test_make_demo_services_runs_it() -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile[makefile.index("\ndemo-services:") :].split("\n\n")[0]
    assert "redis-server" in recipe.split("\n")[1]  # the program is installed first
    assert "\t$(BIN)/python -m examples.cart.services\n" in recipe + "\n"


def test_a_service_that_fails_to_start_stops_the_others_and_says_why(
    redis_url: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Processes.command

    def command(self: Processes, service: str) -> list[str]:
        if service == "checkout":  # a service that dies as it starts
            return [sys.executable, "-c", "import sys; print('no such table'); sys.exit(3)"]
        return real(self, service)

    monkeypatch.setattr(Processes, "command", command)
    before = services_running()

    def open_shop() -> None:
        with ServicesShop(redis_url, tmp_path) as shop:
            raise AssertionError(f"{shop} opened with a dead service")

    with pytest.raises(ServiceFailedError, match=r"the checkout service exited with status 3"):
        open_shop()
    assert services_running() == before  # the five that started were stopped
