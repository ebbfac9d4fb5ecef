"""The broker bus the memory benchmark's worker process runs.

``python -m eventbus worker benchmarks.redis_app:bus``, its server and
namespace from ``BENCH_REDIS_URL`` and ``BENCH_REDIS_NAMESPACE``.
"""

from __future__ import annotations

import os

from benchmarks.redis_events import Tick
from eventbus import EventBus
from eventbus.redis import RedisBroker

bus = EventBus(
    broker=RedisBroker(
        os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
        namespace=os.environ.get("BENCH_REDIS_NAMESPACE", "bench"),
    )
)


@bus.subscribe(name="noop")
async def noop(event: Tick) -> None:
    """Does nothing: what is measured is the worker around it."""
