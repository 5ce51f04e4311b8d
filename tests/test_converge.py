"""The manager converges, driven through the harness (real manager, real workers on fake runtimes, one fake clock):
each failure of issue 9 as a test, exact about rounds and copies, plus the decisions' rules one by one."""

import re

import pytest
from harness import ClusterHarness

from cube.core import model
from cube.core.model import TRANSITIONS, State


@pytest.fixture
def c():
    harness = ClusterHarness(["n1", "n2"])
    yield harness
    harness.close()


def one_copy_at_most(c, task_id):
    def check():
        assert c.running_copies(task_id) <= 1, f"two copies of {task_id}: {c.copies(task_id)}"

    return check


def test_diagram_in_the_docstring_is_the_transition_table():
    lines = re.findall(r"^\s+(\w+)\s+->\s+(.+)$", model.__doc__, re.MULTILINE)
    table = {
        State(name): frozenset() if "terminal" in rest else frozenset(State(s.strip()) for s in rest.split(","))
        for name, rest in lines
    }
    assert table == TRANSITIONS


def test_lost_dispatch_is_sent_again_by_the_diff(c):
    c.cut.add("n1")
    c.cut.add("n2")
    task = c.submit({"image": "busybox"})
    assert task["state"] == "scheduled" and c.running_copies(task["id"]) == 0
    c.cut.clear()
    c.settle()
    assert c.task(task["id"])["state"] == "running"
    assert c.running_copies(task["id"]) == 1


def test_dispatch_failures_back_off(c):
    task = c.submit({"image": "busybox"})
    node = c.task(task["id"])["node"]
    c.settle()
    c.manager.stop_task(task["id"])
    c.cut.add(node)
    before = len(c.sent)
    c.run_for(3.0, every=0.25)  # 12 rounds; the node is not yet down (timeout 5 s)
    tries = [s for s in c.sent[before:] if s[1] == "DELETE"]
    assert 2 <= len(tries) <= 5, f"retried with a backoff (0.5, 1, 2 s...), not every round: {len(tries)}"
    c.cut.clear()
    c.settle()
    assert c.running_copies(task["id"]) == 0 and c.task(task["id"])["state"] == "completed"


def test_worker_killed_and_back_restarts_nothing_and_loses_nothing(c):
    tasks = [c.submit({"image": "busybox"}) for _ in range(8)]
    c.settle()
    ids = {t["id"]: c.copies(t["id"]) for t in tasks}
    starts = {n: r.starts for n, r in c.runtimes.items()}
    c.kill_worker("n1")
    c.step(1.0)
    c.start_worker("n1")
    c.settle()
    assert {t["id"]: c.copies(t["id"]) for t in tasks} == ids, "the same containers, adopted"
    assert {n: r.starts for n, r in c.runtimes.items()} == starts, "no container started again"
    assert all(c.task(t["id"])["state"] == "running" for t in tasks)


def test_assignments_sent_while_a_worker_was_dead_arrive_when_it_returns():
    c = ClusterHarness(["n1"])
    c.kill_worker("n1")
    tasks = [c.submit({"image": "busybox"}) for _ in range(4)]
    c.step(1.0)
    c.start_worker("n1")
    c.settle()
    assert all(c.running_copies(t["id"]) == 1 for t in tasks)
    c.close()


def test_task_placed_back_on_its_returning_node_survives():
    c = ClusterHarness(["n1", "n2"])
    blocker = c.submit({"image": "busybox", "ports": ["8080:80/host"], "constraints": ["hostname=n2"]})
    c.settle()
    task = c.submit({"image": "busybox", "ports": ["8080:80/host"]})
    c.settle()
    assert c.task(task["id"])["node"] == "n1"
    c.kill_worker("n1")  # its container runs on: nobody is there to stop it
    c.run_for(4.0, check=one_copy_at_most(c, task["id"]))
    assert c.task(task["id"])["state"] == "running"
    c.run_for(4.0, check=one_copy_at_most(c, task["id"]))
    assert c.task(task["id"])["state"] == "scheduled", "its node is down: not known to run"
    c.run_for(12.0, check=one_copy_at_most(c, task["id"]))  # past disconnect + stop timeouts: moved
    assert c.task(task["id"])["state"] == "pending", "the port is taken on n2: it waits"
    c.start_worker("n1")
    c.run_for(3.0, check=one_copy_at_most(c, task["id"]))
    got = c.task(task["id"])
    assert got["state"] == "running" and got["node"] == "n1" and got["generation"] == 2
    assert c.running_copies(task["id"]) == 1
    assert c.running_copies(blocker["id"]) == 1
    c.close()


