"""Issue 9, failure 5, for real: the manager (the pyz, with its diskcache store) killed with `kill -9` in the middle of
one `POST /jobs` of 4,000 tasks, then started again; the client resends the same job, as it does after a lost
answer. Since issue 10 a job is one store batch: the crash leaves all of it or none, never a part. The workers are
real Worker processes on the fake runtime (bench/fakeworker.py), so 4,000 tasks are cheap.
"""

import subprocess
import sys
import threading
import time

from conftest import ROOT, free_port, wait_for

from cube.cluster.client import Client
from cube.core.errors import CubeError
from cube.store import DiskStore

TOKEN = "crash-test-token"
COUNT = 4000  # ~1.5 s of submission on this 2-core machine (2,500-2,900 tasks/s): the kill at 0.3 s lands early
JOB = {"name": "big", "count": COUNT, "task": {"image": "busybox", "command": ["sleep", "3600"]}}


class FakeCluster:
    """A manager (the pyz, diskcache store) and workers on the fake runtime (bench/fakeworker.py), on loopback."""

    def __init__(self, pyz, procs, tmp_path, workers: int):
        self.procs, self.tmp = procs, tmp_path
        ports = [free_port() for _ in range(workers)]
        fake = [sys.executable, "-m", "bench.fakeworker", "--name", "fake", "--token", TOKEN]
        procs([*fake, "--ports", ",".join(map(str, ports))], tmp_path / "workers.log", env={"PYTHONPATH": str(ROOT)})
        self.url = f"http://127.0.0.1:{free_port()}"
        self.argv = [pyz, "manager", "--port", self.url.rsplit(":", 1)[1], "--data", str(tmp_path / "manager")]
        self.argv += ["--token", TOKEN, "--no-mdns", "--workers", ",".join(f"127.0.0.1:{p}" for p in ports)]
        self.argv += ["--insecure"]  # bench.fakeworker serves plain HTTP
        self.client = Client(self.url, TOKEN, timeout=60)
        self.manager = self.start_manager()
        wait_for(lambda: len([n for n in self.client.get("/nodes") if n["state"] == "ready"]) == workers, timeout=30)

    def start_manager(self, log: str = "manager.log"):
        proc = self.procs(self.argv, self.tmp / log)
        proc.wait_http(self.url)
        return proc


def test_job_cut_by_a_manager_crash_is_whole_or_absent_and_the_resend_completes_it(pyz, procs, tmp_path):
    cluster = FakeCluster(pyz, procs, tmp_path, workers=2)
    client = cluster.client
    answered: list = []
    sender = threading.Thread(target=lambda: _post(client, answered))
    sender.start()
    time.sleep(0.3)  # the manager is creating the job's tasks, in one store batch
    cluster.manager.kill(9)
    sender.join()
    assert not answered, "killed before it answered: the client saw no acknowledgement"

    store = DiskStore(str(tmp_path / "manager" / "store"))  # what the crash left, read before any manager runs
    kept = len(store.values("tasks"))
    store.close()
    print(f"\nafter the crash the store held {kept} of the job's {COUNT} tasks")
    assert kept in (0, COUNT), "a job is written whole or not at all"
    cluster.start_manager("manager-2.log")
    job = client.post("/jobs", JOB)  # the client resends after the lost answer
    assert job["count"] == COUNT
    wait_for(lambda: client.get("/jobs/big")["running"] == COUNT, timeout=180, interval=1.0)
    tasks = client.get("/tasks", job="big")
    assert sorted(t["name"] for t in tasks) == sorted(f"big-{i}" for i in range(1, COUNT + 1)), "each once"


def _post(client: Client, answered: list) -> None:
    try:
        answered.append(client.post("/jobs", JOB))
    except CubeError:
        pass


def test_idle_manager_writes_nothing(pyz, procs, tmp_path):
    """The store is written only when something changes (SD cards wear out): a cluster with running tasks and
    nothing happening leaves the manager's files untouched for 5 s (the converge loop runs 4 times a second)."""
    cluster = FakeCluster(pyz, procs, tmp_path, workers=1)
    cluster.client.post("/jobs", {"name": "quiet", "count": 20, "task": {"image": "busybox"}})
    wait_for(lambda: cluster.client.get("/jobs/quiet")["running"] == 20, timeout=30)
    time.sleep(11)  # past the manager's full sweep (every 10 s)
    before = _snapshot(tmp_path / "manager")
    time.sleep(5)
    assert _snapshot(tmp_path / "manager") == before


def _snapshot(directory) -> dict:
    out = subprocess.run(
        ["find", str(directory), "-type", "f", "-printf", "%p %s %T@\n"], capture_output=True, text=True, check=True
    ).stdout
    snapshot = {}
    for line in out.splitlines():
        path, size, mtime = line.rsplit(" ", 2)
        snapshot[path] = (size, mtime)
    return snapshot
