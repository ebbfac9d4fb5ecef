"""Events: frozen pydantic models with metadata, stable event_type names, JSON round trips."""

from __future__ import annotations

import math
import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import Field, ValidationError

from eventbus import Event, UnknownEventTypeError


class ItemAdded(Event):
    cart_id: str
    sku: str
    quantity: int = Field(gt=0)


class CartEvent(Event):
    cart_id: str


class CartCleared(CartEvent):
    pass


class Named(Event):
    event_type = "test_events.named"


class NamedChild(Named):
    pass


class Scalars(Event):
    text: str
    number: int
    ratio: float
    flag: bool
    tags: list[str]
    note: str | None = None


def make_item() -> ItemAdded:
    return ItemAdded(cart_id="c1", sku="A-1", quantity=2)


# -- the model ------------------------------------------------------------------------


def test_event_is_a_frozen_pydantic_model() -> None:
    event = make_item()
    with pytest.raises(ValidationError, match="frozen"):
        event.quantity = 5  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        event.event_id = uuid.uuid4()  # type: ignore[misc]
    assert event.quantity == 2


def test_unknown_fields_are_rejected() -> None:
    with pytest.raises(ValidationError, match="colour"):
        ItemAdded(cart_id="c1", sku="A-1", quantity=1, colour="red")  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("data", "bad_field"),
    [
        ({"cart_id": "c1", "sku": "A-1", "quantity": 0}, "quantity"),
        ({"cart_id": "c1", "sku": "A-1", "quantity": "many"}, "quantity"),
        ({"cart_id": "c1", "quantity": 1}, "sku"),
        ({"cart_id": "c1", "sku": "A-1", "quantity": 1, "event_id": "not-a-uuid"}, "event_id"),
        ({"cart_id": "c1", "sku": "A-1", "quantity": 1, "occurred_at": "yesterday"}, "occurred_at"),
    ],
)
def test_bad_data_raises_validation_error(data: dict[str, object], bad_field: str) -> None:
    with pytest.raises(ValidationError, match=bad_field):
        ItemAdded.model_validate(data)


def test_event_type_is_not_a_field() -> None:
    """event_type is class-level: it is neither accepted as a field nor in the payload."""
    with pytest.raises(ValidationError, match="event_type"):
        ItemAdded.model_validate({"cart_id": "c", "sku": "s", "quantity": 1, "event_type": "x"})
    assert "event_type" not in make_item().model_dump()


# -- metadata -------------------------------------------------------------------------


def test_metadata_is_filled_automatically() -> None:
    before = datetime.now(UTC)
    event = make_item()
    after = datetime.now(UTC)

    assert isinstance(event.event_id, uuid.UUID)
    assert event.occurred_at.tzinfo is not None
    assert event.occurred_at.utcoffset() == timedelta(0)
    assert before <= event.occurred_at <= after
    assert event.correlation_id is None
    assert event.causation_id is None


def test_event_ids_are_unique() -> None:
    ids = {make_item().event_id for _ in range(1000)}
    assert len(ids) == 1000


def test_explicit_metadata_is_kept() -> None:
    event_id, correlation_id, causation_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    at = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    event = ItemAdded(
        cart_id="c1",
        sku="A-1",
        quantity=1,
        event_id=event_id,
        occurred_at=at,
        correlation_id=correlation_id,
        causation_id=causation_id,
    )
    assert event.event_id == event_id
    assert event.occurred_at == at
    assert event.correlation_id == correlation_id
    assert event.causation_id == causation_id


def test_equal_fields_but_different_ids_are_different_events() -> None:
    assert make_item() != make_item()


# -- event_type names -------------------------------------------------------------------


def test_default_event_type_is_module_and_qualname() -> None:
    assert ItemAdded.event_type == f"{__name__}.ItemAdded"
    assert CartCleared.event_type == f"{__name__}.CartCleared"
    assert make_item().event_type == ItemAdded.event_type
    assert Event.event_type == "eventbus.Event"


def test_event_type_of_a_nested_class_uses_its_qualname() -> None:
    class Local(Event):
        pass

    assert Local.event_type == (
        f"{__name__}.test_event_type_of_a_nested_class_uses_its_qualname.<locals>.Local"
    )


def test_explicit_event_type() -> None:
    assert Named.event_type == "test_events.named"
    assert Event.class_for("test_events.named") is Named


def test_explicit_event_type_is_not_inherited() -> None:
    assert NamedChild.event_type == f"{__name__}.NamedChild"
    assert Event.class_for(NamedChild.event_type) is NamedChild


@pytest.mark.parametrize("bad", [42, "", b"bytes", ["a"], str])
def test_non_string_or_empty_event_type_is_rejected_at_class_creation(bad: object) -> None:
    with pytest.raises(TypeError, match=r"BadName\.event_type must be a non-empty string"):

        class BadName(Event):
            event_type = bad  # type: ignore[assignment]


def test_event_type_none_is_rejected_at_class_creation() -> None:
    """None is not a name either; it must not silently mean "use the default name"."""
    with pytest.raises(TypeError, match=r"NoneName\.event_type must be a non-empty string"):

        class NoneName(Event):
            event_type = None  # type: ignore[assignment]


def test_rejected_class_is_not_registered() -> None:
    with pytest.raises(TypeError):

        class Rejected(Event):
            event_type = ""

    with pytest.raises(UnknownEventTypeError):
        Event.class_for(f"{__name__}.test_rejected_class_is_not_registered.<locals>.Rejected")


