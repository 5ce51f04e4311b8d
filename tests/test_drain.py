"""Node drain and eligibility (cube/manager/drain.py) over a simulated cluster (tests/harness.py: the real manager
and workers on fake runtimes, a test clock): the pure plan's moves, no downtime, deadlines, volumes, a manager
restart mid-drain, and the API's answers to bad input."""

import pytest
from harness import ClusterHarness

from cube.core.errors import BadRequest, Conflict, NotFound
from cube.core.jobs import Job, UpdatePolicy
from cube.core.model import Observed, State, Task, TaskSpec
from cube.manager import rollout


def _task(name: str, node: str) -> Task:
    task = Task(id=f"{name}@{node}", spec=TaskSpec("img", name=name), job="web", version=1)
    task.node, task.generation, task.observed = node, 1, Observed(node, 1, State.RUNNING)
    return task


def test_the_plan_starts_a_successor_first_and_stops_the_leaving_task_once_it_is_healthy():
    job = Job("web", TaskSpec("img"), count=2, version=1, update=UpdatePolicy(max_parallel=1, min_healthy_time=5))
    a, b = _task("web-1", "n1"), _task("web-2", "n1")
    first = rollout.plan(job, [a, b], 0.0, {a.id: 0.0, b.id: 0.0}, job.update, frozenset({a.id, b.id}))
    assert (first.create, first.stop) == ([1], [])  # one at a time (max_parallel 1), nothing stopped yet
    successor = _task("web-1", "n2")
    tasks = [a, b, successor]
    waiting = rollout.plan(job, tasks, 3.0, {successor.id: 1.0}, job.update, frozenset({a.id, b.id}))
    assert (waiting.create, waiting.stop) == ([], [])  # not healthy for 5 s yet: web-2 waits too
    moved = rollout.plan(job, tasks, 7.0, {successor.id: 1.0}, job.update, frozenset({a.id, b.id}))
    assert moved.create == [2] and [t for t, _ in moved.stop] == [a.id]
    assert "serves in its place" in moved.stop[0][1]


def test_batch_tasks_are_not_moved():
    job = Job("etl", TaskSpec("img"), count=1, type="batch", version=1)
    task = _task("etl-1", "n1")
    task.job = "etl"
    decided = rollout.plan(job, [task], 0.0, {}, job.update, frozenset({task.id}))
    assert (decided.create, decided.stop) == ([], [])


@pytest.fixture
def c():
    harness = ClusterHarness(["n1", "n2", "n3"])
    yield harness
    harness.close()


def _job(c, name="web", count=3, **task):
    c.manager.submit_job(
        {
            "name": name,
            "count": count,
            "task": {"image": "app:1", **task},
            "update": {"min_healthy_time": 2, "healthy_deadline": 30},
        }
    )
    c.settle()


def _running_containers(c, node: str) -> int:
    return sum(1 for info in c.runtimes[node].containers.values() if info.running)


def _serving(c, job="web") -> list[dict]:
    return [
        v
        for v in c.manager.task_views(job=job)
        if v["state"] == "running" and v["desired"] == "run" and v["health"] in ("", "healthy")
    ]


