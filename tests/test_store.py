"""One contract suite for the store interface (`cube.store.base.Store`), run against every backend: records by kind,
the numbered event log, retention, concurrency. The etcd backend runs on a real etcd (tests/etcd_server.py: one
process for the session, a fresh key prefix per test). Disk-only promises (a reopened directory keeps everything, reads
write nothing, kind names are checked) are tested on `DiskStore` alone."""

import os
import sqlite3
import threading
import uuid
from contextlib import contextmanager

import pytest
from etcd_server import Etcd, require

import cube.store.base
import cube.store.disk
import cube.store.memory
from cube.core.errors import StorageFull
from cube.core.model import Event
from cube.store import DiskStore, MemoryStore

BACKENDS = ("memory", "disk", "etcd")


@pytest.fixture(scope="session")
def etcd_url(tmp_path_factory):
    """One etcd for the session's tests (each works under a key prefix of its own); killed at the end."""
    require()
    with Etcd(tmp_path_factory.mktemp("etcd")) as etcd:
        yield etcd.url


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    if request.param == "etcd":
        from cube.store.etcd import EtcdStore

        s: cube.store.Store = EtcdStore(request.getfixturevalue("etcd_url"), prefix=f"/test/{uuid.uuid4().hex}/")
    elif request.param == "memory":
        s = MemoryStore()
    else:
        s = DiskStore(str(tmp_path / "store"))
    yield s
    s.close()


@pytest.fixture
def disk_dir(tmp_path):
    return str(tmp_path / "disk")


def event(task_id: str = "t1", state: str = "running", message: str = "", node: str = "n1", time: float = 1.0):
    return Event(0, task_id, state, time, message, node)


def ids(events) -> list[int]:
    return [e.id for e in events]


def set_retention(monkeypatch, n: int) -> None:
    # One constant, read at call time by the interface and by both backends.
    monkeypatch.setattr(cube.store.base, "EVENT_RETENTION", n)


# ---- records -----------------------------------------------------------------------------------------------------


def test_put_then_get_returns_an_equal_record(store):
    record = {
        "id": "a",
        "spec": {"image": "busybox", "ports": [{"container": 80, "host": None}]},
        "cpu": 0.5,
        "ok": True,
        "exit_code": None,
        "name": "wéb-✓",
        "times": [1.5, 2.5],
    }
    store.put("tasks", "a", record)
    assert store.get("tasks", "a") == record


def test_put_replaces_the_record_under_its_key(store):
    store.put("tasks", "a", {"v": 1})
    store.put("tasks", "a", {"v": 2})
    assert store.get("tasks", "a") == {"v": 2}
    assert store.values("tasks") == [{"v": 2}]


def test_missing_key_or_kind_gives_none_and_no_values(store):
    store.put("tasks", "a", {"v": 1})
    assert store.get("tasks", "b") is None
    assert store.get("jobs", "a") is None
    assert store.values("nodes") == []


def test_delete_removes_only_that_key_and_is_idempotent(store):
    store.put("tasks", "a", {"v": 1})
    store.put("tasks", "b", {"v": 2})
    store.delete("tasks", "a")
    store.delete("tasks", "a")  # already gone
    store.delete("tasks", "never")  # never there
    store.delete("nokind", "x")  # a kind never written
    assert store.get("tasks", "a") is None
    assert store.get("tasks", "b") == {"v": 2}
    assert store.values("tasks") == [{"v": 2}]


def test_kinds_are_independent(store):
    store.put("tasks", "same", {"kind": "task"})
    store.put("jobs", "same", {"kind": "job"})
    store.put("jobs", "other", {"kind": "job2"})
    assert store.get("tasks", "same") == {"kind": "task"}
    assert store.get("jobs", "same") == {"kind": "job"}
    store.delete("tasks", "same")
    assert store.get("jobs", "same") == {"kind": "job"}
    assert store.values("tasks") == []
    assert sorted(v["kind"] for v in store.values("jobs")) == ["job", "job2"]


