"""Events: immutable pydantic models with metadata, and the name-to-class lookup.

Every event class gets a stable ``event_type`` name at class creation. The
name is what crosses process boundaries; :meth:`Event.class_for` turns it back
into a class, knowing only the :class:`Event` subclasses defined so far, so a
payload can never make eventbus import or unpickle anything.
"""

from __future__ import annotations

import threading
import typing as t
import uuid
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["Event", "UnknownEventTypeError"]


class UnknownEventTypeError(LookupError):
    """No :class:`Event` subclass is defined under the requested ``event_type``."""


_UNSET: t.Final = object()


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    """Base class of every event: a frozen pydantic model with metadata.

    Subclass it and declare fields as on any pydantic model::

        class ItemAdded(Event):
            cart_id: str
            quantity: int = Field(gt=0)

    The metadata fields are filled automatically:

    - ``event_id``: a fresh UUID4;
    - ``occurred_at``: the timezone-aware UTC time of construction;
    - ``correlation_id``: the id shared by every event of one cascade (set by
      the bus on events published from a handler; ``None`` on a root event
      unless you set it, say to a request id);
    - ``causation_id``: the ``event_id`` of the event whose handler published
      this one (``None`` on a root event).

    ``event_type`` is the class's stable name, ``"module.QualName"`` unless the
    class sets it::

        class ItemAdded(Event):
            event_type = "cart.item_added"

    Two different classes may not claim one name: the second raises
    ``TypeError`` when it is created. Re-running the same class statement
    (a module reload, a class defined inside a function) replaces the earlier
    class under that name.
    """

    # inf and nan survive the JSON round trip instead of silently becoming null
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")

    event_type: t.ClassVar[str] = "eventbus.Event"

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    occurred_at: datetime = Field(default_factory=_utc_now)
    correlation_id: uuid.UUID | None = None
    causation_id: uuid.UUID | None = None

    @field_validator("occurred_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        # Runs on given values only: the default is already UTC.
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(
                "occurred_at must be timezone-aware; pass datetime.now(UTC), not datetime.now()"
            )
        return value.astimezone(UTC)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: t.Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        explicit = cls.__dict__.get("event_type", _UNSET)
        if explicit is _UNSET:
            cls.event_type = f"{cls.__module__}.{cls.__qualname__}"
        elif not isinstance(explicit, str) or not explicit:
            raise TypeError(
                f"{cls.__qualname__}.event_type must be a non-empty string, got {explicit!r}"
            )
        _types.register(cls)

    @classmethod
    def class_for(cls, event_type: str) -> type[t.Self]:
        """Return the event class registered under ``event_type``.

        Called on a subclass, only that subclass and its descendants match::

            CartEvent.class_for("cart.item_added")   # ok if ItemAdded(CartEvent)

        Raises :class:`UnknownEventTypeError` if no such class is defined (or
        it is not a subclass of the class this is called on).
        """
        found = _types.get(event_type)
        if found is None or not issubclass(found, cls):
            known = ", ".join(sorted(n for n, c in _types.items() if issubclass(c, cls)))
            raise UnknownEventTypeError(
                f"no {cls.__qualname__} subclass has event_type {event_type!r}; "
                f"define (import) the class before loading its events. Known: {known or 'none'}"
            )
        return found

    @classmethod
    def from_json(cls, event_type: str, data: str | bytes) -> t.Self:
        """Rebuild an event from its ``event_type`` and ``model_dump_json()`` output.

        ::

            restored = Event.from_json(event.event_type, event.model_dump_json())
            assert restored == event
        """
        return cls.class_for(event_type).model_validate_json(data)


class _EventTypes:
    """The process-wide map from ``event_type`` to class (Event subclasses only)."""

    def __init__(self) -> None:
        self._classes: dict[str, type[Event]] = {}
        self._lock = threading.Lock()

    def register(self, cls: type[Event]) -> None:
        name = cls.event_type
        with self._lock:
            existing = self._classes.get(name)
            if existing is not None and _identity(existing) != _identity(cls):
                raise TypeError(
                    f"event_type {name!r} of {_identity(cls)} is already used by "
                    f"{_identity(existing)}; give one of them another "
                    f'`event_type = "..."`'
                )
            self._classes[name] = cls

    def get(self, name: str) -> type[Event] | None:
        return self._classes.get(name)

    def items(self) -> list[tuple[str, type[Event]]]:
        with self._lock:
            return list(self._classes.items())


def _identity(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


_types = _EventTypes()
_types.register(Event)
