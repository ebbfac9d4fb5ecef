"""A tiny application for the command-line tests: ``--app tests.cli_app:bus``.

``book_courier`` fails unless ``CLI_APP_CARRIER=up`` is set in the environment,
so a test can dead-letter in one process and redrive in another.
"""

from __future__ import annotations

import os

from eventbus import Event, EventBus, HandlerRegistry


class ParcelReady(Event):
    event_type = "cli_app.parcel_ready"

    parcel_id: str


handlers = HandlerRegistry()


@handlers.subscribe
def book_courier(event: ParcelReady) -> None:
    if os.environ.get("CLI_APP_CARRIER") != "up":
        raise ConnectionError(f"carrier down for parcel {event.parcel_id}")


bus = EventBus()
bus.include(handlers)
not_a_bus = "a string"
