"""Events at their edges: every event that can be built comes back from JSON equal, or its
class is refused when it is created; metadata cannot be redefined; events are immutable."""

from __future__ import annotations

import asyncio
import collections
import collections.abc as c
import copy
import dataclasses
import datetime as dt
import decimal
import enum
import json
import os
import pickle
import re
import typing as t
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pydantic_core
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    computed_field,
    create_model,
    field_serializer,
    field_validator,
)
from typing_extensions import TypedDict

from eventbus import Event, EventBus, UnknownEventTypeError
from eventbus.events import (
    JSON_DEPTH_LIMIT,
    EventSerializationError,
    FrozenDict,
    FrozenList,
    FrozenSet,
)

# A historic offset with seconds: Asia/Aden's local mean time (+02:59:54) in 1950.
ADEN = timezone(timedelta(hours=2, minutes=59, seconds=54))
T0 = datetime(2024, 5, 17, 9, 30, tzinfo=UTC)


def define(name: str, /, **options: t.Any) -> t.Any:
    """A class made by pydantic's create_model: an Event unless ``base=`` says otherwise,
    fields as (annotation, default) pairs."""
    options.setdefault("base", Event)
    return t.cast(t.Any, create_model)(name, __base__=options.pop("base"), **options)


def of_type(origin: t.Any, *args: t.Any) -> t.Any:
    """``origin[args]`` for annotations built at run time (list of X, X | None, ...)."""
    return origin[args[0] if len(args) == 1 else args]


E = t.TypeVar("E", bound=Event)


def round_trip(event: E) -> E:
    """The event after to_json/from_json, checked to be what model_dump_json writes too."""
    text = event.to_json()
    assert text == event.model_dump_json()
    back = type(event).from_json(event.event_type, text)
    assert type(back) is type(event)
    return back


