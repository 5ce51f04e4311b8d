"""The dashboard's sign-in. A browser proves the cluster token once (`POST /session`) and is then known by a cookie,
`cube_session`: a random id into a table held in the manager's memory (a restart signs everyone out, and nothing
is written to the store). This module decides what a session lets through and for how long:
- reads (GET, HEAD) with the cookie alone; any other method also needs the header `X-CSRF-Token` to match the
  session's token (a cross-site form can send the cookie, but cannot set a header);
- a session ends at sign-out, LIFETIME after sign-in, or when the cluster token is rotated (each session is sealed
  with the secret it was opened with);
- sign-in attempts: FAILURES wrong tokens per client address within WINDOW seconds, then 429 until the oldest of
  them is WINDOW old.
The CLI and the workers keep their bearer token and certificates (cube.cluster.api.Access); this is for browsers.
"""

from __future__ import annotations

import collections
import hmac
import math
import secrets
import threading
import time
from dataclasses import dataclass

from cube.cluster.trust import parse_token, proof, proves
from cube.core.errors import Forbidden, TooManyRequests, Unauthorized

COOKIE = "cube_session"
CSRF_HEADER = "HTTP_X_CSRF_TOKEN"  # X-CSRF-Token, as WSGI names it
LIFETIME = 12 * 3600  # seconds: a working day, then sign in again
MAX_SESSIONS = 1000  # the oldest session goes first past this: a token holder cannot fill the manager's memory
FAILURES = 5  # wrong tokens per client address within WINDOW, then 429
WINDOW = 60.0
MAX_CLIENTS = 10000  # addresses whose failures are remembered: past this the oldest are forgotten
SAFE = ("GET", "HEAD")


@dataclass(frozen=True)
class Session:
    csrf: str
    expires: float  # on the table's clock
    seal: str  # proof of the secret it was opened with: a rotated token ends it


class Sessions:
    """The table of dashboard sessions and the sign-in rate limit. `clock`: monotonic seconds (tests pass their own
    rather than sleep)."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}  # insertion order: oldest first
        self._failures: dict[str, collections.deque] = {}

    def open(self, given: object, secret: str, client: str) -> tuple[str, Session]:
        """A new session for a caller that gave the cluster token (the secret alone or the whole join token `cube
        token` prints), or Unauthorized; TooManyRequests while `client` has used up its attempts."""
        now = self.clock()
        with self._lock:
            recent = self._recent(client, now)
            if len(recent) >= FAILURES:
                wait = max(1, math.ceil(recent[0] + WINDOW - now))
                raise TooManyRequests(
                    f"too many wrong tokens from {client or 'this address'}: try again in {wait} s", retry_after=wait
                )
            parsed = parse_token(given) if isinstance(given, str) and len(given) <= 1024 else None
            if parsed is None or not hmac.compare_digest(parsed.secret.encode(), secret.encode()):
                recent.append(now)
                left = FAILURES - len(recent)
                raise Unauthorized(
                    "wrong cluster token: `cube token` on the manager prints it"
                    + (f" ({left} more tries this minute)" if left else " (no more tries this minute)")
                )
            self._failures.pop(client, None)
            session_id = secrets.token_urlsafe(32)
            session = Session(secrets.token_urlsafe(32), now + LIFETIME, proof(secret, "session", session_id))
            self._sessions[session_id] = session
            while len(self._sessions) > MAX_SESSIONS:
                del self._sessions[next(iter(self._sessions))]
            return session_id, session

    def _recent(self, client: str, now: float) -> collections.deque:
        """The client's failed attempts within WINDOW (lock held), oldest first."""
        recent = self._failures.pop(client, None) or collections.deque()
        while recent and recent[0] <= now - WINDOW:
            recent.popleft()
        self._failures[client] = recent  # again at the end: the dict's order is the order of last use
        while len(self._failures) > MAX_CLIENTS:
            del self._failures[next(iter(self._failures))]
        return recent

    def find(self, environ: dict, secret: str) -> Session | None:
        """The live session the request's cookie names, if any."""
        session_id = cookie(environ.get("HTTP_COOKIE", ""))
        if not session_id:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if session.expires <= self.clock() or not proves(secret, session.seal, "session", session_id):
                del self._sessions[session_id]
                return None
            return session

    def admits(self, environ: dict, method: str, secret: str) -> bool:
        """Whether the request's session lets it through: False without a live session; Forbidden for a session's
        action (not GET or HEAD) without its CSRF token."""
        session = self.find(environ, secret)
        if session is None:
            return False
        if method not in SAFE:
            given = environ.get(CSRF_HEADER, "")
            if not hmac.compare_digest(given.encode(errors="replace"), session.csrf.encode()):
                raise Forbidden("this action needs the session's X-CSRF-Token header: reload the dashboard")
        return True

    def close(self, environ: dict) -> None:
        """Sign out: the session the request's cookie names ends."""
        session_id = cookie(environ.get("HTTP_COOKIE", ""))
        with self._lock:
            self._sessions.pop(session_id, None)


def cookie(header: str) -> str:
    """The value of the session cookie in a Cookie header ("" when absent)."""
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return value.strip()
    return ""


def set_cookie(session_id: str, secure: bool) -> str:
    """The Set-Cookie value that opens a session: never readable by scripts, never sent cross-site, over TLS only
    when the manager serves TLS."""
    secure_flag = "; Secure" if secure else ""
    return f"{COOKIE}={session_id}; Path=/; Max-Age={LIFETIME}; HttpOnly; SameSite=Strict{secure_flag}"


def clear_cookie(secure: bool) -> str:
    return set_cookie("", secure).replace(f"Max-Age={LIFETIME}", "Max-Age=0")
