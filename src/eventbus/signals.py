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
dispatch. A signal with no receivers
costs the bus one attribute check.

Like every blinker signal, receivers are held by weak reference unless
connected with ``weak=False``: a lambda or a local function connected with
the default goes away with its last reference.
"""

from __future__ import annotations

import inspect
import logging
import typing as t
import weakref

from blinker import NamedSignal, Namespace

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

_signals = Namespace()

event_published: NamedSignal = _signals.signal(
    "event-published",
    doc="""An event was accepted by ``publish`` or ``publish_async``: ``event=``,
    ``publisher=`` (the name of the handler that published it, or None for a
    top-level publish).

    Sent before its handlers run; for an event published from a handler,
    when it is queued, with its ``causation_id`` and ``correlation_id`` set.
    While it has receivers, the bus takes a slightly slower path that keeps
    track of the running handler.
    """,
)

handler_succeeded: NamedSignal = _signals.signal(
    "handler-succeeded",
    doc="""A handler finished an event: ``event=``, ``handler=`` (the subscription's
    name), ``attempts=`` (1 unless earlier attempts failed).""",
)

handler_failed: NamedSignal = _signals.signal(
    "handler-failed",
    doc="""An attempt of a handler raised: ``event=``, ``handler=``, ``attempt=``
    (1 for the first), ``error=`` (the exception), ``final=`` (True when no
    attempt follows: the pair is about to be dead-lettered).""",
)

handler_retrying: NamedSignal = _signals.signal(
    "handler-retrying",
    doc="""A failed handler will be attempted again: ``event=``, ``handler=``,
    ``attempt=`` (the attempt that failed), ``error=``, ``delay=`` (seconds
    until the next attempt).""",
)

event_dead_lettered: NamedSignal = _signals.signal(
    "event-dead-lettered",
    doc="""A dead letter was made: ``dead_letter=``. Sent once per (event, handler)
    pair, after its last attempt; also for an unhandled event when the bus
    reports them.""",
)

event_unhandled: NamedSignal = _signals.signal(
    "event-unhandled",
    doc="""An event was published that no handler is subscribed to: ``event=``.""",
)

dead_letter_redriven: NamedSignal = _signals.signal(
    "dead-letter-redriven",
    doc="""A dead letter was redriven: ``dead_letter=`` (as it was before),
    ``ok=`` (True: the handler succeeded and the letter was removed).""",
)


def send(signal: NamedSignal, sender: object, /, **kwargs: object) -> None:
    """Call the receivers of ``signal`` for ``sender``, in the order they were connected.

    Log, never raise, their errors. (blinker itself calls them in set order,
    which changes from run to run.)
    """
    for receiver in _in_connection_order(signal, list(signal.receivers_for(sender))):
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
