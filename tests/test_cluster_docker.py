"""A real cluster on the real Docker engine: a manager and two workers, each its own pyz process, talking TLS on
loopback (the workers join with the token at their first start). Covers jobs, health checks turning bad, a worker
killed (tasks move), a manager killed with kill -9 in the middle of submissions (nothing acknowledged lost, nothing
duplicated)."""

import signal
import subprocess
import threading
import time
import uuid

import pytest
from conftest import cluster_client, docker_ids, free_port, kill_started, wait_for

from cube.core.errors import CubeError

pytestmark = pytest.mark.docker
TOKEN = "cluster-test-token"


class Cluster:
    def __init__(self, pyz, procs, tmp_path, n_workers=2):
        self.pyz, self.procs, self.tmp = pyz, procs, tmp_path
        self.tag = uuid.uuid4().hex[:6]
        self.workers = {}
        for i in range(1, n_workers + 1):
            self.workers[f"w{i}-{self.tag}"] = {"port": free_port(), "proc": None}
        self.manager_port = free_port()
        self.url = f"https://127.0.0.1:{self.manager_port}"
        self.manager = None
        self.start_manager()
        for name in self.workers:
            self.start_worker(name)
        self.client = cluster_client(self.url, TOKEN, manager_data=self.tmp / "manager")
        wait_for(lambda: len([n for n in self.client.get("/nodes") if n["state"] == "ready"]) == n_workers, timeout=30)

    def start_worker(self, name):
        spec = self.workers[name]
        spec["proc"] = self.procs(
            [
                self.pyz,
                "worker",
                "--port",
                str(spec["port"]),
                "--name",
                name,
                "--data",
                str(self.tmp / name),
                "--token",
                TOKEN,
                "--manager",
                self.url,
                "--no-mdns",
                "--cpus",
                "2",
                "--memory",
                "2g",
                "--stop-timeout",
                "1",
            ],
            self.tmp / f"{name}.log",
        )
        spec["proc"].wait_http(f"https://127.0.0.1:{spec['port']}")

    def start_manager(self):
        workers = ",".join(f"127.0.0.1:{w['port']}" for w in self.workers.values())
        self.manager = self.procs(
            [
                self.pyz,
                "manager",
                "--port",
                str(self.manager_port),
                "--data",
                str(self.tmp / "manager"),
                "--token",
                TOKEN,
                "--workers",
                workers,
                "--no-mdns",
                "--node-timeout",
                "2",
            ],
            self.tmp / "manager.log",
        )
        self.manager.wait_http(self.url)

    def cleanup(self):
        kill_started()  # first: a worker still running could create a container after the sweep
        for name in self.workers:
            ids = subprocess.run(
                ["docker", "ps", "-aq", "--filter", f"label=cube.node={name}"], capture_output=True, text=True
            ).stdout.split()
            if ids:
                subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)


@pytest.fixture
def cluster(pyz, procs, tmp_path, busybox_image):
    c = Cluster(pyz, procs, tmp_path)
    yield c
    c.cleanup()


def running_containers(task_id):
    return docker_ids(f"label=cube.task_id={task_id}", "status=running")


def test_job_of_three_runs_three_containers(cluster, busybox_image):
    client = cluster.client
    started = time.monotonic()
    single = client.post("/tasks", {"image": busybox_image, "command": ["sleep", "300"]})
    wait_for(lambda: client.get(f"/tasks/{single['id']}")["state"] == "running", timeout=30)
    print(f"\nsubmit -> running, one task: {time.monotonic() - started:.3f} s")
    client.post("/jobs", {"name": "trio", "count": 3, "task": {"image": busybox_image, "command": ["sleep", "300"]}})
    job = wait_for(lambda: (j := client.get("/jobs/trio"))["running"] == 3 and j, timeout=30)
    for task in job["tasks"]:
        assert len(running_containers(task["id"])) == 1
    assert {t["node"] for t in job["tasks"]} == set(cluster.workers), "spread over both workers"
    nodes = {n["name"]: n for n in client.get("/nodes")}
    assert sum(n["tasks"] for n in nodes.values()) == 4
    client.delete("/jobs/trio")
    wait_for(lambda: all(not running_containers(t["id"]) for t in job["tasks"]), timeout=30)


