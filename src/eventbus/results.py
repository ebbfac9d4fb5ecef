"""PublishResult: what one publish call did."""

from __future__ import annotations

import typing as t

if t.TYPE_CHECKING:
    from .bus import EventBus
    from .cascade import Cascade
    from .dead_letters import DeadLetter
    from .events import Event

__all__ = ["PublishResult"]


class PublishResult:
    """The outcome of publishing one event.

    ``event`` is the event as delivered: for an event built outside a
    handler and published from inside one, a copy carrying its
    ``causation_id`` and ``correlation_id``. ``dead_letters`` holds the
    letters of this event and of every event its handlers published,
    directly or not.

    A result returned by a publish call made inside a handler is filled in
    as the cascade proceeds, and complete when the top-level call returns.
    """

    # The underscored slots place the event in its cascade while it runs: the bus, the
    # result of the event whose handler published it, the cascade (made when the first
    # event is queued in it), and on a root whether its top-level call has ended. One
    # object per event, and none more for a publish whose handlers publish nothing.
    __slots__ = ("_bus", "_cascade", "_closed", "_parent", "dead_letters", "event")

    def __init__(self, event: Event, dead_letters: list[DeadLetter] | None = None) -> None:
        self.event = event
        self.dead_letters: list[DeadLetter] = dead_letters if dead_letters is not None else []
        self._bus: EventBus | None = None
        self._parent: PublishResult | None = None
        self._cascade: Cascade | None = None
        self._closed = True

    @property
    def ok(self) -> bool:
        """True when no handler ended dead-lettered."""
        return not self.dead_letters

    def __repr__(self) -> str:
        return (
            f"<PublishResult {self.event.event_type} ok={self.ok} "
            f"dead_letters={len(self.dead_letters)}>"
        )