class Opaque:
    """A type pydantic knows nothing about (allowed by arbitrary_types_allowed)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


def opaque_from(value: object) -> Opaque:
    return value if isinstance(value, Opaque) else Opaque(str(value))


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


# -- aliases ------------------------------------------------------------------------------


class Aliased(Event):
    cart_id: str = Field(alias="cartId")
    sku: str = Field(validation_alias=AliasChoices("sku", "SKU"))


def test_aliased_fields_are_written_by_alias_and_read_by_alias_or_name() -> None:
    by_alias = Aliased(cartId="c1", SKU="A-1")  # type: ignore[call-arg]
    by_name = Aliased(cart_id="c1", sku="A-1")
    assert (by_alias.cart_id, by_alias.sku) == (by_name.cart_id, by_name.sku) == ("c1", "A-1")
    data = json.loads(by_alias.to_json())
    assert data["cartId"] == "c1"
    assert "cart_id" not in data
    assert data["sku"] == "A-1"
    assert round_trip(by_alias) == by_alias
    # JSON written by others under either name is read too
    assert Aliased.model_validate_json('{"cart_id": "c2", "SKU": "B"}').cart_id == "c2"


def test_an_alias_that_writes_a_key_it_does_not_read_is_refused_at_class_creation() -> None:
    with pytest.raises(TypeError, match=r"Lopsided\.sku: it is written to JSON as 'S'") as info:

        class Lopsided(Event):
            sku: str = Field(serialization_alias="S", validation_alias="V")

    assert "AliasChoices" in str(info.value)
    assert "Field(alias='S')" in str(info.value)
    with pytest.raises(UnknownEventTypeError):
        Event.class_for(f"{__name__}.Lopsided")

    class Covered(Event):  # the written key among the choices: fine
        sku: str = Field(serialization_alias="S", validation_alias=AliasChoices("V", "S"))

    event = Covered(V="x")  # type: ignore[call-arg]
    assert round_trip(event) == event


def test_two_fields_written_under_one_key_are_refused() -> None:
    with pytest.raises(
        TypeError, match=r"Twice\.b: it is written to JSON as 'a', like the field 'a'"
    ):

        class Twice(Event):
            a: int
            b: int = Field(alias="a")


# -- computed fields ----------------------------------------------------------------------


class Priced(Event):
    cents: int
    quantity: int

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total(self) -> int:
        return self.cents * self.quantity


def test_computed_fields_are_written_and_ignored_when_read_back() -> None:
    event = Priced(cents=250, quantity=3)
    assert json.loads(event.to_json())["total"] == 750
    assert round_trip(event) == event
    # read back from JSON it is computed again: a stale value in the JSON does not matter
    stale = Priced.model_validate_json('{"cents": 2, "quantity": 2, "total": 999}')
    assert stale.total == 4


def test_a_computed_field_is_still_refused_as_an_argument() -> None:
    with pytest.raises(ValidationError, match="total"):
        Priced(cents=1, quantity=1, total=5)  # type: ignore[call-arg]


def test_a_computed_field_written_under_a_fields_key_is_refused() -> None:
    with pytest.raises(TypeError, match=r"computed field 'doubled' is written as 'n'"):

        class Clash(Event):
            n: int

            @computed_field(alias="n")  # type: ignore[prop-decorator]
            @property
            def doubled(self) -> int:
                return 2 * self.n


# -- bytes --------------------------------------------------------------------------------


class Blob(Event):
    data: bytes
    maybe: bytes | None = None


@pytest.mark.parametrize("data", [b"\xff\x00\xfe", b"plain text", b"", bytes(range(256))])
def test_bytes_are_written_as_url_safe_base64_and_come_back(data: bytes) -> None:
    event = Blob(data=data, maybe=data)
    written = json.loads(event.to_json())
    assert written["data"] == pydantic_core.to_jsonable_python(data, bytes_mode="base64")
    assert "+" not in written["data"]
    assert "/" not in written["data"]
    assert round_trip(event) == event


def test_text_compatible_bytes_are_base64_too() -> None:
    """Even UTF-8 bytes are base64: the JSON of b"abc" is "YWJj", not "abc"."""
    assert json.loads(Blob(data=b"abc").to_json())["data"] == "YWJj"


@pytest.mark.parametrize(
    "annotation", [bytes | str, str | bytes, bytes | str | None, list[bytes | str]]
)
def test_a_union_of_bytes_and_str_is_refused(annotation: object) -> None:
    with pytest.raises(TypeError, match=r"\.value: its union holds (bytes and str|str and bytes)"):
        define("BytesOrText", value=(annotation, ...))


# -- unions that JSON cannot tell apart ----------------------------------------------------


class Card(BaseModel):
    model_config = ConfigDict(frozen=True)
    number: str


class Cash(BaseModel):
    model_config = ConfigDict(frozen=True)
    number: str = ""
    currency: str = "EUR"


@pytest.mark.parametrize(
    ("annotation", "names"),
    [
        (str | datetime, "str and datetime"),
        (datetime | str, "datetime and str"),
        (str | uuid.UUID, "str and UUID"),
        (str | decimal.Decimal, "str and Decimal"),
        (Colour | str, "Colour and str"),
        (dt.date | datetime, "date and datetime"),
        (list[int] | tuple[int, ...], "list and tuple"),
        (Card | Cash, "Card and Cash"),
        (dict[str, str] | Card, "dict and Card"),
    ],
)
def test_a_union_of_types_json_writes_alike_is_refused(annotation: object, names: str) -> None:
    with pytest.raises(TypeError, match=re.escape(f"its union holds {names}")) as info:
        define("Ambiguous", value=(annotation, ...))
    assert "discriminat" in str(info.value)


class Tagged(BaseModel):
    model_config = ConfigDict(frozen=True)
    kind: t.Literal["tagged"] = "tagged"
    number: str


class Other(BaseModel):
    model_config = ConfigDict(frozen=True)
    kind: t.Literal["other"] = "other"
    number: str


class Distinct(Event):
    number: int | float
    flag: bool | int
    name: str | int | None
    word: t.Literal["a", "b"] | str
    payment: Tagged | Other = Field(discriminator="kind")


@pytest.mark.parametrize(
    "values",
    [
        {"number": 1, "flag": True, "name": "1", "word": "a", "payment": Tagged(number="x")},
        {"number": 1.0, "flag": 1, "name": 1, "word": "z", "payment": Other(number="y")},
        {"number": -0.0, "flag": False, "name": None, "word": "", "payment": Other(number="")},
    ],
)
def test_unions_json_tells_apart_come_back_as_the_same_types(values: dict[str, t.Any]) -> None:
    event = Distinct(**values)
    back = round_trip(event)
    assert back == event
    assert [type(getattr(back, name)) for name in values] == [type(v) for v in values.values()]


@pytest.mark.parametrize(
    "annotation",
    [dict[tuple[int, int], str], dict[int | None, str], dict[frozenset[int], str]],
)
def test_dict_keys_that_json_cannot_carry_are_refused(annotation: object) -> None:
    with pytest.raises(TypeError, match=r"\.value: its dict keys are not text"):
        define("OddKeys", value=(annotation, ...))


class Keys(Event):
    by_text: dict[str, int]
    by_int: dict[int, str]
    by_float: dict[float, str]
    by_flag: dict[bool, str]
    by_id: dict[uuid.UUID, str]
    by_time: dict[datetime, str]
    by_bytes: dict[bytes, str]
    by_colour: dict[Colour, str]


def test_dict_keys_json_can_carry_come_back() -> None:
    event = Keys(
        by_text={"a": 1},
        by_int={-1: "a"},
        by_float={1.5: "b"},
        by_flag={True: "c"},
        by_id={uuid.UUID(int=7): "d"},
        by_time={datetime(2024, 5, 1, tzinfo=ADEN): "e"},
        by_bytes={b"\xff": "f"},
        by_colour={Colour.RED: "g"},
    )
    assert round_trip(event) == event


# -- types JSON cannot carry ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotation", "missing"),
    [
        (Opaque, "cannot be read from JSON (it would get JSON text, not a Opaque) nor written"),
        (t.Annotated[Opaque, PlainSerializer(lambda o: o.text, return_type=str)], "read from"),
        (list[Opaque], "read from JSON"),
        (type[int], "its type type[int] cannot be read from JSON"),
        (t.Callable[[int], int], "its type Callable cannot be read from JSON"),
    ],
)
def test_a_type_json_cannot_carry_is_refused_at_class_creation(
    annotation: object, missing: str
) -> None:
    with pytest.raises(TypeError, match=r"\.thing: its type") as info:
        define(
            "Arbitrary",
            __config__=ConfigDict(arbitrary_types_allowed=True),
            thing=(annotation, ...),
        )
    message = str(info.value)
    assert missing in message
    assert "PlainSerializer" in message
    assert "PlainValidator" in message


OpaqueText = t.Annotated[
    Opaque,
    PlainSerializer(lambda o: o.text, return_type=str),
    PlainValidator(opaque_from),
]


class Custom(Event):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    thing: OpaqueText


def test_a_custom_type_with_a_serializer_and_a_validator_comes_back() -> None:
    event = Custom(thing=Opaque("hello"))
    assert json.loads(event.to_json())["thing"] == "hello"
    assert round_trip(event) == event


class Abstract(Event):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    whens: c.Sequence[datetime]
    things: c.Sequence[OpaqueText] = ()
    numbers: c.MutableSet[int] = set()  # noqa: RUF012 (a field: the event freezes it)


def test_abstract_containers_are_frozen_and_still_written_item_by_item() -> None:
    """pydantic writes a Sequence by the type of its value: it must see a list, not a
    FrozenList, or it skips the items' own serializers."""
    event = Abstract(whens=[datetime(1950, 1, 1, tzinfo=ADEN)], things=[Opaque("a")], numbers={1})
    assert type(event.whens) is FrozenList
    assert type(event.numbers) is FrozenSet
    written = json.loads(event.to_json())
    assert written["whens"] == ["1949-12-31T21:00:06Z"]
    assert written["things"] == ["a"]
    assert round_trip(event) == event


def test_a_field_excluded_from_serialization_is_refused() -> None:
    with pytest.raises(TypeError, match=r"Secretive\.token: it is excluded from serialization"):

        class Secretive(Event):
            token: str = Field(exclude=True)


