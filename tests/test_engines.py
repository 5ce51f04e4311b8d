"""The engines harness (tests/engines.py) on real engines: several dockerds, each in a host namespace of its own,
reach each other over the private LAN, fail one at a time, and leave nothing behind. These also pin down how
Docker 20.10 treats containers when its engine is stopped, killed and started again, which tests of Cube's
worker rely on."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request

import engines
import netns
import pytest
from conftest import wait_for

pytestmark = [pytest.mark.docker, pytest.mark.netns]
HERE = os.path.dirname(os.path.abspath(__file__))
# A container that ends at once on SIGTERM (as pid 1 a plain `sleep` ignores it, and dockerd would wait its 10 s
# stop timeout): the trap ends `wait`, and the container with exit code 0.
STOPS_ON_TERM = ["sh", "-c", "trap 'exit 0' TERM; sleep 1000 & wait"]


def docker_ok(lan, host, *args) -> str:
    result = lan.docker(host, *args)
    assert result.returncode == 0, f"docker {' '.join(args)} on {host.name}: {result.stderr}"
    return result.stdout.strip()


def inspect(lan, host, name) -> dict:
    return json.loads(docker_ok(lan, host, "inspect", name))[0]


def serve(lan, host, image, name, text, port=8080) -> None:
    """A busybox httpd container on `host` serving `text` at /index.html, published on `port`."""
    docker_ok(
        lan,
        host,
        "run",
        "-d",
        "--name",
        name,
        "-p",
        f"{port}:80",
        image,
        "sh",
        "-c",
        f"echo {text} > /www/index.html && exec httpd -f -p 80 -h /www",
    )


def fetch(lan, host, url) -> str | None:
    """GET `url` from inside `host` with the machine's busybox; None when it fails. No `-T`: busybox 1.35's static
    wget segfaults with it; lan.exec's timeout bounds the wait instead."""
    result = lan.exec(host, ["/bin/busybox", "wget", "-qO-", url])
    return result.stdout.strip() if result.returncode == 0 else None


def reachable(lan, source, target) -> bool:
    return lan.exec(source, ["/bin/busybox", "ping", "-c", "1", "-W", "1", target.ip]).returncode == 0


def pid_alive(pid: int) -> bool:
    return engines._alive(pid)


