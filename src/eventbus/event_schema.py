"""What an Event class's schema is checked for and rewritten into, when pydantic builds it.

Every value an event accepts must come back from its JSON equal, and no
handler may change an event another will see. So, when a class is created
(and at ``model_rebuild()``), its pydantic core schema is walked: a field
whose values would not come back (a type JSON cannot carry, a union JSON
cannot tell apart, an alias written under a key it is not read by), a
redefined metadata field, or a config that breaks the round trip is a
``TypeError`` naming the field and the fix; lists, dicts and sets become
frozen containers; datetimes and times whose UTC offset has seconds are held
in UTC (a time: at the nearest offset of whole minutes) once validated; and
computed fields are ignored when JSON is read. This relies on the layout of
pydantic-core's schemas, covered by tests/test_event_edges.py.
"""

from __future__ import annotations

import collections
import collections.abc as c
import copy
import datetime as dt
import decimal
import functools
import inspect
import sys
import typing as t
import uuid
from dataclasses import fields as dataclass_fields
from dataclasses import is_dataclass
from datetime import UTC, datetime

import pydantic_core
from pydantic import BaseModel, GetCoreSchemaHandler
from pydantic_core import core_schema

from .frozen import FrozenDict, FrozenList, FrozenSet, _deep_freeze, _frozen_default

if t.TYPE_CHECKING:
    from .events import Event

_set = object.__setattr__  # a frozen instance's field, set on a fresh copy

#: How deep JSON may nest and still be read back: pydantic's JSON parser reads arrays and
#: objects nested at most this deep (its recursion limit, 200, below the outermost one),
#: the event's own object counting as one.
JSON_DEPTH_LIMIT: t.Final = 201

#: The fields every event carries; subclasses may not redefine them.
_METADATA: t.Final = ("event_id", "occurred_at", "correlation_id", "causation_id")


_MINUTE = dt.timedelta(minutes=1)
_SECONDS_OFFSET = "its UTC offset has seconds, which ISO 8601 cannot carry"
_SECONDS_OFFSET_FIX = "give it an offset of whole minutes"
_SOME_DAY = dt.date(2000, 1, 3)  # any day: a time is moved within one


def _offset_in_whole_minutes(value: t.Any) -> t.Any:
    """``value`` as an event holds it: in UTC (a time: at the nearest whole-minute offset)
    if its UTC offset has seconds, else ``value`` itself.

    ISO 8601 offsets carry minutes only, and pydantic drops the seconds when it
    writes one (a historic offset such as +00:19:32 would come back 32 seconds
    off); in UTC the instant is kept, and aware datetimes compare equal. Run
    once, when the event is validated, so that pydantic writes the value with
    its own serializer. JSON text cannot carry such an offset (pydantic refuses
    it), so values read from JSON need no check.
    """
    zone = value.tzinfo
    if zone is UTC or zone is None:  # most values: decided without utcoffset(), a slow call
        return value
    try:
        offset = value.utcoffset()
    except Exception:  # a broken tzinfo: pydantic says so when it writes the value
        return value
    if offset is None or not (offset.seconds % 60 or offset.microseconds):  # whole minutes
        return value
    if not isinstance(value, datetime):
        return _time_in_whole_minutes(value, offset)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError(
            f"{value!r}: {_SECONDS_OFFSET}, so an event holds it in UTC, where it is outside "
            f"the years 1 to 9999 that datetime can hold; {_SECONDS_OFFSET_FIX}"
        ) from None