def test_engine_stop_makes_the_node_unhealthy_then_services_come_back_uncounted(c):
    task = c.submit({"image": "busybox", "constraints": ["hostname=n1"]})
    c.settle()
    c.runtimes["n1"].engine_stop(exit_code=0)  # nginx exits 0 on SIGTERM
    c.step(0.5)
    assert c.node_state("n1") == "unhealthy"
    got = c.task(task["id"])
    assert got["state"] == "scheduled" and "engine" in got["reason"], got
    other = c.submit({"image": "busybox"})
    assert c.task(other["id"])["node"] == "n2", "no new placement on an unhealthy node"
    c.step(2.0)
    c.runtimes["n1"].engine_start()
    c.settle()
    got = c.task(task["id"])
    assert got["state"] == "running" and got["node"] == "n1" and got["restarts"] == 0, got
    assert c.node_state("n1") == "ready"
    assert c.running_copies(task["id"]) == 1


def test_engine_down_past_the_node_timeout_moves_tasks_and_leaves_one_copy(c):
    task = c.submit({"image": "busybox"})
    c.settle()
    node = c.task(task["id"])["node"]
    other = "n2" if node == "n1" else "n1"
    c.runtimes[node].engine_stop()
    c.run_for(7.0, check=one_copy_at_most(c, task["id"]))
    got = c.task(task["id"])
    assert got["node"] == other and got["state"] == "running"
    c.runtimes[node].engine_start()
    c.run_for(3.0, check=one_copy_at_most(c, task["id"]))
    assert c.copies(task["id"]) == [(other, c.task(task["id"])["container_id"])]


def test_partition_moves_a_keep_task_and_one_copy_remains_after_healing(c):
    task = c.submit({"image": "busybox"})
    c.settle()
    node = c.task(task["id"])["node"]
    c.cut.add(node)
    c.run_for(6.0)
    got = c.task(task["id"])
    assert got["node"] != node and got["state"] == "running"
    assert c.running_copies(task["id"]) == 2, "keep: the cut-off copy runs on (the README says so)"
    c.cut.clear()
    c.settle()
    assert c.copies(task["id"]) == [(got["node"], got["container_id"])]


def test_partition_never_runs_two_copies_of_a_stop_task(c):
    task = c.submit({"image": "busybox", "ports": ["8080:80/host"]})
    c.settle()
    node = c.task(task["id"])["node"]
    c.cut.add(node)
    c.run_for(30.0, check=one_copy_at_most(c, task["id"]))
    got = c.task(task["id"])
    assert got["node"] != node and got["state"] == "running", got
    c.cut.clear()
    c.run_for(3.0, check=one_copy_at_most(c, task["id"]))
    assert c.copies(task["id"]) == [(got["node"], got["container_id"])]


def test_stop_task_whose_node_was_only_briefly_cut_off_runs_again_there(c):
    task = c.submit({"image": "busybox", "ports": ["8080:80/host"]})
    c.settle()
    node = c.task(task["id"])["node"]
    c.cut.add(node)
    c.run_for(16.0, check=one_copy_at_most(c, task["id"]))  # past the disconnect timeout, before the move
    assert c.running_copies(task["id"]) == 0, "stopped by its own node"
    c.cut.clear()
    c.settle()
    got = c.task(task["id"])
    assert got["node"] == node and got["state"] == "running" and c.running_copies(task["id"]) == 1


