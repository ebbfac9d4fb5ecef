"""Registering handlers: subscribe forms, checks at decoration time, include/unsubscribe, order.

This module uses ``from __future__ import annotations`` on purpose: every handler
annotation below is a string that eventbus has to resolve, including those naming
classes that only exist in a test function's locals.
"""

from __future__ import annotations

import asyncio
import collections.abc as c
import dataclasses
import functools
import math
import typing as t

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventbus import Event, EventBus, HandlerRegistry, RetryPolicy, Subscription


class Added(Event):
    sku: str


class Removed(Event):
    sku: str


class Base(Event):
    pass


class Child(Base):
    pass


class GrandChild(Child):
    pass


class Unrelated(Event):
    pass


if t.TYPE_CHECKING:
    # Visible to type checkers only: at runtime the string annotation cannot be resolved.
    TypeCheckingOnlyAdded: t.TypeAlias = Added


def handlers_of(subscriptions: c.Iterable[Subscription]) -> list[object]:
    return [sub.handler for sub in subscriptions]


def only(subscriptions: tuple[Subscription, ...]) -> Subscription:
    assert len(subscriptions) == 1
    return subscriptions[0]


# -- the forms of subscribe -------------------------------------------------------------------


def test_subscribe_bare_infers_the_class_from_the_annotation(bus: EventBus) -> None:
    def on_added(event: Added) -> None: ...

    decorated = bus.subscribe(on_added)

    assert decorated is on_added
    sub = only(bus.subscriptions_for(Added))
    assert sub.handler is on_added
    assert sub.event_types == (Added,)
    assert sub.priority == 0
    assert sub.retry is None
    assert sub.run_in_thread is False
    assert sub.is_async is False
    assert sub.name == f"{__name__}.{on_added.__qualname__}"
    assert bus.subscriptions_for(Removed) == ()


def test_subscribe_as_bare_decorator(bus: EventBus) -> None:
    seen: list[Added] = []

    @bus.subscribe
    def on_added(event: Added) -> None:
        seen.append(event)

    assert handlers_of(bus.subscriptions_for(Added)) == [on_added]
    event = Added(sku="a")
    on_added(event)  # still a plain, callable function
    assert seen == [event]


def test_subscribe_with_an_explicit_class(bus: EventBus) -> None:
    def on_added(event: Added) -> None: ...

    assert bus.subscribe(Added)(on_added) is on_added
    assert only(bus.subscriptions_for(Added)).event_types == (Added,)


def test_explicit_class_for_an_unannotated_handler(bus: EventBus) -> None:
    seen: list[Added] = []
    handler = bus.subscribe(Added)(lambda event: seen.append(event))

    assert handlers_of(bus.subscriptions_for(Added)) == [handler]
    bus.publish(Added(sku="x"))
    assert [e.sku for e in seen] == ["x"]


def test_explicit_subclass_of_the_annotated_class(bus: EventBus) -> None:
    """A handler typed for a base class may be subscribed to one subclass only."""

    @bus.subscribe(Child)
    def on_child(event: Base) -> None: ...

    assert only(bus.subscriptions_for(Child)).event_types == (Child,)
    assert handlers_of(bus.subscriptions_for(GrandChild)) == [on_child]
    assert bus.subscriptions_for(Base) == ()


def test_subscribe_with_options() -> None:
    bus = EventBus()
    policy = RetryPolicy(max_attempts=3, initial_delay=0.01)

    def on_added(event: Added) -> None: ...

    def blocking(event: Added) -> None: ...

    assert bus.subscribe(Added, priority=7, retry=policy)(on_added) is on_added
    assert bus.subscribe(run_in_thread=True, priority=-2)(blocking) is blocking

    first, second = bus.subscriptions_for(Added)
    assert (first.handler, first.priority, first.retry, first.run_in_thread) == (
        on_added,
        7,
        policy,
        False,
    )
    assert (second.handler, second.priority, second.retry, second.run_in_thread) == (
        blocking,
        -2,
        None,
        True,
    )


def test_subscribe_with_options_and_no_class_infers_from_annotation(bus: EventBus) -> None:
    @bus.subscribe(priority=3)
    def on_removed(event: Removed) -> None: ...

    sub = only(bus.subscriptions_for(Removed))
    assert sub.handler is on_removed
    assert sub.priority == 3


def test_subscribe_as_a_plain_call(bus: EventBus) -> None:
    def on_added(event: Added) -> None: ...

    assert bus.subscribe(on_added, priority=4) is on_added
    assert only(bus.subscriptions_for(Added)).priority == 4


