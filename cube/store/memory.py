"""The in-memory store: fast tests and simulated clusters. Same contract as the disk store (tests/test_store.py)."""

from __future__ import annotations

import pickle
import threading

from cube.store import base
from cube.store.base import Store, record_kind


class MemoryStore(Store):
    def __init__(self):
        self._lock = threading.Lock()
        self._kinds: dict[str, dict[str, dict]] = {}
        self._events: dict[int, dict] = {}
        self._by_task: dict[str, list[int]] = {}
        self._last = 0

    def put(self, kind, key, value):
        with self._lock:
            self._kinds.setdefault(record_kind(kind), {})[key] = _copy(value)

    def get(self, kind, key):
        with self._lock:
            value = self._kinds.get(record_kind(kind), {}).get(key)
            return _copy(value) if value is not None else None

    def delete(self, kind, key):
        with self._lock:
            self._kinds.get(record_kind(kind), {}).pop(key, None)

    def values(self, kind):
        with self._lock:
            return [_copy(v) for v in self._kinds.get(record_kind(kind), {}).values()]

    def _append(self, event):
        with self._lock:
            self._last += 1
            event["id"] = self._last
            self._events[self._last] = dict(event)
            ids = self._by_task.setdefault(event["task_id"], [])
            ids.append(self._last)
            del ids[: -base.TASK_EVENTS_KEPT]
            self._events.pop(self._last - base.EVENT_RETENTION, None)
            return self._last

    def _event(self, seq):
        return self._events.get(seq)

    def last_event_id(self):
        return self._last

    def _task_event_ids(self, task_id):
        with self._lock:
            return list(self._by_task.get(task_id, ()))


def _copy(value: dict) -> dict:
    # Records are small JSON trees; a structural copy keeps callers from mutating the stored one. A pickle round
    # trip copies them 2.5x faster than copy.deepcopy (simulations of 10,000 tasks spent most time here).
    return pickle.loads(pickle.dumps(value, pickle.HIGHEST_PROTOCOL))