def test_values_lists_every_record_of_the_kind(store):
    for i in range(25):
        store.put("tasks", f"t{i}", {"i": i})
    store.delete("tasks", "t7")
    assert sorted(v["i"] for v in store.values("tasks")) == [i for i in range(25) if i != 7]


def test_records_are_copies_of_what_was_put(store):
    record = {"spec": {"env": {"A": "1"}}, "ports": [80]}
    store.put("tasks", "a", record)
    record["spec"]["env"]["A"] = "changed"
    record["ports"].append(81)
    record["new"] = True
    assert store.get("tasks", "a") == {"spec": {"env": {"A": "1"}}, "ports": [80]}


def test_records_returned_are_copies(store):
    store.put("tasks", "a", {"spec": {"env": {"A": "1"}}, "ports": [80]})
    got = store.get("tasks", "a")
    got["spec"]["env"]["A"] = "changed"
    got["ports"].append(81)
    listed = store.values("tasks")[0]
    listed["spec"]["env"]["B"] = "2"
    listed["ports"].clear()
    assert store.get("tasks", "a") == {"spec": {"env": {"A": "1"}}, "ports": [80]}
    assert store.values("tasks") == [{"spec": {"env": {"A": "1"}}, "ports": [80]}]


# ---- the event log -----------------------------------------------------------------------------------------------


def test_empty_log(store):
    assert store.last_event_id() == 0
    assert store.events() == []
    assert store.events(task_id="t1") == []


def test_append_event_numbers_events_from_one(store):
    appended = [store.append_event(event(message=f"m{i}")) for i in range(3)]
    assert ids(appended) == [1, 2, 3]
    assert store.last_event_id() == 3
    first = store.events()[0]
    assert first == Event(1, "t1", "running", 1.0, "m0", "n1")


def test_append_event_ignores_the_id_it_is_given(store):
    store.append_event(Event(42, "t1", "running", 1.0))
    assert ids(store.events()) == [1]
    assert store.last_event_id() == 1


def test_events_since_and_limit(store):
    for i in range(10):
        store.append_event(event(message=f"m{i}"))
    assert ids(store.events()) == list(range(1, 11))
    assert ids(store.events(since=3)) == list(range(4, 11))
    assert ids(store.events(since=3, limit=2)) == [4, 5]
    assert ids(store.events(limit=1)) == [1]
    assert [e.message for e in store.events(since=8)] == ["m8", "m9"]
    assert store.events(since=10) == []
    assert store.events(since=99) == []
    assert store.events(limit=0) == []


def test_events_by_task(store):
    for task_id in ("a", "b", "a", "c", "a", "b"):
        store.append_event(event(task_id=task_id))
    assert ids(store.events(task_id="a")) == [1, 3, 5]
    assert ids(store.events(task_id="b")) == [2, 6]
    assert ids(store.events(task_id="a", since=1)) == [3, 5]
    assert ids(store.events(task_id="a", since=1, limit=1)) == [3]
    assert store.events(task_id="nobody") == []
    assert all(e.task_id == "a" for e in store.events(task_id="a"))


def test_forgetting_a_tasks_events_drops_its_index_only_and_a_refused_batch_keeps_it(store):
    for task_id in ("a", "b", "a"):
        store.append_event(event(task_id=task_id))
    store.forget_task_events("a")
    store.forget_task_events("never")  # nothing to forget: no error
    assert store.events(task_id="a") == [] and ids(store.events(task_id="b")) == [2]
    assert ids(store.events()) == [1, 2, 3], "the log keeps them until they are culled"
    with pytest.raises(RuntimeError), store.batch():
        store.forget_task_events("b")
        raise RuntimeError("refused")
    assert ids(store.events(task_id="b")) == [2]


def test_a_task_forgotten_then_given_events_in_one_batch_keeps_only_the_new_ones(store, monkeypatch):
    set_retention(monkeypatch, 4)
    for task_id in ("a", "a", "b"):
        store.append_event(event(task_id=task_id))
    with store.batch():
        store.forget_task_events("a")
        for _ in range(3):
            store.append_event(event(task_id="a"))  # 4, 5, 6: the last two cull events 1 and 2
        assert ids(store.events(task_id="a")) == [4, 5, 6]
    assert ids(store.events(task_id="a")) == [4, 5, 6]
    assert ids(store.events()) == [3, 4, 5, 6] and ids(store.events(task_id="b")) == [3]


