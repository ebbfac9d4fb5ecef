"""The event of the Redis benchmarks, shared by the harness and its worker process."""

from __future__ import annotations

from eventbus import Event


class Tick(Event):
    event_type = "bench.tick"

    n: int
