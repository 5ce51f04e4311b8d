"""Worker unit tests on the fake runtime and the in-memory store, driven by tick(now): no threads, no clock."""

import pytest

from cube.core.errors import Conflict, NotFound
from cube.core.model import Assignment, Desired, State, TaskSpec, new_id
from cube.store import MemoryStore
from cube.worker.restarts import backoff
from cube.worker.runtime import FakeRuntime
from cube.worker.worker import Worker


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def make_task(**spec):
    spec.setdefault("image", "busybox")
    return Assignment(id=new_id(), spec=TaskSpec.from_dict(spec), generation=1)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def worker(clock):
    w = Worker("node-1", FakeRuntime(), MemoryStore(), clock=clock)
    w._sync = True
    yield w
    w.close()


def test_accept_then_tick_starts_container_with_running_state(worker):
    task, created = worker.accept(make_task(ports=["80"]))
    assert created and task.state is State.SCHEDULED
    worker.tick()
    got = worker.get(task.id)
    assert got.state is State.RUNNING
    assert got.container_id in worker.runtime.containers
    assert got.host_ports["80/tcp"] >= 32768
    events = [e.state for e in worker.store.events(task_id=task.id)]
    assert events == ["scheduled", "running"]


def test_accept_is_idempotent_per_generation(worker):
    task = make_task()
    worker.accept(task)
    again, created = worker.accept(task)
    assert not created
    worker.tick()
    worker.tick()
    assert worker.runtime.starts == 1


def test_killed_container_restarts_immediately_then_with_backoff(worker, clock):
    task, _ = worker.accept(make_task(restart={"name": "on-failure", "max_restarts": 3}))
    worker.tick()
    first = worker.get(task.id).container_id
    worker.runtime.kill(first, 137)
    worker.tick()  # sees the death: scheduled, restart due now
    assert worker.get(task.id).state is State.SCHEDULED
    worker.tick()  # restarts
    got = worker.get(task.id)
    assert got.state is State.RUNNING and got.restarts == 1
    worker.runtime.kill(got.container_id, 1)
    worker.tick()
    worker.tick()
    assert worker.get(task.id).state is State.SCHEDULED, "second restart waits for its backoff"
    clock.now += backoff(1)
    worker.tick()
    assert worker.get(task.id).state is State.RUNNING
    assert worker.get(task.id).restarts == 2


def test_restart_limit_fails_task_with_reason(worker, clock):
    task, _ = worker.accept(make_task(restart={"name": "on-failure", "max_restarts": 1}))
    worker.tick()
    for _ in range(2):
        worker.runtime.kill(worker.get(task.id).container_id, 2)
        worker.tick()
        clock.now += 60
        worker.tick()
    got = worker.get(task.id)
    assert got.state is State.FAILED
    assert "exited with code 2" in got.reason and "1 of 1 restarts within 600 s used" in got.reason


def test_exit_zero_completes_under_on_failure(worker):
    task, _ = worker.accept(make_task())
    worker.tick()
    worker.runtime.kill(worker.get(task.id).container_id, 0)
    worker.tick()
    assert worker.get(task.id).state is State.COMPLETED


def test_restart_always_restarts_after_exit_zero(worker):
    task, _ = worker.accept(make_task(restart="always"))
    worker.tick()
    worker.runtime.kill(worker.get(task.id).container_id, 0)
    worker.tick()
    worker.tick()
    assert worker.get(task.id).state is State.RUNNING


def test_stop_removes_container_and_completes(worker):
    task, _ = worker.accept(make_task())
    worker.tick()
    worker.stop_task(task.id)
    worker.tick()
    got = worker.get(task.id)
    assert got.state is State.COMPLETED and got.desired is Desired.STOP
    assert not worker.runtime.containers


def test_missing_image_fails_with_reason(worker):
    worker.runtime.fail_images.add("nope:1")
    task, _ = worker.accept(make_task(image="nope:1"))
    worker.tick()
    got = worker.get(task.id)
    assert got.state is State.FAILED and "nope:1" in got.reason


def test_restarted_worker_adopts_containers_and_removes_orphans(clock):
    runtime, store = FakeRuntime(), MemoryStore()
    first = Worker("node-1", runtime, store, clock=clock)
    first._sync = True
    task, _ = first.accept(make_task())
    first.tick()
    container = first.get(task.id).container_id
    orphan = make_task()
    runtime.start(orphan, "node-1")  # labelled for this node, no task owns it
    runtime.start(make_task(), "node-2")  # another node's: left alone
    first.close()
    second = Worker("node-1", runtime, store, clock=clock)
    second._sync = True
    second.tick()
    assert second.get(task.id).container_id == container
    assert runtime.starts == 3, "no container was started again"
    assert {c.node for c in runtime.containers.values()} == {"node-1", "node-2"}
    assert len(runtime.containers) == 2
    second.close()


def test_crash_between_start_and_persist_adopts_instead_of_duplicating(worker):
    task, _ = worker.accept(make_task())
    info = worker.runtime.start(worker.get(task.id), "node-1")  # as if the worker died before recording it
    worker.tick()
    got = worker.get(task.id)
    assert got.state is State.RUNNING and got.container_id == info.id
    assert worker.runtime.starts == 1


def test_newer_generation_replaces_stale_container(worker):
    task = make_task()
    worker.accept(task)
    worker.tick()
    old = worker.get(task.id).container_id
    task.generation = 2
    worker.accept(task)
    worker.tick()
    worker.tick()
    got = worker.get(task.id)
    assert got.state is State.RUNNING and got.container_id != old
    assert old not in worker.runtime.containers


def test_health_restart_counts_and_fails_after_limit(worker):
    task, _ = worker.accept(make_task(ports=["80"], health="/", restart={"name": "on-failure", "max_restarts": 2}))
    worker.tick()
    for n in (1, 2):
        worker.restart_task(task.id, "health check failed: HTTP 500")
        worker.tick()
        assert worker.get(task.id).state is State.RUNNING and worker.get(task.id).restarts == n
    worker.restart_task(task.id, "health check failed: HTTP 500")
    got = worker.get(task.id)
    assert got.state is State.FAILED and "HTTP 500" in got.reason
    with pytest.raises(Conflict):
        worker.restart_task(task.id, "again")


def test_unknown_task_is_not_found(worker):
    with pytest.raises(NotFound):
        worker.get("nope")


def test_state_long_poll_returns_on_change(worker):
    import threading
    import time

    version = worker.state()["version"]
    threading.Timer(0.2, lambda: worker.accept(make_task())).start()
    started = time.monotonic()
    answer = worker.state(version=version, wait=5)
    assert answer["version"] > version and time.monotonic() - started < 2


def test_stale_copy_is_removed_before_the_new_generation_starts(worker):
    task = make_task(ports=["8080:80"])
    worker.accept(task)
    worker.tick()
    old = worker.get(task.id).container_id
    task.generation = 2
    worker.accept(task)
    first = worker.tick()
    assert first.start == [] and old in first.orphans, "the old copy holds the host port: it goes first"
    second = worker.tick()
    assert second.start == [task.id]
    assert old not in worker.runtime.containers and worker.get(task.id).state is State.RUNNING
