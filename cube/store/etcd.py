"""The etcd store (the only module that imports etcd3gw): the store interface on an etcd 3.4+ cluster, spoken to
through etcd's JSON gateway (/v3/...), so that several managers can share one state and one of them leads.

What it decides:
- Layout under a prefix (default `/cube/`): `r/<kind>/<key>` a record (JSON), `e/<id, 12 digits>` an event,
  `n/last_event` the event counter, `t/<task id>/<id>` one key per event of a task: its index. An append writes
  that key without reading a list first (a read cost ~3 ms per new task); a task's entries go when it appends past
  their event's retention or is forgotten, and reads take its newest TASK_EVENTS_KEPT. Keys and values are UTF-8
  (etcd3gw's helpers encode keys as latin-1, so requests are built here and sent with its client's `post`).
- A batch is ONE etcd transaction: writes wait in a per-thread buffer (reads inside the batch see them) and the
  outermost batch sends them together; nothing reaches etcd before, so an exception undoes a batch by dropping it.
  Writes of this process take a lock from a batch's first line to its commit (as DiskStore's), and the event
  counter the batch read is compared on its mod_revision in the txn: a writer in another process that moved it in
  between makes the txn fail whole (`Moved`), and an append that is a batch of its own is numbered again and
  retried. The counter as this process last committed it is remembered, so an append reads nothing.
- Size: one batch must fit etcd's `--max-txn-ops` (default 128) and `--max-request-bytes` (default 1.5 MiB).
  Cube does not split a batch (a split stays atomic only with a commit marker that every read checks); it asks
  etcd users to raise both limits (README): a job of 10,000 small tasks is one txn of 60,004 operations and 21.7 MB
  (measured), so `--max-txn-ops=100000 --max-request-bytes=67108864`. A batch etcd refuses for its size raises
  `StorageFailed` naming the flag to raise, having written nothing.
- Fencing: `fence(key, value)` adds a compare (`key` holds `value`) to every later transaction, so a manager
  that lost its leadership cannot write; such a write raises `NotLeading` and leaves etcd as it was.
- Errors: etcd unreachable, a URL that is not etcd, no quorum -> `StorageFailed` (503), one line naming the URL.
  Several URLs: a request that could not connect goes to the next one; one that timed out is not sent again (it
  may have been applied), so the caller hears of it.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from cube.core.errors import BadRequest, StorageFailed
from cube.store import base
from cube.store.base import Store, record_kind

TIMEOUT = 5.0  # seconds for one request: etcd itself gives up on a write without quorum after about 7 s
MIN_VERSION = (3, 4)  # the gateway's path is /v3/ from 3.4 on (3.3 used /v3beta)
EVENT_DIGITS = 12  # zero-padded event ids, so that a range read returns them in order
KNOWN_KEPT = 20_000  # keys remembered in `_known` (each a task's event ids or the counter: a few hundred bytes)
RANGE_CHUNK = 100  # reads per txn when fetching scattered events (under etcd's default --max-txn-ops of 128)
SETTLE = 15.0  # seconds a batch whose fate etcd left open is retried (an etcd election takes 1-2 s; no quorum: more)
SETTLE_STEP = 0.3
_DELETE = None  # a buffered delete


class NotLeading(StorageFailed):
    """A write by a manager whose leadership (its fence) is gone: refused by etcd, nothing written."""


class Moved(StorageFailed):
    """A key the batch read to change was changed by another writer before the batch committed."""


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


class EtcdStore(Store):
    """The store on etcd at `endpoints` (URLs), every key under `prefix`."""

    def __init__(
        self, endpoints: str | list[str], prefix: str = "/cube/", timeout: float = TIMEOUT, settle: float = SETTLE
    ):
        import etcd3gw  # only here: a manager on diskcache never loads it

        self._etcd3gw = etcd3gw
        self.endpoints = parse_endpoints(endpoints)
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.timeout, self.settle = timeout, settle
        self._clients = [self._client(url) for url in self.endpoints]
        self._current = 0  # the endpoint that answered last
        self._write_lock = threading.RLock()  # one batch of this process at a time, from its first line to commit
        self._local = threading.local()  # the open batch of this thread
        # Keys this process read to change (event counter, task event ids) as its last commit left them: (value,
        # mod_revision). A batch starts from these without a read; its commit's compares catch another writer.
        self._known: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._fence: tuple[str, str] | None = None
        self._on_refused: Callable[[], None] | None = None
        self.version = self._check()

    # ---- talking to etcd -----------------------------------------------------------------------------------

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
        status = self._post("maintenance/status", {})
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

    def _post(self, path: str, body: dict) -> dict:
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

    def _range(self, key: str, end: str | None = None, limit: int = 0) -> list[dict]:
        body: dict[str, Any] = {"key": _b64(key)}
        if end is not None:
            body["range_end"] = _b64(end)
        if limit:
            body["limit"] = limit
        return self._post("kv/range", body).get("kvs", [])

    def _txn(self, compare: list[dict], success: list[dict], failure: list[dict] | None = None) -> dict:
        return self._post("kv/txn", {"compare": compare, "success": success, "failure": failure or []})

    # ---- keys ----------------------------------------------------------------------------------------------

    def _record_key(self, kind: str, key: str) -> str:
        return f"{self.prefix}r/{kind}/{key}"

    def _event_key(self, seq: int) -> str:
        return f"{self.prefix}e/{seq:0{EVENT_DIGITS}d}"

    def _index_key(self, task_id: str, seq: int | None = None) -> str:
        """A task's index entry for event `seq`; None: the prefix of all of them."""
        return f"{self.prefix}t/{task_id}/" + ("" if seq is None else f"{seq:0{EVENT_DIGITS}d}")

    @property
    def _counter_key(self) -> str:
        return f"{self.prefix}n/last_event"

    # ---- fencing -------------------------------------------------------------------------------------------

    def fence(self, key: str | None, value: str | None = None, refused: Callable[[], None] | None = None) -> None:
        """From now on every write also requires `key` (a full etcd key) to hold `value`; None lifts the fence.
        `refused` is called when etcd refuses a write for it (before NotLeading is raised)."""
        self._fence = None if key is None else (key, value or "")
        self._on_refused = refused

    # ---- batches -------------------------------------------------------------------------------------------

    @contextmanager
    def batch(self) -> Iterator[None]:
        if getattr(self._local, "open", None) is not None:
            yield  # nested: the outermost batch decides
            return
        with self._write_lock:
            self._local.open = opened = _Batch()
            try:
                yield
                self._commit(opened)
            finally:
                self._local.open = None

    def _commit(self, opened: _Batch) -> None:
        if not opened.writes and not opened.ranges:
            return  # a batch that writes nothing asks nothing of etcd
        compare = [_compare_mod(key, rev) for key, rev in opened.reads.items()]
        fence = self._fence
        if fence is not None:
            compare.append({"key": _b64(fence[0]), "target": "VALUE", "result": "EQUAL", "value": _b64(fence[1])})
        success = [_op(key, value) for key, value in opened.writes.items()]
        puts = sorted(key for key, value in opened.writes.items() if value is not _DELETE)
        for start, end in opened.ranges:
            success += [
                {"request_delete_range": {"key": _b64(a), "range_end": _b64(b)}} for a, b in _around(start, end, puts)
            ]
        failure = [{"request_range": {"key": _b64(fence[0])}}] if fence is not None else []
        answer = self._send(compare, success, failure)
        if not answer.get("succeeded"):
            self._known.clear()
            if fence is not None and _held(answer, fence[1]) is False:
                if self._on_refused is not None:
                    self._on_refused()
                raise NotLeading(f"this manager no longer leads (its key {fence[0]} in etcd is gone or another's)")
            raise Moved(f"another writer changed etcd at {self.url} during this batch (nothing of it was written)")
        revision = int(answer["header"]["revision"])  # every key the txn wrote now has this mod_revision
        if not revision:  # landed, as its mark says, after an answer that never came: revisions unknown
            self._known.clear()
            return
        for key, raw in opened.writes.items():
            if key in opened.reads or key in self._known:
                self._known[key] = (None, 0) if raw is _DELETE else (json.loads(raw), revision)
                self._known.move_to_end(key)
        while len(self._known) > KNOWN_KEPT:
            self._known.popitem(last=False)

    def _send(self, compare: list[dict], success: list[dict], failure: list[dict]) -> dict:
        """Send a batch's txn, marked with a token of its own (`n/last_batch`). A txn whose fate etcd left open (no
        answer in time, its raft leader lost) is settled by reading the mark back, once etcd answers again: there,
        it landed; elsewhere, it did not and is sent again (its compares keep a resend from landing twice)."""
        mark, token = f"{self.prefix}n/last_batch", secrets.token_hex(8)
        success = [*success, {"request_put": {"key": _b64(mark), "value": _b64(token)}}]
        deadline = time.monotonic() + self.settle
        while True:
            try:
                return self._txn(compare, success, failure)
            except StorageFailed as error:
                if not getattr(error, "unsure", False):
                    raise
                last = error
            while True:  # until etcd answers the question "did it land?"
                if time.monotonic() > deadline:
                    raise last
                time.sleep(SETTLE_STEP)
                try:
                    landed = self.read_key(mark) == token
                    break
                except StorageFailed as error:
                    last = error
            if landed:
                return {"succeeded": True, "header": {"revision": 0}}

    def _open(self) -> _Batch | None:
        return getattr(self._local, "open", None)

    def _write(self, key: str, value: Any) -> None:
        """Buffer a write (None: delete) in this thread's batch, opening one of its own when none is open."""
        opened = self._open()
        if opened is None:
            with self.batch():
                self._write(key, value)
            return
        opened.writes[key] = _DELETE if value is _DELETE else json.dumps(value, separators=(",", ":"))

    def _delete_range(self, start: str, end: str) -> None:
        """Buffer the deletion of every key in [start, end): the batch's own writes there are dropped (deleted
        after they were made), and a key the batch puts there later is kept (the commit splits the range)."""
        opened = self._open()
        if opened is None:
            with self.batch():
                self._delete_range(start, end)
            return
        for key in [k for k in opened.writes if start <= k < end]:
            del opened.writes[key]
        opened.ranges.append((start, end))

    def _scan(self, start: str, end: str) -> dict[str, bytes]:
        """Keys in [start, end) with their values, as this thread's batch sees them, in key order."""
        found = {_text(kv["key"]): base64.b64decode(kv.get("value", "")) for kv in self._range(start, end)}
        opened = self._open()
        if opened is not None:
            for low, high in opened.ranges:
                for key in [k for k in found if low <= k < high]:
                    del found[key]
            for key, raw in opened.writes.items():
                if start <= key < end:
                    if raw is _DELETE:
                        found.pop(key, None)
                    else:
                        found[key] = raw.encode()
        return dict(sorted(found.items()))

    def _read(self, key: str, track: bool = False) -> Any:
        """The value at `key` as this thread's batch sees it. `track`: the batch will change it, so its commit
        requires it unchanged since this read."""
        opened = self._open()
        if opened is not None and key in opened.writes:
            raw = opened.writes[key]
            return None if raw is _DELETE else json.loads(raw)
        if track and opened is not None and key in self._known:
            value, revision = self._known[key]
            opened.reads.setdefault(key, revision)
            return value
        kvs = self._range(key)
        if track and opened is not None:
            opened.reads.setdefault(key, int(kvs[0]["mod_revision"]) if kvs else 0)
        return json.loads(base64.b64decode(kvs[0]["value"])) if kvs else None

    # ---- the interface -------------------------------------------------------------------------------------

    def put(self, kind, key, value):
        self._write(self._record_key(record_kind(kind), key), value)

    def get(self, kind, key):
        return self._read(self._record_key(record_kind(kind), key))

    def delete(self, kind, key):
        self._write(self._record_key(record_kind(kind), key), _DELETE)

    def values(self, kind):
        start = self._record_key(record_kind(kind), "")
        return [json.loads(raw) for raw in self._scan(start, _end(start)).values()]

    def _append(self, event):
        if self._open() is not None:
            return self._append_in_batch(event)
        for _ in range(50):  # a batch of its own: numbered again when another writer moved the counter
            try:
                with self.batch():
                    seq = self._append_in_batch(dict(event))
            except Moved:
                continue
            event["id"] = seq
            return seq
        raise StorageFailed(f"etcd at {self.url}: the event counter kept moving (50 tries); another writer?")

    def _append_in_batch(self, event: dict) -> int:
        opened = self._open()
        assert opened is not None
        seq = self._last_in_batch(opened) + 1
        event["id"] = opened.counter = seq
        self._write(self._counter_key, seq)
        self._write(self._event_key(seq), event)
        if seq > base.EVENT_RETENTION:
            self._write(self._event_key(seq - base.EVENT_RETENTION), _DELETE)
        task_id = event["task_id"]
        self._write(self._index_key(task_id, seq), seq)
        if seq > base.EVENT_RETENTION:  # this task's entries of culled events
            self._delete_range(self._index_key(task_id, 0), self._index_key(task_id, seq - base.EVENT_RETENTION + 1))
        return seq

    def _last_in_batch(self, opened: _Batch) -> int:
        """The last event id as the batch sees it; its first read is tracked (the commit compares the counter)."""
        if opened.counter is not None:
            return opened.counter
        return int(self._read(self._counter_key, track=True) or 0)

    def _event(self, seq):
        return self._read(self._event_key(seq))

    def last_event_id(self):
        opened = self._open()
        if opened is not None and opened.counter is not None:
            return opened.counter
        return int(self._read(self._counter_key) or 0)

    def _task_event_ids(self, task_id):
        start = self._index_key(task_id)
        kept = base.TASK_EVENTS_KEPT
        if self._open() is not None:
            keys = list(self._scan(start, _end(start)))[-kept:]
        else:  # the newest `kept`, keys only
            body = {"key": _b64(start), "range_end": _b64(_end(start)), "limit": kept, "keys_only": True}
            body.update(sort_order=2, sort_target=0)  # descending by key
            keys = sorted(_text(kv["key"]) for kv in self._post("kv/range", body).get("kvs", []))
        return [int(key.rsplit("/", 1)[1]) for key in keys]

    def forget_task_events(self, task_id):
        start = self._index_key(task_id)
        self._delete_range(start, _end(start))

    def events(self, since: int = 0, limit: int = 1000, task_id: str | None = None) -> list:
        """As the interface's, with one range read (or a few txns of reads) instead of one request per event."""
        from cube.core.model import Event

        if self._open() is not None:
            return super().events(since, limit, task_id)  # inside a batch: through its buffer, rare
        last = self.last_event_id()
        oldest = max(since + 1, last - base.EVENT_RETENTION + 1, 1)
        if limit <= 0:
            return []
        if task_id is None:
            newest = min(last, oldest + limit - 1)
            if newest < oldest:
                return []
            kvs = self._range(self._event_key(oldest), self._event_key(newest + 1))
        else:
            ids = [i for i in self._task_event_ids(task_id) if i >= oldest][:limit]
            kvs = []
            for n in range(0, len(ids), RANGE_CHUNK):
                reads = [{"request_range": {"key": _b64(self._event_key(i))}} for i in ids[n : n + RANGE_CHUNK]]
                answer = self._txn([], reads)
                for response in answer.get("responses", []):
                    kvs.extend(response.get("response_range", {}).get("kvs", []))
        return [Event.from_dict(json.loads(base64.b64decode(kv["value"]))) for kv in kvs]

    def lease(self, ttl: int) -> int:
        """A new lease of `ttl` seconds (its id): keys put with it go when it is not kept alive."""
        return int(self._post("lease/grant", {"TTL": ttl, "ID": 0})["ID"])

    def keep_alive(self, lease: int) -> int:
        """Refresh `lease`; its remaining TTL, 0 or less when it is gone."""
        answer = self._post("lease/keepalive", {"ID": lease})
        return int(answer.get("result", {}).get("TTL", 0))

    def revoke(self, lease: int) -> None:
        self._post("kv/lease/revoke", {"ID": lease})

    def create(self, key: str, value: str, lease: int = 0) -> tuple[bool, str | None]:
        """Put `key` (full etcd key) = `value` only if it is absent; (created, the value it holds now)."""
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            put["lease"] = lease
        answer = self._txn(
            [{"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": 0}],
            [{"request_put": put}],
            [{"request_range": {"key": _b64(key)}}],
        )
        if answer.get("succeeded"):
            return True, value
        kvs = answer["responses"][0].get("response_range", {}).get("kvs", [])
        return False, _text(kvs[0].get("value", "")) if kvs else None

    def read_key(self, key: str) -> str | None:
        """The value at a full etcd key (outside the store's records), or None."""
        kvs = self._range(key)
        return _text(kvs[0].get("value", "")) if kvs else None

    def delete_key(self, key: str, value: str) -> bool:
        """Delete `key` if it still holds `value` (a leader stepping down leaves another's key alone)."""
        answer = self._txn(
            [{"key": _b64(key), "target": "VALUE", "result": "EQUAL", "value": _b64(value)}],
            [{"request_delete_range": {"key": _b64(key)}}],
        )
        return bool(answer.get("succeeded"))

    def close(self):
        for client in self._clients:
            client.session.close()


