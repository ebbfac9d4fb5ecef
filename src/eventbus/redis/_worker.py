"""The worker: runs a broker bus's handlers on the stream, one consumer group per handler.

Each handler's group reads the namespace's stream; an entry is
acknowledged for that handler only after the handler succeeded (in the same
MULTI/EXEC as the events it published) or its dead letter is stored (in
the same MULTI/EXEC as the letter).

Attempts are deliveries: an entry's delivery count in the group's pending
list is the number of the attempt under way. A failed attempt with
attempts left waits the policy's delay, then claims the entry again (which
counts one more delivery) and runs it again; a worker that dies leaves its
entries pending, and another worker claims them after ``claim_idle``
(counting a delivery too). So an entry found with more deliveries than the
handler's ``max_attempts`` was run that many times by workers that never
finished: it becomes a dead letter without running again.

A running entry is kept fresh (claimed again without counting, every third
of ``claim_idle``), so that no other worker takes over a slow handler that
is still running.
"""

from __future__ import annotations

import asyncio
import collections
import collections.abc as c
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import functools
import logging
import os
import socket
import typing as t
import uuid

import redis
import redis.asyncio as aredis
from pydantic import ValidationError

from .. import signals
from .._logs import event_fields, log_context, trace_id_of
from .._propagation import attached
from ..context import current
from ..dead_letters.letter import DeadLetter, UndefinedEvent, describe
from ..errors import BrokerError, EventBusError
from ..events import Event, EventSerializationError, UnknownEventTypeError
from ..failures import _log, attempt_failed, give_up
from ..handlers.selection import select, unmatched_error
from ..idempotency import _skipped
from ..inbox import InMemoryInbox
from ..inbox.protocol import AlreadyHandled, Handling, handling
from ..middleware import HandlerCall, Middleware, chain_async
from ..results import PublishResult
from ..retry import RetryPolicy
from ._broker import Attempt, RedisBroker, entry_fields, handled_entry, running
from ._inbox import RedisInbox
from ._store import _ADD

if t.TYPE_CHECKING:
    from ..bus import EventBus
    from ..handlers.subscription import Subscription
    from ..outbox import Relay

__all__ = ["UnreadableEntryError", "Worker", "WorkerLostError"]

logger = logging.getLogger("eventbus.worker")

#: Entries read at most per read, whatever the free slots.
BATCH = 100

#: The waits, in seconds, before each new try of an acknowledgement Redis did not take.
ACK_RETRIES = (0.1, 0.5, 2.0, 5.0)

#: Seconds between two trims of the stream by one worker, at the most.
TRIM_EVERY = 1.0

#: A worker trims sooner once it acknowledged this many entries since its last trim.
TRIM_AFTER = 1_000

# Trim the stream of the entries every group has acknowledged, and of nothing else: below
# the oldest entry still pending in some group, and below what some group has not read
# yet. A stream without groups is not trimmed (no worker started: nothing is known to be
# done). KEYS: the stream. Returns how many entries were removed.
_TRIM = """
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then return 0 end
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local floor, floor_ms, floor_seq = nil, nil, nil
for _, group in ipairs(groups) do
  local info = {}
  for i = 1, #group, 2 do info[group[i]] = group[i + 1] end
  local bound = info['last-delivered-id']
  if info['pending'] > 0 then
    bound = redis.call('XPENDING', KEYS[1], info['name'])[2]
  end
  local ms, seq = parse(bound)
  if floor == nil or ms < floor_ms or (ms == floor_ms and seq < floor_seq) then
    floor, floor_ms, floor_seq = bound, ms, seq
  end
end
return redis.call('XTRIM', KEYS[1], 'MINID', '~', floor)
"""


class WorkerLostError(EventBusError):
    """The error of a letter whose entry was delivered more times than its handler may run.

    Each delivery started an attempt that no worker finished: the workers
    running it died (killed, out of memory, a crash in native code).
    """


class UnreadableEntryError(EventBusError):
    """The error of a letter whose stream entry cannot be read back into an event."""


