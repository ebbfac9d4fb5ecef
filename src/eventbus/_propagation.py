"""The trace context current when an event is written down, kept to be sent with it later.

An event written to an outbox is published later by a relay, in another
task or process, outside the request or handler that wrote it: without
help its send span would start a trace of its own. :func:`capture` takes
the context current at ``outbox.add`` as text headers (W3C ``traceparent``,
``baggage``: whatever OpenTelemetry's configured propagator writes), and
:func:`attached` makes them the current context again around the relay's
publish, so the send span is a child of the span that wrote the event.

Only in a process that uses OpenTelemetry (its context module imported):
elsewhere both do nothing, and eventbus never imports OpenTelemetry itself.
"""

from __future__ import annotations

import collections.abc as c
import contextlib
import logging
import sys

__all__ = ["attached", "capture"]

logger = logging.getLogger("eventbus")


def capture() -> dict[str, str]:
    """The current trace context as headers; {} with no OpenTelemetry or no context."""
    if "opentelemetry.context" not in sys.modules:
        return {}
    headers: dict[str, str] = {}
    try:  # instrumentation: a broken propagator never fails the caller's write
        from opentelemetry import propagate

        propagate.inject(headers)
    except Exception:
        logger.exception("the trace context could not be captured; the event goes without it")
        return {}
    return headers


@contextlib.contextmanager
def attached(headers: c.Mapping[str, str]) -> c.Iterator[None]:
    """``headers``' context current for the block (nothing without headers or OpenTelemetry)."""
    if not headers or "opentelemetry.context" not in sys.modules:
        yield
        return
    token = None
    try:  # instrumentation: a broken propagator never keeps the event from being sent
        from opentelemetry import context, propagate

        token = context.attach(propagate.extract(headers))
    except Exception:
        logger.exception("the trace context kept with the event could not be restored")
    if token is None:  # (outside the except: the block's errors do not chain to it)
        yield
        return
    try:
        yield
    finally:
        context.detach(token)
