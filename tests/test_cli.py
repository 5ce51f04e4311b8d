"""The command line as people use it: the built pyz against `cube dev` (a real one-process cluster on the real
Docker engine). The CLI finds the local manager and its token by itself, as it does on a user's machine."""

import json
import os
import subprocess

import pytest
from conftest import free_port, wait_for

from cube.cluster.trust import fingerprint

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def dev(pyz, tmp_path_factory, busybox_image):
    data = tmp_path_factory.mktemp("cli")
    env = {**os.environ, "CUBE_DATA": str(data), "CUBE_NO_MDNS": "1"}
    env.pop("CUBE_MANAGER", None)
    env.pop("CUBE_TOKEN", None)
    port = free_port()
    log = open(data / "dev.log", "wb")
    proc = subprocess.Popen(
        [pyz, "dev", "--port", str(port), "--workers", "2", "--stop-timeout", "1"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )

    def cube(*args, check=None, timeout=60):
        result = subprocess.run([pyz, *args], capture_output=True, text=True, env=env, timeout=timeout)
        if check is not None:
            assert result.returncode == check, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
        return result

    wait_for(
        lambda: cube("nodes", "--json").returncode == 0 and len(json.loads(cube("nodes", "--json").stdout)) == 2,
        timeout=60,
        interval=0.2,
    )
    yield cube, port, data
    proc.terminate()
    proc.wait(timeout=30)
    log.close()
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", "name=cube-"], capture_output=True, text=True).stdout
    for line in subprocess.run(
        ["docker", "ps", "-a", "--format", "{{.ID}} {{.Labels}}"], capture_output=True, text=True
    ).stdout.splitlines():
        if "-dev-" in line and line.split()[0] in ids:
            subprocess.run(["docker", "rm", "-f", line.split()[0]], capture_output=True)


def no_traceback(result):
    assert "Traceback" not in result.stdout + result.stderr, result.stderr


def test_help_and_version_are_plain(dev):
    cube, _, _ = dev
    top = cube("--help", check=0)
    assert "Usage: cube COMMAND" in top.stdout and "run " in top.stdout
    run_help = cube("run", "--help", check=0)
    assert "--image IMAGE" in run_help.stdout and "--detach" in run_help.stdout
    assert cube("--version", check=0).stdout.startswith("cube ")


def test_run_count_status_nodes_logs_scale_stop(dev, busybox_image):
    cube, _, _ = dev
    result = cube(
        "run",
        "--image",
        busybox_image,
        "--count",
        "3",
        "--name",
        "trio",
        "--cmd",
        "sh -c 'echo hello trio; sleep 300'",
        check=0,
    )
    assert "job trio: 3 task(s) running" in result.stdout
    status = cube("status", check=0).stdout
    assert status.splitlines()[0].split() == ["ID", "NAME", "STATE", "NODE", "IMAGE", "PORTS", "RESTARTS", "AGE"]
    assert sum("trio-" in line and "running" in line for line in status.splitlines()) == 3
    tasks = json.loads(cube("status", "--json", check=0).stdout)
    assert {"id", "name", "job", "state", "node", "image", "container_id", "host_ports", "restarts"} <= set(tasks[0])
    nodes = json.loads(cube("nodes", "--json", check=0).stdout)
    assert {"name", "address", "state", "arch", "cpus", "memory", "disk", "allocated", "tasks"} <= set(nodes[0])
    assert sum(n["tasks"] for n in nodes) >= 3
    human_nodes = cube("node", check=0).stdout
    assert "ready" in human_nodes and "ARCH" in human_nodes
    logs = wait_for(lambda: "hello trio" in (r := cube("logs", "trio-1")).stdout and r, timeout=15)
    assert logs.returncode == 0
    detail = cube("ps", "trio", check=0).stdout
    assert "job trio (service): 3/3 running" in detail
    cube("scale", "trio", "1", check=0)
    wait_for(lambda: json.loads(cube("status", "trio", "--json").stdout)["running"] == 1, timeout=30)
    events = cube("events", check=0).stdout
    assert "running" in events
    assert "trio" in cube("events", "--json", check=0).stdout
    assert "stopped job trio" in cube("stop", "trio", check=0).stdout


def test_single_task_detail_shows_events(dev, busybox_image):
    cube, _, _ = dev
    result = cube(
        "run",
        "--image",
        busybox_image,
        "--cmd",
        "sleep 300",
        "--name",
        "solo",
        "--port",
        "8080",
        "--env",
        "A=1",
        "--env",
        "B=2",
        "--memory",
        "32m",
        "--json",
        check=0,
    )
    task = json.loads(result.stdout)
    assert task["state"] == "running" and "8080/tcp" in task["host_ports"]
    assert task["spec"]["env"] == {"A": "1", "B": "2"} and task["spec"]["memory"] == 32 << 20
    detail = cube("status", task["id"], check=0).stdout
    assert "State:     running" in detail and "Events:" in detail and "placed on" in detail
    cube("stop", task["id"], check=0)


def test_image_that_cannot_be_pulled_fails_with_reason(dev):
    cube, _, _ = dev
    result = cube("run", "--image", "registry.invalid/none:1", "--name", "nopull")
    assert result.returncode == 1
    no_traceback(result)
    assert "could not be pulled" in result.stderr and "cube status" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_container_that_exits_at_once_is_reported_with_its_code(dev, busybox_image):
    cube, _, _ = dev
    result = cube("run", "--image", busybox_image, "--cmd", "sh -c 'exit 3'", "--name", "quick-exit")
    assert result.returncode == 1 and result.stdout == ""
    no_traceback(result)
    assert "(quick-exit) stopped running: container exited with code 3" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    cube("stop", "quick-exit", check=0)


def test_no_node_fits_is_explained(dev, busybox_image):
    cube, _, _ = dev
    result = cube("run", "--image", busybox_image, "--memory", "100t", "--name", "huge")
    assert result.returncode == 1
    no_traceback(result)
    assert "insufficient memory" in result.stderr and "cube stop" in result.stderr
    cube("stop", "huge", check=0)


def test_user_errors_are_one_line_with_next_step(dev, busybox_image):
    cube, port, _ = dev
    cases = [
        (("run", "--imagee", busybox_image), "unknown flag --imagee"),
        (("run",), "--image is required"),
        (("run", "--image", busybox_image, "--port", "99999"), "from 1 to 65535"),
        (("run", "--image", busybox_image, "--restart", "sometimes"), "unknown restart policy"),
        (("run", "--image", busybox_image, "--memory", "lots"), "memory must be a size"),
        (("status", "nosuchtask"), "no task 'nosuchtask'"),
        (("stop", "nosuchtask"), "no task 'nosuchtask'"),
        (("scale", "nosuchjob", "2"), "no job 'nosuchjob'"),
        (("frobnicate",), "unknown command"),
        (("status", "--manager", "http://127.0.0.1:1"), "cannot reach http://127.0.0.1:1"),
        (("status", "--manager", f"https://127.0.0.1:{port}", "--token", "wrong"), "cluster token"),
        (("status", "--manager", f"https://127.0.0.1:{port}", "--token", "CUBE1-" + "0" * 64 + "-x"), "pins 0000"),
    ]
    for args, expected in cases:
        result = cube(*args)
        assert result.returncode != 0, args
        no_traceback(result)
        assert expected in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)


