"""``python -m examples.cart.services [SCENARIO ...]``: the shop's scenarios, as six services.

Starts a private redis-server (the ``redis-server`` program: ``make
redis-server`` installs it) in a temporary directory, and for each scenario
a fresh shop: the six services as worker processes on it, the scenario
played through them, its cascade (read back from the Redis stream) and its
final state printed. Everything it started is stopped at the end.
"""

from __future__ import annotations

import logging
import pathlib
import sys
import tempfile

from eventbus.testing import RedisServer, RedisServerMissing

from ..scenarios import chosen, command_line
from .demo import ServiceFailedError, show


def main(argv: list[str] | None = None) -> int:
    parser = command_line(
        "python -m examples.cart.services",
        "The shopping-cart example of eventbus as six services (users, catalog, cart, "
        "payments, checkout, notifications), each a worker process on a private Redis with "
        "its own SQLite file. Plays the named scenarios (all by default) and prints, for "
        "each, the cascade and the final state: the same final state as "
        "`python -m examples.cart`.",
    )
    parser.add_argument(
        "--keep", metavar="DIR", help="keep the services' files and logs in DIR (default: none)"
    )
    args = parser.parse_args(argv)
    scenarios = chosen(parser, args.scenarios)
    logging.getLogger().addHandler(logging.NullHandler())  # the services log to their files

    with tempfile.TemporaryDirectory(prefix="cart-services-") as scratch:
        root = pathlib.Path(args.keep) if args.keep else pathlib.Path(scratch)
        try:
            with RedisServer(pathlib.Path(scratch) / "redis") as server:
                for index, scenario in enumerate(scenarios):
                    output = show(scenario, server.url, root / scenario.name)
                    print(("\n" if index else "") + output, flush=True)
        except (RedisServerMissing, ServiceFailedError) as error:
            print(f"python -m examples.cart.services: {error}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
