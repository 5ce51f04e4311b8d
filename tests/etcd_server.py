"""Test harness: Debian's `etcd` (etcd-server 3.4) started by the tests as processes, never the system service.

    with Etcd(tmp_path) as etcd:               # one member on loopback, free ports, its own --data-dir
        store = EtcdStore(etcd.url, prefix="/t/1/")

    cluster = EtcdCluster(lan, lan.hosts[:3], tmp_path)   # three members, one per network namespace
    cluster.kill(0); cluster.start(0)

Each member gets the limits Cube documents for etcd users (README, "When you outgrow one manager"): a batch of
Cube's (a job of many tasks) is one transaction.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

MAX_TXN_OPS = 100_000  # as README asks of etcd users
MAX_REQUEST_BYTES = 64 * 1024 * 1024


def available() -> str | None:
    if shutil.which("etcd") is None:
        return "`etcd` is missing (apt-get install etcd-server)"
    return None


def require() -> None:
    """Skip without etcd, except in CI (CI=true), where that fails the test."""
    import pytest

    why = available()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs etcd: {why}")
        pytest.skip(why)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def limits() -> list[str]:
    return [f"--max-txn-ops={MAX_TXN_OPS}", f"--max-request-bytes={MAX_REQUEST_BYTES}"]


def wait_healthy(url: str, timeout: float = 20.0, proc: subprocess.Popen | None = None, log: str = "") -> None:
    """Until `url`/health says the member serves (it has a leader), or fail with the member's log tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as answer:
                if json.loads(answer.read()).get("health") == "true":
                    return
        except (OSError, ValueError, urllib.error.URLError):
            pass
        time.sleep(0.1)
    tail = ""
    if log and os.path.exists(log):
        with open(log, errors="replace") as f:
            tail = "".join(f.readlines()[-15:])
    raise RuntimeError(f"etcd at {url} did not become healthy in {timeout:g} s:\n{tail}")


class Etcd:
    """One etcd member on loopback with its own data directory; killed (and reaped) at close."""

    def __init__(self, directory, raised_limits: bool = True):
        self.directory = os.path.join(str(directory), "etcd")
        os.makedirs(self.directory, exist_ok=True)
        client, peer = _free_port(), _free_port()
        self.url = f"http://127.0.0.1:{client}"
        self.log = os.path.join(self.directory, "etcd.log")
        argv = [
            "etcd",
            "--name=cube-test",
            f"--data-dir={self.directory}/data",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=cube-test=http://127.0.0.1:{peer}",
            "--initial-cluster-state=new",
            *(limits() if raised_limits else []),
        ]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_healthy(self.url, proc=self.proc, log=self.log)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "Etcd":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


class EtcdCluster:
    """Members of one etcd cluster, member i on `hosts[i]` of a Lan (tests/netns.py), started at once."""

    def __init__(self, lan, hosts, directory):
        self.lan, self.hosts = lan, list(hosts)
        self.directory = os.path.join(str(directory), "etcd-cluster")
        self.names = [f"m{i}" for i in range(len(self.hosts))]
        self.urls = [f"http://{h.ip}:2379" for h in self.hosts]
        self.initial = ",".join(f"{n}=http://{h.ip}:2380" for n, h in zip(self.names, self.hosts, strict=True))
        self.procs: list[subprocess.Popen | None] = [None] * len(self.hosts)
        try:
            for i in range(len(self.hosts)):
                self.start(i, wait=False)
            for i in range(len(self.hosts)):
                self.wait(i)
        except BaseException:
            self.close()
            raise

    def log(self, i: int) -> str:
        return os.path.join(self.directory, f"{self.names[i]}.log")

    def start(self, i: int, wait: bool = True) -> None:
        host, name = self.hosts[i], self.names[i]
        os.makedirs(self.directory, exist_ok=True)
        argv = [
            "etcd",
            f"--name={name}",
            f"--data-dir={self.directory}/{name}",
            f"--listen-client-urls=http://{host.ip}:2379",
            f"--advertise-client-urls=http://{host.ip}:2379",
            f"--listen-peer-urls=http://{host.ip}:2380",
            f"--initial-advertise-peer-urls=http://{host.ip}:2380",
            f"--initial-cluster={self.initial}",
            "--initial-cluster-state=new",
            "--initial-cluster-token=cube-test",
            "--heartbeat-interval=100",
            "--election-timeout=1000",
            *limits(),
        ]
        with open(self.log(i), "ab") as out:
            self.procs[i] = self.lan.run(host, argv, stdout=out, stderr=subprocess.STDOUT)
        if wait:
            self.wait(i)

    def wait(self, i: int) -> None:
        """Until member i answers healthy, asked from inside its namespace (the root namespace has no route)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            probe = self.lan.exec(
                self.hosts[i], ["etcdctl", f"--endpoints={self.urls[i]}", "endpoint", "health"], timeout=10
            )
            if probe.returncode == 0:
                return
            time.sleep(0.2)
        with open(self.log(i), errors="replace") as f:
            tail = "".join(f.readlines()[-15:])
        raise RuntimeError(f"etcd member {self.names[i]} did not become healthy:\n{tail}")

    def leader(self, asked: int) -> int:
        """The index of the member that leads etcd's raft now, as member `asked` knows it."""
        out = self.lan.exec(
            self.hosts[asked], ["etcdctl", f"--endpoints={','.join(self.urls)}", "endpoint", "status", "-w", "json"]
        )
        statuses = json.loads(out.stdout)
        ids = [s["Status"]["header"]["member_id"] for s in statuses]
        leader = statuses[0]["Status"]["leader"]
        return [self.urls.index(s["Endpoint"]) for s in statuses][ids.index(leader)]

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self.procs[i] = None

    def close(self) -> None:
        for i in range(len(self.procs)):
            self.kill(i)
