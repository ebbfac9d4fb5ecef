"""The command line: ``python -m eventbus dead-letters ...``, ``worker``, ``groups``, ``relay``.

``worker MODULE:ATTR`` runs the handlers of a broker bus (``eventbus.redis``)
until SIGTERM or SIGINT (with ``--outbox PATH``, an outbox's relay beside
them); ``relay MODULE:ATTR --outbox PATH`` runs a relay on its own.

``dead-letters`` works on one dead-letter store, and only on it: a SQLite
file (``--db``), or a broker's store in Redis (``--redis URL --namespace NS``,
or the store of the broker bus ``--app`` names, with neither flag). The
letters a redrive makes (its handler failed again, or a handler of an event
it published failed) go there too, never to the application's own store.
``--app module:attribute`` imports the application's bus the way uvicorn and
celery load an app, so that event classes are defined (and, for ``redrive``,
handlers subscribed). Everything that comes from the store is printed with
control characters escaped (``\\x1b``), so that a letter cannot drive the
operator's terminal; ``--json`` gives scripts the letters as they are.
"""

from __future__ import annotations

import argparse
import collections.abc as c
import contextlib
import importlib
import json
import os
import re
import shutil
import sqlite3
import sys
import textwrap
import typing as t
import uuid
from datetime import UTC, datetime, timedelta

from . import redrive as _redrive
from .bus import EventBus
from .dead_letters import DeadLetter, DeadLetterStore, DeadLetterStoreError, UndefinedEvent
from .dead_letters.sqlite import SQLiteDeadLetterStore

if t.TYPE_CHECKING:
    from .outbox import Relay

__all__ = ["EXIT_ERROR", "EXIT_OK", "EXIT_STILL_DEAD", "main"]

#: The command did what it was asked.
EXIT_OK = 0
#: ``redrive``: some letter is still dead (it failed again, or cannot be redriven here).
EXIT_STILL_DEAD = 1
#: The command could not run: a usage error, a wrong ``--app``, or a store that is missing,
#: is not a dead-letter store, is damaged, or cannot be read or written; or, for
#: ``redrive``, a new dead letter that the store refused (it is only in the log).
EXIT_ERROR = 2

#: The fewest characters of a letter's id accepted (``list`` prints 8).
MIN_ID_PREFIX = 4
#: How many characters of a letter's event, error or traceback ``show`` prints.
SHOW_LIMIT = 10_000

_EXIT_STATUS = f"""\
exit status:
  {EXIT_OK}  done
  {EXIT_STILL_DEAD}  redrive: some letter is still dead (it failed again, or cannot be redriven)
  {EXIT_ERROR}  the command could not run: a usage error, a wrong --app, or a store that is
     missing, is not a dead-letter store, is damaged, or cannot be read or written;
     or redrive made a dead letter the store refused (it is only in the log)"""


class CommandError(Exception):
    """A reason the command cannot go on; printed on one line, without a traceback."""


