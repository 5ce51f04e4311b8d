"""The diskcache store (the only module that imports diskcache): one Cache per kind, one for events, one for the
per-task event index, each a directory holding an SQLite database.

What it decides:
- Nothing is written while nothing changes (SD cards wear out): eviction and statistics are off, a kind never written
  has no files, and a kind already there is opened without diskcache's start-up writes (it rewrites every setting
  at each open, which also made a full disk refuse to start).
- A batch is one SQLite transaction per kind it touches, committed together. Should one commit fail after others
  succeeded (the disk filled up between them), those are put back from the values read before the batch wrote.
- Private: directories 0700 and database files 0600 whatever the umask (SQLite gives -wal and -shm the database's
  mode).
- A disk that cannot be written at start (full: SQLite cannot size its -shm file; read-only) still serves reads:
  each kind is opened read-only (`immutable`) when it was closed cleanly (no WAL left to replay), writes raise the
  cause, and each write first tries to open it writable again, so freeing space needs no restart.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any
from urllib.parse import quote

from cube.core.errors import StorageFailed, StorageFull
from cube.store import base
from cube.store.base import Store, open_batch, record_kind

DB = "cache.db"  # diskcache's file name
SETTINGS = {"eviction_policy": "none", "size_limit": 2**62, "cull_limit": 0, "statistics": False}
_MISSING = object()
_DELETE = object()
LOW_SPACE = 64 * 1024  # bytes: an I/O error with less free than this is a full disk


class DiskStore(Store):
    """diskcache under `directory`: one Cache per kind, one for events, one for the per-task event index."""

    def __init__(self, directory: str):
        import diskcache  # only here: the CLI's fast paths never load it

        self._diskcache = diskcache
        self.directory = directory
        self._caches: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.RLock()  # one batch at a time; held from its first write to its commit
        self._local = threading.local()  # the open batch of this thread
        self.refusing: StorageFailed | None = None  # why the store opened read-only (None: writable)
        try:
            _private_dir(directory)
            kinds = sorted(k for k in os.listdir(directory) if _has_db(os.path.join(directory, k)))
        except OSError as error:
            raise self._failure(error) from None
        for kind in kinds:  # opened now, so a first read later writes nothing (SQLite's -wal and -shm included)
            self._cache(kind, create=False)

    # ---- opening -------------------------------------------------------------------------------------------

    def _cache(self, kind: str, create: bool = True):
        """The Cache of `kind`, opened at first use. `create=False` (reads): None for a kind never written, so
        reading one creates no file."""
        with self._lock:
            cache = self._caches.get(kind)
            if cache is None:
                path = os.path.join(self.directory, kind)
                if not _has_db(path):
                    if not create:
                        return None
                    cache = self._create(path)
                else:
                    cache = self._open(path)
                self._caches[kind] = cache
            return cache

    def _create(self, path: str):
        try:
            _private_dir(path)
            os.close(os.open(os.path.join(path, DB), os.O_WRONLY | os.O_CREAT, 0o600))  # empty: a new database
            return _cache_class(self._diskcache)(path, **SETTINGS)
        except (OSError, sqlite3.Error, self._diskcache.Timeout) as error:
            # A kind cut short holds nothing (its first write is what failed): removed, it reads as never written.
            shutil.rmtree(path, ignore_errors=True)
            raise self._failure(error) from None

    def _open(self, path: str):
        """A kind already there, without a write; read-only when SQLite cannot open it for writing."""
        opened = _cache_class(self._diskcache).adopt
        try:
            return opened(path)
        except (OSError, sqlite3.Error) as error:
            refusal = self._failure(error)
        wal = os.path.join(path, DB + "-wal")
        if os.path.exists(wal) and os.path.getsize(wal) > 0:
            raise refusal  # committed writes wait in the WAL: a read-only view would show the past
        try:
            cache = opened(path, immutable=True)
        except (OSError, sqlite3.Error):
            raise refusal from None
        self.refusing = refusal
        return cache

    def _writable(self) -> None:
        """Raise the reason the store cannot be written, after trying to open it writable again (lock held)."""
        if self.refusing is None:
            return
        with self._lock:
            try:
                reopened = {kind: _cache_class(self._diskcache).adopt(c.directory) for kind, c in self._caches.items()}
            except (OSError, sqlite3.Error) as error:
                self.refusing = self._failure(error)
                raise self.refusing from None
            for cache in self._caches.values():
                cache.close()
            self._caches, self.refusing = reopened, None

    def _failure(self, error: BaseException) -> StorageFailed:
        """What a refused write means for the user: full (507) or not writable (503), naming the directory."""
        if isinstance(error, StorageFailed):
            return error
        code = getattr(error, "errno", None)
        name = getattr(error, "sqlite_errorname", "") or ""
        full = code in (errno.ENOSPC, errno.EDQUOT) or name.startswith("SQLITE_FULL") or "disk is full" in str(error)
        if full or _low_space(self.directory):
            return StorageFull(f"data disk full: {self.directory} (free space, then retry)")
        if code == errno.EROFS or _read_only(self.directory):
            cause = "read-only file system"
        elif code in (errno.EACCES, errno.EPERM) or name.startswith(("SQLITE_READONLY", "SQLITE_PERM")):
            cause = "permission denied"
        elif isinstance(error, self._diskcache.Timeout):
            cause = "the store stayed locked (another process is writing it?)"
        else:
            cause = getattr(error, "strerror", None) or str(error) or type(error).__name__
        return StorageFailed(f"cannot write the data directory {self.directory}: {cause}")

    # ---- batches -------------------------------------------------------------------------------------------

    @contextmanager
    def batch(self) -> Iterator[None]:
        with open_batch(self._local, self._write_lock, _Batch) as opened:
            if opened is None:
                yield
                return
            try:
                with ExitStack() as stack:
                    opened.stack = stack
                    yield
                    # Leaving the stack commits, newest transaction first; a commit that fails rolls back the
                    # transactions not yet committed, and _Batch.undo puts back the ones that were.
            except BaseException as error:
                opened.undo()
                if isinstance(error, (OSError, sqlite3.Error, self._diskcache.Timeout)):
                    raise self._failure(error) from None
                raise

    def _write(self, kind: str, key, value) -> None:
        """Set (or delete: `_DELETE`) `key` of `kind` inside this thread's batch, remembering its value before."""
        opened: _Batch = self._local.open
        try:
            if not opened.caches:
                self._writable()  # at the first write: a batch that writes nothing asks nothing of the disk
            cache = self._cache(kind)
            if cache not in opened.caches:
                opened.caches[cache] = {}
                opened.stack.enter_context(_transaction(cache, opened.committed))
            priors = opened.caches[cache]
            if key not in priors:
                priors[key] = cache.get(key, default=_MISSING)
            if value is _DELETE:
                cache.delete(key)
            else:
                cache.set(key, value)
        except (OSError, sqlite3.Error, self._diskcache.Timeout) as error:
            raise self._failure(error) from None

    # ---- the interface -------------------------------------------------------------------------------------

    def put(self, kind, key, value):
        with self.batch():
            self._write(record_kind(kind), key, value)

    def get(self, kind, key):
        cache = self._cache(record_kind(kind), create=False)
        return None if cache is None else cache.get(key)

    def delete(self, kind, key):
        if self._cache(record_kind(kind), create=False) is not None:
            with self.batch():
                self._write(kind, key, _DELETE)

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
        with self.batch():
            seq = self.last_event_id() + 1
            event["id"] = seq
            self._write("_events", "_last", seq)
            self._write("_events", seq, event)
            if seq > base.EVENT_RETENTION:
                self._write("_events", seq - base.EVENT_RETENTION, _DELETE)
            ids = self._task_event_ids(event["task_id"])
            ids.append(seq)
            self._write("_task_events", event["task_id"], ids[-base.TASK_EVENTS_KEPT :])
        return seq

    def _event(self, seq):
        cache = self._cache("_events", create=False)
        return None if cache is None else cache.get(seq)

    def last_event_id(self):
        cache = self._cache("_events", create=False)
        return 0 if cache is None else int(cache.get("_last", 0))

    def _task_event_ids(self, task_id):
        index = self._cache("_task_events", create=False)
        return [] if index is None else list(index.get(task_id, []))

    def forget_task_events(self, task_id):
        if self._cache("_task_events", create=False) is not None:
            with self.batch():
                self._write("_task_events", task_id, _DELETE)

    def close(self):
        with self._lock:
            for cache in self._caches.values():
                cache.close()
            self._caches.clear()