def test_async_handler_is_detected_and_delivered(bus: EventBus) -> None:
    seen: list[str] = []

    @bus.subscribe(Added, retry=RetryPolicy(max_attempts=2))
    async def reserve(event: Added) -> None:
        seen.append(event.sku)

    assert only(bus.subscriptions_for(Added)).is_async is True
    result = asyncio.run(bus.publish_async(Added(sku="a")))
    assert result.ok
    assert seen == ["a"]


def test_registry_without_a_bus() -> None:
    cart = HandlerRegistry()

    @cart.subscribe
    def log_all(event: Event) -> None: ...

    assert handlers_of(cart.subscriptions) == [log_all]
    assert handlers_of(cart.subscriptions_for(Added)) == [log_all]
    assert isinstance(EventBus(), HandlerRegistry)


# -- annotations ----------------------------------------------------------------------------


def test_string_annotations_naming_local_classes_are_resolved(bus: EventBus) -> None:
    class LocalEvent(Event):
        n: int

    class OtherLocalEvent(Event):
        pass

    @bus.subscribe
    def on_local(event: LocalEvent) -> None: ...

    @bus.subscribe(priority=1)
    def on_either(event: LocalEvent | OtherLocalEvent) -> None: ...

    def plain_call(event: OtherLocalEvent) -> None: ...

    bus.subscribe(plain_call)

    assert handlers_of(bus.subscriptions_for(LocalEvent)) == [on_either, on_local]
    assert handlers_of(bus.subscriptions_for(OtherLocalEvent)) == [on_either, plain_call]


def test_local_handler_annotated_with_a_module_level_class(bus: EventBus) -> None:
    @bus.subscribe
    def on_added(event: Added) -> None: ...

    assert only(bus.subscriptions_for(Added)).handler is on_added


def test_annotated_annotation_is_unwrapped(bus: EventBus) -> None:
    @bus.subscribe
    def on_added(event: t.Annotated[Added, "metadata"]) -> None: ...

    assert only(bus.subscriptions_for(Added)).event_types == (Added,)


def test_union_annotation_subscribes_to_each_member(bus: EventBus) -> None:
    @bus.subscribe
    def on_change(event: Added | Removed) -> None: ...

    sub = only(bus.subscriptions)
    assert sub.event_types == (Added, Removed)
    assert handlers_of(bus.subscriptions_for(Added)) == [on_change]
    assert handlers_of(bus.subscriptions_for(Removed)) == [on_change]
    assert bus.subscriptions_for(Unrelated) == ()


def test_union_of_overlapping_classes_delivers_once(bus: EventBus) -> None:
    seen: list[Event] = []

    @bus.subscribe
    def on_base(event: Base | Child) -> None:
        seen.append(event)

    event = GrandChild()
    assert bus.publish(event).ok
    assert seen == [event]


def test_explicit_class_with_a_union_annotation(bus: EventBus) -> None:
    @bus.subscribe(Removed)
    def on_change(event: Added | Removed) -> None: ...

    assert only(bus.subscriptions).event_types == (Removed,)


# -- bad registrations: TypeError at decoration time, naming the handler and the fix ---------


def test_no_annotation(bus: EventBus) -> None:
    with pytest.raises(
        TypeError,
        match=r"no_annotation_handler: its first parameter has no annotation.*"
        r"def handler\(event: MyEvent\).*@bus\.subscribe\(MyEvent\)",
    ):

        @bus.subscribe
        def no_annotation_handler(event):  # type: ignore[no-untyped-def]
            pass

    assert bus.subscriptions == ()


def test_no_annotation_lambda(bus: EventBus) -> None:
    with pytest.raises(TypeError, match=r"<lambda>: its first parameter has no annotation"):
        bus.subscribe(lambda event: None)


@pytest.mark.parametrize("annotation", [int, dict[str, object], str, object, t.Any])
def test_annotation_that_is_not_an_event_class(bus: EventBus, annotation: object) -> None:
    def wrong_type(event: t.Any) -> None: ...

    wrong_type.__annotations__["event"] = annotation
    with pytest.raises(
        TypeError,
        match=r"wrong_type: its first parameter's annotation includes .*"
        r"which is not an Event subclass.*class MyEvent\(Event\)",
    ):
        bus.subscribe(wrong_type)


def test_annotation_int_at_decoration(bus: EventBus) -> None:
    with pytest.raises(TypeError, match=r"int_handler: .*includes int, which is not an Event"):

        @bus.subscribe  # type: ignore[type-var]
        def int_handler(event: int) -> None: ...


