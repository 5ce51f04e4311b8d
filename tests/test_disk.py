"""A data disk that refuses writes, for real: a 2 MiB tmpfs filled up, a read-only bind mount, a file where the data
directory should be. Submissions refused by a full disk get 507 and leave no trace (not listed, not in the store after
space is freed and the manager restarted); the manager starts again on the full disk (reads served, writes refused);
a read-only or impossible data directory gives one line, never a traceback; data files are 0600 and directories 0700
under a umask of 022. Needs root (mount); every mount is undone, even when a test fails."""

import collections
import os
import stat
import subprocess
import time

import pytest
from conftest import free_port, wait_for
from test_api import TOKEN, Inline, Recorder, assignment, call

from cube.cluster.api import manager_app, worker_app
from cube.cluster.client import Client
from cube.cluster.config import private_dir
from cube.cluster.links import Links
from cube.cluster.trust import Trust
from cube.cluster.worker_service import build_worker
from cube.core.errors import CubeError, StorageFailed, StorageFull
from cube.core.model import Node, Resources
from cube.manager.manager import Manager
from cube.manager.membership import Membership
from cube.store import DiskStore
from cube.worker.runtime import FakeRuntime
from cube.worker.worker import Worker

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs: needs root")

TASK = {"image": "busybox", "command": ["sleep", "300"], "env": {"SECRET": "x" * 200}}


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def umount(path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)  # busy: detach now, freed when released


@pytest.fixture
def disk(tmp_path):
    """A real 2 MiB tmpfs at tmp_path/disk; unmounted at the end whatever happened."""
    path = tmp_path / "disk"
    path.mkdir()
    mount("-t", "tmpfs", "-o", "size=2m", "tmpfs", str(path))
    try:
        yield path
    finally:
        umount(path)


@pytest.fixture
def read_only(tmp_path):
    """`read_only(src)`: src bind-mounted read-only at a new path, returned; unmounted at the end."""
    mounted = []

    def bind(src) -> str:
        target = tmp_path / f"ro{len(mounted)}"
        target.mkdir()
        mount("--bind", str(src), str(target))
        mounted.append(target)
        mount("-o", "remount,ro,bind", str(target))
        return str(target)

    try:
        yield bind
    finally:
        for target in reversed(mounted):
            umount(target)


def fill(directory, name: str = "filler") -> str:
    """Fill the file system of `directory` to the last byte; returns the filler (remove it to free the space)."""
    path = os.path.join(directory, name)
    with open(path, "wb", buffering=0) as handle:
        for size in (1 << 16, 4096, 512, 1):
            try:
                while True:
                    handle.write(b"\0" * size)
            except OSError:
                pass
    return path


def manager_on(directory) -> tuple[Manager, object]:
    """A manager on a DiskStore in `directory` with one ready node, and its API (in-process WSGI)."""
    manager = Manager(DiskStore(str(directory)), dispatch=Recorder(), executor=Inline())
    node = Node("n1", "http://127.0.0.1:1", Resources(64, 64 << 30, 100 << 30), last_seen=time.time())
    manager.node_up(node)
    membership = Membership(manager, lambda *a, **k: {}, manager.store)
    return manager, manager_app(manager, membership, Links(TOKEN), TOKEN)


def listed(app) -> list[str]:
    answer = call(app, "GET", "/tasks")
    assert answer.status == 200
    return sorted(t["id"] for t in answer.json())


# ---- in process: the manager's API on a full disk -----------------------------------------------------------------


