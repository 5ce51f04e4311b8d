"""Compose stacks on the real Docker engine (issue 12): `cube deploy` as users type it, against a manager and two
workers, each its own pyz process (tests/test_cluster_docker.py's Cluster). A stack's database is healthy before
its web service starts; its secrets and configs are in the containers, read-only, with their modes; deploying the
same file again restarts nothing; a changed file rolls the job over (history, rollback); an update whose health
check fails is reverted; `cube down --volumes` removes what the stack made. Faults: a worker or the manager killed
in the middle of a rollout leaves exactly one container per task, and the rollout completes. Bad files: one clear
line each, and nothing deployed."""

import os
import subprocess
import textwrap
import time

import pytest
from conftest import docker_ids, docker_inspect, remove_volumes, wait_for
from test_cluster_docker import TOKEN, Cluster

pytestmark = pytest.mark.docker


@pytest.fixture
def cluster(pyz, procs, tmp_path, busybox_image):
    c = Cluster(pyz, procs, tmp_path)
    yield c
    c.cleanup()
    remove_volumes(*c.workers)


def cube(cluster, *args, check: int | None = 0, cwd=None, env=None):
    """The CLI from the pyz, against this cluster's manager."""
    environ = {**os.environ, "CUBE_MANAGER": cluster.url, "CUBE_TOKEN": TOKEN, "CUBE_NO_MDNS": "1", **(env or {})}
    result = subprocess.run([cluster.pyz, *args], capture_output=True, text=True, env=environ, timeout=240, cwd=cwd)
    if check is not None:
        assert result.returncode == check, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stdout + result.stderr
    return result


# A database (a volume, a health command, a secret) and a web service that waits for it to be healthy; a config.
STACK = """
services:
  db:
    image: cube-busybox:latest
    command: ["sh", "-c", "test -s /run/secrets/db_password && echo up >> /data/log && nc -ll -p 5432 -e cat"]
    volumes: ["data:/data"]
    secrets: [db_password]
    healthcheck:
      test: ["CMD-SHELL", "echo ping | nc -w 1 127.0.0.1 5432"]
      interval: 1s
      retries: 3
  web:
    image: cube-busybox:latest
    command: ["sh", "-c", "cat /etc/web/site.conf && httpd -f -p 80 -h /www"]
    environment:
      GREETING: ${GREETING:-hello}
    configs:
      - source: site
        target: /etc/web/site.conf
    secrets:
      - source: db_password
        target: web_db_password
        mode: 0400
    depends_on:
      db:
        condition: service_healthy
    healthcheck:
      test: ["CMD-SHELL", "wget -q -O- http://127.0.0.1/ || exit 1"]
      interval: 1s
    deploy:
      replicas: 2
      update_config:
        parallelism: 1
        monitor: 1s
        failure_action: rollback
secrets:
  db_password:
    file: ./password.txt
configs:
  site:
    file: ./site.conf
volumes:
  data:
"""


def _stack_dir(tmp_path, text: str = STACK, name: str = "shop"):
    directory = tmp_path / name
    directory.mkdir(exist_ok=True)
    (directory / "compose.yaml").write_text(textwrap.dedent(text))
    (directory / "password.txt").write_text("s3cret\n")
    (directory / "site.conf").write_text("listen 80\n")
    return directory


def _containers(cluster, job: str) -> dict[str, str]:
    """task id -> container id of the job's running tasks."""
    return {t["id"]: t["container_id"] for t in cluster.client.get("/tasks", job=job) if t["state"] == "running"}


def _exec(container: str, script: str) -> str:
    done = subprocess.run(["docker", "exec", container, "sh", "-c", script], capture_output=True, text=True)
    return done.stdout + done.stderr


def _extra_copies(cluster, job: str) -> list[tuple[str, list[str]]]:
    """The job's tasks with more than one running container: (name, container ids)."""
    found = []
    for task in cluster.client.get("/tasks", job=job):
        running = docker_ids(f"label=cube.task_id={task['id']}", "status=running")
        if len(running) > 1:
            found.append((task["name"], running))
    return found


def _one_container_per_task(cluster, job: str) -> None:
    assert not _extra_copies(cluster, job)


