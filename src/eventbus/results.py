"""PublishResult: what one publish call did."""

from __future__ import annotations

import typing as t

if t.TYPE_CHECKING:
    from .bus import _Root
    from .dead_letters import DeadLetter
    from .events import Event

__all__ = ["PublishResult"]


class PublishResult:
    """The outcome of publishing one event.

    ``event`` is the event as delivered: for an event published from inside
    a handler, a copy carrying its ``causation_id`` and ``correlation_id``.
    ``dead_letters`` holds the letters of this event and of every event its
    handlers published, directly or not.

    A result returned by a publish call made inside a handler is filled in
    as the cascade proceeds, and complete when the top-level call returns.
    """

    # The underscored slots place the event in its cascade while it runs; one object per
    # event instead of two keeps the publish path short.
    __slots__ = ("_cascade", "_depth", "_parent", "dead_letters", "event")

    def __init__(self, event: Event, dead_letters: list[DeadLetter] | None = None) -> None:
        self.event = event
        self.dead_letters: list[DeadLetter] = dead_letters if dead_letters is not None else []
        self._cascade: _Root | None = None
        self._depth = 0
        self._parent: PublishResult | None = None

    @property
    def ok(self) -> bool:
        """True when no handler ended dead-lettered."""
        return not self.dead_letters

    def __repr__(self) -> str:
        return (
            f"<PublishResult {self.event.event_type} ok={self.ok} "
            f"dead_letters={len(self.dead_letters)}>"
        )
