"""Events: immutable pydantic models with metadata, and the name-to-class lookup.

Every event class gets a stable ``event_type`` name at class creation. The
name is what crosses process boundaries; :meth:`Event.class_for` turns it back
into a class, knowing only the :class:`Event` subclasses defined so far, so a
payload can never make eventbus import or unpickle anything.

An event class is checked when it is created: a field whose values would not
come back from JSON equal (a type JSON cannot carry, a union JSON cannot tell
apart), a redefined metadata field, or a setting that breaks the JSON round
trip or immutability is a ``TypeError`` there, naming the field and the fix.
Its lists, dicts and sets are frozen copies (:class:`FrozenList`,
:class:`FrozenDict`, :class:`FrozenSet`), made by pydantic as it validates.
"""

from __future__ import annotations

import functools
import os
import random
import threading
import time
import typing as t
import uuid
from datetime import UTC, datetime

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, field_validator
from pydantic_core import PydanticSerializationError, core_schema

from .context import current_causation_id, current_correlation_id
from .errors import EventBusError
from .event_schema import (
    JSON_DEPTH_LIMIT,
    _check_config,
    _check_metadata,
    _describe,
    _EventSchema,
    _why_not_json,
)
from .frozen import FrozenDict, FrozenList, FrozenSet
from .naming import MAIN_MODULES, importable_module_name, namespace_of_caller

__all__ = [
    "JSON_DEPTH_LIMIT",
    "Event",
    "EventSerializationError",
    "FrozenDict",
    "FrozenList",
    "FrozenSet",
    "UnknownEventTypeError",
    "new_event_id",
]

_T = t.TypeVar("_T")
_K = t.TypeVar("_K")
_V = t.TypeVar("_V")


class UnknownEventTypeError(LookupError):
    """No :class:`Event` subclass is defined under the requested ``event_type``."""


class EventSerializationError(EventBusError, ValueError):
    """An event cannot be written as JSON that :meth:`Event.from_json` reads back.

    Raised by :meth:`Event.to_json`; the message names the event, the field
    and the fix (text holding lone surrogates, a payload nested deeper than
    :data:`JSON_DEPTH_LIMIT`, a value of a type JSON cannot carry).
    """


_UNSET: t.Final = object()


#: The time of construction (a C function: pydantic calls it without a Python frame).
_utc_now = functools.partial(datetime.now, UTC)


# Event ids are UUIDv7 (RFC 9562): 48 bits of Unix time in milliseconds, the version and
# variant, and 74 random bits from a generator seeded by the OS, reseeded in a forked child
# (so two processes never share a sequence). uuid4() reads the OS for every id and costs
# more than the rest of an event's construction; ids need uniqueness, not secrecy.
_id_random = random.Random()
os.register_at_fork(after_in_child=_id_random.seed)
_random_bits = _id_random.getrandbits
_time_ns = time.time_ns
_new_uuid = object.__new__
_set = object.__setattr__
_SAFE = uuid.SafeUUID.unknown
# The 80 bits below the timestamp are random but for the version (7) and the variant (0b10).
_RANDOM_BITS = ~(0xF << 76 | 0x3 << 62) & ((1 << 80) - 1)
_VERSION_AND_VARIANT = 0x7 << 76 | 0b10 << 62


