"""Volumes on the real Docker engine (issue 11): a manager and workers, each its own pyz process (the cluster of
tests/test_cluster_docker.py), and the CLI as users type it. Data written by a task survives its container's
restart, a worker restart, a manager restart, `cube stop` + `cube run` with the same volume, and a reschedule
attempt (its node's worker dies: the task waits for that node instead of starting empty elsewhere). A bind mount
is read-only when asked, a missing bind source is a clear start error and nothing is created, a tmpfs has its size.
Every container and volume a test makes is removed afterwards, also when it fails."""

import json
import os
import subprocess
import time

import pytest
from conftest import docker_ids, docker_inspect, remove_volumes, wait_for
from test_cluster_docker import TOKEN, Cluster

pytestmark = pytest.mark.docker


@pytest.fixture
def cluster(pyz, procs, tmp_path, busybox_image):
    c = Cluster(pyz, procs, tmp_path)
    yield c
    c.cleanup()  # the processes, then the containers: nothing can make a volume after the sweep below
    remove_volumes(*c.workers)


def cube(cluster, *args, check: int | None = 0):
    """The CLI from the pyz, against this cluster's manager."""
    env = {**os.environ, "CUBE_MANAGER": cluster.url, "CUBE_TOKEN": TOKEN, "CUBE_NO_MDNS": "1"}
    result = subprocess.run([cluster.pyz, *args], capture_output=True, text=True, env=env, timeout=120)
    if check is not None:
        assert result.returncode == check, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stdout + result.stderr
    return result


def task(cluster, ref: str) -> dict:
    return cluster.client.get(f"/tasks/{ref}")


def running(cluster, ref: str) -> dict:
    return wait_for(lambda: (t := task(cluster, ref))["state"] == "running" and t["container_id"] and t, timeout=60)


def sh(container_id: str, script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "exec", container_id, "sh", "-c", script], capture_output=True, text=True)


def lines(container_id: str, path: str = "/data/log") -> list[str]:
    return sh(container_id, f"cat {path}").stdout.split()


def volume_exists(name: str) -> bool:
    return subprocess.run(["docker", "volume", "inspect", name], capture_output=True).returncode == 0


# Each run of the container appends one line: the number of runs is the number of lines, whichever container.
APPEND = "echo run-$(date +%s%N) >> /data/log; sleep 300"


def test_data_survives_restarts_a_stop_and_run_and_volume_rm_waits_for_its_tasks(cluster, busybox_image):
    volume = f"cubetest-{cluster.tag}"
    run = ("run", "--image", busybox_image, "--volume", f"{volume}:/data", "--cmd", f"sh -c '{APPEND}'", "--json")
    first = json.loads(cube(cluster, *run, "--name", "db").stdout)
    ref = first["tasks"][0]["id"] if "tasks" in first else first["id"]
    db = running(cluster, ref)
    node = db["node"]
    assert wait_for(lambda: lines(db["container_id"]), timeout=10)[0].startswith("run-")
    labels = json.loads(subprocess.run(["docker", "volume", "inspect", volume], capture_output=True).stdout)[0]
    assert labels["Labels"] == {"cube.volume": volume, "cube.node": node}
    mounts = docker_inspect(db["container_id"])["Mounts"]
    assert [(m["Type"], m["Name"], m["Destination"], m["RW"]) for m in mounts] == [("volume", volume, "/data", True)]

    # The container is killed: its node restarts it (the same container), the volume's file has a second line.
    subprocess.run(["docker", "kill", db["container_id"]], check=True, capture_output=True)
    wait_for(lambda: task(cluster, ref)["restarts"] == 1 and task(cluster, ref)["state"] == "running", timeout=30)
    assert len(wait_for(lambda: len(lines(db["container_id"])) == 2 and lines(db["container_id"]), timeout=10)) == 2

    # The worker is killed and started again: it adopts the container, the data is as it was.
    cluster.workers[node]["proc"].kill()
    cluster.start_worker(node)
    time.sleep(1.0)
    assert running(cluster, ref)["container_id"] == db["container_id"] and len(lines(db["container_id"])) == 2

    # The manager too (kill -9): the volume's record is kept, a second task that mounts it goes to its node.
    cluster.manager.kill()
    cluster.start_manager()
    wait_for(lambda: all(n["state"] == "ready" for n in cluster.client.get("/nodes")), timeout=30)
    reader = cluster.client.post(
        "/tasks", {"image": busybox_image, "command": ["sleep", "300"], "volumes": [f"{volume}:/data:ro"]}
    )
    seen = running(cluster, reader["id"])
    assert seen["node"] == node and len(lines(seen["container_id"])) == 2
    assert sh(seen["container_id"], "echo x >> /data/log").returncode != 0, "mounted read-only"

    # `cube volume ls` names it, its node and the two tasks; `cube volume rm` is refused while they run.
    listed = cube(cluster, "volume", "ls").stdout
    assert volume in listed and node in listed and "db" in listed, listed
    (row,) = [v for v in json.loads(cube(cluster, "volume", "ls", "--json").stdout) if v["name"] == volume]
    assert row["node"] == node and {t["id"] for t in row["tasks"]} == {ref, reader["id"]}
    refused = cube(cluster, "volume", "rm", volume, check=1)
    assert "is mounted by task" in refused.stderr and "stop it first" in refused.stderr

    # `cube stop` removes the containers and keeps the volume; `cube run` with it again finds the data.
    cube(cluster, "stop", ref)
    cube(cluster, "stop", reader["id"])
    wait_for(lambda: not docker_ids(f"label=cube.task_id={ref}"), timeout=30)
    assert volume_exists(volume), "stopping a task keeps its volume"
    again = json.loads(cube(cluster, *run, "--name", "db2").stdout)
    back = running(cluster, again["id"])
    assert back["node"] == node
    assert len(wait_for(lambda: len(lines(back["container_id"])) == 3 and lines(back["container_id"]), timeout=10))

    cube(cluster, "stop", again["id"])
    wait_for(lambda: not docker_ids(f"label=cube.task_id={again['id']}"), timeout=30)
    removed = cube(cluster, "volume", "rm", volume)
    assert f"removed volume {volume} from node {node}" in removed.stdout
    assert not volume_exists(volume)
    assert volume not in cube(cluster, "volume", "ls").stdout