class _Batch:
    """One thread's open batch: its writes in order (key -> JSON text, None: delete), the ranges it deleted, the
    mod_revision of each key it read to change, and the event counter as it left it."""

    def __init__(self):
        self.writes: dict[str, str | None] = {}
        self.ranges: list[tuple[str, str]] = []  # [start, end) deleted
        self.reads: dict[str, int] = {}
        self.counter: int | None = None


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _text(data: str) -> str:
    return base64.b64decode(data).decode()


def _end(prefix: str) -> str:
    """The end of the range of keys starting with `prefix` (its last character plus one)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _around(start: str, end: str, puts: list[str]) -> list[tuple[str, str]]:
    """[start, end) less the keys in `puts` (sorted): etcd refuses a txn that deletes a range holding a key it puts."""
    pieces, low = [], start
    for key in puts:
        if low <= key < end:
            if low < key:
                pieces.append((low, key))
            low = key + "\0"
    if low < end:
        pieces.append((low, end))
    return pieces


def _op(key: str, value: str | None) -> dict:
    if value is _DELETE:
        return {"request_delete_range": {"key": _b64(key)}}
    return {"request_put": {"key": _b64(key), "value": _b64(value)}}


def _compare_mod(key: str, revision: int) -> dict:
    # A key never written has mod_revision 0 in etcd's compares, so "absent when read" is checked the same way.
    return {"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": revision}


def _held(answer: dict, value: str) -> bool:
    """Whether the fence key (read in the failure branch) still holds `value`."""
    responses = answer.get("responses") or [{}]
    kvs = responses[0].get("response_range", {}).get("kvs", [])
    return bool(kvs) and _text(kvs[0].get("value", "")) == value


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
