"""``python -m examples.cart`` (what ``make demo`` runs) prints what it claims.

The demo runs in a subprocess, as a user runs it; the tests check the facts
it prints for each scenario (final state, retries, the dead letter and its
redrive), not its exact layout.
"""

from __future__ import annotations

import functools
import pathlib
import re
import subprocess
import sys

import pytest
from examples.cart.scenarios import PASSWORD, SCENARIOS

ROOT = pathlib.Path(__file__).resolve().parent.parent


def demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "examples.cart", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@functools.cache
def sections(mode: str = "sync") -> dict[str, str]:
    """The demo's output, every scenario, split by scenario name."""
    done = demo(*(["--async"] if mode == "async" else []))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # the log stays quiet; the trees tell the story
    parts = re.split(r"^== ", done.stdout, flags=re.MULTILINE)
    assert parts[0] == ""
    return {part.split(":", 1)[0]: part for part in parts[1:]}


def final_state(section: str) -> str:
    return section[section.index("final state:") :].strip()


# For each scenario, lines its final state must contain.
FACTS = {
    "happy-path": [
        "BOOK 4 (was 5), MUG 8 (was 10), LAMP 1",
        "order-1  confirmed  $69.00",
        "order-1  charged  $69.00  pay-1  (1 charge attempt)",
        "to ada@example.com: Welcome to the shop",
        "to ada@example.com: Order order-1 confirmed: $69.00 paid",
        "dead letters:\n    none",
    ],
    "payment-declined": [
        "BOOK 5, MUG 10, LAMP 1",
        "order-1  cancelled  $90.00  payment declined (insufficient funds)",
        "order-1  declined  $90.00  insufficient funds  (1 charge attempt)",
        "to bob@example.com: Someone failed to log in to your account",
        "to bob@example.com: Order order-1 cancelled: payment declined (insufficient funds)",
        "dead letters:\n    none",
    ],
    "flaky-payment": [
        "BOOK 5, MUG 7 (was 10), LAMP 1",
        "order-1  confirmed  $36.00",
        "order-1  charged  $36.00  pay-1  (3 charge attempts)",
        "to cleo@example.com: Order order-1 confirmed: $36.00 paid",
        "dead letters:\n    none",
    ],
    "gateway-down": [
        "BOOK 4 (was 5), MUG 10, LAMP 1",
        "order-1  confirmed  $45.00",
        "order-1  charged  $45.00  pay-1  (4 charge attempts)",
        "to dan@example.com: Order order-1 confirmed: $45.00 paid",
        "dead letters:\n    none",
    ],
    "gateway-down-for-good": [
        "BOOK 5, MUG 10, LAMP 1",
        "order-1  cancelled  $12.00  abandoned (gateway down)",
        "order-1  unavailable  $12.00  GatewayUnavailableError: payment gateway unreachable",
        "to eve@example.com: Order order-1 cancelled: abandoned (gateway down)",
        "dead letters:\n    none",
    ],
    "late-charge-refunded": [
        "BOOK 5, MUG 10, LAMP 1",
        "order-1  cancelled  $45.00  abandoned (gateway down)  (refunded)",
        "order-1  refunded  $45.00  pay-1  (4 charge attempts)",
        "to gina@example.com: Refund for order order-1: $45.00",
        "dead letters:\n    none",
    ],
    "out-of-stock": [
        "BOOK 5, MUG 10, LAMP 1",
        "order-1  cancelled  $90.00  out of stock: LAMP (2 wanted, 1 left)",
        "payments:\n    none",
        "to finn@example.com: Order order-1 cancelled: out of stock: LAMP (2 wanted, 1 left)",
        "dead letters:\n    none",
    ],
    "payments-killed": [  # one reservation, one charge (the gateway asked twice), one email
        "BOOK 4 (was 5), MUG 9 (was 10), LAMP 1",
        "order-1  confirmed  $57.00",
        "order-1  charged  $57.00  pay-1  (2 charge attempts)",
        "emails:\n    to hana@example.com: Welcome to the shop\n"
        "    to hana@example.com: Order order-1 confirmed: $57.00 paid\n  dead letters",
        "dead letters:\n    none",
    ],
}


