"""RedisBroker: what ``publish`` does on a broker bus (append to the namespace's stream)."""

from __future__ import annotations

import asyncio
import collections.abc as c
import contextvars
import dataclasses
import logging
import typing as t
import weakref

import redis

from .._logs import event_fields
from ..cascade import _stamped
from ..errors import BrokerError
from ..events import Event
from ..results import PublishResult
from ..retry import MAX_DELAY, finite_non_negative
from ..transport import HeldResult
from ._client import connect, where
from ._inbox import RedisInbox
from ._keys import Keys, check_namespace
from ._store import RedisDeadLetterStore

if t.TYPE_CHECKING:
    from ..bus import EventBus
    from ..plans import Plan
    from ..transport import Publish, PublishAsync

__all__ = ["Attempt", "RedisBroker", "entry", "running"]

logger = logging.getLogger("eventbus.redis")


@dataclasses.dataclass(slots=True)
class Attempt:
    """One handler's attempt in a worker: what it published waits here for its acknowledgement."""

    event: Event
    children: list[Event] = dataclasses.field(default_factory=list)
    #: The stream entry of each child, made when it was published (its fields' hooks ran then,
    #: in the handler's context: a trace's context, say).
    entries: list[dict[str, str]] = dataclasses.field(default_factory=list)
    #: An idempotent handler's run: skipped as a duplicate, or recorded by an inbox transaction.
    skipped: bool = False
    recorded: bool = False

    def drop(self) -> None:
        """Forget what it published (a failed attempt publishes nothing)."""
        self.children.clear()
        self.entries.clear()

    def written(self) -> list[tuple[Event, dict[str, str]]]:
        """Each child with its entry, in the order published."""
        return list(zip(self.children, self.entries, strict=True))


#: The raw fields of the stream entry whose handler runs in this context (a worker sets it).
handled_entry: contextvars.ContextVar[t.Mapping[bytes, bytes] | None] = contextvars.ContextVar(
    "eventbus_redis_entry", default=None
)


def entry_fields() -> dict[str, str]:
    """The fields of the stream entry being handled here (empty outside a worker's handler).

    ``event_type`` and ``payload``, and whatever the broker's entry hooks
    added when it was published (``RedisBroker.add_entry_fields``: a
    ``traceparent``, say).
    """
    raw = handled_entry.get()
    if not raw:
        return {}
    return {
        (k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k)): (
            v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
        )
        for k, v in raw.items()
    }


#: The attempt of the handler running in this context (a worker sets it).
running: contextvars.ContextVar[Attempt | None] = contextvars.ContextVar(
    "eventbus_redis_attempt", default=None
)