def main(argv: c.Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (``EXIT_OK``, ...; see ``--help``)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except CommandError as error:
        print(f"eventbus: error: {_line(str(error))}", file=sys.stderr)
        return EXIT_ERROR


# -- commands -----------------------------------------------------------------------


def _list(args: argparse.Namespace) -> int:
    bus = _load_app(args.app)
    with _store(args, bus) as store:
        letters = _matching(list(store), args)
    if args.json:
        _print_json([_record(letter, full=False) for letter in letters])
        return EXIT_OK
    if not letters:
        print(f"no dead letters in {args.where}" + (" match" if _filtered(args) else ""))
        return EXIT_OK
    now = datetime.now(UTC)
    rows = [
        (
            str(letter.id)[:8],
            _line(letter.event_type) + _MARKS[_state(letter)],
            _line(letter.handler),
            str(letter.attempts),
            _ago(now - letter.failed_at),
            _line(f"{_short(letter.error_type)}: {letter.error_message}"),
        )
        for letter in letters
    ]
    header = ("ID", "EVENT TYPE", "HANDLER", "ATTEMPTS", "LAST FAILURE", "ERROR")
    table, cut = _table(header, rows, _width())
    print(table)
    print(f"\n{len(letters)} dead letter(s)")
    if cut:
        print("Errors are cut to fit the terminal: `show ID` prints one whole, `list --json` all.")
    _notes(letters, args.app)
    return EXIT_OK


def _show(args: argparse.Namespace) -> int:
    bus = _load_app(args.app)
    with _store(args, bus) as store:
        [letter] = _resolve(store, [args.id])
    problem = _redrive.redrive_problem(bus, letter)
    if args.json:
        record = _record(letter, full=True)
        record["redrive_checked"] = bus is not None or problem is not None
        record["redrive_problem"] = None if problem is None else str(problem)
        _print_json(record)
        return EXIT_OK
    event = letter.event
    fields = [
        ("id", str(letter.id)),
        ("event type", letter.event_type),
        ("handler", letter.handler),
        ("attempts", str(letter.attempts)),
        ("first failure", letter.first_failed_at.isoformat()),
        ("last failure", letter.failed_at.isoformat()),
        ("host / pid", f"{letter.host} / {letter.pid}"),
        ("error", _cut(f"{letter.error_type}: {letter.error_message}", "the error", letter)),
    ]
    if isinstance(event, UndefinedEvent):
        rebuilt = _state(letter) == "undefined"  # the others' reasons say what they are
        fields.append(("note", f"event not rebuilt: {event.reason}" if rebuilt else event.reason))
    if problem is not None:
        fields.append(("redrive", f"not possible: {problem}"))
    elif bus is not None:
        fields.append(("redrive", _ready(bus, letter)))
    else:
        fields.append(("redrive", "not checked: pass --app MODULE:ATTRIBUTE to check it here"))
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        lines = _safe(value).splitlines() or [""]
        print(f"{name:<{width}}  {lines[0]}")
        for line in lines[1:]:
            print(f"{'':<{width}}  {line}")
    print("\nevent:")
    print(_indent(_cut(_event_text(event), "the event", letter)))
    print("\ntraceback:")
    print(_indent(_cut(letter.traceback.rstrip(), "the traceback", letter)))
    return EXIT_OK


def _redrive_command(args: argparse.Namespace) -> int:
    if not args.app:
        raise CommandError(
            "redrive needs --app module:attribute, the application's EventBus, whose handlers "
            "run the letters again"
        )
    bus = _load_app(args.app)
    assert bus is not None
    _require_selection(args, "redrive")
    if args.to_handler is not None and not args.to_handler.strip():
        raise CommandError("--to-handler needs a handler's name, as the bus subscribed it")
    if args.db is not None:
        _require_writable(args.db, "redrive")
    outcomes: list[_redrive.RedriveOutcome] = []
    unstored: set[uuid.UUID] = set()  # new letters the store refused (the log has them)
    try:
        with _store(args, bus) as store:
            for letter in _chosen(store, args):  # one at a time: each checked to be still there
                done = _redrive.redrive_all(bus, store, [letter], to_handler=args.to_handler)
                for outcome in done:
                    unstored.update(
                        new.id for new in outcome.new_dead_letters if not _has(store, new)
                    )
                outcomes += done
    except CommandError:
        if outcomes:
            _report(outcomes, args, unstored)
            print(
                "\nstopped by the error below, during or after the last letter shown (whose "
                "handler may have run); the letters after it were not redriven"
            )
        else:
            print("stopped by the error below; the letter in progress, if any, may have run")
        raise
    if not outcomes:
        print("no dead letters match")
        return EXIT_OK
    return _report(outcomes, args, unstored)


def _has(store: DeadLetterStore, letter: DeadLetter) -> bool:
    try:
        store.get(letter.id)
    except KeyError:
        return False
    return True


def _purge(args: argparse.Namespace) -> int:
    bus = _load_app(args.app)
    _require_selection(args, "purge")
    purged: list[DeadLetter] = []
    gone: list[DeadLetter] = []
    try:
        with _store(args, bus) as store:
            for letter in _chosen(store, args):
                try:
                    store.remove(letter)
                except KeyError:  # another process purged or redrove it meanwhile
                    gone.append(letter)
                else:
                    purged.append(letter)
    except CommandError:
        if purged or gone:
            print(f"purged {len(purged)} dead letter(s) from {args.where} before the error below")
        raise
    print(f"purged {len(purged)} dead letter(s) from {args.where}")
    if gone:
        print(
            f"{len(gone)} already gone (purged or redriven by another process meanwhile): "
            + ", ".join(str(letter.id)[:8] for letter in gone)
        )
    return EXIT_OK


def _report(
    outcomes: c.Sequence[_redrive.RedriveOutcome],
    args: argparse.Namespace,
    unstored: c.Container[uuid.UUID] = frozenset(),
) -> int:
    """Print what a redrive did, every reason in full; return the exit status."""
    rows: list[tuple[str, ...]] = []
    details: list[tuple[str, str]] = []
    for outcome in outcomes:
        letter = outcome.letter
        short = str(letter.id)[:8]
        if outcome.gone:
            status = "already gone (purged or redriven elsewhere meanwhile); nothing ran"
        elif outcome.error is not None:
            status = "not redriven"
            details.append((short, f"not redriven: {outcome.error}"))
        elif (again := outcome.failed_again) is not None:
            status = f"failed again ({again.attempts} attempts)"
            details.append(
                (short, f"failed again: {_short(again.error_type)}: {again.error_message}")
            )
        else:
            status = "redriven, removed"
        if outcome.new_dead_letters:
            whose = "of its handlers" if letter.unhandled else "from events it published"
            status += f"; {len(outcome.new_dead_letters)} new dead letter(s) {whose}"
            details += [
                (
                    short,
                    (
                        f"new dead letter {str(new.id)[:8]} NOT STORED: {args.where} refused it "
                        "(the CRITICAL log line says why); it is lost unless its event is "
                        f"published again: {new.handler} on {new.event_type}: "
                        if new.id in unstored
                        else f"new dead letter {str(new.id)[:8]} in {args.where}: {new.handler} on "
                        f"{new.event_type}: "
                    )
                    + f"{_short(new.error_type)}: {new.error_message}",
                )
                for new in outcome.new_dead_letters
            ]
        handler = letter.handler
        if args.to_handler is not None and args.to_handler != handler:
            handler = f"{handler} -> {args.to_handler}"
        rows.append((short, _line(letter.event_type), _line(handler), status))
    width = _width()
    print(_table(("ID", "EVENT TYPE", "HANDLER", "OUTCOME"), rows, width)[0])
    if details:
        print()
        for short, text in details:
            print(_wrapped(f"{short}  {_line(text)}", width, indent=10))
    gone = sum(outcome.gone for outcome in outcomes)
    failed = sum(not outcome.ok and not outcome.gone for outcome in outcomes)
    summary = f"{len(outcomes) - failed - gone} redriven, {failed} still dead"
    lost = sum(new.id in unstored for outcome in outcomes for new in outcome.new_dead_letters)
    print(
        f"\n{summary}"
        + (f", {gone} already gone" if gone else "")
        + (f"; {lost} new dead letter(s) NOT STORED" if lost else "")
    )
    if lost:
        return EXIT_ERROR
    return EXIT_STILL_DEAD if failed else EXIT_OK


# -- the application and the store --------------------------------------------------


def _worker(args: argparse.Namespace) -> int:

    bus = _load_app(args.app)
    assert bus is not None
    if bus.broker is None:
        raise CommandError(
            f"{args.app} is a bus without a broker: its handlers run in the process that "
            "publishes; build it with EventBus(broker=RedisBroker(url, namespace=...))"
        )
    _log_to_stderr()
    from .redis._worker import serve

    try:
        relay = _relay(bus, args) if args.outbox else None
        return serve(
            bus,
            handlers=args.handlers,
            concurrency=args.concurrency,
            relay=relay,
            metrics_port=args.metrics_port,
            metrics_host=args.metrics_host,
            otel_metrics=args.otel_metrics,
        )
    except (LookupError, ValueError, TypeError) as error:
        raise CommandError(str(error)) from None
    except ImportError as error:  # --metrics-port without eventbus[prometheus], or --otel-...
        raise CommandError(str(error)) from None


def _relay_command(args: argparse.Namespace) -> int:
    bus = _load_app(args.app)
    assert bus is not None
    _log_to_stderr()
    from .outbox.relay import serve

    try:
        return serve(_relay(bus, args))
    except (ValueError, TypeError) as error:
        raise CommandError(str(error)) from None


def _relay(bus: EventBus, args: argparse.Namespace) -> Relay:
    from .outbox import OutboxError, Relay, SQLiteOutbox

    if not os.path.exists(args.outbox):
        raise CommandError(
            f"--outbox {args.outbox}: no such file; give the SQLite file the application "
            "writes its outbox in"
        )
    try:
        outbox = SQLiteOutbox(args.outbox, table=args.table)
    except OutboxError as error:
        raise CommandError(str(error)) from None
    return Relay(bus, outbox, batch=args.batch, lease=args.lease, poll=args.poll)


def _log_to_stderr() -> None:
    import logging

    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )


def _groups(args: argparse.Namespace) -> int:
    bus = _load_app(args.app)
    assert bus is not None
    from .redis import BrokerError, RedisBroker
    from .redis._worker import groups

    if not isinstance(bus.broker, RedisBroker):
        raise CommandError(f"{args.app} is not a bus with a RedisBroker: it has no groups")
    try:
        found = groups(bus.broker)
    except BrokerError as error:
        raise CommandError(str(error)) from None
    if args.json:
        _print_json(found)
        return EXIT_OK
    if not found:
        print(f"no consumer groups on {bus.broker!r}: no worker has started yet")
        return EXIT_OK
    rows = [
        (
            _line(group["handler"]),
            str(group["pending"]),
            "?" if group["lag"] is None else str(group["lag"]),
            str(group["consumers"]),
        )
        for group in found
    ]
    table, _ = _table(("HANDLER", "PENDING", "LAG", "CONSUMERS"), rows, _width())
    print(table)
    print(f"\n{found[0]['stream_length']} entries in the stream of {bus.broker!r}")
    return EXIT_OK


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


@contextlib.contextmanager
def _store(args: argparse.Namespace, bus: EventBus | None) -> c.Iterator[DeadLetterStore]:
    """The store the command works on: ``--db``, ``--redis``, or the broker bus of ``--app``.

    ``args.where`` is set to how messages name it.
    """
    chosen = [flag for flag in ("db", "redis") if getattr(args, flag) is not None]
    if len(chosen) > 1:
        raise CommandError("give --db or --redis, not both: the command works on one store")
    if args.db is not None:
        args.where = args.db
        with _sqlite(args.db) as store:
            yield store
        return
    if args.redis is None and (bus is None or bus.broker is None):
        raise CommandError(
            "which store? give --db PATH (a SQLite store), --redis URL [--namespace NS] "
            "(a broker's store), or --app MODULE:ATTRIBUTE naming a broker bus"
        )
    try:
        from .redis import BrokerError, RedisDeadLetterStore
    except ImportError as missing:
        raise CommandError(str(missing)) from None
    try:
        if args.redis is not None:
            redis_store = RedisDeadLetterStore(args.redis, namespace=args.namespace)
        else:
            assert bus is not None
            if not isinstance(bus.dead_letters, RedisDeadLetterStore):
                raise CommandError(
                    f"--app {args.app} is a broker bus whose dead letters are in "
                    f"{bus.dead_letters!r}; give --db or --redis for that store"
                )
            redis_store = bus.dead_letters
        args.where = repr(redis_store)
        yield redis_store
    except (BrokerError, ValueError) as error:
        raise CommandError(str(error)) from None


