"""Benchmark 5: scheduling at scale — 1,000 simulated nodes, 10,000 tasks, in one process, no containers.

The cluster: 1,000 nodes of three sizes, as a LAN of Raspberry Pis with a few servers would be (400 × 4 cores/4 GiB,
400 × 4 cores/8 GiB, 200 × 16 cores/64 GiB). The work: 10,000 tasks submitted one by one, each asking for a seeded
random cpu (0 to 1 core) and memory (64 to 512 MiB); together they fill the cluster's cpu to ~58 %.

Figures:
- `scheduler.simulate` for every strategy, exact (every node scored) and sampled (`limit=16`: the first 16 feasible
  nodes in a seeded order, Nomad's and Sparrow's shortcut, which the manager uses above 64 nodes), with the quality
  of the result: the spread of cpu and memory utilisation over the nodes (std-dev; lower is more even), the fullest
  node, and how many nodes were used (fewer is tighter, what binpack wants);
- the same 10,000 tasks through the real `Manager` (MemoryStore, nodes added with `node_up`, a dispatch that does
  nothing): validation, persistence, events and placement, i.e. the manager's own placement path, one `POST /tasks`
  at a time without HTTP; and a job of 10,000 copies of a 0.25-core, 128 MiB task (`submit_job`);
- the same through a Manager on a DiskStore (diskcache, as `cube manager` runs), on 2,000 tasks: the durable path.
"""
from __future__ import annotations

import random
import statistics
import tempfile
import time

from cube import scheduler
from cube.manager.manager import Manager
from cube.core.model import Node, Resources, TaskSpec
from cube.store import DiskStore, MemoryStore

from .stats import Row

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
        nodes.append(Node(name=f"node-{i:04d}", address=f"http://10.0.{i // 250}.{i % 250}:5556",
                          capacity=Resources(cpu, memory, 100 * GIB), labels={"arch": "aarch64"}))
    return nodes


def workload(n: int = 10_000, seed: int = 6) -> list[dict]:
    rng = random.Random(seed)
    return [{"image": "cube-busybox:latest", "command": ["sleep", "300"], "cpu": rng.choice([0, 0.1, 0.25, 0.5, 1.0]),
             "memory": rng.choice([64, 128, 256, 512]) * MIB} for _ in range(n)]


def quality(nodes: list[Node]) -> str:
    cpu = [n.allocated.cpu / n.capacity.cpu for n in nodes]
    memory = [n.allocated.memory / n.capacity.memory for n in nodes]
    used = sum(1 for n in nodes if n.tasks)
    return (f"cpu use mean {statistics.fmean(cpu):.2f} std {statistics.pstdev(cpu):.3f} max {max(cpu):.2f}; "
            f"memory std {statistics.pstdev(memory):.3f} max {max(memory):.2f}; {used} nodes used")


def _sim_quality(result: dict) -> str:
    return (f"cpu use mean {result['cpu_mean']:.2f} std {result['cpu_std']:.3f} max {result['cpu_max']:.2f}; "
            f"memory std {result['memory_std']:.3f} max {result['memory_max']:.2f}; {result['nodes_used']} nodes "
            f"used" + (f"; {result['unplaced']} unplaced" if result["unplaced"] else ""))


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
            results = [scheduler.simulate(nodes, specs, strategy, limit=limit, seed=i) for i in range(runs)]
            rate = [r["placements_per_s"] for r in results]
            what = f"simulate {strategy}, {'exact' if limit is None else 'sampled, limit 16'}"
            target = "≥ 4,000/s" if strategy == "epvm" else ""
            met = statistics.median(rate) >= 4000 if target else None
            rows.append(Row(NAME, what, "placements/s", rate, target=target, met=met, command=COMMAND,
                            note=_sim_quality(results[0])))
    job_spec = TaskSpec.from_dict(JOB_TASK)
    batch = scheduler.simulate(nodes, [job_spec] * n_tasks, "epvm", batch=True)
    rows.append(Row(NAME, f"simulate epvm exact, one job of {n_tasks} copies (place_many)",
                    "placements/s", [batch["placements_per_s"]], command=COMMAND, note=_sim_quality(batch)))
    rows += _manager_rows(nodes, bodies, repeat)
    return rows


def _manager(store) -> Manager:
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
        Row(NAME, f"Manager.submit_task × {len(bodies)} (MemoryStore, sampled E-PVM)", "placements/s", one_by_one,
            target="≥ 4,000/s", met=statistics.median(one_by_one) >= 4000, command=COMMAND, note=quality_text),
        Row(NAME, f"Manager.submit_job, count {len(bodies)} (MemoryStore)", "placements/s", job, command=COMMAND),
        Row(NAME, f"Manager.submit_task × {n_durable} on a DiskStore (durable, as `cube manager`)", "placements/s",
            durable, command=COMMAND, note="every task, placement and event is on disk before the call returns"),
    ]
