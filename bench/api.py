"""Benchmark 6: the manager's API under load — 50 concurrent clients for 60 s with 10,000 tasks stored.

The manager is the real one (the pyz, DiskStore, default flags). Its 10,000 tasks run on 20 simulated workers, 500
each (`bench.fakeworker`: the real worker and worker API on the fake runtime, 10 per helper process), so every task
is placed, stored and reported running as on a real cluster, and the manager keeps long-polling its workers during
the run. The load: 50 keep-alive connections from one asyncio client (light enough to leave the cores to the
manager). The request mix: 70 % `GET /tasks/{id}` (a random stored task, with its events), 15 % `GET /nodes`, 10 %
`GET /events?tail=20`, 5 % `POST /tasks` (a new task, placed and dispatched to a worker). Latency is per request,
from sending it to the last byte of the answer (a reconnection, if the server closed the connection, counts in).
An error is any answer >= 400, a broken connection or a request taking more than 10 s.

Two loads, because 50 clients that each send their next request the instant the last is answered measure the
server's capacity, not its latency: their latency is 50 / throughput by Little's law, whatever the server does.
- paced (the figure for the target): each client sends a request every 200 ms (250 requests/s in all, a third of
  what this machine serves), as 50 busy dashboards or scripts would, for `--duration` seconds (60);
- saturated: the same 50 clients with no pause, for a third of that time: requests per second, and its latency.
`GET /tasks` (every task: a multi-megabyte answer) is measured on its own after.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
import uuid

from .common import IMAGE, ROOT, TOKEN, Proc, child_env, cube_argv, free_port, tag, wait_for
from .stats import Row, percentile

NAME = "api"
TITLE = "manager API: 50 concurrent clients, 10,000 tasks stored (p50/p99 latency, errors)"
COMMAND = "python -m bench api [--duration 60]"
MIX = (("task", 70), ("nodes", 15), ("events", 10), ("submit", 5))


def run(options) -> list[Row]:
    duration = options.duration or (10.0 if options.quick else 60.0)
    n_tasks = 2000 if options.quick else 10_000
    clients = 50
    with FakeCluster(workers=20) as cluster:
        ids = cluster.fill(n_tasks)
        time.sleep(3)  # the last reports settle
        paced = asyncio.run(load(cluster.port, ids, clients, duration, interval=0.2))
        saturated_for = duration / 3
        saturated = asyncio.run(load(cluster.port, ids, clients, saturated_for, interval=0.0))
        full = cluster.get_all_tasks(5)
    stored = f"{n_tasks:,} tasks stored"
    rows = _rows(f"paced: {clients} clients × 5 req/s, {duration:g} s, {stored}", paced, duration, target=True)
    rows += _rows(
        f"saturated: {clients} clients, no pause, {saturated_for:g} s", saturated, saturated_for, target=False
    )
    rows.append(
        Row(
            NAME,
            f"GET /tasks, all {full[1][0]:,} tasks ({full[2] / 1e6:.1f} MB), alone",
            "ms",
            [s * 1000 for s in full[0]],
            command=COMMAND,
        )
    )
    return rows


def _rows(what: str, results: list[tuple], duration: float, target: bool) -> list[Row]:
    latencies = [r[1] * 1000 for r in results]
    errors = [r for r in results if r[2] is None or r[2] >= 400]
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    per_kind = "; ".join(
        f"{kind} p50 {percentile([r[1] * 1000 for r in results if r[0] == kind], 50):.1f} / p99 "
        f"{percentile([r[1] * 1000 for r in results if r[0] == kind], 99):.1f} ms"
        for kind, _ in MIX
    )
    error_kinds: dict[str, int] = {}
    for kind, _, status, detail in errors:
        error_kinds[f"{kind} {status or detail}"] = error_kinds.get(f"{kind} {status or detail}", 0) + 1
    throughput = f"{len(results):,} requests, {len(results) / duration:.0f}/s, max {max(latencies):.0f} ms"
    return [
        Row(NAME, f"{what}: p50 latency", "ms", latencies, value=p50, command=COMMAND, note=throughput),
        Row(
            NAME,
            f"{what}: p99 latency",
            "ms",
            latencies,
            value=p99,
            target="≤ 50 ms" if target else "",
            met=p99 <= 50 if target else None,
            command=COMMAND,
            note=per_kind,
        ),
        Row(
            NAME,
            f"{what}: errors",
            "",
            [],
            value=float(len(errors)),
            target="0",
            met=not errors,
            command=COMMAND,
            note="; ".join(f"{k}: {v}" for k, v in error_kinds.items()),
        ),
    ]


# ---- the cluster ------------------------------------------------------------------------------------------------


class FakeCluster:
    """A pyz manager and `workers` simulated workers, `per_process` of them in each helper process."""

    def __init__(self, workers: int, per_process: int = 10):
        import pathlib
        import tempfile

        self.tag = tag()
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix=f"cube-bench-api-{self.tag}-", dir="/var/tmp"))
        self.n = workers
        self.per_process = per_process
        self.procs: list[Proc] = []
        self.port = 0

    def __enter__(self) -> "FakeCluster":
        try:
            ports = []
            for first in range(0, self.n, self.per_process):
                mine = [free_port() for _ in range(min(self.per_process, self.n - first))]
                proc = Proc(
                    [
                        sys.executable,
                        "-m",
                        "bench.fakeworker",
                        "--ports",
                        ",".join(map(str, mine)),
                        "--name",
                        f"fake-{self.tag}-{first // self.per_process}",
                    ],
                    self.dir / f"fake-{first}.log",
                    env=child_env({"PYTHONPATH": str(ROOT)}),
                )
                self.procs.append(proc)
                for port in mine:
                    proc.wait_http(f"http://127.0.0.1:{port}")
                ports += mine
            self.port = free_port()
            manager = Proc(
                cube_argv(
                    "manager",
                    "--port",
                    str(self.port),
                    "--host",
                    "127.0.0.1",
                    "--data",
                    str(self.dir / "manager"),
                    "--token",
                    TOKEN,
                    "--no-mdns",
                    "--insecure",  # the fake workers serve plain HTTP (bench/fakeworker.py)
                    "--workers",
                    ",".join(f"127.0.0.1:{p}" for p in ports),
                ),
                self.dir / "manager.log",
            )
            self.procs.append(manager)
            manager.wait_http(self.url)
            from cube.cluster.client import Client

            self.client = Client(self.url, TOKEN, timeout=120)  # no Trust: the bearer token, as curl would send it
            wait_for(
                lambda: len([n for n in self.client.get("/nodes") if n["state"] == "ready"]) == self.n,
                timeout=30,
                what="fake workers ready",
            )
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        import shutil

        for proc in self.procs:
            proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fill(self, n: int) -> list[str]:
        """`n` running tasks, as jobs of 1,000; returns their ids."""
        names = []
        for i in range(0, n, 1000):
            name = f"fill{i // 1000}"
            self.client.post(
                "/jobs",
                {"name": name, "count": min(1000, n - i), "task": {"image": IMAGE, "command": ["sleep", "300"]}},
            )
            names.append(name)
        ids = []
        for name in names:
            job = wait_for(
                lambda: (j := self.client.get(f"/jobs/{name}"))["running"] == j["count"] and j,
                timeout=600,
                interval=1.0,
                what=f"job {name} running",
            )
            ids += [t["id"] for t in job["tasks"]]
        return ids

    def get_all_tasks(self, n: int) -> tuple[list[float], list[int], int]:
        samples, counts, size = [], [], 0
        for _ in range(n):
            began = time.perf_counter()
            tasks = self.client.get("/tasks")
            samples.append(time.perf_counter() - began)
            counts.append(len(tasks))
            size = len(json.dumps(tasks))
        return samples, counts, size


# ---- the load ---------------------------------------------------------------------------------------------------


def _request(kind: str, ids: list[str], rng: random.Random) -> tuple[str, str, bytes]:
    if kind == "task":
        return "GET", f"/tasks/{rng.choice(ids)}", b""
    if kind == "nodes":
        return "GET", "/nodes", b""
    if kind == "events":
        return "GET", "/events?tail=20", b""
    body = {"id": uuid.uuid4().hex[:12], "image": IMAGE, "command": ["sleep", "300"]}
    return "POST", "/tasks", json.dumps(body).encode()


async def load(port: int, ids: list[str], clients: int, duration: float, interval: float) -> list[tuple]:
    """Each result: (kind, seconds, status or None, error text). `interval`: seconds between one client's requests
    (0: none)."""
    results: list[tuple] = []
    stop_at = time.monotonic() + duration
    kinds = [kind for kind, weight in MIX for _ in range(weight)]
    await asyncio.gather(
        *(_client(port, ids, kinds, random.Random(i), stop_at, results, interval) for i in range(clients))
    )
    return results


async def _client(port, ids, kinds, rng, stop_at, results, interval) -> None:
    reader = writer = None
    next_at = time.monotonic() + rng.uniform(0, interval)  # clients spread over the interval, not in lockstep
    while time.monotonic() < stop_at:
        if interval:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += interval
        kind = rng.choice(kinds)
        method, path, body = _request(kind, ids, rng)
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Accept: application/json\r\n"
        )
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        began = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head.encode() + b"\r\n" + body)
            status, close = await asyncio.wait_for(_answer(reader), timeout=10)
            results.append((kind, time.perf_counter() - began, status, ""))
            if close:
                writer.close()
                reader = writer = None
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as error:
            results.append((kind, time.perf_counter() - began, None, type(error).__name__))
            if writer is not None:
                writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


async def _answer(reader) -> tuple[int, bool]:
    line = await reader.readline()
    if not line:
        raise ConnectionResetError("the server closed the connection before answering")
    status = int(line.split()[1])
    length, close, chunked = 0, False, False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection" and value == "close":
            close = True
        elif name == "transfer-encoding" and "chunked" in value:
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status, close