@contextlib.contextmanager
def _sqlite(path: str) -> c.Iterator[SQLiteDeadLetterStore]:
    """The store at ``path``, closed after the block; any store error becomes a CommandError.

    Errors are caught while the store is used, not only when it opens: a
    damaged file may open and fail at its first read.
    """
    if path == ":memory:":
        raise CommandError(
            "--db :memory: names a new, empty in-memory store, which holds no letters to act "
            "on; give the path of the store's file (a file of that name is ./:memory:)"
        )
    try:
        try:
            store = SQLiteDeadLetterStore(path, create=False)
        except FileNotFoundError:
            raise CommandError(f"no dead-letter database at {path!r}; check --db") from None
        with store:
            yield store
    except DeadLetterStoreError as error:  # it names the file, the cause and the fix
        raise CommandError(str(error)) from None
    except (sqlite3.Error, OSError) as error:
        raise CommandError(
            f"the dead-letter store {path!r} cannot be used: {type(error).__name__}: {error}"
        ) from None


def _require_writable(path: str, verb: str) -> None:
    """Refuse, before any handler runs, a store this user can only read."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isfile(path) and not (
        os.access(path, os.W_OK) and os.access(directory, os.W_OK | os.X_OK)
    ):
        raise CommandError(
            f"the dead-letter store {path!r} is read-only for this user: {verb} removes the "
            "letters that succeed and updates those that fail again, so it must write the "
            "file and its directory; run it as a user who can (`list` and `show` work "
            "read-only)"
        )


def _chosen(store: c.Iterable[DeadLetter], args: argparse.Namespace) -> list[DeadLetter]:
    """The letters the command acts on: those of the ids given, or all; then the filters."""
    return _matching(_resolve(store, args.ids) if args.ids else list(store), args)


def _matching(letters: c.Iterable[DeadLetter], args: argparse.Namespace) -> list[DeadLetter]:
    cutoff = datetime.now(UTC) - args.older_than if args.older_than is not None else None
    return [
        letter
        for letter in letters
        if (args.event_type is None or letter.event_type == args.event_type)
        and (args.handler is None or letter.handler == args.handler)
        and (cutoff is None or letter.failed_at <= cutoff)
    ]


def _resolve(store: c.Iterable[DeadLetter], given: c.Sequence[str]) -> list[DeadLetter]:
    """The letters of the ids (or unique prefixes) given, each once, in the order given."""
    queries = [_id_query(text) for text in given]
    found: list[list[DeadLetter]] = [[] for _ in queries]
    for letter in store:  # one pass, whatever the number of ids
        digits = letter.id.hex
        for matches, (prefix, full) in zip(found, queries, strict=True):
            if (letter.id == full) if full is not None else digits.startswith(prefix):
                matches.append(letter)
    chosen: dict[uuid.UUID, DeadLetter] = {}
    for text, matches in zip(given, found, strict=True):
        if not matches:
            raise CommandError(f"no dead letter with id {text!r}; `list` shows the ids")
        if len(matches) > 1:
            shown = ", ".join(str(letter.id) for letter in matches[:3])
            more = ", ..." if len(matches) > 3 else ""
            raise CommandError(
                f"id {text!r} matches {len(matches)} letters ({shown}{more}); give more characters"
            )
        chosen.setdefault(matches[0].id, matches[0])  # `ID ID[:8]` is one letter
    return list(chosen.values())


_ID_CHARACTERS = re.compile(r"[0-9a-f-]+")


def _id_query(text: str) -> tuple[str, uuid.UUID | None]:
    """A letter id as given: (its hex digits, lower case, the whole UUID if it is one).

    Dashes do not count: ``1a2b3c4d-5e`` and ``1a2b3c4d5e`` are one prefix.
    """
    prefix = text.strip().lower()
    if not prefix:
        raise CommandError(
            "an empty letter id is refused: as a prefix it would match every letter (an "
            "unset variable in a script?); give an id as `list` prints it, or use --all"
        )
    if not _ID_CHARACTERS.fullmatch(prefix):
        raise CommandError(
            f"{text!r} is not a letter id: ids are hexadecimal, like the ID column of `list`"
        )
    digits = prefix.replace("-", "")
    if len(digits) == 32:
        return digits, uuid.UUID(digits)
    if len(digits) < MIN_ID_PREFIX:
        raise CommandError(
            f"letter id {text!r} is too short: give at least {MIN_ID_PREFIX} of its characters "
            "(`list` prints 8)"
        )
    return digits, None


def _filtered(args: argparse.Namespace) -> bool:
    return any(x is not None for x in (args.event_type, args.handler, args.older_than))


def _require_selection(args: argparse.Namespace, verb: str) -> None:
    if not args.ids and not _filtered(args) and not args.all:
        raise CommandError(
            f"{verb} what? give letter ids, a filter (--event-type, --handler, --older-than), "
            "or --all"
        )


# -- what a letter is -----------------------------------------------------------------

_State = t.Literal["defined", "undefined", "unreadable", "not_redrivable"]
_MARKS: dict[_State, str] = {
    "defined": "",
    "undefined": " (!)",
    "unreadable": " (unreadable)",
    "not_redrivable": " (not redrivable)",
}


def _state(letter: DeadLetter) -> _State:
    event = letter.event
    if not isinstance(event, UndefinedEvent):
        return "defined"
    if event.redrivable:
        return "undefined"
    return "unreadable" if event.reason.startswith("row unreadable") else "not_redrivable"


def _ready(bus: EventBus, letter: DeadLetter) -> str:
    if letter.unhandled:
        names = [s.name for s in bus.subscriptions_for(type(letter.event))]
        if not names:
            return "no handler is subscribed to its event on this bus yet: it would stay unhandled"
        return "ready: publishes the event to the handlers it has now: " + ", ".join(names)
    return f"ready: runs {letter.handler} on this bus"


def _notes(letters: c.Sequence[DeadLetter], app: str | None) -> None:
    """Explain the marks of the EVENT TYPE column."""
    states = [_state(letter) for letter in letters]
    undefined = sorted(
        {x.event_type for x, s in zip(letters, states, strict=True) if s == "undefined"}
    )
    if undefined:
        hint = "" if app else "; pass --app module:attribute to import the application"
        print(
            f"(!) event type(s) not defined in this process: "
            f"{', '.join(_line(x) for x in undefined)}{hint}. "
            "Those letters are kept; `show` prints their stored JSON."
        )
    if "unreadable" in states:
        print(
            f"(unreadable) {states.count('unreadable')} letter(s) whose stored row cannot be "
            "read whole: `show ID` prints what could be read, `purge ID` removes one."
        )
    if "not_redrivable" in states:
        print(
            f"(not redrivable) {states.count('not_redrivable')} letter(s) whose event the "
            "store could not keep whole: `show ID` says why and prints what was kept."
        )


def _record(letter: DeadLetter, *, full: bool) -> dict[str, object]:
    """A letter as JSON: ``list --json`` (no traceback or event) and ``show --json`` (all)."""
    event = letter.event
    record: dict[str, object] = {
        "id": str(letter.id),
        "event_type": letter.event_type,
        "handler": letter.handler,
        "attempts": letter.attempts,
        "first_failed_at": letter.first_failed_at.isoformat(),
        "failed_at": letter.failed_at.isoformat(),
        "error_type": letter.error_type,
        "error_message": letter.error_message,
        "host": letter.host,
        "pid": letter.pid,
        "event_state": _state(letter),
        "reason": event.reason if isinstance(event, UndefinedEvent) else None,
    }
    if full:
        record["traceback"] = letter.traceback
        text = event.payload if isinstance(event, UndefinedEvent) else event.model_dump_json()
        try:
            record["event"], record["stored_json"] = json.loads(text), None
        except (ValueError, RecursionError):  # a damaged row: the text as it was read
            record["event"], record["stored_json"] = None, text
    return record


def _print_json(value: object) -> None:
    # ensure_ascii: every control character, and anything past ASCII, arrives escaped
    print(json.dumps(value, indent=2, ensure_ascii=True))


def _event_text(event: object) -> str:
    if not isinstance(event, UndefinedEvent):
        assert hasattr(event, "model_dump_json")
        return str(event.model_dump_json(indent=2))
    if len(event.payload) <= 4 * SHOW_LIMIT:  # a big one is cut anyway: not worth parsing
        with contextlib.suppress(ValueError, RecursionError):
            return json.dumps(json.loads(event.payload), indent=2, ensure_ascii=False)
    return event.payload


# -- printing -----------------------------------------------------------------------

#: What is escaped in text from a store: C0 and C1 controls (ESC starts a terminal's escape
#: sequences) but tab and newline, lone surrogates, and the characters that reorder text
#: (bidirectional overrides) or break lines where a terminal does not expect it.
_UNSAFE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e"
    "\u2066-\u2069\ud800-\udfff]"
)


def _safe(text: str) -> str:
    """``text`` with every character that could drive a terminal escaped visibly (``\\x1b``)."""
    return _UNSAFE.sub(
        lambda match: match[0].encode("unicode_escape").decode("ascii"),
        text.replace("\r\n", "\n"),
    )


def _line(text: str) -> str:
    """``text`` made safe, on one line: every run of whitespace one space."""
    return " ".join(_safe(text).split())


def _cut(text: str, what: str, letter: DeadLetter) -> str:
    if len(text) <= SHOW_LIMIT:
        return text
    return (
        f"{text[:SHOW_LIMIT]}\n... [{what} is cut here: {len(text):,} characters in all; "
        f"`show {str(letter.id)[:8]} --json` prints all of it]"
    )


def _width() -> int | None:
    """The terminal's width (``COLUMNS`` if set); None when the output is not a terminal."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    if sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return None


