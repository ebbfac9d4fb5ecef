"""Lifecycle hooks: blinker signals sent by every bus, with the bus as sender.

Connect a receiver for one bus, in the Flask style::

    from eventbus import signals

    def alert(bus, *, dead_letter):
        pager.send(f"{dead_letter.handler} gave up on {dead_letter.event_type}")

    signals.event_dead_lettered.connect(alert, sender=bus)

or for every bus by leaving out ``sender``. Receivers are called
synchronously, in the thread (or event loop) that is dispatching, with the
keyword arguments listed below, in the order they were connected. A
receiver that raises is logged on the ``eventbus`` logger and never breaks
dispatch.

A signal with no receiver for a bus costs that bus nothing: each bus knows
which signals have receivers for it, kept up to date on every connect and
disconnect (a receiver for another bus, or a disconnected one, does not
slow it down), and compiles only those sends into its dispatch plans.

Like every blinker signal, receivers are held by weak reference unless
connected with ``weak=False``: a lambda or a local function connected with
the default goes away with its last reference.
"""

from __future__ import annotations

import collections.abc as c
import inspect
import logging
import typing as t
import weakref

from blinker import ANY, NamedSignal
from blinker._utilities import make_id
from blinker.base import ANY_ID

__all__ = [
    "dead_letter_redriven",
    "event_dead_lettered",
    "event_published",
    "event_unhandled",
    "handler_failed",
    "handler_retrying",
    "handler_succeeded",
]

logger = logging.getLogger("eventbus")


class HookSignal(NamedSignal):
    """A blinker signal that tells the buses concerned when its receivers change.

    A connect or disconnect for one bus (``sender=bus``) concerns that bus;
    one for every sender (the default), every bus. The bus then recompiles
    its plans on its next publish.
    """

    def connect(self, receiver: t.Any, sender: t.Any = ANY, weak: bool = True) -> t.Any:
        connected = super().connect(receiver, sender, weak)
        _changed(None if sender is ANY else make_id(sender))
        return connected

    # Every disconnect goes through here: disconnect(), and blinker's clean-up of a weakly
    # held receiver that was garbage collected.
    def _disconnect(self, receiver_id: c.Hashable, sender_id: c.Hashable) -> None:
        super()._disconnect(receiver_id, sender_id)
        _changed(None if sender_id == ANY_ID else sender_id)

    def _clear_state(self) -> None:
        super()._clear_state()
        _changed(None)


class Listener(t.Protocol):
    """What a signal tells about its receivers changing (a bus)."""

    def _hooks_changed(self) -> None: ...


#: The buses alive, by the id blinker gives them as senders.
_listeners: weakref.WeakValueDictionary[c.Hashable, Listener] = weakref.WeakValueDictionary()


def watch(listener: Listener, /) -> None:
    """Have ``listener._hooks_changed()`` called whenever receivers for it change."""
    _held.clear()  # a new sender may reuse the id of one that is gone
    _listeners[make_id(listener)] = listener


def watched() -> list[Listener]:
    """The listeners alive that ``watch`` was called for (every bus not yet collected)."""
    return list(_listeners.values())


def _changed(sender_id: c.Hashable | None) -> None:
    _held.clear()
    if sender_id is None:
        for listener in list(_listeners.values()):
            listener._hooks_changed()
    else:
        concerned = _listeners.get(sender_id)
        if concerned is not None:
            concerned._hooks_changed()


def listened(sender: object, /) -> frozenset[NamedSignal]:
    """The signals of this module that have at least one live receiver for ``sender``."""
    return frozenset(
        signal for signal in ALL if signal.receivers and any(signal.receivers_for(sender))
    )


event_published: NamedSignal = HookSignal(
    "event-published",
    doc="""An event was accepted by ``publish`` or ``publish_async``: ``event=``,
    ``publisher=`` (the name of the handler that published it, or None for a
    top-level publish).

    Sent before its handlers run; for an event published from a handler,
    when it is queued, with its ``causation_id`` and ``correlation_id`` set.
    On a bus whose transport takes the event (a broker), once the transport
    accepted it.
    While it has receivers, the bus takes a slightly slower path that keeps
    track of the running handler.
    """,
)