def test_submissions_on_a_full_disk_get_507_and_leave_no_trace(disk, capsys):
    store_dir = disk / "store"
    manager, app = manager_on(store_dir)
    kept = [call(app, "POST", "/tasks", {**TASK, "id": f"kept{i}"}) for i in range(3)]
    assert [a.status for a in kept] == [201] * 3
    assert call(app, "POST", "/jobs", {"name": "web", "count": 2, "task": TASK}).status == 201
    before = listed(app)
    filler = fill(disk)

    answers = [call(app, "POST", "/tasks", {**TASK, "id": f"refused{i}"}) for i in range(40)]
    statuses = collections.Counter(a.status for a in answers)
    messages = collections.Counter(a.json()["error"] for a in answers)
    job = call(app, "POST", "/jobs", {"name": "batch", "count": 10, "task": TASK})
    scale = call(app, "POST", "/jobs/web/scale", {"count": 5})
    stop = call(app, "DELETE", "/tasks/kept0")
    with capsys.disabled():
        print(f"\n40 submissions on a full disk: {dict(statuses)} {dict(messages)}")
        print(f"job of 10: {job.status}, scale 2->5: {scale.status}, stop: {stop.status}")
    assert statuses == {507: 40}
    assert messages == {f"data disk full: {store_dir} (free space, then retry)": 40}
    assert (job.status, scale.status, stop.status) == (507, 507, 507)
    # Nothing of them in memory: not listed, the job not there, the scale and the stop not applied.
    assert listed(app) == before
    assert call(app, "GET", "/jobs/batch").status == 404
    assert len(call(app, "GET", "/tasks?job=web").json()) == 2
    assert call(app, "GET", "/tasks/kept0").json()["desired"] == "run"
    # Background rounds survive it.
    manager.tick()
    manager.observe("n1", [], [])

    os.remove(filler)
    assert call(app, "POST", "/tasks", {**TASK, "id": "after"}).status == 201  # no restart needed
    manager.close()
    manager.store.close()
    again, app = manager_on(store_dir)  # what the store kept
    try:
        assert listed(app) == sorted(before + ["after"])
        assert not [t for t in again.store.values("tasks") if t["id"].startswith("refused")]
        assert again.store.get("jobs", "batch") is None and again.store.get("jobs", "web")["count"] == 2
        assert not [e for e in again.store.events(limit=10_000) if e.task_id.startswith("refused")]
    finally:
        again.close()
        again.store.close()


def test_a_job_is_kept_whole_or_not_at_all(disk):
    """The disk fills up in the middle of a job of 200 tasks: all of it is refused, none of it listed or kept."""
    manager, app = manager_on(disk / "store")
    try:
        filler = fill(disk)
        os.truncate(filler, os.path.getsize(filler) - 48 * 1024)  # room for a few tasks, not for 200
        answer = call(app, "POST", "/jobs", {"name": "big", "count": 200, "task": TASK})
        assert answer.status == 507, answer.json()
        assert listed(app) == [] and manager.store.values("tasks") == [] and manager.store.get("jobs", "big") is None
        os.remove(filler)
        assert call(app, "POST", "/jobs", {"name": "big", "count": 200, "task": TASK}).status == 201
        assert len(listed(app)) == 200
    finally:
        manager.close()
        manager.store.close()


def test_the_worker_acknowledges_only_what_it_kept(disk):
    store = DiskStore(str(disk / "store"))
    worker = Worker("w1", FakeRuntime(), store, sync=True)
    app = worker_app(worker, TOKEN)
    try:
        assert call(app, "POST", "/tasks", assignment("t1")).status == 201
        worker.tick()
        filler = fill(disk)
        answer = call(app, "POST", "/tasks", assignment("t2"))
        assert (answer.status, answer.json()["error"]) == (
            507,
            f"data disk full: {disk / 'store'} (free space, then retry)",
        )
        assert call(app, "DELETE", "/tasks/t1").status == 507
        worker.tick()  # no container for what it could not record; t1 still runs
        assert [t.id for t in worker.assignments()] == ["t1"]
        assert worker.get("t1").desired.value == "run"
        assert [c.task_id for c in worker.runtime.list_owned(worker.key)] == ["t1"]
        os.remove(filler)
        assert call(app, "POST", "/tasks", assignment("t2")).status == 201
    finally:
        worker.close()
        store.close()


# ---- start-up: a real manager process ------------------------------------------------------------------------------


