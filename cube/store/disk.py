"""The diskcache store (the only module that imports diskcache): one Cache per kind, one for events, one for the
per-task event index. Eviction and statistics are off, so reading never writes (SD cards wear out)."""

from __future__ import annotations

import os
import threading
from typing import Any

from cube.store import base
from cube.store.base import Store, record_kind


class DiskStore(Store):
    """diskcache under `directory`: one Cache per kind, one for events, one for the per-task event index."""

    def __init__(self, directory: str):
        import diskcache  # only here: the CLI's fast paths never load it

        self._diskcache = diskcache
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self._caches: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._events_cache = self._cache("_events")
        self._index = self._cache("_task_events")

    def _cache(self, kind: str, create: bool = True):
        """The Cache of `kind`, opened at first use. `create=False` (reads): None for a kind never written, so
        reading one creates no file."""
        with self._lock:
            cache = self._caches.get(kind)
            if cache is None:
                path = os.path.join(self.directory, kind)
                if not create and not os.path.exists(path):
                    return None
                cache = self._diskcache.Cache(
                    path,
                    eviction_policy="none",
                    size_limit=2**62,
                    cull_limit=0,
                    statistics=False,
                )
                self._caches[kind] = cache
            return cache

    def put(self, kind, key, value):
        self._cache(record_kind(kind)).set(key, value)

    def get(self, kind, key):
        cache = self._cache(record_kind(kind), create=False)
        return None if cache is None else cache.get(key)

    def delete(self, kind, key):
        cache = self._cache(record_kind(kind), create=False)
        if cache is not None:
            cache.delete(key)

    def values(self, kind):
        cache = self._cache(record_kind(kind), create=False)
        if cache is None:
            return []
        out = []
        for key in list(cache.iterkeys()):
            value = cache.get(key)
            if value is not None:
                out.append(value)
        return out

    def _append(self, event):
        cache, index = self._events_cache, self._index
        with cache.transact():
            seq = cache.incr("_last", 1, default=0)
            event["id"] = seq
            cache.set(seq, event)
            if seq > base.EVENT_RETENTION:
                cache.delete(seq - base.EVENT_RETENTION)
        with index.transact():
            ids = index.get(event["task_id"], [])
            ids.append(seq)
            index.set(event["task_id"], ids[-base.TASK_EVENTS_KEPT :])
        return seq

    def _event(self, seq):
        return self._events_cache.get(seq)

    def last_event_id(self):
        return int(self._events_cache.get("_last", 0))

    def _task_event_ids(self, task_id):
        return list(self._index.get(task_id, []))

    def close(self):
        with self._lock:
            for cache in self._caches.values():
                cache.close()
            self._caches.clear()
