"""The HTTP client for Cube's APIs (manager → worker, CLI → manager), on the standard library only so that the CLI
starts fast. It decides how failures look to callers: an unreachable peer is `Unavailable` naming the address tried,
and an error answer becomes the same typed exception the server raised (`errors.from_status`). Connections are kept
alive per thread: the manager talks to each worker many times a second.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
from collections.abc import Iterator
from urllib.parse import urlencode, urlsplit

from cube.core.errors import CubeError, Unavailable, from_status


class Client:
    def __init__(self, base_url: str, token: str | None = None, timeout: float = 10.0, verify_tls: bool = True):
        if "://" not in base_url:
            base_url = f"http://{base_url}"
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CubeError(f"bad address {base_url!r}: use http://HOST:PORT")
        self.base_url = base_url.rstrip("/")
        self._scheme, self._host = parts.scheme, parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self.token = token
        self.timeout = timeout
        self._tls = None
        if parts.scheme == "https":
            self._tls = ssl.create_default_context() if verify_tls else ssl._create_unverified_context()
        self._local = threading.local()

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._tls is not None:
                conn = http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=self._tls)
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
            self._local.conn = conn
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None

    def _send(
        self, method: str, path: str, body, params: dict | None, timeout: float | None, retry: bool | None = None
    ):
        if params:
            path = f"{path}?{urlencode({k: v for k, v in params.items() if v is not None})}"
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        timeout = self.timeout if timeout is None else timeout
        if retry is None:
            retry = method in ("GET", "DELETE", "PUT")
        # A kept-alive connection may have been closed by the server meanwhile (a restarted worker, an idle
        # timeout): the request is tried once more on a fresh connection, when the caller says it may be repeated.
        # A fresh connection that fails is not retried: the peer is down, and the caller's own loop decides.
        for attempt in (1, 2):
            conn = self._connection(timeout)
            reused = conn.sock is not None
            sent = False
            try:
                conn.request(method, path, body=payload, headers=headers)
                sent = True
                return conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as error:
                self._drop()
                # Refused while sending on a connection the peer had closed: nothing reached it, any request may go
                # again. Closed after the request went out: only one that may run twice.
                if attempt == 2 or not reused or (sent and not retry):
                    raise Unavailable(f"{self.base_url} closed the connection ({error})") from None
            except TimeoutError:
                self._drop()
                raise Unavailable(f"{self.base_url} did not answer within {timeout:g} s") from None
            except OSError as error:
                self._drop()
                reason = getattr(error, "strerror", None) or str(error)
                raise Unavailable(f"cannot reach {self.base_url}: {reason}") from None

    def request(
        self,
        method: str,
        path: str,
        body=None,
        params: dict | None = None,
        timeout: float | None = None,
        retry: bool | None = None,
    ):
        """JSON in, JSON out; None for an empty answer (204). Raises the typed error for an error answer.
        `retry`: whether the request may be sent twice (default: for GET, PUT and DELETE)."""
        response = self._send(method, path, body, params, timeout, retry)
        try:
            raw = response.read()
        except (OSError, http.client.HTTPException) as error:
            self._drop()
            raise Unavailable(f"{self.base_url} broke off its answer: {error}") from None
        if response.status >= 400:
            raise _error(response.status, raw)
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise CubeError(f"{self.base_url} answered with something that is not JSON") from None

    def stream(self, path: str, params: dict | None = None, timeout: float | None = None) -> Iterator[bytes]:
        """A streamed answer (logs) chunk by chunk, on a connection of its own."""
        response = self._send("GET", path, None, params, timeout)
        if response.status >= 400:
            raise _error(response.status, response.read())
        self._local.conn = None  # this connection belongs to the stream now
        try:
            while True:
                chunk = response.read1(65536) if hasattr(response, "read1") else response.read(65536)
                if not chunk:
                    break
                yield chunk
        finally:
            response.close()

    def get(self, path, **params):
        return self.request("GET", path, params=params or None)

    def post(self, path, body=None, timeout=None):
        return self.request("POST", path, body=body if body is not None else {}, timeout=timeout)

    def delete(self, path):
        return self.request("DELETE", path)

    def health(self, timeout: float = 2.0) -> dict:
        return self.request("GET", "/health", timeout=timeout)


def _error(status: int, raw: bytes) -> CubeError:
    try:
        message = json.loads(raw).get("error") or raw.decode(errors="replace")
    except (ValueError, AttributeError):
        message = raw.decode(errors="replace")[:200] or f"HTTP {status}"
    return from_status(status, message)
