"""``python -m examples.cart.services`` (``make demo-services``): the shop as six services.

End to end, as a user runs it: the demo starts its own redis-server (the
program ``make test`` installs) and six worker processes per scenario, plays
every scenario through them, and stops everything. Each scenario must end
in the same final state as in one process, and the scenario that kills the
payments service mid-charge must show it was killed, and still one
reservation, one charge and one confirmation.
"""

from __future__ import annotations

import functools
import os
import pathlib
import re
import subprocess
import sys

import pytest
from examples.cart.scenarios import SCENARIOS, show
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


@functools.cache
def played() -> dict[str, str]:
    """Every scenario's section of the services demo's output, by name."""
    before = services_running()
    done = subprocess.run(
        [sys.executable, "-m", "examples.cart.services"],
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
