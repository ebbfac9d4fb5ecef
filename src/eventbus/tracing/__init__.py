"""Trace: record what a bus dispatches, as it happens, and show it as a tree or a diagram.

A :class:`Trace` listens to the bus's lifecycle signals (``eventbus.signals``)
and builds the cascade they describe: each event, the handlers that ran on
it with their outcome, failed attempts and retries, dead letters, and the
events each handler published, under that handler. ``render()`` prints the
record as an indented tree for a terminal; ``mermaid()`` draws which handler
consumed which event type and published which, for a diagram that can be
committed and compared with a freshly generated one::

    with Trace(bus) as trace:
        bus.publish(CheckoutRequested(cart_id="c1"))
    print(trace.render())

A trace keeps every event it records (and the records of their handlers)
until it is cleared or dropped: it grows with what it records. Close it, or
use it as a context manager, when you are done: an open trace's receivers
stay connected, and keep it alive, for as long as the bus lives.

This package only re-exports; the parts are ``records`` (the frozen
snapshot types), ``recorder`` (:class:`Trace`), ``tree`` (the text tree:
``render``) and ``mermaid`` (the diagram: ``flowchart``).
"""

from __future__ import annotations

from .recorder import Trace
from .records import Outcome, TracedEvent, TracedFailure, TracedHandler

__all__ = ["Outcome", "Trace", "TracedEvent", "TracedFailure", "TracedHandler"]
