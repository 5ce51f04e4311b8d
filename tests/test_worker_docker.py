"""The worker for real: the built pyz running `cube worker` against the real Docker engine, driven over HTTP."""

import http.client
import json
import os
import signal
import subprocess
import time

import pytest
from conftest import docker_ids, docker_inspect, free_port, wait_for

from cube.cluster.client import Client
from cube.core.errors import BadRequest, NotFound, Unauthorized

pytestmark = pytest.mark.docker
TOKEN = "test-token-123"


@pytest.fixture
def worker(pyz, procs, node_name, tmp_path):
    port = free_port()
    data = tmp_path / "worker"

    def start():
        proc = procs(
            [
                pyz,
                "worker",
                "--port",
                str(port),
                "--data",
                str(data),
                "--name",
                node_name,
                "--token",
                TOKEN,
                "--no-mdns",
                "--insecure",  # the worker alone, no manager to join: its API on plain HTTP with the token
                "--cpus",
                "2",
                "--memory",
                "2g",
                "--stop-timeout",
                "2",
                # The periodic reconcile is pushed out of the way: what reacts to a container's death
                # within these tests is the Docker event stream.
                "--reconcile-interval",
                "300",
            ],
            tmp_path / "worker.log",
        )
        proc.wait_http(f"http://127.0.0.1:{port}")
        return proc

    proc = start()
    client = Client(f"http://127.0.0.1:{port}", TOKEN)
    yield {"client": client, "proc": proc, "start": start, "node": node_name, "port": port}


def task_body(busybox_image, **spec):
    spec.setdefault("image", busybox_image)
    spec.setdefault("command", ["sleep", "300"])
    return {"id": os.urandom(6).hex(), "spec": spec, "desired": "run", "state": "scheduled"}


def running(client, task_id):
    task = client.get(f"/tasks/{task_id}")
    return task if task["state"] == "running" else None


def test_task_runs_with_labels_limits_and_ports_then_stops(worker, busybox_image):
    client = worker["client"]
    body = task_body(
        busybox_image,
        cpu=0.5,
        memory="64m",
        ports=["8080", f"{free_port()}:81"],
        env={"A": "1"},
        labels={"team": "web"},
    )
    created = client.post("/tasks", body)
    assert created["state"] == "scheduled"
    task = wait_for(lambda: running(client, body["id"]), timeout=20)
    info = docker_inspect(task["container_id"])
    labels = info["Config"]["Labels"]
    assert labels["cube.task_id"] == body["id"] and labels["cube.node"] == worker["node"]
    assert labels["team"] == "web"
    assert info["HostConfig"]["NanoCpus"] == 500_000_000
    assert info["HostConfig"]["Memory"] == 64 * 1024 * 1024
    assert "A=1" in info["Config"]["Env"]
    assert set(task["host_ports"]) == {"8080/tcp", "81/tcp"}
    assert task["host_ports"]["81/tcp"] == int(body["spec"]["ports"][1].split(":")[0])
    assert task["container"]["status"] == "running"
    client.delete(f"/tasks/{body['id']}")
    wait_for(lambda: client.get(f"/tasks/{body['id']}")["state"] == "completed", timeout=20)
    assert not docker_ids(f"label=cube.task_id={body['id']}")


def test_fixed_host_port_is_reported(worker, busybox_image):
    client = worker["client"]
    port = free_port()
    body = task_body(busybox_image, command=["httpd", "-f", "-p", "80", "-h", "/www"], ports=[f"{port}:80"])
    client.post("/tasks", body)
    task = wait_for(lambda: running(client, body["id"]), timeout=20)
    assert task["host_ports"] == {"80/tcp": port}
    conn = wait_for(lambda: _get(port), timeout=10)
    assert conn == 200


def _get(port):
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        conn.request("GET", "/")
        return conn.getresponse().status
    except OSError:
        return None


def test_killed_container_comes_back_through_the_event_stream(worker, busybox_image):
    client = worker["client"]
    body = task_body(busybox_image)
    client.post("/tasks", body)
    timings = []
    for _ in range(2):
        cid = wait_for(lambda: running(client, body["id"]), timeout=20)["container_id"]
        before = docker_inspect(cid)["State"]["StartedAt"]
        started = time.monotonic()
        subprocess.run(["docker", "kill", cid], check=True, capture_output=True, timeout=20)
        wait_for(
            lambda: (state := docker_inspect(cid)["State"])["Running"] and state["StartedAt"] != before,
            timeout=15,
            interval=0.01,
        )
        timings.append(time.monotonic() - started)
    task = client.get(f"/tasks/{body['id']}")
    assert task["restarts"] == 2
    assert any("exited with code 137" in e["message"] for e in task["events"])
    print(f"\nkill -> replacement running: {', '.join(f'{t:.2f} s' for t in timings)}")


