"""Benchmark 3: a task's container is killed (`docker kill`, exit 137) → its replacement is running.

The stopwatch is the engine's own event stream: from just before the kill call to the `start` event of the
replacement (Cube restarts the same container; Swarm starts a new one), so Cube and Swarm are timed by the same
clock and neither is polled. The manager's view (the task running again with one more restart) is reported too.

Restart policy: Cube's default, `on-failure` with 3 restarts within 600 s; the first restart is immediate and later
ones back off (1 s, 2 s, 4 s ... up to 30 s: `cube.worker.restarts.backoff`). "Replacement running" is a first
restart, so every sample kills a task that has not been restarted yet (fresh tasks, one kill each). A second kill of
the same tasks is measured separately to show the backoff. Swarm: a one-replica service with the default restart policy
(condition any, delay 5 s).
"""

from __future__ import annotations

import time
import uuid

from . import engine
from .common import IMAGE, Cluster, last_event, tag, wait_for
from .stats import Row

NAME = "kill"
TITLE = "container killed → replacement running (Cube's first restart vs Swarm's default policy)"
COMMAND = "python -m bench kill"


def run(options) -> list[Row]:
    n = options.repeat or (3 if options.quick else 10)
    second = 0 if options.quick else 5
    first_s, first_api_s, second_s = [], [], []
    clock = engine.EventClock(("start",))
    try:
        with Cluster(workers=1) as cluster:
            client = cluster.client
            ids = []
            for _ in range(n):
                task = client.post("/tasks", {"id": uuid.uuid4().hex[:12], "image": IMAGE, "command": ["sleep", "300"]})
                ids.append(task["id"])
            tasks = wait_for(
                lambda: (
                    (ts := [client.get(f"/tasks/{i}") for i in ids]) and all(t["state"] == "running" for t in ts) and ts
                ),
                timeout=120,
                interval=0.1,
                what="tasks running",
            )
            time.sleep(1)  # let the last reports settle before the first kill
            for task in tasks:
                engine_s, api_s = _kill_cube(client, clock, task, restarts=1)
                first_s.append(engine_s)
                first_api_s.append(api_s)
            for task in tasks[:second]:
                second_s.append(_kill_cube(client, clock, client.get(f"/tasks/{task['id']}"), restarts=2)[0])
        swarm_s, problem = _swarm(clock, 3 if options.quick else 5)
    finally:
        clock.close()
    ms = lambda values: [v * 1000 for v in values]  # noqa: E731
    rows = [
        Row(
            NAME,
            "Cube: kill → same container running again (engine event), first restart",
            "ms",
            ms(first_s),
            "Swarm default restart policy" if swarm_s else "",
            ms(swarm_s),
            "≤ 1 s median",
            sorted(first_s)[len(first_s) // 2] <= 1.0,
            COMMAND,
        ),
        Row(NAME, "Cube: kill → manager reports it running (restarts +1)", "ms", ms(first_api_s), command=COMMAND),
    ]
    if second_s:
        rows.append(
            Row(
                NAME,
                "Cube: second kill of the same task (backoff 1 s)",
                "ms",
                ms(second_s),
                command=COMMAND,
                note="by design: restarts after the first back off 1, 2, 4 ... 30 s",
            )
        )
    if swarm_s:
        rows.append(
            Row(
                NAME,
                "Swarm: kill → new replica running (engine event)",
                "ms",
                ms(swarm_s),
                command=COMMAND,
                note="Swarm's default restart delay is 5 s",
            )
        )
    else:
        rows.append(Row(NAME, "Swarm: kill → new replica", "ms", [], note=f"not measured: {problem}"))
    return rows


def _kill_cube(client, clock, task: dict, restarts: int) -> tuple[float, float]:
    container = task["container_id"]
    cursor = last_event(client)
    began = time.monotonic()
    engine.kill(container)
    at = clock.wait(engine.started(container), began, timeout=60)
    while True:  # the manager's view, woken by its event stream (polling would load the 2 cores it shares)
        seen = client.get(f"/tasks/{task['id']}")
        if seen["state"] == "running" and seen["restarts"] >= restarts:
            return at - began, time.monotonic() - began
        events = client.get("/events", since=cursor, wait=5, task=task["id"])
        if events:
            cursor = max(e["id"] for e in events)


def _swarm(clock, n: int) -> tuple[list[float], str]:
    samples = []
    with engine.swarm() as problem:
        if problem:
            return [], problem
        name = f"bench-kill-{tag()}"
        label = f"cube.bench={name}"
        try:
            engine.service_create(name, 1, extra=("--stop-grace-period", "1s"))
            for _ in range(n):
                running = wait_for(
                    lambda: engine.running_ids(f"label={label}"), timeout=60, interval=0.05, what="replica running"
                )
                time.sleep(0.5)
                began = time.monotonic()
                engine.kill(running[0])
                at = clock.wait(
                    lambda e: engine.started(label=label)(e) and e.get("id") != running[0], began, timeout=60
                )
                samples.append(at - began)
        finally:
            engine.service_remove(name)
    return samples, ""