class RedisBroker:
    """Publish to Redis Streams; workers run the handlers (``python -m eventbus worker``).

    ::

        bus = EventBus(broker=RedisBroker("redis://127.0.0.1:6379/0", namespace="shop"))

    ``publish`` and ``publish_async`` append the event (its ``event_type``
    and its JSON, never a pickle) to the stream ``eventbus:{namespace}:events``
    and return once Redis has the entry; the result's ``ok`` means accepted.
    An event Redis does not take raises :class:`~eventbus.BrokerError`,
    with the cause, after about three times ``timeout`` seconds at most (a
    dropped connection is tried again on a new one twice first).
    ``publish_async`` waits in a worker thread, so the event loop runs on,
    and the calls of one event loop that overlap share a round trip: while
    one batch is being written, the events published meanwhile wait for the
    next, which is written as one pipeline (each call still returns only
    once Redis has its own entry).

    ``namespace`` keeps apart the buses that share a server (its keys all
    start with ``eventbus:{namespace}:``). ``claim_idle`` is how many
    seconds an entry handed to a worker may go unacknowledged before another
    worker takes it over (a worker that died); a live worker keeps the
    entries it is running fresh, however long they take.
    ``dead_letters`` is the namespace's :class:`RedisDeadLetterStore`, and
    ``inbox`` its :class:`RedisInbox` (records kept a week), which a bus
    built on this broker uses for its idempotent handlers.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        namespace: str = "eventbus",
        claim_idle: float = 60.0,
        timeout: float = 5.0,
    ) -> None:
        if not finite_non_negative(claim_idle) or not 0 < claim_idle <= MAX_DELAY:
            raise ValueError(
                f"claim_idle must be a number of seconds above 0, got {claim_idle!r}; it is how "
                "long an entry a worker took may wait before another worker takes it over"
            )
        self.url = url
        self.namespace = check_namespace(namespace)
        self.keys = Keys(namespace)
        self.claim_idle = float(claim_idle)
        self.timeout = float(timeout)
        self._client = connect(url, timeout)
        # Per event loop: the events of publish_async waiting for the next write.
        self._batches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Batch] = (
            weakref.WeakKeyDictionary()
        )
        self._dead_letters = RedisDeadLetterStore(url, namespace=namespace, timeout=timeout)
        self._entry_hooks: tuple[c.Callable[[Event], t.Mapping[str, str]], ...] = ()
        self._inbox = RedisInbox(url, namespace=namespace, timeout=timeout)

    @property
    def dead_letters(self) -> RedisDeadLetterStore:
        """Where this broker's workers keep dead letters."""
        return self._dead_letters

    @property
    def inbox(self) -> RedisInbox:
        """Where the idempotent handlers of this broker's bus record what they handled."""
        return self._inbox

    @property
    def client(self) -> redis.Redis:
        """The redis-py client this broker publishes with."""
        return self._client

    def groups(self) -> list[dict[str, t.Any]]:
        """Each handler's consumer group on the stream: what ``python -m eventbus groups`` shows.

        One dict per group: ``handler``, ``pending`` (read and not
        acknowledged: running, or held by a worker that died until taken
        over), ``lag`` (not read yet; None when Redis cannot tell, after
        entries were deleted out of order), ``consumers``,
        ``last_delivered`` (an entry id) and ``stream_length``. Empty before
        anything was published or any worker started. ``BrokerError`` when
        Redis does not answer.
        """
        from ._worker import groups

        return groups(self)

    # -- the entries ---------------------------------------------------------------

    def add_entry_fields(self, hook: c.Callable[[Event], t.Mapping[str, str]], /) -> None:
        """Call ``hook(event)`` as each event's entry is made; its fields go in the entry.

        It runs where the event is published (in a worker: in the handler's
        context), once per event. Readers ignore fields they do not know;
        ``event_type`` and ``payload`` are the broker's. What the handler of
        the entry sees of them: :func:`eventbus.redis.entry_fields`. A hook
        is instrumentation: one that raises, or returns anything but text
        names and values, is logged and its fields left out, and the event
        is written all the same.
        """
        if not callable(hook):
            raise TypeError(f"add_entry_fields() takes a function, got {hook!r}")
        self._entry_hooks = (*self._entry_hooks, hook)

    def remove_entry_fields(self, hook: c.Callable[[Event], t.Mapping[str, str]], /) -> None:
        """Stop calling ``hook``; ``ValueError`` if it was not added."""
        if hook not in self._entry_hooks:
            raise ValueError(f"{hook!r} is not an entry hook of {self!r}")
        self._entry_hooks = tuple(h for h in self._entry_hooks if h is not hook)

    def entry(self, event: Event, /) -> dict[str, str]:
        """The fields of ``event``'s stream entry, the hooks' included."""
        fields = entry(event)
        for hook in self._entry_hooks:
            try:
                added = dict(hook(event))
                if not all(isinstance(n, str) and isinstance(v, str) for n, v in added.items()):
                    raise TypeError(f"it returned {added!r}, not a mapping of str to str")
            except Exception:
                logger.exception(
                    "entry hook %r of %r failed on %s (event_id=%s); the entry is written "
                    "without its fields",
                    hook,
                    self,
                    event.event_type,
                    event.event_id,
                    extra=event_fields(event),
                )
                continue
            for name, value in added.items():
                if name not in ("event_type", "payload"):
                    fields[name] = value
        return fields

    # -- the Transport protocol ---------------------------------------------------

    def bind(self, bus: EventBus, plan: Plan, /) -> tuple[Publish, PublishAsync]:
        """Every event class is published to the stream, whatever its handlers here."""
        return self.publish, self.publish_async

    def publish(self, event: Event, /) -> PublishResult:
        """Append ``event`` to the stream; return once Redis has it (``BrokerError`` if not).

        From a handler running in a worker, the event (with its causation and
        correlation ids set from the event handled) is kept with the attempt
        instead, and written with the handler's acknowledgement.
        """
        attempt = running.get()
        if attempt is not None:
            return self._buffer(attempt, event)
        fields = self.entry(event)
        try:
            self._client.xadd(self.keys.stream, fields)  # type: ignore[arg-type]
        except redis.RedisError as error:
            raise self._failed(event, error) from error
        return PublishResult(event)

    def _failed(self, event: Event, error: Exception) -> BrokerError:
        return BrokerError(
            f"could not publish {event.event_type} (event_id={event.event_id}) to "
            f"{self!r}: {type(error).__name__}: {error}; the event was not published. "
            "Check that the Redis server is running and reachable at that address"
        )

    async def publish_async(self, event: Event, /) -> PublishResult:
        """``publish`` from asyncio: overlapping calls are written together, in a thread.

        A call cancelled while it waits may still have been written (it was
        in a batch under way): at least once, as for a timeout of ``publish``.
        """
        attempt = running.get()
        if attempt is not None:
            return self._buffer(attempt, event)
        fields = self.entry(event)  # an event that cannot be written fails here, alone
        loop = asyncio.get_running_loop()
        batch = self._batches.get(loop)
        if batch is None:
            batch = self._batches[loop] = _Batch()
        future: asyncio.Future[None] = loop.create_future()
        batch.waiting.append((event, fields, future))
        if batch.writer is None or batch.writer.done():
            batch.writer = loop.create_task(self._write_batches(batch))
        await future
        return PublishResult(event)

    async def _write_batches(self, batch: _Batch) -> None:
        while batch.waiting:
            items, batch.waiting = batch.waiting, []
            try:
                replies = await asyncio.to_thread(self._write, [fields for _, fields, _ in items])
            except redis.RedisError as error:  # the pipeline failed as a whole
                replies = [error] * len(items)
            except BaseException as error:  # not Redis: still, no call may wait forever
                for _, _, future in items:
                    if not future.done():
                        future.set_exception(error)
                raise
            for (event, _, future), reply in zip(items, replies, strict=True):
                if future.done():  # its caller was cancelled
                    continue
                if isinstance(reply, Exception):
                    failure = self._failed(event, reply)
                    failure.__cause__ = reply
                    future.set_exception(failure)
                else:
                    future.set_result(None)

    def _write(self, entries: list[dict[str, str]]) -> list[object]:
        """XADD each of ``entries`` in one pipeline; a reply or an error per entry."""
        with self._client.pipeline(transaction=False) as pipe:
            for fields in entries:
                pipe.xadd(self.keys.stream, fields)  # type: ignore[arg-type]
            return list(pipe.execute(raise_on_error=False))

    def _buffer(self, attempt: Attempt, event: Event) -> PublishResult:
        if event.causation_id is None or event.correlation_id is None:
            event = _stamped(event, attempt.event)
        fields = self.entry(event)  # one that cannot be written fails here, not at the ack
        attempt.children.append(event)
        attempt.entries.append(fields)
        return HeldResult(event)

    # -- lifetime -----------------------------------------------------------------

    def close(self) -> None:
        """Close the connections of the broker, of its store and of its inbox."""
        self._client.close()
        self._dead_letters.close()
        self._inbox.close()

    def __enter__(self) -> t.Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RedisBroker {where(self.url)} namespace={self.namespace!r}>"


@dataclasses.dataclass(slots=True)
class _Batch:
    """The events of one event loop's ``publish_async`` calls waiting to be written."""

    waiting: list[tuple[Event, dict[str, str], asyncio.Future[None]]] = dataclasses.field(
        default_factory=list
    )
    writer: asyncio.Task[None] | None = None


def entry(event: Event) -> dict[str, str]:
    """The fields of ``event``'s stream entry."""
    return {"event_type": event.event_type, "payload": event.to_json()}
