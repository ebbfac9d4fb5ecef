"""`python -m eventbus dead-letters ...`: end to end in subprocesses, and in-process where a
test must step in between two store operations (another process's purge, a failing disk)."""

from __future__ import annotations

import collections.abc as c
import contextlib
import dataclasses
import io
import json
import os
import pathlib
import sqlite3
import subprocess
import sys
import typing as t
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

import eventbus.redrive
from eventbus import NO_HANDLER, DeadLetter, Event, EventBus, SQLiteDeadLetterStore, signals
from eventbus import cli as cli_module
from eventbus.dead_letters import DeadLetterStoreError
from tests import cli_app
from tests.cli_app import ParcelLost, ParcelReady, handlers
from tests.permissions import unprivileged

ROOT = pathlib.Path(__file__).resolve().parent.parent
APP = "tests.cli_app:bus"
COURIER = "tests.cli_app.book_courier"


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m eventbus ARGS``, in the repository, not on a terminal (unless COLUMNS=)."""
    environment = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    return subprocess.run(
        [sys.executable, "-m", "eventbus", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**environment, **env},
        timeout=60,
        check=False,
    )


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run("dead-letters", *args, **env)


def in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``cli.main`` in this process: (exit status, stdout, stderr).

    ``--app`` puts the working directory on ``sys.path``, as a command line
    should; the test's process gets its own ``sys.path`` back.
    """
    path = sys.path[:]
    try:
        status = cli_module.main(["dead-letters", *args])
    finally:
        sys.path[:] = path
    out, err = capsys.readouterr()
    return status, out, err


def flat(text: str) -> str:
    """``text`` with its line breaks and indents gone, as wrapped output reads."""
    return " ".join(text.split())


def two_letters(path: str) -> str:
    """Make ``path`` a store of two dead letters of tests.cli_app.book_courier (p-1, then p-2)."""
    with SQLiteDeadLetterStore(path) as store:
        bus = EventBus(dead_letters=store)
        bus.include(handlers)
        bus.publish(ParcelReady(parcel_id="p-1"))
        bus.publish(ParcelReady(parcel_id="p-2"))
        assert len(store) == 2
    return path


@pytest.fixture
def db(tmp_path: pathlib.Path) -> str:
    """A store holding two dead letters of tests.cli_app.book_courier (p-1, then p-2)."""
    return two_letters(str(tmp_path / "dlq.db"))


def letters(path: str) -> list[str]:
    with SQLiteDeadLetterStore(path, create=False) as store:
        return [str(letter.id) for letter in store]


def stored(path: str) -> list[DeadLetter]:
    with SQLiteDeadLetterStore(path, create=False) as store:
        return list(store)


def add(path: str, event: Event, handler: str = COURIER, message: str = "boom") -> DeadLetter:
    letter = DeadLetter.from_exception(
        event, handler, 1, ConnectionError(message), failed_at=datetime.now(UTC)
    )
    with SQLiteDeadLetterStore(path) as store:
        store.add(letter)
    return letter


def unhandled_letter(path: str) -> DeadLetter:
    """The letter of a ParcelLost that nothing handled (cli_app.bus has open_claim for it)."""
    with SQLiteDeadLetterStore(path) as store:
        bus = EventBus(dead_letters=store, report_unhandled=True)
        bus.include(handlers)
        [letter] = bus.publish(ParcelLost(parcel_id="p-9")).dead_letters
    assert letter.handler == NO_HANDLER
    return letter


# -- list and show ----------------------------------------------------------------------------


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
    assert all("cli_app.parcel_ready" in row and COURIER in row for row in rows)
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
    assert "2 dead letter(s)" in cli("list", "--db", db, "--handler", COURIER).stdout
    assert "no dead letters" in cli("list", "--db", db, "--older-than", "1d").stdout
    bad = cli("list", "--db", db, "--older-than", "soon")
    assert bad.returncode == 2
    assert "not a duration like 30s" in bad.stderr