def test_crash_looping_service_is_rescheduled_elsewhere_with_a_delay(c):
    task = c.submit({"image": "busybox", "restart": {"max_restarts": 2}})
    c.settle()
    first = c.task(task["id"])["node"]
    for _ in range(3):
        runtime = c.runtimes[first]
        running = [x for x in runtime.containers.values() if x.task_id == task["id"] and x.running]
        runtime.kill(running[0].id, 1)
        c.run_for(5.0)
    got = c.task(task["id"])
    assert got["state"] == "pending" and "rescheduling in 5 s" in got["reason"], got
    c.run_for(6.0)
    got = c.task(task["id"])
    assert got["state"] == "running" and got["node"] != first and got["reschedules"] == 1, got


def test_batch_task_that_fails_stays_failed(c):
    c.manager.submit_job(
        {"name": "b", "type": "batch", "count": 1, "task": {"image": "busybox", "restart": {"max_restarts": 0}}}
    )
    c.settle()
    task = c.manager.list_tasks(job="b")[0]
    runtime = c.runtimes[task.node]
    runtime.kill(task.current.container_id, 3)
    c.run_for(20.0)
    got = c.task(task.id)
    assert got["state"] == "failed" and got["node"] == task.node and "code 3" in got["reason"]


def test_restarts_are_counted_within_the_window(c):
    task = c.submit({"image": "busybox", "restart": {"max_restarts": 1, "window": 60}})
    c.settle()
    node = c.task(task["id"])["node"]
    for _ in range(3):  # one crash every 2 minutes: each is the first within its window
        running = [x for x in c.runtimes[node].containers.values() if x.task_id == task["id"] and x.running]
        c.runtimes[node].kill(running[0].id, 1)
        c.run_for(120.0, every=10.0)
    got = c.task(task["id"])
    assert got["state"] == "running" and got["node"] == node and got["restarts"] == 3


def test_job_cut_short_by_a_crash_is_completed_on_restart_and_on_resubmission(c):
    spec = {"name": "big", "count": 10, "task": {"image": "busybox"}}
    c.manager.submit_job(spec)
    c.settle()
    # What a crash in the middle of the first submission leaves: the job and only some of its tasks.
    for task_id in [t.id for t in c.manager.list_tasks(job="big")][4:]:
        c.store.delete("tasks", task_id)
    c.restart_manager()
    c.settle()
    assert len([t for t in c.manager.list_tasks(job="big") if t.state is State.RUNNING]) == 10
    job, outcome = c.manager.submit_job(spec)
    assert outcome == "unchanged" and c.manager.job_detail("big")["running"] == 10


def test_manager_restart_sends_nothing_twice(c):
    tasks = [c.submit({"image": "busybox"}) for _ in range(6)]
    c.settle()
    c.restart_manager()
    before = len(c.sent)
    c.settle()
    assert c.sent[before:] == [], "every node's report already shows its assignments"
    assert all(c.running_copies(t["id"]) == 1 for t in tasks)


def test_stale_stop_never_touches_a_newer_copy(c):
    task = c.submit({"image": "busybox"})
    c.settle()
    node = c.task(task["id"])["node"]
    worker = c.workers[node]
    gen = c.task(task["id"])["generation"]
    worker.stop_task(task["id"], generation=gen - 1)
    c.settle()
    assert c.running_copies(task["id"]) == 1 and c.task(task["id"])["state"] == "running"


def test_stop_while_the_node_is_down_completes_and_reaches_the_node_when_back(c):
    task = c.submit({"image": "busybox"})
    c.settle()
    node = c.task(task["id"])["node"]
    c.cut.add(node)
    c.manager.stop_task(task["id"])
    c.run_for(6.0)
    assert c.task(task["id"])["state"] == "completed"
    assert c.running_copies(task["id"]) == 1, "the unreachable node still runs it"
    c.cut.clear()
    c.settle()
    assert c.running_copies(task["id"]) == 0 and c.task(task["id"])["state"] == "completed"
