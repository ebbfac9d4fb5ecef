"""Relay: move an outbox's rows to a bus, in order, one relay at a time.

A pass (:meth:`Relay.send`, :meth:`Relay.send_async`) takes the outbox's
lease, reads the first ``batch`` rows in the order they were added, and
publishes each on the bus (to Redis on a broker bus; to its handlers on a
bus of one process), then deletes the rows it sent, all behind the lease:

- **One relay sends at a time.** The lease is a row with an owner, an
  expiry and a fencing token; another relay waits until it expires (a
  stopped relay gives it up at once), and the rows of a relay that lost
  it are not deleted by it.
- **In order.** A row that fails to send stops the pass: the rows after
  it wait for it, and it is tried again after its retry policy's wait.
  After the policy's last attempt it becomes a dead letter (handler
  :data:`RELAY`) and the next row goes. So the order on the bus is the
  order of the commits, except around a row that ended as a letter.
- **At least once.** A row is deleted after it was sent: a relay killed
  in between sends it again (the rows of at most one pass). Its event
  keeps its ``event_id``, so idempotent handlers skip the second copy.
- **In its trace.** An event is published in the trace context it was
  added in (kept in its row): its send span is a child of the span of the
  request or handler that added it, so a cascade through outboxes is one
  trace.
- **Nothing lost.** A row that cannot be read back into an event (its
  type is not imported here, its JSON no longer validates) becomes a dead
  letter keeping its JSON; a letter that cannot be stored leaves its row
  in the outbox, to be tried again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import typing as t
import uuid

from pydantic import ValidationError

from .. import signals
from .._logs import event_fields, trace_id_of
from .._propagation import attached
from ..dead_letters import DeadLetter, DeadLetterStore, UndefinedEvent
from ..dead_letters.letter import RELAY, describe
from ..events import Event, EventSerializationError, UnknownEventTypeError
from ..retry import RetryPolicy, finite_non_negative
from .sqlite import COLUMNS, OutboxRow, SQLiteOutbox

if t.TYPE_CHECKING:
    from ..bus import EventBus

__all__ = ["RELAY", "Relay", "serve"]

logger = logging.getLogger("eventbus.outbox")

_R = t.TypeVar("_R")

#: 20 attempts over about 13 minutes (waits 0.5 s doubling to 60 s), then a dead letter.
DEFAULT_RETRY = RetryPolicy(max_attempts=20, initial_delay=0.5, backoff=2.0, max_delay=60.0)


class Relay:
    """Send the rows of ``outbox`` on ``bus``, in order, deleting each once sent.

    ``batch``: rows per pass; ``lease``: seconds the lease lasts without
    renewal (another relay takes over after that, if this one died);
    ``retry``: how often and how long apart a row is tried before it
    becomes a dead letter (by default 20 times over about 13 minutes);
    ``poll``: seconds between looks at an empty outbox while running;
    ``dead_letters``: where unsendable rows go (the bus's store by
    default). Times come from the bus's clock.
    """

    def __init__(
        self,
        bus: EventBus,
        outbox: SQLiteOutbox,
        *,
        batch: int = 100,
        lease: float = 30.0,
        retry: RetryPolicy | None = None,
        poll: float = 0.5,
        dead_letters: DeadLetterStore | None = None,
        name: str | None = None,
    ) -> None:
        if not isinstance(outbox, SQLiteOutbox):
            raise TypeError(f"outbox must be a SQLiteOutbox, got {outbox!r}")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be an int >= 1, got {batch!r}")
        for option, value in (("lease", lease), ("poll", poll)):
            if not finite_non_negative(value) or not value > 0:
                raise ValueError(f"{option} must be a positive number of seconds, got {value!r}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy, got {retry!r}")
        self.bus = bus
        self.outbox = outbox
        self.batch = batch
        self.lease = float(lease)
        self.retry = retry or DEFAULT_RETRY
        self.poll = float(poll)
        self.dead_letters = dead_letters if dead_letters is not None else bus.dead_letters
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.sent = 0  # rows sent (and deleted) by this relay, for tests and logs
        self.lettered = 0  # rows it made dead letters
        self._settled = 0  # rows the last pass settled (sent or lettered)
        self._token = 0  # the fencing token of the lease while this relay holds it
        self._until = 0.0  # when that lease lapses unless renewed (the bus's clock)
        self._stopping: asyncio.Event | None = None

    # -- one pass --------------------------------------------------------------------

    def send(self) -> int:
        """One pass: send up to ``batch`` rows; how many were sent (0 if another relay leads)."""
        rows = self._claim()
        done: list[int] = []  # rows settled: sent, or made dead letters
        sent = 0
        try:
            for row in rows:
                if self._renewal_due() and not self._renew():
                    break  # another relay took over: it sends the rest
                event = self._event(row, done)
                if event is None:
                    if done and done[-1] == row.seq:
                        continue  # made a dead letter: the next row goes
                    break  # the letter could not be stored: the row stays first
                try:
                    with attached(row.headers):  # in the trace the event was added in
                        self.bus.publish(event)
                except Exception as error:
                    if not self._failed(row, event, error, done):
                        break
                    continue
                done.append(row.seq)
                sent += 1
        finally:
            self._finish(done, sent)
        return sent

    async def send_async(self) -> int:
        """``send`` for asyncio: the outbox is read in a thread, events go by ``publish_async``."""
        rows = await _in_thread(self._claim)
        done: list[int] = []
        sent = 0
        try:
            for row in rows:
                if self._renewal_due() and not await _in_thread(self._renew):
                    break
                event = await _in_thread(self._event, row, done)
                if event is None:
                    if done and done[-1] == row.seq:
                        continue
                    break
                try:
                    with attached(row.headers):
                        await self.bus.publish_async(event)
                except Exception as error:
                    if not await _in_thread(self._failed, row, event, error, done):
                        break
                    continue
                done.append(row.seq)
                sent += 1
        finally:
            await _in_thread(self._finish, done, sent)
        return sent

    # -- running ---------------------------------------------------------------------

    async def run(self) -> None:
        """Send until :meth:`stop`, looking again every ``poll`` seconds when idle."""
        self._stopping = stopping = asyncio.Event()
        logger.info(
            "relay %s: sending %s to %s, %d row(s) waiting",
            self.name,
            self.outbox,
            self.bus.broker or "this process's handlers",
            len(self.outbox),
            extra={"relay": self.name},
        )
        try:
            while not stopping.is_set():
                try:
                    await self.send_async()
                except Exception:
                    logger.exception(
                        "relay %s: a pass failed; trying again",
                        self.name,
                        extra={"relay": self.name},
                    )
                    self._settled = 0
                if self._settled < self.batch:  # nothing more waiting now: look again later
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stopping.wait(), timeout=self.poll)
        finally:
            await _in_thread(self._give_up_lease)

    def run_sync(self) -> None:
        """Run until :meth:`stop`, in an event loop of its own."""
        asyncio.run(self.run())

    def stop(self) -> None:
        """Stop after the pass under way; the lease is given up for another relay."""
        if self._stopping is not None:
            self._stopping.set()

    # -- the steps, on the outbox ----------------------------------------------------

    def _now(self) -> float:
        return self.bus.clock.now().timestamp()

    def _claim(self) -> list[OutboxRow]:
        """Take or renew the lease, and read the rows due; [] when another relay leads."""
        outbox = self.outbox
        now = self._now()
        with outbox._transaction() as db:
            lease = db.execute(f"SELECT owner, token, until FROM {outbox.lease_table}").fetchone()
            self._until = now + self.lease
            if lease is None:
                self._token = 1
                db.execute(
                    f"INSERT INTO {outbox.lease_table} (id, owner, token, until) "
                    "VALUES (1, ?, 1, ?)",
                    (self.name, now + self.lease),
                )
            else:
                owner, token, until = lease
                mine = owner == self.name and token == self._token
                if not mine and until > now:
                    self._until = 0.0
                    return []  # another relay leads; this one waits for its lease to lapse
                if not mine:
                    self._token = token + 1
                    logger.info(
                        "relay %s: took the lease of %s (token %d)",
                        self.name,
                        outbox,
                        self._token,
                        extra={"relay": self.name},
                    )
                db.execute(
                    f"UPDATE {outbox.lease_table} SET owner = ?, token = ?, until = ?",
                    (self.name, self._token, now + self.lease),
                )
            found = db.execute(
                f"SELECT {COLUMNS} FROM {outbox.table} ORDER BY seq LIMIT ?", (self.batch,)
            ).fetchall()
        rows = [OutboxRow._read(row) for row in found]
        if rows and rows[0].next_try_at > now:
            return []  # the first row waits for its next attempt, and the others behind it
        return rows

    def _renewal_due(self) -> bool:
        """Whether half the lease has gone since it was taken or renewed (a clock read)."""
        return self._now() >= self._until - self.lease / 2

    def _renew(self) -> bool:
        """Renew the lease for another ``lease`` seconds; False (logged) if another took it.

        A pass renews it before each row once half of it has gone, so a
        pass longer than the lease never lets a second relay send beside
        this one: a relay that finds it lost the lease stops sending.
        """
        now = self._now()
        with self.outbox._transaction() as db:
            renewed = (
                db.execute(
                    f"UPDATE {self.outbox.lease_table} SET until = ? WHERE owner = ? AND token = ?",
                    (now + self.lease, self.name, self._token),
                ).rowcount
                == 1
            )
        if not renewed:
            logger.warning(
                "relay %s: another relay took the lease of %s while this one was sending "
                "(it stopped for longer than the lease?): this pass stops here",
                self.name,
                self.outbox,
                extra={"relay": self.name},
            )
            self._until = 0.0
            return False
        self._until = now + self.lease
        return True

    def _event(self, row: OutboxRow, done: list[int]) -> Event | None:
        """The row's event, or None after making an unreadable row a letter (then done)."""
        try:
            return Event.from_json(row.event_type, row.payload)
        except (
            UnknownEventTypeError,
            EventSerializationError,
            ValidationError,
            ValueError,
        ) as error:
            stand_in = UndefinedEvent(
                stored_type=row.event_type,
                payload=row.payload,
                reason=f"this outbox row cannot be read back into an event: {describe(error)}",
                redrivable=isinstance(error, UnknownEventTypeError),
            )
            if self._letter(row, stand_in, error, row.attempts + 1):
                done.append(row.seq)
            return None

    def _failed(self, row: OutboxRow, event: Event, error: Exception, done: list[int]) -> bool:
        """Settle a row that failed to send; True if the pass goes on to the next row."""
        attempts = row.attempts + 1
        wait = self.retry.next_delay(attempts, error, self.bus.clock)
        if wait is None:
            if self._letter(row, event, error, attempts):
                done.append(row.seq)
                return True
            wait = self.retry.max_delay  # the store failed too: the row waits, and goes again
        logger.warning(
            "relay %s: sending %s (event_id=%s, outbox row %d) failed, attempt %d: %s; "
            "trying again in %gs",
            self.name,
            event.event_type,
            event.event_id,
            row.seq,
            attempts,
            describe(error),
            wait,
            extra=event_fields(event, RELAY, attempts, **_row_fields(self, row)),
        )
        with self.outbox._transaction() as db:
            if self._holds(db):
                db.execute(
                    f"UPDATE {self.outbox.table} SET attempts = ?, next_try_at = ?, "
                    "last_error = ? WHERE seq = ?",
                    (
                        attempts,
                        self._now() + wait,
                        f"{type(error).__name__}: {describe(error)}"[:2000],
                        row.seq,
                    ),
                )
        return False

    def _letter(self, row: OutboxRow, event: Event, error: Exception, attempts: int) -> bool:
        """Store the dead letter of a row; False (logged) if the store refused it."""
        letter = DeadLetter.from_exception(
            event, RELAY, attempts, error, failed_at=self.bus.clock.now()
        )
        try:
            self.dead_letters.add(letter)
        except Exception:
            logger.exception(
                "relay %s: outbox row %d (%s) could not be sent nor stored as a dead letter; "
                "it stays in the outbox",
                self.name,
                row.seq,
                row.event_type,
                extra=event_fields(event, RELAY, attempts, **_row_fields(self, row)),
            )
            return False
        signals.send(signals.event_dead_lettered, self.bus, dead_letter=letter)
        logger.error(
            "relay %s: outbox row %d (%s, event_id=%s) is dead letter %s after %d attempt(s): %s",
            self.name,
            row.seq,
            row.event_type,
            event.event_id,
            letter.id,
            attempts,
            letter.error_message,
            extra=event_fields(
                event,
                RELAY,
                attempts,
                **_row_fields(self, row),
                dead_letter_id=letter.id,
            ),
        )
        return True

    def _finish(self, done: list[int], sent: int) -> None:
        """Delete the rows settled, if this relay still holds the lease."""
        self._settled = len(done)
        if not done:
            return
        with self.outbox._transaction() as db:
            if not self._holds(db):
                logger.warning(
                    "relay %s: lost the lease of %s while sending (a pass longer than the "
                    "lease?): its %d row(s) stay, and are sent again by the new holder",
                    self.name,
                    self.outbox,
                    len(done),
                    extra={"relay": self.name},
                )
                return
            db.executemany(
                f"DELETE FROM {self.outbox.table} WHERE seq = ?", [(seq,) for seq in done]
            )
        self.sent += sent
        self.lettered += len(done) - sent

    def _holds(self, db: t.Any) -> bool:
        row = db.execute(f"SELECT owner, token FROM {self.outbox.lease_table}").fetchone()
        return row is not None and row[0] == self.name and row[1] == self._token

    def close(self) -> None:
        """Give up the lease, if held, so that another relay sends at once (``run`` does this)."""
        self._give_up_lease()

    def __enter__(self) -> t.Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _give_up_lease(self) -> None:
        with contextlib.suppress(Exception), self.outbox._transaction() as db:
            if self._holds(db):
                db.execute(f"UPDATE {self.outbox.lease_table} SET until = 0")

    def __repr__(self) -> str:
        return f"<Relay {self.name} {self.outbox!r}>"


