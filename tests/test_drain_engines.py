"""Node drain on real parts (issue 13): a manager and three workers as pyz processes, each worker on a host
(network namespace) with its own Docker engine. A client polls the job's published port through another node's
routing mesh, a new connection each time, while `cube node drain` (the pyz's CLI) takes out the node running one
of three replicas: every request must be answered. Then the faults: the manager killed (kill -9) mid-drain goes on
with it after its restart, and every task ends with exactly one copy, none on the drained node."""

from __future__ import annotations

import pytest
from conftest import wait_for
from test_faults import IMAGE
from test_network_engines import NetCluster
from test_rolling_engines import Poller, _deploy, _settled

pytestmark = [pytest.mark.docker, pytest.mark.netns]


@pytest.fixture
def lan3(engine_lan, pyz, tmp_path):
    """The manager's host and three workers' hosts."""
    return NetCluster(engine_lan(4), pyz, tmp_path)


def _one_replica_node(c) -> str:
    tasks = [t for t in c.client.get("/jobs/web")["tasks"] if t["desired"] == "run"]
    nodes = [t["node"] for t in tasks]
    return next(n for n in sorted(set(nodes)) if nodes.count(n) == 1)


def _settled_off(c, node: str) -> list[dict]:
    """The job's three tasks serve on other nodes, and the drain is over."""

    def done():
        tasks = [t for t in c.client.get("/tasks", job="web") if t["desired"] == "run"]
        drained = c.node(node)["eligibility"] == "ineligible"
        ok = len(tasks) == 3 and all(t["state"] == "running" and t["node"] != node for t in tasks)
        return drained and ok and tasks

    return wait_for(done, timeout=120, interval=0.5)


def _one_copy_each(c, tasks: list[dict], drained: str) -> None:
    wait_for(lambda: all(c.copies(t["id"]) == 1 for t in tasks), timeout=60, interval=1.0)
    for task in c.client.get("/tasks", job="web"):
        if task["desired"] == "stop":
            wait_for(lambda: c.copies(task["id"]) == 0, timeout=60, interval=1.0)
    on_drained = c.lan.docker(c.host(drained), "ps", "-q", "--filter", "label=cube.task").stdout.split()
    assert on_drained == [], f"containers left on the drained node {drained}: {on_drained}"


def test_draining_a_node_under_load_fails_no_request(lan3):
    c = lan3
    _deploy(c, "v1", 3)
    _settled(c, 1)
    victim = _one_replica_node(c)
    entry = next(h for h in c.worker_hosts if c.names[h.name] != victim)
    url = f"http://{entry.ip}:8080/"
    wait_for(lambda: c.fetch(c.manager_host, url).startswith("v1-"), timeout=30)
    poller = Poller(c, c.manager_host, url)
    done = c.cli("node", "drain", victim)
    answers = poller.stop()
    print(f"\n$ cube node drain {victim}\n{done.stdout}{done.stderr}")
    print(f"drain of {victim} (one of three replicas): {len(answers)} requests, {len(poller.failed)} failed")
    assert done.returncode == 0, done.stderr
    assert f"node {victim} draining: 1 task to move" in done.stdout
    assert f"node {victim} drained: nothing runs there" in done.stdout
    assert not poller.failed, poller.failed[:5]
    tasks = _settled_off(c, victim)
    _one_copy_each(c, tasks, victim)
    # Ineligible until told: a new job of three spreads over the other two nodes only.
    made = c.client.post("/jobs", {"name": "more", "count": 3, "task": {"image": IMAGE, "command": ["sleep", "600"]}})
    assert made["count"] == 3
    wait_for(lambda: c.client.get("/jobs/more")["running"] == 3, timeout=60)
    assert victim not in {t["node"] for t in c.client.get("/tasks", job="more")}
    back = c.cli("node", "eligible", victim)
    assert back.returncode == 0 and f"node {victim} is eligible" in back.stdout, back.stderr
    assert c.node(victim)["eligibility"] == "eligible"


def test_a_manager_killed_mid_drain_finishes_it_after_its_restart(lan3):
    c = lan3
    _deploy(c, "v1", 3, min_healthy_time=4)  # a drain step that lasts long enough to kill the manager within it
    _settled(c, 1)
    victim = _one_replica_node(c)
    c.client.post(f"/nodes/{victim}/drain", {})
    # The successor is placed (a fourth task desired to run): the old copy waits for it to be healthy.
    wait_for(lambda: len([t for t in c.client.get("/tasks", job="web") if t["desired"] == "run"]) == 4, timeout=60)
    c.kill_manager()
    c.start_manager()
    wait_for(lambda: c._ready() == 3, timeout=60, interval=0.5)
    tasks = _settled_off(c, victim)
    _one_copy_each(c, tasks, victim)
    print(f"\nmanager killed mid-drain of {victim}: drained after its restart, one copy per task")