def test_a_task_waits_for_its_volume_node_instead_of_starting_empty_elsewhere(pyz, procs, tmp_path, busybox_image):
    c = Cluster(pyz, procs, tmp_path, n_workers=2)
    try:
        volume = f"cubetest-{c.tag}"
        created = c.client.post(
            "/tasks",
            {"image": busybox_image, "command": ["sh", "-c", APPEND], "volumes": [f"{volume}:/data"]},
        )
        first = running(c, created["id"])
        home, other = first["node"], next(n for n in c.workers if n != first["node"])
        c.workers[home]["proc"].kill()  # the node is lost (its container lives on, nobody answers for it)
        waiting = wait_for(lambda: (t := task(c, created["id"]))["state"] == "pending" and t, timeout=30, interval=0.2)
        assert f"volume {volume} lives on {home}, which is down" in waiting["reason"], waiting["reason"]
        time.sleep(3.0)  # rounds of placement pass: still waiting, never started on the other node
        assert task(c, created["id"])["state"] == "pending"
        assert not docker_ids(f"label=cube.task_id={created['id']}", f"label=cube.node={other}")
        c.start_worker(home)
        back = wait_for(
            lambda: (t := task(c, created["id"]))["state"] == "running" and t["node"] == home and t, timeout=60
        )
        assert back["generation"] == first["generation"] + 1
        assert len(wait_for(lambda: len(lines(back["container_id"])) == 2 and lines(back["container_id"]), 10)) == 2
    finally:
        c.cleanup()
        remove_volumes(*c.workers)


def test_bind_mounts_read_only_a_missing_source_and_tmpfs(cluster, busybox_image, tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    (media / "song.txt").write_text("la la\n")
    created = cluster.client.post(
        "/tasks",
        {
            "image": busybox_image,
            "command": ["sleep", "300"],
            "volumes": [f"{media}:/media:ro"],
            "tmpfs": ["/run/cache:size=2m"],
        },
    )
    t = running(cluster, created["id"])
    assert sh(t["container_id"], "cat /media/song.txt").stdout == "la la\n"
    write = sh(t["container_id"], "touch /media/new")
    assert write.returncode != 0 and "Read-only file system" in write.stderr
    mount = sh(t["container_id"], "grep ' /run/cache ' /proc/mounts").stdout
    assert mount.startswith("tmpfs /run/cache tmpfs") and "size=2048k" in mount, mount
    inspect = docker_inspect(t["container_id"])
    assert [(m["Type"], m["Source"], m["RW"]) for m in inspect["Mounts"] if m["Destination"] == "/media"] == [
        ("bind", str(media), False)
    ]

    missing = tmp_path / "not-there"
    result = cube(
        cluster,
        "run",
        "--image",
        busybox_image,
        "--cmd",
        "sleep 300",
        "--volume",
        f"{missing}:/media",
        "--restart",
        "no",
        check=1,
    )
    assert f"bind mount source {missing} does not exist on node" in result.stderr, result.stderr
    assert not missing.exists(), "no directory was made for it"

    refused = cube(cluster, "run", "--image", busybox_image, "--volume", "/var/run/docker.sock:/sock", check=1)
    assert "volumes[0]: a bind mount of /var/run/docker.sock" in refused.stderr
    assert "--allow-host-root" in refused.stderr