def _offsets_in_whole_minutes(value: t.Any, depth: int = 0) -> t.Any:
    """``value`` with the datetimes and times in it as :func:`_offset_in_whole_minutes` makes
    them: the same object where nothing changes, else a copy.

    For nested models and dataclasses, which are validated by their own classes:
    goes into their fields, at any depth, and into the lists, tuples, sets and
    dicts they hold (not into subclasses of those: they could not be rebuilt).
    """
    kind = type(value)
    holds = _HOLDS.get(kind) or _holds(kind)
    if holds is _OTHER:
        return value
    if holds is _TEMPORAL:
        return _offset_in_whole_minutes(value)
    if depth > JSON_DEPTH_LIMIT:
        return value
    if holds is _ITEMS:
        items = [_offsets_in_whole_minutes(item, depth + 1) for item in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value
        return kind(items)
    if holds is _VALUES:
        new = {key: _offsets_in_whole_minutes(item, depth + 1) for key, item in value.items()}
        return value if all(new[key] is item for key, item in value.items()) else kind(new)
    fields: c.Iterable[tuple[str, t.Any]]
    if holds is _MODEL_FIELDS:
        fields = value.__dict__.items()
    else:
        fields = [(field.name, getattr(value, field.name)) for field in dataclass_fields(value)]
    changed = None
    for name, item in fields:
        # The common fields inline (this runs at each construction of the event): text,
        # numbers, UTC and naive datetimes.
        holds = _HOLDS.get(type(item)) or _holds(type(item))
        if holds is _OTHER or (
            holds is _TEMPORAL and ((zone := item.tzinfo) is UTC or zone is None)
        ):
            continue
        new = _offsets_in_whole_minutes(item, depth + 1)
        if new is not item:
            changed = changed or {}
            changed[name] = new
    if not changed:
        return value
    value = copy.copy(value)
    for name, new in changed.items():
        _set(value, name, new)
    return value


# What _offsets_in_whole_minutes does with a value, by its type: looked up once per type
# (isinstance on a pydantic model and is_dataclass are slow calls).
_OTHER, _TEMPORAL, _ITEMS, _VALUES, _MODEL_FIELDS, _DATACLASS_FIELDS = (
    "other",
    "temporal",
    "items",
    "values",
    "model fields",
    "dataclass fields",
)
_HOLDS: dict[type, str] = {}


def _holds(kind: type) -> str:
    if issubclass(kind, datetime | dt.time):
        holds = _TEMPORAL
    elif kind in (list, tuple, set, frozenset, FrozenList, FrozenSet):  # rebuilt: kind(items)
        holds = _ITEMS
    elif kind in (dict, FrozenDict):
        holds = _VALUES
    elif issubclass(kind, BaseModel):
        holds = _MODEL_FIELDS
    elif is_dataclass(kind):
        holds = _DATACLASS_FIELDS
    else:
        holds = _OTHER
    if len(_HOLDS) < 1024:  # types made at run time must not grow it without end
        _HOLDS[kind] = holds
    return holds


def _time_in_whole_minutes(value: dt.time, offset: dt.timedelta) -> dt.time:
    """The same time of day moved to the nearest offset of whole minutes.

    Not to UTC: times compare by their seconds past midnight minus the
    offset, without wrapping at midnight, so the move must stay within the day.
    """
    base = datetime.combine(_SOME_DAY, value.replace(tzinfo=None))
    below = offset % _MINUTE
    for shift in (-below, _MINUTE - below):
        moved, moved_offset = base + shift, offset + shift
        if moved.date() == _SOME_DAY and abs(moved_offset) < dt.timedelta(hours=24):
            return moved.time().replace(tzinfo=dt.timezone(moved_offset), fold=value.fold)
    raise ValueError(  # an offset just short of a day, at the day's very edge
        f"{value!r}: {_SECONDS_OFFSET}, and no offset of whole minutes gives that time "
        f"within its day; {_SECONDS_OFFSET_FIX}"
    )


def _checked_default(factory: c.Callable[..., t.Any], *data: t.Any) -> t.Any:
    return _offsets_in_whole_minutes(factory(*data))


def _through_thawed(write: c.Callable[..., t.Any], value: t.Any, /, *args: t.Any) -> t.Any:
    """Call a wrap serializer ``write`` with a frozen container as the plain one."""
    kind = type(value)
    if kind is FrozenList:
        value = list(value)
    elif kind is FrozenDict:
        value = dict(value)
    elif kind is FrozenSet:
        value = set(value)
    return write(value, *args)


def _drop_computed(names: frozenset[str]) -> core_schema.WithInfoValidatorFunction:
    """A before-validator dropping the computed fields from JSON input (they are written)."""

    def drop(data: t.Any, info: core_schema.ValidationInfo) -> t.Any:
        if info.mode == "json" and isinstance(data, dict) and not names.isdisjoint(data):
            data = {key: value for key, value in data.items() if key not in names}
        return data

    return drop


# -- checks at class creation --------------------------------------------------------------

# What the JSON round trip and immutability rest on: the config a subclass may not change.
_NEEDED_CONFIG: t.Final[dict[str, tuple[object, str]]] = {
    "frozen": (True, "events are immutable"),
    "extra": ("forbid", "events reject unknown fields"),
    "ser_json_bytes": ("base64", "bytes that are not UTF-8 must be written to JSON"),
    "val_json_bytes": ("base64", "bytes are read from JSON as they are written"),
    "ser_json_inf_nan": ("constants", "inf and nan must come back from JSON, not as null"),
    "ser_json_timedelta": ("iso8601", "timedeltas must come back from JSON exactly"),
    "ser_json_temporal": ("iso8601", "datetimes must come back from JSON exactly"),
    "serialize_by_alias": (True, "fields are written under the alias they are read by"),
    "validate_by_alias": (True, "fields are read under the alias they are written by"),
}


def _check_metadata(cls: type[Event], base: type[Event]) -> None:
    """Refuse a subclass that redefines, validates or serializes a metadata field of ``base``."""
    for klass in cls.__mro__:
        if klass is base:
            break
        redefined = [name for name in _METADATA if name in _own_annotations(klass)]
        if redefined:
            raise TypeError(
                f"{cls.__qualname__} redefines the metadata field {redefined[0]!r}"
                + (f" (in its base {klass.__qualname__})" if klass is not cls else "")
                + f": every event's {', '.join(_METADATA)} are Event's, so that ids and "
                "times mean the same in every event; remove the field from the class, or "
                "give your own value another name (say, order_id)"
            )
    decorators = cls.__pydantic_decorators__
    for kind, found in (
        ("validator", decorators.field_validators),
        ("serializer", decorators.field_serializers),
    ):
        for decorator in found.values():
            if getattr(decorator.func, "__func__", None) is base._utc.__func__:  # type: ignore[attr-defined]
                continue
            touched = [name for name in decorator.info.fields if name in _METADATA]
            if touched:
                raise TypeError(
                    f"{cls.__qualname__}.{decorator.cls_var_name} is a field {kind} of the "
                    f"metadata field {touched[0]!r}: metadata is Event's to fill, check and "
                    f"write; remove {touched[0]!r} from the {kind}'s fields"
                )


def _own_annotations(klass: type) -> c.Collection[str]:
    if sys.version_info >= (3, 14):  # annotations are evaluated lazily there
        import annotationlib

        return annotationlib.get_annotations(klass, format=annotationlib.Format.FORWARDREF)
    return inspect.get_annotations(klass)  # the class's own, unevaluated


def _check_config(cls: type[Event]) -> None:
    """Refuse a subclass whose model_config undoes what events rest on."""
    config = t.cast(dict[str, object], cls.model_config)
    for key, (needed, why) in _NEEDED_CONFIG.items():
        if key in config and config[key] != needed:
            raise TypeError(
                f"{cls.__qualname__}.model_config sets {key}={config[key]!r}, but events "
                f"need {key}={needed!r} ({why}); remove {key!r} from the class's model_config"
            )


#: The JSON shape of a value (its kind, and the Python type it is read back as).
_Shape = tuple[str, type]

_STRING_TYPES: t.Final[dict[str, type]] = {
    "str": str,
    "bytes": bytes,
    "uuid": uuid.UUID,
    "datetime": datetime,
    "date": dt.date,
    "time": dt.time,
    "timedelta": dt.timedelta,
    "complex": complex,
    "url": pydantic_core.Url,
    "multi-host-url": pydantic_core.MultiHostUrl,
}
_SIMPLE_SHAPES: t.Final[dict[str, _Shape]] = {
    "none": ("null", type(None)),
    "bool": ("bool", bool),
    "int": ("number", int),
    "float": ("number", float),
    "decimal": ("string", decimal.Decimal),
    "list": ("array", list),
    "tuple": ("array", tuple),
    "set": ("array", set),
    "frozenset": ("array", frozenset),
    "deque": ("array", collections.deque),
    "generator": ("array", c.Iterator),
    "dict": ("object", dict),
    "typed-dict": ("object", dict),
    "counter": ("object", collections.Counter),
    "ordered-dict": ("object", collections.OrderedDict),
    **{name: ("string", kind) for name, kind in _STRING_TYPES.items()},
}
# Containers an event cannot freeze, and what to declare instead.
_UNFREEZABLE: t.Final = {
    "deque": "a deque, which handlers could change for each other; declare tuple[...]",
    "counter": "a Counter, which handlers could change for each other; declare dict[..., int]",
    "ordered-dict": "an OrderedDict, which handlers could change for each other; declare "
    "dict[...] (dicts keep their order)",
    "generator": "an iterator, which the first handler that reads it uses up; declare tuple[...]",
}
_MUTABLE_INSTANCES: t.Final = (list, dict, set, bytearray, collections.deque)


class _Walk(t.NamedTuple):
    """Where the walk of a schema is: what reaches this node, and what may be done there."""

    where: str  # "Order.lines", or "Order.lines (Line.sku)" inside a nested model
    rules: t.Mapping[str, t.Any]  # the core config of the innermost model: how it writes JSON
    freeze: bool  # the event's own fields: containers here are frozen
    rewrite: bool  # the schema built here is used (not inside a model built by its own class)
    from_json: bool  # JSON input reaches this node as JSON (no validator converted it)
    written: bool  # a custom serializer writes this node's values (or may: a wrap one)
    replaced: bool  # a custom serializer writes them without this node's serializer


class _EventSchema:
    """Checks an event class's core schema and makes the one the class is built with.

    The event's own fields get their lists, dicts and sets frozen (an
    after-validator that is a C call: ``FrozenList(value)``), their
    datetimes and times an after-validator that puts an offset with seconds
    in whole minutes (in Python mode only: JSON text cannot carry one), and
    computed fields are dropped from JSON input. Nested pydantic models are
    built by their own classes (pydantic reuses their validators and
    serializers), so they are only checked, and one that holds datetimes or
    times gets the same after-validator around it, going into its fields. A
    field that would not survive JSON, anywhere in the event, is a
    ``TypeError`` naming it and the fix. Nothing is added to how events are
    written: pydantic's serializers write them, in Rust.
    """

    def __init__(self, cls: type[Event], handler: GetCoreSchemaHandler, base: type[Event]) -> None:
        self.cls = cls
        self.base = base  # Event itself: this module cannot import it (events imports this)
        self.handler = handler
        self.definitions: list[core_schema.CoreSchema] = []
        self.copies: dict[str, str] = {}  # ref of a definition -> ref of the event's copy
        # ref of a nested model -> it holds datetimes or times, and some reached by Python
        # values in JSON mode (see converted)
        self.checked: dict[str, tuple[bool, bool]] = {}
        self.temporals = 0  # how many datetime and time schemas pydantic writes, seen so far
        self.converted = 0  # how many of them get Python values in JSON mode (a validator's)
        self.problems: list[str] = []
        self.freezes = 0  # how many containers the walk has frozen so far

    def build(self, schema: core_schema.CoreSchema) -> core_schema.CoreSchema:
        top = _Walk(
            self.cls.__qualname__,
            rules={},  # set from the event's own model schema
            freeze=True,
            rewrite=True,
            from_json=True,
            written=False,
            replaced=False,
        )
        built = self.node(schema, top)
        if self.problems:
            more = len(self.problems) - 1
            raise TypeError(
                f"{self.cls.__qualname__} cannot be an event: {self.problems[0]}"
                + (f" (and {more} more: {'; '.join(self.problems[1:])})" if more else "")
            )
        if self.definitions:
            return core_schema.definitions_schema(built, self.definitions)
        return t.cast(core_schema.CoreSchema, built)

    def problem(self, walk: _Walk, message: str) -> None:
        self.problems.append(f"{walk.where}: {message}")

    # -- the walk ---------------------------------------------------------------------------

    def node(self, schema: t.Any, walk: _Walk) -> t.Any:
        """``schema`` as the event needs it: the same object if nothing changes."""
        serialization = schema.get("serialization")
        if serialization is not None:
            delegates = serialization.get("type") == "function-wrap"  # it may call the node's
            walk = walk._replace(written=True, replaced=walk.replaced or not delegates)
        method = getattr(self, "_" + str(schema.get("type")).replace("-", "_"), None)
        freezes = self.freezes
        built = self.children(schema, walk) if method is None else method(schema, walk)
        if not walk.rewrite or serialization is None:
            return built if walk.rewrite else schema
        if self.freezes > freezes and serialization.get("type") == "function-wrap":
            # Its function may look at the container's type (pydantic's Sequence serializer
            # does, and writes a FrozenList as is, skipping its items' serializers): it
            # gets the plain container.
            write = functools.partial(_through_thawed, serialization["function"])
            serialization = {**serialization, "function": write}
            built = {**built, "serialization": serialization}
        return built

    def children(self, schema: t.Any, walk: _Walk) -> t.Any:
        changed: dict[str, t.Any] = {}
        for key in _SCHEMA_KEYS:
            child = schema.get(key)
            if isinstance(child, dict) and "type" in child:
                new = self.node(child, walk)
                if new is not child:
                    changed[key] = new
        for key in _SCHEMA_LISTS:
            child = schema.get(key)
            if isinstance(child, list):
                new_list = [self.item(item, walk) for item in child]
                if any(a is not b for a, b in zip(new_list, child, strict=True)):
                    changed[key] = new_list
            elif isinstance(child, dict) and "type" not in child:  # fields, tagged choices
                new_map = {name: self.node(item, walk) for name, item in child.items()}
                if any(new_map[name] is not item for name, item in child.items()):
                    changed[key] = new_map
        return {**schema, **changed} if changed else schema

    def item(self, item: t.Any, walk: _Walk) -> t.Any:
        if isinstance(item, tuple):  # (schema, label) in a union
            new = self.node(item[0], walk)
            return item if new is item[0] else (new, *item[1:])
        return self.node(item, walk)

    # -- the event and nested models --------------------------------------------------------

    def _model(self, schema: t.Any, walk: _Walk) -> t.Any:
        model = schema["cls"]
        rules = schema.get("config", {})
        if model is self.cls:
            return {**schema, "schema": self.fields(schema["schema"], walk._replace(rules=rules))}
        if issubclass(model, self.base):
            return schema  # checked when it was created
        if not model.model_config.get("frozen"):
            self.problem(
                walk,
                f"{model.__qualname__} is a pydantic model that is not frozen, so a handler "
                f"could change it for the handlers after it; give {model.__qualname__} "
                "model_config = ConfigDict(frozen=True)",
            )
        seen = self.temporals, self.converted
        self.nested(schema, walk, model, rules)
        return self.nested_offsets(schema, walk, seen)

    def nested_offsets(self, schema: t.Any, walk: _Walk, seen: tuple[int, int]) -> t.Any:
        """A nested model (or dataclass) that holds datetimes or times, checked for offsets
        with seconds once validated; ``seen`` is what the counts were before its fields."""
        if self.temporals == seen[0]:
            return schema
        return self.offsets(schema, walk, _offsets_in_whole_minutes, self.converted > seen[1])

    def offsets(
        self,
        schema: t.Any,
        walk: _Walk,
        check: c.Callable[[t.Any], t.Any],
        converted: bool,
    ) -> t.Any:
        """``schema`` followed by ``check``, which puts offsets with seconds in whole minutes.

        In JSON mode only where a validator may hand the schema Python values
        (``converted``, or ``walk.from_json`` false): JSON text carries no offset
        with seconds, so an event read from JSON is read without Python steps.
        """
        if not walk.rewrite:
            return schema
        checked = core_schema.no_info_after_validator_function(check, schema)
        if converted or not walk.from_json:
            return checked
        return core_schema.json_or_python_schema(json_schema=schema, python_schema=checked)

    def _dataclass(self, schema: t.Any, walk: _Walk) -> t.Any:
        model = schema["cls"]
        # The class's own flag: the schema's is the event's frozen=True, which instances
        # made elsewhere do not have.
        if not getattr(getattr(model, "__dataclass_params__", None), "frozen", False):
            self.problem(
                walk,
                f"{model.__qualname__} is a dataclass that is not frozen, so a handler could "
                "change it for the handlers after it; declare it @dataclass(frozen=True)",
            )
        seen = self.temporals, self.converted
        self.nested(schema, walk, model, schema.get("config", {}))
        return self.nested_offsets(schema, walk, seen)

    def nested(self, schema: t.Any, walk: _Walk, model: type, rules: t.Any) -> None:
        """Check a nested model or dataclass: it writes and reads JSON by its own config."""
        inner = walk._replace(
            where=f"{walk.where} ({model.__qualname__})",
            rules=rules,
            freeze=False,
            rewrite=False,
        )
        self.fields(schema["schema"], inner)

    def fields(self, schema: t.Any, walk: _Walk) -> t.Any:
        """The fields of a model (the event, or a nested model, checked only)."""
        if schema.get("type") not in ("model-fields", "dataclass-args"):
            return self.node(schema, walk)  # wrapped by a model validator
        own = walk.rewrite
        fields = schema["fields"]
        named = fields.items() if isinstance(fields, dict) else ((f["name"], f) for f in fields)
        built = {}
        keys: dict[str, str] = {}  # JSON key -> field
        for name, field in named:
            if own and name in _METADATA:
                built[name] = field
                continue
            where = f"{walk.where}.{name}" if own else f"{walk.where[:-1]}.{name})"
            here = walk._replace(where=where)
            self.check_field(name, field, here, keys)
            new = self.node(field["schema"], here)
            built[name] = field if new is field["schema"] else {**field, "schema": new}
        computed = set()
        for field in schema.get("computed_fields", ()):
            name = field["property_name"]
            key = field.get("alias") if walk.rules.get("serialize_by_alias") else None
            key = key or name
            if key in keys:
                self.problem(
                    walk,
                    f"the computed field {name!r} is written as {key!r}, which is also the "
                    f"JSON key of the field {keys[key]!r}; give one of them another alias",
                )
            if not own and walk.rules.get("extra_fields_behavior") == "forbid":
                self.problem(
                    walk,
                    f"the computed field {name!r} is written to JSON, and its model forbids "
                    "unknown fields, so it would refuse its own JSON; give the model "
                    "extra='ignore', or make the field a property without @computed_field",
                )
            computed.add(key)
            self.node(field["return_schema"], walk._replace(from_json=False))
        if not own:
            return schema
        result: t.Any = {**schema, "fields": built}
        if computed:
            result = core_schema.with_info_before_validator_function(
                _drop_computed(frozenset(computed)), result
            )
        return result

    def check_field(self, name: str, field: t.Any, walk: _Walk, keys: dict[str, str]) -> None:
        """A field must be written, under a JSON key it is read by, and no other field's."""
        if field.get("serialization_exclude") or field.get("serialization_exclude_if"):
            self.problem(
                walk,
                "it is excluded from serialization (exclude=True), so it would not come back "
                "from JSON; remove exclude=, and keep what must not be stored out of events",
            )
        rules = walk.rules
        alias = field.get("serialization_alias") if rules.get("serialize_by_alias") else None
        key = alias or name
        read = _read_keys(name, field.get("validation_alias"), rules)
        if key not in read:
            fix = (
                f"give it one alias for both (Field(alias={key!r})), or add {key!r} to its "
                "validation_alias (AliasChoices)"
                if alias or walk.rewrite
                else "give its model model_config = ConfigDict(frozen=True, "
                "serialize_by_alias=True), which writes fields under their aliases"
            )
            self.problem(
                walk,
                f"it is written to JSON as {key!r} but read only as "
                f"{' or '.join(map(repr, sorted(read)))}; {fix}",
            )
        if key in keys:
            self.problem(
                walk,
                f"it is written to JSON as {key!r}, like the field {keys[key]!r}; give one "
                "of them another alias",
            )
        keys[key] = name

    def _definition_ref(self, schema: t.Any, walk: _Walk) -> t.Any:
        ref = schema["schema_ref"]
        try:
            target = self.handler.resolve_ref_schema(schema)
        except LookupError:  # the class itself, or one being built: checked on its own
            return schema
        if not walk.rewrite or target.get("type") in ("model", "dataclass"):
            # Built by its own class: the reference stays, its schema is only checked.
            seen = self.temporals, self.converted
            if ref in self.checked:  # what it holds counts for each model that refers to it
                temporals, converted = self.checked[ref]
                self.temporals += temporals
                self.converted += converted
            else:
                self.checked[ref] = (False, False)  # while it is checked (it may refer to itself)
                self.node(target, walk._replace(rewrite=False))
                self.checked[ref] = (self.temporals > seen[0], self.converted > seen[1])
            return self.nested_offsets(schema, walk, seen)
        copy_ref = self.copies.get(ref)
        if copy_ref is None:  # a TypedDict, a recursive type: a copy made for the event
            copy_ref = self.copies[ref] = f"{ref}:eventbus"
            copy = self.node({k: v for k, v in target.items() if k != "ref"}, walk)
            self.definitions.append({**copy, "ref": copy_ref})
        return core_schema.definition_reference_schema(copy_ref)

    # -- containers -------------------------------------------------------------------------

    def _list(self, schema: t.Any, walk: _Walk) -> t.Any:
        return self.frozen(self.children(schema, walk), walk, FrozenList)

    def _set(self, schema: t.Any, walk: _Walk) -> t.Any:
        return self.frozen(self.children(schema, walk), walk, FrozenSet)

    def _dict(self, schema: t.Any, walk: _Walk) -> t.Any:
        keys = schema.get("keys_schema")
        shapes = None if keys is None else self.shapes(keys)
        if shapes and any(kind in ("null", "array", "object") for kind, _ in shapes):
            self.problem(
                walk,
                "its dict keys are not text, numbers or booleans, and JSON object keys are "
                "text that such keys cannot be read back from; use str keys, or a tuple of "
                "(key, value) pairs",
            )
        return self.frozen(self.children(schema, walk), walk, FrozenDict)

    def _typed_dict(self, schema: t.Any, walk: _Walk) -> t.Any:
        inner = walk._replace(rules=schema.get("config", walk.rules))
        return self.frozen(self.children(schema, inner), walk, FrozenDict)

    def frozen(self, schema: t.Any, walk: _Walk, kind: type) -> t.Any:
        if not walk.freeze:
            return schema
        self.freezes += 1
        return core_schema.no_info_after_validator_function(kind, schema)

    def _default(self, schema: t.Any, walk: _Walk) -> t.Any:
        freezes, temporals = self.freezes, self.temporals
        built = self.children(schema, walk)
        freeze, offsets = self.freezes > freezes, walk.rewrite and self.temporals > temporals
        if not (freeze or offsets):  # nothing to freeze or check in the default either
            return built
        # pydantic does not validate defaults: they get what validation does to values.
        if "default" in built:
            default = built["default"]
            if offsets:
                try:
                    default = _offsets_in_whole_minutes(default)
                except ValueError as error:
                    self.problem(walk, f"its default {error}")
            return {**built, "default": _deep_freeze(default) if freeze else default}
        if "default_factory" in built:
            factory = built["default_factory"]
            if offsets:
                factory = functools.partial(_checked_default, factory)
            if freeze:
                factory = functools.partial(_frozen_default, factory)
            return {**built, "default_factory": factory}
        return built

    def _deque(self, schema: t.Any, walk: _Walk) -> t.Any:
        if walk.freeze:
            self.problem(walk, f"it holds {_UNFREEZABLE[schema['type']]}")
        return self.children(schema, walk)

    _counter = _ordered_dict = _generator = _deque

    # -- values JSON cannot carry -----------------------------------------------------------

    def _bytes(self, schema: t.Any, walk: _Walk) -> t.Any:
        written, read = walk.rules.get("ser_json_bytes"), walk.rules.get("val_json_bytes")
        if not walk.replaced and (written != read or written not in ("base64", "hex")):
            self.problem(
                walk,
                "it holds bytes, which its model writes to JSON as UTF-8 text, so bytes that "
                "are not UTF-8 cannot be written; give the model model_config = "
                "ConfigDict(frozen=True, ser_json_bytes='base64', val_json_bytes='base64')",
            )
        return schema

    def _float(self, schema: t.Any, walk: _Walk) -> t.Any:
        allowed = schema.get("allow_inf_nan", walk.rules.get("allow_inf_nan", True))
        if allowed and not walk.replaced and walk.rules.get("ser_json_inf_nan") != "constants":
            self.problem(
                walk,
                "it holds a float, which its model writes to JSON as null when it is inf or "
                "nan, so it would not come back; give the model model_config = "
                "ConfigDict(frozen=True, ser_json_inf_nan='constants'), or the field "
                "Field(allow_inf_nan=False)",
            )
        return schema

    def _is_instance(self, schema: t.Any, walk: _Walk) -> t.Any:
        kind = schema.get("cls")
        if walk.freeze and isinstance(kind, type) and issubclass(kind, _MUTABLE_INSTANCES):
            self.problem(
                walk,
                f"it holds a {kind.__qualname__}, which handlers could change for each "
                "other; declare a list, dict or set (frozen by the event) or a tuple",
            )
            return schema
        return self._opaque(schema, walk)

    def _opaque(self, schema: t.Any, walk: _Walk) -> t.Any:
        kind = getattr(schema.get("cls"), "__qualname__", None)
        name = {"is-subclass": f"type[{kind}]", "callable": "Callable"}.get(schema["type"], kind)
        gaps = []
        if walk.from_json:
            gaps.append(f"read from JSON (it would get JSON text, not a {name})")
        if not walk.written:
            gaps.append("written to JSON")
        if gaps:
            self.problem(
                walk,
                f"its type {name} cannot be {' nor '.join(gaps)}, so the event would not come "
                f"back from a store or a broker; use a type pydantic serializes, or annotate "
                f"it: Annotated[{name}, PlainSerializer(to_text, return_type=str), "
                f"PlainValidator(from_text)]",
            )
        return schema

    _is_subclass = _callable = _opaque

    def _json_or_python(self, schema: t.Any, walk: _Walk) -> t.Any:
        json_schema = self.node(schema["json_schema"], walk)
        python = walk._replace(from_json=False)
        if schema["json_schema"].get("type") == "any":  # JsonValue: held as given, like Any
            python = python._replace(freeze=False)
        converted = self.converted
        python_schema = self.node(schema["python_schema"], python)
        self.converted = converted  # JSON mode never takes the Python branch
        if json_schema is schema["json_schema"] and python_schema is schema["python_schema"]:
            return schema
        return {**schema, "json_schema": json_schema, "python_schema": python_schema}

    def _function_before(self, schema: t.Any, walk: _Walk) -> t.Any:
        return self.children(schema, walk._replace(from_json=False))  # the function converts

    _function_wrap = _function_before

    def _chain(self, schema: t.Any, walk: _Walk) -> t.Any:
        steps = schema["steps"]
        later = walk._replace(from_json=False)  # each step gets the previous one's output
        new = [self.node(steps[0], walk), *(self.node(step, later) for step in steps[1:])]
        if all(a is b for a, b in zip(new, steps, strict=True)):
            return schema
        return {**schema, "steps": new}

    def _datetime(self, schema: t.Any, walk: _Walk) -> t.Any:
        if walk.replaced:  # written by a serializer of its own, which gets it as given
            return schema
        self.temporals += 1
        self.converted += not walk.from_json
        return self.offsets(schema, walk, _offset_in_whole_minutes, converted=False)

    _time = _datetime

    def _union(self, schema: t.Any, walk: _Walk) -> t.Any:
        choices = [item[0] if isinstance(item, tuple) else item for item in schema["choices"]]
        shapes = [self.shapes(choice) for choice in choices]
        clashes = (
            clash
            for i, first in enumerate(shapes)
            for second in shapes[i + 1 :]
            if (clash := _ambiguous(first, second))
        )
        clash = next(clashes, None)
        if clash:
            one, other, kind = clash
            self.problem(
                walk,
                f"its union holds {one.__qualname__} and {other.__qualname__}, which JSON "
                f"writes alike (as {kind}), so a value may come back as the other type; use "
                "one type, or a discriminated union (a Literal tag field in each model and "
                "Field(discriminator=...))",
            )
        return self.children(schema, walk)

    # -- JSON shapes ------------------------------------------------------------------------

    def shapes(self, schema: t.Any, seen: frozenset[str] = frozenset()) -> set[_Shape] | None:
        """How the values of ``schema`` look in JSON; None if that cannot be told."""
        kind = schema.get("type")
        simple = _SIMPLE_SHAPES.get(kind)
        if simple is not None:
            return {simple}
        if kind in ("model", "dataclass"):
            return {("object", schema["cls"])}
        if kind == "enum":
            values = {type(member.value) for member in schema["members"]}
            return {(_kind_of(value), schema["cls"]) for value in values}
        if kind == "literal":
            return {(_kind_of(type(value)), type(value)) for value in schema["expected"]}
        if kind == "nullable":
            inner = self.shapes(schema["schema"], seen)
            return None if inner is None else {("null", type(None)), *inner}
        if kind in ("union", "tagged-union"):
            items = schema["choices"]
            found: set[_Shape] = set()
            for item in items.values() if isinstance(items, dict) else items:
                inner = self.shapes(item[0] if isinstance(item, tuple) else item, seen)
                if inner is None:
                    return None
                found |= inner
            return found
        if kind == "definition-ref":
            ref = schema["schema_ref"]
            try:
                target = None if ref in seen else self.handler.resolve_ref_schema(schema)
            except LookupError:
                target = None
            return None if target is None else self.shapes(target, seen | {ref})
        inner_key = _INNER_SCHEMA.get(kind, "schema")
        if kind in _INNER_SCHEMA or str(kind).startswith("function-"):
            inner_schema = schema.get(inner_key)
            return None if inner_schema is None else self.shapes(inner_schema, seen)
        return None


_SCHEMA_KEYS: t.Final = (
    "schema",
    "items_schema",
    "keys_schema",
    "values_schema",
    "extras_schema",
    "extras_keys_schema",
    "lax_schema",
    "strict_schema",
    "var_args_schema",
    "var_kwargs_schema",
    "arguments_schema",
)
# Keys holding a list of schemas (or of fields, parameters), or a dict of them.
_SCHEMA_LISTS: t.Final = ("choices", "steps", "items_schema", "fields", "arguments_schema")
# The schema that says how a wrapper's values look in JSON.
_INNER_SCHEMA: t.Final = {
    "default": "schema",
    "json-or-python": "json_schema",
    "lax-or-strict": "lax_schema",
}


def _kind_of(value_type: type) -> str:
    if issubclass(value_type, bool):
        return "bool"
    if issubclass(value_type, int | float):
        return "number"
    if value_type is type(None):
        return "null"
    return "string"


def _ambiguous(
    first: set[_Shape] | None, second: set[_Shape] | None
) -> tuple[type, type, str] | None:
    """Two types of a union that JSON writes alike, and as what; None if JSON tells them apart."""
    if not first or not second:
        return None
    for kind, one in first:
        for other_kind, other in second:
            # JSON writes 1 and 1.0 apart, and pydantic reads each back as its own type.
            if kind == other_kind and one is not other and {one, other} != {int, float}:
                return one, other, f"{'an' if kind in ('array', 'object') else 'a'} {kind}"
    return None


def _read_keys(name: str, alias: t.Any, rules: t.Mapping[str, t.Any]) -> set[str]:
    """The JSON keys a field is read under (its name, and the flat keys of its alias)."""
    by_name = alias is None or rules.get("validate_by_name", False)
    keys = {name} if by_name else set()
    if not rules.get("validate_by_alias", True):
        return {name}
    choices = alias if isinstance(alias, list) and alias and isinstance(alias[0], list) else None
    for path in choices or [alias]:
        if isinstance(path, str):
            keys.add(path)
        elif isinstance(path, list) and len(path) == 1 and isinstance(path[0], str):
            keys.add(path[0])
    return keys


# -- why an event does not serialize -------------------------------------------------------


def _describe(event: Event) -> str:
    return f"{type(event).__qualname__} event {event.event_id}"


def _why_not_json(event: Event, error: Exception) -> str:
    """Which field does not serialize, why, and what to do, found by writing each alone."""
    serializer = event.__pydantic_serializer__
    for name in type(event).model_fields:
        try:
            serializer.to_json(event, include={name})
        except Exception as field_error:
            return f"{_describe(event)} cannot be written as JSON: {name}: " + _fix_for(
                getattr(event, name, None), field_error
            )
    return f"{_describe(event)} cannot be written as JSON: {error}"


def _fix_for(value: object, error: Exception) -> str:
    text = str(error)
    if "surrogates not allowed" in text:
        found = _surrogate_in(value)
        where = f" ({found!r})" if found else ""
        return (
            f"it holds text with a lone surrogate{where}, which UTF-8 and JSON cannot carry "
            "(os.fsdecode makes them of bytes that are not UTF-8); decode such names with "
            "errors='replace' (or os.fsencode(name).decode(errors='replace')), or keep the "
            "raw bytes in a bytes field"
        )
    if "depth" in text or "recursion" in text.lower():
        return (
            f"it is nested too deep for JSON ({text}); pydantic reads JSON nested at most "
            f"{JSON_DEPTH_LIMIT} levels deep: flatten it, or carry it as a JSON string"
        )
    return (
        f"{text}; give the field a type pydantic serializes (not Any holding such a value), "
        "or an annotated serializer and validator"
    )


def _surrogate_in(value: object, depth: int = 0) -> str | None:
    """The first lone surrogate in ``value``'s text, with a little context."""
    if isinstance(value, str):
        for index, char in enumerate(value):
            if "\ud800" <= char <= "\udfff":
                return value[max(0, index - 10) : index + 10]
        return None
    if depth > JSON_DEPTH_LIMIT:
        return None
    items: c.Iterable[object] = ()
    if isinstance(value, dict):
        items = (item for pair in value.items() for item in pair)
    elif isinstance(value, list | tuple | set | frozenset):
        items = value
    elif isinstance(value, BaseModel):
        items = value.__dict__.values()
    for item in items:
        found = _surrogate_in(item, depth + 1)
        if found:
            return found
    return None
