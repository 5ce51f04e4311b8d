"""Benchmark 1: one task, warm image, submitted → running.

Cube: a manager and one worker, each a pyz process on loopback. Two figures: the API path (POST /tasks, then the
manager's event stream until it reports the task running — what every client sees) and the real CLI end to end
(`cube.pyz run --image ... --cmd "sleep 300"`, a fresh process: interpreter start, imports, submit, wait).
Baselines in the same run, interleaved with Cube's samples so drift hits both alike: the Docker SDK's create + start
+ inspect-until-running in this process (the API path's peer), `docker run -d` (the CLI's peer: a compiled client),
and, after them, a one-replica Docker Swarm service.
"""

from __future__ import annotations

import subprocess
import time
import uuid

from . import engine
from .common import IMAGE, TOKEN, Cluster, child_env, cube_argv, last_event, tag, wait_for, wait_task_running
from .stats import Row, ratio

NAME = "one_task"
TITLE = "one task, warm image: submit → running (Cube vs raw Docker, Docker CLI, Swarm)"
COMMAND = "python -m bench one_task"


def run(options) -> list[Row]:
    n = options.repeat or (4 if options.quick else 15)
    label = f"bench-{tag()}"
    api_s, cli_s, raw_s, docker_cli_s = [], [], [], []
    try:
        with Cluster(workers=1) as cluster:
            client = cluster.client
            cli_argv = cube_argv(
                "run", "--image", IMAGE, "--cmd", "sleep 300", "--manager", cluster.url, "--token", TOKEN
            )

            def api_once() -> float:
                cursor = last_event(client)
                began = time.perf_counter()
                task = client.post("/tasks", {"id": uuid.uuid4().hex[:12], "image": IMAGE, "command": ["sleep", "300"]})
                wait_task_running(client, task["id"], cursor)
                return time.perf_counter() - began

            def cli_once() -> float:
                began = time.perf_counter()
                done = subprocess.run(cli_argv, capture_output=True, text=True, env=child_env(), timeout=120)
                elapsed = time.perf_counter() - began
                if done.returncode != 0:
                    raise RuntimeError(f"cube run failed: {done.stderr.strip()}")
                return elapsed

            def raw_once() -> float:
                began = time.perf_counter()
                engine.run_raw(label)
                return time.perf_counter() - began

            def docker_cli_once() -> float:
                began = time.perf_counter()
                subprocess.run(
                    ["docker", "run", "-d", "--label", f"cube.bench={label}", IMAGE, "sleep", "300"],
                    check=True,
                    capture_output=True,
                    timeout=120,
                )
                return time.perf_counter() - began

            for once in (raw_once, api_once, cli_once, docker_cli_once):  # warm-up, not counted
                once()
            for _ in range(n):
                raw_s.append(raw_once())
                api_s.append(api_once())
                cli_s.append(cli_once())
                docker_cli_s.append(docker_cli_once())
    finally:
        engine.remove_labelled(f"cube.bench={label}")
    swarm_s, swarm_note = _swarm(3 if options.quick else 5)
    ms = lambda values: [v * 1000 for v in values]  # noqa: E731
    api_ratio, cli_ratio = ratio(api_s, raw_s), ratio(cli_s, raw_s)
    rows = [
        Row(
            NAME,
            "API: POST /tasks → manager reports running",
            "ms",
            ms(api_s),
            "Docker SDK create+start+running",
            ms(raw_s),
            "≤ 1.3× raw Docker",
            api_ratio <= 1.3,
            COMMAND,
        ),
        Row(
            NAME,
            "CLI: `cube.pyz run` (new process) → running",
            "ms",
            ms(cli_s),
            "Docker SDK create+start+running",
            ms(raw_s),
            "≤ 1.3× raw Docker",
            cli_ratio <= 1.3,
            COMMAND,
            note="includes the interpreter's start and imports (see the `cli` benchmark)",
        ),
        Row(
            NAME,
            "CLI: `cube.pyz run` vs `docker run -d`",
            "ms",
            ms(cli_s),
            "`docker run -d` (Go CLI)",
            ms(docker_cli_s),
            command=COMMAND,
        ),
    ]
    if swarm_s:
        rows.append(
            Row(
                NAME,
                "Swarm: `docker service create --replicas 1` → running",
                "ms",
                ms(swarm_s),
                "Docker SDK create+start+running",
                ms(raw_s),
                command=COMMAND,
            )
        )
    elif swarm_note:
        rows.append(Row(NAME, "Swarm: 1 replica", "ms", [], note=f"not measured: {swarm_note}"))
    return rows


def _swarm(n: int) -> tuple[list[float], str]:
    samples = []
    with engine.swarm() as problem:
        if problem:
            return [], problem
        for i in range(n + 1):
            name = f"bench-one-{tag()}"
            began = time.perf_counter()
            engine.service_create(name, 1, extra=("--stop-grace-period", "1s"))
            wait_for(
                lambda: engine.count_running(f"cube.bench={name}") >= 1,
                timeout=60,
                interval=0.01,
                what="swarm replica running",
            )
            elapsed = time.perf_counter() - began
            engine.service_remove(name)
            if i:  # the first one warms the swarm up
                samples.append(elapsed)
    return samples, ""