class Worker:
    """Run the handlers of a broker bus (``EventBus(broker=RedisBroker(...))``) until stopped.

    ``handlers``: shell-style globs over handler names (all of the bus's
    handlers by default); each must match at least one. ``concurrency``:
    how many entries run at once, across the handlers; a worker reads no
    more entries than it has free slots, so nothing ages in its pending
    list while others could run it. ``name``: the consumer name in Redis
    (host, pid and a random part by default).

    ``await worker.run()`` runs until ``worker.stop()``; ``worker.run_sync()``
    runs it in an event loop of its own.
    """

    def __init__(
        self,
        bus: EventBus,
        *,
        handlers: c.Sequence[str] = (),
        concurrency: int = 16,
        name: str | None = None,
        block: float = 1.0,
    ) -> None:
        broker = bus.broker
        if not isinstance(broker, RedisBroker):
            raise TypeError(
                f"a worker runs the handlers of a broker bus, and {bus!r} has "
                f"{'no broker' if broker is None else repr(broker)}; build it with "
                "EventBus(broker=RedisBroker(url, namespace=...))"
            )
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be an int >= 1, got {concurrency!r}")
        subscriptions = bus.subscriptions
        if handlers:
            chosen, unmatched = select(subscriptions, list(handlers))
            if unmatched:
                raise LookupError(unmatched_error(unmatched, subscriptions, repr(bus)))
        else:
            chosen = list(subscriptions)
        if not chosen:
            raise LookupError(f"{bus!r} has no handlers subscribed: a worker would have no work")
        self.bus = bus
        self.broker = broker
        self.subscriptions: tuple[Subscription, ...] = tuple(
            {sub.name: sub for sub in chosen}.values()  # one group per handler name
        )
        # Decided once: each handler's retry policy and (at run) its middleware.
        self._policies = {
            sub.name: sub.retry or bus.default_retry or RetryPolicy() for sub in self.subscriptions
        }
        self._middleware: dict[str, list[Middleware]] = {}
        # An inbox on the stream's server is written in the acknowledgement's MULTI/EXEC.
        inbox = bus.inbox
        self._inbox = inbox
        self._inbox_here = isinstance(inbox, RedisInbox) and inbox.url == broker.url
        self._record_ms = inbox.retention_ms if isinstance(inbox, RedisInbox) else 0
        self.concurrency = concurrency
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.block = block
        self._free = concurrency
        # Readers waiting for slots, served in turn: a group with nothing to read, releasing
        # its slots after a blocking read, queues behind the others instead of retaking them.
        self._waiting: collections.deque[tuple[int, asyncio.Future[int]]] = collections.deque()
        # Per group: acknowledgements waiting to be written together, and who writes them.
        self._commits: dict[str, list[_Commit]] = {}
        self._committers: dict[str, asyncio.Task[None]] = {}
        self._stopping: asyncio.Event | None = None
        self._acked_since_trim = 0
        self._trim_soon: asyncio.Event | None = None  # set after TRIM_AFTER acknowledgements
        self._in_flight: dict[tuple[str, bytes], asyncio.Task[None]] = {}
        self._idempotent_runs: dict[tuple[str, uuid.UUID], asyncio.Future[None]] = {}
        self.handled = 0  # entries acknowledged, for tests and the status line
        #: Entries taken over from dead workers, per handler (for metrics and tests).
        self.reclaimed: collections.Counter[str] = collections.Counter()

    # -- running ------------------------------------------------------------------

    def run_sync(self) -> None:
        """Run until :meth:`stop`, in an event loop of its own."""
        asyncio.run(self.run())

    def stop(self) -> None:
        """Stop reading; the entries in flight finish and are acknowledged, then ``run`` returns.

        Safe to call from a signal handler of the loop's thread.
        """
        if self._stopping is not None:
            self._stopping.set()
        while self._waiting:
            _, waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(0)

    async def run(self) -> None:
        """Run the handlers until :meth:`stop`; return once the entries in flight are done."""
        self._stopping = asyncio.Event()
        self._waiting.clear()
        self._trim_soon = asyncio.Event()
        self._free = self.concurrency
        self._middleware = {
            sub.name: [m for m in self.bus.middleware if m.applies_to(sub)]
            for sub in self.subscriptions
        }
        keys = self.broker.keys
        timeout = self.broker.timeout
        # Each group's reader holds a connection while it blocks, each entry may need one
        # to acknowledge, and the chores one each: a command waits for a free connection
        # (up to the broker's timeout) rather than failing for want of one.
        pool = aredis.BlockingConnectionPool.from_url(
            self.broker.url,
            max_connections=self.concurrency + len(self.subscriptions) + 4,
            timeout=timeout,
            socket_timeout=self.block + timeout,
            socket_connect_timeout=timeout,
        )
        self._client = aredis.Redis.from_pool(pool)  # owns it: aclose() closes its connections
        # Sync handlers run in threads of the worker's own, one per slot: asyncio's default
        # executor has min(32, cores + 4), so --concurrency 64 would run six at a time, and
        # an attempt's time (its span, its duration) would include the wait for a thread.
        self._threads = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.concurrency, thread_name_prefix=f"eventbus-worker-{self.name}"
        )
        self._store_script = self._client.register_script(_ADD)
        self._trim_script = self._client.register_script(_TRIM)
        self._stream = keys.stream
        logger.info(
            "worker %s: %d handler(s) on %s, concurrency %d: %s",
            self.name,
            len(self.subscriptions),
            self._stream,
            self.concurrency,
            ", ".join(sub.name for sub in self.subscriptions),
            extra={"worker": self.name},
        )
        readers: list[asyncio.Task[None]] = []
        chores: list[asyncio.Task[None]] = []
        try:
            # Every handler of the bus has its group, run here or not: entries wait in the
            # stream (untrimmed) for the handlers whose workers have not started yet.
            for sub in self.bus.subscriptions:
                if not await self._patiently(
                    f"creating the group of {sub.name}", self._create_group, sub.name
                ):
                    return
            readers = [asyncio.create_task(self._group(sub)) for sub in self.subscriptions]
            chores = [asyncio.create_task(self._heartbeat()), asyncio.create_task(self._trim())]
            await asyncio.gather(*readers)
            for chore in chores:
                chore.cancel()
            if self._in_flight:
                await asyncio.gather(*self._in_flight.values(), return_exceptions=True)
        finally:
            # Cancelled rather than stopped: nothing of this worker goes on without it (its
            # readers, chores, entries in flight, acknowledgement writers). Its entries not
            # acknowledged yet stay pending in Redis, for a worker to take over after
            # claim_idle; a sync handler's thread runs to its end.
            running = (*readers, *chores, *self._in_flight.values(), *self._committers.values())
            left = [task for task in running if not task.done()]
            for task in left:
                task.cancel()
            try:
                if left:
                    await asyncio.gather(*left, return_exceptions=True)
            finally:  # (cancelled again meanwhile: still no thread nor connection left open)
                self._threads.shutdown(wait=False)
                await self._client.aclose()

    # -- reading ------------------------------------------------------------------

    async def _group(self, sub: Subscription) -> None:
        """Read ``sub``'s group: this consumer's own pending entries first, then new ones."""
        assert self._stopping is not None
        after = b"0"
        while True:  # this consumer's own pending entries (a restart), a page at a time
            own = await self._patiently(
                f"reading {sub.name}'s own pending entries",
                self._client.xreadgroup,
                sub.name,
                self.name,
                {self._stream: after},
                count=BATCH,
            )
            entries = _entries(own)
            if not entries:
                break
            for entry_id, fields in entries:
                if await self._reserve(1) == 0:
                    return
                self._start(sub, entry_id, fields, pending=True)
            after = entries[-1][0]
        loop = asyncio.get_running_loop()
        next_claim = loop.time()  # look for entries dead workers left, at once then now and then
        # A read holds its slots while it blocks: each group reads at most its share, so
        # that a group with nothing to read never keeps the others from theirs.
        share = max(1, min(BATCH, self.concurrency // len(self.subscriptions)))
        backoff = _Backoff(self, f"reading {sub.name}")
        while not self._stopping.is_set():
            count = await self._reserve(share)
            if count == 0:
                break
            if loop.time() >= next_claim:
                next_claim = loop.time() + self.broker.claim_idle / 2
                try:
                    count -= await self._reclaim(sub, count)
                except redis.RedisError:
                    logger.exception(
                        "worker %s: reclaiming for %s failed",
                        self.name,
                        sub.name,
                        extra={"worker": self.name, "handler": sub.name},
                    )
                if count == 0:
                    continue
            try:
                read = await self._client.xreadgroup(
                    sub.name,
                    self.name,
                    {self._stream: ">"},
                    count=count,
                    block=int(self.block * 1000),
                )
            except (redis.ConnectionError, redis.TimeoutError) as error:
                self._release(count)
                if not await backoff.failed(error):
                    return
                continue
            backoff.succeeded()
            started = 0
            for entry_id, fields in _entries(read):
                self._start(sub, entry_id, fields, pending=False)
                started += 1
            self._release(count - started)

    async def _patiently(
        self, doing: str, action: c.Callable[..., c.Awaitable[t.Any]], *args: t.Any, **kw: t.Any
    ) -> t.Any:
        """``await action(...)``, again with backoff while Redis does not answer.

        Returns what it returned (True for None), or None if the worker is
        stopped meanwhile.
        """
        backoff = _Backoff(self, doing)
        while True:
            try:
                done = await action(*args, **kw)
            except (redis.ConnectionError, redis.TimeoutError) as error:
                if not await backoff.failed(error):
                    return None
                continue
            backoff.succeeded()
            return True if done is None else done

    async def _reclaim(self, sub: Subscription, most: int) -> int:
        """Take over up to ``most`` entries idle for ``claim_idle`` (their workers died).

        One worker at a time looks, per group (a lock in Redis that expires
        by itself): each entry is claimed once whoever looks, as XAUTOCLAIM
        is atomic, and the lock keeps workers from all scanning at once.
        Returns how many were started.
        """
        idle_ms = int(self.broker.claim_idle * 1000)
        lock = f"{self.broker.keys.prefix}reclaiming:{sub.name}"
        if not await self._client.set(lock, self.name, nx=True, px=max(idle_ms // 2, 1)):
            return 0
        reply = await self._client.xautoclaim(
            self._stream, sub.name, self.name, idle_ms, start_id="0-0", count=most
        )
        claimed = t.cast(list[Entry], reply[1])
        started = 0
        for entry_id, fields in claimed:
            if fields is not None:  # None: trimmed meanwhile (Redis dropped it from the list)
                started += 1
                logger.warning(
                    "worker %s: took over entry %s of %s, idle for %gs (its worker died?)",
                    self.name,
                    entry_id.decode(),
                    sub.name,
                    self.broker.claim_idle,
                    extra={"worker": self.name, "handler": sub.name, "entry_id": entry_id.decode()},
                )
                self.reclaimed[sub.name] += 1
                self._start(sub, entry_id, fields, pending=False, claimed=True)
        return started

    async def _create_group(self, group: str) -> None:
        try:
            await self._client.xgroup_create(self._stream, group, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def _reserve(self, most: int) -> int:
        """Take up to ``most`` slots, waiting for one in turn; 0 when stopping."""
        assert self._stopping is not None
        if self._stopping.is_set():
            return 0
        if self._free and not self._waiting:
            taken = min(most, self._free)
            self._free -= taken
            return taken
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.append((most, waiter))
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release(waiter.result())  # granted as it was cancelled: hand them on
            else:
                with contextlib.suppress(ValueError):
                    self._waiting.remove((most, waiter))
            raise

    def _release(self, count: int) -> None:
        """Give back ``count`` slots, to the readers waiting first."""
        self._free += count
        while self._free and self._waiting:
            most, waiter = self._waiting.popleft()
            if waiter.done():
                continue
            taken = min(most, self._free)
            self._free -= taken
            waiter.set_result(taken)

    def _start(
        self,
        sub: Subscription,
        entry_id: bytes,
        fields: t.Any,
        *,
        pending: bool,
        claimed: bool = False,
    ) -> None:
        context = contextvars.copy_context()  # its log records name this worker and entry
        logged: dict[str, object] = {"worker": self.name, "entry_id": entry_id.decode()}
        trace_id = trace_id_of(fields.get(b"traceparent")) if isinstance(fields, dict) else None
        if trace_id is not None:  # and the trace the event was sent in
            logged["trace_id"] = trace_id
        context.run(log_context.set, logged)
        context.run(handled_entry.set, fields)  # for eventbus.redis.entry_fields()
        task = asyncio.create_task(
            self._handle(sub, entry_id, fields, pending=pending, claimed=claimed),
            context=context,
        )
        self._in_flight[(sub.name, entry_id)] = task

        def done(finished: asyncio.Task[None]) -> None:
            self._in_flight.pop((sub.name, entry_id), None)
            failure = None if finished.cancelled() else finished.exception()
            if failure is not None:
                # Redis failed under it: the entry stays pending, for this worker's next
                # start or another worker's reclaim; nothing is lost, nothing acknowledged.
                logger.error(
                    "worker %s: entry %s of %s left pending: %s",
                    self.name,
                    entry_id.decode(),
                    sub.name,
                    describe(failure),
                    exc_info=failure,
                    extra={"worker": self.name, "handler": sub.name, "entry_id": entry_id.decode()},
                )
            self._release(1)

        task.add_done_callback(done)

    async def _heartbeat(self) -> None:
        """Claim this worker's running entries again, without counting, so none goes idle."""
        every = self.broker.claim_idle / 3
        while True:
            await asyncio.sleep(every)
            by_group: dict[str, list[bytes]] = {}
            for group, entry_id in list(self._in_flight):
                by_group.setdefault(group, []).append(entry_id)
            for group, ids in by_group.items():
                try:
                    await self._client.xclaim(
                        self._stream, group, self.name, 0, list[t.Any](ids), justid=True
                    )
                except redis.RedisError:
                    logger.exception(
                        "worker %s: keeping %s's entries failed",
                        self.name,
                        group,
                        extra={"worker": self.name, "handler": group},
                    )

    async def _trim(self) -> None:
        """Drop the entries every group acknowledged (never one still pending).

        Every ``TRIM_EVERY`` seconds, or sooner once this worker acknowledged
        ``TRIM_AFTER`` entries: a busy stream stays short, an idle one costs
        a script call a second.
        """
        assert self._trim_soon is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._trim_soon.wait(), timeout=TRIM_EVERY)
            self._trim_soon.clear()
            self._acked_since_trim = 0
            try:
                await self._trim_script(keys=[self._stream])
            except redis.RedisError:
                logger.exception(
                    "worker %s: trimming %s failed",
                    self.name,
                    self._stream,
                    extra={"worker": self.name},
                )

    # -- one entry ----------------------------------------------------------------

    async def _deliveries(self, group: str, entry_id: bytes) -> int:
        pending = await self._client.xpending_range(
            self._stream, group, min=entry_id, max=entry_id, count=1
        )
        return int(pending[0]["times_delivered"]) if pending else 1

    async def _handle(
        self,
        sub: Subscription,
        entry_id: bytes,
        fields: t.Any,
        *,
        pending: bool,
        claimed: bool = False,
    ) -> None:
        group = sub.name
        try:
            event = _decode(fields)
        except UnreadableEntryError as unreadable:
            undefined = _undefined(fields, unreadable)
            await self._dead_letter(
                sub, entry_id, undefined, 1, unreadable, as_type=undefined.stored_type
            )
            return
        if not sub.receives(type(event)):  # not this handler's: acknowledged unrun
            await self._client.xack(self._stream, group, entry_id)
            self.handled += 1
            return
        if not sub.idempotent:
            await self._run(sub, entry_id, event, pending=pending, claimed=claimed)
            return
        # One run at a time per (handler, event) here: a duplicate read with it waits for it,
        # then finds its record (or runs, if it failed).
        key = (group, event.event_id)
        while (earlier := self._idempotent_runs.get(key)) is not None:
            await asyncio.shield(earlier)
        finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._idempotent_runs[key] = finished  # before any await: the next duplicate waits
        try:
            if await self._seen(group, event):  # a duplicate: acknowledged unrun
                _skipped(group, event)
                await self._client.xack(self._stream, group, entry_id)
                self.handled += 1
                return
            await self._run(sub, entry_id, event, pending=pending, claimed=claimed)
        finally:
            del self._idempotent_runs[key]
            finished.set_result(None)

    async def _run(
        self, sub: Subscription, entry_id: bytes, event: Event, *, pending: bool, claimed: bool
    ) -> None:
        """The attempts of ``sub`` on the entry's event, until acknowledged or dead-lettered."""
        group = sub.name
        if pending:  # this consumer's own, from before a restart: a new delivery
            await self._client.xclaim(self._stream, group, self.name, 0, [entry_id])
            attempt = await self._deliveries(group, entry_id)
        elif claimed:  # XAUTOCLAIM counted the delivery
            attempt = await self._deliveries(group, entry_id)
        else:
            attempt = 1
        policy = self._policies[group]
        while True:
            if attempt > policy.max_attempts:
                lost = WorkerLostError(
                    f"{sub.name} was run {attempt - 1} time(s) on this entry by workers that "
                    "stopped before finishing (killed, out of memory, a crash): "
                    f"{policy.max_attempts} attempt(s) allowed"
                )
                await self._dead_letter(sub, entry_id, event, policy.max_attempts, lost)
                return
            attempt_run = Attempt(event)
            error = await self._attempt(sub, event, attempt, attempt_run)
            if error is None:
                record = sub.idempotent and not (attempt_run.skipped or attempt_run.recorded)
                key = None
                if record and self._inbox_here:
                    key = t.cast(RedisInbox, self._inbox).key(group, event.event_id)
                await self._acknowledge(group, entry_id, attempt_run.written(), key)
                if record and key is None:
                    await self._record(group, event)
                if not attempt_run.skipped:  # a duplicate skipped did not run: as in process
                    signals.send(
                        signals.handler_succeeded, self.bus, event=event, handler=sub.name,
                        attempts=attempt,
                    )  # fmt: skip
                return
            delay = policy.next_delay(attempt, error, self.bus.clock)
            if delay is None:
                await self._dead_letter(sub, entry_id, event, attempt, error, policy=policy)
                return
            attempt_failed(self.bus, PublishResult(event), sub, attempt, error, delay)
            await self.bus.clock.sleep_async(delay)
            await self._client.xclaim(self._stream, group, self.name, 0, [entry_id])
            attempt = await self._deliveries(group, entry_id)

    async def _attempt(
        self, sub: Subscription, event: Event, attempt: int, run: Attempt
    ) -> Exception | None:
        """Run one attempt of ``sub`` on ``event``; its error, or None."""
        middleware = self._middleware[sub.name]

        async def innermost(event: Event, call: HandlerCall) -> None:
            if sub.is_async:
                coroutine = t.cast(c.Awaitable[object], sub.handler(event))
                if sub.timeout is not None:
                    await asyncio.wait_for(coroutine, sub.timeout)
                else:
                    await coroutine
            else:  # in this context (the attempt's, a span's), as asyncio.to_thread would
                context = contextvars.copy_context()
                await asyncio.get_running_loop().run_in_executor(
                    self._threads, functools.partial(context.run, sub.handler, event)
                )

        call = HandlerCall(self.bus, sub, PublishResult(event), attempt)
        state = Handling(self._inbox, sub.name, event.event_id) if sub.idempotent else None
        token = running.set(run)
        handled = current.set(call.result)  # events made in the handler follow from this one
        handling_token = handling.set(state) if state is not None else None
        try:
            await chain_async(middleware, innermost)(event, call)
        except AlreadyHandled:  # an inbox transaction found the record: rolled back, skipped
            run.drop()
            run.skipped = True
            _skipped(sub.name, event)
        except Exception as error:
            run.drop()  # a failed attempt publishes nothing
            return error
        finally:
            if handling_token is not None:
                handling.reset(handling_token)
            current.reset(handled)
            running.reset(token)
        run.recorded = state is not None and state.recorded
        return None

    async def _seen(self, group: str, event: Event) -> bool:
        """Whether the inbox holds (handler, event): the worker's own client when it can."""
        inbox = self._inbox
        if self._inbox_here:
            key = t.cast(RedisInbox, inbox).key(group, event.event_id)
            return bool(await self._client.exists(key))
        if isinstance(inbox, InMemoryInbox):
            return inbox.seen(group, event.event_id)
        return await asyncio.to_thread(inbox.seen, group, event.event_id)

    async def _record(self, group: str, event: Event) -> None:
        """Record a success in an inbox elsewhere, after the acknowledgement.

        Not before: a record without its acknowledgement would skip the
        redelivery, and lose the children that were to be written with it.
        A record that fails is logged: the event was handled, only a later
        duplicate of it may run again.
        """
        inbox = self._inbox
        try:
            if isinstance(inbox, InMemoryInbox):
                inbox.record(group, event.event_id)
            else:
                await asyncio.to_thread(inbox.record, group, event.event_id)
        except Exception:
            logger.exception(
                "worker %s: %s handled %s (event_id=%s) but its inbox record failed: a "
                "duplicate of it would run again",
                self.name,
                group,
                event.event_type,
                event.event_id,
                extra=event_fields(event, group, worker=self.name),
            )

    async def _acknowledge(
        self,
        group: str,
        entry_id: bytes,
        children: list[tuple[Event, dict[str, str]]],
        record: str | None = None,
    ) -> None:
        """Acknowledge a success, with its children, in a MULTI/EXEC; return once written.

        ``record``: the key of an idempotent handler's inbox record, set (to
        expire after the inbox's retention) in the same transaction.

        The acknowledgements of a group that come in while one is being
        written go together in the next MULTI/EXEC: each entry's children and
        its XACK are in one transaction still, and a busy worker makes one
        round trip for many entries.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._commits.setdefault(group, []).append((entry_id, children, record, future))
        committer = self._committers.get(group)
        if committer is None or committer.done():
            self._committers[group] = asyncio.create_task(self._commit(group))
        await future
        self.handled += 1

    async def _commit(self, group: str) -> None:
        """Write what is waiting for ``group``, batch after batch, until nothing is left.

        The handlers succeeded: a Redis that does not answer is asked again,
        with backoff, rather than leaving the entries to run again; if it
        stays away, they stay pending (and run again: at least once).
        """
        while batch := self._commits.pop(group, None):
            failure: BaseException | None = None
            for wait in (*ACK_RETRIES, None):
                try:
                    async with self._client.pipeline(transaction=True) as pipe:
                        for _, children, record, _ in batch:
                            for _, fields in children:
                                pipe.xadd(self._stream, fields)  # type: ignore[arg-type]
                            if record is not None:
                                pipe.set(record, b"1", px=self._record_ms)
                        pipe.xack(self._stream, group, *(item[0] for item in batch))
                        await pipe.execute()
                    failure = None
                    break
                except (redis.ConnectionError, redis.TimeoutError) as error:
                    failure = error
                    if wait is None:
                        break
                    logger.warning(
                        "worker %s: acknowledging %d entr%s of %s failed (%s); again in %gs",
                        self.name,
                        len(batch),
                        "y" if len(batch) == 1 else "ies",
                        group,
                        describe(error),
                        wait,
                        extra={"worker": self.name, "handler": group},
                    )
                    await asyncio.sleep(wait)
                except Exception as error:  # not Redis being away: do not ask again
                    failure = error
                    break
            if failure is None:
                self._acked_since_trim += len(batch)
                if self._acked_since_trim >= TRIM_AFTER and self._trim_soon is not None:
                    self._trim_soon.set()
            for _, children, _, future in batch:
                if failure is not None:
                    if not future.done():  # (its entry's task cancelled meanwhile: run() was)
                        future.set_exception(failure)
                    continue
                if not future.done():
                    future.set_result(None)
                for child, _ in children:
                    signals.send(signals.event_published, self.bus, event=child, publisher=group)

    async def _dead_letter(
        self,
        sub: Subscription,
        entry_id: bytes,
        event: Event,
        attempts: int,
        error: Exception,
        *,
        policy: RetryPolicy | None = None,
        as_type: str | None = None,
    ) -> None:
        signals.send(
            signals.handler_failed, self.bus, event=event, handler=sub.name, attempt=attempts,
            error=error, final=True,
        )  # fmt: skip
        letter = DeadLetter.from_exception(
            event, sub.name, attempts, error, failed_at=self.bus.clock.now()
        )
        if as_type is not None:  # an unreadable entry: the letter names the type it claimed
            letter = dataclasses.replace(letter, event_type=as_type)
        children: list[tuple[Event, dict[str, str]]] = []
        if sub.on_give_up is not None:  # in a thread: a plain function may block
            children = await asyncio.to_thread(_call_give_up, sub, letter)
        store = self.broker.dead_letters
        keys = store.keys
        async with self._client.pipeline(transaction=True) as pipe:
            await self._store_script(
                keys=[keys.letters, keys.letters_order, keys.letters_seq],
                args=[str(letter.id), store.encode(letter)],
                client=pipe,
            )
            for _, fields in children:
                pipe.xadd(self._stream, fields)  # type: ignore[arg-type]
            pipe.xack(self._stream, sub.name, entry_id)
            await pipe.execute()
        for child, _ in children:
            signals.send(signals.event_published, self.bus, event=child, publisher=sub.name)
        why = ""
        if policy is not None and attempts < policy.max_attempts:
            why = " (not retried: its error type is excluded by the retry policy)"
        _log(PublishResult(event), letter, attempts, error, why, logging.ERROR)
        signals.send(signals.event_dead_lettered, self.bus, dead_letter=letter)
        self.handled += 1


Entry = tuple[bytes, dict[bytes, bytes]]

#: An acknowledgement waiting to be written: entry id, children, inbox record key, its waiter.
_Commit = tuple[bytes, list[tuple[Event, dict[str, str]]], str | None, "asyncio.Future[None]"]


def _entries(read: object) -> list[Entry]:
    """The entries of an XREADGROUP reply on the one stream (redis-py types it loosely)."""
    replies = t.cast(list[tuple[bytes, list[Entry]]] | None, read)
    return [item for _, items in replies or () for item in items]


class _Backoff:
    """Waits between tries while Redis does not answer: 0.1 s, doubling up to 5 s.

    Logs once when Redis stops answering and once when it answers again,
    not at every try.
    """

    def __init__(self, worker: Worker, doing: str) -> None:
        self.worker, self.doing = worker, doing
        self.wait, self.failing = 0.1, False

    async def failed(self, error: BaseException) -> bool:
        """Wait before the next try; False if the worker was stopped meanwhile."""
        stopping = self.worker._stopping
        assert stopping is not None
        if not self.failing:
            logger.warning(
                "worker %s: %s failed, Redis does not answer (%s); trying again with backoff",
                self.worker.name,
                self.doing,
                describe(error),
                extra={"worker": self.worker.name},
            )
            self.failing = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=self.wait)
        self.wait = min(self.wait * 2, 5.0)
        return not stopping.is_set()

    def succeeded(self) -> None:
        if self.failing:
            logger.info(
                "worker %s: Redis answers again (%s)",
                self.worker.name,
                self.doing,
                extra={"worker": self.worker.name},
            )
            self.wait, self.failing = 0.1, False


def _decode(fields: t.Any) -> Event:
    """The event of a stream entry; ``UnreadableEntryError`` saying why it is none."""
    try:
        event_type = fields[b"event_type"].decode("utf-8")
        payload = fields[b"payload"]
    except (KeyError, TypeError, AttributeError, UnicodeDecodeError) as error:
        raise UnreadableEntryError(
            f"the entry has no readable event_type and payload fields ({describe(error)})"
        ) from None
    try:
        return Event.from_json(event_type, payload)
    except UnknownEventTypeError as error:
        raise UnreadableEntryError(f"unknown event type: {describe(error)}") from None
    except ValidationError as error:
        raise UnreadableEntryError(
            f"the payload is not a valid {event_type}: {describe(error)}"
        ) from None
    except EventSerializationError as error:
        raise UnreadableEntryError(describe(error)) from None


def _undefined(fields: t.Any, error: Exception) -> UndefinedEvent:
    """An UndefinedEvent keeping an unreadable entry's raw fields (never imported, unpickled)."""
    raw = {
        (k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k)): (
            v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
        )
        for k, v in dict(fields or {}).items()
    }
    stored = raw.get("event_type", "?")
    return UndefinedEvent(
        stored_type=stored,
        payload=raw.get("payload", repr(raw)),
        reason=f"this stream entry cannot be read back into an event: {error}",
        redrivable=False,
    )


def serve(
    bus: EventBus,
    *,
    handlers: c.Sequence[str] = (),
    concurrency: int = 16,
    relay: Relay | None = None,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
    otel_metrics: bool = False,
) -> int:
    """Run a worker in this process until SIGTERM or SIGINT; the exit status (0: stopped clean).

    The first signal stops reading: the entries in flight finish and are
    acknowledged, then this returns 0. A second signal exits at once (status
    1), leaving what was in flight pending, for another worker to take over
    after ``claim_idle``. The blocking form of ``await Worker(...).run()``,
    for a program of your own or the command line. ``relay``: an outbox's
    :class:`~eventbus.outbox.Relay` to run beside the handlers, stopped with them.
    ``metrics_port``: serve Prometheus metrics on ``metrics_host:metrics_port``
    (``eventbus.prometheus.serve_metrics``; needs ``eventbus[prometheus]``).
    ``otel_metrics``: report the bus's, the broker's and the worker's metrics
    through OpenTelemetry's global meter provider (``eventbus.otel.Metrics``;
    the application configures the provider and its exporter, at import).
    """
    import signal

    worker = Worker(bus, handlers=handlers, concurrency=concurrency)
    served = None
    if metrics_port is not None:
        from ..prometheus import serve_metrics

        try:
            served = serve_metrics(bus, worker, port=metrics_port, host=metrics_host)
        except (OSError, OverflowError) as error:
            raise ValueError(
                f"cannot serve metrics on {metrics_host}:{metrics_port}: {error}; give each "
                "worker on a machine a port of its own"
            ) from None
        logger.info(
            "worker %s: metrics on http://%s:%d/metrics",
            worker.name,
            metrics_host,
            served.port,
            extra={"worker": worker.name},
        )

    reported = None
    if otel_metrics:
        from ..otel import Metrics

        try:
            reported = Metrics()  # the global meter provider: the application's, set at import
        except BaseException:
            if served is not None:
                served.close()
            raise
        reported.install(bus)
        reported.watch_broker(bus.broker)  # type: ignore[arg-type]
        reported.watch_worker(worker)

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def on_signal(signum: int) -> None:
            if worker._stopping is not None and worker._stopping.is_set():
                logger.warning(
                    "worker %s: second signal: exiting now",
                    worker.name,
                    extra={"worker": worker.name},
                )
                os._exit(1)
            logger.info(
                "worker %s: %s: finishing %d entr%s in flight, then exiting",
                worker.name,
                signal.Signals(signum).name,
                len(worker._in_flight),
                "y" if len(worker._in_flight) == 1 else "ies",
                extra={"worker": worker.name},
            )
            worker.stop()
            if relay is not None:
                relay.stop()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        try:
            await asyncio.gather(worker.run(), *([relay.run()] if relay is not None else []))
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)

    try:
        asyncio.run(main())
    finally:
        if served is not None:
            served.close()
        if reported is not None:
            _flush_meters()  # the last counts exported before the process exits
            reported.uninstall(bus)
            reported.close()
    logger.info(
        "worker %s: stopped after %d entries",
        worker.name,
        worker.handled,
        extra={"worker": worker.name},
    )
    return 0


def _flush_meters() -> None:
    """Ask the global meter provider (the SDK's, if it is one) to export what it holds."""
    from opentelemetry import metrics

    flush = getattr(metrics.get_meter_provider(), "force_flush", None)
    if flush is not None:
        try:
            flush()
        except Exception:
            logger.exception("flushing the OpenTelemetry metrics failed")


def groups(broker: RedisBroker, client: redis.Redis | None = None) -> list[dict[str, t.Any]]:
    """Each consumer group on the broker's stream: its handler, pending entries, lag, consumers.

    ``lag`` is how many entries the group has not read yet (None when Redis
    cannot tell, after entries were deleted out of order); ``pending`` how
    many it read and has not acknowledged (running, or held by a worker
    that died, until taken over). ``client``: another client of the
    broker's server (one with shorter timeouts, for a metrics scrape).
    """
    client = client if client is not None else broker.client
    try:
        infos: t.Any = client.xinfo_groups(broker.keys.stream)
        length = int(client.xlen(broker.keys.stream))
    except redis.ResponseError:  # no stream yet: nothing was published, no worker started
        return []
    except redis.RedisError as error:
        raise BrokerError(f"could not read the groups of {broker!r}: {error}") from error
    return [
        {
            "handler": info["name"].decode(),
            "pending": int(info["pending"]),
            "lag": None if info.get("lag") is None else int(info["lag"]),
            "consumers": int(info["consumers"]),
            "last_delivered": info["last-delivered-id"].decode(),
            "stream_length": length,
        }
        for info in infos
    ]


def _call_give_up(sub: Subscription, letter: DeadLetter) -> list[tuple[Event, dict[str, str]]]:
    """Run ``sub``'s ``on_give_up``; what it published, to be written with its letter.

    In the trace context its entry carries (the producer's send span, with
    ``eventbus.otel``), as in one process a hook runs in the publisher's: so
    the events it publishes (a compensation) go on in the cascade's trace.
    """
    hook = Attempt(letter.event)
    token = running.set(hook)
    handled = current.set(PublishResult(letter.event))  # what it makes follows from the event
    try:
        with attached(entry_fields()):
            return hook.written() if give_up(sub, letter) else []
    finally:
        current.reset(handled)
        running.reset(token)