def test_list_fits_the_error_column_to_the_terminal_not_to_a_fixed_width(db: str) -> None:
    reason = "the carrier's API answered 503 Service Unavailable: " + "retry later " * 12
    add(db, ParcelReady(parcel_id="p-3"), message=reason)
    wide = cli("list", "--db", db, "--app", APP, COLUMNS="400")
    assert reason.strip() in wide.stdout  # the whole reason, on a wide terminal
    assert "cut to fit" not in wide.stdout
    narrow = cli("list", "--db", db, "--app", APP, COLUMNS="120")
    assert reason.strip() not in narrow.stdout
    assert all(len(line) <= 120 for line in narrow.stdout.splitlines()[:5])
    assert "Errors are cut to fit the terminal: `show ID` prints one whole" in narrow.stdout
    piped = cli("list", "--db", db, "--app", APP)  # not a terminal: nothing is cut
    assert reason.strip() in piped.stdout


def test_show_prints_event_error_and_traceback_by_id_prefix(db: str) -> None:
    first = letters(db)[0]
    done = cli("show", first[:8], "--db", db, "--app", APP)
    assert done.returncode == 0, done.stderr
    assert first in done.stdout
    assert '"parcel_id": "p-1"' in done.stdout
    assert "builtins.ConnectionError: carrier down for parcel p-1" in done.stdout
    assert "Traceback (most recent call last)" in done.stdout
    assert f"redrive        ready: runs {COURIER} on this bus" in done.stdout
    missing = cli("show", "ffffffff", "--db", db)
    assert missing.returncode == 2
    assert "no dead letter with id 'ffffffff'" in missing.stderr


def test_show_prints_why_a_letter_cannot_be_redriven(db: str) -> None:
    letter = add(db, ParcelReady(parcel_id="p-3"), handler="__main__.book_courier")
    done = cli("show", str(letter.id)[:8], "--db", db, "--app", APP)
    assert done.returncode == 0, done.stderr
    [line] = [x for x in done.stdout.splitlines() if x.startswith("redrive ")]
    assert "not possible: dead letter" in line
    assert "no handler named '__main__.book_courier'" in line
    assert f"'{COURIER}'" in line  # the name subscribed, and the fix
    assert f"--to-handler {COURIER}" in line
    without_app = cli("show", str(letter.id)[:8], "--db", db)
    assert "not possible: dead letter" in without_app.stdout  # its event type is not defined
    assert "import the module that defines 'cli_app.parcel_ready'" in without_app.stdout


def test_list_and_show_print_json_for_scripts(db: str) -> None:
    first, second = stored(db)
    listing = cli("list", "--db", db, "--app", APP, "--json")
    assert listing.returncode == 0, listing.stderr
    records = json.loads(listing.stdout)
    assert [r["id"] for r in records] == [str(first.id), str(second.id)]
    assert records[0] == {
        "id": str(first.id),
        "event_type": "cli_app.parcel_ready",
        "handler": COURIER,
        "attempts": 1,
        "first_failed_at": first.first_failed_at.isoformat(),
        "failed_at": first.failed_at.isoformat(),
        "error_type": "builtins.ConnectionError",
        "error_message": "carrier down for parcel p-1",
        "host": first.host,
        "pid": first.pid,
        "event_state": "defined",
        "reason": None,
    }
    shown = json.loads(cli("show", str(first.id)[:8], "--db", db, "--app", APP, "--json").stdout)
    assert shown["event"]["parcel_id"] == "p-1"
    assert shown["event"]["event_id"] == str(first.event.event_id)
    assert shown["traceback"] == first.traceback
    assert (shown["stored_json"], shown["redrive_checked"], shown["redrive_problem"]) == (
        None,
        True,
        None,
    )
    undefined = json.loads(cli("show", str(first.id), "--db", db, "--json").stdout)
    assert undefined["event_state"] == "undefined"
    assert undefined["event"]["parcel_id"] == "p-1"  # the stored JSON, parsed
    assert "not defined in this process" in undefined["reason"]
    assert undefined["redrive_checked"] is True
    empty = cli("list", "--db", db, "--event-type", "other", "--json")
    assert json.loads(empty.stdout) == []


def test_show_cuts_a_huge_event_and_says_how_to_get_it_all(db: str) -> None:
    letter = add(db, ParcelReady(parcel_id="x" * 200_000))
    done = cli("show", str(letter.id)[:8], "--db", db, "--app", APP)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout) < 3 * cli_module.SHOW_LIMIT
    assert "the event is cut here" in done.stdout
    assert f"characters in all; `show {str(letter.id)[:8]} --json` prints all of it" in (
        done.stdout
    )
    whole = json.loads(cli("show", str(letter.id)[:8], "--db", db, "--json").stdout)
    assert whole["event"]["parcel_id"] == "x" * 200_000


