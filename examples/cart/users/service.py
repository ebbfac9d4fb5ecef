"""Users: register with an email and a password, log in for a session token.

The password is hashed with scrypt (a standard key-derivation function) and
a random salt per user, compared in constant time, and never stored, logged
or published. Logging in returns a session token to the caller; the events
carry only its SHA-256 digest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import re
import secrets

from pydantic import BaseModel, ConfigDict, Field

from ..storage import MemoryStore, Store, Table, transactional
from .events import LoginFailed, UserLoggedIn, UserRegistered

logger = logging.getLogger(__name__)

#: One "@", something before it, a dot in the part after it, no spaces: a clear rule that
#: catches typos. Only a confirmation email proves an address works.
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
MIN_PASSWORD_LENGTH = 8


@dataclasses.dataclass(frozen=True, slots=True)
class ScryptCost:
    """scrypt's work factors. The default is the scrypt paper's cost for interactive
    log-ins (about 60 ms here); OWASP now suggests ``n=2**17``: measure on your hardware."""

    n: int = 2**14
    r: int = 8
    p: int = 1


DEFAULT_COST = ScryptCost()


class UserRecord(BaseModel):
    model_config = ConfigDict(frozen=True, ser_json_bytes="base64", val_json_bytes="base64")

    user_id: str
    email: str
    salt: bytes
    password_hash: bytes = Field(repr=False)


class Users:
    """The users module: state (in ``store``) and user actions. It handles no events."""

    def __init__(self, store: Store | None = None, *, cost: ScryptCost | None = None):
        self.store = store if store is not None else MemoryStore()
        self._cost = cost or DEFAULT_COST
        self._by_email: Table[UserRecord] = self.store.table("users", UserRecord)
        # Hashed for unknown emails too, so that a log-in takes as long either way.
        self._dummy = UserRecord(
            user_id="", email="", salt=secrets.token_bytes(16), password_hash=b""
        )

    # -- user actions --------------------------------------------------------------

    @transactional
    def register(self, email: str, password: str) -> str:
        """Create a user and return its id; ``ValueError`` says what is wrong with the input."""
        email = normalize_email(email)
        if len(password) < MIN_PASSWORD_LENGTH:
            raise ValueError(f"password too short: use at least {MIN_PASSWORD_LENGTH} characters")
        if email in self._by_email:
            raise ValueError(f"{email} is already registered; log in instead")
        salt = secrets.token_bytes(16)
        user = UserRecord(
            user_id=f"u-{len(self._by_email) + 1}",
            email=email,
            salt=salt,
            password_hash=self._hash(password, salt),
        )
        self._by_email.put(email, user)
        logger.info("registered %s as %s", email, user.user_id)
        self.store.publish(UserRegistered(user_id=user.user_id, email=email))
        return user.user_id

    @transactional
    def log_in(self, email: str, password: str) -> str | None:
        """Return a new session token, or None (and publish LoginFailed) on bad credentials."""
        email = email.strip().lower()
        user = self._by_email.get(email)
        expected = self._hash(password, (user or self._dummy).salt)
        if user is None or not hmac.compare_digest(expected, user.password_hash):
            reason = "unknown email" if user is None else "wrong password"
            logger.info("log-in refused for %s: %s", email, reason)
            self.store.publish(LoginFailed(email=email, reason=reason))
            return None
        token = secrets.token_urlsafe(32)
        logger.info("%s logged in", user.user_id)
        self.store.publish(
            UserLoggedIn(
                user_id=user.user_id, email=email, session_digest=UserLoggedIn.digest(token)
            )
        )
        return token

    # -- state ------------------------------------------------------------------------

    def user_id_of(self, email: str) -> str | None:
        user = self._by_email.get(email.strip().lower())
        return user.user_id if user else None

    def _hash(self, password: str, salt: bytes) -> bytes:
        cost = self._cost
        return hashlib.scrypt(
            password.encode(),
            salt=salt,
            n=cost.n,
            r=cost.r,
            p=cost.p,
            dklen=32,
            maxmem=2 * 128 * cost.r * cost.n + 1024 * 1024,
        )


def normalize_email(email: str) -> str:
    """The address, trimmed and lower-cased, or ``ValueError`` naming the rule it breaks."""
    email = email.strip().lower()
    if not EMAIL.fullmatch(email) or len(email) > 254:
        raise ValueError(
            f"not an email address: {email!r} (expected one '@', a name before it, "
            "a domain with a dot after it, no spaces)"
        )
    return email