def test_event_log_and_records_do_not_touch_each_other(store):
    store.put("events", "1", {"not": "an event"})
    store.append_event(event())
    assert store.get("events", "1") == {"not": "an event"}
    assert ids(store.events()) == [1]
    assert store.values("tasks") == []


def test_the_event_log_is_not_a_record_kind(store):
    store.append_event(event())
    for kind in ("_events", "_task_events", "_anything"):
        with pytest.raises(ValueError, match="bad store kind"):
            store.values(kind)
        with pytest.raises(ValueError, match="bad store kind"):
            store.put(kind, "k", {"v": 1})


def test_retention_culls_the_oldest_events(store, monkeypatch):
    set_retention(monkeypatch, 5)
    for i in range(12):
        store.append_event(event(task_id="a" if i % 2 else "b", message=f"m{i}"))
    assert store.last_event_id() == 12
    assert ids(store.events()) == [8, 9, 10, 11, 12]
    assert ids(store.events(limit=2)) == [8, 9]
    assert ids(store.events(since=9)) == [10, 11, 12]
    assert ids(store.events(task_id="a")) == [8, 10, 12]
    assert ids(store.events(task_id="b")) == [9, 11]
    # New events still get the next number after culling.
    assert store.append_event(event()).id == 13


def test_events_by_task_limit_counts_only_events_still_kept(store, monkeypatch):
    set_retention(monkeypatch, 5)
    for _ in range(12):
        store.append_event(event(task_id="a"))
    assert ids(store.events(task_id="a")) == [8, 9, 10, 11, 12]
    assert ids(store.events(task_id="a", limit=2)) == [8, 9]


def test_a_task_keeps_its_newest_events(store, monkeypatch):
    """Both backends find a task's newest TASK_EVENTS_KEPT events by its id (the log itself keeps more)."""
    monkeypatch.setattr(cube.store.base, "TASK_EVENTS_KEPT", 10)
    for _ in range(15):
        store.append_event(event(task_id="busy"))
    assert ids(store.events(task_id="busy", limit=100)) == list(range(6, 16))
    assert len(store.events(limit=100)) == 15


