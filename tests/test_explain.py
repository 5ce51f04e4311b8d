"""`cube explain` (cube/manager/explain.py) over a simulated cluster: why a task runs where it runs (its placement
record, with the scores of the feasible nodes), why one waits (each node's rejection, counted by kind), and what
a job's tasks wait for; the API's routes and their 404s."""

import pytest
from harness import ClusterHarness
from test_api import call, error_of

from cube.cluster.api import manager_app
from cube.core.errors import Conflict, NotFound


@pytest.fixture
def c():
    harness = ClusterHarness(["n1", "n2", "n3"], memory=1 << 30)
    yield harness
    harness.close()


def test_a_running_task_says_where_and_why(c):
    first = c.submit({"image": "app", "memory": "256m"})
    c.settle()
    assert "tied with 2 of 3 feasible (ties go by a hash" in c.manager.explain_task(first["id"])["summary"]
    task = c.submit({"image": "app", "memory": "256m"})
    c.settle()
    out = c.manager.explain_task(task["id"])
    node = c.task(task["id"])["node"]
    assert out["state"] == "running" and out["node"] == node
    assert out["summary"].startswith(f"running on {node}: placed by epvm with score ")
    assert "tied with 1 of 3 feasible" in out["summary"]  # the node of the first task scores lower
    assert set(out["placed"]["scores"]) == {"n1", "n2", "n3"}
    assert all(row["feasible"] for row in out["nodes"]) and len(out["nodes"]) == 3


def test_a_pending_task_lists_each_node_with_its_reason_counted_by_kind(c):
    c.manager.drain_node("n3")
    task = c.submit({"image": "big", "memory": "2g"})
    c.settle()
    out = c.manager.explain_task(task["id"])
    assert out["state"] == "pending"
    assert out["counts"] == {"insufficient memory": 2, "node ineligible": 1}
    assert out["summary"] == "pending: no node fits: 2 insufficient memory, 1 node ineligible"
    rows = {row["name"]: row for row in out["nodes"]}
    assert rows["n3"]["kind"] == "node ineligible" and rows["n3"]["eligibility"] in ("draining", "ineligible")
    assert "needs 2 GiB" in rows["n1"]["reason"]


def test_a_job_says_what_each_task_waits_for(c):
    c.manager.submit_job({"name": "db", "count": 1, "task": {"image": "db", "memory": "2g"}})
    c.manager.submit_job(
        {"name": "web", "count": 2, "task": {"image": "app"}, "depends_on": [{"job": "db", "condition": "healthy"}]}
    )
    c.settle()
    web = c.manager.explain_job("web")
    assert [t["why"] for t in web["tasks"]] == ["waiting for job db to be healthy"] * 2
    assert web["summary"].startswith("job web: 2 pending; web-1 waits: waiting for job db to be healthy")
    db = c.manager.explain_job("db")
    assert db["counts"] == {"insufficient memory": 3}
    assert "now: no node fits: 3 insufficient memory" in db["summary"]


def test_routes_answer_and_unknown_names_are_404(c):
    app = manager_app(c.manager, None, None, None)
    task = c.submit({"image": "app"})
    c.manager.submit_job({"name": "web", "count": 1, "task": {"image": "app"}})
    c.settle()
    assert call(app, "GET", f"/tasks/{task['id']}/explain", token=None).json()["state"] == "running"
    assert call(app, "GET", "/jobs/web/explain", token=None).json()["tasks"][0]["name"] == "web-1"
    assert "no job 'nope'" in error_of(call(app, "GET", "/jobs/nope/explain", token=None), 404)
    assert error_of(call(app, "GET", "/tasks/nope/explain", token=None), 404)
    drained = call(app, "POST", "/nodes/n1/drain", {"deadline": 60}, token=None).json()
    assert drained["eligibility"] in ("draining", "ineligible") and drained["name"] == "n1"
    assert "deadline" in error_of(call(app, "POST", "/nodes/n1/drain", {"deadline": "soon"}, token=None), 400)
    assert "deadline" in error_of(call(app, "POST", "/nodes/n1/drain", {"until": 5}, token=None), 400)
    assert "no node named 'n9'" in error_of(call(app, "POST", "/nodes/n9/drain", token=None), 404)
    assert call(app, "POST", "/nodes/n1/eligible", token=None).json()["eligibility"] == "eligible"
    used = call(app, "GET", "/nodes", token=None).json()[0]["used"]  # the machine's own figures, not stored
    assert used["memory"] > 0 and used["cpu"] >= 0 and c.store.get("nodes", "n1").get("used") is None
    with pytest.raises(NotFound):
        c.manager.explain_task("missing")


def test_a_restart_replaces_the_container_on_its_node_without_counting_against_the_policy(c):
    task = c.submit({"image": "app", "restart": {"name": "on-failure", "max_restarts": 0}})
    c.settle()
    before = c.task(task["id"])
    node = before["node"]
    first = before["container_id"]
    c.manager.restart_task(task["id"])
    c.settle()
    after = c.task(task["id"])
    assert after["state"] == "running" and after["node"] == node and after["container_id"] != first
    assert after["restarts"] == 0 and c.running_copies(task["id"]) == 1
    running = [i for i in c.runtimes[node].containers.values() if i.running]
    assert len(running) == 1
    c.manager.stop_task(task["id"])
    c.settle()
    with pytest.raises(Conflict, match="nothing to restart"):
        c.manager.restart_task(task["id"])
