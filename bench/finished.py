"""Benchmark 11: housekeeping — `cube status` on a manager holding 100,000 finished tasks, against the same manager
holding 100 (issue 13: "a cluster with 100,000 finished tasks answers `cube status` as fast as one with 100").

Both managers are real `Manager`s on a MemoryStore behind the real HTTP server (cheroot, loopback), each holding 100
current tasks (desired to run, placed on one of 10 nodes) and the finished tasks written to its store before it
starts (a manager restarted on a full store: what loading them costs is reported too). The figure is the request
`cube status` makes (`GET /tasks?finished=false`) through Cube's own client, the two managers asked in turn; and
the request before this issue (`GET /tasks`, every task) on the big one, to show what the index saves.
"""

from __future__ import annotations

import time

from cube.cluster.api import Server, manager_app
from cube.cluster.client import Client
from cube.core.model import Desired, Node, Observed, Resources, State, Task, TaskSpec
from cube.manager.manager import Manager
from cube.store import MemoryStore

from .stats import Row

NAME = "finished"
TITLE = "housekeeping: `cube status` with 100,000 finished tasks vs 100"
COMMAND = "python -m bench finished"
CURRENT = 100


def _store(finished: int) -> MemoryStore:
    store = MemoryStore()
    for i in range(10):
        node = Node(f"n{i}", f"http://10.0.0.{i + 1}:5556", Resources(4, 8 << 30, 100 << 30))
        store.put("nodes", node.name, node.to_dict())
    for i in range(CURRENT + finished):
        task = Task(id=f"{i:012x}", spec=TaskSpec("app:1", command=("sleep", "300")), created_at=1e9 + i)
        task.node, task.generation = f"n{i % 10}", 1
        task.observed = Observed(task.node, 1, State.RUNNING if i < CURRENT else State.COMPLETED)
        if i >= CURRENT:
            task.desired = Desired.STOP
        task.updated_at = time.time()
        store.put("tasks", task.id, task.to_dict())
    return store


def _serve(finished: int) -> tuple[Manager, Server, float]:
    store = _store(finished)
    started = time.perf_counter()
    manager = Manager(store, dispatch=lambda *args: {})
    loaded = time.perf_counter() - started
    server = Server(manager_app(manager, None, None, None), host="127.0.0.1", port=0).start()
    return manager, server, loaded


def _times(client: Client, n: int, **params) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        answer = client.get("/tasks", **params)
        out.append((time.perf_counter() - started) * 1000)
        assert len(answer) >= CURRENT
    return out


def run(options) -> list[Row]:
    n = options.repeat or (10 if options.quick else 50)
    big_count = 10_000 if options.quick else 100_000
    small, small_server, _ = _serve(CURRENT)
    big, big_server, loaded = _serve(big_count)
    try:
        small_client = Client(f"http://127.0.0.1:{small_server.port}", timeout=60)
        big_client = Client(f"http://127.0.0.1:{big_server.port}", timeout=60)
        baseline, measured = [], []
        for _ in range(n):  # in turn, so that a noisy moment hits both
            baseline += _times(small_client, 1, finished="false")
            measured += _times(big_client, 1, finished="false")
        everything = _times(big_client, max(3, n // 10))
    finally:
        small_server.stop()
        big_server.stop()
        small.close()
        big.close()
    status = Row(
        NAME,
        f"`GET /tasks?finished=false` (`cube status`), {CURRENT} current + {big_count:,} finished tasks",
        "ms",
        measured,
        f"the same, {CURRENT} current + {CURRENT} finished",
        baseline,
        target="≤ 1.2× baseline",
        command=COMMAND,
        note=f"a manager loads {big_count:,} finished tasks from its store in {loaded:.1f} s",
    )
    status.met = status.ratio <= 1.2
    return [
        status,
        Row(
            NAME,
            f"`GET /tasks` (every task, what `cube status` asked before), {big_count:,} finished",
            "ms",
            everything,
            command=COMMAND,
        ),
    ]
