"""The examples run, and print what they claim (an example that rots misleads every reader)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def test_basics_example_shows_both_dispatch_paths_and_a_dead_letter() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "basics.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    # audit (priority 10, async) runs before reserve (priority 0, sync), on both paths
    assert out.index("audit: cart.item_added") < out.index("reserve: 2 x A-1, 1 left")
    assert "audit: catalog.stock_low (caused by " in out  # the child carries its causation id
    assert "attempt 2: ConnectionError: mail server unreachable; retrying" in out
    assert "ok=False, dead letters=1" in out
    assert "reserve: 1 x A-1, 4 left" in out
    assert "ok=True" in out
    # run as __main__, its handlers are named by the module's importable name
    assert (
        "catalog.stock_low -> examples.basics.notify_buyer: builtins.ConnectionError: "
        "mail server unreachable (3 attempts)" in out
    )
    assert done.stderr == ""
