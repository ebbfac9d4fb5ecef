"""capture(bus): what a bus published, in order, cascades included, and assertions on it."""

from __future__ import annotations

import collections.abc as c
import contextlib
import threading
import typing as t
import uuid

from .. import signals
from ..events import Event
from ._format import describe, fields_of

if t.TYPE_CHECKING:
    from ..bus import EventBus

__all__ = ["Published", "capture"]

E = t.TypeVar("E", bound=Event)

#: At most this many lines of a cascade tree in an assertion's message.
TREE_LINES = 40


class Published(c.Sequence[Event]):
    """The events a bus published while a :func:`capture` block ran, in publish order.

    Every event the bus accepted is here: those published by the test and
    those its handlers published (a cascade), each when it was published,
    whether or not its handlers then succeeded. It is a sequence of events
    (``len``, indexing, iteration) with lookups that fail with an
    ``AssertionError`` showing what was published instead, as a short tree
    of the cascades.

    Field conditions (``**fields``) compare with ``==``; a field the class
    does not have raises ``TypeError`` at once, so a typo cannot pass as
    "not published".
    """

    def __init__(self) -> None:
        self._events: list[Event] = []
        self._by_id: dict[uuid.UUID, Event] = {}
        self._publishers: dict[uuid.UUID, str | None] = {}
        self._lock = threading.Lock()

    # -- what was published -------------------------------------------------------

    def __len__(self) -> int:
        return len(self._events)

    @t.overload
    def __getitem__(self, index: int) -> Event: ...

    @t.overload
    def __getitem__(self, index: slice) -> list[Event]: ...

    def __getitem__(self, index: int | slice) -> Event | list[Event]:
        with self._lock:
            return self._events[index]

    def __iter__(self) -> c.Iterator[Event]:
        with self._lock:
            return iter(list(self._events))

    def of(self, cls: type[E], /, *, caused_by: Event | None = None, **fields: object) -> list[E]:
        """The events of ``cls`` (subclasses too) whose fields equal ``fields``, in order.

        ``caused_by`` keeps those that ``caused_by`` caused, directly or
        through a cascade.
        """
        _check_fields(cls, fields)
        chosen = [event for event in self if _matches(event, cls, fields)]
        if caused_by is not None:
            chosen = [event for event in chosen if self._descends(event, caused_by, directly=False)]
        return t.cast(list[E], chosen)

    def find(self, cls: type[E], /, *, caused_by: Event | None = None, **fields: object) -> E:
        """The first event of ``cls`` matching ``fields``; ``AssertionError`` if there is none."""
        found = self.of(cls, caused_by=caused_by, **fields)
        if not found:
            raise AssertionError(self._missing(cls, fields, caused_by, directly=False))
        return found[0]

    def one(self, cls: type[E], /, *, caused_by: Event | None = None, **fields: object) -> E:
        """The only event of ``cls`` matching ``fields``; ``AssertionError`` unless exactly one."""
        found = self.of(cls, caused_by=caused_by, **fields)
        if len(found) != 1:
            if not found:
                raise AssertionError(self._missing(cls, fields, caused_by, directly=False))
            listed = "\n".join(f"  {describe(event)}" for event in found)
            raise AssertionError(
                f"expected one {_wanted(cls, fields)}, {len(found)} were published:\n{listed}\n"
                f"{self.tree()}"
            )
        return found[0]

    def assert_none(
        self, cls: type[Event], /, *, caused_by: Event | None = None, **fields: object
    ) -> None:
        """Fail, showing them, if any events of ``cls`` matching ``fields`` were published."""
        found = self.of(cls, caused_by=caused_by, **fields)
        if found:
            listed = "\n".join(f"  {describe(event)}" for event in found)
            raise AssertionError(
                f"expected no {_wanted(cls, fields)}, {len(found)} were published:\n{listed}\n"
                f"{self.tree()}"
            )

    # -- causation ----------------------------------------------------------------

    @t.overload
    def assert_caused(
        self, cause: Event, effect: type[E], /, *, directly: bool = ..., **fields: object
    ) -> E: ...

    @t.overload
    def assert_caused(self, cause: Event, effect: E, /, *, directly: bool = ...) -> E: ...

    def assert_caused(
        self,
        cause: Event,
        effect: type[Event] | Event,
        /,
        *,
        directly: bool = False,
        **fields: object,
    ) -> Event:
        """Assert that ``cause`` caused ``effect`` and return the effect.

        ``effect`` is an event, or a class with field conditions (the first
        match is returned). Caused means published by a handler of
        ``cause``, or, unless ``directly``, by a handler of an event that
        ``cause`` caused. Only events published while the capture ran count.
        """
        if isinstance(effect, Event):
            if fields:
                raise TypeError("field conditions go with an event class, not an event")
            if self._descends(effect, cause, directly=directly):
                return effect
            raise AssertionError(self._not_caused(cause, effect, directly))
        _check_fields(effect, fields)
        for event in self:
            if _matches(event, effect, fields) and self._descends(event, cause, directly=directly):
                return event
        raise AssertionError(self._missing(effect, fields, cause, directly=directly))

    def cause_of(self, event: Event, /) -> Event | None:
        """The event whose handler published ``event``, if it was captured."""
        if event.causation_id is None:
            return None
        with self._lock:
            return self._by_id.get(event.causation_id)

    def children(self, event: Event, /) -> list[Event]:
        """The events that handlers of ``event`` published, in order."""
        return [child for child in self if child.causation_id == event.event_id]

    def publisher_of(self, event: Event, /) -> str | None:
        """The name of the handler that published ``event``; None for a top-level publish.

        ``LookupError`` if ``event`` was not captured.
        """
        with self._lock:
            if event.event_id not in self._publishers:
                raise LookupError(
                    f"{describe(event)} (event_id={event.event_id}) was not published while "
                    "this capture ran"
                )
            return self._publishers[event.event_id]

    # -- showing it ---------------------------------------------------------------

    def tree(self) -> str:
        """The captured events as cascades: each event under the one whose handler published it."""
        with self._lock:
            events = list(self._events)
            publishers = dict(self._publishers)
        if not events:
            return "nothing was published"
        known = {event.event_id for event in events}
        children: dict[uuid.UUID | None, list[Event]] = {}
        for event in events:
            parent = event.causation_id if event.causation_id in known else None
            children.setdefault(parent, []).append(event)
        lines: list[str] = []

        def walk(event: Event, depth: int) -> None:
            by = publishers.get(event.event_id)
            suffix = f"  by {by}" if by is not None and depth > 0 else ""
            lines.append(f"{'  ' * (depth + 1)}- {describe(event)}{suffix}")
            for child in children.get(event.event_id, ()):
                walk(child, depth + 1)

        for root in children.get(None, ()):
            walk(root, 0)
        noun = "event was" if len(events) == 1 else "events were"
        shown = lines[:TREE_LINES]
        if len(lines) > TREE_LINES:
            shown.append(f"  ... and {len(lines) - TREE_LINES} more")
        return f"{len(events)} {noun} published:\n" + "\n".join(shown)

    def clear(self) -> None:
        """Forget what was captured so far (the capture goes on)."""
        with self._lock:
            self._events.clear()
            self._by_id.clear()
            self._publishers.clear()

    def __repr__(self) -> str:
        return f"<Published {len(self)} events>"

    # -- internals ----------------------------------------------------------------

    def _record(
        self, sender: object, /, *, event: Event, publisher: str | None, **_: object
    ) -> None:
        with self._lock:
            self._events.append(event)
            self._by_id[event.event_id] = event
            self._publishers[event.event_id] = publisher

    def _descends(self, event: Event, ancestor: Event, *, directly: bool) -> bool:
        with self._lock:
            by_id = self._by_id
            seen: set[uuid.UUID] = set()
            parent_id = event.causation_id
            while parent_id is not None and parent_id not in seen:
                if parent_id == ancestor.event_id:
                    return True
                if directly:
                    return False
                seen.add(parent_id)
                parent = by_id.get(parent_id)
                parent_id = parent.causation_id if parent is not None else None
            return False

    def _missing(
        self,
        cls: type[Event],
        fields: c.Mapping[str, object],
        cause: Event | None,
        *,
        directly: bool,
    ) -> str:
        wanted = _wanted(cls, fields)
        if cause is None:
            head = f"no {wanted} was published"
        else:
            how = "directly " if directly else ""
            head = f"no {wanted} was {how}caused by {describe(cause)}"
            elsewhere = [event for event in self if _matches(event, cls, fields)]
            if elsewhere:
                head += (
                    f"; {len(elsewhere)} matching event(s) were published, caused by: "
                    + ", ".join(self._origin(event) for event in elsewhere[:3])
                )
        return f"{head}\n{self.tree()}"

    def _not_caused(self, cause: Event, effect: Event, directly: bool) -> str:
        how = "directly " if directly else ""
        return (
            f"{describe(effect)} was not {how}caused by {describe(cause)}; "
            f"it was caused by {self._origin(effect)}\n{self.tree()}"
        )

    def _origin(self, event: Event) -> str:
        parent = self.cause_of(event)
        if parent is not None:
            return describe(parent)
        if event.causation_id is None:
            return "a top-level publish"
        return f"an event not captured (event_id={event.causation_id})"


