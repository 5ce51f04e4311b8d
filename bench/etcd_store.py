"""Benchmark 13: the manager on etcd against the manager on diskcache (issue 15), one run, side by side.

Two real `Manager`s, one on a `DiskStore` (as `cube manager` runs today) and one on an `EtcdStore` (a local etcd
3.4 started here, one member on loopback with its own data directory under /var/tmp, fsync on, as Debian ships
it), each with 10 nodes and a dispatch that answers at once like a worker that starts every task it is given: it
reports the task running (`Manager.observe`, the path a worker's long poll takes), so "submit -> running" covers
the submission's writes, the placement, the assignment and the report's writes, without containers or HTTP.

Figures, for each store: `submit_task` × N one after the other (submissions/s), and the time from a submission to
the manager seeing the task running (median and p90 over the N). The diskcache figures are the baseline.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time

from cube.core.model import Node, Resources
from cube.store import DiskStore

from .stats import Row, percentile

NAME = "etcd_store"
TITLE = "the manager on etcd vs on diskcache: submissions/s and submit -> running"
COMMAND = "python -m bench etcd_store"
GIB = 1 << 30
TASK = {"image": "cube-busybox:latest", "command": ["sleep", "300"], "cpu": 0.01, "memory": 16 << 20}


class Running:
    """A dispatch that plays every worker: each assignment is reported running at once; records when."""

    def __init__(self):
        self.manager = None
        self.running: dict[str, dict[str, dict]] = {}  # node -> task id -> report
        self.seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def __call__(self, address, method, path, body, params):
        if method != "POST" or body is None:
            return {}
        node = address.rsplit("/", 1)[-1]
        report = {"id": body["id"], "generation": body["generation"], "state": "running", "desired": "run"}
        with self._lock:
            tasks = self.running.setdefault(node, {})
            tasks[body["id"]] = report
            reported = list(tasks.values())
        self.manager.observe(node, reported, [])
        self.seen[body["id"]] = time.perf_counter()
        return {}


def _manager(store):
    from cube.manager.manager import Manager

    dispatch = Running()
    manager = Manager(store, strategy="epvm", dispatch=dispatch)
    dispatch.manager = manager
    for i in range(10):
        manager.node_up(Node(f"n{i}", f"http://bench/n{i}", Resources(64, 256 * GIB, 1000 * GIB)))
        manager.observe(f"n{i}", [], [])  # a node is sent tasks once it has reported
    return manager, dispatch


def _measure(store, n: int) -> tuple[float, list[float]]:
    """(submissions/s, submit -> running latencies in ms) of n tasks on `store`."""
    manager, dispatch = _manager(store)
    submitted: dict[str, float] = {}
    began = time.perf_counter()
    for _ in range(n):
        started = time.perf_counter()
        task, _created = manager.submit_task(dict(TASK))
        submitted[task.id] = started
    rate = n / (time.perf_counter() - began)
    deadline = time.monotonic() + 120
    while len(dispatch.seen) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    manager.close()
    latencies = [(dispatch.seen[t] - s) * 1000 for t, s in submitted.items() if t in dispatch.seen]
    return rate, latencies


class _Etcd:
    """A local etcd on loopback (ports 23790/23800 or the next free), data under /var/tmp, killed at the end."""

    def __init__(self, directory: str):
        import socket

        ports = []
        for _ in range(2):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                ports.append(s.getsockname()[1])
        self.url = f"http://127.0.0.1:{ports[0]}"
        peer = f"http://127.0.0.1:{ports[1]}"
        self.log = open(os.path.join(directory, "etcd.log"), "ab")
        self.proc = subprocess.Popen(
            [
                "etcd",
                "--name=bench",
                f"--data-dir={directory}/data",
                f"--listen-client-urls={self.url}",
                f"--advertise-client-urls={self.url}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=bench={peer}",
                "--max-txn-ops=100000",
                "--max-request-bytes=67108864",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def store(self):
        from cube.store.etcd import EtcdStore

        deadline = time.monotonic() + 20
        while True:
            try:
                return EtcdStore(self.url, prefix="/bench/")
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.2)

    def close(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.log.close()


def run(options) -> list[Row]:
    if shutil.which("etcd") is None:
        raise RuntimeError("`etcd` is missing (apt-get install etcd-server)")
    n = 100 if options.quick else 500
    with tempfile.TemporaryDirectory(prefix="cube-bench-etcd-", dir="/var/tmp") as directory:
        disk = DiskStore(os.path.join(directory, "disk"))
        disk_rate, disk_latency = _measure(disk, n)
        disk.close()
        etcd = _Etcd(directory)
        try:
            store = etcd.store()
            etcd_rate, etcd_latency = _measure(store, n)
            store.close()
        finally:
            etcd.close()

    def note(latency: list[float]) -> str:
        return f"submit -> running: median {statistics.median(latency):.1f} ms, p90 {percentile(latency, 90):.1f} ms"

    return [
        Row(
            NAME,
            f"Manager.submit_task × {n} on an EtcdStore (one local etcd 3.4 member)",
            "submissions/s",
            [etcd_rate],
            baseline="the same on a DiskStore (diskcache)",
            baseline_samples=[disk_rate],
            command=COMMAND,
            note=note(etcd_latency),
        ),
        Row(
            NAME,
            f"submit -> running × {n} on an EtcdStore (median)",
            "ms",
            etcd_latency,
            baseline="the same on a DiskStore (diskcache)",
            baseline_samples=disk_latency,
            target="≤ 1.5× baseline",
            met=statistics.median(etcd_latency) <= 1.5 * statistics.median(disk_latency),
            command=COMMAND,
            note=f"EtcdStore: {note(etcd_latency)}; DiskStore: {note(disk_latency)}",
        ),
    ]