def test_token_command_prints_the_dev_join_token(dev):
    cube, port, data = dev
    token = cube("token", check=0).stdout.strip()
    prefix, pin, secret = token.split("-", 2)
    assert prefix == "CUBE1" and secret == (data / "dev" / "token").read_text().strip()
    assert pin == fingerprint((data / "dev" / "tls" / "ca.pem").read_text())
    for path in ("token", "tls/ca.key", "tls/ca.pem", "tls/manager.key", "worker-1/tls/node.key"):
        assert oct((data / "dev" / path).stat().st_mode & 0o777) == "0o600", path
    assert oct((data / "dev" / "tls").stat().st_mode & 0o777) == "0o700"


def test_status_does_not_import_the_docker_sdk(dev, pyz):
    cube, _, _ = dev
    result = subprocess.run(
        ["python3", "-X", "importtime", pyz, "status"],
        capture_output=True,
        text=True,
        env={**os.environ, "CUBE_DATA": str(dev[2]), "CUBE_NO_MDNS": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "cube.cluster.client" in imported, "the import trace covers cube itself"
    assert "cube.core.spec" not in imported, "the specs (20 ms of a start) are not read to list tasks"
    assert not {m for m in imported if m == "docker" or m.startswith("docker.")}
    assert "zeroconf" not in imported and "bottle" not in imported
    assert "cryptography" not in imported, "the CLI checks the CA with the standard library"
