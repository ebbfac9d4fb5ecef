"""The command line: ``python -m eventbus dead-letters list|show|redrive|purge``.

It works on a SQLite dead-letter store (``--db``). ``--app module:attribute``
imports the application's bus the way uvicorn and celery load an app, so that
event classes are defined (and, for ``redrive``, handlers subscribed).
"""

from __future__ import annotations

import argparse
import collections.abc as c
import importlib
import os
import re
import sqlite3
import sys
import typing as t
from datetime import UTC, datetime, timedelta

from .bus import EventBus
from .dead_letters import DeadLetter, UndefinedEvent
from .dead_letters.sqlite import SQLiteDeadLetterStore

__all__ = ["main"]


class CommandError(Exception):
    """A mistake in how the command was called; printed without a traceback."""


def main(argv: c.Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 some letter failed, 2 error)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except CommandError as error:
        print(f"eventbus: error: {error}", file=sys.stderr)
        return 2


# -- commands -----------------------------------------------------------------------


def _list(args: argparse.Namespace) -> int:
    _load_app(args.app)
    with _open_store(args.db) as store:
        letters = _select(store, args)
    if not letters:
        print(f"no dead letters in {args.db}" + (" match" if _filtered(args) else ""))
        return 0
    now = datetime.now(UTC)
    rows = [
        (
            str(letter.id)[:8],
            letter.event_type + (" (!)" if isinstance(letter.event, UndefinedEvent) else ""),
            letter.handler,
            str(letter.attempts),
            _ago(now - letter.failed_at),
            _one_line(f"{_short(letter.error_type)}: {letter.error_message}", 60),
        )
        for letter in letters
    ]
    print(_table(("ID", "EVENT TYPE", "HANDLER", "ATTEMPTS", "LAST FAILURE", "ERROR"), rows))
    print(f"\n{len(letters)} dead letter(s)")
    _warn_undefined(letters, args.app)
    return 0


def _show(args: argparse.Namespace) -> int:
    _load_app(args.app)
    with _open_store(args.db) as store:
        letter = _find(store, args.id)
    event = letter.event
    fields = [
        ("id", str(letter.id)),
        ("event type", letter.event_type),
        ("handler", letter.handler),
        ("attempts", str(letter.attempts)),
        ("first failure", letter.first_failed_at.isoformat()),
        ("last failure", letter.failed_at.isoformat()),
        ("host / pid", f"{letter.host} / {letter.pid}"),
        ("error", f"{letter.error_type}: {letter.error_message}"),
    ]
    if isinstance(event, UndefinedEvent):
        fields.append(("note", f"event not rebuilt: {event.reason}"))
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        print(f"{name:<{width}}  {value}")
    print("\nevent:")
    payload = event.payload if isinstance(event, UndefinedEvent) else None
    print(_indent(payload if payload is not None else event.model_dump_json(indent=2)))
    print("\ntraceback:")
    print(_indent(letter.traceback.rstrip()))
    return 0


def _redrive(args: argparse.Namespace) -> int:
    if not args.app:
        raise CommandError(
            "redrive needs --app module:attribute, the application's EventBus, whose handlers "
            "run the letters again"
        )
    bus = _load_app(args.app)
    assert bus is not None
    _require_selection(args, "redrive")
    rows: list[tuple[str, ...]] = []
    with _open_store(args.db) as store:
        ids = {_find(store, i).id for i in args.ids} if args.ids else None
        outcomes = bus.redrive_all(
            event_type=args.event_type,
            handler=args.handler,
            older_than=args.older_than,
            ids=ids,
            store=store,
        )
    for outcome in outcomes:
        if outcome.error is not None:
            status = f"not redriven: {outcome.error}"
        elif outcome.failed_again is not None:
            again = outcome.failed_again
            status = f"failed again ({again.attempts} attempts): {again.error_message}"
        else:
            status = "redriven, removed"
        if outcome.new_dead_letters:
            status += (
                f"; {len(outcome.new_dead_letters)} new dead letter(s) from events it published"
            )
        rows.append(_outcome_row(outcome.letter, status))
    failed = sum(not outcome.ok for outcome in outcomes)
    if not rows:
        print("no dead letters match")
        return 0
    print(_table(("ID", "EVENT TYPE", "HANDLER", "OUTCOME"), rows))
    print(f"\n{len(rows) - failed} redriven, {failed} still dead")
    return 1 if failed else 0


def _purge(args: argparse.Namespace) -> int:
    _load_app(args.app)
    _require_selection(args, "purge")
    with _open_store(args.db) as store:
        letters = [_find(store, i) for i in args.ids] if args.ids else _select(store, args)
        for letter in letters:
            store.remove(letter)
    print(f"purged {len(letters)} dead letter(s) from {args.db}")
    return 0


# -- helpers ----------------------------------------------------------------------


