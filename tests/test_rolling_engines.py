"""Rolling updates under load through the routing mesh (issue 12), on real parts: a manager and three workers as
pyz processes, each worker on a host (network namespace) with its own Docker engine. A client outside the
containers polls the job's published port on one node, a new connection each time, while the job is updated:
a job of one task (start-first: never down) and a job of three (one at a time), and an update whose health
check fails (reverted: the old replicas keep serving). Every request must be answered."""

from __future__ import annotations

import threading

import pytest
from conftest import wait_for
from test_faults import IMAGE
from test_network_engines import NetCluster

pytestmark = [pytest.mark.docker, pytest.mark.netns]

# httpd whose page names its container and the version of the job it runs (GREETING).
SERVER = ["sh", "-c", "echo $GREETING-$HOSTNAME > /www/index.html && exec httpd -f -p 8000 -h /www"]
HEALTH = {"command": ["CMD-SHELL", "wget -q -O- http://127.0.0.1:8000/ || exit 1"], "interval": 0.5, "retries": 2}


@pytest.fixture
def cluster3(engine_lan, pyz, tmp_path):
    return NetCluster(engine_lan(4), pyz, tmp_path)


class Poller:
    """Asks `url` from `host`, a new connection each time, until stopped; keeps every answer."""

    def __init__(self, cluster, host, url: str):
        self.cluster, self.host, self.url = cluster, host, url
        self.answers: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.answers.append(self.cluster.fetch(self.host, self.url).strip() or "(no answer)")
            except Exception as error:  # a hung request (exec's timeout) counts as a failure
                self.answers.append(f"(failed: {error})")

    def stop(self) -> list[str]:
        self._stop.set()
        self._thread.join(timeout=30)
        return self.answers

    @property
    def failed(self) -> list[str]:
        return [a for a in self.answers if a.startswith("(")]


def _deploy(cluster, greeting: str, count: int, health=HEALTH, **update) -> dict:
    body = {
        "name": "web",
        "count": count,
        "task": {"image": IMAGE, "command": SERVER, "env": {"GREETING": greeting}, "ports": ["8080:8000"]},
        "update": {"min_healthy_time": 1, "healthy_deadline": 60, **update},
    }
    body["task"]["health"] = health
    return cluster.client.post("/jobs", body)


def _settled(cluster, version: int) -> dict:
    return wait_for(
        lambda: (
            (j := cluster.client.get("/jobs/web"))["version"] >= version
            and j["deployment"]["status"] == "successful"
            and j
        ),
        timeout=120,
        interval=0.5,
    )


@pytest.mark.parametrize("count", [1, 3])
def test_an_update_under_load_fails_no_request(cluster3, count):
    c = cluster3
    _deploy(c, "v1", count)
    _settled(c, 1)
    entry = c.worker_hosts[0]
    url = f"http://{entry.ip}:8080/"
    wait_for(lambda: c.fetch(c.manager_host, url).startswith("v1-"), timeout=30)
    poller = Poller(c, c.manager_host, url)
    answer = _deploy(c, "v2", count, max_parallel=1)
    assert answer["outcome"] == "updated" and answer["version"] == 2
    job = _settled(c, 2)
    wait_for(lambda: poller.answers and poller.answers[-1].startswith("v2-"), timeout=30)
    answers = poller.stop()
    versions = sorted({a.split("-", 1)[0] for a in answers})
    print(f"\njob of {count}: {len(answers)} requests during the update, {len(poller.failed)} failed, saw {versions}")
    assert not poller.failed, poller.failed[:5]
    assert versions == ["v1", "v2"], versions
    assert all(t["version"] == 2 for t in job["tasks"] if t["desired"] == "run")
    assert len([t for t in job["tasks"] if t["desired"] == "run"]) == count


def test_an_update_whose_health_check_fails_is_reverted_while_the_old_version_serves(cluster3):
    c = cluster3
    _deploy(c, "v1", 2)
    _settled(c, 1)
    url = f"http://{c.worker_hosts[1].ip}:8080/"
    wait_for(lambda: c.fetch(c.manager_host, url).startswith("v1-"), timeout=30)
    poller = Poller(c, c.manager_host, url)
    broken = {"command": ["CMD-SHELL", "exit 1"], "interval": 0.5, "retries": 1}
    _deploy(c, "v2", 2, health=broken, auto_revert=True, max_parallel=1)
    job = _settled(c, 3)
    answers = poller.stop()
    print(f"\nfailed update: {len(answers)} requests, {len(poller.failed)} failed; now version {job['version']}")
    assert job["task"]["env"]["GREETING"] == "v1" and job["deployment"]["policy"] == "rollback"
    assert [v["status"] for v in c.client.get("/jobs/web/history")] == ["successful", "failed", "successful"]
    assert not [a for a in answers if a.startswith("v2-")], "the broken version never took traffic"
    assert not poller.failed, poller.failed[:5]


def test_an_engine_killed_mid_rollout_leaves_one_copy_of_each_task(cluster3):
    """kill -9 of a node's dockerd while a job of three rolls over: the rollout completes elsewhere, and once the
    engine is back each task of the job runs exactly once across the nodes."""
    c = cluster3
    _deploy(c, "v1", 3)
    _settled(c, 1)
    _deploy(c, "v2", 3, max_parallel=1)
    wait_for(lambda: c.client.get("/jobs/web")["deployment"]["at_version"] >= 1, timeout=60, interval=0.2)
    old = next(t for t in c.client.get("/jobs/web")["tasks"] if t["version"] == 1 and t["desired"] == "run")
    victim = c.host(old["node"])
    c.lan.kill_engine(victim)
    job = _settled(c, 2)
    c.lan.start_engine(victim)
    live = [t for t in c.client.get("/jobs/web")["tasks"] if t["desired"] == "run"]
    assert len(live) == 3 and all(t["version"] == 2 for t in live), live
    wait_for(lambda: all(c.copies(t["id"]) == 1 for t in live), timeout=60, interval=1.0)
    for task in c.client.get("/tasks", job="web"):
        if task["desired"] == "stop":
            wait_for(lambda: c.copies(task["id"]) == 0, timeout=60, interval=1.0)
    print(f"\nengine of {old['node']} killed mid-rollout: version {job['version']} healthy, one copy per task")
