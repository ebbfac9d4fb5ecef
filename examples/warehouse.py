"""A warehouse that ships paid orders: retries, a durable dead-letter store, and redrive.

- ``pack_order`` is flaky: the label printer jams twice, then works. Its
  retry policy recovers it.
- ``book_courier`` calls a carrier API that is down until the environment
  says ``CARRIER_API=up``. Its letter lands in a SQLite store, to be redriven
  from the command line once the carrier is back::

      python -m eventbus dead-letters list --db warehouse-dlq.db
      CARRIER_API=up python -m eventbus dead-letters redrive --all \\
          --db warehouse-dlq.db --app examples.warehouse:bus

The store's path comes from ``WAREHOUSE_DLQ`` (default ``warehouse-dlq.db``).
Used by docs/retries.md, whose example runs in the tests.
"""

from __future__ import annotations

import os

from eventbus import Clock, Event, EventBus, RetryPolicy, SQLiteDeadLetterStore


class OrderPaid(Event):
    event_type = "warehouse.order_paid"

    order_id: str
    address: str


class Warehouse:
    """The warehouse's state and handlers; its methods are subscribed to its bus."""

    def __init__(
        self, *, path: str | None = None, clock: Clock | None = None
    ) -> None:
        self.printer_jams_left = 2
        self.shipments: list[str] = []
        store = SQLiteDeadLetterStore(path or os.environ.get("WAREHOUSE_DLQ", "warehouse-dlq.db"))
        # Tests pass a clock whose retries do not really wait.
        self.bus = EventBus(dead_letters=store, clock=clock)
        self.bus.subscribe(
            self.pack_order, retry=RetryPolicy(max_attempts=4, initial_delay=0.5, jitter=0.1)
        )
        self.bus.subscribe(
            self.book_courier,
            retry=RetryPolicy(max_attempts=3, initial_delay=1.0, give_up_on=(ValueError,)),
        )

    def pack_order(self, event: OrderPaid) -> None:
        if self.printer_jams_left > 0:
            self.printer_jams_left -= 1
            raise ConnectionError("label printer jammed")

    def book_courier(self, event: OrderPaid) -> None:
        if not event.address.strip():
            raise ValueError("no address: retrying cannot fix that")
        if os.environ.get("CARRIER_API") != "up":
            raise ConnectionError("carrier API unreachable")
        self.shipments.append(event.order_id)


#: The bus the command line loads with ``--app examples.warehouse:bus``. Building it at
#: import creates no database: the store makes its file at its first letter.
bus = Warehouse().bus