def test_annotation_dict_at_decoration(bus: EventBus) -> None:
    with pytest.raises(TypeError, match=r"dict_handler: .*includes dict\[str, int\], which is not"):

        @bus.subscribe  # type: ignore[type-var]
        def dict_handler(event: dict[str, int]) -> None: ...


def test_union_with_a_non_event_member(bus: EventBus) -> None:
    with pytest.raises(TypeError, match=r"mixed: .*includes int, which is not an Event subclass"):

        @bus.subscribe  # type: ignore[type-var]
        def mixed(event: Added | int) -> None: ...

    assert bus.subscriptions == ()


def test_optional_annotation(bus: EventBus) -> None:
    with pytest.raises(TypeError, match=r"maybe_added: .*allows None.*drop '\| None'"):

        @bus.subscribe  # type: ignore[type-var]
        def maybe_added(event: Added | None) -> None: ...


@pytest.mark.parametrize("thing", [42, "on_added", Added(sku="instance")])
def test_non_callable(bus: EventBus, thing: t.Any) -> None:
    with pytest.raises(TypeError, match=r"it is not callable.*subscribe a function"):
        bus.subscribe(thing)


def test_handler_without_parameters(bus: EventBus) -> None:
    with pytest.raises(
        TypeError,
        match=r"no_params: it takes no positional argument.*def handler\(event: MyEvent\)",
    ):

        @bus.subscribe  # type: ignore[arg-type]
        def no_params() -> None: ...


def test_handler_with_only_keyword_parameters(bus: EventBus) -> None:
    with pytest.raises(TypeError, match=r"keyword_only: it takes no positional argument"):

        @bus.subscribe(Added)  # type: ignore[arg-type]
        def keyword_only(*, event: Added) -> None: ...


def test_handler_requiring_a_second_argument(bus: EventBus) -> None:
    with pytest.raises(
        TypeError,
        match=r"two_args: it requires 'extra' besides the event.*give it a default or drop it",
    ):

        @bus.subscribe
        def two_args(event: Added, extra: int) -> None: ...


def test_handler_requiring_a_keyword_argument(bus: EventBus) -> None:
    with pytest.raises(TypeError, match=r"needs_flag: it requires 'flag' besides the event"):

        @bus.subscribe
        def needs_flag(event: Added, *, flag: bool) -> None: ...


def test_extra_arguments_with_defaults_are_fine(bus: EventBus) -> None:
    @bus.subscribe
    def with_defaults(event: Added, extra: int = 0, *args: object, flag: bool = False) -> None: ...

    assert only(bus.subscriptions_for(Added)).handler is with_defaults


def test_method_in_a_class_body(bus: EventBus) -> None:
    with pytest.raises(
        TypeError,
        match=r"Service\.on_added: its first parameter is 'self'.*bus\.subscribe\(obj\.method\)",
    ):

        class Service:
            @bus.subscribe  # type: ignore[type-var]
            def on_added(self, event: Added) -> None: ...


def test_explicit_class_contradicting_the_annotation(bus: EventBus) -> None:
    with pytest.raises(
        TypeError,
        match=r"on_removed to Added: its first parameter is annotated Removed.*fix the annotation",
    ):

        @bus.subscribe(Added)  # type: ignore[arg-type]
        def on_removed(event: Removed) -> None: ...

    assert bus.subscriptions == ()


def test_explicit_base_class_for_a_handler_of_a_subclass(bus: EventBus) -> None:
    """Base events are not all Child events: the handler could get what it cannot handle."""
    with pytest.raises(TypeError, match=r"on_child to Base: .*annotated Child"):

        @bus.subscribe(Base)  # type: ignore[arg-type]
        def on_child(event: Child) -> None: ...


@pytest.mark.parametrize("annotation", [object, t.Any])
def test_explicit_class_with_a_wider_non_event_annotation(
    bus: EventBus, annotation: object
) -> None:
    """``def audit(event: object)`` can take any event: an explicit class does not contradict it."""

    def audit(event: t.Any) -> None: ...

    audit.__annotations__["event"] = annotation
    bus.subscribe(Added)(audit)
    assert only(bus.subscriptions_for(Added)).handler is audit


def test_generator_function(bus: EventBus) -> None:
    with pytest.raises(TypeError, match=r"gen_handler: it is a generator function.*use return"):

        @bus.subscribe
        def gen_handler(event: Added) -> c.Iterator[None]:
            yield

    with pytest.raises(TypeError, match=r"agen_handler: it is a generator function"):

        @bus.subscribe
        async def agen_handler(event: Added) -> c.AsyncIterator[None]:
            yield


def test_run_in_thread_on_an_async_handler(bus: EventBus) -> None:
    with pytest.raises(
        TypeError,
        match=r"reserve with run_in_thread=True: it is async.*drop run_in_thread",
    ):

        @bus.subscribe(Added, run_in_thread=True)
        async def reserve(event: Added) -> None: ...