def _load_app(spec: str | None) -> EventBus | None:
    """Import ``module:attribute`` (attribute may be dotted) and return the EventBus there."""
    if not spec:
        return None
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise CommandError(
            f"--app must look like module:attribute (e.g. myapp.events:bus), got {spec!r}"
        )
    if os.getcwd() not in sys.path:  # like uvicorn's --app-dir ".": the app is where you stand
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and module_name.startswith(error.name):
            raise CommandError(
                f"cannot import {module_name!r} (from --app {spec}): no module named "
                f"{error.name!r}; run from the directory that contains it, or set PYTHONPATH"
            ) from None
        raise CommandError(f"importing {module_name!r} failed: {error}") from None
    except Exception as error:
        raise CommandError(
            f"importing {module_name!r} failed: {type(error).__name__}: {error}"
        ) from None
    target: object = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise CommandError(
                f"module {module_name!r} has no attribute {attribute!r} (from --app {spec})"
            )
        target = getattr(target, part)
    if not isinstance(target, EventBus):
        raise CommandError(
            f"--app {spec} is a {type(target).__name__}, not an EventBus; point it at the bus"
        )
    return target


def _open_store(path: str) -> SQLiteDeadLetterStore:
    try:
        return SQLiteDeadLetterStore(path, create=False)
    except FileNotFoundError:
        raise CommandError(f"no dead-letter database at {path!r}; check --db") from None
    except sqlite3.DatabaseError as error:
        raise CommandError(f"{path!r} cannot be used as a dead-letter store: {error}") from None


def _select(store: c.Iterable[DeadLetter], args: argparse.Namespace) -> list[DeadLetter]:
    cutoff = datetime.now(UTC) - args.older_than if args.older_than is not None else None
    return [
        letter
        for letter in store
        if (args.event_type is None or letter.event_type == args.event_type)
        and (args.handler is None or letter.handler == args.handler)
        and (cutoff is None or letter.failed_at <= cutoff)
    ]


def _find(store: c.Iterable[DeadLetter], prefix: str) -> DeadLetter:
    """The letter whose id starts with ``prefix`` (as printed by ``list``)."""
    matches = [letter for letter in store if str(letter.id).startswith(prefix.lower())]
    if not matches:
        raise CommandError(f"no dead letter with id {prefix!r}; `list` shows the ids")
    if len(matches) > 1:
        raise CommandError(f"id {prefix!r} matches {len(matches)} letters; give more characters")
    return matches[0]


def _filtered(args: argparse.Namespace) -> bool:
    return any(x is not None for x in (args.event_type, args.handler, args.older_than))


def _require_selection(args: argparse.Namespace, verb: str) -> None:
    if not args.ids and not _filtered(args) and not args.all:
        raise CommandError(
            f"{verb} what? give letter ids, a filter (--event-type, --handler, --older-than), "
            "or --all"
        )


def _warn_undefined(letters: c.Sequence[DeadLetter], app: str | None) -> None:
    undefined = sorted({x.event_type for x in letters if isinstance(x.event, UndefinedEvent)})
    if undefined:
        hint = "" if app else "; pass --app module:attribute to import the application"
        print(
            f"(!) event type(s) not defined in this process: {', '.join(undefined)}{hint}. "
            "Those letters are kept; `show` prints their stored JSON."
        )


def _outcome_row(letter: DeadLetter, status: str) -> tuple[str, ...]:
    return (str(letter.id)[:8], letter.event_type, letter.handler, _one_line(status, 90))


def _table(header: c.Sequence[str], rows: c.Sequence[c.Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _ago(age: timedelta) -> str:
    seconds = max(0, int(age.total_seconds()))
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _short(error_type: str) -> str:
    return error_type.rsplit(".", 1)[-1]


def _one_line(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def _duration(text: str) -> timedelta:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30s, 15m, 2h or 7d")
    value, unit = float(match[1]), match[2]
    return timedelta(seconds=value * {"s": 1, "m": 60, "h": 3_600, "d": 86_400}[unit])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eventbus", description="Inspect and redrive eventbus dead letters."
    )
    groups = parser.add_subparsers(dest="group", required=True, metavar="dead-letters")
    letters = groups.add_parser(
        "dead-letters", help="list, show, redrive or purge the letters of a SQLite store"
    )
    commands = letters.add_subparsers(dest="command", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", required=True, help="path of the SQLiteDeadLetterStore file")
    common.add_argument(
        "--app",
        metavar="MODULE:ATTRIBUTE",
        help="the application's EventBus, imported like uvicorn's app (e.g. shop.events:bus)",
    )
    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("--event-type", help="only letters of this event_type")
    filters.add_argument("--handler", help="only letters of this handler (qualified name)")
    filters.add_argument(
        "--older-than",
        type=_duration,
        metavar="AGE",
        help="only letters last failed AGE ago or earlier (30s, 15m, 2h, 7d)",
    )

    def command(
        name: str,
        run: t.Callable[[argparse.Namespace], int],
        help: str,
        parents: list[argparse.ArgumentParser],
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=parents, help=help, description=help)
        sub.set_defaults(run=run)
        return sub

    command("list", _list, "list the letters as a table", [common, filters])
    show = command("show", _show, "show one letter: event, error, traceback", [common])
    show.add_argument("id", help="the letter's id, or a unique prefix of it")
    for name, run, text in (
        ("redrive", _redrive, "run the letters' handlers again; remove those that succeed"),
        ("purge", _purge, "delete letters for good"),
    ):
        sub = command(name, run, text, [common, filters])
        sub.add_argument("ids", nargs="*", metavar="ID", help="letter ids (or unique prefixes)")
        sub.add_argument("--all", action="store_true", help="every letter (when no id or filter)")
    return parser
