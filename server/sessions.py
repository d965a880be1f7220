"""Dashboard sessions: sign-in turns a key into a session cookie; the key itself is never kept or sent back.

The cookie holds only a random session id and its HMAC, signed with a secret made at random when the
process starts. The id maps, in this process's memory, to the key's name and role and to the session's
CSRF token (synchronizer pattern: every form carries it). So a restart signs everybody out, and with
several replicas a browser needs the same replica each time (sticky sessions) or signs in again.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .constants import MAX_SESSIONS, SESSION_IDLE, SESSION_TTL
from .model import Principal

SESSION_COOKIE = "callme_session"
# The signed double-submit CSRF cookie of forms sent without a session (csrf.py): the sign-in form, and every
# form of a server run without authentication.
CSRF_COOKIE = "callme_csrf"
CSRF_FIELD = "csrf"
HOST_PREFIX = "__Host-"


@dataclass
class Session:
    id: str = field(repr=False)
    principal: Principal
    csrf: str = field(repr=False)
    created: float
    seen: float


def cookie_name(name: str, https: bool) -> str:
    """The name a cookie goes by. Over https it is `__Host-` prefixed: a browser then accepts it only with
    Secure, Path=/ and no Domain, set by this very origin, so neither a sibling subdomain nor a plain-http
    man in the middle can plant one. Plain http (a local server, the tests) cannot carry the prefix."""
    return HOST_PREFIX + name if https else name


def new_token() -> str:
    return secrets.token_urlsafe(32)


def same(presented: str | None, expected: str | None) -> bool:
    """Constant-time comparison of two tokens; a missing one never matches."""
    if not presented or not expected:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())


class Sessions:
    def __init__(
        self,
        *,
        secret: bytes | None = None,
        clock: Callable[[], float] = time.monotonic,
        ttl: float = SESSION_TTL,
        idle: float = SESSION_IDLE,
        cap: int = MAX_SESSIONS,
    ) -> None:
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        self._clock = clock
        self._ttl, self._idle, self._cap = ttl, idle, cap
        self._sessions: dict[str, Session] = {}

    def _sign(self, session_id: str) -> str:
        mac = hmac.new(self._secret, session_id.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def create(self, principal: Principal) -> tuple[str, Session]:
        """A new session for `principal`; returns the cookie value and the session."""
        now = self._clock()
        self._prune(now)
        if len(self._sessions) >= self._cap:  # bounded: the least recently used session goes first
            oldest = min(self._sessions.values(), key=lambda s: s.seen)
            del self._sessions[oldest.id]
        session = Session(id=new_token(), principal=principal, csrf=new_token(), created=now, seen=now)
        self._sessions[session.id] = session
        return f"{session.id}.{self._sign(session.id)}", session

    def get(self, cookie: str | None) -> Session | None:
        if not cookie or "." not in cookie:
            return None
        session_id, _, signature = cookie.partition(".")
        if not same(signature, self._sign(session_id)):
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = self._clock()
        if now - session.created > self._ttl or now - session.seen > self._idle:
            del self._sessions[session_id]
            return None
        session.seen = now
        return session

    def end(self, cookie: str | None) -> None:
        session = self.get(cookie)
        if session is not None:
            del self._sessions[session.id]

    def _prune(self, now: float) -> None:
        for session in list(self._sessions.values()):
            if now - session.created > self._ttl or now - session.seen > self._idle:
                del self._sessions[session.id]

    def __len__(self) -> int:
        return len(self._sessions)