# -- depth -----------------------------------------------------------------------------------


class Loose(Event):
    data: t.Any = None


def nested(depth: int) -> list[t.Any]:
    value: list[t.Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_json_depth_limit_is_pydantics() -> None:
    """How deep pydantic reads JSON; the event's object is one level of it."""
    at_limit = json.dumps(nested(JSON_DEPTH_LIMIT))
    pydantic_core.from_json(at_limit)
    with pytest.raises(ValueError, match="recursion limit"):
        pydantic_core.from_json(f"[{at_limit}]")


def test_a_payload_just_inside_the_depth_limit_comes_back() -> None:
    event = Loose(data=nested(JSON_DEPTH_LIMIT - 1))
    assert round_trip(event) == event


@pytest.mark.parametrize("depth", [JSON_DEPTH_LIMIT, JSON_DEPTH_LIMIT + 40, 2_000])
def test_a_payload_nested_too_deep_is_refused_by_to_json(depth: int) -> None:
    event = Loose(data=nested(depth))  # construction accepts it: the bus needs no JSON
    with pytest.raises(EventSerializationError, match=rf"{JSON_DEPTH_LIMIT} levels deep") as info:
        event.to_json()
    assert str(event.event_id) in str(info.value)
    assert "flatten" in str(info.value)


# -- text, floats and times -------------------------------------------------------------------


class Named(Event):
    name: str
    names: tuple[str, ...] = ()


def test_text_with_a_lone_surrogate_is_refused_by_to_json_naming_the_field() -> None:
    odd = os.fsdecode(b"caf\xff")  # "caf\udcff", as os.fsdecode makes of a non-UTF-8 name
    pair = "caf\udbff\udfff"  # two surrogates are still two lone ones in a str
    cases = [(Named(name=odd), "name"), (Named(name="ok", names=("x", odd)), "names")]
    with pytest.raises(EventSerializationError, match="lone surrogate"):
        Named(name=pair).to_json()
    for event, field in cases:
        with pytest.raises(EventSerializationError, match=rf": {field}: it holds text") as info:
            event.to_json()
        message = str(info.value)
        assert "lone surrogate ('caf\\udcff')" in message
        assert "errors='replace'" in message
        assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("text", ["\x00", "\u2028\u2029", "😀", "\ufeff", '"\\/'])
def test_other_odd_text_comes_back(text: str) -> None:
    event = Named(name=text, names=(text,))
    assert round_trip(event) == event


class Timed(Event):
    when: datetime
    day: dt.date | None = None
    at: dt.time | None = None
    span: timedelta | None = None
    history: tuple[datetime, ...] = ()
    by_name: dict[str, datetime] = {}  # noqa: RUF012 (a field: the event freezes it)


@pytest.mark.parametrize(
    "zone",
    [
        ADEN,
        timezone(timedelta(minutes=19, seconds=32)),  # Amsterdam until 1937
        timezone(-timedelta(hours=4, minutes=56, seconds=2)),  # New York before 1883
        timezone(-timedelta(seconds=1)),
    ],
)
def test_offsets_with_seconds_come_back_as_the_same_instant(zone: timezone) -> None:
    when = datetime(1950, 6, 1, 12, 30, 15, 123456, tzinfo=zone)
    event = Timed(
        when=when,
        at=dt.time(12, 30, tzinfo=zone),
        history=(when, when.replace(tzinfo=UTC)),
        by_name={"then": when},
    )
    back = round_trip(event)
    assert back == event
    assert back.when.astimezone(UTC) == when.astimezone(UTC)
    assert json.loads(event.to_json())["when"].endswith("Z")  # written in UTC


def test_offsets_of_whole_minutes_are_written_as_they_are() -> None:
    zone = timezone(timedelta(hours=5, minutes=45))  # Nepal
    event = Timed(when=datetime(2024, 1, 1, tzinfo=zone), span=timedelta(microseconds=1))
    assert json.loads(event.to_json())["when"] == "2024-01-01T00:00:00+05:45"
    assert round_trip(event) == event


def test_offsets_with_seconds_are_held_in_whole_minutes_once_constructed() -> None:
    """Put in whole minutes when the event is validated, so that pydantic writes it alone."""
    when = datetime(1950, 6, 1, 12, 30, 15, 123456, tzinfo=ADEN)
    at = dt.time(12, 30, tzinfo=ADEN)
    given = {"when": when, "at": at, "history": [when], "by_name": {"then": when}}
    for event in (Timed(**given), Timed.model_validate(given)):
        assert event.when == when
        assert event.when.utcoffset() == timedelta(0)
        assert event.when.isoformat() == "1950-06-01T09:30:21.123456+00:00"
        assert event.at == at
        assert event.at is not None
        assert event.at.utcoffset() == timedelta(hours=2, minutes=59)  # the seconds dropped
        assert event.at.isoformat() == "12:29:06+02:59"
        assert event.history[0].utcoffset() == timedelta(0)
        assert event.by_name["then"].utcoffset() == timedelta(0)
        assert type(event.by_name) is FrozenDict  # still frozen


def test_whole_minute_offsets_and_naive_values_are_held_as_given() -> None:
    zone = timezone(timedelta(hours=5, minutes=45))
    when, naive, at = datetime(2024, 1, 1, tzinfo=zone), datetime(2024, 1, 1), dt.time(9)
    event = Timed(when=when, at=at, history=(naive, when))
    assert event.when is when
    assert event.at is at
    assert event.history[0] is naive
    assert event.history[1] is when
    assert Timed(when=naive).when is naive


def test_defaults_with_offsets_with_seconds_are_held_in_whole_minutes() -> None:
    """pydantic does not validate defaults: the event checks them as it checks values."""
    lmt = datetime(1950, 1, 1, tzinfo=ADEN)

    class Defaults(Event):
        when: datetime = lmt
        history: list[datetime] = Field(default_factory=lambda: [lmt])
        at: dt.time = Field(default_factory=lambda: dt.time(9, tzinfo=ADEN))

    event = Defaults()
    assert event.when == lmt
    assert event.when.utcoffset() == timedelta(0)
    assert event.history[0].utcoffset() == timedelta(0)
    assert type(event.history) is FrozenList  # still frozen
    assert event.at.utcoffset() == timedelta(hours=2, minutes=59)
    assert round_trip(event) == event
    with pytest.raises(TypeError, match=r"Early\.when: its default .* outside the years"):

        class Early(Event):
            when: datetime = datetime(1, 1, 1, tzinfo=ADEN)


def test_an_offset_with_seconds_that_cannot_be_held_is_refused_at_construction() -> None:
    with pytest.raises(ValidationError, match=r"outside the years 1 to 9999") as info:
        Timed(when=datetime(1, 1, 1, tzinfo=ADEN))  # in UTC, before year 1
    assert "give it an offset of whole minutes" in str(info.value)
    edge = dt.time(23, 59, 59, 999999, tzinfo=timezone(-timedelta(seconds=86399)))
    with pytest.raises(ValidationError, match=r"at\n.* within its day; give it an offset"):
        Timed(when=T0, at=edge)


def test_datetimes_a_validator_makes_of_json_are_held_in_whole_minutes() -> None:
    """JSON text cannot carry an offset with seconds, but a validator's output can."""

    def in_aden(text: object) -> object:  # local times without an offset are Aden's
        parsed = datetime.fromisoformat(str(text))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=ADEN)

    Local = t.Annotated[datetime, BeforeValidator(in_aden)]

    class Reading(BaseModel):
        model_config = ConfigDict(frozen=True)
        taken: Local

    class Read(Event):
        when: Local
        reading: Reading

    text = '{"when": "1950-01-01T00:00:00", "reading": {"taken": "1950-01-01T00:00:00"}}'
    event = Read.model_validate_json(text)
    assert event.when.utcoffset() == timedelta(0)
    assert event.reading.taken.utcoffset() == timedelta(0)
    assert event.when == datetime(1950, 1, 1, tzinfo=ADEN)
    assert round_trip(event) == event


