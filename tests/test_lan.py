"""Zero-config on a real (private) LAN: a manager and two workers in three network namespaces joined by a bridge,
the built pyz in each, mDNS between them. The workers are given no manager address and share one hostname; both
join, a job of 4 spreads over both, and the CLI in a fourth namespace finds the manager by itself. Every process
here runs inside a namespace the test made: nothing is multicast on the machine's real interfaces."""

import json
import os
import subprocess
import time

import netns
import pytest
from conftest import wait_for

pytestmark = [pytest.mark.netns, pytest.mark.docker]
TOKEN = "lan-test-token"


@pytest.fixture
def lan(tmp_path):
    with netns.lan_for_test(4, "cube-lan") as lan:
        yield lan


def test_workers_join_by_mdns_job_spreads_cli_finds_manager(lan, pyz, tmp_path, busybox_image):
    manager_host, *worker_hosts, cli_host = lan.hosts
    env = {**os.environ, "CUBE_TOKEN": TOKEN}
    env.pop("CUBE_NO_MDNS", None)
    env.pop("CUBE_MANAGER", None)
    logs = []

    def start(host, argv, name):
        log = open(tmp_path / f"{name}.log", "wb")
        logs.append((name, tmp_path / f"{name}.log"))
        return lan.run(host, [pyz, *argv], stdout=log, stderr=subprocess.STDOUT, env=env)

    def cube(*args, timeout=60):
        return subprocess.run(
            lan.command(cli_host, [pyz, *args]),
            capture_output=True,
            text=True,
            env={**env, "CUBE_DATA": str(tmp_path / "cli")},
            timeout=timeout,
        )

    def dump():
        return "\n".join(f"--- {name}\n{path.read_text(errors='replace')[-3000:]}" for name, path in logs)

    start(manager_host, ["manager", "--data", str(tmp_path / "m"), "--node-timeout", "3"], "manager")
    started = time.monotonic()
    workers = [
        start(host, ["worker", "--data", str(tmp_path / f"w{i}"), "--stop-timeout", "1"], f"worker{i}")
        for i, host in enumerate(worker_hosts)
    ]
    try:

        def joined():
            result = cube("nodes", "--json")
            return result.returncode == 0 and len(json.loads(result.stdout)) == 2 and json.loads(result.stdout)

        nodes = wait_for(joined, timeout=40, interval=0.5)
        print(f"\nboth workers joined by mDNS {time.monotonic() - started:.1f} s after starting")
        assert {n["address"].split("//")[1].split(":")[0] for n in nodes} == {h.ip for h in worker_hosts}
        assert len({n["name"] for n in nodes}) == 2, "same hostname, two distinct nodes"
        assert all(n["state"] == "ready" for n in nodes)

        result = cube(
            "run", "--image", busybox_image, "--count", "4", "--name", "lanjob", "--cmd", "sleep 300", timeout=120
        )
        assert result.returncode == 0, result.stderr + dump()
        assert "4 task(s) running" in result.stdout
        nodes = json.loads(cube("nodes", "--json").stdout)
        assert sorted(n["tasks"] for n in nodes) == [2, 2], nodes
        tasks = json.loads(cube("status", "lanjob", "--json").stdout)["tasks"]
        assert len({t["node"] for t in tasks}) == 2

        # Graceful stop unregisters: SIGTERM one worker and it is gone from the LAN (its process ends cleanly).
        workers[1].terminate()
        assert workers[1].wait(timeout=20) == 0
        assert cube("stop", "lanjob").returncode == 0
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.terminate()
        ids = subprocess.run(
            ["docker", "ps", "-aq", "--filter", "name=cube-lanjob-"], capture_output=True, text=True
        ).stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)


def test_worker_with_wrong_token_is_refused_and_says_so(lan, pyz, tmp_path):
    manager_host, worker_host, *_ = lan.hosts
    env = {**os.environ}
    env.pop("CUBE_NO_MDNS", None)
    log_m = open(tmp_path / "m.log", "wb")
    log_w = open(tmp_path / "w.log", "wb")
    lan.run(
        manager_host,
        [pyz, "manager", "--data", str(tmp_path / "m"), "--token", TOKEN],
        stdout=log_m,
        stderr=subprocess.STDOUT,
        env=env,
    )
    lan.run(
        worker_host,
        [pyz, "worker", "--data", str(tmp_path / "w"), "--token", "not-the-token"],
        stdout=log_w,
        stderr=subprocess.STDOUT,
        env=env,
    )
    text = wait_for(lambda: "not joining" in (t := (tmp_path / "w.log").read_text()) and t, timeout=40, interval=0.5)
    assert "could not prove it holds the cluster token" in text and "token is wrong" in text
    assert TOKEN not in text and TOKEN not in (tmp_path / "m.log").read_text(), "the token is never logged"
    nodes = subprocess.run(
        lan.command(manager_host, [pyz, "nodes", "--json", "--manager", "https://127.0.0.1:5555", "--token", TOKEN]),
        capture_output=True,
        text=True,
        env=env,
    )
    assert json.loads(nodes.stdout) == []
