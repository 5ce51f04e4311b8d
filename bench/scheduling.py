"""Benchmark 5: scheduling at scale — 1,000 simulated nodes, 10,000 tasks, in one process, no containers.

The cluster: 1,000 nodes of three sizes, as a LAN of Raspberry Pis with a few servers would be (400 × 4 cores/4 GiB,
400 × 4 cores/8 GiB, 200 × 16 cores/64 GiB). The work: 10,000 tasks submitted one by one, each asking for a seeded
random cpu (0 to 1 core) and memory (64 to 512 MiB); together they fill the cluster's cpu to ~58 %.

Figures:
- `simulate` (below) for every strategy, exact (every node scored) and sampled (`limit=16`: the first 16 feasible
  nodes in a seeded order, Nomad's and Sparrow's shortcut, which the manager uses above 64 nodes), with the quality
  of the result: the spread of cpu and memory utilisation over the nodes (std-dev; lower is more even), the fullest
  node, and how many nodes were used (fewer is tighter, what binpack wants);
- the same 10,000 tasks through the real `Manager` (MemoryStore, nodes added with `node_up`, a dispatch that does
  nothing): validation, persistence, events and placement, i.e. the manager's own placement path, one `POST /tasks`
  at a time without HTTP; and a job of 10,000 copies of a 0.25-core, 128 MiB task (`submit_job`);
- the same through a Manager on a DiskStore (diskcache, as `cube manager` runs), on 2,000 tasks: the durable path.
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
import tempfile
import time
from typing import TYPE_CHECKING

from cube import scheduler
from cube.core.model import Node, Resources, TaskSpec
from cube.store import DiskStore, MemoryStore

from .stats import Row

if TYPE_CHECKING:
    from cube.manager.manager import Manager

NAME = "scheduling"
TITLE = "scheduling at scale: 1,000 simulated nodes, 10,000 tasks (placements/s and quality)"
COMMAND = "python -m bench scheduling"
GIB, MIB = 1 << 30, 1 << 20
JOB_TASK = {"image": "cube-busybox:latest", "command": ["sleep", "300"], "cpu": 0.25, "memory": 128 * MIB}  # jobs


def cluster(n: int = 1000) -> list[Node]:
    sizes = [(4.0, 4 * GIB)] * 2 + [(4.0, 8 * GIB)] * 2 + [(16.0, 64 * GIB)]
    nodes = []
    for i in range(n):
        cpu, memory = sizes[i % 5]
        nodes.append(
            Node(
                name=f"node-{i:04d}",
                address=f"http://10.0.{i // 250}.{i % 250}:5556",
                capacity=Resources(cpu, memory, 100 * GIB),
                labels={"arch": "aarch64"},
            )
        )
    return nodes


def workload(n: int = 10_000, seed: int = 6) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "image": "cube-busybox:latest",
            "command": ["sleep", "300"],
            "cpu": rng.choice([0, 0.1, 0.25, 0.5, 1.0]),
            "memory": rng.choice([64, 128, 256, 512]) * MIB,
        }
        for _ in range(n)
    ]


def quality(nodes: list[Node]) -> str:
    cpu = [n.allocated.cpu / n.capacity.cpu for n in nodes]
    memory = [n.allocated.memory / n.capacity.memory for n in nodes]
    used = sum(1 for n in nodes if n.tasks)
    return (
        f"cpu use mean {statistics.fmean(cpu):.2f} std {statistics.pstdev(cpu):.3f} max {max(cpu):.2f}; "
        f"memory std {statistics.pstdev(memory):.3f} max {max(memory):.2f}; {used} nodes used"
    )


def simulate(
    nodes: list[Node],
    specs: list[TaskSpec],
    strategy: str = scheduler.DEFAULT_STRATEGY,
    limit: int | None = None,
    batch: bool = False,
    seed: str | int = 0,
) -> dict:
    """Place `specs` in order on copies of `nodes` (the given nodes are left alone) and measure. `batch`: runs of
    equal specs go through one `place_many` (a job's copies), otherwise one `place` + `reserve` per spec (tasks
    submitted one by one). Returns placements per second and the spread of the result: mean and standard
    deviation of cpu and memory utilisation over the nodes, the highest utilisation, nodes used, tasks unplaced.
    The clock lives here, in the harness, so that the scheduler has none: it measures the scheduler, never steers it."""
    cluster = [_copy(node) for node in nodes]
    began = time.perf_counter()
    placed = (
        _simulate_batch(cluster, specs, strategy, limit, seed)
        if batch
        else _simulate_one_by_one(cluster, specs, strategy, limit, seed)
    )
    elapsed = time.perf_counter() - began
    cpu = [node.allocated.cpu / node.capacity.cpu for node in cluster if node.capacity.cpu > 0]
    memory = [node.allocated.memory / node.capacity.memory for node in cluster if node.capacity.memory > 0]
    return {
        "strategy": strategy,
        "limit": limit,
        "batch": batch,
        "nodes": len(cluster),
        "tasks": len(specs),
        "placed": placed,
        "unplaced": len(specs) - placed,
        "seconds": round(elapsed, 4),
        "placements_per_s": round(len(specs) / elapsed) if elapsed > 0 else math.inf,
        "cpu_mean": _stat(statistics.fmean, cpu),
        "cpu_std": _stat(statistics.pstdev, cpu),
        "cpu_max": _stat(max, cpu),
        "memory_mean": _stat(statistics.fmean, memory),
        "memory_std": _stat(statistics.pstdev, memory),
        "memory_max": _stat(max, memory),
        "nodes_used": sum(1 for node in cluster if node.tasks),
        "tasks_max": max((n.tasks for n in cluster), default=0),
    }


def _simulate_one_by_one(
    cluster: list[Node], specs: list[TaskSpec], strategy: str, limit: int | None, seed: str | int
) -> int:
    """Tasks submitted one by one: `place` then `reserve` each, as the manager does; returns how many were placed."""
    state, placed = scheduler.SchedulerState(), 0
    for index, spec in enumerate(specs):
        # The text of (seed, index) is what `place_many` hashes for the copies below too: one seeding for both.
        placement = scheduler.place(spec, cluster, strategy, seed=str((seed, index)), state=state, limit=limit)
        if placement.node is not None:
            scheduler.reserve(placement.node, spec)
            placed += 1
    return placed


def _simulate_batch(
    cluster: list[Node], specs: list[TaskSpec], strategy: str, limit: int | None, seed: str | int
) -> int:
    """Each run of equal specs as one job: one `place_many` (which reserves); returns how many were placed."""
    state, placed, index = scheduler.SchedulerState(), 0, 0
    while index < len(specs):
        end = index + 1
        while end < len(specs) and specs[end] == specs[index]:
            end += 1
        chosen = scheduler.place_many(specs[index], end - index, cluster, strategy, str((seed, index)), state, limit)
        placed += sum(1 for placement in chosen if placement.node is not None)
        index = end
    return placed


def _stat(function, values: list[float]) -> float:
    return round(function(values), 4) if values else 0.0


def _copy(node: Node) -> Node:
    return dataclasses.replace(
        node,
        capacity=Resources(node.capacity.cpu, node.capacity.memory, node.capacity.disk),
        allocated=Resources(node.allocated.cpu, node.allocated.memory, node.allocated.disk),
        labels=dict(node.labels),
        used_ports=set(node.used_ports),
    )


def _sim_quality(result: dict) -> str:
    return (
        f"cpu use mean {result['cpu_mean']:.2f} std {result['cpu_std']:.3f} max {result['cpu_max']:.2f}; "
        f"memory std {result['memory_std']:.3f} max {result['memory_max']:.2f}; {result['nodes_used']} nodes "
        f"used" + (f"; {result['unplaced']} unplaced" if result["unplaced"] else "")
    )


def run(options) -> list[Row]:
    n_tasks = 2000 if options.quick else 10_000
    repeat = options.repeat or (1 if options.quick else 3)
    nodes = cluster()
    bodies = workload(n_tasks)
    specs = [TaskSpec.from_dict(b) for b in bodies]
    rows = []
    for strategy in scheduler.SCORERS:
        for limit in (None, 16):
            runs = 1 if limit is None and strategy != "epvm" else repeat
            results = [simulate(nodes, specs, strategy, limit=limit, seed=i) for i in range(runs)]
            rate = [r["placements_per_s"] for r in results]
            what = f"simulate {strategy}, {'exact' if limit is None else 'sampled, limit 16'}"
            target = "≥ 4,000/s" if strategy == "epvm" else ""
            met = statistics.median(rate) >= 4000 if target else None
            rows.append(
                Row(
                    NAME,
                    what,
                    "placements/s",
                    rate,
                    target=target,
                    met=met,
                    command=COMMAND,
                    note=_sim_quality(results[0]),
                )
            )
    job_spec = TaskSpec.from_dict(JOB_TASK)
    batch = simulate(nodes, [job_spec] * n_tasks, "epvm", batch=True)
    rows.append(
        Row(
            NAME,
            f"simulate epvm exact, one job of {n_tasks} copies (place_many)",
            "placements/s",
            [batch["placements_per_s"]],
            command=COMMAND,
            note=_sim_quality(batch),
        )
    )
    rows += _manager_rows(nodes, bodies, repeat)
    return rows


def _manager(store) -> Manager:
    # Imported here, not at the top: the scheduler's tests import `simulate` from this module, and they should not
    # depend on the manager (nor break while it changes).
    from cube.manager.manager import Manager

    manager = Manager(store, strategy="epvm", dispatch=lambda *args: None)
    for node in cluster():
        manager.node_up(node)
    return manager


def _manager_rows(nodes, bodies, repeat) -> list[Row]:
    one_by_one, job, quality_text = [], [], ""
    for _ in range(repeat):
        manager = _manager(MemoryStore())
        began = time.perf_counter()
        for body in bodies:
            manager.submit_task(body)
        one_by_one.append(len(bodies) / (time.perf_counter() - began))
        quality_text = quality(list(manager.nodes.values()))
        manager.close()
        manager = _manager(MemoryStore())
        began = time.perf_counter()
        manager.submit_job({"name": "big", "count": len(bodies), "task": JOB_TASK})
        job.append(len(bodies) / (time.perf_counter() - began))
        manager.close()
    durable, n_durable = [], min(len(bodies), 2000)
    with tempfile.TemporaryDirectory(prefix="cube-bench-sched-", dir="/var/tmp") as directory:
        store = DiskStore(directory)
        manager = _manager(store)
        began = time.perf_counter()
        for body in bodies[:n_durable]:
            manager.submit_task(body)
        durable.append(n_durable / (time.perf_counter() - began))
        manager.close()
        store.close()
    return [
        Row(
            NAME,
            f"Manager.submit_task × {len(bodies)} (MemoryStore, sampled E-PVM)",
            "placements/s",
            one_by_one,
            target="≥ 4,000/s",
            met=statistics.median(one_by_one) >= 4000,
            command=COMMAND,
            note=quality_text,
        ),
        Row(NAME, f"Manager.submit_job, count {len(bodies)} (MemoryStore)", "placements/s", job, command=COMMAND),
        Row(
            NAME,
            f"Manager.submit_task × {n_durable} on a DiskStore (durable, as `cube manager`)",
            "placements/s",
            durable,
            command=COMMAND,
            note="every task, placement and event is on disk before the call returns",
        ),
    ]