def test_list_and_show_escape_control_characters_from_the_store(db: str) -> None:
    hostile = "\x1b]0;owned\x07\x1b[2J\x9b31m\u202eevil\r"
    letter = add(
        db,
        ParcelReady(parcel_id=f"p{hostile}"),
        handler=f"tests.cli_app.book{hostile}",
        message=f"carrier said {hostile}\nline two",
    )
    for command in (
        ("list", "--db", db, "--app", APP),
        ("list", "--db", db),
        ("show", str(letter.id)[:8], "--db", db, "--app", APP),
        ("show", str(letter.id)[:8], "--db", db),
    ):
        done = cli(*command)
        assert done.returncode == 0, done.stderr
        for character in ("\x1b", "\x07", "\x9b", "\u202e", "\r"):
            assert character not in done.stdout, (command, character)
        assert "\\x1b]0;owned\\x07\\x1b[2J\\x9b31m\\u202eevil\\r" in done.stdout
    shown = cli("show", str(letter.id)[:8], "--db", db, "--app", APP).stdout
    assert "line two" in shown  # a message's own line breaks are kept by show
    scripted = json.loads(cli("show", str(letter.id)[:8], "--db", db, "--json").stdout)
    assert scripted["error_message"] == f"carrier said {hostile}\nline two"


# -- redrive ----------------------------------------------------------------------------------


