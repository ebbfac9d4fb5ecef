"""`python -m eventbus dead-letters ...`, driven end to end in subprocesses."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from eventbus import EventBus, SQLiteDeadLetterStore
from tests.cli_app import ParcelReady, handlers

ROOT = pathlib.Path(__file__).resolve().parent.parent
APP = "tests.cli_app:bus"


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventbus", "dead-letters", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **env},
        timeout=60,
        check=False,
    )


@pytest.fixture
def db(tmp_path: pathlib.Path) -> str:
    """A store holding two dead letters of tests.cli_app.book_courier."""
    path = str(tmp_path / "dlq.db")
    with SQLiteDeadLetterStore(path) as store:
        bus = EventBus(dead_letters=store)
        bus.include(handlers)
        bus.publish(ParcelReady(parcel_id="p-1"))
        bus.publish(ParcelReady(parcel_id="p-2"))
        assert len(store) == 2
    return path


def letters(path: str) -> list[str]:
    with SQLiteDeadLetterStore(path, create=False) as store:
        return [str(letter.id) for letter in store]


def test_list_prints_a_table_of_the_letters(db: str) -> None:
    done = cli("list", "--db", db, "--app", APP)
    assert done.returncode == 0, done.stderr
    header, rule, *rows = done.stdout.splitlines()[:4]
    assert header.split() == [
        "ID",
        "EVENT",
        "TYPE",
        "HANDLER",
        "ATTEMPTS",
        "LAST",
        "FAILURE",
        "ERROR",
    ]
    assert set(rule) == {"-", " "}
    assert all(
        "cli_app.parcel_ready" in row and "tests.cli_app.book_courier" in row for row in rows
    )
    assert "carrier down for parcel p-1" in done.stdout
    assert "2 dead letter(s)" in done.stdout


def test_list_without_the_app_reports_undefined_event_types_and_keeps_them(db: str) -> None:
    done = cli("list", "--db", db)  # the subprocess never imports tests.cli_app
    assert done.returncode == 0, done.stderr
    assert "cli_app.parcel_ready (!)" in done.stdout
    assert "not defined in this process: cli_app.parcel_ready" in done.stdout
    assert "--app" in done.stdout
    assert len(letters(db)) == 2


def test_list_filters(db: str) -> None:
    assert "no dead letters in" in cli("list", "--db", db, "--event-type", "other.type").stdout
    assert (
        "2 dead letter(s)"
        in cli("list", "--db", db, "--handler", "tests.cli_app.book_courier").stdout
    )
    assert "no dead letters" in cli("list", "--db", db, "--older-than", "1d").stdout
    bad = cli("list", "--db", db, "--older-than", "soon")
    assert bad.returncode == 2
    assert "not a duration like 30s" in bad.stderr


def test_show_prints_event_error_and_traceback_by_id_prefix(db: str) -> None:
    first = letters(db)[0]
    done = cli("show", first[:8], "--db", db, "--app", APP)
    assert done.returncode == 0, done.stderr
    assert first in done.stdout
    assert '"parcel_id": "p-1"' in done.stdout
    assert "builtins.ConnectionError: carrier down for parcel p-1" in done.stdout
    assert "Traceback (most recent call last)" in done.stdout
    missing = cli("show", "ffffffff", "--db", db)
    assert missing.returncode == 2
    assert "no dead letter with id 'ffffffff'" in missing.stderr


def test_redrive_removes_letters_whose_handler_now_succeeds(db: str) -> None:
    done = cli("redrive", "--all", "--db", db, "--app", APP, CLI_APP_CARRIER="up")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("redriven, removed") == 2
    assert "2 redriven, 0 still dead" in done.stdout
    assert letters(db) == []


def test_redrive_that_fails_again_keeps_the_letter_and_exits_1(db: str) -> None:
    first = letters(db)[0]
    done = cli("redrive", first[:8], "--db", db, "--app", APP)
    assert done.returncode == 1
    assert "failed again (2 attempts)" in done.stdout
    with SQLiteDeadLetterStore(db, create=False) as store:
        assert [letter.attempts for letter in store] == [2, 1]


def test_redrive_and_purge_refuse_to_act_on_everything_by_default(db: str) -> None:
    for verb in ("redrive", "purge"):
        done = cli(verb, "--db", db, "--app", APP)
        assert done.returncode == 2
        assert "--all" in done.stderr
    assert len(letters(db)) == 2


def test_redrive_needs_the_app(db: str) -> None:
    done = cli("redrive", "--all", "--db", db)
    assert done.returncode == 2
    assert "redrive needs --app" in done.stderr


def test_purge_by_id_and_all(db: str) -> None:
    first, second = letters(db)
    assert "purged 1 dead letter(s)" in cli("purge", first[:8], "--db", db).stdout
    assert letters(db) == [second]
    assert "purged 1 dead letter(s)" in cli("purge", "--all", "--db", db).stdout
    assert letters(db) == []


def test_a_missing_database_is_an_error_and_is_not_created(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "typo.db"
    done = cli("list", "--db", str(path))
    assert done.returncode == 2
    assert "no dead-letter database at" in done.stderr
    assert "check --db" in done.stderr
    assert not path.exists()


@pytest.mark.parametrize(
    ("app", "message"),
    [
        ("tests.no_such_module:bus", "no module named 'tests.no_such_module'"),
        ("tests.cli_app:no_such_bus", "has no attribute 'no_such_bus'"),
        ("tests.cli_app:not_a_bus", "is a str, not an EventBus"),
        ("tests.cli_app", "must look like module:attribute"),
    ],
)
def test_a_wrong_app_path_is_a_clear_error(db: str, app: str, message: str) -> None:
    done = cli("list", "--db", db, "--app", app)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_help_lists_the_commands() -> None:
    done = cli("--help")
    assert done.returncode == 0
    for verb in ("list", "show", "redrive", "purge"):
        assert verb in done.stdout


def test_a_file_that_is_not_a_store_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database")
    done = cli("list", "--db", str(path))
    assert done.returncode == 2
    assert "cannot be used as a dead-letter store" in done.stderr
    assert "Traceback" not in done.stderr
    assert path.read_text() == "these are my notes, not a database"