def test_a_stack_deploys_in_order_updates_rolls_back_and_goes_down(cluster, tmp_path):
    directory = _stack_dir(tmp_path)
    started = time.monotonic()
    out = cube(cluster, "deploy", "-f", "compose.yaml", "--wait", cwd=directory)
    print(f"\ncube deploy --wait of db + 2 web: {time.monotonic() - started:.1f} s to healthy")
    assert "shop-db" in out.stdout and "create (2 tasks)" in out.stdout and "every job is healthy" in out.stdout

    # The web tasks started after the database was healthy (depends_on: service_healthy).
    db_tasks = _containers(cluster, "shop-db")
    db_healthy = min(
        e["time"] for e in cluster.client.get("/events") if e["task_id"] in db_tasks and "healthy" in e["message"]
    )
    webs = cluster.client.get("/tasks", job="shop-web")
    assert len(webs) == 2 and all(t["started_at"] >= db_healthy - 1.0 for t in webs), (db_healthy, webs)

    # Secrets and configs: there, read-only, with their modes.
    web = next(iter(_containers(cluster, "shop-web").values()))
    assert _exec(web, "cat /run/secrets/web_db_password").strip() == "s3cret"
    assert _exec(web, "ls -l /run/secrets/web_db_password").startswith("-r--------")
    assert "Read-only" in _exec(web, "echo x > /etc/web/site.conf")
    mounts = {m["Destination"]: m for m in docker_inspect(web)["Mounts"]}
    assert mounts["/etc/web/site.conf"]["RW"] is False and mounts["/run/secrets/web_db_password"]["RW"] is False

    # The same file again: nothing changes, nothing restarts.
    before = {**_containers(cluster, "shop-db"), **_containers(cluster, "shop-web")}
    again = cube(cluster, "deploy", "-f", "compose.yaml", cwd=directory)
    assert again.stdout.count("unchanged") == 2, again.stdout
    time.sleep(2)
    assert {**_containers(cluster, "shop-db"), **_containers(cluster, "shop-web")} == before

    # A changed variable: a rolling update of web only, one task at a time; the database is untouched.
    (directory / ".env").write_text("GREETING=bonjour\n")
    plan = cube(cluster, "deploy", "-f", "compose.yaml", "--dry-run", cwd=directory)
    assert "shop-web" in plan.stdout and "update: task.env" in plan.stdout and "dry run" in plan.stdout
    assert cluster.client.get("/jobs/shop-web")["version"] == 1  # a dry run changes nothing
    cube(cluster, "deploy", "-f", "compose.yaml", "--wait", cwd=directory)
    web_job = cluster.client.get("/jobs/shop-web")
    assert web_job["version"] == 2 and web_job["task"]["env"]["GREETING"] == "bonjour"
    assert _containers(cluster, "shop-db") == {k: v for k, v in before.items() if k in _containers(cluster, "shop-db")}
    _one_container_per_task(cluster, "shop-web")
    history = cube(cluster, "history", "shop-web").stdout
    assert "successful" in history and history.count("cube-busybox:latest") == 2

    back = cube(cluster, "rollback", "shop-web", "--to", "1", "--wait")
    assert "version 3" in back.stdout
    assert cluster.client.get("/jobs/shop-web")["task"]["env"]["GREETING"] == "hello"
    status = cube(cluster, "status", "shop").stdout
    assert "shop-web" in status and "shop-db" in status

    volume = cluster.client.get("/jobs/shop-db")["task"]["volumes"][0]["source"]
    down = cube(cluster, "down", "shop", "--volumes")
    assert f"removed volumes: {volume}" in down.stdout
    assert cluster.client.get("/stacks") == []
    assert subprocess.run(["docker", "volume", "inspect", volume], capture_output=True).returncode != 0


def test_an_update_that_is_not_healthy_is_reverted(cluster, tmp_path):
    directory = _stack_dir(tmp_path)
    cube(cluster, "deploy", "-f", "compose.yaml", "--wait", cwd=directory)
    broken = STACK.replace("wget -q -O- http://127.0.0.1/ || exit 1", "exit 1")
    _stack_dir(tmp_path, broken)
    out = cube(cluster, "deploy", "-f", "compose.yaml", "--wait", "--timeout", "200", cwd=directory, check=1)
    assert "reverted" in out.stderr or "failed" in out.stderr, out.stderr
    job = wait_for(
        lambda: (j := cluster.client.get("/jobs/shop-web"))["deployment"]["status"] == "successful" and j, timeout=120
    )
    assert job["version"] == 3 and job["task"]["health"]["command"][1].startswith("wget")
    _one_container_per_task(cluster, "shop-web")


@pytest.mark.parametrize("who", ["worker", "manager"])
def test_a_rollout_cut_by_a_kill_completes_with_one_container_per_task(cluster, tmp_path, who):
    directory = _stack_dir(tmp_path)
    cube(cluster, "deploy", "-f", "compose.yaml", "--wait", cwd=directory)
    (directory / ".env").write_text("GREETING=hola\n")
    cube(cluster, "deploy", "-f", "compose.yaml", cwd=directory)
    time.sleep(1.0)  # the first replacement is under way
    node = None
    if who == "manager":
        cluster.manager.kill()
        cluster.start_manager()
    else:
        node = cluster.client.get("/tasks", job="shop-web")[0]["node"]
        cluster.workers[node]["proc"].kill()  # its containers run on (a node cut off keeps them) until it is back
    job = wait_for(
        lambda: (j := cluster.client.get("/jobs/shop-web"))["deployment"]["status"] == "successful" and j,
        timeout=120,
        interval=1.0,
    )
    assert job["version"] == 2
    live = [t for t in cluster.client.get("/tasks", job="shop-web") if t["desired"] == "run"]
    assert sorted(t["name"] for t in live) == ["shop-web-1", "shop-web-2"], live
    assert all(t["version"] == 2 for t in live)
    if node is not None:  # the worker comes back: it stops what was moved away meanwhile
        cluster.start_worker(node)
    wait_for(lambda: not _extra_copies(cluster, "shop-web"), timeout=60, interval=1.0)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("services:\n  web:\n    image: [unclosed\n", "compose.yaml"),
        ("services:\n  web:\n    image: x\n    depends_on: [nope]\n", "unknown service nope"),
        (
            "services:\n  a:\n    image: x\n    depends_on: [b]\n  b:\n    image: x\n    depends_on: [a]\n",
            "dependency cycle",
        ),
        ("services:\n  web:\n    image: ${IMAGE:?set IMAGE to the web image}\n", "set IMAGE to the web image"),
        (
            "services:\n  a:\n    image: x\n    ports: ['8000-8010:8000-8010']\n"
            "  b:\n    image: x\n    ports: ['8005:80']\n",
            "8005",
        ),
        ("services:\n  web:\n    image: x\n    secrets: [pw]\nsecrets:\n  pw:\n    file: ./nope.txt\n", "nope.txt"),
    ],
)
def test_a_bad_file_is_one_clear_line_and_deploys_nothing(cluster, tmp_path, text, words):
    directory = tmp_path / "bad"
    directory.mkdir()
    (directory / "compose.yaml").write_text(text)
    out = cube(cluster, "deploy", "-f", "compose.yaml", cwd=directory, check=1)
    assert words in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert cluster.client.get("/stacks") == [] and cluster.client.get("/jobs") == []