class ManagerProc:
    def __init__(self, pyz, procs, data, log):
        self.url = f"http://127.0.0.1:{free_port()}"
        argv = [pyz, "manager", "--port", self.url.rsplit(":", 1)[1], "--data", str(data), "--token", TOKEN]
        self.proc = procs([*argv, "--no-mdns", "--insecure"], log)
        self.client = Client(self.url, TOKEN, timeout=10, trust=Trust(insecure=True))

    def post(self, path, body) -> tuple[int, str]:
        try:
            self.client.post(path, body)
            return 201, ""
        except CubeError as error:
            return error.status, error.message


def one_line_exit(pyz, data, tmp_path) -> tuple[int, str]:
    done = subprocess.run(
        [pyz, "manager", "--port", str(free_port()), "--data", str(data), "--token", TOKEN, "--no-mdns", "--insecure"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "CUBE_NO_MDNS": "1"},
    )
    return done.returncode, done.stderr


def test_real_manager_refuses_on_a_full_disk_and_starts_again_on_it(pyz, procs, disk, tmp_path, capsys):
    data = disk / "manager"
    first = ManagerProc(pyz, procs, data, tmp_path / "m1.log")
    first.proc.wait_http(first.url)
    assert [first.post("/tasks", {**TASK, "id": f"kept{i}"})[0] for i in range(2)] == [201, 201]
    filler = fill(disk)
    answers = [first.post("/tasks", {**TASK, "id": f"refused{i}"}) for i in range(40)]
    after = sorted(t["id"] for t in first.client.get("/tasks"))
    first_log = first.proc.output()
    first.proc.kill(15)
    more = fill(disk, "more")  # what the manager's clean stop freed (SQLite's -wal and -shm)
    second = ManagerProc(pyz, procs, data, tmp_path / "m2.log")  # on the disk full again
    second.proc.wait_http(second.url)
    listed_again = sorted(t["id"] for t in second.client.get("/tasks"))
    refused_again = second.post("/tasks", {**TASK, "id": "again"})
    log = second.proc.output()
    second.proc.kill(15)
    with capsys.disabled():
        print(f"\nreal manager, 40 submissions on a full disk: {dict(collections.Counter(answers))}")
        print(f"listed after: {after}; after a restart on the full disk: {listed_again}, a submission: {refused_again}")
        print("first log:", [line.split(" ", 2)[2] for line in first_log.splitlines() if "WARNING" in line])
        print("restart log:", [line.split(" ", 2)[2] for line in log.splitlines() if "WARNING" in line])
    assert collections.Counter(answers) == {(507, f"data disk full: {data / 'store'} (free space, then retry)"): 40}
    assert after == listed_again == ["kept0", "kept1"]
    assert refused_again[0] == 507
    assert "Traceback" not in log and "Traceback" not in first_log
    # Warned of once. A nearly full disk takes some writes (SQLite reuses free pages), so "takes writes again" may
    # follow, and a refusal after it within a minute is not warned of again.
    assert len([line for line in first_log.splitlines() if "WARNING" in line and "data disk full" in line]) == 1

    os.remove(filler)
    os.remove(more)
    third = ManagerProc(pyz, procs, data, tmp_path / "m3.log")
    third.proc.wait_http(third.url)
    assert third.post("/tasks", {**TASK, "id": "later"})[0] == 201
    assert sorted(t["id"] for t in third.client.get("/tasks")) == ["kept0", "kept1", "later"]
    third.proc.kill(15)
    store = DiskStore(str(data / "store"))
    try:
        assert sorted(t["id"] for t in store.values("tasks")) == ["kept0", "kept1", "later"]
    finally:
        store.close()


def test_real_manager_on_a_read_only_data_dir(pyz, procs, tmp_path, read_only, capsys):
    data = tmp_path / "manager"
    first = ManagerProc(pyz, procs, data, tmp_path / "m1.log")
    first.proc.wait_http(first.url)
    assert first.post("/tasks", {**TASK, "id": "kept"})[0] == 201
    first.proc.kill(15)
    frozen = read_only(data)
    second = ManagerProc(pyz, procs, frozen, tmp_path / "m2.log")
    second.proc.wait_http(second.url)  # reads are served
    listed_ro = [t["id"] for t in second.client.get("/tasks")]
    refused = second.post("/tasks", {**TASK, "id": "no"})
    log = second.proc.output()
    second.proc.kill(15)
    empty = tmp_path / "empty"
    empty.mkdir()
    code, stderr = one_line_exit(pyz, os.path.join(read_only(empty), "manager"), tmp_path)
    with capsys.disabled():
        print(f"\nread-only data dir: listed {listed_ro}, a submission: {refused}")
        print(f"a new data dir on a read-only mount: exit {code}: {stderr.strip()}")
    assert listed_ro == ["kept"]
    assert refused == (503, f"cannot write the data directory {frozen}/store: read-only file system")
    assert "Traceback" not in log
    assert code == 1 and len(stderr.strip().splitlines()) == 1 and "Read-only file system" in stderr


