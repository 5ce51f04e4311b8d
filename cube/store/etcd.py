"""The etcd store: the store interface on an etcd 3.4+ cluster (spoken to through etcd's JSON gateway:
cube/store/etcd_gateway.py), so that several managers can share one state and one of them leads.

What it decides:
- Layout under a prefix (default `/cube/`): `r/<kind>/<key>` a record (JSON), `e/<id, 12 digits>` an event,
  `n/last_event` the event counter, `t/<task id>/<id>` one key per event of a task: its index. An append writes
  that key without reading a list first (a read cost ~3 ms per new task); a task's entries go when it appends past
  their event's retention or is forgotten, and reads take its newest TASK_EVENTS_KEPT. Records are JSON.
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
- A batch whose fate etcd left open (no answer in time: its raft leader died, or it lost quorum) is settled by a
  mark it wrote (`n/last_batch`, a token of its own), read back once etcd answers: found, it landed; not found, it
  is sent again (its compares keep a resend from landing twice); still no answer after SETTLE seconds, the caller
  gets the gateway's one-line error ("etcd has no quorum ...").
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from cube.core.errors import StorageFailed
from cube.store import base
from cube.store.base import Store, open_batch, record_kind
from cube.store.etcd_gateway import TIMEOUT, Gateway, b64, text_of

EVENT_DIGITS = 12  # zero-padded event ids, so that a range read returns them in order
RANGE_CHUNK = 100  # reads per txn when fetching scattered events (under etcd's default --max-txn-ops of 128)
SETTLE = 15.0  # seconds a batch whose fate etcd left open is retried (an etcd election takes 1-2 s; no quorum: more)
SETTLE_STEP = 0.3
_DELETE = None  # a buffered delete


class NotLeading(StorageFailed):
    """A write by a manager whose leadership (its fence) is gone: refused by etcd, nothing written."""


class Moved(StorageFailed):
    """A key the batch read to change was changed by another writer before the batch committed."""


class EtcdStore(Store):
    """The store on etcd at `endpoints` (URLs), every key under `prefix`."""

    def __init__(
        self, endpoints: str | list[str], prefix: str = "/cube/", timeout: float = TIMEOUT, settle: float = SETTLE
    ):
        self.etcd = Gateway(endpoints, timeout)
        self.endpoints = self.etcd.endpoints
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.settle = settle
        self._write_lock = threading.RLock()  # one batch of this process at a time, from its first line to commit
        self._local = threading.local()  # the open batch of this thread
        # The event counter as this process's last commit left it: (last id, mod_revision); None: read it again.
        # A batch starts from it without a read; its commit's compare catches another writer.
        self._counter: tuple[int, int] | None = None
        self._fence: tuple[str, str] | None = None
        self._on_refused: Callable[[], None] | None = None

    @property
    def url(self) -> str:
        return self.etcd.url

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
        with open_batch(self._local, self._write_lock, _Batch) as opened:
            yield
            if opened is not None:  # the outermost: nothing reached etcd before this one transaction
                self._commit(opened)

    def _commit(self, opened: _Batch) -> None:
        if not opened.writes and not opened.ranges:
            return  # a batch that writes nothing asks nothing of etcd
        compare = [_compare_mod(key, rev) for key, rev in opened.reads.items()]
        fence = self._fence
        if fence is not None:
            compare.append({"key": b64(fence[0]), "target": "VALUE", "result": "EQUAL", "value": b64(fence[1])})
        success = [_op(key, value) for key, value in opened.writes.items()]
        puts = sorted(key for key, value in opened.writes.items() if value is not _DELETE)
        for start, end in opened.ranges:
            success += [
                {"request_delete_range": {"key": b64(a), "range_end": b64(b)}} for a, b in _around(start, end, puts)
            ]
        failure = [{"request_range": {"key": b64(fence[0])}}] if fence is not None else []
        answer = self._send(compare, success, failure)
        if not answer.get("succeeded"):
            self._counter = None
            if fence is not None and _held(answer, fence[1]) is False:
                if self._on_refused is not None:
                    self._on_refused()
                raise NotLeading(f"this manager no longer leads (its key {fence[0]} in etcd is gone or another's)")
            raise Moved(f"another writer changed etcd at {self.url} during this batch (nothing of it was written)")
        # Every key the txn wrote now has its revision (0: landed as its mark says, its answer lost: unknown).
        revision = int(answer["header"]["revision"])
        if opened.counter is not None:
            self._counter = (opened.counter, revision) if revision else None

    def _send(self, compare: list[dict], success: list[dict], failure: list[dict]) -> dict:
        """Send a batch's txn, marked with a token of its own (`n/last_batch`). A txn whose fate etcd left open (no
        answer in time, its raft leader lost) is settled by reading the mark back, once etcd answers again: there,
        it landed; elsewhere, it did not and is sent again (its compares keep a resend from landing twice)."""
        mark, token = f"{self.prefix}n/last_batch", secrets.token_hex(8)
        success = [*success, {"request_put": {"key": b64(mark), "value": b64(token)}}]
        deadline = time.monotonic() + self.settle
        while True:
            try:
                return self.etcd.txn(compare, success, failure)
            except StorageFailed as error:
                if not getattr(error, "unsure", False):
                    raise
                last = error
            while True:  # until etcd answers the question "did it land?"
                if time.monotonic() > deadline:
                    raise last
                time.sleep(SETTLE_STEP)
                try:
                    landed = self.etcd.read_key(mark) == token
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
        found = {text_of(kv["key"]): base64.b64decode(kv.get("value", "")) for kv in self.etcd.range(start, end)}
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

    def _read(self, key: str) -> Any:
        """The value at `key` as this thread's batch sees it."""
        opened = self._open()
        if opened is not None and key in opened.writes:
            raw = opened.writes[key]
            return None if raw is _DELETE else json.loads(raw)
        kvs = self.etcd.range(key)
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
        """The last event id as the batch sees it; the commit will require the counter unchanged since."""
        if opened.counter is not None:
            return opened.counter
        key = self._counter_key
        if self._counter is None:
            kvs = self.etcd.range(key)
            value = int(json.loads(base64.b64decode(kvs[0]["value"]))) if kvs else 0
            self._counter = (value, int(kvs[0]["mod_revision"]) if kvs else 0)
        last, revision = self._counter
        opened.reads[key] = revision
        return last

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
            body = {"key": b64(start), "range_end": b64(_end(start)), "limit": kept, "keys_only": True}
            body.update(sort_order=2, sort_target=0)  # descending by key
            keys = sorted(text_of(kv["key"]) for kv in self.etcd.post("kv/range", body).get("kvs", []))
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
            kvs = self.etcd.range(self._event_key(oldest), self._event_key(newest + 1))
        else:
            ids = [i for i in self._task_event_ids(task_id) if i >= oldest][:limit]
            kvs = []
            for n in range(0, len(ids), RANGE_CHUNK):
                reads = [{"request_range": {"key": b64(self._event_key(i))}} for i in ids[n : n + RANGE_CHUNK]]
                answer = self.etcd.txn([], reads)
                for response in answer.get("responses", []):
                    kvs.extend(response.get("response_range", {}).get("kvs", []))
        return [Event.from_dict(json.loads(base64.b64decode(kv["value"]))) for kv in kvs]

    def close(self):
        self.etcd.close()


class _Batch:
    """One thread's open batch: its writes in order (key -> JSON text, None: delete), the ranges it deleted, the
    mod_revision of each key it read to change, and the event counter as it left it."""

    def __init__(self):
        self.writes: dict[str, str | None] = {}
        self.ranges: list[tuple[str, str]] = []  # [start, end) deleted
        self.reads: dict[str, int] = {}
        self.counter: int | None = None


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
        return {"request_delete_range": {"key": b64(key)}}
    return {"request_put": {"key": b64(key), "value": b64(value)}}


def _compare_mod(key: str, revision: int) -> dict:
    # A key never written has mod_revision 0 in etcd's compares, so "absent when read" is checked the same way.
    return {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": revision}


def _held(answer: dict, value: str) -> bool:
    """Whether the fence key (read in the failure branch) still holds `value`."""
    responses = answer.get("responses") or [{}]
    kvs = responses[0].get("response_range", {}).get("kvs", [])
    return bool(kvs) and text_of(kvs[0].get("value", "")) == value