def test_redrive_removes_letters_whose_handler_now_succeeds(db: str) -> None:
    done = cli(
        "redrive", "--all", "--db", db, "--app", APP, CLI_APP_CARRIER="up", CLI_APP_MAIL="up"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("redriven, removed") == 2
    assert "2 redriven, 0 still dead" in done.stdout
    assert letters(db) == []


def test_redrive_that_fails_again_keeps_the_letter_and_exits_1(db: str) -> None:
    first = letters(db)[0]
    done = cli("redrive", first[:8], "--db", db, "--app", APP)
    assert done.returncode == 1
    assert "failed again (2 attempts)" in done.stdout
    assert f"{first[:8]}  failed again: ConnectionError: carrier down for parcel p-1" in (
        done.stdout
    )
    assert [letter.attempts for letter in stored(db)] == [2, 1]


def test_redrive_stores_the_letters_of_events_it_published_in_the_db(db: str) -> None:
    done = cli("redrive", "--all", "--db", db, "--app", APP, CLI_APP_CARRIER="up")
    assert done.returncode == 0, done.stderr  # both letters settled; their children failed
    assert done.stdout.count("1 new dead letter(s) from events it published") == 2
    children = stored(db)
    assert [(x.handler, x.event_type) for x in children] == [
        ("tests.cli_app.notify_customer", "cli_app.courier_booked")
    ] * 2
    assert f"new dead letter {str(children[0].id)[:8]} in {db}" in done.stdout
    assert "mail server down for parcel p-1" in done.stdout


def test_redrive_says_so_when_the_store_refuses_a_new_letter_and_exits_2(
    db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_add = SQLiteDeadLetterStore.add

    def add(store: SQLiteDeadLetterStore, letter: DeadLetter) -> None:
        if letter.handler == "tests.cli_app.notify_customer":  # the children: the disk is full
            raise DeadLetterStoreError(f"{store.path}: database or disk is full")
        real_add(store, letter)

    monkeypatch.setattr(SQLiteDeadLetterStore, "add", add)
    monkeypatch.setenv("CLI_APP_CARRIER", "up")
    status, out, _ = in_process(capsys, "redrive", "--all", "--db", db, "--app", APP)
    assert status == cli_module.EXIT_ERROR
    assert out.count("NOT STORED") == 3  # each of the two letters' child, and the summary
    assert "2 redriven, 0 still dead; 2 new dead letter(s) NOT STORED" in flat(out)
    assert " in " + db not in out  # no letter is said to be in the store


def test_an_in_memory_store_or_an_endless_age_is_a_clear_error(db: str) -> None:
    memory = cli("list", "--db", ":memory:")
    assert memory.returncode == 2
    assert "--db :memory: names a new, empty in-memory store" in memory.stderr
    assert "Traceback" not in memory.stderr
    endless = cli("list", "--db", db, "--older-than", "99999999999d")
    assert endless.returncode == 2
    assert "longer than any age a letter can have" in endless.stderr
    assert "Traceback" not in endless.stderr


def test_show_says_what_redriving_an_unhandled_letter_would_do(db: str) -> None:
    short = str(unhandled_letter(db).id)[:8]
    ready = cli("show", short, "--db", db, "--app", APP)
    assert (
        "redrive        ready: publishes the event to the handlers it has now: "
        "tests.cli_app.open_claim" in ready.stdout
    )
    bare = cli("show", short, "--db", db, "--app", "tests.cli_app:bare")
    assert (
        "redrive        no handler is subscribed to its event on this bus yet: it would stay "
        "unhandled" in bare.stdout
    )


def test_redrive_of_an_unhandled_letter_stores_its_new_handlers_letter_in_the_db(
    db: str,
) -> None:
    letter = unhandled_letter(db)
    done = cli("redrive", str(letter.id)[:8], "--db", db, "--app", APP)
    assert done.returncode == 0, done.stderr
    [child] = [x for x in stored(db) if x.event_type == "cli_app.parcel_lost"]
    assert child.handler == "tests.cli_app.open_claim"
    assert child.error_message == "claims desk closed for parcel p-9"
    assert child.id != letter.id
    assert "redriven, removed; 1 new dead letter(s) of its handlers" in done.stdout
    assert f"new dead letter {str(child.id)[:8]} in {db}: tests.cli_app.open_claim" in done.stdout


def test_redrive_explains_a_handler_name_that_differs_only_by_module_in_full(db: str) -> None:
    letter = add(db, ParcelReady(parcel_id="p-3"), handler="__main__.book_courier")
    short = str(letter.id)[:8]
    for columns in ("80", "400"):
        done = cli("redrive", short, "--db", db, "--app", APP, COLUMNS=columns)
        assert done.returncode == 1
        text = flat(done.stdout)
        assert f"{short} not redriven: dead letter {letter.id}: no handler named " in text
        assert f"the handlers subscribed to it here are: '{COURIER}'" in text
        assert f"'__main__.book_courier' and '{COURIER}' differ only by module" in text
        assert f"(on the command line: --to-handler {COURIER})" in text
        assert "subscribe(..., name=...)" in text
    assert len(stored(db)) == 3


def test_redrive_to_a_handler_named_explicitly(db: str) -> None:
    letter = add(db, ParcelReady(parcel_id="p-3"), handler="__main__.book_courier")
    short = str(letter.id)[:8]
    done = cli("redrive", short, "--db", db, "--app", APP, "--to-handler", COURIER)
    assert done.returncode == 1  # it ran, and failed again: the letter now names the handler
    assert f"__main__.book_courier -> {COURIER}" in done.stdout
    [again] = [x for x in stored(db) if x.id == letter.id]
    assert (again.handler, again.attempts) == (COURIER, 2)
    up = {"CLI_APP_CARRIER": "up", "CLI_APP_MAIL": "up"}
    done = cli("redrive", short, "--db", db, "--app", APP, "--to-handler", COURIER, **up)
    assert done.returncode == 0, done.stdout
    assert letter.id not in {x.id for x in stored(db)}
    empty = cli("redrive", short, "--db", db, "--app", APP, "--to-handler", " ")
    assert empty.returncode == 2
    assert "--to-handler needs a handler's name" in empty.stderr


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


def test_redrive_refuses_a_read_only_store_before_running_anything(
    db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_access = os.access

    def access(path: str, mode: int) -> bool:  # what a user who cannot write the file sees
        if mode & os.W_OK and os.path.abspath(path) == os.path.abspath(db):
            return False
        return real_access(path, mode)

    def redrive_all(*args: object, **kwargs: object) -> t.NoReturn:
        pytest.fail("a letter was redriven")

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(eventbus.redrive, "redrive_all", redrive_all)
    status, _out, err = in_process(capsys, "redrive", "--all", "--db", db, "--app", APP)
    assert status == cli_module.EXIT_ERROR
    assert f"the dead-letter store {db!r} is read-only for this user: redrive removes" in err
    assert "(`list` and `show` work read-only)" in err
    monkeypatch.undo()
    assert len(letters(db)) == 2


def test_a_read_only_store_lists_and_refuses_redrive_and_purge(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "path", sys.path[:])  # --app adds the working directory
    # Run as a user whom permissions stop (a forked child that became nobody, under root);
    # the child cannot import from a root-only interpreter directory, so warm up first.
    assert cli_module.main(["dead-letters", "list", "--db", db, "--app", APP]) == 0

    def scenario(directory: pathlib.Path) -> None:
        path = two_letters(str(directory / "dlq.db"))
        os.chmod(path, 0o444)
        directory.chmod(0o555)

        def main(*args: str) -> tuple[int, str, str]:
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                status = cli_module.main(["dead-letters", *args, "--db", path])
            return status, out.getvalue(), err.getvalue()

        status, out, err = main("list", "--app", APP)
        assert (status, err) == (0, "")
        assert "2 dead letter(s)" in out
        status, _, err = main("redrive", "--all", "--app", APP)
        assert status == cli_module.EXIT_ERROR
        assert "is read-only for this user" in err
        status, _, err = main("purge", "--all")
        assert status == cli_module.EXIT_ERROR
        assert "read-only" in err
        assert "Traceback" not in err
        assert len(letters(path)) == 2

    unprivileged(scenario)


# -- ids ----------------------------------------------------------------------------------


def test_purge_by_id_and_all(db: str) -> None:
    first, second = letters(db)
    assert "purged 1 dead letter(s)" in cli("purge", first[:8], "--db", db).stdout
    assert letters(db) == [second]
    assert "purged 1 dead letter(s)" in cli("purge", "--all", "--db", db).stdout
    assert letters(db) == []


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("", "an empty letter id is refused: as a prefix it would match every letter"),
        ("  ", "an empty letter id is refused"),
        ("a", "letter id 'a' is too short: give at least 4 of its characters"),
        ("abc", "letter id 'abc' is too short"),
        ("zzzz", "'zzzz' is not a letter id: ids are hexadecimal"),
        ("*", "'*' is not a letter id"),
    ],
)
@pytest.mark.parametrize("verb", ["purge", "redrive", "show"])
def test_an_empty_or_too_short_id_is_an_error(
    db: str, verb: str, given: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _out, err = in_process(capsys, verb, given, "--db", db, "--app", APP)
    assert status == cli_module.EXIT_ERROR
    assert message in err
    assert len(letters(db)) == 2


def test_a_unique_prefix_or_a_whole_id_is_accepted_and_an_ambiguous_prefix_refused(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "dlq.db")
    one, two, three = (uuid.UUID(f"abcd{n}000-0000-4000-8000-000000000000") for n in (1, 2, 3))
    for letter_id in (one, two, three):
        with SQLiteDeadLetterStore(db) as store:
            store.add(dataclasses.replace(add(db, ParcelReady(parcel_id="p")), id=letter_id))
    with SQLiteDeadLetterStore(db) as store:  # only the three with chosen ids stay
        for letter in store:
            if letter.id not in (one, two, three):
                store.remove(letter)
    status, _, err = in_process(capsys, "purge", "abcd", "--db", db)
    assert status == 2
    assert f"id 'abcd' matches 3 letters ({one}, {two}, {three}); give more characters" in err
    status, _, _ = in_process(capsys, "purge", "ABCD1000-0", "--db", db)
    assert (status, letters(db)) == (0, [str(two), str(three)])
    status, _, _ = in_process(capsys, "purge", two.hex.upper(), "--db", db)
    assert (status, letters(db)) == (0, [str(three)])  # a whole id, even without dashes


@pytest.mark.parametrize("verb", ["purge", "redrive"])
def test_an_id_given_twice_is_one_letter(db: str, verb: str) -> None:
    first, second = letters(db)
    done = cli(verb, first, first[:8], first[:5].upper(), "--db", db, "--app", APP)
    if verb == "purge":
        assert done.returncode == 0, done.stderr
        assert "purged 1 dead letter(s)" in done.stdout
        assert letters(db) == [second]
    else:  # the handler ran once: one more attempt, not three
        assert done.returncode == 1
        assert done.stdout.count(first[:8]) == 2  # its row, and why it is still dead
        assert "0 redriven, 1 still dead" in done.stdout
        assert [x.attempts for x in stored(db)] == [2, 1]


def test_ids_and_filters_together_select_the_letters_matching_both(db: str) -> None:
    first, _ = letters(db)
    done = cli("purge", first[:8], "--event-type", "other.type", "--db", db)
    assert "purged 0 dead letter(s)" in done.stdout
    assert len(letters(db)) == 2


# -- letters gone meanwhile ---------------------------------------------------------------


@pytest.fixture
def purged_meanwhile(db: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Another process purges the first letter right after the command has listed the store."""
    real_iter = SQLiteDeadLetterStore.__iter__

    def listed_then_purged(self: SQLiteDeadLetterStore) -> c.Iterator[DeadLetter]:
        everything = list(real_iter(self))
        with SQLiteDeadLetterStore(db, create=False) as other:
            other.remove(everything[0])
        monkeypatch.setattr(SQLiteDeadLetterStore, "__iter__", real_iter)  # once
        yield from everything

    monkeypatch.setattr(SQLiteDeadLetterStore, "__iter__", listed_then_purged)
    return db


def test_purge_reports_a_letter_already_gone_and_goes_on(
    purged_meanwhile: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = in_process(capsys, "purge", "--all", "--db", purged_meanwhile)
    assert (status, err) == (0, "")
    assert "purged 1 dead letter(s)" in out
    assert "1 already gone (purged or redriven by another process meanwhile)" in out
    assert letters(purged_meanwhile) == []


def test_redrive_reports_a_letter_already_gone_runs_nothing_for_it_and_goes_on(
    purged_meanwhile: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLI_APP_CARRIER", "up")
    monkeypatch.setenv("CLI_APP_MAIL", "up")
    booked: list[str] = []

    def on_success(sender: EventBus, *, event: Event, handler: str, **kwargs: object) -> None:
        if handler == COURIER and isinstance(event, ParcelReady):
            booked.append(event.parcel_id)

    signals.handler_succeeded.connect(on_success, sender=cli_app.bus)
    try:
        status, out, err = in_process(
            capsys, "redrive", "--all", "--db", purged_meanwhile, "--app", APP
        )
    finally:
        signals.handler_succeeded.disconnect(on_success)
    assert (status, err) == (0, "")
    assert "already gone (purged or redriven elsewhere meanwhile); nothing ran" in out
    assert "1 redriven, 0 still dead, 1 already gone" in out
    assert booked == ["p-2"]  # book_courier ran for the second letter only
    assert letters(purged_meanwhile) == []
    assert len(cli_app.bus.dead_letters) == 0


# -- the application's own store --------------------------------------------------------------


def test_importing_the_app_creates_no_database_and_its_store_gets_no_letters(
    db: str, tmp_path: pathlib.Path
) -> None:
    own = tmp_path / "app-own.db"
    app = "tests.cli_durable_app:bus"
    letter = unhandled_letter(db)
    first = letters(db)[0]
    for command in (
        ("list", "--db", db, "--app", app),
        ("show", first[:8], "--db", db, "--app", app),
        ("redrive", str(letter.id)[:8], "--db", db, "--app", app),  # open_claim fails: a letter
        ("purge", first[:8], "--db", db, "--app", app),
    ):
        done = cli(*command, CLI_DURABLE_DLQ=str(own))
        assert done.returncode == 0, (command, done.stderr)
        assert not own.exists(), command
    assert "tests.cli_app.open_claim" in {x.handler for x in stored(db)}


# -- stores that cannot be used -----------------------------------------------------------------


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


def test_help_lists_each_command_once_and_the_exit_statuses() -> None:
    top = run("--help")
    assert top.returncode == 0
    assert top.stdout.count("dead-letters") == 1
    group = cli("--help")
    for verb in ("list", "show", "redrive", "purge"):
        assert group.stdout.count(f"  {verb}  ") == 1, verb
    assert "{list,show,redrive,purge}" not in group.stdout
    for done in (top, group, cli("purge", "--help"), cli("redrive", "--help")):
        assert "exit status:" in done.stdout
        assert "1  redrive: some letter is still dead" in done.stdout
        assert "2  the command could not run" in done.stdout
    assert "--to-handler NAME" in cli("redrive", "--help").stdout
    assert "--json" in cli("show", "--help").stdout


def test_a_file_that_is_not_a_store_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database")
    done = cli("list", "--db", str(path))
    assert done.returncode == 2
    assert f"'{path}' is not a dead-letter store" in done.stderr
    assert "Traceback" not in done.stderr
    assert path.read_text() == "these are my notes, not a database"


def _foreign(path: pathlib.Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()


def _damaged(path: pathlib.Path) -> None:
    """A store whose first page is intact and whose rows are not: it opens, then fails."""
    with SQLiteDeadLetterStore(path) as store:
        for n in range(300):
            store.add(
                DeadLetter.from_exception(
                    ParcelReady(parcel_id="x" * 500 + str(n)),
                    COURIER,
                    1,
                    ConnectionError("down"),
                    failed_at=datetime.now(UTC),
                )
            )
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8192] = b"\xa5" * 8192
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_foreign, "is not a dead-letter store: it has no dead-letter table"),
        (pathlib.Path.mkdir, "is a directory, not a dead-letter store file"),
        (_damaged, "is damaged (database disk image is malformed)"),
    ],
    ids=["foreign", "directory", "damaged"],
)
@pytest.mark.parametrize(
    "command",
    [
        ("list",),
        ("list", "--json"),
        ("show", "0000"),
        ("purge", "--all"),
        ("redrive", "--all", "--app", APP),
    ],
    ids=lambda command: "-".join(command[:2]),
)
def test_a_store_that_cannot_be_used_is_one_clear_line_and_exit_2(
    tmp_path: pathlib.Path,
    make: c.Callable[[pathlib.Path], None],
    message: str,
    command: tuple[str, ...],
) -> None:
    path = tmp_path / "dlq.db"
    make(path)
    before = path.read_bytes() if path.is_file() else None
    done = cli(*command, "--db", str(path))
    assert done.returncode == cli_module.EXIT_ERROR, done.stdout
    [line] = done.stderr.splitlines()
    assert line.startswith("eventbus: error: ")
    assert str(path) in line
    assert message in line
    assert "Traceback" not in done.stderr
    if before is not None:
        assert path.read_bytes() == before


@pytest.mark.parametrize(
    "error",
    [sqlite3.OperationalError("disk I/O error"), PermissionError(13, "Permission denied")],
    ids=["sqlite3", "OSError"],
)
@pytest.mark.parametrize("step", ["__iter__", "remove", "get"])
def test_a_store_error_while_it_is_used_is_one_clear_line_and_exit_2(
    db: str,
    error: Exception,
    step: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def fail(*args: object) -> t.NoReturn:
        raise error

    monkeypatch.setattr(SQLiteDeadLetterStore, step, fail)
    args: tuple[str, ...]
    if step == "get":  # a redrive reads each letter again before it runs it
        args = ("redrive", "--all", "--db", db, "--app", APP)
    else:
        args = ("purge", "--all", "--db", db)
    status, _out, err = in_process(capsys, *args)
    assert status == cli_module.EXIT_ERROR
    assert err == (
        f"eventbus: error: the dead-letter store {db!r} cannot be used: "
        f"{type(error).__name__}: {error}\n"
    )
    monkeypatch.undo()
    assert len(letters(db)) == 2


def test_a_purge_stopped_by_a_store_error_says_what_it_did_first(
    db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_remove = SQLiteDeadLetterStore.remove
    calls: list[uuid.UUID] = []

    def remove_once(self: SQLiteDeadLetterStore, letter: DeadLetter) -> None:
        calls.append(letter.id)
        if len(calls) > 1:
            raise sqlite3.OperationalError("disk I/O error")
        real_remove(self, letter)

    monkeypatch.setattr(SQLiteDeadLetterStore, "remove", remove_once)
    status, out, err = in_process(capsys, "purge", "--all", "--db", db)
    assert status == 2
    assert f"purged 1 dead letter(s) from {db} before the error below" in out
    assert "disk I/O error" in err


# -- rows that cannot be read -------------------------------------------------------------


def test_unreadable_rows_are_listed_purged_by_id_and_refused_by_redrive(db: str) -> None:
    first, second = letters(db)
    raw = sqlite3.connect(db)
    raw.execute("UPDATE dead_letters SET event = CAST(X'7B80FF' AS TEXT) WHERE id = ?", (first,))
    raw.execute("UPDATE dead_letters SET id = 'not-a-uuid' WHERE id = ?", (second,))
    raw.commit()
    raw.close()
    listing = cli("list", "--db", db, "--app", APP)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.count("cli_app.parcel_ready (unreadable)") == 2
    assert "(unreadable) 2 letter(s) whose stored row cannot be read whole" in listing.stdout
    records = json.loads(cli("list", "--db", db, "--json").stdout)
    assert [(r["event_state"], r["reason"]) for r in records] == [
        ("unreadable", "row unreadable: event is not valid UTF-8"),
        ("unreadable", "row unreadable: id 'not-a-uuid' is not a UUID"),
    ]
    odd = records[1]["id"]  # as the store reads it: a UUID made from the stored text
    assert records[0]["id"] == first
    assert odd != second

    redrive = cli("redrive", "--all", "--db", db, "--app", APP, CLI_APP_CARRIER="up")
    assert redrive.returncode == 1
    text = flat(redrive.stdout)
    assert (
        f"dead letter {first} cannot be redriven: row unreadable: event is not valid UTF-8" in text
    )
    assert "Its stored row is damaged: `show` prints what could be read of it" in text
    shown = cli("show", first[:8], "--db", db, "--app", APP)
    assert "note           row unreadable: event is not valid UTF-8" in shown.stdout
    assert "redrive        not possible: dead letter" in shown.stdout

    assert "purged 1 dead letter(s)" in cli("purge", odd[:8], "--db", db).stdout
    assert "purged 1 dead letter(s)" in cli("purge", first, "--db", db).stdout
    assert letters(db) == []


# -- invariants ---------------------------------------------------------------------------

_DRIVES_A_TERMINAL = {
    chr(n) for n in [*range(0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0), *range(0xD800, 0xE000)]
} | set("\u061c\u200e\u200f\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


@given(
    st.text(
        st.one_of(
            st.characters(exclude_categories=()),  # surrogates too: a store may return them
            st.sampled_from([*sorted(_DRIVES_A_TERMINAL)[::97], "\x1b", "\x9b", "\r", "\n"]),
        )
    )
)
def test_what_is_printed_from_a_store_never_holds_a_character_that_drives_a_terminal(
    text: str,
) -> None:
    safe = cli_module._safe(text)
    assert not _DRIVES_A_TERMINAL & set(safe)
    if not _DRIVES_A_TERMINAL & set(text):
        assert safe == text  # nothing else is touched
    line = cli_module._line(text)
    assert "\n" not in line
    assert not _DRIVES_A_TERMINAL & set(line)


@given(
    st.lists(st.uuids(version=4), min_size=1, max_size=6, unique=True).flatmap(
        lambda ids: st.tuples(
            st.just(ids),
            st.lists(
                st.tuples(st.sampled_from(ids), st.integers(min_value=8, max_value=36)),
                min_size=1,
                max_size=8,
            ),
        )
    )
)
def test_ids_given_any_number_of_times_in_any_form_are_each_one_letter(
    case: tuple[list[uuid.UUID], list[tuple[uuid.UUID, int]]],
) -> None:
    ids, given_ids = case
    store = [
        dataclasses.replace(
            DeadLetter.from_exception(
                ParcelReady(parcel_id="p"), COURIER, 1, ConnectionError("x"), failed_at=T0
            ),
            id=letter_id,
        )
        for letter_id in ids
    ]
    given = [str(letter_id)[:length] for letter_id, length in given_ids]
    ambiguous = [
        prefix
        for prefix in given
        if len(prefix) < 36 and sum(str(x).startswith(prefix) for x in ids) > 1
    ]
    if ambiguous:  # generated ids may share long prefixes: those are refused, never guessed
        with pytest.raises(cli_module.CommandError, match="matches"):
            cli_module._resolve(store, given)
        return
    chosen = cli_module._resolve(store, given)
    expected = list(dict.fromkeys(letter_id for letter_id, _ in given_ids))
    assert [letter.id for letter in chosen] == expected


T0 = datetime(2024, 5, 17, 9, 30, tzinfo=UTC)