def test_three_engines_each_with_its_own_containers(engine_lan, busybox_image):
    lan = engine_lan(3)
    print(f"\n3 engines started (image loaded in each) in {lan.startup_seconds:.2f} s")
    for host in lan.hosts:
        docker_ok(lan, host, "run", "-d", "--name", f"only-on-h{host.index}", busybox_image, *STOPS_ON_TERM)
    for host in lan.hosts:
        assert docker_ok(lan, host, "ps", "--format", "{{.Names}}").split() == [f"only-on-h{host.index}"]
        subnet = docker_ok(lan, host, "network", "inspect", "bridge", "--format", "{{(index .IPAM.Config 0).Subnet}}")
        assert subnet == f"172.31.{host.index}.0/24"
    # The machine's own engine sees none of them.
    mine = subprocess.run(
        ["docker", "ps", "-a", "--filter", "name=only-on-h", "--format", "{{.Names}}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert mine.returncode == 0 and mine.stdout.strip() == ""


def test_published_port_is_reachable_from_another_host(engine_lan, busybox_image):
    lan = engine_lan(3)
    h0, h1, h2 = lan.hosts
    serve(lan, h0, busybox_image, "web", "served-by-h0")
    assert wait_for(lambda: fetch(lan, h1, f"http://{h0.ip}:8080/index.html"), timeout=10) == "served-by-h0"
    assert fetch(lan, h2, f"http://{h0.ip}:8080/index.html") == "served-by-h0"
    assert fetch(lan, h1, f"http://{h1.ip}:8080/index.html") is None, "nothing is published on host 1"


def test_stop_then_start_engine_keeps_containers_stopped(engine_lan, busybox_image):
    lan = engine_lan(2)
    h0, h1 = lan.hosts
    docker_ok(lan, h0, "run", "-d", "--name", "keeper", busybox_image, *STOPS_ON_TERM)
    docker_ok(lan, h1, "run", "-d", "--name", "bystander", busybox_image, *STOPS_ON_TERM)
    pid = inspect(lan, h0, "keeper")["State"]["Pid"]

    lan.stop_engine(h0)
    assert not lan.engine_running(h0)
    assert not pid_alive(pid), "without live-restore the container stops with its engine"
    assert lan.docker(h0, "ps").returncode != 0, "a stopped engine does not answer"
    assert inspect(lan, h1, "bystander")["State"]["Running"], "the other engine is untouched"

    lan.start_engine(h0)
    assert lan.engine_running(h0)
    state = inspect(lan, h0, "keeper")["State"]
    assert (state["Status"], state["ExitCode"]) == ("exited", 0), state
    docker_ok(lan, h0, "start", "keeper")
    assert inspect(lan, h0, "keeper")["State"]["Running"]


def test_kill_engine_leaves_containers_running_until_it_starts_again(engine_lan, busybox_image):
    lan = engine_lan(1)
    host = lan.hosts[0]
    # --stop-timeout 1: starting again stops them, each after its stop timeout (a plain sleep ignores SIGTERM).
    docker_ok(lan, host, "run", "-d", "--name", "plain", "--stop-timeout", "1", busybox_image, "sleep", "1000")
    docker_ok(
        lan,
        host,
        "run",
        "-d",
        "--name",
        "always",
        "--stop-timeout",
        "1",
        "--restart",
        "always",
        busybox_image,
        "sleep",
        "1000",
    )
    pids = {name: inspect(lan, host, name)["State"]["Pid"] for name in ("plain", "always")}

    lan.kill_engine(host)
    assert not lan.engine_running(host)
    assert all(pid_alive(pid) for pid in pids.values()), "containerd and the shims keep containers running"

    lan.start_engine(host)
    plain, always = inspect(lan, host, "plain"), inspect(lan, host, "always")
    # Without live-restore the engine stops what it finds running (SIGTERM, SIGKILL after the stop timeout)...
    assert (plain["State"]["Status"], plain["State"]["ExitCode"]) == ("exited", 137), plain["State"]
    assert not pid_alive(pids["plain"])
    # ...then starts again what its restart policy says should run: a new process, and RestartCount stays 0.
    assert always["State"]["Running"] and always["State"]["Pid"] != pids["always"], always["State"]
    assert always["RestartCount"] == 0


def test_live_restore_keeps_containers_across_a_killed_engine(engine_lan, busybox_image):
    lan = engine_lan(2, live_restore=True)
    h0, h1 = lan.hosts
    serve(lan, h0, busybox_image, "web", "live")
    pid = inspect(lan, h0, "web")["State"]["Pid"]
    lan.kill_engine(h0)
    # The DNAT rules stay in the namespace, so other hosts reach the port while the engine is down.
    assert wait_for(lambda: fetch(lan, h1, f"http://{h0.ip}:8080/index.html"), timeout=10) == "live"
    lan.start_engine(h0)
    state = inspect(lan, h0, "web")["State"]
    assert state["Running"] and state["Pid"] == pid, state


def test_partition_cuts_a_host_off_both_ways_and_heal_restores_it(engine_lan, busybox_image):
    lan = engine_lan(3)
    h0, h1, h2 = lan.hosts
    serve(lan, h1, busybox_image, "web", "behind-the-cut")
    assert wait_for(lambda: fetch(lan, h0, f"http://{h1.ip}:8080/index.html"), timeout=10) == "behind-the-cut"

    lan.partition(h1)
    assert not reachable(lan, h0, h1)
    assert not reachable(lan, h1, h2)
    assert reachable(lan, h0, h2), "the rest of the LAN is untouched"
    # Inside the cut-off host, life goes on: its engine answers and its container serves.
    assert fetch(lan, h1, f"http://{h1.ip}:8080/index.html") == "behind-the-cut"
    assert inspect(lan, h1, "web")["State"]["Running"]

    lan.heal(h1)
    assert reachable(lan, h0, h1) and reachable(lan, h1, h2)
    assert fetch(lan, h0, f"http://{h1.ip}:8080/index.html") == "behind-the-cut"


def test_forward_reaches_servers_inside_namespaces_from_the_test_process(engine_lan, busybox_image, tmp_path):
    lan = engine_lan(3)
    h0, _, h2 = lan.hosts
    serve(lan, h0, busybox_image, "web", "via-forward")
    # A plain process in a namespace, as the manager is: listening on the host's LAN address only.
    (tmp_path / "hello.txt").write_text("from-a-process")
    lan.run(
        h2,
        [sys.executable, "-m", "http.server", "5555", "--bind", h2.ip, "--directory", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def get(port, path):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/{path}", timeout=5) as response:
                return response.read().decode().strip()
        except OSError:
            return None

    web, manager = lan.forward(h0, 8080), lan.forward(h2, 5555)
    assert wait_for(lambda: get(web, "index.html"), timeout=10) == "via-forward"
    assert wait_for(lambda: get(manager, "hello.txt"), timeout=10) == "from-a-process"
    lan.partition(h2)
    assert get(manager, "hello.txt") == "from-a-process", "the test process is a local client of the host"


def leftovers(marker: str, pids=()) -> dict:
    """Everything on the machine whose name carries `marker` (a run's tag, or its prefix and pid), and those of
    `pids` still alive; {} when nothing is left."""
    with open("/proc/mounts") as f:
        mounts = [line.split()[1] for line in f]
    found = {
        "processes": sorted({p for p in pids if pid_alive(p)} | set(engines._pids_mentioning(marker))),
        "namespaces": [n for n in netns._namespaces() if marker in n],
        "mounts": [m for m in mounts if marker in m],
        "cgroups": [f"{m}/{d}" for m in engines._cgroup_mounts() for d in os.listdir(m) if marker in d],
        "directories": [d for d in os.listdir(engines.BASE) if marker in d] if os.path.isdir(engines.BASE) else [],
    }
    return {kind: what for kind, what in found.items() if what}


ALL_KINDS = {"processes", "namespaces", "mounts", "cgroups", "directories"}


def running_state(lan) -> tuple[list[int], list[str]]:
    """The pids of every engine, containerd, shim and container of `lan`, and its containers' shim sockets."""
    pids, sockets = set(engines._pids_mentioning(lan.root)), []
    for host in lan.hosts:
        for cid in docker_ok(lan, host, "ps", "-q", "--no-trunc").split():
            pids.add(inspect(lan, host, cid)["State"]["Pid"])
            sockets.append(engines.shim_socket(host.containerd_sock, cid))
    return sorted(pids), sockets


def test_close_leaves_nothing_behind(engine_lan, busybox_image):
    lan = engine_lan(2)
    for host in lan.hosts:
        serve(lan, host, busybox_image, "web", "bye")
    port = lan.forward(lan.hosts[0], 8080)
    tag = os.path.basename(lan.root)
    pids, sockets = running_state(lan)
    before = leftovers(tag, pids)
    assert len(before["processes"]) >= 8, before  # 2 x (dockerd, containerd, shim, httpd)
    assert before.keys() == ALL_KINDS, before
    assert sockets and all(os.path.exists(s) for s in sockets)
    # One engine is shut down in order at close, the other was killed and left its shim and container running.
    lan.kill_engine(lan.hosts[1])

    lan.close()
    assert leftovers(tag, pids) == {}
    assert not [s for s in sockets if os.path.exists(s)]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    assert not [t for t in threading.enumerate() if t.name == f"forward-{port}"]


def test_a_failed_start_leaves_nothing_behind(engine_lan):
    # The image is saved while the engines start, so they are up when its failure arrives.
    with pytest.raises(RuntimeError, match="cube-no-such-image"):
        engine_lan(2, prefix="cube-ef", images=["cube-no-such-image:latest"])
    assert leftovers(f"cube-ef-{os.getpid()}-") == {}


CRASHING_RUN = """
import os, sys
sys.path.insert(0, {here!r})
import engines
lan = engines.EngineLan(1, prefix="cube-es", images=[{image!r}])
host = lan.hosts[0]
started = lan.docker(host, "run", "-d", {image!r}, "sleep", "1000")
print(lan.root, host.cgroup_parent, host.containerd_sock, started.stdout, flush=True)
os.kill(os.getpid(), 9)  # a crash: no teardown runs
"""


def test_next_run_removes_what_a_crashed_run_left(engine_lan, busybox_image):
    crashed = subprocess.run(
        [sys.executable, "-c", CRASHING_RUN.format(here=HERE, image=busybox_image)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    root, cgroup_parent, containerd_sock, container_id = crashed.stdout.split()
    tag = os.path.basename(root)
    pids = sorted(engines._cgroup_pids(cgroup_parent))
    assert pids, "the container outlives the crash"
    assert leftovers(tag, pids).keys() == ALL_KINDS
    shim_socket = engines.shim_socket(containerd_sock, container_id)
    assert os.path.exists(shim_socket)

    lan = engine_lan(1, prefix="cube-es")  # its start removes the stale run
    assert leftovers(tag, pids) == {}
    assert not os.path.exists(shim_socket)
    assert lan.engine_running(lan.hosts[0])