def test_worker_kill_9_restart_adopts_without_duplicates(worker, busybox_image):
    client = worker["client"]
    bodies = [task_body(busybox_image) for _ in range(2)]
    for body in bodies:
        client.post("/tasks", body)
    before = {b["id"]: wait_for(lambda: running(client, b["id"]), timeout=20)["container_id"] for b in bodies}
    worker["proc"].kill(signal.SIGKILL)
    # While the worker is dead, a container appears with its label that no task owns.
    orphan = subprocess.run(
        [
            "docker",
            "run",
            "-d",
            "--label",
            f"cube.node={worker['node']}",
            "--label",
            "cube.task_id=nobody",
            busybox_image,
            "sleep",
            "300",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    worker["start"]()
    wait_for(lambda: not docker_ids(f"id={orphan}"), timeout=20)
    for body in bodies:
        task = wait_for(lambda: running(client, body["id"]), timeout=20)
        assert task["container_id"] == before[body["id"]], "the same container, adopted"
        assert task["restarts"] == 0
    assert len(docker_ids(f"label=cube.node={worker['node']}")) == 2
    # Submitting the same assignment again is one task, not two.
    client.post("/tasks", bodies[0])
    time.sleep(0.5)
    assert len(docker_ids(f"label=cube.node={worker['node']}")) == 2


def test_missing_image_fails_with_reason_quickly(worker):
    client = worker["client"]
    body = task_body("no-such-registry.invalid/nothing:1")
    started = time.monotonic()
    client.post("/tasks", body)
    task = wait_for(lambda: (t := client.get(f"/tasks/{body['id']}"))["state"] == "failed" and t, timeout=60)
    assert "no-such-registry.invalid/nothing:1" in task["reason"] and "could not be pulled" in task["reason"]
    assert time.monotonic() - started < 60


def test_bad_input_gets_400_and_no_token_401(worker, busybox_image):
    client = worker["client"]
    with pytest.raises(BadRequest, match="image is required"):
        client.post("/tasks", {"id": "x1", "spec": {"command": ["true"]}})
    with pytest.raises(BadRequest, match="memory"):
        client.post("/tasks", task_body(busybox_image, memory="-5"))
    with pytest.raises(BadRequest, match="unknown restart policy"):
        client.post("/tasks", task_body(busybox_image, restart="sometimes"))
    with pytest.raises(BadRequest, match="unknown field"):
        client.post("/tasks", task_body(busybox_image, colour="blue"))
    conn = http.client.HTTPConnection("127.0.0.1", worker["port"], timeout=5)
    conn.request("POST", "/tasks", body=b"{not json", headers={"Authorization": f"Bearer {TOKEN}"})
    response = conn.getresponse()
    assert response.status == 400
    error = json.loads(response.read())
    assert error["status"] == 400 and "not valid JSON" in error["error"]
    with pytest.raises(Unauthorized):
        Client(f"http://127.0.0.1:{worker['port']}").get("/tasks")
    with pytest.raises(Unauthorized):
        Client(f"http://127.0.0.1:{worker['port']}", "wrong").get("/stats")
    with pytest.raises(NotFound):
        client.get("/tasks/unknown")
    assert client.get("/tasks") == []


def test_stats_and_logs(worker, busybox_image):
    client = worker["client"]
    stats = client.get("/stats")
    assert stats["capacity"] == {"cpu": 2.0, "memory": 2 << 30, "disk": stats["capacity"]["disk"]}
    assert stats["memory"]["total"] > 0 and 0 <= stats["cpu"]["percent"] <= 100
    assert len(stats["load"]) == 3 and stats["name"] == worker["node"]
    body = task_body(busybox_image, command=["sh", "-c", "echo hello from cube; sleep 300"])
    client.post("/tasks", body)
    wait_for(lambda: running(client, body["id"]), timeout=20)
    logs = wait_for(lambda: b"hello from cube" in b"".join(client.stream(f"/tasks/{body['id']}/logs")), timeout=10)
    assert logs