def _row_fields(relay: Relay, row: OutboxRow) -> dict[str, object]:
    """A relay's log fields about ``row``: with the trace id it was added in, if any."""
    fields: dict[str, object] = {"relay": relay.name, "outbox_row": row.seq}
    trace_id = trace_id_of(row.headers.get("traceparent"))
    if trace_id is not None:
        fields["trace_id"] = trace_id
    return fields


async def _in_thread(function: t.Callable[..., _R], *args: t.Any) -> _R:
    """``function(*args)`` in a thread; cancelled, it waits for the thread before going on.

    So that a relay cancelled mid-pass never has a step on the outbox still
    running beside the pass's ``finally`` (which deletes the rows settled).
    """
    running = asyncio.ensure_future(asyncio.to_thread(function, *args))
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        while not running.done():  # a second cancel meanwhile waits for the thread too
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(running)
        raise


async def _until_signalled(relay: Relay, *others: t.Any) -> None:
    """Run ``relay`` (and ``others``' ``run()``) until SIGTERM/SIGINT; a second exits at once."""
    import signal

    loop = asyncio.get_running_loop()
    signalled = False

    def on_signal(signum: int) -> None:
        nonlocal signalled
        if signalled:
            logger.warning(
                "relay %s: second signal: exiting now", relay.name, extra={"relay": relay.name}
            )
            os._exit(1)
        signalled = True
        logger.info(
            "relay %s: %s: stopping",
            relay.name,
            signal.Signals(signum).name,
            extra={"relay": relay.name},
        )
        relay.stop()
        for other in others:
            other.stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await asyncio.gather(relay.run(), *(other.run() for other in others))
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def serve(relay: Relay) -> int:
    """Run ``relay`` in this process until SIGTERM or SIGINT; the exit status (0: stopped clean).

    The first signal lets the pass under way finish (its sent rows are
    deleted) and gives up the lease; a second exits at once (status 1):
    the rows of that pass are sent again by the next relay.
    """
    asyncio.run(_until_signalled(relay))
    logger.info(
        "relay %s: stopped after sending %d row(s)",
        relay.name,
        relay.sent,
        extra={"relay": relay.name},
    )
    return 0