@pytest.mark.parametrize("priority", ["high", 1.5, True, None])
def test_priority_must_be_an_int(bus: EventBus, priority: t.Any) -> None:
    def prioritized(event: Added) -> None: ...

    with pytest.raises(TypeError, match=r"prioritized: priority must be an int"):
        bus.subscribe(prioritized, priority=priority)


@pytest.mark.parametrize("retry", [3, {"max_attempts": 3}, "3"])
def test_retry_must_be_a_retry_policy(bus: EventBus, retry: t.Any) -> None:
    def retried(event: Added) -> None: ...

    with pytest.raises(
        TypeError,
        match=r"retried: retry must be a RetryPolicy.*retry=RetryPolicy\(max_attempts=3\)",
    ):
        bus.subscribe(Added, retry=retry)(retried)


def test_subscribe_a_non_event_class(bus: EventBus) -> None:
    with pytest.raises(TypeError, match=r"subscribe\(int\) needs an Event subclass"):
        bus.subscribe(int)  # type: ignore[type-var]
    with pytest.raises(TypeError, match=r"subscribe\(dict\) needs an Event subclass"):
        bus.subscribe(dict)


def test_unresolvable_string_annotation(bus: EventBus) -> None:
    with pytest.raises(
        TypeError,
        match=r"type_checking_only: its annotation names 'TypeCheckingOnlyAdded', "
        r"which is not defined where the handler is; import it there",
    ):

        @bus.subscribe
        def type_checking_only(event: TypeCheckingOnlyAdded) -> None: ...


def test_unresolvable_annotation_with_an_explicit_class(bus: EventBus) -> None:
    """The error above says "or name the class explicitly: @bus.subscribe(MyEvent)".

    Doing so must then work: an annotation that cannot be evaluated is left unchecked.
    """

    @bus.subscribe(Added)
    def type_checking_only(event: TypeCheckingOnlyAdded) -> None: ...

    assert only(bus.subscriptions_for(Added)).handler is type_checking_only


def test_failed_registration_leaves_no_trace(bus: EventBus) -> None:
    def good(event: Added) -> None: ...

    bus.subscribe(good)
    plan = bus._plan(Added)
    with pytest.raises(TypeError):
        bus.subscribe(Added, priority="x")(good)  # type: ignore[call-overload]
    assert handlers_of(bus.subscriptions) == [good]
    assert bus._plan(Added) is plan


# -- other callables --------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.seen: list[Event] = []

    def on_added(self, event: Added) -> None:
        self.seen.append(event)

    async def on_added_async(self, event: Added) -> None:
        self.seen.append(event)


class CallableHandler:
    def __init__(self) -> None:
        self.seen: list[Event] = []

    def __call__(self, event: Removed) -> None:
        self.seen.append(event)


class AsyncCallableHandler:
    async def __call__(self, event: Removed) -> None: ...


def record(log: list[Event], event: Added) -> None:
    log.append(event)


def test_bound_method(bus: EventBus) -> None:
    recorder = Recorder()
    assert bus.subscribe(recorder.on_added) == recorder.on_added

    sub = only(bus.subscriptions_for(Added))
    assert sub.name == f"{__name__}.Recorder.on_added"
    event = Added(sku="a")
    assert bus.publish(event).ok
    assert recorder.seen == [event]

    bus.unsubscribe(recorder.on_added)  # a new but equal bound-method object
    assert bus.subscriptions == ()


def test_bound_methods_of_two_instances_are_two_handlers_with_two_names(bus: EventBus) -> None:
    first, second = Recorder(), Recorder()
    bus.subscribe(first.on_added)
    # Both would be named tests.test_registry.Recorder.on_added: refused, with the fix.
    with pytest.raises(ValueError, match=r"already subscribed under the name .*name="):
        bus.subscribe(second.on_added)
    bus.subscribe(name="second recorder")(second.on_added)
    bus.publish(Added(sku="a"))
    assert len(first.seen) == len(second.seen) == 1
    assert [sub.name for sub in bus.subscriptions_for(Added)] == [
        f"{__name__}.Recorder.on_added",
        "second recorder",
    ]


def test_async_bound_method(bus: EventBus) -> None:
    recorder = Recorder()
    bus.subscribe(recorder.on_added_async)
    assert only(bus.subscriptions_for(Added)).is_async is True
    assert asyncio.run(bus.publish_async(Added(sku="a"))).ok
    assert len(recorder.seen) == 1


