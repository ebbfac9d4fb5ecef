"""Helpers for testing an application that uses eventbus, and the pytest plugin's parts.

- :func:`capture`: record what a bus publishes, cascades included, and
  assert on it (``published.find(StockReserved, sku="BOOK")``,
  ``published.assert_caused(order, PaymentTaken)``), with failure messages
  that show what was published instead.
- :func:`override` and :func:`isolate`: run a fake instead of a handler,
  or only some handlers, for a block, without touching the module that
  subscribed them.
- :class:`FakeClock` and :func:`use_clock`: retry waits that take no time
  and time a test moves forward, on a bus that already exists.
- :func:`clear_dead_letters` and :func:`assert_no_dead_letters`.
- :class:`InMemoryBroker` and :func:`use_broker`: a broker bus's delivery
  (a group per handler, attempts as deliveries, dead letters, children with
  the acknowledgement) in this process, for tests without a Redis server.
- :class:`RedisServer`: a private redis-server on a free loopback port, for
  tests (and demos) with one.

Installing eventbus installs the pytest plugin (``eventbus.testing.plugin``):
fixtures ``bus``, ``published``, ``fake_clock`` and ``dead_letters``, and a
check that fails a test that leaves a signal receiver connected, a helper
block open or a clock replaced.

Every helper works through the bus's public seams (its ``event_published``
signal, its subscriptions, its clock, its dead-letter store), so they work
on any bus whatever its transport. Nothing here imports pytest.
"""

from __future__ import annotations

from ._broker import InMemoryBroker, use_broker
from ._capture import Published, capture
from ._clock import FakeClock, use_clock
from ._dead_letters import assert_no_dead_letters, clear_dead_letters
from ._handlers import isolate, override
from ._redis_server import RedisServer, RedisServerMissing

__all__ = [
    "FakeClock",
    "InMemoryBroker",
    "Published",
    "RedisServer",
    "RedisServerMissing",
    "assert_no_dead_letters",
    "capture",
    "clear_dead_letters",
    "isolate",
    "override",
    "use_broker",
    "use_clock",
]
