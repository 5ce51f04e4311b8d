"""Housekeeping (cube/manager/housekeeping.py) over a simulated cluster: finished tasks are collected past their
retention or beyond the newest few of their job, never a task that runs or still stops; the lists leave finished
tasks out without looking at them; a node that reports a copy of a collected task gets it stopped; events page
and filter by job and node."""

import pytest
from harness import ClusterHarness
from test_api import call, error_of

from cube.cluster.api import manager_app
from cube.core.errors import NotFound
from cube.manager import housekeeping


@pytest.fixture
def c():
    harness = ClusterHarness(["n1", "n2"])
    yield harness
    harness.close()


def _finished(c, n: int, job: str = "") -> list[str]:
    ids = []
    for _ in range(n):
        task = c.manager.submit_task({"image": "app"})[0]
        ids.append(task.id)
    c.settle()
    for task_id in ids:
        c.manager.stop_task(task_id)
    c.settle()
    return ids


def test_finished_tasks_go_after_their_retention_and_beyond_the_newest_of_their_job(c):
    c.manager.keep_finished = 3
    running = c.submit({"image": "keep"})
    old = _finished(c, 5)
    c.run_for(housekeeping.COLLECT_EVERY + 1)
    left = {t["id"] for t in c.manager.task_views()}
    assert running["id"] in left
    assert len(left & set(old)) == 3, "the newest 3 finished tasks stay"
    assert all(c.store.get("tasks", i) is None for i in set(old) - left), "collected from the store too"
    c.clock.now += housekeeping.RETENTION + 1
    c.run_for(housekeeping.COLLECT_EVERY + 1)
    assert {t["id"] for t in c.manager.task_views()} == {running["id"]}
    assert c.task(running["id"])["state"] == "running"
    c.restart_manager()  # what was collected stays collected
    assert {t["id"] for t in c.manager.task_views()} == {running["id"]}


def test_a_task_still_stopping_is_kept_and_a_copy_of_a_collected_one_is_stopped_when_its_node_is_back(c):
    c.manager.keep_finished = 0
    task = c.submit({"image": "slow"})
    c.settle()
    node = c.task(task["id"])["node"]
    c.cut.add(node)  # its node cannot be told: the copy still runs there
    c.manager.stop_task(task["id"])
    c.step(1.0)
    c.manager._collected_at = float("-inf")  # a collection now, while the node is still ready
    c.step(0.5)
    assert c.manager.find_task(task["id"]).state.value == "running", "still stopping: kept"
    # The node goes down: the task is let go of (its copy is stopped when the node is back), then collected.
    c.run_for(housekeeping.COLLECT_EVERY + 10)
    with pytest.raises(NotFound):
        c.manager.find_task(task["id"])
    assert [i for i in c.runtimes[node].containers.values() if i.running], "the cut node still runs its copy"
    c.cut.discard(node)
    c.run_for(10.0)
    assert not [i for i in c.runtimes[node].containers.values() if i.running], "the stale copy was stopped"


def test_lists_leave_finished_tasks_out_and_a_collected_copy_that_reappears_is_stopped(c):
    app = manager_app(c.manager, None, None, None)
    running = c.submit({"image": "web"})
    gone = _finished(c, 2)
    current = call(app, "GET", "/tasks?finished=false", token=None).json()
    assert [t["id"] for t in current] == [running["id"]]
    assert {t["id"] for t in call(app, "GET", "/tasks?finished=true", token=None).json()} == set(gone)
    assert "finished must be true or false" in error_of(call(app, "GET", "/tasks?finished=maybe", token=None), 400)
    # A node still running a copy of a task the manager no longer knows (collected) is told to stop it.
    node = c.task(running["id"])["node"]
    c.manager.keep_finished = 0
    c.manager.stop_task(running["id"])
    c.settle()
    c.run_for(housekeeping.COLLECT_EVERY + 1)
    with pytest.raises(NotFound):
        c.manager.find_task(running["id"])
    assert not [i for i in c.runtimes[node].containers.values() if i.running]


def test_events_filter_by_job_and_node_and_say_where_the_next_read_starts(c):
    app = manager_app(c.manager, None, None, None)
    c.manager.submit_job({"name": "web", "count": 2, "task": {"image": "app"}})
    c.manager.submit_job({"name": "db", "count": 1, "task": {"image": "db"}})
    c.settle()
    web = call(app, "GET", "/events?job=web", token=None)
    ids = {t["id"] for t in c.manager.task_views(job="web")}
    assert web.json() and {e["task_id"] for e in web.json()} == ids
    assert int(web.headers["cube-next-since"]) == c.manager.last_event_id()
    first = call(app, "GET", "/events?job=web&limit=1", token=None)
    assert len(first.json()) == 1 and int(first.headers["cube-next-since"]) == first.json()[0]["id"]
    rest = call(app, "GET", f"/events?job=web&since={first.headers['cube-next-since']}", token=None).json()
    assert [e["id"] for e in first.json() + rest] == [e["id"] for e in web.json()]
    on_n1 = call(app, "GET", "/events?node=n1", token=None).json()
    assert on_n1 and all(e["node"] == "n1" for e in on_n1)


def test_a_worker_forgets_what_stopped_for_good_once_the_manager_has_heard_of_it(c):
    from cube.worker import worker as worker_module

    keep = c.submit({"image": "keep"})
    gone = c.submit({"image": "gone"})
    c.settle()
    node = c.task(gone["id"])["node"]
    c.manager.stop_task(gone["id"])  # delivered at once (the harness's dispatch is inline)
    c.cut.add(node)  # then the manager hears nothing from the node: the task's end is not reported yet
    c.workers[node].tick()
    assert c.workers[node].tasks[gone["id"]].state.value == "completed"
    c.clock.now += worker_module.FORGET_AFTER + 1
    c.workers[node].tick()
    assert gone["id"] in c.workers[node].tasks, "not reported to the manager yet: kept"
    c.cut.discard(node)
    c.settle()
    assert c.task(gone["id"])["state"] == "completed"
    c.clock.now += worker_module.FORGET_AFTER + 1
    c.settle()
    assert gone["id"] not in c.workers[node].tasks and c.stores[node].get("tasks", gone["id"]) is None
    assert keep["id"] in c.workers[c.task(keep["id"])["node"]].tasks
    assert c.task(gone["id"])["state"] == "completed", "the manager's record is unchanged by the shorter report"
    assert c.task(keep["id"])["state"] == "running"


def test_a_filtered_list_keeps_every_filter_whichever_index_it_starts_from(c):
    """The job's own index is bigger than the index of current tasks here: the job filter must still hold."""
    c.manager.submit_job({"name": "web", "count": 1, "task": {"image": "app"}})
    other = c.submit({"image": "solo"})
    _finished(c, 0)
    for _ in range(3):  # web's finished tasks: web's index grows past the index of current tasks
        c.manager.scale_job("web", 0)
        c.settle()
        c.manager.scale_job("web", 1)
        c.settle()
    views = c.manager.task_page(job="web", finished=False)[0]
    assert [v["job"] for v in views] == ["web"], views
    assert other["id"] not in {v["id"] for v in views}
    assert c.manager.job_detail("web")["running"] == 1
    assert [v["id"] for v in c.manager.task_page(node=c.task(other["id"])["node"], finished=False, job="web")[0]] == [
        v["id"] for v in views if v["node"] == c.task(other["id"])["node"]
    ]