def test_callable_instance(bus: EventBus) -> None:
    handler = CallableHandler()
    assert bus.subscribe(handler) is handler

    sub = only(bus.subscriptions_for(Removed))
    assert sub.name == f"{__name__}.CallableHandler()"
    assert sub.is_async is False
    bus.publish(Removed(sku="r"))
    assert len(handler.seen) == 1


def test_async_callable_instance(bus: EventBus) -> None:
    handler = AsyncCallableHandler()
    bus.subscribe(handler)
    assert only(bus.subscriptions_for(Removed)).is_async is True
    with pytest.raises(TypeError, match=r"run_in_thread=True: it is async"):
        bus.subscribe(AsyncCallableHandler(), run_in_thread=True)


def test_functools_partial(bus: EventBus) -> None:
    log: list[Event] = []
    handler = functools.partial(record, log)
    assert bus.subscribe(handler) is handler

    sub = only(bus.subscriptions_for(Added))
    assert sub.event_types == (Added,)
    assert sub.name == f"functools.partial({__name__}.record)"
    event = Added(sku="p")
    bus.publish(event)
    assert log == [event]


def test_functools_partial_of_an_async_function(bus: EventBus) -> None:
    async def record_async(log: list[Event], event: Added) -> None:
        log.append(event)

    log: list[Event] = []
    bus.subscribe(functools.partial(record_async, log))
    assert only(bus.subscriptions_for(Added)).is_async is True
    assert asyncio.run(bus.publish_async(Added(sku="a"))).ok
    assert len(log) == 1


# -- duplicates and include -----------------------------------------------------------------


def test_duplicate_subscription(bus: EventBus) -> None:
    def on_added(event: Added) -> None: ...

    bus.subscribe(on_added)
    with pytest.raises(ValueError, match=r"on_added is already subscribed to Added"):
        bus.subscribe(on_added)
    with pytest.raises(ValueError, match=r"already subscribed to Added"):
        bus.subscribe(Added, priority=5)(on_added)
    assert len(bus.subscriptions) == 1


def test_duplicate_through_a_union(bus: EventBus) -> None:
    @bus.subscribe
    def on_change(event: Added | Removed) -> None: ...

    with pytest.raises(ValueError, match=r"already subscribed to Removed"):
        bus.subscribe(Removed)(on_change)


def test_duplicate_bound_method(bus: EventBus) -> None:
    recorder = Recorder()
    bus.subscribe(recorder.on_added)
    with pytest.raises(ValueError, match=r"Recorder\.on_added is already subscribed"):
        bus.subscribe(recorder.on_added)


def test_same_handler_for_two_classes(bus: EventBus) -> None:
    def on_any(event: Event) -> None: ...

    bus.subscribe(Added)(on_any)
    bus.subscribe(Removed)(on_any)
    assert handlers_of(bus.subscriptions_for(Added)) == [on_any]
    assert handlers_of(bus.subscriptions_for(Removed)) == [on_any]


def test_include_copies_subscriptions() -> None:
    bus = EventBus()
    cart = HandlerRegistry()

    @cart.subscribe(priority=1)
    def on_added(event: Added) -> None: ...

    @cart.subscribe
    def log_all(event: Event) -> None: ...

    bus.include(cart)

    @cart.subscribe
    def later(event: Added) -> None: ...

    assert handlers_of(bus.subscriptions) == [on_added, log_all]
    assert handlers_of(bus.subscriptions_for(Added)) == [on_added, log_all]
    assert bus.subscriptions_for(Added)[0].priority == 1
    # the registry itself is unchanged by include, and keeps its own later handler
    assert handlers_of(cart.subscriptions) == [on_added, log_all, later]


def test_included_subscriptions_come_after_existing_ones(bus: EventBus) -> None:
    cart = HandlerRegistry()

    @cart.subscribe
    def from_registry(event: Added) -> None: ...

    @bus.subscribe
    def on_bus(event: Added) -> None: ...

    bus.include(cart)

    @bus.subscribe
    def after_include(event: Added) -> None: ...

    assert handlers_of(bus.subscriptions_for(Added)) == [on_bus, from_registry, after_include]


def test_include_the_same_registry_twice(bus: EventBus) -> None:
    cart = HandlerRegistry()

    @cart.subscribe
    def on_added(event: Added) -> None: ...

    bus.include(cart)

    @cart.subscribe
    def on_removed(event: Removed) -> None: ...

    with pytest.raises(ValueError, match=r"on_added is already subscribed to Added.*include"):
        bus.include(cart)
    # all or nothing: on_removed was not added either
    assert handlers_of(bus.subscriptions) == [on_added]


