"""The Testing page's example project runs, as a user's project, and type-checks strictly.

The page's blocks marked ``notest file=NAME`` are the files of one small
project (an application, its conftest.py and its tests). They are written
to a fresh directory and run by pytest there, with nothing but eventbus
installed (its plugin is found through its entry point), then checked by
``mypy --strict``, as a user's own test files would be.
"""

from __future__ import annotations

import pathlib
import re

import pytest

PAGE = pathlib.Path(__file__).resolve().parent.parent / "docs" / "testing.md"
BLOCK = re.compile(r"^```python notest file=(\S+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def project() -> dict[str, str]:
    files = {name: code for name, code in BLOCK.findall(PAGE.read_text())}
    assert len(files) == len(BLOCK.findall(PAGE.read_text())), "two blocks name one file"
    return files


def test_every_notest_block_of_the_page_is_a_file_of_the_project() -> None:
    text = PAGE.read_text()
    assert text.count("```python notest") == len(project())
    assert set(project()) >= {"orders.py", "conftest.py", "test_orders.py", "test_api.py"}


def test_the_pages_project_passes_its_tests(pytester: pytest.Pytester) -> None:
    for name, code in project().items():
        (pytester.path / name).write_text(code)
    tests = sum(
        code.count("\ndef test_") + code.count("\nasync def test_") for code in project().values()
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-o", "asyncio_default_fixture_loop_scope=function"
    )
    result.assert_outcomes(passed=tests)


def test_the_pages_project_is_mypy_strict_clean(tmp_path: pathlib.Path) -> None:
    from mypy import api

    for name, code in project().items():
        (tmp_path / name).write_text(code)
    out, err, status = api.run(
        [
            "--strict",
            "--cache-dir",
            str(tmp_path / ".mypy_cache"),
            "--no-incremental",
            str(tmp_path),
        ]
    )
    assert status == 0, out + err


def test_the_failure_message_the_page_shows_is_the_one_a_user_gets(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib
    import sys

    from eventbus.testing import capture

    shown = re.search(r"^  ```text\n(.*?)\n  ```$", PAGE.read_text(), re.DOTALL | re.MULTILINE)
    assert shown is not None
    expected = "\n".join(line.removeprefix("  ") for line in shown.group(1).splitlines())
    (tmp_path / "orders.py").write_text(project()["orders.py"])
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "orders", raising=False)
    orders = importlib.import_module("orders")
    try:
        with capture(orders.bus) as published:
            orders.bus.publish(orders.OrderPlaced(order_id="o1", total=4500))
        with pytest.raises(AssertionError) as failed:
            published.find(orders.PaymentTaken, amount=5)
        assert str(failed.value) == expected
    finally:
        del sys.modules["orders"]
