"""Benchmark 2: a job of 100 tasks on one worker → all 100 running.

Cube: a fresh manager and one worker (pyz processes) per round; `POST /jobs` with count 100, then the manager's
event stream until `GET /jobs/NAME` says 100 running — what `cube run --count 100` waits for. The worker's action
threads are the knob (`cube worker --threads N`; 4 is the default). Baselines in the same run: the Docker SDK
creating and starting 100 containers on 4 threads (the engine's own ceiling for this machine), and Docker Swarm
(`docker service create --replicas 100`, by image id) until 100 containers run. Every round starts on an engine
without the previous round's containers.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from . import engine
from .common import IMAGE, Cluster, last_event, settle, tag, wait_for
from .stats import Row, ratio

NAME = "job100"
TITLE = "a job of 100 tasks on one worker → all running (Cube vs raw Docker on 4 threads vs Swarm)"
COMMAND = "python -m bench job100"
KNOB = (2, 8)  # worker threads measured besides the default 4, one round each


def run(options) -> list[Row]:
    count = 20 if options.quick else 100
    rounds = options.repeat or (1 if options.quick else 3)
    raw_s, cube_s, engine_s = [], [], []
    knob: dict[int, list[float]] = {threads: [] for threads in KNOB}
    for _ in range(rounds):
        raw_s.append(_raw(count, threads=4))
        elapsed, last_start = _cube(count, threads=4)
        cube_s.append(elapsed)
        engine_s.append(last_start)
    if not options.quick:
        for threads in KNOB:
            knob[threads].append(_cube(count, threads=threads)[0])
    swarm_s, problem = _swarm(count, rounds)
    target = 1.15
    cube_ratio = ratio(cube_s, raw_s)
    rows = [
        Row(
            NAME,
            f"Cube: job of {count} → all running (worker --threads 4)",
            "s",
            cube_s,
            "Docker SDK, 4 threads",
            raw_s,
            f"≤ {target}× raw Docker",
            cube_ratio <= target,
            COMMAND,
            note=f"the engine saw the last container start after {min(engine_s):.2f} / "
            f"{sorted(engine_s)[len(engine_s) // 2]:.2f} / {max(engine_s):.2f} s; the rest is the "
            f"report reaching the manager",
        )
    ]
    for threads, samples in knob.items():
        if samples:
            rows.append(
                Row(
                    NAME,
                    f"Cube: job of {count}, worker --threads {threads}",
                    "s",
                    samples,
                    "Docker SDK, 4 threads",
                    raw_s,
                    command=COMMAND,
                )
            )
    if swarm_s:
        rows.append(
            Row(
                NAME,
                f"Swarm: `service create --replicas {count}` → all running",
                "s",
                swarm_s,
                "Docker SDK, 4 threads",
                raw_s,
                command=COMMAND,
                note=f"Cube / Swarm = {ratio(cube_s, swarm_s):.2f}×",
            )
        )
    else:
        rows.append(Row(NAME, f"Swarm: {count} replicas", "s", [], note=f"not measured: {problem}"))
    return rows


def _raw(count: int, threads: int) -> float:
    label = f"bench-raw-{tag()}"
    settle()
    try:
        began = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda _: engine.run_raw(label), range(count)))
        elapsed = time.perf_counter() - began
        assert engine.count_running(f"cube.bench={label}") == count
        return elapsed
    finally:
        engine.remove_labelled(f"cube.bench={label}")


def _cube(count: int, threads: int) -> tuple[float, float]:
    """Seconds until the manager reports `count` running, and until the engine started the last container."""
    with Cluster(workers=1, worker_args=("--threads", str(threads))) as cluster:
        client = cluster.client
        worker = next(iter(cluster.workers))
        clock = engine.EventClock(("start",))
        try:
            name = f"j{tag()}"
            cursor = last_event(client)
            settle()
            began = time.perf_counter()
            mono = time.monotonic()
            client.post("/jobs", {"name": name, "count": count, "task": {"image": IMAGE, "command": ["sleep", "300"]}})
            while True:
                job = client.get(f"/jobs/{name}")
                if job["running"] >= count:
                    break
                events = client.get("/events", since=cursor, wait=5, limit=1000)
                if events:
                    cursor = max(e["id"] for e in events)
            elapsed = time.perf_counter() - began
            starts = []
            for task in job["tasks"]:
                starts.append(clock.wait(engine.started(task["container_id"]), mono, timeout=10) - mono)
            return elapsed, max(starts)
        finally:
            clock.close()
            assert worker  # containers are removed by the cluster's label on the way out


def _swarm(count: int, rounds: int) -> tuple[list[float], str]:
    samples = []
    with engine.swarm() as problem:
        if problem:
            return [], problem
        for _ in range(rounds):
            name = f"bench-svc-{tag()}"
            settle()
            try:
                began = time.perf_counter()
                engine.service_create(name, count, extra=("--stop-grace-period", "1s"))
                wait_for(
                    lambda: engine.count_running(f"cube.bench={name}") >= count,
                    timeout=300,
                    interval=0.1,
                    what=f"{count} replicas running",
                )
                samples.append(time.perf_counter() - began)
            finally:
                engine.service_remove(name)
    return samples, ""
