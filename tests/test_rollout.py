"""Rolling updates: the pure plan (cube/manager/rollout.py) and the manager driving it over a simulated cluster
(tests/harness.py: real manager and workers, fake runtimes, a test clock)."""

import pytest
from harness import ClusterHarness

from cube.core.jobs import Job, UpdatePolicy
from cube.core.model import Desired, Observed, State, Task, TaskSpec
from cube.manager import rollout


def _task(name: str, version: int, state=State.RUNNING, created: float = 0.0) -> Task:
    task = Task(id=name.replace("-", "") + f"v{version}", spec=TaskSpec("img", name=name), job="web")
    task.version, task.node, task.generation, task.created_at = version, "n1", 1, created
    task.observed = Observed("n1", 1, state)
    return task


def _job(count: int, version: int, **policy) -> Job:
    return Job("web", TaskSpec("img"), count=count, version=version, update=UpdatePolicy.parse(policy or None))


def test_stop_first_replaces_one_at_a_time_and_waits_for_health():
    job = _job(3, 2, max_parallel=1, min_healthy_time=5)
    old = [_task(f"web-{i}", 1) for i in (1, 2, 3)]
    first = rollout.plan(job, old, 100.0, {}, job.update)
    assert first.status == "running" and len(first.stop) == 1 and first.create == [1]
    replaced = next(t for t in old if t.id == first.stop[0][0])
    assert replaced.name == "web-1"
    replaced.desired = Desired.STOP
    new = _task("web-1", 2, created=100.0)
    tasks = [*old, new]
    # The new task runs but has not served for min_healthy_time: nothing more moves.
    waiting = rollout.plan(job, tasks, 102.0, {new.id: 100.0}, job.update)
    assert (waiting.stop, waiting.create) == ([], [])
    moving = rollout.plan(job, tasks, 106.0, {new.id: 100.0}, job.update)
    assert [t for t, _ in moving.stop] == [old[1].id] and moving.create == [2]


def test_start_first_keeps_the_old_task_until_the_new_one_is_healthy():
    job = _job(1, 2, min_healthy_time=5)  # a job of one: start-first unless told otherwise
    old = _task("web-1", 1)
    start = rollout.plan(job, [old], 10.0, {old.id: 0.0}, job.update)
    assert (start.stop, start.create) == ([], [1])
    new = _task("web-1", 2, created=10.0)
    assert rollout.plan(job, [old, new], 12.0, {old.id: 0.0, new.id: 11.0}, job.update).stop == []
    done = rollout.plan(job, [old, new], 17.0, {old.id: 0.0, new.id: 11.0}, job.update)
    assert done.stop == [(old.id, "replaced by version 2")] and done.create == []


def test_a_new_task_late_or_failed_fails_the_rollout():
    job = _job(2, 2, healthy_deadline=30, min_healthy_time=1)
    old = [_task("web-1", 1)]
    late = _task("web-2", 2, state=State.RUNNING, created=0.0)
    failed = rollout.plan(job, [*old, late], 31.0, {}, job.update)
    assert failed.status == "failed" and "not healthy within 30 s" in failed.reason
    assert (failed.stop, failed.create) == ([], [])


def test_only_the_count_changes_only_scales():
    job = _job(1, 1)
    tasks = [_task("web-1", 1), _task("web-2", 1)]
    down = rollout.plan(job, tasks, 0.0, {}, job.update)
    assert [t for t, _ in down.stop] == [tasks[1].id] and down.create == []
    up = rollout.plan(_job(4, 1), tasks, 0.0, {}, job.update)
    assert up.create == [3, 4] and up.stop == []


@pytest.fixture
def c():
    harness = ClusterHarness(["n1", "n2"])
    yield harness
    harness.close()


def _deploy(c, image: str, count: int, **update) -> dict:
    job, outcome = c.manager.submit_job(
        {
            "name": "web",
            "count": count,
            "task": {"image": image, "health": {"command": ["CMD", "true"], "interval": 1}},
            "update": {"min_healthy_time": 2, "healthy_deadline": 20, **update},
        }
    )
    return {"outcome": outcome, **c.manager.job_detail("web")}


def _serving(c) -> list[str]:
    return [
        v["image"] for v in c.manager.task_views(job="web") if v["state"] == "running" and v["health"] != "unhealthy"
    ]


def test_a_job_of_one_is_never_down_during_its_update(c):
    _deploy(c, "app:1", 1)
    c.settle()
    starts = sum(r.starts for r in c.runtimes.values())
    assert _deploy(c, "app:1", 1)["outcome"] == "unchanged"
    c.settle()
    assert sum(r.starts for r in c.runtimes.values()) == starts  # nothing restarted

    assert _deploy(c, "app:2", 1)["outcome"] == "updated"
    c.run_for(15.0, check=lambda: _serving(c) or pytest.fail("no task serving during the update"))
    job = c.manager.job_detail("web")
    assert job["deployment"]["status"] == "successful", job["deployment"]
    assert _serving(c) == ["app:2"]
    assert [v["status"] for v in c.manager.history("web")] == ["successful", "successful"]