def test_two_classes_may_not_share_an_event_type() -> None:
    class First(Event):
        event_type = "test_events.shared_name"

    with pytest.raises(TypeError, match=re.escape("test_events.shared_name")) as info:

        class Second(Event):
            event_type = "test_events.shared_name"

    message = str(info.value)
    assert "<locals>.First" in message
    assert "<locals>.Second" in message
    assert "event_type" in message
    # the first claim stands
    assert Event.class_for("test_events.shared_name") is First


def test_explicit_name_may_not_take_a_default_name() -> None:
    with pytest.raises(TypeError, match=r"ItemAdded"):

        class Impostor(Event):
            event_type = f"{__name__}.ItemAdded"

    assert Event.class_for(f"{__name__}.ItemAdded") is ItemAdded


def _define_replaceable() -> type[Event]:
    class Replaceable(Event):
        event_type = "test_events.replaceable"
        value: int

    return Replaceable


def _define_replaceable_default_name() -> type[Event]:
    class DefaultNamed(Event):
        value: int

    return DefaultNamed


def test_rerunning_the_same_class_statement_replaces_the_class() -> None:
    first = _define_replaceable()
    second = _define_replaceable()
    assert first is not second
    assert Event.class_for("test_events.replaceable") is second

    first_default = _define_replaceable_default_name()
    second_default = _define_replaceable_default_name()
    assert first_default.event_type == second_default.event_type
    assert Event.class_for(second_default.event_type) is second_default


# -- JSON and lookup ----------------------------------------------------------------------


def test_json_round_trip() -> None:
    event = ItemAdded(
        cart_id="c1", sku="A-1", quantity=3, correlation_id=uuid.uuid4(), causation_id=uuid.uuid4()
    )
    restored = Event.from_json(event.event_type, event.model_dump_json())
    assert type(restored) is ItemAdded
    assert restored == event


def test_to_json_writes_what_model_dump_json_writes_and_reads_back() -> None:
    event = ItemAdded(cart_id="c1", sku="A-1", quantity=3, causation_id=uuid.uuid4())
    assert event.to_json() == event.model_dump_json()
    restored = Event.from_json(event.event_type, event.to_json())
    assert type(restored) is ItemAdded
    assert restored == event


def test_json_round_trip_accepts_bytes() -> None:
    event = make_item()
    restored = Event.from_json(event.event_type, event.model_dump_json().encode())
    assert restored == event


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_floats_either_round_trip_or_are_rejected(value: float) -> None:
    """An event that can be built must survive its own JSON; pydantic writes inf/nan as null."""
    try:
        event = Scalars(text="t", number=1, ratio=value, flag=True, tags=[])
    except ValidationError:
        return  # rejecting non-finite floats up front is fine too
    restored = Event.from_json(event.event_type, event.model_dump_json())
    assert isinstance(restored, Scalars)
    assert restored.ratio == value or (math.isnan(value) and math.isnan(restored.ratio))


def test_from_json_validates_the_payload() -> None:
    payload = '{"cart_id": "c1", "sku": "A-1", "quantity": -1}'
    with pytest.raises(ValidationError, match="quantity"):
        Event.from_json(ItemAdded.event_type, payload)


def test_from_json_on_a_subclass_returns_that_type() -> None:
    event = CartCleared(cart_id="c9")
    restored = CartEvent.from_json(event.event_type, event.model_dump_json())
    assert isinstance(restored, CartEvent)
    assert restored == event


def test_class_for() -> None:
    assert Event.class_for(ItemAdded.event_type) is ItemAdded
    assert Event.class_for("eventbus.Event") is Event
    assert CartEvent.class_for(CartCleared.event_type) is CartCleared
    assert CartEvent.class_for(CartEvent.event_type) is CartEvent


def test_class_for_on_a_subclass_is_restricted_to_its_descendants() -> None:
    with pytest.raises(UnknownEventTypeError, match=re.escape(ItemAdded.event_type)):
        CartEvent.class_for(ItemAdded.event_type)
    with pytest.raises(UnknownEventTypeError, match=re.escape("eventbus.Event")):
        CartEvent.class_for("eventbus.Event")
    with pytest.raises(UnknownEventTypeError):
        CartEvent.from_json(ItemAdded.event_type, make_item().model_dump_json())


def test_unknown_event_type() -> None:
    with pytest.raises(
        UnknownEventTypeError, match=re.escape("'test_events.no_such_event'")
    ) as info:
        Event.class_for("test_events.no_such_event")
    assert isinstance(info.value, LookupError)
    with pytest.raises(LookupError, match="no_such_event"):
        Event.from_json("test_events.no_such_event", "{}")


def test_unknown_event_type_error_lists_known_subclass_names() -> None:
    with pytest.raises(UnknownEventTypeError) as info:
        CartEvent.class_for("nope")
    message = str(info.value)
    assert CartCleared.event_type in message
    assert ItemAdded.event_type not in message


# -- property ---------------------------------------------------------------------------


@given(
    text=st.text(),
    number=st.integers(),
    ratio=st.floats(allow_nan=False, allow_infinity=False),
    flag=st.booleans(),
    tags=st.lists(st.text(max_size=5), max_size=5),
    note=st.none() | st.text(),
    correlation_id=st.none() | st.uuids(),
    occurred_at=st.datetimes(timezones=st.just(UTC)),
)
def test_json_round_trip_property(
    text: str,
    number: int,
    ratio: float,
    flag: bool,
    tags: list[str],
    note: str | None,
    correlation_id: uuid.UUID | None,
    occurred_at: datetime,
) -> None:
    event = Scalars(
        text=text,
        number=number,
        ratio=ratio,
        flag=flag,
        tags=tags,
        note=note,
        correlation_id=correlation_id,
        occurred_at=occurred_at,
    )
    restored = Event.from_json(event.event_type, event.model_dump_json())
    assert type(restored) is Scalars
    assert restored == event