def _table(
    header: c.Sequence[str], rows: c.Sequence[c.Sequence[str]], width: int | None
) -> tuple[str, bool]:
    """The rows under the header; the last column cut to ``width`` if need be (and if cut)."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    cut = False
    if width is not None:
        room = max(width - sum(widths[:-1]) - 2 * (len(widths) - 1), len(header[-1]), 20)
        if widths[-1] > room:
            cut = True
            widths[-1] = room
            rows = [
                (*row[:-1], row[-1] if len(row[-1]) <= room else row[-1][: room - 3] + "...")
                for row in rows
            ]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines), cut


def _wrapped(text: str, width: int | None, *, indent: int) -> str:
    """``text`` wrapped to the terminal, never cut; as it is when there is no terminal."""
    if width is None:
        return text
    return textwrap.fill(
        text,
        width=max(width, 40),
        subsequent_indent=" " * indent,
        break_long_words=True,
        break_on_hyphens=False,
    )


def _ago(age: timedelta) -> str:
    seconds = max(0, int(age.total_seconds()))
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _short(error_type: str) -> str:
    return error_type.rsplit(".", 1)[-1]


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in _safe(text).splitlines())


def _duration(text: str) -> timedelta:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30s, 15m, 2h or 7d")
    value, unit = float(match[1]), match[2]
    try:
        return timedelta(seconds=value * {"s": 1, "m": 60, "h": 3_600, "d": 86_400}[unit])
    except OverflowError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is longer than any age a letter can have (at most 999999999d)"
        ) from None


# -- arguments ----------------------------------------------------------------------


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """argparse's, but a group of commands lists its commands, not its name and then them."""

    def _format_action(self, action: argparse.Action) -> str:
        text = super()._format_action(action)
        if action.nargs == argparse.PARSER:  # drop the "  COMMAND" line above the commands
            text = text.split("\n", 1)[1]
        return text

    def _iter_indented_subactions(
        self, action: argparse.Action
    ) -> c.Generator[argparse.Action, None, None]:
        get_subactions = getattr(action, "_get_subactions", None)
        if get_subactions is not None:  # the commands, indented like the options
            yield from get_subactions()