def test_a_file_where_the_data_dir_should_be_is_one_line(pyz, tmp_path, capsys):
    (tmp_path / "manager").write_text("not a directory\n")
    code, stderr = one_line_exit(pyz, tmp_path / "manager", tmp_path)
    (tmp_path / "store-file").mkdir()
    (tmp_path / "store-file" / "store").write_text("")
    code2, stderr2 = one_line_exit(pyz, tmp_path / "store-file", tmp_path)
    with capsys.disabled():
        print(f"\na file as the data dir: exit {code}: {stderr.strip()}")
        print(f"a file as the store dir: exit {code2}: {stderr2.strip()}")
    assert code == 1 and stderr.strip().splitlines() == [
        f"cube manager: cannot use {tmp_path / 'manager'} as a data directory: it is a file, not a directory"
    ]
    assert code2 == 1 and len(stderr2.strip().splitlines()) == 1 and str(tmp_path / "store-file") in stderr2
    with pytest.raises(CubeError, match="it is a file, not a directory"):
        build_worker("w", str(tmp_path / "manager"), runtime=FakeRuntime())


def test_the_store_on_a_full_disk_at_first_start_is_one_error(disk):
    fill(disk)
    with pytest.raises(StorageFailed) as caught:
        store = DiskStore(str(disk / "store"))
        store.put("tasks", "a", {"v": 1})
    assert isinstance(caught.value, StorageFull)


# ---- modes ---------------------------------------------------------------------------------------------------------


def modes(directory) -> dict[str, str]:
    out = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs + files + ([] if root != str(directory) else ["."]):
            path = os.path.join(root, name)
            out[os.path.relpath(path, directory)] = oct(stat.S_IMODE(os.lstat(path).st_mode))
    return out


def test_data_is_private_whatever_the_umask(pyz, procs, tmp_path, capsys):
    data = tmp_path / "manager"
    old = os.umask(0o022)
    try:
        proc = ManagerProc(pyz, procs, data, tmp_path / "m.log")
        proc.proc.wait_http(proc.url)
        assert proc.post("/tasks", {**TASK, "id": "a"})[0] == 201
        wait_for(lambda: (data / "url").exists())
        seen = modes(data)
        proc.proc.kill(15)
        # An older install: readable directories and files; tightened at the next start.
        for path in [data, *data.rglob("*")]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        proc = ManagerProc(pyz, procs, data, tmp_path / "m2.log")
        proc.proc.wait_http(proc.url)
        tightened = modes(data)
        proc.proc.kill(15)
    finally:
        os.umask(old)
    store = DiskStore(str(tmp_path / "direct"))  # the store alone, as a library under umask 022
    try:
        os.umask(0o022)
        store.put("tasks", "a", {"v": 1})
        direct = modes(tmp_path / "direct")
    finally:
        os.umask(old)
        store.close()
    with capsys.disabled():
        print(f"\nmodes under umask 022: {sorted(collections.Counter(seen.values()).items())}")
    for found in (seen, tightened):
        assert "store/tasks/cache.db" in found and "token" in found and "url" in found
        bad = {p: m for p, m in found.items() if m not in ("0o700" if (data / p).is_dir() else "0o600",)}
        assert not bad, bad
    assert {p: m for p, m in direct.items() if m not in ("0o700", "0o600")} == {}
    assert private_dir(str(tmp_path / "new")) and modes(tmp_path / "new") == {".": "0o700"}