def test_a_job_of_three_rolls_one_at_a_time(c):
    _deploy(c, "app:1", 3)
    c.settle()
    _deploy(c, "app:2", 3, max_parallel=1)

    def check():
        live = [v for v in c.manager.task_views(job="web") if v["desired"] == "run"]
        assert len(live) <= 3 and len(_serving(c)) >= 2, live

    c.run_for(30.0, check=check)
    assert sorted(_serving(c)) == ["app:2"] * 3
    names = sorted(v["name"] for v in c.manager.task_views(job="web") if v["desired"] == "run")
    assert names == ["web-1", "web-2", "web-3"]


def test_an_update_whose_health_check_fails_is_reverted(c):
    _deploy(c, "app:1", 2, auto_revert=True)
    c.run_for(5.0)
    for runtime in c.runtimes.values():
        runtime.unhealthy_images.add("app:bad")
    _deploy(c, "app:bad", 2, auto_revert=True)
    c.run_for(60.0, check=lambda: _serving(c) or pytest.fail("no task serving during the update"))
    job = c.manager.job_detail("web")
    assert job["version"] == 3 and job["task"]["image"] == "app:1"
    assert job["deployment"]["policy"] == "rollback", job["deployment"]
    assert [v["status"] for v in c.manager.history("web")] == ["successful", "failed", "successful"]
    assert sorted(_serving(c)) == ["app:1", "app:1"]
    c.restart_manager()  # the revert's reason is kept with its deployment, not only in memory
    assert "reverted to version 1" in c.manager.job_detail("web")["deployment"]["reason"]


def test_a_rollout_survives_a_manager_restart(c):
    _deploy(c, "app:1", 2)
    c.settle()
    _deploy(c, "app:2", 2)
    c.step(0.5)
    c.restart_manager()
    c.run_for(30.0)
    job = c.manager.job_detail("web")
    assert job["deployment"]["status"] == "successful" and sorted(_serving(c)) == ["app:2", "app:2"]
    live = [v for v in c.manager.task_views(job="web") if v["desired"] == "run"]
    assert len(live) == 2


def test_a_stacks_files_reach_its_tasks_and_a_job_waits_for_what_it_depends_on(c):
    """deploy_stack on the simulated cluster: the plan, the files in the worker's directory, depends_on."""
    import base64

    secret = base64.b64encode(b"s3cret").decode()
    db = {
        "name": "shop-db",
        "stack": "shop",
        "task": {
            "image": "db:1",
            "health": {"command": ["CMD", "true"]},
            "files": [{"source": "secrets/pw", "target": "/run/secrets/pw", "mode": 0o400}],
        },
    }
    web = {"name": "shop-web", "stack": "shop", "count": 2, "task": {"image": "web:1"}}
    web["depends_on"] = [{"job": "shop-db", "condition": "healthy"}]
    dry = c.manager.deploy_stack("shop", {"jobs": [db, web], "files": {"secrets/pw": secret}, "dry_run": True})
    assert [s["action"] for s in dry["plan"]] == ["create", "create"] and not c.manager.jobs
    for runtime in c.runtimes.values():
        runtime.unhealthy_images.add("db:1")  # the database never becomes healthy: web waits
    c.manager.deploy_stack("shop", {"jobs": [db, web], "files": {"secrets/pw": secret}})
    c.run_for(5.0)
    webs = c.manager.task_views(job="shop-web")
    assert all(v["state"] == "pending" and "waiting for job shop-db to be healthy" in v["reason"] for v in webs)
    (db_task,) = [t for t in c.manager.list_tasks(job="shop-db") if t.desired.value == "run"]
    path = c.workers[db_task.node].files.path(db_task.id, "secrets/pw")
    with open(path, "rb") as handle:
        assert handle.read() == b"s3cret"
    assert oct(__import__("os").stat(path).st_mode & 0o777) == oct(0o400)

    for runtime in c.runtimes.values():
        runtime.unhealthy_images.clear()
    c.manager.stop_job("shop-db")
    c.manager.deploy_stack("shop", {"jobs": [db, web], "files": {"secrets/pw": secret}})
    c.run_for(10.0)
    assert sum(1 for v in c.manager.task_views(job="shop-web") if v["state"] == "running") == 2
    plan = c.manager.deploy_stack("shop", {"jobs": [db], "files": {"secrets/pw": secret}})["plan"]
    assert {(s["job"], s["action"]) for s in plan} == {("shop-db", "unchanged"), ("shop-web", "remove")}


def test_a_job_of_one_binding_a_port_itself_is_updated_stop_first(c):
    """Without a cluster network an ingress port is the node's own binding: two copies cannot share it, so the
    update of a job of one stops the old task first (start-first only where the mesh carries the port)."""
    spec = {
        "name": "web",
        "count": 1,
        "task": {"image": "app:1", "ports": ["8080:80"]},
        "update": {"min_healthy_time": 1},
    }
    c.manager.submit_job(spec)
    c.settle()
    c.manager.submit_job({**spec, "task": {"image": "app:2", "ports": ["8080:80"]}})

    def one_at_most():
        live = [v for v in c.manager.task_views(job="web") if v["desired"] == "run"]
        assert len(live) <= 1, live

    c.run_for(10.0, check=one_at_most)
    assert c.manager.job_detail("web")["deployment"]["status"] == "successful"