def _parser() -> argparse.ArgumentParser:
    raw = _HelpFormatter
    parser = argparse.ArgumentParser(
        prog="python -m eventbus",
        description="Run a broker bus's workers; inspect and redrive eventbus dead letters.",
        epilog=_EXIT_STATUS,
        formatter_class=raw,
    )
    groups = parser.add_subparsers(title="commands", dest="group", required=True, metavar="COMMAND")
    letters = groups.add_parser(
        "dead-letters",
        help="list, show, redrive or purge dead letters (SQLite or Redis)",
        description="List, show, redrive or purge the letters of a dead-letter store: a "
        "SQLite file (--db), or a broker's store in Redis (--redis URL --namespace NS, or "
        "--app naming a broker bus).",
        epilog=_EXIT_STATUS,
        formatter_class=raw,
    )
    commands = letters.add_subparsers(
        title="commands", dest="command", required=True, metavar="COMMAND"
    )

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", help="path of a SQLiteDeadLetterStore file")
    common.add_argument(
        "--redis",
        metavar="URL",
        help="the Redis server of a broker's RedisDeadLetterStore (redis://host:port/db)",
    )
    common.add_argument(
        "--namespace",
        default="eventbus",
        help="with --redis: the broker's namespace (default: eventbus)",
    )
    common.add_argument(
        "--app",
        metavar="MODULE:ATTRIBUTE",
        help="the application's EventBus, imported like uvicorn's app (e.g. shop.events:bus); "
        "for a broker bus, its store is used when neither --db nor --redis is given",
    )
    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("--event-type", help="only letters of this event_type")
    filters.add_argument("--handler", help="only letters of this handler (its name)")
    filters.add_argument(
        "--older-than",
        type=_duration,
        metavar="AGE",
        help="only letters last failed AGE ago or earlier (30s, 15m, 2h, 7d)",
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument(
        "--json", action="store_true", help="print JSON for scripts: every field, texts whole"
    )

    def command(
        name: str,
        run: t.Callable[[argparse.Namespace], int],
        help: str,
        parents: list[argparse.ArgumentParser],
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            parents=parents,
            help=help,
            description=help,
            epilog=_EXIT_STATUS,
            formatter_class=raw,
        )
        sub.set_defaults(run=run)
        return sub

    worker = groups.add_parser(
        "worker",
        help="run the handlers of a broker bus (Redis) until SIGTERM or SIGINT",
        description=textwrap.dedent(
            """\
            Run the handlers of a broker bus, EventBus(broker=RedisBroker(...)), in this
            process: each handler reads the namespace's stream in a consumer group named
            after it, so any number of workers, on any number of machines, share the work.

            SIGTERM or SIGINT stops reading; the entries in flight finish and are
            acknowledged, and the worker exits 0. A second signal exits at once (status 1),
            leaving them pending for another worker to take over after claim_idle.

            The worker logs (stderr, level INFO) which handlers, groups and concurrency it
            runs, entries it takes over from dead workers, and failures."""
        ),
        formatter_class=raw,
    )
    worker.add_argument(
        "app",
        metavar="MODULE:ATTRIBUTE",
        help="the application's broker bus, imported like uvicorn's app (e.g. shop.app:bus)",
    )
    worker.add_argument(
        "--handlers",
        action="append",
        default=[],
        metavar="GLOB",
        help="run only the handlers whose names match GLOB (shell-style, e.g. 'catalog.*'); "
        "repeatable; by default every handler of the bus",
    )
    worker.add_argument(
        "--concurrency",
        type=int,
        default=16,
        metavar="N",
        help="entries run at once, across the handlers (default 16); the worker reads no "
        "more than it has room for",
    )

    def outbox_options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--table",
            default="eventbus_outbox",
            help="the outbox's table in that file (default eventbus_outbox)",
        )
        parser.add_argument(
            "--batch",
            type=int,
            default=100,
            metavar="N",
            help="rows sent per pass (default 100); a relay killed mid-pass sends them again",
        )
        parser.add_argument(
            "--poll",
            type=float,
            default=0.5,
            metavar="SECONDS",
            help="how often an empty outbox is looked at again (default 0.5)",
        )
        parser.add_argument(
            "--lease",
            type=float,
            default=30.0,
            metavar="SECONDS",
            help="how long the outbox's lease lasts unrenewed (default 30): another relay "
            "takes over that long after this one died",
        )

    worker.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics (needs eventbus[prometheus])",
    )
    worker.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="the address to serve metrics on (default 127.0.0.1; 0.0.0.0 for every interface)",
    )
    worker.add_argument(
        "--otel-metrics",
        action="store_true",
        help="report the metrics through OpenTelemetry's global meter provider, which the "
        "application configures at import (needs eventbus[otel])",
    )
    worker.add_argument(
        "--outbox",
        metavar="PATH",
        help="also relay the outbox of this SQLite file (eventbus.SQLiteOutbox) to the bus",
    )
    outbox_options(worker)
    worker.set_defaults(run=_worker)
    relay = groups.add_parser(
        "relay",
        help="send an outbox's events (a SQLite file) on a bus until SIGTERM or SIGINT",
        description=textwrap.dedent(
            """\
            Send the events an application wrote to its outbox (eventbus.SQLiteOutbox, a
            table in its SQLite file, in the transactions of its own writes) on the bus
            MODULE:ATTRIBUTE names: to Redis on a broker bus. Rows go in the order they
            were committed, each deleted once sent; one relay sends at a time (a lease in
            the file), others wait and take over within --lease seconds if it dies.

            A row that fails to send is tried again with backoff (20 attempts over about
            13 minutes), holding back the rows after it, then becomes a dead letter in the
            bus's store (handler "(outbox relay)"), which a redrive publishes again.

            SIGTERM or SIGINT finishes the pass under way, gives up the lease and exits 0;
            a second signal exits at once (status 1)."""
        ),
        formatter_class=raw,
    )
    relay.add_argument(
        "app",
        metavar="MODULE:ATTRIBUTE",
        help="the bus to publish on, imported like uvicorn's app (e.g. shop.app:bus)",
    )
    relay.add_argument(
        "--outbox", required=True, metavar="PATH", help="the SQLite file of the outbox"
    )
    outbox_options(relay)
    relay.set_defaults(run=_relay_command)
    status = groups.add_parser(
        "groups",
        help="show each handler's consumer group on a broker: pending entries and lag",
        description="Show each handler's consumer group on a broker's stream: entries read "
        "and not acknowledged (pending: running, or held by a worker that died until taken "
        "over), entries not read yet (lag), and consumers (workers seen).",
        formatter_class=raw,
    )
    status.add_argument(
        "app", metavar="MODULE:ATTRIBUTE", help="the application's broker bus (e.g. shop.app:bus)"
    )
    status.add_argument("--json", action="store_true", help="print JSON for scripts")
    status.set_defaults(run=_groups)

    command("list", _list, "list the letters as a table", [common, filters, as_json])
    show = command("show", _show, "show one letter: event, error, traceback", [common, as_json])
    show.add_argument("id", help="the letter's id, or a unique prefix of it")
    for name, run, text in (
        ("redrive", _redrive_command, "run the letters' handlers again; remove those that succeed"),
        ("purge", _purge, "delete letters for good"),
    ):
        sub = command(name, run, text, [common, filters])
        sub.add_argument(
            "ids",
            nargs="*",
            metavar="ID",
            help=f"letter ids, or unique prefixes of at least {MIN_ID_PREFIX} characters",
        )
        sub.add_argument("--all", action="store_true", help="every letter (when no id or filter)")
        if name == "redrive":
            sub.add_argument(
                "--to-handler",
                metavar="NAME",
                help="run the handler subscribed under NAME instead of the one each letter "
                "names (a handler renamed, or named __main__.x when its script made the "
                "letter); a letter that fails again then names it",
            )
    return parser