def test_a_time_with_seconds_in_its_offset_keeps_its_day() -> None:
    """Times compare without wrapping at midnight: they move to a whole-minute offset instead."""
    late = dt.time(23, 59, 50, tzinfo=timezone(-timedelta(hours=1, seconds=18)))
    early = dt.time(0, 0, 5, tzinfo=timezone(timedelta(hours=1, seconds=18)))
    for at in (late, early):
        event = Timed(when=T0, at=at)
        back = round_trip(event)
        assert back.at == at
        offset = back.at.utcoffset() if back.at else None
        assert offset is not None
        assert offset % timedelta(minutes=1) == timedelta(0)


def test_floats_inf_and_nan_come_back() -> None:
    class Measured(Event):
        values: tuple[float, ...]

    event = Measured(values=(float("inf"), float("-inf"), 1e-320, -0.0))
    assert round_trip(event) == event


# -- nested models ---------------------------------------------------------------------------


class Line(BaseModel):
    model_config = ConfigDict(
        frozen=True,
        ser_json_bytes="base64",
        val_json_bytes="base64",
        ser_json_inf_nan="constants",
        serialize_by_alias=True,
    )
    sku: str = Field(alias="SKU")
    weight: float = 1.0
    label: bytes = b""
    packed_at: datetime | None = None


@dataclasses.dataclass(frozen=True)
class Slot:
    opens: dt.time
    raw: bytes = b""


class Parcel(Event):
    lines: tuple[Line, ...]
    first: Line | None = None
    slot: Slot | None = None


def test_nested_models_and_dataclasses_come_back() -> None:
    line = Line(
        SKU="A-1", weight=float("inf"), label=b"\xff", packed_at=datetime(1950, 1, 1, tzinfo=ADEN)
    )
    event = Parcel(
        lines=(line, Line(SKU="B")), first=line, slot=Slot(dt.time(9, tzinfo=ADEN), b"\x00")
    )
    back = round_trip(event)
    assert back == event
    assert json.loads(event.to_json())["lines"][0]["packed_at"].endswith("Z")
    # Held in whole minutes once constructed: copies of the models given, equal to them.
    assert event.first == line
    assert event.first is not line
    assert event.first is not None
    assert event.first.packed_at is not None
    assert event.first.packed_at.utcoffset() == timedelta(0)
    assert event.slot is not None
    assert event.slot.opens.utcoffset() == timedelta(hours=2, minutes=59)
    plain = Line(SKU="C", packed_at=T0)
    assert Parcel(lines=(plain,), first=plain).first is plain  # nothing to change: as given


class Stamp(BaseModel):
    model_config = ConfigDict(frozen=True)
    at: datetime


class Stamps(BaseModel):
    model_config = ConfigDict(frozen=True)
    first: Stamp
    last: Stamp | None = None  # two fields: pydantic refers to Stamp by a definition
    seen: frozenset[datetime] = frozenset()


def test_a_model_nested_in_two_places_is_held_in_whole_minutes_in_both() -> None:
    class Stamped(Event):
        stamp: Stamp
        stamps: Stamps

    stamp = Stamp(at=datetime(1950, 1, 1, tzinfo=ADEN))
    event = Stamped(stamp=stamp, stamps=Stamps(first=stamp, seen=frozenset({stamp.at})))
    assert event.stamp.at.utcoffset() == timedelta(0)
    assert event.stamps.first.at.utcoffset() == timedelta(0)
    assert [when.utcoffset() for when in event.stamps.seen] == [timedelta(0)]
    back = round_trip(event)
    assert back == event
    assert back.stamps.first.at == stamp.at


@pytest.mark.parametrize(
    ("config", "field", "problem", "fix"),
    [
        ({}, ("label", bytes), "it holds bytes", "ser_json_bytes='base64'"),
        ({}, ("weight", float), "it holds a float", "ser_json_inf_nan='constants'"),
        (
            {},
            ("sku", t.Annotated[str, Field(alias="SKU")]),
            "it is written to JSON as 'sku' but read only as 'SKU'",
            "serialize_by_alias=True",
        ),
    ],
)
def test_a_nested_model_that_would_not_come_back_is_refused(
    config: dict[str, t.Any], field: tuple[str, t.Any], problem: str, fix: str
) -> None:
    name, annotation = field
    inner = define(
        "Inner",
        base=BaseModel,
        __config__={"frozen": True, **config},
        **{name: (annotation, ...)},
    )
    with pytest.raises(
        TypeError, match=re.escape(f"Outer.inner (Inner.{name}): {problem}")
    ) as info:
        define("Outer", inner=(inner, ...))
    assert fix in str(info.value)


