"""Idempotent handlers: the layer that skips an event its handler already handled.

A subscription made with ``idempotent=True`` gets this layer outermost in
its chain (decided when the plan is compiled). Each attempt first asks the
bus's inbox whether (handler, event id) is recorded: if so the handler is
not called and the run counts as done. Otherwise the handler runs with the
run's :class:`~eventbus.inbox.protocol.Handling` current (what
``SQLiteInbox.transaction()`` reads), and after it returned the record is
written, unless a transaction of the inbox committed it already with the
handler's own writes.

So: a duplicate that comes after the record is skipped. What can still
run twice is a run that stopped (a crash, a kill) after its side effects
and before the record, unless the side effects and the record are one
transaction (``SQLiteInbox.transaction()``); and two runs of one event at
the same instant, both before either recorded, unless they write in such a
transaction (the second one's commit fails and it is skipped).
"""

from __future__ import annotations

import logging
import typing as t

from ._logs import event_fields
from .inbox.protocol import AlreadyHandled, Handling, Inbox, handling
from .middleware import AsyncCallNext, CallNext, HandlerCall, Middleware

if t.TYPE_CHECKING:
    from .events import Event
    from .handlers.subscription import Subscription

__all__ = ["Idempotent"]

logger = logging.getLogger("eventbus.idempotency")


class Idempotent(Middleware):
    """Skip what ``inbox`` says was handled; record what succeeds (see the module)."""

    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox

    def applies_to(self, subscription: Subscription, /) -> bool:
        return subscription.idempotent

    def handle(self, call_next: CallNext, event: Event, call: HandlerCall, /) -> None:
        state = self._start(call, event)
        if state is None:
            return
        token = handling.set(state)
        try:
            call_next(event, call)
        except AlreadyHandled:
            _skipped(state.handler, event)
            return
        finally:
            handling.reset(token)
        self._record(state, event)

    async def handle_async(
        self, call_next: AsyncCallNext, event: Event, call: HandlerCall, /
    ) -> None:
        state = self._start(call, event)
        if state is None:
            return
        token = handling.set(state)
        try:
            await call_next(event, call)
        except AlreadyHandled:
            _skipped(state.handler, event)
            return
        finally:
            handling.reset(token)
        self._record(state, event)

    def _start(self, call: HandlerCall, event: Event) -> Handling | None:
        """The run's state, or None (logged) when the inbox has it handled already."""
        name = call.subscription.name
        if self.inbox.seen(name, event.event_id):  # fails: the attempt fails, and is retried
            _skipped(name, event)
            return None
        return Handling(self.inbox, name, event.event_id)

    def _record(self, state: Handling, event: Event) -> None:
        """Record a run that succeeded; a record that fails is logged, not a failed attempt.

        The handler's effects happened: running it again for this delivery
        (a retry) or dead-lettering the event would be wrong. Only a later
        duplicate of the event may run again.
        """
        if state.recorded:
            return  # committed with the handler's writes by an inbox transaction
        try:
            self.inbox.record(state.handler, event.event_id)
        except Exception:
            logger.exception(
                "%s handled %s (event_id=%s) but its inbox record failed: a duplicate of it "
                "would run again",
                state.handler,
                event.event_type,
                event.event_id,
                extra=event_fields(event, state.handler),
            )


def _skipped(handler: str, event: Event) -> None:
    logger.info(
        "%s already handled %s (event_id=%s): skipped",
        handler,
        event.event_type,
        event.event_id,
        extra=event_fields(event, handler),
    )
