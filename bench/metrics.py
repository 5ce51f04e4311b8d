"""Benchmark 12: a scrape of the manager's GET /metrics with 10,000 tasks, against GET /health and GET /tasks?limit=50
on the same manager in the same run.

The manager is the real one with its real API and server (cube.cluster.api on cheroot, the token, the exporter of
cube.cluster.metrics), in this process, on a MemoryStore: 10 jobs of 1,000 tasks on 20 simulated nodes whose
reports (folded in with `Manager.observe`, as the long polls do) say 9 tasks in 10 run; nothing is dispatched and no
worker runs, so the figures are the manager's alone. Each request is sent on one kept-alive connection, one at a
time; a figure is the median of `--repeat` (default 200) requests, from sending to the last byte.

Also measured: what the scrape reads under the manager's lock (`task_counts`, the tally kept as tasks change)
against what a count of the same figures derived from every task takes (the walk the tally replaces).
"""

from __future__ import annotations

import http.client
import time
from collections import Counter

from cube.core.model import Node, Resources, derive
from cube.store import MemoryStore

from .stats import Row

NAME = "metrics"
TITLE = "GET /metrics with 10,000 tasks (scrape time and size) vs GET /health and GET /tasks?limit=50"
COMMAND = "python -m bench metrics"
TOKEN = "bench-metrics-token"
GIB = 1 << 30


def run(options) -> list[Row]:
    from cube.cluster.api import Server, manager_app
    from cube.cluster.links import Links
    from cube.cluster.metrics import ManagerExporter
    from cube.manager.manager import Manager
    from cube.manager.membership import Membership

    repeat = options.repeat or (20 if options.quick else 200)
    n_jobs, per_job = (10, 100) if options.quick else (10, 1000)
    exporter = ManagerExporter()
    manager = Manager(MemoryStore(), dispatch=lambda *args: None, telemetry=exporter)
    membership = Membership(manager, lambda *args, **kwargs: None, manager.store)
    exporter.watch(manager, membership)
    server = Server(manager_app(manager, membership, Links(TOKEN), TOKEN, exporter=exporter), "127.0.0.1", 0)
    server.start()
    try:
        _fill(manager, n_jobs, per_job)
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        times, sizes = {}, {}
        for path in ("/metrics", "/health", "/tasks?limit=50"):
            times[path], sizes[path] = _get(connection, path, repeat)
        connection.close()
        tally, walk = _lock_time(manager, repeat)
    finally:
        server.stop()
        membership.close()
        manager.close()
    n_tasks = n_jobs * per_job
    against = (
        (f"GET /metrics, {n_tasks:,} tasks in {n_jobs} jobs, 20 nodes", "/health"),
        ("GET /metrics against a page of the task list", "/tasks?limit=50"),
    )
    rows = [
        Row(
            NAME,
            what,
            "ms",
            times["/metrics"],
            baseline=f"GET {path}",
            baseline_samples=times[path],
            command=COMMAND,
            note=f"the scrape: {sizes['/metrics']:,} bytes; GET {path}: {sizes[path]:,} bytes",
        )
        for what, path in against
    ]
    rows.append(
        Row(
            NAME,
            "the scrape's counts under the lock (tally)",
            "ms",
            tally,
            baseline="derived from every task",
            baseline_samples=walk,
            command=COMMAND,
        )
    )
    return rows


def _fill(manager, n_jobs: int, per_job: int) -> None:
    """The jobs, placed on 20 nodes; each node reports 9 in 10 of its tasks running (the rest not yet)."""
    for i in range(20):
        node = Node(f"node-{i:02d}", f"http://10.0.0.{i + 1}:5556", Resources(64.0, 256 * GIB, 1000 * GIB))
        node.labels = {"node_id": f"n{i}"}
        manager.node_up(node)
    task = {"image": "cube-busybox:latest", "command": ["sleep", "300"], "cpu": 0.01, "memory": 16 << 20}
    for j in range(n_jobs):
        manager.submit_job({"name": f"job-{j}", "count": per_job, "task": task})
    now = time.time()
    for name in manager.node_names():
        placed = [t for t in manager.list_tasks() if t.node == name]
        report = [
            {"id": t.id, "generation": t.generation, "state": "running" if k % 10 else "scheduled", "updated_at": now}
            for k, t in enumerate(placed)
        ]
        manager.observe(name, report, [])


def _get(connection: http.client.HTTPConnection, path: str, repeat: int) -> tuple[list[float], int]:
    """`repeat` timed GETs (ms) after one untimed, and the answer's size in bytes."""
    samples, size = [], 0
    for i in range(repeat + 1):
        began = time.perf_counter()
        connection.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
        answer = connection.getresponse()
        body = answer.read()
        elapsed = (time.perf_counter() - began) * 1000
        if answer.status != 200:
            raise RuntimeError(f"GET {path}: {answer.status} {body[:200]!r}")
        if i:
            samples.append(elapsed)
        size = len(body)
    return samples, size


def _lock_time(manager, repeat: int) -> tuple[list[float], list[float]]:
    """ms for `task_counts()` and for the same counts derived from every task under the lock, as a scrape without
    the tally would take them."""
    tally, walk = [], []
    for _ in range(repeat):
        began = time.perf_counter()
        counts = manager.task_counts()
        tally.append((time.perf_counter() - began) * 1000)
        began = time.perf_counter()
        derived = _derive_all(manager)
        walk.append((time.perf_counter() - began) * 1000)
        if counts != derived:
            raise RuntimeError(f"the tally {counts} differs from the tasks {derived}")
    return tally, walk


def _derive_all(manager) -> dict:
    # The manager's own lock, taken from outside as no Cube code may: the walk measured is the one the tally spared.
    with manager._lock:
        found: Counter = Counter()
        for task in manager.tasks.values():
            node = manager.nodes.get(task.node)
            found[(task.job, derive(task, node.state if node else "ready")[0].value)] += 1
        return dict(found)
