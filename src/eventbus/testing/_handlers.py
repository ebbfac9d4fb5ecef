"""override(bus, handler, fake) and isolate(bus, *handlers): change what runs, for a block."""

from __future__ import annotations

import collections.abc as c
import contextlib
import dataclasses
import typing as t

from ..handlers.registry import HandlerRegistry, same_handler
from ..handlers.selection import Selector, describe, select, unmatched_error
from ..handlers.subscription import Subscription
from . import _state

__all__ = ["isolate", "override"]

F = t.TypeVar("F", bound=c.Callable[..., object])
T = t.TypeVar("T")


def override(
    bus: HandlerRegistry, handler: Selector, fake: F, /
) -> contextlib.AbstractContextManager[F]:
    """Run ``fake`` instead of ``handler`` inside the block; yields ``fake``.

    ``handler`` is the subscribed function or its name. The fake takes the
    handler's place: its name (so dead letters and traces name the
    handler), event classes, priority and retry policy; ``run_in_thread``
    and ``timeout`` carry over where the fake can honour them (a timeout
    needs an async fake). The fake may be sync or async whatever the
    handler is, a ``unittest.mock.Mock`` or ``AsyncMock`` included::

        with override(bus, charge_card, AsyncMock()) as charge:
            bus.publish(OrderPlaced(order_id="o1"))
        charge.assert_awaited_once()

    The module that subscribed the handler is not touched; at the end of
    the block the handler is back where it was. A handler that is not
    subscribed, or a fake that cannot take its place, raises at the call,
    before the block.
    """
    _check_registry(bus, "override")
    if isinstance(handler, str) and any(ch in handler for ch in "*?["):
        raise TypeError(
            f"override() replaces one handler, and {handler!r} is a glob; name the handler "
            "exactly, or pass the function"
        )
    originals = _chosen(bus, [handler], "override")
    fakes = [_fake_subscription(sub, fake) for sub in originals]
    name = originals[0].name

    def undo() -> None:  # the fake's subscriptions as they are now, whatever the block did
        bus._rearrange(lambda sub: same_handler(sub.handler, fake) and sub.name == name, originals)

    return _changed(bus, originals, fakes, undo, f"override({describe(handler)})", fake)


def isolate(
    bus: HandlerRegistry, /, *handlers: Selector
) -> contextlib.AbstractContextManager[tuple[Subscription, ...]]:
    """Inside the block, run only the handlers chosen; every other one is left out.

    Each of ``handlers`` is a subscribed function, a handler's name or a
    shell-style glob over names (``"shop.catalog.*"``), and must choose at
    least one handler (a typo fails at once, listing the names there are).
    Yields the subscriptions kept (chosen when ``isolate`` is called). An
    event whose every handler is left out is unhandled as far as the bus
    knows (with ``report_unhandled``, a dead letter). At the end of the
    block every handler is back, in its place.
    """
    _check_registry(bus, "isolate")
    if not handlers:
        raise TypeError("isolate() needs the handlers to keep: isolate(bus, handler, ...)")
    kept = _chosen(bus, list(handlers), "isolate")
    left_out = [sub for sub in bus.subscriptions if sub not in kept]
    shown = ", ".join(describe(h) for h in handlers)
    return _changed(
        bus,
        left_out,
        [],
        lambda: bus._rearrange(_nothing, left_out),
        f"isolate({shown})",
        tuple(kept),
    )


@contextlib.contextmanager
def _changed(
    bus: HandlerRegistry,
    removing: list[Subscription],
    adding: list[Subscription],
    undo: c.Callable[[], None],
    what: str,
    value: T,
) -> c.Iterator[T]:
    taken = {id(sub) for sub in removing}
    bus._rearrange(lambda sub: id(sub) in taken, adding)
    change = _state.Change(what, bus, undo)
    _state.add(change)
    try:
        yield value
    finally:
        change.undo()


def _nothing(sub: Subscription) -> bool:
    return False


def _check_registry(bus: object, helper: str) -> None:
    if not isinstance(bus, HandlerRegistry):
        raise TypeError(
            f"{helper}() takes the EventBus whose handlers to change, got {bus!r} (a "
            "HandlerRegistry works too, before bus.include() copies its subscriptions)"
        )


def _chosen(bus: HandlerRegistry, selectors: list[Selector], helper: str) -> list[Subscription]:
    subscriptions = bus.subscriptions
    chosen, unmatched = select(subscriptions, selectors)
    if unmatched:
        raise LookupError(f"{helper}(): " + unmatched_error(unmatched, subscriptions, repr(bus)))
    return chosen


def _fake_subscription(original: Subscription, fake: object) -> Subscription:
    """``fake`` checked as ``subscribe`` checks a handler, in ``original``'s place."""
    if not callable(fake):
        raise TypeError(
            f"cannot override {original.name} with {fake!r}: it is not callable; pass a "
            "function (or a unittest.mock.Mock) that takes one event"
        )
    event_type: object = (
        original.event_types[0] if len(original.event_types) == 1 else t.Union[original.event_types]  # noqa: UP007  # a runtime union of the classes
    )
    try:
        checked = Subscription.create(
            fake,
            event_type,
            priority=original.priority,
            retry=original.retry,
            run_in_thread=False,
            sequence=original.sequence,
            name=original.name,
            idempotent=original.idempotent,
            on_give_up=original.on_give_up,
        )
    except TypeError as error:  # subscribe's words, about the fake
        message = str(error).replace(
            f"cannot subscribe {original.name}", f"cannot override {original.name} with {fake!r}"
        )
        raise TypeError(message) from None
    return dataclasses.replace(
        checked,
        event_types=original.event_types,
        run_in_thread=original.run_in_thread and not checked.is_async,
        timeout=original.timeout if checked.is_async else None,
    )
