"""The HTTP client for Cube's APIs (manager → worker, CLI → manager), on the standard library only so that the CLI
starts fast. It decides how failures look to callers: an unreachable peer is `Unavailable` naming the address tried,
and an error answer becomes the same typed exception the server raised (`errors.from_status`). Connections are kept
alive per thread: the manager talks to each worker many times a second.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import threading
from collections.abc import Iterator
from urllib.parse import urlencode, urlsplit

from cube.cluster.trust import Token, Trust, fingerprint, nonce, proves
from cube.core.errors import CubeError, Unavailable, Untrusted, from_status


class _MemberConnection(http.client.HTTPSConnection):
    """An HTTPS connection that checks, right after the handshake and before any request is written, that the
    peer is the cluster member it should be (see `Trust.check_peer`)."""

    def __init__(self, host, port, timeout, context, check):
        super().__init__(host, port, timeout=timeout, context=context)
        self._check = check

    def connect(self) -> None:
        super().connect()
        try:
            self._check(self.sock.getpeercert())
        except CubeError:
            self.close()
            raise


class Client:
    """`trust`: how to reach a cluster member (TLS with the cluster CA pinned, or plain HTTP with a challenge);
    without it, a plain HTTP or a publicly verified HTTPS URL."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float = 10.0,
        verify_tls: bool = True,
        trust: Trust | None = None,
    ):
        if trust is not None:
            base_url = trust.url(base_url)
        elif "://" not in base_url:
            base_url = f"http://{base_url}"
        parts = urlsplit(base_url)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme not in ("http", "https") or not parts.hostname or port == -1:
            raise CubeError(f"bad address {base_url!r}: use http://HOST:PORT (a port from 1 to 65535)")
        self.base_url = base_url.rstrip("/")
        self._scheme, self._host = parts.scheme, parts.hostname
        self._port = port or (443 if parts.scheme == "https" else 80)
        self.token = token
        self.timeout = timeout
        if trust is not None:
            trust = trust.for_scheme(parts.scheme)
        self.trust = trust
        self._tls = None
        if trust is not None:
            self._tls = trust.client_context()
        elif parts.scheme == "https":
            self._tls = ssl.create_default_context() if verify_tls else ssl._create_unverified_context()
        # --insecure: no certificate proves the peer, so before the token goes out on a new connection the peer
        # must answer a challenge with the secret (see trust.py).
        self._challenge = bool(trust is not None and trust.insecure and token)
        self._local = threading.local()

    def _hello(self, conn: http.client.HTTPConnection, timeout: float) -> None:
        challenge, role = nonce(), self.trust.peer_role if self.trust else ""
        conn.request("GET", f"/hello?{urlencode({'nonce': challenge, 'role': role})}", headers={"Accept": "*/*"})
        response = conn.getresponse()
        raw = response.read()
        try:
            answer = json.loads(raw) if response.status == 200 else {}
        except ValueError:
            answer = {}
        given = answer.get("proof") if isinstance(answer, dict) else None
        if not proves(str(self.token), given, "hello", challenge, role):
            self._drop()
            if b"HTTPS" in raw:
                raise Unavailable(f"{self.base_url} speaks HTTPS: use https:// (it does not run --insecure)")
            raise Untrusted(f"{self.base_url} could not prove it holds the cluster token: nothing was sent to it")

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._tls is not None and self.trust is not None:
                check = lambda cert: self.trust.check_peer(cert, self.base_url)
                conn = _MemberConnection(self._host, self._port, timeout, self._tls, check)
            elif self._tls is not None:
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
                if not reused and self._challenge:
                    self._hello(conn, timeout)
                conn.request(method, path, body=payload, headers=headers)
                sent = True
                return conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as error:
                self._drop()
                # Refused while sending on a connection the peer had closed: nothing reached it, any request may go
                # again. Closed after the request went out: only one that may run twice.
                if attempt == 2 or not reused or (sent and not retry):
                    hint = " (if it speaks TLS, use https://)" if self._scheme == "http" else ""
                    raise Unavailable(f"{self.base_url} closed the connection ({error}){hint}") from None
            except TimeoutError:
                self._drop()
                raise Unavailable(f"{self.base_url} did not answer within {timeout:g} s") from None
            except ssl.SSLCertVerificationError as error:
                self._drop()
                raise Untrusted(
                    f"{self.base_url} is not a member of this cluster: {error.verify_message or error.reason}"
                ) from None
            except ssl.SSLError as error:
                self._drop()
                raise Unavailable(
                    f"TLS with {self.base_url} failed ({error.reason or error}): if it runs with --insecure, "
                    f"so must this side"
                ) from None
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

    def open(
        self, method: str, path: str, params=None, chunks: Iterator[bytes] | None = None, timeout: float | None = None
    ) -> http.client.HTTPResponse:
        """A request on a connection of its own, for streams both ways (images): `chunks` is sent as a chunked body
        as it comes, and the answer is returned unread, for the caller to read and close. Raises the typed error of
        an error answer. `params` may repeat a key: give a list of pairs."""
        if params:
            pairs = params.items() if isinstance(params, dict) else params
            path = f"{path}?{urlencode([(k, v) for k, v in pairs if v is not None])}"
        headers = {"Accept": "*/*"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if chunks is not None:
            headers["Content-Type"] = "application/x-tar"
            headers["Transfer-Encoding"] = "chunked"
        saved = getattr(self._local, "conn", None)
        self._local.conn = None  # a fresh connection, which belongs to this exchange
        try:
            conn = self._connection(self.timeout if timeout is None else timeout)
            try:
                if self._challenge:
                    self._hello(conn, conn.timeout or self.timeout)
                conn.request(method, path, body=chunks, headers=headers, encode_chunked=chunks is not None)
                response = conn.getresponse()
            except CubeError:
                conn.close()
                raise
            except TimeoutError:
                conn.close()
                raise Unavailable(f"{self.base_url} did not answer within {conn.timeout:g} s") from None
            except (OSError, http.client.HTTPException) as error:
                conn.close()
                raise Unavailable(f"{self.base_url} broke off the exchange: {error}") from None
        finally:
            self._local.conn = saved
        if response.status >= 400:
            raw = response.read()
            conn.close()
            raise _error(response.status, raw)
        return response

    def get(self, path, **params):
        return self.request("GET", path, params=params or None)

    def post(self, path, body=None, timeout=None):
        return self.request("POST", path, body=body if body is not None else {}, timeout=timeout)

    def delete(self, path):
        return self.request("DELETE", path)

    def health(self, timeout: float = 2.0) -> dict:
        return self.request("GET", "/health", timeout=timeout)


def read_chunks(response: http.client.HTTPResponse, size: int = 1 << 20) -> Iterator[bytes]:
    """The body of an answer from `Client.open`, chunk by chunk; a peer that breaks off is `Unavailable`."""
    try:
        while True:
            chunk = response.read1(size)
            if not chunk:
                return
            yield chunk
    except (OSError, http.client.HTTPException) as error:
        raise Unavailable(f"the stream broke off: {error}") from None
    finally:
        response.close()


def _error(status: int, raw: bytes) -> CubeError:
    try:
        message = json.loads(raw).get("error") or raw.decode(errors="replace")
    except (ValueError, AttributeError):
        message = raw.decode(errors="replace")[:200] or f"HTTP {status}"
    return from_status(status, message)


def _other_cluster(url: str, found: str, pin: str) -> Untrusted:
    return Untrusted(
        f"{url} is not the manager this token belongs to: its CA is {found[:16]}..., the token pins {pin[:16]}..."
    )


def fetch_ca(url: str, token: Token) -> str:
    """The cluster CA of the manager at `url`, believed only when it matches the join token's pin or, for a bare
    secret, when the manager proves it holds the secret with an HMAC over our nonce and the CA's fingerprint."""
    challenge = nonce()
    answer = Client(url, None, timeout=10.0, trust=Trust(peer_role="manager")).get("/ca", nonce=challenge)
    ca = answer.get("ca") if isinstance(answer, dict) else None
    try:
        found = fingerprint(ca) if isinstance(ca, str) else ""
    except ValueError:
        found = ""
    if not found:
        raise Untrusted(f"{url} answered without a CA certificate: it is not a Cube manager")
    if token.pin:
        if found != token.pin:
            raise _other_cluster(url, found, token.pin)
    elif not proves(token.secret, answer.get("proof"), "ca", challenge, found):
        raise Untrusted(f"{url} could not prove it holds the cluster token: nothing was sent to it")
    return str(ca)


def manager_trust(url: str, token: Token | None, local_ca: str | None = None) -> Trust:
    """How the CLI (or a worker) reaches the manager at `url`: plain for an http:// URL; else the CA found on this
    machine (the manager's own), one cached for the token's pin, or one fetched and checked (see fetch_ca)."""
    if url.startswith("http://"):
        return Trust(insecure=True)
    if local_ca:
        if token is not None and token.pin and fingerprint(local_ca) != token.pin:
            raise _other_cluster(url, fingerprint(local_ca), token.pin)
        return Trust(ca=local_ca)
    if token is None:
        raise Untrusted(
            "no cluster token: set CUBE_TOKEN or pass --token with the join token `cube token` prints on the manager"
        )
    cache = os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "cube", "ca"
    )
    if token.pin:
        path = os.path.join(cache, f"{token.pin}.pem")
        try:
            with open(path, encoding="ascii") as handle:
                ca = handle.read()
            if fingerprint(ca) == token.pin:
                return Trust(ca=ca)
        except (OSError, ValueError):
            pass
    ca = fetch_ca(url, token)
    if token.pin:  # the CA is public; caching it saves a round trip on every later command
        try:
            os.makedirs(cache, exist_ok=True)
            with open(os.path.join(cache, f"{token.pin}.pem.tmp"), "w", encoding="ascii") as handle:
                handle.write(ca)
            os.replace(os.path.join(cache, f"{token.pin}.pem.tmp"), os.path.join(cache, f"{token.pin}.pem"))
        except OSError:
            pass
    return Trust(ca=ca)