def capture(bus: EventBus, /) -> contextlib.AbstractContextManager[Published]:
    """Record every event ``bus`` publishes inside the block, cascades included::

        with capture(bus) as published:
            bus.publish(ItemAdded(cart_id="c1", sku="BOOK", quantity=1))
        reserved = published.find(StockReserved, sku="BOOK")

    The record stays readable after the block. It listens to the bus's
    ``event_published`` signal for the block's duration only, and holds
    the events it records.
    """
    from ..bus import EventBus

    if not isinstance(bus, EventBus):
        raise TypeError(f"capture() takes an EventBus, got {bus!r}")
    return _capturing(bus)


@contextlib.contextmanager
def _capturing(bus: EventBus) -> c.Iterator[Published]:
    published = Published()
    receiver = published._record
    signals.event_published.connect(receiver, sender=bus, weak=False)
    try:
        yield published
    finally:
        signals.event_published.disconnect(receiver)  # without sender=: gone for good


def _check_fields(cls: type[Event], fields: c.Mapping[str, object]) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Event)):
        raise TypeError(f"expected an Event class, got {cls!r}")
    known = set(cls.model_fields)
    unknown = [name for name in fields if name not in known]
    if unknown:
        raise TypeError(
            f"{cls.__qualname__} has no field {', '.join(map(repr, unknown))}; "
            f"its fields: {', '.join(fields_of(cls)) or '(none besides the metadata)'}, "
            "and event_id, occurred_at, correlation_id, causation_id"
        )


def _matches(event: Event, cls: type[Event], fields: c.Mapping[str, object]) -> bool:
    if not isinstance(event, cls):
        return False
    return all(getattr(event, name) == value for name, value in fields.items())


def _wanted(cls: type[Event], fields: c.Mapping[str, object]) -> str:
    if not fields:
        return cls.__qualname__
    conditions = ", ".join(f"{name}={value!r}" for name, value in fields.items())
    return f"{cls.__qualname__}({conditions})"
