"""Image pulls as the worker follows them, with nothing of Docker's SDK in it: how far a pull has come (read from
the engine's progress stream), when it has taken too long or stalled, what a refused pull means, and the registry
credentials the manager handed over with the assignments (kept in memory only).

A pull ends in one of three ways besides success: it runs past `timeout` (a large image on a slow link), it goes
`stall` seconds without a word from the engine (a registry that stopped answering mid-layer: the engine waits on its
socket for minutes), or the engine reports an error in the stream. The first two are told in one sentence with the
time, the stall and the node; the stream is closed, which makes the engine give the pull up.

Credentials are never written to the worker's store and never logged: an assignment's `registry_auth` is taken out
of the request before the assignment is kept, and lives here, by registry host, until the worker stops. A worker
that restarts learns them again with the next assignment of that registry's images.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cube.core.images import registry_host

REPORT_EVERY = 1.0  # seconds: progress is told to the task's events at most this often (and only when it moved)


@dataclass
class PullProgress:
    """What the engine has said of one pull: per layer, bytes downloaded of how many; when it last said anything."""

    image: str
    node: str = ""
    started: float = field(default_factory=time.monotonic)
    last_word: float = field(default_factory=time.monotonic)
    layers: dict = field(default_factory=dict)  # layer id -> [current, total, done]
    error: str = ""
    done: threading.Event = field(default_factory=threading.Event)
    cancel: Callable[[], None] | None = None  # closes the engine's stream: the engine gives the pull up

    def update(self, message: dict, now: float | None = None) -> None:
        """One message of the engine's pull stream ({"status": "Downloading", "id": ..., "progressDetail": ...})."""
        self.last_word = time.monotonic() if now is None else now
        if message.get("error"):
            self.error = str(message["error"])
            return
        layer, status = message.get("id"), str(message.get("status") or "")
        if not layer or status.startswith(("Pulling from", "Digest", "Status")):
            return
        entry = self.layers.setdefault(layer, [0, 0, False])
        detail = message.get("progressDetail") or {}
        if status == "Downloading" and detail.get("total"):
            entry[0], entry[1] = int(detail.get("current") or 0), int(detail["total"])
        elif status in ("Download complete", "Verifying Checksum", "Extracting"):
            entry[0] = entry[1]
        elif status in ("Pull complete", "Already exists"):
            entry[0], entry[2] = entry[1], True

    @property
    def downloaded(self) -> int:
        return sum(current for current, _, _ in self.layers.values())

    @property
    def total(self) -> int:
        return sum(total for _, total, _ in self.layers.values())

    def percent(self) -> int | None:
        """Downloaded of the sizes known so far (a layer's size is known once it starts); None before any is."""
        if self.layers and all(done for _, _, done in self.layers.values()):
            return 100
        return int(100 * self.downloaded / self.total) if self.total else None

    def text(self, node: str) -> str:
        """ "pulling nginx on n1: 45% (12.1 of 26.9 MB)"."""
        percent = self.percent()
        if percent is None:
            return f"pulling {self.image} on {node}"
        size = f" ({self.downloaded / 1e6:.1f} of {self.total / 1e6:.1f} MB)" if self.total else ""
        return f"pulling {self.image} on {node}: {percent}%{size}"

    def overdue(self, timeout: float, stall: float, node: str, now: float | None = None) -> str | None:
        """The reason a pull is given up now, or None while it may go on."""
        now = time.monotonic() if now is None else now
        took, quiet = now - self.started, now - self.last_word
        if took >= timeout:
            return (
                f"pull of {self.image} timed out after {took:.0f} s on node {node} ({self._where()}): a slow link or a "
                f"big image (the worker's --pull-timeout allows more)"
            )
        if quiet >= stall:
            return (
                f"pull of {self.image} timed out after {took:.0f} s (no progress for {quiet:.0f} s) on node {node} "
                f"({self._where()}); the registry or the way to it stopped answering: check it (or raise the worker's "
                f"--pull-stall)"
            )
        return None

    def _where(self) -> str:
        percent = self.percent()
        return "nothing downloaded" if not percent else f"{percent}% downloaded"


def refused(image: str, error: str, auth: dict | None) -> str:
    """A registry's refusal in words a user acts on: credentials missing or wrong, said with the next step."""
    host = registry_host(image)
    lowered = error.lower()
    if "unauthorized" in lowered or "authentication required" in lowered or "no basic auth" in lowered:
        if auth:
            return (
                f"registry {host} refused the credentials of {auth.get('username', '?')} for {image}: "
                f"`cube registry login {host}` again with the right ones ({error})"
            )
        return f"registry {host} wants credentials for {image}: `cube registry login {host}` first ({error})"
    return error


class Credentials:
    """Registry credentials by host, as the manager handed them over (memory only: never stored, never logged)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_host: dict[str, dict] = {}

    def remember(self, auth: object) -> None:
        """From an assignment's `registry_auth`: {"host", "username", "password"}; anything else is ignored."""
        if not isinstance(auth, dict):
            return
        host, user, password = auth.get("host"), auth.get("username"), auth.get("password")
        if not all(isinstance(v, str) and v for v in (host, user, password)):
            return
        with self._lock:
            self._by_host[str(host).lower()] = {"username": user, "password": password, "serveraddress": host}

    def forget(self, host: str) -> None:
        with self._lock:
            self._by_host.pop(host.lower(), None)

    def for_image(self, image: str) -> dict | None:
        """The credentials for the image's registry, as the SDK's `auth_config` takes them, or None."""
        with self._lock:
            found = self._by_host.get(registry_host(image))
            return dict(found) if found else None

    def __repr__(self) -> str:  # never the secrets, whoever prints it
        with self._lock:
            return f"Credentials({sorted(self._by_host)})"


def follow(
    find: Callable[[], PullProgress | None], node: str, say: Callable[[str], None], stop: threading.Event
) -> None:
    """Tell `say` how far the pull `find` returns has come (None: no pull under way), at most every REPORT_EVERY
    seconds and only when the text changed, until `stop` is set (runs on a thread of its own beside a start, which
    waits for the pull)."""
    told = ""
    while not stop.wait(REPORT_EVERY):
        pull = find()
        if pull is None or pull.done.is_set():
            continue
        text = pull.text(node)
        if text != told:
            told = text
            say(text)