class _Batch:
    """One thread's open batch: its transactions (entered on the stack) and each key's value before it."""

    def __init__(self):
        self.stack = ExitStack()  # replaced by the batch's own
        self.caches: dict[Any, dict] = {}  # cache -> key -> value before the batch (_MISSING: absent)
        self.committed: list = []  # caches whose transaction committed

    def undo(self) -> None:
        """Put back what transactions already committed wrote (the others were rolled back)."""
        for cache in self.committed:
            priors = self.caches[cache]
            try:
                with cache.transact():
                    for key, prior in priors.items():
                        if prior is _MISSING:
                            cache.delete(key)
                        else:
                            cache.set(key, prior)
            except (OSError, sqlite3.Error) as error:  # the store keeps a part: say so, loudly, once
                import logging

                logging.getLogger("cube.store").error(
                    "store %s keeps part of a refused change (%d keys): %s", cache.directory, len(priors), error
                )


@contextmanager
def _transaction(cache, committed: list) -> Iterator[None]:
    """diskcache's transaction, made sure to end: a COMMIT that fails (disk full) may leave SQLite's transaction
    open, which would refuse every later BEGIN on that connection. Appends `cache` to `committed` once committed."""
    try:
        with cache.transact():
            yield
    except BaseException:
        con = cache._con
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise
    committed.append(cache)


