"""Registry credentials, as the manager keeps them: a password per registry host, sealed (encrypted) in the
store's "registries" kind by a `seal`/`unseal` pair it is given (cube.cluster.pki.Sealer: AES-GCM, key file of the
manager's own), so neither the store nor a backup of it holds one in clear. What can be read back: hosts and user
names (`cube registry ls`); a password leaves the manager only inside an assignment to a worker whose task's image
comes from that registry (`dispatching`), over the cluster's mutual TLS, and the worker keeps it in memory only.
Nothing here logs a password, and a registry record never reaches `cube status` (tasks and nodes do not carry it).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

from cube.core.errors import BadRequest, NotFound
from cube.core.images import registry_host
from cube.store import Store

KIND = "registries"
_HOST = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:\d{1,5})?$")

Dispatch = Callable[[str, str, str, dict | None, dict | None], object]


class Registries:
    def __init__(self, store: Store, seal: Callable[[str, str], str], unseal: Callable[[str, str], str]):
        self.store = store
        self._seal, self._unseal = seal, unseal
        self._lock = threading.Lock()
        # The store's records in memory: every assignment sent asks for its registry's (a dict lookup, no disk read).
        self._records = {r["host"]: r for r in store.values(KIND) if isinstance(r, dict) and "host" in r}

    def login(self, body: object) -> dict:
        """{"host", "username", "password"} → kept (sealed); answers host and user name only."""
        if not isinstance(body, dict):
            raise BadRequest('send {"host": "HOST[:PORT]", "username": "...", "password": "..."}')
        host = str(body.get("host") or "").strip().lower()
        for prefix in ("https://", "http://"):
            host = host.removeprefix(prefix)
        host = host.rstrip("/")
        if host in ("index.docker.io", "registry-1.docker.io"):
            host = "docker.io"
        if not _HOST.match(host):
            raise BadRequest(f"host must be a registry's HOST or HOST:PORT (e.g. registry.lan:5000), not {host!r}")
        username, password = body.get("username"), body.get("password")
        if not isinstance(username, str) or not username or len(username) > 256 or any(c.isspace() for c in username):
            raise BadRequest("username must be a non-empty name without spaces")
        if not isinstance(password, str) or not password or len(password) > 4096:
            raise BadRequest("password must be non-empty (up to 4096 characters); `--password-stdin` reads it")
        record = {"host": host, "username": username, "sealed": self._seal(password, host), "at": time.time()}
        with self._lock:
            self.store.put(KIND, host, record)
            self._records[host] = record
        return _shown(record)

    def logout(self, host: str) -> dict:
        host = host.strip().lower()
        with self._lock:
            record = self._records.get(host)
            if record is None:
                raise NotFound(f"no credentials for registry {host} (`cube registry ls` lists them)")
            self.store.delete(KIND, host)
            del self._records[host]
        return _shown(record)

    def list(self) -> list[dict]:
        with self._lock:
            return sorted((_shown(r) for r in self._records.values()), key=lambda r: r["host"])

    def auth_for(self, image: str) -> dict | None:
        """What a worker is handed to pull `image`: {"host", "username", "password"}, or None (no login for it)."""
        host = registry_host(image)
        record = self._records.get(host)
        if record is None:
            return None
        return {"host": host, "username": record["username"], "password": self._unseal(record["sealed"], host)}

    def dispatching(self, dispatch: Dispatch) -> Dispatch:
        """`dispatch` with the credentials of each assignment's registry added to the assignment (`registry_auth`)."""

        def send(address: str, method: str, path: str, body: dict | None, params: dict | None):
            if method == "POST" and path == "/tasks" and isinstance(body, dict):
                auth = self.auth_for(str((body.get("spec") or {}).get("image") or ""))
                if auth is not None:
                    body = {**body, "registry_auth": auth}
            return dispatch(address, method, path, body, params)

        return send


def _shown(record: dict) -> dict:
    return {"host": record["host"], "username": record["username"], "since": record.get("at")}
