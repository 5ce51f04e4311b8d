"""Images through a real private registry (issue 11): Debian's docker-registry with htpasswd auth in a host of a
test LAN, a manager beside it, and a worker on another host with its own Docker engine, all as processes started
by the test. What a user does and sees: `cube run` of a private image fails with the reason without credentials
and with wrong ones, runs after `cube registry login` while `cube run` shows the pull's progress; the password is
in no log, no store in clear, no answer of `cube status` or `cube registry ls`; an image of another platform fails
at once with the platform in the reason; a registry that stops answering mid-pull (SIGSTOP) fails the pull after the
worker's --pull-stall, with that reason. The same rules without engines: tests/test_pulls.py."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time

import pytest
import registry as reg
from conftest import wait_for

from cube.cluster.client import Client
from cube.cluster.trust import Trust
from cube.core.errors import CubeError

pytestmark = [pytest.mark.docker, pytest.mark.netns]
ROOT = pathlib.Path(__file__).resolve().parent.parent
CUBE = [sys.executable, str(ROOT / "cube.py")]
TOKEN = "registry-test-token"
PASSWORD = "pw-42-Secret"
STALL = 4  # the worker's --pull-stall in seconds


@pytest.fixture
def cluster(engine_lan, busybox_image, tmp_path):
    reason = reg.available()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    lan = engine_lan(2, insecure_registries=["10.77.0.0/24"])
    registry_host, node_host = lan.hosts
    registry = reg.Registry(lan, registry_host, tmp_path, users={"ci": PASSWORD})
    base = reg.saved_layers(busybox_image)
    user = ("ci", PASSWORD)
    registry.push("private/tools", "1", [*base, reg.random_layer(6 << 20)], user)
    registry.push("private/slow", "1", [*base, reg.random_layer(6 << 20, "slow.bin")], user)
    registry.push("private/arm", "1", base, user, arch="arm64")
    # 16 Mbit/s out of the registry's host: a 6 MB layer takes about 3 s, long enough to watch its progress.
    shaped = lan.exec(
        registry_host,
        ["tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "16mbit", "burst", "32kb", "latency", "400ms"],
    )
    assert shaped.returncode == 0, shaped.stderr
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path), "CUBE_NO_MDNS": "1"}
    logs = {}

    def start(key, host, args, extra=None):
        logs[key] = tmp_path / f"{key}.log"
        with open(logs[key], "ab") as log:
            lan.run(
                host,
                [*CUBE, *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**env, **(extra or {})},
                start_new_session=True,
            )

    start(
        "manager",
        registry_host,
        [
            "manager",
            "--port",
            "5555",
            "--data",
            str(tmp_path / "manager"),
            "--token",
            TOKEN,
            "--no-mdns",
            "--workers",
            f"{node_host.ip}:5556",
            "--node-timeout",
            "5",
        ],
    )
    ca = tmp_path / "manager" / "tls" / "ca.pem"
    wait_for(ca.exists, timeout=30, interval=0.1)
    start(
        "n1",
        node_host,
        [
            "worker",
            "--port",
            "5556",
            "--name",
            "n1",
            "--data",
            str(tmp_path / "n1"),
            "--token",
            TOKEN,
            "--manager",
            f"https://{registry_host.ip}:5555",
            "--no-mdns",
            "--stop-timeout",
            "1",
            "--pull-timeout",
            "60",
            "--pull-stall",
            str(STALL),
        ],
        {"DOCKER_HOST": node_host.docker_host},
    )
    url = f"https://127.0.0.1:{lan.forward(registry_host, 5555)}"
    client = Client(url, TOKEN, timeout=10, trust=Trust(ca=ca.read_text()))

    def ready():
        try:
            return any(n["state"] == "ready" for n in client.get("/nodes"))
        except CubeError:
            return False

    wait_for(ready, timeout=60, interval=0.2)

    def cube(*args, stdin: str | None = None, tty: bool = False, timeout: float = 90) -> subprocess.CompletedProcess:
        argv = [*CUBE, *args, "--manager", url, "--token", TOKEN]
        if tty:  # `cube run` shows its progress line on a terminal only
            argv = ["script", "-qec", subprocess.list2cmdline(argv), "/dev/null"]
        return subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=timeout, env={**os.environ, "TERM": "xterm"}
        )

    return lan, registry, client, cube, tmp_path, logs


def files_mentioning(root: pathlib.Path, text: str) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and text.encode() in path.read_bytes():
            found.append(str(path))
    return found


def test_private_registry_credentials_progress_platform_and_stall(cluster):
    lan, registry, client, cube, tmp, logs = cluster
    image = f"{registry.address}/private/tools:1"

    # No credentials: the reason says what to do.
    denied = cube("run", "--image", image, "--cmd", "sleep 3600", "--name", "anon")
    print("\n$ cube run --image", image, "(no login)\n" + denied.stderr)
    assert denied.returncode != 0 and f"registry {registry.address} wants credentials" in denied.stderr
    cube("stop", "anon")

    # Wrong credentials: refused, with the user named.
    login = cube("registry", "login", registry.address, "--username", "ci", "--password-stdin", stdin="wrong\n")
    assert login.returncode == 0, login.stderr
    wrong = cube("run", "--image", image, "--cmd", "sleep 3600", "--name", "wrong")
    print("$ cube run (wrong password)\n" + wrong.stderr)
    assert wrong.returncode != 0 and f"registry {registry.address} refused the credentials of ci" in wrong.stderr
    cube("stop", "wrong")

    # The right ones: the pull runs, and `cube run` shows its progress while it waits.
    login = cube("registry", "login", registry.address, "--username", "ci", "--password-stdin", stdin=PASSWORD + "\n")
    print(f"$ echo PASSWORD | cube registry login {registry.address} --username ci --password-stdin\n{login.stdout}")
    assert login.returncode == 0 and "logged in to" in login.stdout
    started = time.monotonic()
    run = cube("run", "--image", image, "--cmd", "sleep 3600", "--name", "tools", tty=True)
    took = time.monotonic() - started
    print(f"$ cube run --image {image} --cmd 'sleep 3600' --name tools   ({took:.1f} s)\n{run.stdout!r}")
    assert run.returncode == 0, run.stdout
    progress = [line for line in run.stdout.replace("\r", "\n").splitlines() if "pulling" in line]
    assert any(f"pulling {image} on n1: " in line and "%" in line for line in progress), run.stdout
    assert "running on n1" in run.stdout
    listed = cube("registry", "ls")
    print("$ cube registry ls\n" + listed.stdout)
    assert registry.address in listed.stdout and "ci" in listed.stdout

    # The password is nowhere a user or a disk can read it.
    status = cube("status", "tools").stdout + cube("status").stdout + cube("registry", "ls", "--json").stdout
    assert PASSWORD not in status
    assert files_mentioning(tmp / "manager", PASSWORD) == []
    assert files_mentioning(tmp / "n1", PASSWORD) == []
    assert all(PASSWORD not in path.read_text(errors="replace") for path in logs.values())

    # An image made for another platform fails at once, with the platform in the reason.
    started = time.monotonic()
    arm = cube("run", "--image", f"{registry.address}/private/arm:1", "--cmd", "sleep 3600", "--name", "arm")
    took = time.monotonic() - started
    print(f"$ cube run --image {registry.address}/private/arm:1   ({took:.1f} s)\n{arm.stderr}")
    assert arm.returncode != 0 and "has no linux/amd64 variant (it is linux/arm64) on node n1" in arm.stderr
    assert took < 20 and "restarting" not in arm.stderr
    cube("stop", "arm")

    # A registry that stops answering mid-pull (SIGSTOP once the pull has made progress): the pull fails after
    # --pull-stall seconds without progress, with that reason.
    slow_image = f"{registry.address}/private/slow:1"
    started = time.monotonic()
    run = subprocess.Popen(
        [
            *CUBE,
            "run",
            "--image",
            slow_image,
            "--cmd",
            "sleep 3600",
            "--name",
            "slow",
            "--manager",
            client.base_url,
            "--token",
            TOKEN,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: any(
                e["message"].startswith(f"pulling {slow_image} on n1: ") for e in client.get("/events", tail=20)
            ),
            timeout=30,
            interval=0.1,
        )
        registry.pause()
        paused = time.monotonic()
        out, err = run.communicate(timeout=60)
    finally:
        registry.resume()
        if run.poll() is None:
            run.kill()
    took, stalled = time.monotonic() - started, time.monotonic() - paused
    print(
        f"$ cube run --image {slow_image}  (registry SIGSTOPped mid-pull; {took:.1f} s, {stalled:.1f} s after)\n{err}"
    )
    assert run.returncode != 0
    assert f"pull of {slow_image} timed out after" in err and "% downloaded)" in err
    assert f"(no progress for {STALL} s) on node n1" in err
    assert stalled < STALL + 10
