"""The in-memory store: fast tests and simulated clusters. Same contract as the disk store (tests/test_store.py)."""

from __future__ import annotations

import pickle
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from cube.store import base
from cube.store.base import Store, record_kind


class MemoryStore(Store):
    def __init__(self):
        # Reentrant: a batch holds it from its first line to its last, so other threads never see half of one.
        self._lock = threading.RLock()
        self._kinds: dict[str, dict[str, dict]] = {}
        self._events: dict[int, dict] = {}
        self._by_task: dict[str, list[int]] = {}
        self._last = 0
        self._undo: list[Callable[[], object]] | None = None  # the open batch's way back, newest last

    @contextmanager
    def batch(self) -> Iterator[None]:
        with self._lock:
            if self._undo is not None:
                yield  # nested: the outermost batch decides
                return
            self._undo = []
            try:
                yield
            except BaseException:
                for step in reversed(self._undo):
                    step()
                raise
            finally:
                self._undo = None

    def _remember(self, step: Callable[[], None]) -> None:
        if self._undo is not None:
            self._undo.append(step)

    def _keep(self, kind: str, key: str) -> None:
        """Remember how to put `key` back as it is now (lock held)."""
        records = self._kinds.setdefault(kind, {})
        prior = records.get(key)

        def undo() -> None:
            if prior is None:
                records.pop(key, None)
            else:
                records[key] = prior

        self._remember(undo)

    def put(self, kind, key, value):
        with self._lock:
            self._keep(record_kind(kind), key)
            self._kinds[kind][key] = _copy(value)

    def get(self, kind, key):
        with self._lock:
            value = self._kinds.get(record_kind(kind), {}).get(key)
            return _copy(value) if value is not None else None

    def delete(self, kind, key):
        with self._lock:
            if key in self._kinds.get(record_kind(kind), {}):
                self._keep(kind, key)
                del self._kinds[kind][key]

    def values(self, kind):
        with self._lock:
            return [_copy(v) for v in self._kinds.get(record_kind(kind), {}).values()]

    def _append(self, event):
        with self._lock:
            last, ids = self._last, self._by_task.setdefault(event["task_id"], [])
            kept_ids, culled = list(ids), self._events.get(last + 1 - base.EVENT_RETENTION)

            def undo() -> None:
                self._events.pop(last + 1, None)
                if culled is not None:
                    self._events[last + 1 - base.EVENT_RETENTION] = culled
                ids[:] = kept_ids
                self._last = last

            self._remember(undo)
            self._last += 1
            event["id"] = self._last
            self._events[self._last] = dict(event)
            ids.append(self._last)
            del ids[: -base.TASK_EVENTS_KEPT]
            self._events.pop(self._last - base.EVENT_RETENTION, None)
            return self._last

    def _event(self, seq):
        with self._lock:
            return self._events.get(seq)

    def last_event_id(self):
        with self._lock:
            return self._last

    def _task_event_ids(self, task_id):
        with self._lock:
            return list(self._by_task.get(task_id, ()))

    def forget_task_events(self, task_id):
        with self._lock:
            ids = self._by_task.pop(task_id, None)
            if ids is not None:
                self._remember(lambda: self._by_task.__setitem__(task_id, ids))


def _copy(value: dict) -> dict:
    # Records are small JSON trees; a structural copy keeps callers from mutating the stored one. A pickle round
    # trip copies them 2.5x faster than copy.deepcopy (simulations of 10,000 tasks spent most time here).
    return pickle.loads(pickle.dumps(value, pickle.HIGHEST_PROTOCOL))