def new_event_id() -> uuid.UUID:
    """A fresh UUIDv7: unique, and sorting by creation time to the millisecond.

    Within one millisecond the order is random. Not for secrets: the random
    bits come from a seeded (by the OS) Mersenne Twister, not from the OS itself.
    """
    made = _new_uuid(uuid.UUID)
    # What UUID.__init__ does, without its checks of an int made right here.
    _set(
        made,
        "int",
        (_time_ns() // 1_000_000) << 80 | _random_bits(80) & _RANDOM_BITS | _VERSION_AND_VARIANT,
    )
    _set(made, "is_safe", _SAFE)
    return made


class Event(BaseModel):
    """Base class of every event: a frozen pydantic model with metadata.

    Subclass it and declare fields as on any pydantic model::

        class ItemAdded(Event):
            cart_id: str
            quantity: int = Field(gt=0)

    The metadata fields are filled automatically:

    - ``event_id``: a fresh UUIDv7 (time-ordered to the millisecond, see
      :func:`new_event_id`);
    - ``occurred_at``: the timezone-aware UTC time of construction;
    - ``correlation_id``: the id shared by every event of one cascade: the
      root event's ``event_id`` (``None`` on a root event unless you set it,
      say to a request id);
    - ``causation_id``: the ``event_id`` of the event whose handler published
      this one (``None`` on a root event).

    A subclass may not redefine them (nor validate or serialize them its own
    way): that is a ``TypeError`` when the class is created.

    An event constructed inside a handler takes both ids from the event being
    handled, when it is constructed; an event constructed elsewhere and
    published from a handler gets them when it is published (the result's
    ``event`` is then a copy with the ids set).

    ``event_type`` is the class's stable name, ``"module.QualName"`` (with
    the module named as it is imported, even in a script run as
    ``__main__``) unless the class sets it::

        class ItemAdded(Event):
            event_type = "cart.item_added"

    Two different classes may not claim one name: the second raises
    ``TypeError`` when it is created. Re-running the same class statement
    (a module reload, a class defined inside a function) replaces the earlier
    class under that name.

    Immutable: no field can be set, and the lists, dicts and sets that the
    fields' types declare, at any depth (``list[list[int]]``, ``dict[str,
    set[str]]``, a ``TypedDict``), are frozen copies: a :class:`FrozenList`,
    :class:`FrozenDict` or :class:`FrozenSet`, equal to and usable as the
    plain container, whose changing methods raise ``TypeError``. Nested
    pydantic models and dataclasses must be frozen themselves (checked at
    class creation) and are held as given (but for an equal copy, below,
    where they hold a datetime or time whose offset has seconds). Not
    frozen: what a field typed ``Any``, ``object`` or ``JsonValue`` holds,
    and events made without validation (``model_construct``,
    ``model_copy(update=...)``).

    JSON: :meth:`to_json` and :meth:`from_json` (``model_dump_json`` and
    ``model_validate_json`` follow the same rules) give back an equal event,
    but for values under ``Any``, ``object`` or ``JsonValue``, which come back
    as JSON gives them.
    Fields are written under their alias and read under their alias or name;
    ``bytes`` are written as URL-safe base64; computed fields are written,
    and ignored when read (they are computed again); a datetime whose UTC
    offset is not a whole number of minutes is held in UTC from validation
    on, a time at an offset of whole minutes (the same instant: ISO 8601
    offsets carry minutes only, and pydantic would drop the seconds); inf
    and nan are written as ``Infinity`` and ``NaN``. A class with a field
    that could not come back equal is refused when it is created
    (``TypeError`` naming the field and the fix).
    """

    # inf and nan survive the JSON round trip instead of silently becoming null; bytes
    # that are not UTF-8 can be written at all; aliased fields are read back as written.
    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        ser_json_inf_nan="constants",
        ser_json_bytes="base64",
        val_json_bytes="base64",
        serialize_by_alias=True,
        validate_by_alias=True,
        validate_by_name=True,
    )

    event_type: t.ClassVar[str] = "eventbus.Event"

    event_id: uuid.UUID = Field(default_factory=new_event_id)
    occurred_at: datetime = Field(default_factory=_utc_now)
    correlation_id: uuid.UUID | None = Field(default_factory=current_correlation_id)
    causation_id: uuid.UUID | None = Field(default_factory=current_causation_id)

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
    def __get_pydantic_core_schema__(
        cls, source: type[BaseModel], handler: GetCoreSchemaHandler, /
    ) -> core_schema.CoreSchema:
        # Runs when pydantic builds the class's schema (and when another model uses the
        # class, which then gets the schema built here): the checks and the freezing
        # are part of the schema, so a model_rebuild() keeps them.
        own = source is cls and "Event" in globals() and cls is not Event  # not Event's own
        if own:
            _check_metadata(cls, Event)
            _check_config(cls)
        schema = handler(source)
        if not own:
            return schema
        return _EventSchema(cls, handler, Event).build(schema)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: t.Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        namespace = None
        if cls.__module__ in MAIN_MODULES:  # the class body's globals know the file
            namespace = namespace_of_caller(cls.__module__)
        identity = f"{importable_module_name(cls.__module__, namespace)}.{cls.__qualname__}"
        explicit = cls.__dict__.get("event_type", _UNSET)
        if explicit is _UNSET:
            cls.event_type = identity
        elif not isinstance(explicit, str) or not explicit:
            raise TypeError(
                f"{cls.__qualname__}.event_type must be a non-empty string, got {explicit!r}"
            )
        _types.register(cls, identity)

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

    def to_json(self) -> str:
        """This event as JSON text, which :meth:`from_json` turns back into an equal event.

        ``model_dump_json()`` writes the same text, but does not check it:
        this raises :class:`EventSerializationError`, naming the field and
        the fix, where the event cannot be written (text holding lone
        surrogates, as ``os.fsdecode`` makes of undecodable bytes; a value
        that JSON cannot carry, under ``Any``) or would not be read back
        (nested deeper than :data:`JSON_DEPTH_LIMIT`)::

            assert Event.from_json(event.event_type, event.to_json()) == event
        """
        try:
            text = self.__pydantic_serializer__.to_json(self).decode()
        except (PydanticSerializationError, ValueError, TypeError) as error:
            raise EventSerializationError(_why_not_json(self, error)) from error
        # A cheap bound first: JSON nested N deep holds at least N brackets.
        if text.count("[") + text.count("{") >= JSON_DEPTH_LIMIT:
            try:
                pydantic_core.from_json(text)
            except ValueError as error:
                raise EventSerializationError(
                    f"{_describe(self)} cannot be read back from its JSON: {error}; "
                    f"pydantic reads JSON nested at most {JSON_DEPTH_LIMIT} levels deep "
                    "(the event's own object counts as one): flatten the payload, or "
                    "carry it as a JSON string in a str field"
                ) from None
        return text

    @classmethod
    def from_json(cls, event_type: str, data: str | bytes) -> t.Self:
        """Rebuild an event from its ``event_type`` and :meth:`to_json` output.

        ::

            restored = Event.from_json(event.event_type, event.to_json())
            assert restored == event

        Raises :class:`UnknownEventTypeError` for an unknown ``event_type``,
        pydantic's ``ValidationError`` for a payload that does not validate.
        """
        return cls.class_for(event_type).model_validate_json(data)


