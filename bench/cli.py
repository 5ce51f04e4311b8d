"""Benchmark 8: the command line — warm `cube status` wall time, a new process each time.

Against a manager with one worker and 3 tasks. "Warm": the pyz is already unpacked (shiv's cache in ~/.shiv) and its
bytecode cached, as on any machine after the first command. Two ways of finding the manager: given (`--manager URL
--token T`), and found on this machine (its data directory's url and token files, one `/health` check). Baselines:
`docker ps` (a compiled client doing the same kind of work) and the bare interpreter (`python3 -c pass`, the floor
for any Python command). The note lists the heaviest imports (`python3 -X importtime cube.pyz status`).
"""

from __future__ import annotations

import subprocess
import time
import uuid

from .common import IMAGE, PYZ, TOKEN, Cluster, child_env, cube_argv, interpreter, wait_for
from .stats import Row

NAME = "cli"
TITLE = "CLI: warm `cube status` wall time"
COMMAND = "python -m bench cli"


def _time(argv: list[str], env: dict, n: int) -> list[float]:
    subprocess.run(argv, env=env, capture_output=True, timeout=60)  # warm: unpacked, bytecode cached
    samples = []
    for _ in range(n):
        began = time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True, timeout=60)
        samples.append(time.perf_counter() - began)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.decode(errors='replace')[-500:]}")
    return samples


def heaviest_imports(argv: list[str], env: dict, top: int = 6) -> str:
    done = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], env=env, capture_output=True, text=True, timeout=60)
    rows = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line[len("import time:") :].split("|")
        if not name.startswith("  "):  # top-level imports only: their cumulative time includes their children
            rows.append((int(cumulative), name.strip()))
    total = sum(c for c, _ in rows)
    heavy = ", ".join(f"{name} {c / 1000:.0f}" for c, name in sorted(rows, reverse=True)[:top])
    return f"imports {total / 1000:.0f} ms in all; heaviest (ms): {heavy}"


def run(options) -> list[Row]:
    n = options.repeat or (5 if options.quick else 20)
    with Cluster(workers=1) as cluster:
        client = cluster.client
        for _ in range(3):
            client.post("/tasks", {"id": uuid.uuid4().hex[:12], "image": IMAGE, "command": ["sleep", "300"]})
        wait_for(
            lambda: sum(t["state"] == "running" for t in client.get("/tasks")) == 3,
            timeout=60,
            interval=0.2,
            what="3 tasks running",
        )
        env = child_env()
        given = cube_argv("status", "--manager", cluster.url, "--token", TOKEN)
        status_given = _time(given, env, n)
        local_env = child_env({"CUBE_DATA": str(cluster.dir)})
        local_env.pop("CUBE_TOKEN", None)
        status_local = _time(cube_argv("status"), local_env, n)
        shebang = _time([str(PYZ), "status", "--manager", cluster.url, "--token", TOKEN], env, max(3, n // 4))
        note = heaviest_imports(given, env)
    docker_ps = _time(["docker", "ps"], env, n)
    bare = _time([interpreter(), "-c", "pass"], env, n)
    median = sorted(status_given)[len(status_given) // 2]
    ms = lambda values: [v * 1000 for v in values]  # noqa: E731
    return [
        Row(
            NAME,
            "`cube.pyz status --manager URL --token T`",
            "ms",
            ms(status_given),
            "`docker ps`",
            ms(docker_ps),
            "≤ 150 ms",
            median <= 0.150,
            COMMAND,
            note=note,
        ),
        Row(
            NAME,
            "`cube.pyz status`, manager found on this machine",
            "ms",
            ms(status_local),
            "`docker ps`",
            ms(docker_ps),
            "≤ 150 ms",
            sorted(status_local)[len(status_local) // 2] <= 0.150,
            COMMAND,
        ),
        Row(NAME, "bare interpreter floor", "ms", ms(bare), command=COMMAND, note=f"{interpreter()} -c pass"),
        Row(
            NAME,
            "`./cube.pyz status` through its shebang (`env python3`)",
            "ms",
            ms(shebang),
            command=COMMAND,
            note="`python3` on PATH here is pyenv's shim, which adds its own start-up",
        ),
    ]