handler_succeeded: NamedSignal = HookSignal(
    "handler-succeeded",
    doc="""A handler finished an event: ``event=``, ``handler=`` (the subscription's
    name), ``attempts=`` (1 unless earlier attempts failed).""",
)

handler_failed: NamedSignal = HookSignal(
    "handler-failed",
    doc="""An attempt of a handler raised: ``event=``, ``handler=``, ``attempt=``
    (1 for the first), ``error=`` (the exception), ``final=`` (True when no
    attempt follows: the pair is about to be dead-lettered).""",
)

handler_retrying: NamedSignal = HookSignal(
    "handler-retrying",
    doc="""A failed handler will be attempted again: ``event=``, ``handler=``,
    ``attempt=`` (the attempt that failed), ``error=``, ``delay=`` (seconds
    until the next attempt).""",
)

event_dead_lettered: NamedSignal = HookSignal(
    "event-dead-lettered",
    doc="""A dead letter was made: ``dead_letter=``. Sent once per (event, handler)
    pair, after its last attempt; also for an unhandled event when the bus
    reports them, and for an outbox row the bus's relay could not send
    (handler ``RELAY``).""",
)

event_unhandled: NamedSignal = HookSignal(
    "event-unhandled",
    doc="""An event was published that no handler is subscribed to: ``event=``.""",
)

dead_letter_redriven: NamedSignal = HookSignal(
    "dead-letter-redriven",
    doc="""A dead letter was redriven: ``dead_letter=`` (as it was before),
    ``ok=`` (True: the handler succeeded and the letter was removed).""",
)


#: Every signal of this module.
ALL: tuple[NamedSignal, ...] = (
    event_published,
    handler_succeeded,
    handler_failed,
    handler_retrying,
    event_dead_lettered,
    event_unhandled,
    dead_letter_redriven,
)


def send(signal: NamedSignal, sender: object, /, **kwargs: object) -> None:
    """Call the receivers of ``signal`` for ``sender``, in the order they were connected.

    Log, never raise, their errors. (blinker itself calls them in set order,
    which changes from run to run.)
    """
    if not signal.receivers:
        return
    key = (id(signal), id(sender))
    held = _held.get(key)
    if held is None:
        ordered = _in_connection_order(signal, list(signal.receivers_for(sender)))
        held = _held[key] = tuple(signal.receivers.get(make_id(r), r) for r in ordered)
    for reference in held:
        receiver = reference() if isinstance(reference, weakref.ref) else reference
        if receiver is None:  # collected since: blinker's clean-up clears this cache
            continue
        try:
            returned = receiver(sender, **kwargs)
            if inspect.iscoroutine(returned):
                returned.close()
                raise TypeError(
                    "eventbus calls signal receivers synchronously; an async receiver's "
                    "coroutine would never run. Make the receiver a plain function"
                )
        except Exception:
            logger.exception(
                "signal receiver %s of %s raised; dispatch goes on", _name(receiver), signal.name
            )


#: The receivers of (signal, sender), in connection order, as blinker holds them (weakly or
#: not): worked out on the first send after any connect or disconnect, then reused.
_held: dict[tuple[int, int], tuple[t.Any, ...]] = {}


def _in_connection_order(signal: NamedSignal, chosen: list[t.Any]) -> list[t.Any]:
    if len(chosen) < 2:
        return chosen
    rank: dict[t.Any, int] = {}
    try:
        for position, held in enumerate(signal.receivers.values()):
            target = held() if isinstance(held, weakref.ref) else held
            if target is not None:
                rank.setdefault(target, position)
        return sorted(chosen, key=lambda receiver: rank.get(receiver, len(rank)))
    except TypeError:  # an unhashable receiver: keep blinker's order
        return chosen


def _name(receiver: t.Any) -> str:
    return f"{getattr(receiver, '__module__', '?')}.{getattr(receiver, '__qualname__', receiver)}"
