"""``python -m examples.cart [SCENARIO ...] [--async]``: play the shop's scenarios.

Each scenario prints its cascade tree (every event, the handlers that ran on
it, retries, dead letters, the events they published) and the shop's final
state. With no name, every scenario plays, in order.
"""

from __future__ import annotations

import logging
import os
import sys

from .scenarios import chosen, command_line, show


def main(argv: list[str] | None = None) -> int:
    parser = command_line(
        "python -m examples.cart",
        "The shopping-cart example of eventbus: six modules that talk only through events. "
        "Plays the named scenarios (all of them by default) and prints, for each, the "
        "cascade tree and the final state.",
    )
    parser.add_argument(
        "--async",
        dest="mode",
        action="store_const",
        const="async",
        default="sync",
        help="dispatch with `await bus.publish_async` (default: `bus.publish`)",
    )
    parser.add_argument(
        "--log", action="store_true", help="also print the log (INFO and up) to stderr"
    )
    args = parser.parse_args(argv)
    scenarios = chosen(parser, args.scenarios)

    # The trees show every retry and dead letter; the log would repeat them, with tracebacks.
    if args.log:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    else:
        logging.getLogger().addHandler(logging.NullHandler())

    try:
        for index, scenario in enumerate(scenarios):
            print(("\n" if index else "") + show(scenario, args.mode), flush=True)
    except BrokenPipeError:  # piped into `head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
