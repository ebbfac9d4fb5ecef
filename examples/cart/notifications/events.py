"""The notifications module's event: an email it would have sent."""

from __future__ import annotations

from eventbus import Event


class EmailSent(Event):
    event_type = "notifications.email_sent"

    to: str
    subject: str
