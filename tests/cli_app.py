"""A tiny application for the command-line tests: ``--app tests.cli_app:bus``.

Its handlers fail until the environment says otherwise, so that a test can
dead-letter in one process and redrive in another:

- ``book_courier`` (in ``handlers``) fails unless ``CLI_APP_CARRIER=up``; once
  it succeeds it publishes ``CourierBooked`` on ``bus``;
- ``notify_customer`` (on ``CourierBooked``) fails unless ``CLI_APP_MAIL=up``;
- ``open_claim`` (on ``ParcelLost``, subscribed to ``bus`` only, so that a bus
  made of ``handlers`` alone leaves ``ParcelLost`` unhandled) fails unless
  ``CLI_APP_CLAIMS=up``.

The bus keeps its own letters in memory: the command line must never write
there (they would vanish with the process), only to ``--db``.
"""

from __future__ import annotations

import os

from eventbus import Event, EventBus, HandlerRegistry


class ParcelReady(Event):
    event_type = "cli_app.parcel_ready"

    parcel_id: str


class CourierBooked(Event):
    event_type = "cli_app.courier_booked"

    parcel_id: str


class ParcelLost(Event):
    event_type = "cli_app.parcel_lost"

    parcel_id: str


handlers = HandlerRegistry()


@handlers.subscribe
def book_courier(event: ParcelReady) -> None:
    if os.environ.get("CLI_APP_CARRIER") != "up":
        raise ConnectionError(f"carrier down for parcel {event.parcel_id}")
    bus.publish(CourierBooked(parcel_id=event.parcel_id))


@handlers.subscribe
def notify_customer(event: CourierBooked) -> None:
    if os.environ.get("CLI_APP_MAIL") != "up":
        raise ConnectionError(f"mail server down for parcel {event.parcel_id}")


def open_claim(event: ParcelLost) -> None:
    if os.environ.get("CLI_APP_CLAIMS") != "up":
        raise ConnectionError(f"claims desk closed for parcel {event.parcel_id}")


bus = EventBus()
bus.include(handlers)
bus.subscribe(open_claim)
#: The same handlers without open_claim: nothing handles ParcelLost here.
bare = EventBus()
bare.include(handlers)
not_a_bus = "a string"
