"""RedisBroker: what ``publish`` does on a broker bus (append to the namespace's stream)."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import typing as t

import redis

from ..cascade import _stamped
from ..errors import BrokerError
from ..events import Event
from ..results import PublishResult
from ..retry import MAX_DELAY, finite_non_negative
from ..transport import HeldResult
from ._client import connect, where
from ._keys import Keys, check_namespace
from ._store import RedisDeadLetterStore

if t.TYPE_CHECKING:
    from ..bus import EventBus
    from ..plans import Plan
    from ..transport import Publish, PublishAsync

__all__ = ["Attempt", "RedisBroker", "entry", "running"]


@dataclasses.dataclass(slots=True)
class Attempt:
    """One handler's attempt in a worker: what it published waits here for its acknowledgement."""

    event: Event
    children: list[Event] = dataclasses.field(default_factory=list)


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
    ``publish_async`` waits in a worker thread, so the event loop runs on.

    ``namespace`` keeps apart the buses that share a server (its keys all
    start with ``eventbus:{namespace}:``). ``claim_idle`` is how many
    seconds an entry handed to a worker may go unacknowledged before another
    worker takes it over (a worker that died); a live worker keeps the
    entries it is running fresh, however long they take.
    ``dead_letters`` is the namespace's :class:`RedisDeadLetterStore`.
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
        self._dead_letters = RedisDeadLetterStore(url, namespace=namespace, timeout=timeout)

    @property
    def dead_letters(self) -> RedisDeadLetterStore:
        """Where this broker's workers keep dead letters."""
        return self._dead_letters

    @property
    def client(self) -> redis.Redis:
        """The redis-py client this broker publishes with."""
        return self._client

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
        fields = entry(event)
        try:
            self._client.xadd(self.keys.stream, fields)  # type: ignore[arg-type]
        except redis.RedisError as error:
            raise BrokerError(
                f"could not publish {event.event_type} (event_id={event.event_id}) to "
                f"{self!r}: {type(error).__name__}: {error}; the event was not published. "
                "Check that the Redis server is running and reachable at that address"
            ) from error
        return PublishResult(event)

    async def publish_async(self, event: Event, /) -> PublishResult:
        """``publish`` from asyncio: the round trip waits in a worker thread."""
        attempt = running.get()
        if attempt is not None:
            return self._buffer(attempt, event)
        return await asyncio.to_thread(self.publish, event)

    def _buffer(self, attempt: Attempt, event: Event) -> PublishResult:
        if event.causation_id is None or event.correlation_id is None:
            event = _stamped(event, attempt.event)
        entry(event)  # an event that cannot be written fails its publish, not the acknowledgement
        attempt.children.append(event)
        return HeldResult(event)

    # -- lifetime -----------------------------------------------------------------

    def close(self) -> None:
        """Close the connections of the broker and of its store."""
        self._client.close()
        self._dead_letters.close()

    def __enter__(self) -> t.Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RedisBroker {where(self.url)} namespace={self.namespace!r}>"


def entry(event: Event) -> dict[str, str]:
    """The fields of ``event``'s stream entry."""
    return {"event_type": event.event_type, "payload": event.to_json()}