def test_a_nested_float_that_cannot_be_inf_or_nan_needs_no_config() -> None:
    inner = define(
        "Finite",
        base=BaseModel,
        __config__=ConfigDict(frozen=True),
        x=(float, Field(allow_inf_nan=False)),
    )
    outer = define("Holder", inner=(inner, ...))
    event = outer(inner=inner(x=1.5))
    assert round_trip(event) == event


def test_a_nested_model_with_a_computed_field_that_forbids_extras_is_refused() -> None:
    class Strict(BaseModel):
        model_config = ConfigDict(frozen=True, extra="forbid")
        n: int

        @computed_field  # type: ignore[prop-decorator]
        @property
        def twice(self) -> int:
            return 2 * self.n

    with pytest.raises(TypeError, match=r"the computed field 'twice' is written to JSON"):

        class HoldsStrict(Event):
            strict: Strict

    class Lenient(BaseModel):  # extras ignored: the computed value is dropped when read
        model_config = ConfigDict(frozen=True)
        n: int

        @computed_field  # type: ignore[prop-decorator]
        @property
        def twice(self) -> int:
            return 2 * self.n

    class HoldsLenient(Event):
        lenient: Lenient

    event = HoldsLenient(lenient=Lenient(n=2))
    assert round_trip(event) == event


# -- metadata cannot be redefined ------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "annotation", "default"),
    [
        ("event_id", str, "fixed"),
        ("occurred_at", str, "yesterday"),
        ("correlation_id", str | None, None),
        ("causation_id", uuid.UUID | None, None),  # even with the same type
    ],
)
def test_redefining_a_metadata_field_is_refused_at_class_creation(
    field: str, annotation: object, default: object
) -> None:
    with pytest.raises(
        TypeError, match=rf"Redefines redefines the metadata field '{field}'"
    ) as info:
        define("Redefines", **{field: (annotation, default)})
    assert "another name" in str(info.value)
    with pytest.raises(UnknownEventTypeError):
        Event.class_for(f"{__name__}.Redefines")


def test_redefining_metadata_in_a_base_or_a_mixin_is_refused() -> None:
    class Base(Event):
        pass

    with pytest.raises(TypeError, match=r"Child redefines the metadata field 'event_id'"):

        class Child(Base):
            event_id: str = "fixed"  # type: ignore[assignment]

    class Mixin(BaseModel):
        event_id: str = "fixed"

    with pytest.raises(TypeError, match=r"Mixed redefines .* 'event_id' \(in its base .*Mixin\)"):

        class Mixed(Mixin, Event):
            pass


def test_children_of_a_subclass_keep_uuid_metadata() -> None:
    class Parent(Event):
        pass

    class Kid(Parent):
        pass

    for name in ("event_id", "correlation_id", "causation_id"):
        assert Kid.model_fields[name].annotation == Event.model_fields[name].annotation
    with pytest.raises(ValidationError, match="causation_id"):
        Kid.model_validate({"causation_id": "not a uuid"})


def test_validating_or_serializing_metadata_is_refused() -> None:
    with pytest.raises(TypeError, match=r"Checks\._check is a field validator of the metadata"):

        class Checks(Event):
            @field_validator("correlation_id")
            @classmethod
            def _check(cls, value: uuid.UUID | None) -> uuid.UUID | None:
                return value

    with pytest.raises(TypeError, match=r"Writes\._write is a field serializer of .* 'event_id'"):

        class Writes(Event):
            @field_serializer("event_id")
            def _write(self, value: uuid.UUID) -> str:
                return value.hex

    class AllFields(Event):  # a validator of every field is the class's own business
        name: str

        @field_validator("*")
        @classmethod
        def _strip(cls, value: t.Any) -> t.Any:
            return value.strip() if isinstance(value, str) else value

    assert AllFields(name=" x ").name == "x"


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("frozen", False),
        ("extra", "allow"),
        ("extra", "ignore"),
        ("ser_json_bytes", "utf8"),
        ("val_json_bytes", "utf8"),
        ("ser_json_inf_nan", "null"),
        ("ser_json_timedelta", "float"),
        ("serialize_by_alias", False),
        ("validate_by_alias", False),
    ],
)
def test_a_config_that_undoes_what_events_rest_on_is_refused(setting: str, value: object) -> None:
    with pytest.raises(
        TypeError, match=rf"Configured\.model_config sets {setting}={value!r}"
    ) as info:
        define("Configured", __config__={setting: value})
    assert f"remove '{setting}'" in str(info.value)


def test_a_config_that_keeps_what_events_rest_on_is_accepted() -> None:
    class Tidy(Event):
        model_config = ConfigDict(str_strip_whitespace=True, frozen=True, extra="forbid")
        name: str

    assert Tidy(name=" x ").name == "x"


# -- immutability ----------------------------------------------------------------------------


class Basket(Event):
    tags: list[str]
    grid: list[list[int]] = [[0]]  # noqa: RUF012 (a field: the event freezes it)
    scores: dict[str, set[str]] = Field(default_factory=dict)
    seen: set[int] = set()  # noqa: RUF012 (a field: the event freezes it)
    optional: list[int] | None = None
    sequence: c.Sequence[int] = ()


class Address(TypedDict):
    street: str
    lines: list[str]


class Posted(Event):
    address: Address