def test_include_itself(bus: EventBus) -> None:
    with pytest.raises(ValueError, match=r"cannot include itself"):
        bus.include(bus)


def test_include_something_else(bus: EventBus) -> None:
    with pytest.raises(TypeError, match=r"include\(\) takes a HandlerRegistry"):
        bus.include([])  # type: ignore[arg-type]


def test_registries_can_include_registries() -> None:
    inner, outer, bus = HandlerRegistry(), HandlerRegistry(), EventBus()

    @inner.subscribe
    def on_added(event: Added) -> None: ...

    outer.include(inner)
    bus.include(outer)
    assert handlers_of(bus.subscriptions_for(Added)) == [on_added]


# -- unsubscribe ------------------------------------------------------------------------------


def test_unsubscribe(bus: EventBus) -> None:
    calls: list[str] = []

    @bus.subscribe
    def on_added(event: Added) -> None:
        calls.append("on_added")

    bus.unsubscribe(on_added)
    assert bus.subscriptions == ()
    assert bus.subscriptions_for(Added) == ()
    bus.publish(Added(sku="a"))
    assert calls == []

    with pytest.raises(ValueError, match=r"cannot unsubscribe .*on_added.*: it is not subscribed"):
        bus.unsubscribe(on_added)


def test_unsubscribe_removes_every_subscription_of_the_handler(bus: EventBus) -> None:
    def on_any(event: Event) -> None: ...

    def other(event: Added) -> None: ...

    bus.subscribe(Added)(on_any)
    bus.subscribe(other)
    bus.subscribe(Removed)(on_any)
    bus.unsubscribe(on_any)
    assert handlers_of(bus.subscriptions) == [other]


def test_unsubscribe_one_class_of_a_union(bus: EventBus) -> None:
    @bus.subscribe
    def first(event: Added) -> None: ...

    @bus.subscribe(priority=2)
    def on_change(event: Added | Removed | Unrelated) -> None: ...

    @bus.subscribe
    def last(event: Removed) -> None: ...

    bus.unsubscribe(on_change, Removed)

    assert handlers_of(bus.subscriptions_for(Removed)) == [last]
    assert handlers_of(bus.subscriptions_for(Added)) == [on_change, first]
    assert handlers_of(bus.subscriptions_for(Unrelated)) == [on_change]
    # it keeps its place and options
    assert handlers_of(bus.subscriptions) == [first, on_change, last]
    assert bus.subscriptions[1].event_types == (Added, Unrelated)
    assert bus.subscriptions[1].priority == 2

    with pytest.raises(ValueError, match=r"from Removed: it is not subscribed"):
        bus.unsubscribe(on_change, Removed)

    bus.unsubscribe(on_change, Added)
    bus.unsubscribe(on_change, Unrelated)
    assert handlers_of(bus.subscriptions) == [first, last]


def test_unsubscribe_from_one_class_only(bus: EventBus) -> None:
    def on_any(event: Event) -> None: ...

    bus.subscribe(Added)(on_any)
    bus.subscribe(Removed)(on_any)
    bus.unsubscribe(on_any, Added)
    assert bus.subscriptions_for(Added) == ()
    assert handlers_of(bus.subscriptions_for(Removed)) == [on_any]


def test_unsubscribe_from_a_class_it_is_not_subscribed_to(bus: EventBus) -> None:
    @bus.subscribe
    def on_added(event: Added) -> None: ...

    with pytest.raises(ValueError, match=r"from Removed: it is not subscribed"):
        bus.unsubscribe(on_added, Removed)
    assert handlers_of(bus.subscriptions) == [on_added]


def test_resubscribe_after_unsubscribe(bus: EventBus) -> None:
    def on_added(event: Added) -> None: ...

    def other(event: Added) -> None: ...

    bus.subscribe(on_added)
    bus.subscribe(other)
    bus.unsubscribe(on_added)
    bus.subscribe(on_added)
    assert handlers_of(bus.subscriptions_for(Added)) == [other, on_added]


# -- order and hierarchy --------------------------------------------------------------------


def test_subscriptions_are_in_registration_order(bus: EventBus) -> None:
    """``subscriptions`` lists everything as registered; delivery order is subscriptions_for."""

    @bus.subscribe(priority=-1)
    def low(event: Added) -> None: ...

    @bus.subscribe(priority=5)
    def high(event: Removed) -> None: ...

    @bus.subscribe
    def middle(event: Event) -> None: ...

    assert handlers_of(bus.subscriptions) == [low, high, middle]
    assert isinstance(bus.subscriptions, tuple)


