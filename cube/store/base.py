"""Where Cube keeps what must survive a `kill -9`: records by kind (tasks, jobs, nodes, ...) and a numbered event
log. One interface, three backends: `DiskStore` (diskcache, the only module that imports it) for the real thing,
`MemoryStore` for fast tests and simulations, and `EtcdStore` (store/etcd.py) for several managers sharing one state;
`tests/test_store.py` runs one suite against all three.

Records are plain JSON-able dicts; callers convert to and from model objects. Nothing is written while nothing
changes (SD cards wear out): eviction and statistics are off, reading a kind never written creates nothing, and
opening a store already there writes nothing. Kinds starting with '_' are the store's own.

Writes land together or not at all inside `batch()` (a task, its event and its placement; a job and its N tasks). A
write the disk refuses raises `StorageFull` (507: no space, quota) or `StorageFailed` (503: read-only, permission,
I/O) naming the directory, after undoing the whole batch: callers keep their memory as the store has it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TypeVar

from cube.core.model import Event

EVENT_RETENTION = 200_000  # events kept; older ones are culled as new ones arrive
TASK_EVENTS_KEPT = 1000  # a task's newest events found by its id (a crash loop of months must not grow one list)


def record_kind(kind: str) -> str:
    """A kind of record as callers name it: letters, digits and inner '_' ('_' first is the store's own)."""
    if not isinstance(kind, str) or not kind.replace("_", "").isalnum() or kind.startswith("_"):
        raise ValueError(f"bad store kind {kind!r}")
    return kind


class Store:
    """The interface. Each method is atomic on its own."""

    def batch(self) -> AbstractContextManager[None]:
        """The writes made inside, by this thread (put, delete, append_event), land together or not at all: an
        exception escaping the outermost batch, or a write the disk refuses, undoes every one of them. Batches nest
        (the outermost decides); other threads' writes wait for the batch to end. A write outside any batch is a
        batch of one."""
        raise NotImplementedError

    def put(self, kind: str, key: str, value: dict) -> None:
        raise NotImplementedError

    def get(self, kind: str, key: str) -> dict | None:
        raise NotImplementedError

    def delete(self, kind: str, key: str) -> None:
        raise NotImplementedError

    def values(self, kind: str) -> list[dict]:
        raise NotImplementedError

    def _append(self, event: dict) -> int:
        raise NotImplementedError

    def _event(self, seq: int) -> dict | None:
        raise NotImplementedError

    def last_event_id(self) -> int:
        raise NotImplementedError

    def _task_event_ids(self, task_id: str) -> list[int]:
        raise NotImplementedError

    def forget_task_events(self, task_id: str) -> None:
        """Drop the index of a task's events (its record is gone: housekeeping); the events themselves stay in the
        log until they are culled."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def append_event(self, event: Event) -> Event:
        """Numbers the event (ids grow by one from 1) and keeps it; returns it with its id."""
        data = event.to_dict()
        data["id"] = self._append(data)
        return Event.from_dict(data)

    def events(self, since: int = 0, limit: int = 1000, task_id: str | None = None) -> list[Event]:
        """Events with id > since, oldest first, at most `limit`."""
        last = self.last_event_id()
        oldest = max(since + 1, last - EVENT_RETENTION + 1, 1)  # older ones are culled
        if task_id is not None:
            ids: Sequence[int] = [i for i in self._task_event_ids(task_id) if i >= oldest][:limit]
        else:
            start = oldest
            ids = range(start, min(last, start + limit - 1) + 1)
        found = (self._event(i) for i in ids)
        return [Event.from_dict(e) for e in found if e is not None]


B = TypeVar("B")


@contextmanager
def open_batch(local: threading.local, lock: AbstractContextManager, make: Callable[[], B]) -> Iterator[B | None]:
    """This thread's batch as a backend keeps it: None inside one already open (nested: the outermost decides),
    else a new one from `make`, held in `local.open` under `lock` (other threads' batches wait) until the block ends."""
    if getattr(local, "open", None) is not None:
        yield None
        return
    with lock:
        local.open = opened = make()
        try:
            yield opened
        finally:
            local.open = None


def node_id(store: Store) -> str:
    """A random id kept in the store: stable across restarts, distinct between two nodes with one hostname."""
    value = store.get("meta", "node_id")
    if not value:
        import secrets

        value = {"id": secrets.token_hex(4)}
        store.put("meta", "node_id", value)
    return value["id"]
