"""The users module's events: who registered, who logged in, who failed to.

No event carries a password, in clear or hashed: events are logged, traced
and kept in dead letters. A session travels as the SHA-256 digest of its
token, so the token itself (a bearer credential) stays with the user.
"""

from __future__ import annotations

import hashlib
import typing as t

from eventbus import Event


class UserRegistered(Event):
    event_type = "users.user_registered"

    user_id: str
    email: str


class UserLoggedIn(Event):
    event_type = "users.user_logged_in"

    user_id: str
    email: str
    #: ``UserLoggedIn.digest(token)``: enough to recognise the token, useless to replay.
    session_digest: str

    @staticmethod
    def digest(token: str) -> str:
        """The digest of a session token, as the events carry it."""
        return hashlib.sha256(token.encode()).hexdigest()


class LoginFailed(Event):
    event_type = "users.login_failed"

    email: str
    reason: t.Literal["unknown email", "wrong password"]