def test_concurrent_appends_get_unique_consecutive_ids(store):
    threads, per_thread = 8, 40
    got: dict[str, list[int]] = {}
    barrier = threading.Barrier(threads)

    def append(name: str) -> None:
        barrier.wait()
        got[name] = [store.append_event(event(task_id=name)).id for _ in range(per_thread)]

    workers = [threading.Thread(target=append, args=(f"t{i}",)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=30)
    total = threads * per_thread
    assert sorted(i for values in got.values() for i in values) == list(range(1, total + 1))
    assert store.last_event_id() == total
    assert ids(store.events(limit=total)) == list(range(1, total + 1))
    for name, mine in got.items():
        assert mine == sorted(mine)
        assert ids(store.events(task_id=name)) == mine  # the per-task index lost nothing to the race


def test_concurrent_puts_of_distinct_keys_all_land(store):
    def put(prefix: str) -> None:
        for i in range(30):
            store.put("tasks", f"{prefix}{i}", {"k": f"{prefix}{i}"})

    workers = [threading.Thread(target=put, args=(f"p{n}-",)) for n in range(6)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=30)
    assert len(store.values("tasks")) == 6 * 30


# ---- batches: all or nothing --------------------------------------------------------------------------------------


class Refused(Exception):
    pass


def test_a_batch_lands_whole(store):
    store.put("tasks", "gone", {"v": 0})
    with store.batch():
        store.put("tasks", "a", {"v": 1})
        store.put("jobs", "web", {"count": 2})
        store.delete("tasks", "gone")
        assert store.append_event(event(task_id="a")).id == 1
        assert store.get("tasks", "a") == {"v": 1}  # the batch reads its own writes
    assert store.get("tasks", "a") == {"v": 1}
    assert store.values("jobs") == [{"count": 2}]
    assert store.get("tasks", "gone") is None
    assert ids(store.events(task_id="a")) == [1]


def test_an_exception_in_a_batch_leaves_no_trace_of_it(store):
    store.put("tasks", "kept", {"v": 1})
    store.put("tasks", "deleted", {"v": 2})
    store.append_event(event(task_id="kept"))
    with pytest.raises(Refused):
        with store.batch():
            store.put("tasks", "kept", {"v": "changed"})
            store.put("tasks", "new", {"v": 3})
            store.put("jobs", "web", {"count": 3})
            store.delete("tasks", "deleted")
            store.append_event(event(task_id="kept"))
            store.append_event(event(task_id="new"))
            raise Refused
    assert store.get("tasks", "kept") == {"v": 1}
    assert store.get("tasks", "deleted") == {"v": 2}
    assert store.get("tasks", "new") is None
    assert store.values("jobs") == []
    assert store.last_event_id() == 1
    assert ids(store.events(task_id="kept")) == [1]
    assert store.events(task_id="new") == []
    # Numbering goes on from what was kept.
    assert store.append_event(event(task_id="new")).id == 2
    assert ids(store.events()) == [1, 2]


def test_nested_batches_are_decided_by_the_outermost(store):
    with pytest.raises(Refused):
        with store.batch():
            with store.batch():
                store.put("tasks", "inner", {"v": 1})
                store.append_event(event(task_id="inner"))
            store.put("tasks", "outer", {"v": 2})
            raise Refused
    assert store.values("tasks") == [] and store.last_event_id() == 0
    with store.batch():
        with store.batch():
            store.put("tasks", "inner", {"v": 1})
    assert store.get("tasks", "inner") == {"v": 1}


def test_a_batch_undone_puts_back_a_culled_event(store, monkeypatch):
    set_retention(monkeypatch, 3)
    for i in range(3):
        store.append_event(event(message=f"m{i}"))
    with pytest.raises(Refused):
        with store.batch():
            store.append_event(event(message="m3"))  # culls event 1
            raise Refused
    assert [e.message for e in store.events()] == ["m0", "m1", "m2"]


def test_other_threads_never_see_half_a_batch(store):
    seen: list[tuple] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.append((store.get("tasks", "a"), store.get("tasks", "b")))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(30):
            with store.batch():
                store.put("tasks", "a", {"v": i})
                store.put("tasks", "b", {"v": i})
    finally:
        stop.set()
        reader.join(timeout=30)
    assert all(a is None or (b is not None and b["v"] >= a["v"]) for a, b in seen)


# ---- DiskStore only -----------------------------------------------------------------------------------------------


def test_disk_store_survives_close_and_reopen(disk_dir):
    first = DiskStore(disk_dir)
    first.put("tasks", "a", {"v": 1})
    first.put("tasks", "gone", {"v": 0})
    first.delete("tasks", "gone")
    first.put("jobs", "web", {"count": 3})
    for task_id in ("a", "b", "a"):
        first.append_event(event(task_id=task_id))
    first.close()

    second = DiskStore(disk_dir)
    try:
        assert second.get("tasks", "a") == {"v": 1}
        assert second.get("tasks", "gone") is None
        assert second.values("jobs") == [{"count": 3}]
        assert second.last_event_id() == 3
        assert ids(second.events(task_id="a")) == [1, 3]
        assert second.append_event(event(task_id="a")).id == 4  # numbering goes on, no id is reused
        assert ids(second.events(task_id="a")) == [1, 3, 4]
    finally:
        second.close()


def _files(directory: str) -> dict[str, tuple[int, int]]:
    found = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = os.path.join(root, name)
            st = os.stat(path)
            found[os.path.relpath(path, directory)] = (st.st_size, st.st_mtime_ns)
    return found


def test_disk_store_reads_write_nothing(disk_dir):
    # The design promise for SD cards: nothing is written while nothing changes. Every kind read below was written
    # (and so opened) first; the first access of a kind after a reopen is covered by the test below.
    s = DiskStore(disk_dir)
    try:
        for i in range(5):
            s.put("tasks", f"t{i}", {"i": i})
            s.append_event(event(task_id=f"t{i}"))
        s.put("jobs", "web", {"count": 1})
        before = _files(disk_dir)
        for _ in range(20):
            s.get("tasks", "t1")
            s.get("tasks", "missing")
            s.values("tasks")
            s.values("jobs")
            s.events()
            s.events(since=2, limit=2)
            s.events(task_id="t3")
            s.events(task_id="nobody")
            s.last_event_id()
        assert _files(disk_dir) == before
    finally:
        s.close()


def test_disk_store_read_of_a_kind_never_written_writes_nothing(disk_dir):
    s = DiskStore(disk_dir)
    try:
        before = _files(disk_dir)
        assert s.get("tasks", "a") is None and s.values("tasks") == []
        s.delete("tasks", "a")
        assert _files(disk_dir) == before
    finally:
        s.close()


def test_disk_store_reopen_and_first_read_of_a_kind_write_nothing(disk_dir):
    # diskcache's own __init__ rewrites every setting at each open (which also kept a full disk from starting);
    # DiskStore opens a kind already there by reading its settings back. SQLite's -wal and -shm appear while a
    # database is open: they are not data, so the databases themselves are compared here.
    first = DiskStore(disk_dir)
    first.put("tasks", "a", {"v": 1})
    first.append_event(event())
    first.close()
    databases = {name: v for name, v in _files(disk_dir).items() if name.endswith("cache.db")}
    assert len(databases) == 3  # tasks, _events, _task_events
    s = DiskStore(disk_dir)
    try:
        before = _files(disk_dir)
        assert s.get("tasks", "a") == {"v": 1}
        assert s.values("tasks") == [{"v": 1}]
        assert ids(s.events()) == [1]
        assert _files(disk_dir) == before
        assert {name: v for name, v in before.items() if name.endswith("cache.db")} == databases
    finally:
        s.close()


def test_disk_store_undoes_kinds_already_committed_when_a_later_commit_fails(disk_dir, monkeypatch):
    # A batch is one SQLite transaction per kind; they commit newest first. The disk fills up between two commits:
    # the events (committed first) are put back, the task (refused) was rolled back, and the caller is told why.
    s = DiskStore(disk_dir)
    try:
        s.append_event(event(task_id="old"))
        real = cube.store.disk._transaction

        @contextmanager
        def full_when_tasks_commit(cache, committed):
            with real(cache, committed):
                yield
                if cache.directory.endswith("tasks"):
                    raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(cube.store.disk, "_transaction", full_when_tasks_commit)
        with pytest.raises(StorageFull, match=r"data disk full: .*disk \(free space, then retry\)"):
            with s.batch():
                s.put("tasks", "a", {"v": 1})
                s.append_event(event(task_id="a"))
        monkeypatch.undo()
        assert s.get("tasks", "a") is None
        assert s.last_event_id() == 1 and s.events(task_id="a") == []
        assert s.append_event(event(task_id="a")).id == 2  # and the store goes on
    finally:
        s.close()


@pytest.mark.parametrize("kind", ["", "../escape", "a/b", "a b", "tasks.db", "tâches\n"])
def test_disk_store_rejects_bad_kind_names(disk_dir, kind):
    s = DiskStore(disk_dir)
    try:
        with pytest.raises(ValueError, match="bad store kind"):
            s.put(kind, "k", {"v": 1})
        with pytest.raises(ValueError, match="bad store kind"):
            s.get(kind, "k")
        with pytest.raises(ValueError, match="bad store kind"):
            s.values(kind)
        with pytest.raises(ValueError, match="bad store kind"):
            s.delete(kind, "k")
        assert not os.path.exists(os.path.join(os.path.dirname(disk_dir), "escape"))
    finally:
        s.close()
