"""The manager's connections to its workers: one HTTP client per worker address (keep-alive per thread; mutual TLS with
the manager's certificate, or the token after a challenge on an insecure cluster, see trust.py). It decides which
requests may be sent twice when a kept-alive connection turns out dead: all of the worker's routes are idempotent
(an assignment is keyed by task id and generation, a stop by task id and generation) except a health restart, which
would count twice. Whatever must arrive is guaranteed by the manager's diff, not by this retry."""

from __future__ import annotations

import threading

from cube.cluster.client import Client
from cube.cluster.trust import Trust


class Links:
    def __init__(self, token: str | None, timeout: float = 10.0, trust: Trust | None = None):
        self.token = token
        self.timeout = timeout
        self.trust = trust
        self._clients: dict[str, Client] = {}
        self._lock = threading.Lock()

    def client(self, address: str) -> Client:
        with self._lock:
            client = self._clients.get(address)
            if client is None:
                client = self._clients[address] = Client(address, self.token, timeout=self.timeout, trust=self.trust)
            return client

    def request(
        self,
        address: str,
        method: str,
        path: str,
        body: dict | None = None,
        params: dict | None = None,
        timeout: float | None = None,
    ):
        retry = not path.endswith("/restart")
        return self.client(address).request(method, path, body=body, params=params, timeout=timeout, retry=retry)

    def dispatch(self, address: str, method: str, path: str, body: dict | None, params: dict | None):
        """The manager's dispatcher (see manager.Dispatch)."""
        return self.request(address, method, path, body, params)
