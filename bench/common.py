"""What every benchmark shares: the artifact under test (dist/cube.pyz, run by a real interpreter), Cube processes
started from it and always killed afterwards, a small cluster (a manager and N workers, each its own process, on
loopback with a fixed token), polling helpers, and a description of the machine the figures were taken on.

Processes are started in a session of their own and killed by their process-group id, never by name. Containers a
benchmark creates carry a label naming the run (`cube.node=bench-...` for Cube's, `cube.bench=...` for the raw
baselines), and are removed by that label only: other work on the same engine is left alone.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

from cube.cluster.client import Client
from cube.cluster.trust import Trust
from cube.core.errors import CubeError

ROOT = pathlib.Path(__file__).resolve().parent.parent
PYZ = pathlib.Path(os.environ.get("CUBE_BENCH_PYZ") or ROOT / "dist" / "cube.pyz")  # the artifact under test
IMAGE = "cube-busybox:latest"
TOKEN = "bench-token"


def interpreter() -> str:
    """The Python that runs the pyz: $CUBE_BENCH_PYTHON, else the distribution's /usr/bin/python3 (what a Debian or
    Raspberry Pi OS user has), else this one. A version manager's shim (pyenv) in front of python3 costs ~0.1 s per
    start, which is not Cube's."""
    given = os.environ.get("CUBE_BENCH_PYTHON")
    if given:
        return given
    return "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def child_env(extra: dict | None = None) -> dict:
    """The environment of Cube processes: no mDNS (loopback only), and bytecode caching allowed — a user's machine
    keeps the .pyc files of the unpacked pyz, so a "warm" start must too (this sandbox sets PYTHONDONTWRITEBYTECODE,
    which would make every start compile every module)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update({"CUBE_NO_MDNS": "1", "CUBE_TOKEN": TOKEN})
    env.update(extra or {})
    return env


def cube_argv(*args: str) -> list[str]:
    return [interpreter(), str(PYZ), *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.02, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"{what} not met within {timeout:g} s (last value {last!r})")


def _cpu_times() -> tuple[int, int]:
    fields = [int(v) for v in open("/proc/stat").readline().split()[1:]]
    return sum(fields), fields[3] + fields[4]  # total, idle + iowait


def settle(idle: float = 0.85, timeout: float = 60.0) -> float:
    """Wait until the machine is quiet (cpu ≥ `idle` idle over two 0.5 s samples in a row), up to `timeout`; returns
    the seconds waited. Removing 100 containers leaves the kernel tearing down their network namespaces for seconds
    after `docker rm` returns: a measurement started then would pay for the previous one's cleanup."""
    began = time.monotonic()
    quiet = 0
    total, free = _cpu_times()
    while time.monotonic() - began < timeout and quiet < 2:
        time.sleep(0.5)
        total2, free2 = _cpu_times()
        quiet = quiet + 1 if (free2 - free) >= idle * max(total2 - total, 1) else 0
        total, free = total2, free2
    return time.monotonic() - began


def tag() -> str:
    return uuid.uuid4().hex[:6]


class Proc:
    """A process with its output in a file; `kill` signals its own process group and reaps it."""

    def __init__(self, argv: list[str], log_path: pathlib.Path, env: dict | None = None):
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.popen = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, env=env or child_env(), start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_http(self, url: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.argv[2:4]} exited with {self.popen.returncode}:\n{self.output()}")
            try:
                Client(url, timeout=1.0, trust=Trust(insecure=url.startswith("http://"))).health(timeout=1.0)
                return
            except CubeError:
                time.sleep(0.05)
        raise TimeoutError(f"{url} did not answer within {timeout:g} s:\n{self.output()}")

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-3000:]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=5)
        if not self._log.closed:
            self._log.close()