# -- the registry of event types -----------------------------------------------------------


class _EventTypes:
    """The process-wide map from ``event_type`` to class (Event subclasses only).

    Each class is kept with its identity, ``"module.QualName"`` with the module
    named as it is imported (see naming.py), worked out when the class was
    created: two classes of one identity are one class defined again (a
    reload, a re-run cell, a script imported by its name), and the later
    replaces the earlier; two of different identities may not share a name.
    """

    def __init__(self) -> None:
        self._classes: dict[str, tuple[type[Event], str]] = {}
        self._lock = threading.Lock()

    def register(self, cls: type[Event], identity: str) -> None:
        name = cls.event_type
        with self._lock:
            existing = self._classes.get(name)
            if existing is not None and existing[1] != identity:
                raise TypeError(
                    f"event_type {name!r} of {identity} is already used by "
                    f"{existing[1]}; give one of them another "
                    f'`event_type = "..."`'
                )
            self._classes[name] = (cls, identity)

    def get(self, name: str) -> type[Event] | None:
        found = self._classes.get(name)
        return found[0] if found is not None else None

    def items(self) -> list[tuple[str, type[Event]]]:
        with self._lock:
            return [(name, cls) for name, (cls, _) in self._classes.items()]


_types = _EventTypes()
_types.register(Event, "eventbus.Event")
