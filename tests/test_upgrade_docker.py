"""`cube upgrade` for real: a manager and two workers, each running from a pyz file of its own (the built one) under
a loop that stands in for systemd (a process that exits 75 is started again, as the units' RestartForceExitStatus
does), with containers running on the real Docker engine. `cube upgrade --pyz NEW` run from the new pyz replaces the
workers one at a time, then the manager; the containers keep their ids and start times (adopted, never restarted),
every node reports the new version, and each replaced file is kept as .old."""

import json
import os
import shutil
import subprocess
import uuid

import pytest
from conftest import cluster_client, docker_ids, docker_inspect, free_port, kill_started, wait_for
from repack import repack

pytestmark = pytest.mark.docker
TOKEN = "upgrade-docker-token"
NEW = "9.9.9-upgrade"
# systemd's part: start the service again when it exits 75 (`cube upgrade`), stop when it exits otherwise.
SUPERVISE = 'while :; do "$@"; rc=$?; [ "$rc" -eq 75 ] || exit "$rc"; echo "restarting on exit 75"; done'


def supervised(procs, tmp, name, argv):
    env = {"SHIV_ROOT": str(tmp / "shiv")}
    return procs(["sh", "-c", SUPERVISE, "sh", *argv], tmp / f"{name}.log", env)


def test_upgrade_replaces_workers_one_at_a_time_then_the_manager_and_containers_keep_running(
    pyz, procs, tmp_path, busybox_image
):
    tag = uuid.uuid4().hex[:6]
    new = repack(pyz, str(tmp_path / "new.pyz"), NEW)
    workers = {f"up{i}-{tag}": free_port() for i in (1, 2)}
    manager_port = free_port()
    url = f"https://127.0.0.1:{manager_port}"
    try:
        own = {}
        for name in [*workers, "manager"]:
            os.makedirs(tmp_path / name / "bin")
            own[name] = str(shutil.copy(pyz, tmp_path / name / "bin" / "cube"))
        manager = supervised(
            procs,
            tmp_path,
            "manager",
            [own["manager"], "manager", "--port", str(manager_port), "--data", str(tmp_path / "manager" / "data")]
            + ["--token", TOKEN, "--no-mdns", "--node-timeout", "5", "--workers"]
            + [",".join(f"127.0.0.1:{port}" for port in workers.values())],
        )
        manager.wait_http(url)
        for name, port in workers.items():
            supervised(
                procs,
                tmp_path,
                name,
                [own[name], "worker", "--port", str(port), "--name", name, "--data", str(tmp_path / name / "data")]
                + ["--token", TOKEN, "--manager", url, "--no-mdns", "--stop-timeout", "1"],
            ).wait_http(f"https://127.0.0.1:{port}")
        client = cluster_client(url, TOKEN, manager_data=tmp_path / "manager" / "data")
        wait_for(lambda: len([n for n in client.get("/nodes") if n["state"] == "ready"]) == 2, timeout=30)
        client.post(
            "/jobs", {"name": f"up-{tag}", "count": 2, "task": {"image": busybox_image, "command": ["sleep", "300"]}}
        )
        wait_for(lambda: client.get(f"/jobs/up-{tag}")["running"] == 2, timeout=30)
        containers = {
            cid: docker_inspect(cid)["State"]["StartedAt"]
            for name in workers
            for cid in docker_ids(f"label=cube.node={name}", "status=running")
        }
        assert len(containers) == 2

        env = {**os.environ, "CUBE_NO_MDNS": "1", "SHIV_ROOT": str(tmp_path / "shiv")}
        done = subprocess.run(
            [new, "upgrade", "--pyz", new, "--manager", url, "--token", TOKEN],
            capture_output=True,
            text=True,
            timeout=180,
            env=env,
            cwd=tmp_path / "manager" / "data",
        )
        print(done.stdout, done.stderr)
        assert done.returncode == 0, done.stdout + done.stderr
        lines = done.stdout.splitlines()
        first, second = sorted(workers)
        # One at a time: the second worker is sent its pyz only once the first is back at the new version.
        order = [line.split(" (")[0] for line in lines if line.startswith(("up1-", "up2-"))]
        assert order.index(f"{first}: upgraded") < order.index(f"{second}: restarting"), lines
        assert lines[-4].startswith(f"upgrade to cube {NEW}: successful: every worker runs cube {NEW}"), lines

        assert {n["name"]: n["version"] for n in client.get("/nodes")} == dict.fromkeys(workers, NEW)
        assert client.health()["version"] == NEW
        for name, path in own.items():
            assert open(path, "rb").read() == open(new, "rb").read(), name
            assert open(path + ".old", "rb").read() == open(pyz, "rb").read(), name
            log = (tmp_path / f"{name}.log").read_text()
            assert log.count("restarting on exit 75") == 1, (name, log[-2000:])
        after = {cid: docker_inspect(cid)["State"]["StartedAt"] for cid in containers}
        assert after == containers, "the containers were adopted, not restarted"
        assert client.get(f"/jobs/up-{tag}")["running"] == 2
        status = json.loads(
            subprocess.run(
                [new, "upgrade", "--status", "--json", "--manager", url, "--token", TOKEN],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
            ).stdout
        )
        assert status["status"] == "successful" and status["manager_now"] == NEW
    finally:
        kill_started()
        for name in workers:
            ids = docker_ids(f"label=cube.node={name}")
            if ids:
                subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, timeout=60)