class Cluster:
    """A manager and `workers` workers, each a process from the pyz, on loopback. Worker names start with
    `bench-<tag>-`, so their containers (label cube.node=<name>) can be found and removed. Use as a context
    manager: everything is killed and removed on the way out, also on failure."""

    def __init__(self, workers: int = 1, worker_args: tuple = (), manager_args: tuple = (), keep_dir: bool = False):
        self.tag = tag()
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix=f"cube-bench-{self.tag}-", dir="/var/tmp"))
        self.n_workers = workers
        self.worker_args = tuple(worker_args)
        self.manager_args = tuple(manager_args)
        self.keep_dir = keep_dir
        self.workers: dict[str, dict] = {}
        self.manager: Proc | None = None
        self.manager_port = 0
        self.client: Client | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.manager_port}"

    def __enter__(self) -> "Cluster":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        for i in range(1, self.n_workers + 1):
            self.workers[f"bench-{self.tag}-w{i}"] = {"port": free_port(), "proc": None}
        self.manager_port = free_port()
        workers = ",".join(f"127.0.0.1:{w['port']}" for w in self.workers.values())
        self.manager = Proc(
            cube_argv(
                "manager",
                "--port",
                str(self.manager_port),
                "--host",
                "127.0.0.1",
                "--data",
                str(self.dir / "manager"),
                "--token",
                TOKEN,
                "--workers",
                workers,
                "--no-mdns",
                *self.manager_args,
            ),
            self.dir / "manager.log",
        )
        self.manager.wait_http(self.url)
        for name in self.workers:  # after the manager: a worker joins it with the token at its first start
            self.start_worker(name)
        ca = (self.dir / "manager" / "tls" / "ca.pem").read_text()
        self.client = Client(self.url, TOKEN, timeout=30.0, trust=Trust(ca=ca))
        wait_for(
            lambda: len([n for n in self.client.get("/nodes") if n["state"] == "ready"]) == self.n_workers,
            timeout=30,
            interval=0.05,
            what="all workers ready",
        )

    def start_worker(self, name: str) -> None:
        spec = self.workers[name]
        spec["proc"] = Proc(
            cube_argv(
                "worker",
                "--port",
                str(spec["port"]),
                "--host",
                "127.0.0.1",
                "--name",
                name,
                "--data",
                str(self.dir / name),
                "--token",
                TOKEN,
                "--manager",
                self.url,
                "--no-mdns",
                "--stop-timeout",
                "1",
                *self.worker_args,
            ),
            self.dir / f"{name}.log",
        )
        spec["proc"].wait_http(f"https://127.0.0.1:{spec['port']}")

    def pids(self) -> dict[str, int]:
        found = {name: spec["proc"].pid for name, spec in self.workers.items() if spec["proc"]}
        if self.manager:
            found["manager"] = self.manager.pid
        return found

    def close(self) -> None:
        for spec in self.workers.values():
            if spec["proc"]:
                spec["proc"].kill()
        if self.manager:
            self.manager.kill()
        from . import engine

        engine.remove_labelled(*[f"cube.node={name}" for name in self.workers])
        if not self.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


def wait_task_running(client: Client, task_id: str, cursor: int, timeout: float = 60.0) -> dict:
    """Until the manager reports the task running, woken by its event stream (a long poll), not by a timer."""
    deadline = time.monotonic() + timeout
    while True:
        task = client.get(f"/tasks/{task_id}")
        if task["state"] == "running":
            return task
        if task["state"] in ("failed", "completed"):
            raise RuntimeError(f"task {task_id} is {task['state']}: {task['reason']}")
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"task {task_id} not running after {timeout:g} s ({task['state']}: {task['reason']})")
        events = client.get("/events", since=cursor, wait=min(left, 5.0), task=task_id)
        if events:
            cursor = max(e["id"] for e in events)


def last_event(client: Client) -> int:
    newest = client.get("/events", tail=1)
    return newest[-1]["id"] if newest else 0


def machine() -> dict:
    """What the figures were measured on."""
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) // 1024
    except OSError:
        pass
    docker_version = ""
    try:
        docker_version = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True, timeout=20
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    python = subprocess.run([interpreter(), "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_mib": mem,
        "kernel": platform.release(),
        "os": _os_name(),
        "docker": docker_version,
        "python": f"{interpreter()} ({python})",
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "load_before": os.getloadavg()[0],
    }


def _os_name() -> str:
    try:
        for line in open("/etc/os-release"):
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def dump(path: pathlib.Path, data) -> None:
    path.write_text(json.dumps(data, indent=1, default=str))