_CLASS: Any = None


def _cache_class(diskcache) -> Any:
    """diskcache.Cache with two more ways to open (built at first use: diskcache is imported lazily)."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS

    class Cache(diskcache.Cache):
        _immutable = False

        @classmethod
        def adopt(cls, path: str, immutable: bool = False):
            """An existing cache opened without writing (diskcache's __init__ rewrites every setting): its settings
            are read back instead. `immutable`: read-only, without SQLite's -wal and -shm (a full or read-only
            disk), for a database closed cleanly."""
            self = cls.__new__(cls)
            self._directory, self._timeout, self._local, self._txn_id = path, 60, threading.local(), None
            self._immutable = immutable
            try:
                settings = dict(self._sql("SELECT key, value FROM Settings").fetchall())
                self._disk = diskcache.Disk(path, **{k[5:]: v for k, v in settings.items() if k.startswith("disk_")})
                for key, value in settings.items():
                    setattr(self, key, value)
                ((self._page_size,),) = self._sql("PRAGMA page_size").fetchall()
            except sqlite3.OperationalError as error:
                self.close()
                if "no such table" not in str(error):
                    raise
                # Created but never set up (a crash in between): set it up now, a write it needs.
                return cls(path, **SETTINGS)
            return self

        @property
        def _con(self):
            if not self._immutable:
                return diskcache.Cache._con.fget(self)
            con = getattr(self._local, "con", None)
            if con is None:
                uri = f"file:{quote(os.path.join(self._directory, DB))}?mode=ro&immutable=1"
                con = self._local.con = sqlite3.connect(uri, uri=True, isolation_level=None)
            return con

    _CLASS = Cache
    return Cache


def _private_dir(path: str) -> None:
    """`path` as a directory only its owner reads (0700 whatever the umask)."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    if os.stat(path).st_mode & 0o077:
        try:
            os.chmod(path, 0o700)
        except OSError as error:
            if error.errno != errno.EROFS:
                raise


def _has_db(path: str) -> bool:
    """Whether the kind at `path` holds a database (an empty file left by a creation cut short does not)."""
    db = os.path.join(path, DB)
    return any(os.path.exists(f) and os.path.getsize(f) > 0 for f in (db, db + "-wal"))


def _low_space(path: str) -> bool:
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    free = st.f_bfree if os.geteuid() == 0 else st.f_bavail  # root may use the reserved blocks
    return free * st.f_frsize < LOW_SPACE


def _read_only(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False
