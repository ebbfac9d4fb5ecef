"""The connections the SQLite inbox and outbox lend: one user at a time, a broken one dropped."""

from __future__ import annotations

import os
import pathlib
import sqlite3

import pytest

from eventbus import InboxError
from eventbus._sqlite import Connections, writing


def connections(tmp_path: pathlib.Path) -> Connections:
    return Connections(
        os.fspath(tmp_path / "app.db"),
        timeout=1.0,
        schema=("CREATE TABLE IF NOT EXISTS t (x INTEGER)",),
        error=InboxError,
        owner="<test>",
    )


def test_a_connection_lent_twice_at_once_is_two_connections(tmp_path: pathlib.Path) -> None:
    pool = connections(tmp_path)
    with pool.lend() as first, pool.lend() as second:
        assert first is not second
    with pool.lend() as again:
        assert again in (first, second)  # back to the idle ones, reused
    pool.close()


def test_a_connection_that_failed_is_never_lent_again(tmp_path: pathlib.Path) -> None:
    pool = connections(tmp_path)

    def use_a_closed_one() -> sqlite3.Connection:
        with pool.lend() as db:
            db.close()
            db.execute("SELECT 1")
        return db

    with pytest.raises(sqlite3.ProgrammingError):
        use_a_closed_one()
    assert pool._open == set()  # the broken one was dropped, not kept idle
    with pool.lend() as db:
        assert db.execute("SELECT count(*) FROM t").fetchone() == (0,)
    pool.close()


def test_a_transaction_left_open_is_rolled_back_before_the_connection_is_lent_again(
    tmp_path: pathlib.Path,
) -> None:
    pool = connections(tmp_path)
    with pool.lend() as db:
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t VALUES (1)")
    with pool.lend() as again:
        assert again is db
        assert not again.in_transaction
        assert again.execute("SELECT count(*) FROM t").fetchone() == (0,)
    pool.close()


def test_sqlite_errors_become_the_owners_error_saying_what_failed(tmp_path: pathlib.Path) -> None:
    pool = connections(tmp_path)

    def count_a_missing_table() -> None:
        with pool.write("count") as db:
            db.execute("SELECT * FROM missing")

    with pytest.raises(InboxError, match=r"<test> could not count: OperationalError"):
        count_a_missing_table()
    with pool.lend() as db:
        assert not db.in_transaction
    pool.close()


def test_a_connection_whose_error_was_wrapped_is_dropped_too(tmp_path: pathlib.Path) -> None:
    pool = connections(tmp_path)

    def fail_wrapped() -> None:
        with pool.lend() as db, pool.errors("read"):
            db.execute("SELECT * FROM missing")

    with pytest.raises(InboxError, match="could not read"):
        fail_wrapped()
    assert pool._open == set()  # the InboxError's cause was the connection's
    pool.close()


def test_a_write_from_a_thread_holding_the_files_write_lock_is_refused_at_once(
    tmp_path: pathlib.Path,
) -> None:
    pool = connections(tmp_path)
    with (
        writing(pool.path, "shop.pay"),
        pytest.raises(InboxError, match=r"shop\.pay's inbox transaction is open on this thread"),
    ):
        pool.write("count").__enter__()
    with pool.write("count") as db:  # once it ended, writes go
        db.execute("INSERT INTO t VALUES (1)")
    pool.close()