def test_subscriptions_for_orders_by_priority_then_registration(bus: EventBus) -> None:
    @bus.subscribe
    def a(event: Added) -> None: ...

    @bus.subscribe(priority=10)
    def b(event: Added) -> None: ...

    @bus.subscribe(priority=-3)
    def c(event: Added) -> None: ...

    @bus.subscribe(priority=10)
    def d(event: Added) -> None: ...

    @bus.subscribe
    def e(event: Added) -> None: ...

    assert handlers_of(bus.subscriptions_for(Added)) == [b, d, a, e, c]


def test_delivery_follows_subscriptions_for(bus: EventBus) -> None:
    calls: list[str] = []

    @bus.subscribe
    def a(event: Added) -> None:
        calls.append("a")

    @bus.subscribe(priority=1)
    def b(event: Added) -> None:
        calls.append("b")

    @bus.subscribe
    def c(event: Event) -> None:
        calls.append("c")

    bus.publish(Added(sku="x"))
    assert calls == ["b", "a", "c"]


def test_hierarchy(bus: EventBus) -> None:
    @bus.subscribe
    def on_event(event: Event) -> None: ...

    @bus.subscribe
    def on_base(event: Base) -> None: ...

    @bus.subscribe
    def on_child(event: Child) -> None: ...

    @bus.subscribe
    def on_grandchild(event: GrandChild) -> None: ...

    assert handlers_of(bus.subscriptions_for(Event)) == [on_event]
    assert handlers_of(bus.subscriptions_for(Base)) == [on_event, on_base]
    assert handlers_of(bus.subscriptions_for(Child)) == [on_event, on_base, on_child]
    assert handlers_of(bus.subscriptions_for(GrandChild)) == [
        on_event,
        on_base,
        on_child,
        on_grandchild,
    ]
    assert handlers_of(bus.subscriptions_for(Unrelated)) == [on_event]


def test_hierarchy_and_priority(bus: EventBus) -> None:
    """Order is by priority, then registration, never by how specific the class is."""

    @bus.subscribe
    def on_child(event: Child) -> None: ...

    @bus.subscribe(priority=1)
    def on_event(event: Event) -> None: ...

    @bus.subscribe
    def on_base(event: Base) -> None: ...

    assert handlers_of(bus.subscriptions_for(GrandChild)) == [on_event, on_child, on_base]


def test_subscriptions_for_a_class_nobody_handles(bus: EventBus) -> None:
    assert bus.subscriptions_for(Unrelated) == ()


def test_subscriptions_for_a_non_event_class(bus: EventBus) -> None:
    with pytest.raises(TypeError, match=r"Event"):
        bus.subscriptions_for(int)  # type: ignore[arg-type]


# -- the plan cache ---------------------------------------------------------------------------


def test_plan_is_cached(bus: EventBus) -> None:
    @bus.subscribe
    def on_base(event: Base) -> None: ...

    assert bus._plan(Child) is bus._plan(Child)
    assert bus._plan(Base) is not bus._plan(Child)
    assert bus.subscriptions_for(Child) is bus.subscriptions_for(Child)


def test_plan_is_rebuilt_after_subscribe(bus: EventBus) -> None:
    @bus.subscribe
    def on_added(event: Added) -> None: ...

    plan = bus._plan(Added)

    @bus.subscribe
    def on_removed(event: Removed) -> None: ...

    rebuilt = bus._plan(Added)
    assert rebuilt is not plan
    assert rebuilt == plan

    @bus.subscribe
    def on_event(event: Event) -> None: ...

    assert handlers_of(bus.subscriptions_for(Added)) == [on_added, on_event]


def test_plan_is_rebuilt_after_unsubscribe(bus: EventBus) -> None:
    @bus.subscribe
    def on_added(event: Added) -> None: ...

    plan = bus._plan(Added)
    bus.unsubscribe(on_added)
    assert bus._plan(Added) is not plan
    assert bus.subscriptions_for(Added) == ()


def test_plan_is_rebuilt_after_include(bus: EventBus) -> None:
    plan = bus._plan(Added)
    cart = HandlerRegistry()

    @cart.subscribe
    def on_added(event: Added) -> None: ...

    bus.include(cart)
    assert bus._plan(Added) is not plan
    assert handlers_of(bus.subscriptions_for(Added)) == [on_added]


def test_publish_sees_subscriptions_made_after_a_publish(bus: EventBus) -> None:
    calls: list[str] = []

    @bus.subscribe
    def first(event: Added) -> None:
        calls.append("first")

    bus.publish(Added(sku="1"))

    @bus.subscribe(priority=1)
    def second(event: Added) -> None:
        calls.append("second")

    bus.publish(Added(sku="2"))
    bus.unsubscribe(first)
    bus.publish(Added(sku="3"))
    assert calls == ["first", "second", "first", "second"]