@pytest.mark.parametrize(
    "change",
    [
        lambda e: e.tags.append("x"),
        lambda e: e.tags.extend(["x"]),
        lambda e: e.tags.insert(0, "x"),
        lambda e: e.tags.pop(),
        lambda e: e.tags.remove("a"),
        lambda e: e.tags.clear(),
        lambda e: e.tags.sort(),
        lambda e: e.tags.reverse(),
        lambda e: e.tags.__setitem__(0, "x"),
        lambda e: e.tags.__delitem__(0),
        lambda e: e.tags.__iadd__(["x"]),
        lambda e: e.tags.__imul__(2),
        lambda e: e.grid[0].append(1),
        lambda e: e.scores.__setitem__("k", {"v"}),
        lambda e: e.scores.update(k={"v"}),
        lambda e: e.scores.pop("a"),
        lambda e: e.scores.popitem(),
        lambda e: e.scores.setdefault("k", set()),
        lambda e: e.scores.clear(),
        lambda e: e.scores.__delitem__("a"),
        lambda e: e.scores.__ior__({"k": set()}),
        lambda e: e.scores["a"].add("x"),
        lambda e: e.scores["a"].discard("v"),
        lambda e: e.seen.remove(1),
        lambda e: e.seen.pop(),
        lambda e: e.seen.update({2}),
        lambda e: e.seen.__ior__({2}),
        lambda e: e.seen.__iand__({2}),
        lambda e: e.seen.__isub__({1}),
        lambda e: e.seen.__ixor__({1}),
        lambda e: e.seen.intersection_update({2}),
        lambda e: e.seen.difference_update({1}),
        lambda e: e.seen.symmetric_difference_update({1}),
        lambda e: t.cast(list[int], e.optional).append(1),
        lambda e: t.cast(list[int], e.sequence).append(1),
    ],
)
def test_containers_of_an_event_cannot_be_changed(change: c.Callable[[t.Any], object]) -> None:
    event = Basket(
        tags=["a", "b"],
        grid=[[1, 2], [3]],
        scores={"a": {"v"}},
        seen={1},
        optional=[1],
        sequence=[1, 2],
    )
    before = event.model_dump()
    with pytest.raises(
        TypeError, match=r"cannot \w+\(\) a frozen (list|dict|set): events are immutable"
    ):
        change(event)
    assert event.model_dump() == before


def test_an_augmented_assignment_to_a_field_is_refused_without_changing_it() -> None:
    event = Basket(tags=["a"])
    with pytest.raises(TypeError, match="frozen list"):
        event.tags += ["b"]  # type: ignore[misc]
    assert event.tags == ["a"]


def test_frozen_containers_read_like_the_plain_ones() -> None:
    event = Basket(tags=["a", "b"], scores={"k": {"v"}}, seen={1, 2}, sequence=(1, 2))
    assert isinstance(event.tags, list)
    assert type(event.tags) is FrozenList
    assert isinstance(event.scores, dict)
    assert type(event.scores) is FrozenDict
    assert isinstance(event.seen, set)
    assert type(event.seen) is FrozenSet
    assert type(event.scores["k"]) is FrozenSet
    assert type(event.grid[0]) is FrozenList
    assert event.tags == ["a", "b"]
    assert event.scores == {"k": {"v"}}
    assert event.seen == {1, 2}
    assert t.cast(object, event.seen) == frozenset({1, 2})
    assert event.sequence == (1, 2)
    assert type(event.sequence) is tuple
    # copies are plain and changeable
    for plain in (event.tags[:], [*event.tags, "c"], event.tags.copy(), list(event.tags)):
        assert type(plain) is list
    assert type(event.scores | {"x": set()}) is dict
    assert type(event.scores.copy()) is dict
    assert type(event.seen | {3}) is set
    assert type(event.seen.copy()) is set
    assert repr(event.tags) == "['a', 'b']"
    assert repr(event.seen) == "{1, 2}"
    assert "tags=['a', 'b']" in repr(event)


def test_frozen_containers_survive_copy_pickle_and_hashing() -> None:
    event = Basket(tags=["a"], grid=[[1]], scores={"k": {"v"}}, seen={1})
    for again in (copy.copy(event), copy.deepcopy(event), pickle.loads(pickle.dumps(event))):
        assert again == event
        assert type(again.tags) is FrozenList
        assert type(again.scores["k"]) is FrozenSet
    assert hash(event) == hash(copy.deepcopy(event))  # events with containers are hashable
    assert len({event, copy.deepcopy(event)}) == 1


def test_defaults_are_frozen_too() -> None:
    first, second = Basket(tags=[]), Basket(tags=[])
    assert type(first.grid) is FrozenList
    assert type(first.grid[0]) is FrozenList
    assert type(first.scores) is FrozenDict
    assert type(first.seen) is FrozenSet
    assert first.grid is second.grid  # a frozen default can be shared
    with pytest.raises(TypeError, match="frozen"):
        first.grid[0].append(1)
    assert second.grid == [[0]]


def test_a_typed_dict_is_frozen() -> None:
    event = Posted(address={"street": "Main", "lines": ["1"]})
    assert type(event.address) is FrozenDict
    assert type(event.address["lines"]) is FrozenList
    with pytest.raises(TypeError, match="frozen dict"):
        event.address["street"] = "Side"
    assert round_trip(event) == event


def test_events_read_from_json_are_frozen() -> None:
    event = Basket(tags=["a"], scores={"k": {"v"}})
    back = round_trip(event)
    assert type(back.tags) is FrozenList
    assert type(back.scores["k"]) is FrozenSet
    assert type(Basket.model_validate(event.model_dump()).tags) is FrozenList


def test_what_is_not_frozen_any_and_unvalidated_copies() -> None:
    """Documented: Any holds what it is given; model_copy(update=) and model_construct skip
    validation, so they keep plain containers."""
    assert type(Loose(data=[1]).data) is list

    class Documents(Event):
        document: JsonValue = None
        pages: list[JsonValue] = []  # noqa: RUF012 (a field: the event freezes it)

    event_with_json = Documents(document={"a": [1]}, pages=[[1]])
    assert type(event_with_json.document) is dict
    assert type(event_with_json.pages) is FrozenList
    assert type(event_with_json.pages[0]) is list  # a JsonValue is held as given
    assert round_trip(event_with_json) == event_with_json
    event = Basket(tags=["a"])
    assert type(event.model_copy(update={"tags": ["b"]}).tags) is list
    assert type(Basket.model_construct(tags=["a"]).tags) is list
    # Nor are their offsets put in whole minutes (pydantic writes them without the seconds).
    lmt = datetime(1950, 1, 1, tzinfo=ADEN)
    assert Timed(when=T0).model_copy(update={"when": lmt}).when is lmt


