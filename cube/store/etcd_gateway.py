"""etcd's JSON gateway as Cube speaks to it (the only module that imports etcd3gw): several endpoints, requests
built here (etcd3gw's helpers encode keys as latin-1; Cube's keys and values are UTF-8) and sent with its client's
`post`, transactions with compares through `/v3/kv/txn`, leases, and every failure as one line naming the URL.

What it decides:
- An endpoint that cannot be connected to is skipped for the next one; a request that reached etcd and timed out
  is never sent elsewhere (it may have been applied): it raises `StorageFailed` marked `unsure`, and the store
  settles it (cube/store/etcd.py).
- etcd older than 3.4 (its gateway lived at /v3beta), a URL that is not etcd, etcd unreachable, no quorum (a member
  that knows no leader), a request over etcd's size limits: `StorageFailed` (503), one line each.
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import urlsplit

from cube.core.errors import BadRequest, StorageFailed

TIMEOUT = 5.0  # seconds for one request: etcd itself gives up on a write without quorum after about 7 s
MIN_VERSION = (3, 4)  # the gateway's path is /v3/ from 3.4 on (3.3 used /v3beta)


def parse_endpoints(urls: str | list[str] | tuple[str, ...]) -> list[str]:
    """`http://a:2379,http://b:2379` (or a list) as URLs, each checked: scheme http or https, a host, a port."""
    items = urls.split(",") if isinstance(urls, str) else list(urls)
    found = []
    for item in (u.strip() for u in items):
        if not item:
            continue
        try:
            parts = urlsplit(item)
            port = parts.port
        except ValueError:
            parts, port = None, None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
            raise BadRequest(f"etcd: {item!r} is not a URL like http://host:2379")
        found.append(f"{parts.scheme}://{parts.netloc}" if port else f"{parts.scheme}://{parts.hostname}:2379")
    if not found:
        raise BadRequest("etcd: no URL given (like http://host:2379,http://other:2379)")
    return found


class Gateway:
    """etcd at `endpoints` (URLs), asked through its JSON gateway."""

    def __init__(self, endpoints: str | list[str], timeout: float = TIMEOUT):
        import etcd3gw  # only here: a manager on diskcache never loads it

        self._etcd3gw = etcd3gw
        self.endpoints = parse_endpoints(endpoints)
        self.timeout = timeout
        self._clients = [self._client(url) for url in self.endpoints]
        self._current = 0  # the endpoint that answered last
        self.version = self._check()

    def _client(self, url: str):
        parts = urlsplit(url)
        return self._etcd3gw.Etcd3Client(
            host=parts.hostname or "",
            port=parts.port or 2379,
            protocol=parts.scheme,
            timeout=self.timeout,
            api_path="/v3/",
        )

    def _check(self) -> str:
        """etcd's version, refusing one older than MIN_VERSION: one clear line when etcd cannot be used."""
        status = self.post("maintenance/status", {})
        version = str(status.get("version", ""))
        try:
            numbers = tuple(int(p) for p in version.split(".")[:2])
        except ValueError:
            numbers = ()
        if numbers < MIN_VERSION:
            raise StorageFailed(
                f"etcd at {self.url} is version {version or 'unknown'}: Cube needs etcd 3.4 or later (the /v3 gateway)"
            )
        return version

    @property
    def url(self) -> str:
        return self.endpoints[self._current]

    def post(self, path: str, body: dict) -> dict:
        """POST /v3/<path> to the endpoint that answered last, the next ones when it cannot be reached."""
        errors = self._etcd3gw.exceptions
        first = self._current
        for step in range(len(self._clients)):
            index = (first + step) % len(self._clients)
            client = self._clients[index]
            try:
                answer = client.post(client.get_url(path), json=body)
                self._current = index
                return answer
            except errors.ConnectionFailedError as error:
                if not _unreached(error):
                    self._current = index
                    raise self._failure(error) from None
                last: Exception = error
                continue  # never reached etcd: safe to send elsewhere
            except (errors.Etcd3Exception, ValueError) as error:
                self._current = index
                raise self._failure(error) from None
        self._current = first
        raise self._failure(last) from None

    def _failure(self, error: Exception) -> StorageFailed:
        """What an etcd error means for the user, in one line naming the URL."""
        errors = self._etcd3gw.exceptions
        detail = getattr(error, "detail_text", None)  # etcd3gw: the reply's body; args: its reason
        text = " ".join(str(a) for a in (detail, *getattr(error, "args", ())) if a) or type(error).__name__
        if isinstance(error, errors.ConnectionFailedError) and _unreached(error):
            where = ", ".join(self.endpoints)
            return StorageFailed(f"etcd at {where} cannot be reached (is etcd running there?)")
        if isinstance(error, errors.ConnectionTimeoutError) or "timed out" in text or "leader" in text:
            if not self._has_leader():
                unsure = StorageFailed(
                    f"etcd has no quorum (at {self.url}: no leader; start the members that are down)"
                )
            else:
                unsure = StorageFailed(f"etcd at {self.url} did not answer in {self.timeout:g} s")
            unsure.unsure = True  # type: ignore[attr-defined]  # a write may or may not have landed
            return unsure
        limit = "--max-txn-ops" if "too many operations" in text else None
        if "too large" in text or "larger than max" in text:
            limit = "--max-request-bytes"
        if limit:
            return StorageFailed(f"etcd at {self.url} refused a batch over its {limit} (raise it: see README)")
        if isinstance(error, ValueError) or "Not Found" in text or "404" in text:
            return StorageFailed(f"{self.url} does not answer as etcd's /v3 gateway (is it an etcd 3.4+ client URL?)")
        return StorageFailed(f"etcd at {self.url} refused: {_message(detail) or _message(text)}")

    def _has_leader(self) -> bool:
        """Whether the endpoint in use knows a leader (False also when it does not answer at all)."""
        client = self._clients[self._current]
        try:
            return bool(int(client.post(client.get_url("maintenance/status"), json={}).get("leader", 0)))
        except (self._etcd3gw.exceptions.Etcd3Exception, ValueError):
            return False

    def range(self, key: str, end: str | None = None, limit: int = 0) -> list[dict]:
        body: dict[str, Any] = {"key": b64(key)}
        if end is not None:
            body["range_end"] = b64(end)
        if limit:
            body["limit"] = limit
        return self.post("kv/range", body).get("kvs", [])

    def txn(self, compare: list[dict], success: list[dict], failure: list[dict] | None = None) -> dict:
        return self.post("kv/txn", {"compare": compare, "success": success, "failure": failure or []})

    def lease(self, ttl: int) -> int:
        """A new lease of `ttl` seconds (its id): keys put with it go when it is not kept alive."""
        return int(self.post("lease/grant", {"TTL": ttl, "ID": 0})["ID"])

    def keep_alive(self, lease: int) -> int:
        """Refresh `lease`; its remaining TTL, 0 or less when it is gone."""
        answer = self.post("lease/keepalive", {"ID": lease})
        return int(answer.get("result", {}).get("TTL", 0))

    def revoke(self, lease: int) -> None:
        self.post("kv/lease/revoke", {"ID": lease})

    def create(self, key: str, value: str, lease: int = 0) -> tuple[bool, str | None]:
        """Put `key` (full etcd key) = `value` only if it is absent; (created, the value it holds now)."""
        put: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if lease:
            put["lease"] = lease
        answer = self.txn(
            [{"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": 0}],
            [{"request_put": put}],
            [{"request_range": {"key": b64(key)}}],
        )
        if answer.get("succeeded"):
            return True, value
        kvs = answer["responses"][0].get("response_range", {}).get("kvs", [])
        return False, text_of(kvs[0].get("value", "")) if kvs else None

    def read_key(self, key: str) -> str | None:
        """The value at a full etcd key (outside the store's records), or None."""
        kvs = self.range(key)
        return text_of(kvs[0].get("value", "")) if kvs else None

    def delete_key(self, key: str, value: str) -> bool:
        """Delete `key` if it still holds `value` (a leader stepping down leaves another's key alone)."""
        answer = self.txn(
            [{"key": b64(key), "target": "VALUE", "result": "EQUAL", "value": b64(value)}],
            [{"request_delete_range": {"key": b64(key)}}],
        )
        return bool(answer.get("succeeded"))

    def close(self):
        for client in self._clients:
            client.session.close()


def b64(text: str) -> str:
    """A key or value as the gateway takes it."""
    return base64.b64encode(text.encode()).decode()


def text_of(data: str) -> str:
    """A key or value as the gateway gives it."""
    return base64.b64decode(data).decode()


def _unreached(error: Exception) -> bool:
    """A connection that failed before any answer (etcd3gw raises the same class, with the reply's reason in args,
    for an HTTP 503 from etcd: that one was heard)."""
    return not getattr(error, "args", ())


def _message(text: str | None) -> str:
    """etcd's own message from a reply body (JSON with "error"), else the text's first line."""
    try:
        message = str(json.loads(text or "").get("error") or "")
    except (ValueError, AttributeError):
        message = ""
    lines = (message or text or "").strip().splitlines()
    return lines[0][:200] if lines else ""