def test_health_check_turning_bad_restarts_three_times_then_moves(cluster, busybox_image):
    client = cluster.client
    task = client.post(
        "/tasks",
        {
            "image": busybox_image,
            "command": ["httpd", "-f", "-p", "8080", "-h", "/www"],
            "ports": ["8080"],
            "health": {"path": "/index.html", "interval": 0.5, "timeout": 1},
        },
    )
    running = wait_for(lambda: (t := client.get(f"/tasks/{task['id']}"))["state"] == "running" and t, timeout=30)
    time.sleep(1.5)  # healthy checks pass: no restart
    assert client.get(f"/tasks/{task['id']}")["restarts"] == 0
    # The server keeps running but its page goes away: only the health check can notice. A restart keeps the
    # container's files, so the node uses up its restarts; the manager then reschedules the service elsewhere,
    # where a new container has the page again.
    subprocess.run(["docker", "exec", running["container_id"], "rm", "/www/index.html"], check=True)
    moved = wait_for(
        lambda: (t := client.get(f"/tasks/{task['id']}"))["state"] == "running" and t["node"] != running["node"] and t,
        timeout=60,
    )
    assert moved["generation"] == running["generation"] + 1 and moved["reschedules"] == 1
    messages = [e["message"] for e in moved["events"]]
    assert sum("health check failed" in m and "restarting" in m for m in messages) == 3
    assert any("3 of 3 restarts within 600 s used" in m and "404" in m for m in messages), messages
    assert any("rescheduling in 5 s" in m for m in messages)
    time.sleep(2)
    assert client.get(f"/tasks/{task['id']}")["restarts"] == 0, "healthy where it runs now"
    assert running_containers(task["id"]) == [moved["container_id"]]


def test_killed_worker_tasks_move_and_return_stops_the_stale_copy(cluster, busybox_image):
    client = cluster.client
    client.post("/jobs", {"name": "moving", "count": 4, "task": {"image": busybox_image, "command": ["sleep", "300"]}})
    job = wait_for(lambda: (j := client.get("/jobs/moving"))["running"] == 4 and j, timeout=30)
    victim = job["tasks"][0]["node"]
    moved_ids = [t["id"] for t in job["tasks"] if t["node"] == victim]
    killed_at = time.monotonic()
    cluster.workers[victim]["proc"].kill(signal.SIGKILL)

    def all_elsewhere():
        tasks = [client.get(f"/tasks/{i}") for i in moved_ids]
        return all(t["state"] == "running" and t["node"] != victim for t in tasks)

    wait_for(all_elsewhere, timeout=30, interval=0.05)
    print(f"\nworker killed -> its {len(moved_ids)} task(s) running elsewhere: {time.monotonic() - killed_at:.2f} s")
    assert [n["state"] for n in client.get("/nodes") if n["name"] == victim] == ["down"]
    # The killed worker's containers outlived it; once it is back, its stale copies are stopped.
    cluster.start_worker(victim)
    for task_id in moved_ids:
        wait_for(lambda: len(running_containers(task_id)) == 1, timeout=30)
    wait_for(lambda: [n["state"] for n in client.get("/nodes") if n["name"] == victim] == ["ready"], timeout=30)
    job = client.get("/jobs/moving")
    assert job["running"] == 4, [(t["name"], t["node"], t["state"], t["reason"]) for t in job["tasks"]]


def test_manager_kill_9_mid_submission_loses_and_duplicates_nothing(cluster, busybox_image):
    acknowledged, stop = [], threading.Event()

    def submit():
        client = cluster_client(cluster.url, TOKEN, timeout=5, manager_data=cluster.tmp / "manager")
        while not stop.is_set():
            task_id = uuid.uuid4().hex[:12]
            try:
                client.post("/tasks", {"id": task_id, "image": busybox_image, "command": ["sleep", "300"]})
                acknowledged.append(task_id)
            except CubeError:
                time.sleep(0.05)

    thread = threading.Thread(target=submit)
    thread.start()
    wait_for(lambda: len(acknowledged) >= 5, timeout=30)
    cluster.manager.kill(signal.SIGKILL)
    stop.set()
    thread.join()
    cluster.start_manager()
    client = cluster.client
    known = {t["id"] for t in client.get("/tasks")}
    assert set(acknowledged) <= known, "every acknowledged task survived the crash"
    for task_id in known:
        wait_for(lambda: client.get(f"/tasks/{task_id}")["state"] == "running", timeout=60)
    time.sleep(1)
    for task_id in known:
        assert len(running_containers(task_id)) == 1, f"exactly one container for {task_id}"