@pytest.mark.parametrize(
    ("annotation", "what"),
    [
        (collections.deque[int], "a deque"),
        (collections.Counter[str], "a Counter"),
        (collections.OrderedDict[str, int], "an OrderedDict"),
        (collections.defaultdict[str, int], "a defaultdict"),
        (t.Iterable[int], "an iterator"),
        (dict[str, collections.deque[int]], "a deque"),
    ],
)
def test_containers_an_event_cannot_freeze_are_refused(annotation: object, what: str) -> None:
    with pytest.raises(TypeError, match=rf"Unfreezable\.value: it holds {what}"):
        define("Unfreezable", value=(annotation, ...))


class Loosened(BaseModel):
    sku: str


@dataclasses.dataclass
class Open:
    sku: str


@pytest.mark.parametrize(
    ("annotation", "fix"),
    [
        (Loosened, "give Loosened model_config = ConfigDict(frozen=True)"),
        (tuple[Loosened, ...], "give Loosened model_config = ConfigDict(frozen=True)"),
        (Open | None, "declare it @dataclass(frozen=True)"),
    ],
)
def test_a_nested_model_that_is_not_frozen_is_refused(annotation: object, fix: str) -> None:
    with pytest.raises(TypeError, match=r"HoldsOpen\.value: .* is not frozen") as info:
        define("HoldsOpen", value=(annotation, ...))
    assert fix in str(info.value)


class Shelf(BaseModel):
    """A nested model can freeze its own containers with the frozen types as annotations."""

    model_config = ConfigDict(frozen=True)
    skus: FrozenList[str]
    stock: FrozenDict[str, int] = FrozenDict()
    bins: FrozenSet[int] = FrozenSet()


class Stocked(Event):
    shelf: Shelf


def test_frozen_types_can_be_declared_in_nested_models() -> None:
    shelf = Shelf(skus=FrozenList(["a"]), stock=FrozenDict({"a": 1}), bins=FrozenSet({1}))
    event = Stocked(shelf=shelf)
    assert type(event.shelf.skus) is FrozenList
    assert type(event.shelf.stock) is FrozenDict
    assert type(event.shelf.bins) is FrozenSet
    with pytest.raises(TypeError, match="frozen"):
        event.shelf.skus.append("b")
    assert round_trip(event) == event
    assert Stocked.model_json_schema()["title"] == "Stocked"  # the types have JSON schemas


def python_functions(schema: object, mode: t.Literal["python", "json"]) -> list[str]:
    """The names of the Python functions that validating in ``mode`` may call."""
    functions: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if node.get("type") == "json-or-python":
                walk(node[f"{mode}_schema"])
                return
            if str(node.get("type", "")).startswith("function-"):
                function = node["function"]["function"]
                functions.append(getattr(function, "__name__", repr(function)))
            for key, value in node.items():
                if key != "serialization":  # how it is written: not run when it is built
                    walk(value)
        elif isinstance(node, list | tuple):
            for item in node:
                walk(item)

    walk(schema)
    return functions


class Plain(Event):
    cart_id: str
    quantity: int = 1
    when: datetime | None = None
    day: dt.date = dt.date(2024, 1, 1)
    at: dt.time | None = None


def test_an_event_without_containers_is_built_with_python_steps_for_offsets_only() -> None:
    """The hot path: freezing adds validators only where a field holds a container; a
    datetime or time gets one short Python check of its offset when built from Python
    values, and none when read from JSON."""
    schema = Plain.__pydantic_core_schema__
    assert python_functions(schema, "python") == [  # occurred_at's own, then when's and at's
        "_utc",
        "_offset_in_whole_minutes",
        "_offset_in_whole_minutes",
    ]
    assert python_functions(schema, "json") == ["_utc"]


def test_datetimes_are_read_from_json_without_python_steps() -> None:
    """JSON text cannot carry an offset with seconds: only Python values are checked."""

    class Log(BaseModel):
        model_config = ConfigDict(frozen=True)
        times: c.Sequence[datetime]  # a Python-only branch: JSON mode never takes it

    class Logged(Event):
        history: tuple[datetime, ...]
        log: Log
        stamps: Stamps

    schema = Logged.__pydantic_core_schema__
    assert python_functions(schema, "json") == ["_utc"]
    assert python_functions(schema, "python").count("_offsets_in_whole_minutes") == 2


def test_an_event_with_plain_datetimes_is_written_by_pydantic_alone() -> None:
    """No Python serializer: offsets with seconds were dealt with when it was validated."""

    def serializers(node: object) -> list[object]:
        if isinstance(node, dict):
            found = [node["serialization"]] if "serialization" in node else []
            return found + [s for value in node.values() for s in serializers(value)]
        if isinstance(node, list | tuple):
            return [s for item in node for s in serializers(item)]
        return []

    class Dated(Event):
        when: datetime
        history: tuple[datetime, ...] = ()
        at: dt.time | None = None
        stamp: Stamp | None = None

    for cls in (Plain, Dated, Timed):
        assert serializers(cls.__pydantic_core_schema__) == []
        assert "Function" not in repr(cls.__pydantic_serializer__)


@pytest.mark.parametrize("use_async", [False, True])
def test_a_handler_cannot_change_what_the_next_handler_sees(use_async: bool) -> None:
    bus = EventBus()
    seen: list[list[str]] = []

    @bus.subscribe(priority=1)
    def meddle(event: Basket) -> None:
        event.tags.append("meddled")

    @bus.subscribe
    async def read(event: Basket) -> None:
        seen.append(list(event.tags))

    event = Basket(tags=["a"])
    result = asyncio.run(bus.publish_async(event)) if use_async else bus.publish(event)
    assert seen == [["a"]]
    [letter] = result.dead_letters
    assert letter.error_type == "builtins.TypeError"
    assert "frozen list" in letter.error_message