# -- RetryPolicy --------------------------------------------------------------------------


def test_retry_policy_default_is_one_attempt() -> None:
    policy = RetryPolicy()
    assert policy.max_attempts == 1
    assert list(policy.delays()) == []


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"max_attempts": 0}, ValueError, r"max_attempts .* must be >= 1; got 0"),
        ({"max_attempts": -3}, ValueError, r"must be >= 1"),
        ({"max_attempts": 2.5}, TypeError, r"max_attempts must be an int"),
        ({"max_attempts": True}, TypeError, r"max_attempts must be an int"),
        ({"max_attempts": "3"}, TypeError, r"max_attempts must be an int"),
        ({"initial_delay": -0.1}, ValueError, r"initial_delay must be a finite number >= 0"),
        ({"max_delay": -1}, ValueError, r"max_delay must be a finite number >= 0"),
        ({"backoff": 0.5}, ValueError, r"backoff .* must be >= 1"),
        ({"backoff": -2}, ValueError, r"backoff"),
    ],
)
def test_retry_policy_validation(
    kwargs: dict[str, t.Any], error: type[Exception], pattern: str
) -> None:
    with pytest.raises(error, match=pattern):
        RetryPolicy(**kwargs)


@pytest.mark.parametrize("name", ["initial_delay", "max_delay", "backoff"])
def test_retry_policy_rejects_non_numbers(name: str) -> None:
    kwargs: dict[str, t.Any] = {name: "1"}
    with pytest.raises((TypeError, ValueError), match=name):
        RetryPolicy(max_attempts=2, **kwargs)


@pytest.mark.parametrize("name", ["initial_delay", "max_delay", "backoff"])
def test_retry_policy_rejects_nan(name: str) -> None:
    """NaN is not a number >= 0; accepted, it made time.sleep raise in the middle of publish."""
    kwargs: dict[str, t.Any] = {name: math.nan}
    with pytest.raises(ValueError, match=name):
        RetryPolicy(max_attempts=2, **kwargs)


def test_retry_policy_accepts_valid_values() -> None:
    policy = RetryPolicy(max_attempts=5, initial_delay=0, backoff=1, max_delay=0)
    assert list(policy.delays()) == [0.0, 0.0, 0.0, 0.0]


def test_retry_policy_is_frozen() -> None:
    policy = RetryPolicy(max_attempts=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.max_attempts = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (RetryPolicy(max_attempts=4, initial_delay=0.5), [0.5, 1.0, 2.0]),
        (RetryPolicy(max_attempts=6, initial_delay=1, max_delay=5), [1.0, 2.0, 4.0, 5.0, 5.0]),
        (RetryPolicy(max_attempts=4, initial_delay=0.1, backoff=1), [0.1, 0.1, 0.1]),
        (RetryPolicy(max_attempts=3, initial_delay=2, backoff=3), [2.0, 6.0]),
        (RetryPolicy(max_attempts=3, initial_delay=100), [60.0, 60.0]),
        (RetryPolicy(max_attempts=2), [0.0]),
        (RetryPolicy(max_attempts=1, initial_delay=1), []),
    ],
)
def test_retry_policy_delays(policy: RetryPolicy, expected: list[float]) -> None:
    delays = list(policy.delays())
    assert delays == pytest.approx(expected)
    assert len(delays) == policy.max_attempts - 1
    assert list(policy.delays()) == delays  # pure: the same every time


# -- property ---------------------------------------------------------------------------------

TARGETS: dict[str, type[Event]] = {"event": Event, "added": Added, "removed": Removed}


def make_handler() -> c.Callable[[Event], None]:
    def handler(event: Event) -> None: ...

    return handler


@given(
    st.lists(
        st.tuples(st.integers(min_value=-3, max_value=3), st.sampled_from(sorted(TARGETS))),
        max_size=25,
    )
)
def test_subscriptions_for_is_sorted_by_priority_then_registration(
    registrations: list[tuple[int, str]],
) -> None:
    registry = HandlerRegistry()
    handlers = []
    for number, (priority, target) in enumerate(registrations):
        handler = make_handler()
        registry.subscribe(TARGETS[target], priority=priority, name=f"handler {number}")(handler)
        handlers.append(handler)

    receiving = [i for i, (_, target) in enumerate(registrations) if target != "removed"]
    expected = sorted(receiving, key=lambda i: (-registrations[i][0], i))
    assert handlers_of(registry.subscriptions_for(Added)) == [handlers[i] for i in expected]
    assert handlers_of(registry.subscriptions) == handlers