def test_draining_a_node_moves_its_tasks_with_none_lost_and_takes_no_new_ones(c):
    _job(c, health={"command": ["CMD", "true"], "interval": 1})
    on_n1 = [v for v in _serving(c) if v["node"] == "n1"]
    assert on_n1, "the spread put a task on n1"
    node = c.manager.drain_node("n1")
    assert node.eligibility == "draining"

    def check():  # never fewer than three serving; never more than one copy per name serving after the move
        assert len(_serving(c)) >= 3, _serving(c)

    c.run_for(20.0, check=check)
    assert all(v["node"] != "n1" for v in _serving(c)) and len(_serving(c)) == 3
    assert sorted(v["name"] for v in _serving(c)) == ["web-1", "web-2", "web-3"]
    for old in on_n1:  # each stopped only after its successor had served for min_healthy_time (2 s) since created
        stopped = next(e["time"] for e in c.task(old["id"])["events"] if "serves in its place" in e["message"])
        successor = next(v for v in _serving(c) if v["name"] == old["name"])
        assert stopped - successor["created_at"] >= 2.0, (stopped, successor["created_at"])
    assert _running_containers(c, "n1") == 0
    view = c.manager.node_view("n1")
    assert (view["eligibility"], view["drain"]) == ("ineligible", None)
    _job(c, "more", count=4)
    assert all(v["node"] != "n1" for v in _serving(c, "more"))
    pending = c.manager.submit_task({"image": "x", "constraints": ["hostname==n1"]})[0]
    c.settle()
    assert "node ineligible" in c.task(pending.id)["note"] or "ineligible" in c.task(pending.id)["reason"]

    c.manager.make_eligible("n1")
    c.settle()
    assert c.task(pending.id)["node"] == "n1"


def test_a_deadline_stops_what_could_not_move(c):
    # Host port 80 (mode host) on every node: a successor fits no other node, so the copy on n1 stays to the deadline.
    _job(c, count=3, ports=["80:80/host"])
    assert len(_serving(c)) == 3
    c.manager.drain_node("n1", deadline=5)
    c.run_for(3.0)
    assert any(v["node"] == "n1" for v in _serving(c)), "before its deadline the task stays"
    c.run_for(5.0)
    assert all(v["node"] != "n1" for v in _serving(c))
    assert _running_containers(c, "n1") == 0
    assert c.manager.node_view("n1")["eligibility"] == "ineligible"


def test_a_task_without_a_job_moves_at_once(c):
    task = c.manager.submit_task({"image": "solo", "constraints": ["hostname!=n3"]})[0]
    c.settle()
    first = c.task(task.id)["node"]
    c.manager.drain_node(first)
    c.settle()
    now = c.task(task.id)
    assert now["node"] not in ("", first) and now["state"] == "running"
    assert c.running_copies(task.id) == 1


def test_volumes_refuse_a_drain_until_forced(c):
    _job(c, "db", count=1, volumes=["pgdata:/var/lib/db"])
    home = _serving(c, "db")[0]["node"]
    with pytest.raises(Conflict, match="volumes of db-1.*--force"):
        c.manager.drain_node(home)
    assert c.manager.node_view(home)["eligibility"] == "eligible"  # refused: nothing changed
    c.manager.drain_node(home, force=True)
    c.settle()
    assert _serving(c, "db") == []
    waiting = [v for v in c.manager.task_views(job="db") if v["desired"] == "run"]
    assert len(waiting) == 1 and waiting[0]["state"] == "pending"
    c.manager.make_eligible(home)
    c.settle()
    assert [v["node"] for v in _serving(c, "db")] == [home]


def test_a_manager_restarted_mid_drain_finishes_it(c):
    _job(c)
    c.manager.drain_node("n2")
    c.step(0.5)
    c.restart_manager()
    assert c.manager.node_view("n2")["eligibility"] == "draining"
    c.run_for(20.0, check=lambda: len(_serving(c)) >= 3 or pytest.fail(f"fewer than 3 serving: {_serving(c)}"))
    assert all(v["node"] != "n2" for v in _serving(c)) and len(_serving(c)) == 3
    assert c.manager.node_view("n2")["eligibility"] == "ineligible"


def test_bad_input_is_refused_naming_the_field(c):
    with pytest.raises(NotFound, match="no node named 'nope'"):
        c.manager.drain_node("nope")
    for bad in (-1, "5m", True, 10**9):
        with pytest.raises(BadRequest, match="deadline"):
            c.manager.drain_node("n1", deadline=bad)
    with pytest.raises(BadRequest, match="force"):
        c.manager.drain_node("n1", force="yes")
    assert c.manager.node_view("n1")["eligibility"] == "eligible"