def test_every_scenario_is_played_in_order() -> None:
    assert list(sections()) == list(SCENARIOS) == list(FACTS)


@pytest.mark.parametrize("name", list(FACTS))
def test_the_final_state_of(name: str) -> None:
    state = final_state(sections()[name])
    for fact in FACTS[name]:
        assert fact in state, f"{fact!r} not in\n{state}"


@pytest.mark.parametrize("name", list(FACTS))
def test_async_mode_ends_in_the_same_state(name: str) -> None:
    assert final_state(sections("async")[name]) == final_state(sections()[name])


def test_the_trees_show_the_cascades() -> None:
    out = sections()
    assert "payments.charge_payment ✓\n" in out["happy-path"]
    assert "└── OrderConfirmed" in out["happy-path"]
    declined = out["payment-declined"]
    for step in ("PaymentDeclined", "ReleaseStock", "StockReleased", "OrderCancelled"):
        assert f"└── {step}\n" in declined
    flaky = out["flaky-payment"]
    assert "payments.charge_payment ✓ after 3 attempts" in flaky
    assert (
        "attempt 1 failed: GatewayUnavailableError: payment gateway timed out (retry in 0.5s)"
        in flaky
    )
    assert (
        "attempt 2 failed: GatewayUnavailableError: payment gateway timed out (retry in 1s)"
        in flaky
    )
    down = out["gateway-down"]
    letter = re.search(r"payments\.charge_payment ✗ after 3 attempts → dead letter (\w{8})", down)
    assert letter is not None, down
    assert f"ChargePayment ↻ redrive of dead letter {letter[1]}" in down
    assert "PaymentUnavailable" in down
    for_good = out["gateway-down-for-good"]
    assert (
        "CheckoutAbandoned\n└── checkout.checkout_abandoned ✓" in for_good
    )
    assert "└── RefundPayment" in out["late-charge-refunded"]
    assert "└── OutOfStock" in out["out-of-stock"]
    killed = out["payments-killed"]
    assert "payments.charge_payment ✓ after 2 attempts" in killed
    assert "payment gateway answer lost (the charge was made)" in killed


def test_one_scenario_by_name() -> None:
    done = demo("out-of-stock", "happy-path")
    assert done.returncode == 0, done.stderr
    headings = re.findall(r"^== ([\w-]+):", done.stdout, flags=re.MULTILINE)
    assert headings == ["out-of-stock", "happy-path"]


def test_help_lists_every_scenario_with_its_summary() -> None:
    done = demo("--help")
    assert done.returncode == 0
    for scenario in SCENARIOS.values():
        assert re.search(
            rf"^  {scenario.name} +{re.escape(scenario.summary)}$", done.stdout, flags=re.MULTILINE
        ), scenario.name
    assert "--async" in done.stdout


def test_an_unknown_scenario_is_a_clear_error() -> None:
    done = demo("happy-path", "black-friday")
    assert done.returncode == 2
    assert done.stdout == ""
    assert (
        "error: unknown scenario 'black-friday'; choose from: happy-path, payment-declined, "
        "flaky-payment, gateway-down, gateway-down-for-good, late-charge-refunded, out-of-stock, "
        "payments-killed"
    ) in done.stderr


def test_make_demo_runs_the_cart_example() -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile[makefile.index("\ndemo:") :].split("\n\n")[0]
    assert "\t$(BIN)/python -m examples.cart\n" in recipe + "\n"


def test_log_shows_what_the_modules_did_and_no_password() -> None:
    done = demo("payment-declined", "--log")
    assert done.returncode == 0
    assert "INFO examples.cart.users.service: registered bob@example.com as u-1" in done.stderr
    assert "log-in refused for bob@example.com: wrong password" in done.stderr
    assert PASSWORD not in done.stderr + done.stdout