# -- every event comes back equal --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Spec:
    """A field type and a strategy for its values."""

    annotation: t.Any
    values: st.SearchStrategy[t.Any]


TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=6)
OFFSETS = st.integers(min_value=-86_399, max_value=86_399).map(
    lambda s: timezone(timedelta(seconds=s))
)
ZONES: st.SearchStrategy[dt.tzinfo | None] = st.none() | st.just(UTC) | OFFSETS
# A time whose offset is within a minute of a whole day, at the very edge of its day, has
# no whole-minute equivalent and is refused (test_an_offset_with_seconds_that_cannot_be_
# held_is_refused_at_construction): leave that minute out of the times drawn here.
TIME_ZONES: st.SearchStrategy[dt.tzinfo | None] = (
    st.none()
    | st.just(UTC)
    | st.integers(min_value=-86_339, max_value=86_339).map(lambda s: timezone(timedelta(seconds=s)))
)
HASHABLE = [
    Spec(str, TEXT),
    Spec(int, st.integers()),
    Spec(bool, st.booleans()),
    Spec(bytes, st.binary(max_size=6)),
    Spec(uuid.UUID, st.uuids()),
    Spec(dt.date, st.dates()),
    Spec(Colour, st.sampled_from(Colour)),
    Spec(t.Literal["a", "b"], st.sampled_from(["a", "b"])),
]
LEAVES = [
    *HASHABLE,
    Spec(float, st.floats(allow_nan=False)),
    Spec(decimal.Decimal, st.decimals(allow_nan=False, allow_infinity=False)),
    Spec(
        datetime,
        st.datetimes(
            min_value=datetime(2, 1, 1),
            max_value=datetime(9998, 12, 31),
            timezones=t.cast(t.Any, ZONES),
        ),
    ),
    Spec(dt.time, st.times(timezones=t.cast(t.Any, TIME_ZONES))),
    Spec(timedelta, st.timedeltas()),
]
NESTED_CONFIG = ConfigDict(
    frozen=True, ser_json_bytes="base64", val_json_bytes="base64", ser_json_inf_nan="constants"
)


def model_of(specs: list[Spec]) -> Spec:
    fields = {f"f{i}": (spec.annotation, ...) for i, spec in enumerate(specs)}
    model = define("Part", base=BaseModel, __config__=NESTED_CONFIG, **fields)
    values = st.fixed_dictionaries({f"f{i}": spec.values for i, spec in enumerate(specs)})
    return Spec(model, values.map(lambda kwargs: model(**kwargs)))


def containers(inner: st.SearchStrategy[Spec]) -> st.SearchStrategy[Spec]:
    def of(make: c.Callable[[Spec], Spec]) -> st.SearchStrategy[Spec]:
        return inner.map(make)

    return st.one_of(
        of(lambda s: Spec(of_type(list, s.annotation), st.lists(s.values, max_size=3))),
        of(
            lambda s: Spec(
                of_type(tuple, s.annotation, ...), st.lists(s.values, max_size=3).map(tuple)
            )
        ),
        of(
            lambda s: Spec(
                of_type(dict, str, s.annotation), st.dictionaries(TEXT, s.values, max_size=3)
            )
        ),
        of(
            lambda s: Spec(
                of_type(dict, int, s.annotation),
                st.dictionaries(st.integers(), s.values, max_size=2),
            )
        ),
        of(lambda s: Spec(of_type(t.Optional, s.annotation), st.none() | s.values)),
        of(lambda s: Spec(of_type(c.Sequence, s.annotation), st.lists(s.values, max_size=3))),
        st.sampled_from(HASHABLE).map(
            lambda s: Spec(of_type(set, s.annotation), st.sets(s.values, max_size=3))
        ),
        st.sampled_from(HASHABLE).map(
            lambda s: Spec(of_type(frozenset, s.annotation), st.frozensets(s.values, max_size=3))
        ),
        st.lists(inner, min_size=1, max_size=3).map(model_of),
    )


SPECS = st.recursive(st.sampled_from(LEAVES), containers, max_leaves=5)


def assert_frozen(value: object) -> None:
    """Every list, dict and set the event's own fields hold is a frozen one."""
    if isinstance(value, list | dict | set):
        assert type(value) in (FrozenList, FrozenDict, FrozenSet), type(value)
    if isinstance(value, dict):
        for item in value.values():
            assert_frozen(item)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            assert_frozen(item)


def assert_whole_minutes(value: object) -> None:
    """Every datetime and time the event holds, at any depth, has an offset of whole minutes
    (what ISO 8601 carries): the event is written exactly by pydantic's own serializers."""
    if isinstance(value, datetime | dt.time):
        offset = value.utcoffset()
        assert offset is None or offset % timedelta(minutes=1) == timedelta(0), value
    elif isinstance(value, dict):
        for item in value.values():
            assert_whole_minutes(item)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            assert_whole_minutes(item)
    elif isinstance(value, BaseModel):
        assert_whole_minutes(value.__dict__)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.lists(SPECS, min_size=1, max_size=4), st.lists(st.booleans(), min_size=4))
def test_every_event_of_generated_classes_comes_back_equal(
    data: st.DataObject, specs: list[Spec], aliased: list[bool]
) -> None:
    fields = {
        f"field_{i}": (spec.annotation, Field(alias=f"Field{i}") if aliased[i] else ...)
        for i, spec in enumerate(specs)
    }
    generated = define("Generated", **fields)
    values = data.draw(st.fixed_dictionaries({f"field_{i}": s.values for i, s in enumerate(specs)}))
    event = generated(**values)
    for name in values:
        assert_frozen(getattr(event, name))
        assert_whole_minutes(getattr(event, name))
        assert getattr(event, name) == values[name]  # the same instants
    text = event.to_json()
    back = Event.from_json(generated.event_type, text)
    assert type(back) is generated
    assert back == event
    assert generated.model_validate_json(event.model_dump_json()) == event  # the store's path
    for name in values:
        assert_frozen(getattr(back, name))
