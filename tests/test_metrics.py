"""GET /metrics of the manager and the worker, in-process (cube/cluster/metrics.py): the exposition parses as
Prometheus reads it, each series says what the cluster is (tasks by job and state, nodes, long polls, a worker's
tasks, engine and containers), the events are counted (placements and their reasons, reschedules, restarts,
dispatches, starts, API requests by route rule), and the token guards it unless the service runs --metrics-open.

The manager is the Nomad-style harness (tests/harness.py) with an exporter as its telemetry, driven round by round;
its API is called through WSGI as tests/test_api.py does."""

import ssl
import threading
import time
import urllib.error
import urllib.request
from collections import Counter

import pytest
from harness import ClusterHarness
from prometheus_client.parser import text_string_to_metric_families
from test_api import TOKEN, assert_error_shape, assignment, call

from cube import __version__, scheduler
from cube.cluster.api import manager_app, worker_app
from cube.cluster.links import Links
from cube.cluster.manager_service import start_dev
from cube.cluster.metrics import ManagerExporter, WorkerExporter
from cube.core.errors import Unavailable
from cube.core.model import Node, Resources
from cube.manager.manager import Manager
from cube.manager.membership import Membership
from cube.store import MemoryStore
from cube.worker.runtime import FakeRuntime, Usage
from cube.worker.worker import Worker


def scrape(app, token=TOKEN) -> dict:
    """GET /metrics, parsed as Prometheus parses it: {(sample name, sorted labels): value}."""
    answer = call(app, "GET", "/metrics", token=token)
    assert answer.status == 200, answer
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(answer.body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


class Metered:
    """A harness cluster whose manager reports to an exporter, and the manager's API around it."""

    def __init__(self, names=("n1", "n2"), open=False):
        self.exporter = ManagerExporter(open)
        self.c = ClusterHarness(names, telemetry=self.exporter)
        self.membership = Membership(self.c.manager, self._request, self.c.store)
        self.exporter.watch(self.c.manager, self.membership)
        self.app = manager_app(self.c.manager, self.membership, Links(TOKEN), TOKEN, exporter=self.exporter)

    def _request(self, address, method, path, body=None, params=None, timeout=None):
        raise Unavailable(f"cannot reach {address}")

    def scrape(self, token=TOKEN) -> dict:
        return scrape(self.app, token)


@pytest.fixture
def m():
    metered = Metered()
    yield metered
    metered.membership.close()
    metered.c.close()


def shown_counts(manager) -> dict:
    """(job, state) -> tasks, counted from the API's own task list (the slow way the tally must agree with)."""
    return dict(Counter((view["job"], view["state"]) for view in manager.task_views()))


# ---- the manager's series ----------------------------------------------------------------------------------------


def test_manager_series_say_what_the_cluster_is(m):
    m.c.manager.submit_job({"name": "web", "count": 3, "task": {"image": "busybox", "cpu": 0.5}})
    alone = m.c.submit({"image": "busybox", "cpu": 64})  # fits no node: 4 cpus each
    m.c.settle()
    assert shown_counts(m.c.manager) == {("web", "running"): 3, ("", "pending"): 1}
    samples = m.scrape()
    assert value(samples, "cube_tasks", cube_job="web", state="running") == 3
    assert value(samples, "cube_tasks", cube_job="web", state="pending") == 0  # every state of a job is named
    assert value(samples, "cube_tasks", cube_job="", state="pending") == 1
    assert value(samples, "cube_nodes", state="ready") == 2
    assert value(samples, "cube_nodes", state="down") == 0
    assert value(samples, "cube_placements_total") == 3
    # Placing the big task was tried at every round since: one failure, on each node for want of cpu.
    assert value(samples, "cube_placement_failures_total", reason=scheduler.INSUFFICIENT_CPU) == 1
    sends = [sent for sent in m.c.sent if sent[1:3] == ("POST", "/tasks")]
    assert value(samples, "cube_dispatch_seconds_count", kind="send", outcome="ok") == len(sends) >= 3
    assert value(samples, "cube_long_polls_open") == 0
    assert value(samples, "cube_build_info", version=__version__, role="manager") == 1
    assert alone["state"] == "pending"


def test_a_failed_placement_counts_each_of_its_reasons_once_and_no_nodes_is_a_reason():
    metered = Metered(names=())
    c = metered.c
    try:
        c.submit({"image": "busybox"})
        c.settle()
        assert value(metered.scrape(), "cube_placement_failures_total", reason="no nodes") == 1
        c.add_node("n1")
        c.add_node("n2")
        c.settle()
        assert value(metered.scrape(), "cube_placements_total") == 1  # the first task, once nodes came
        c.cut.add("n1")
        c.step(5.5)
        assert c.node_state("n1") == "down"
        c.submit({"image": "busybox", "cpu": 8})  # n1 is down, n2 has 4 cpus: one failure, two reasons
        c.settle()  # and tried again at every round, for the same reasons: not counted again
        samples = metered.scrape()
        assert value(samples, "cube_placement_failures_total", reason=scheduler.INSUFFICIENT_CPU) == 1
        assert value(samples, "cube_placement_failures_total", reason=scheduler.NODE_NOT_READY) == 1
        assert value(samples, "cube_placement_failures_total", reason="no nodes") == 1
    finally:
        metered.membership.close()
        c.close()


def test_task_counts_agree_with_the_task_list_through_node_loss_and_moves(m):
    """The tally kept as tasks change (cube/manager/tally.py) against a recount of every task the API shows, at
    every round of a node lost, its tasks shown waiting then moved, and the node back."""
    m.c.manager.submit_job({"name": "web", "count": 4, "task": {"image": "busybox"}})
    m.c.manager.submit_job({"name": "b", "type": "batch", "count": 2, "task": {"image": "busybox"}})
    m.c.settle()

    def check():
        tally, listed = m.c.manager.task_counts(), shown_counts(m.c.manager)
        assert tally == listed, f"tally {tally} != task list {listed}"

    check()
    m.c.cut.add("n1")
    m.c.run_for(8.0, check=check)
    assert m.c.node_state("n1") == "down"
    m.c.cut.clear()
    m.c.run_for(3.0, check=check)
    m.c.manager.stop_job("web")
    m.c.run_for(2.0, check=check)
    assert value(m.scrape(), "cube_tasks", cube_job="web", state="completed") == 4
    m.c.restart_manager()  # the tally of a manager that loaded its tasks from the store
    m.membership.manager = m.c.manager
    check()
    m.c.step(3700.0)  # past the retention: housekeeping collects the finished tasks
    check()
    assert not [key for key in m.c.manager.task_counts() if key[0] == "web"]


def test_node_down_shows_in_nodes_and_its_tasks_as_scheduled(m):
    # One per node; on_disconnect stop: moved only once its node has surely stopped it (15 s and more).
    task = {"image": "busybox", "cpu": 3, "on_disconnect": "stop"}
    m.c.manager.submit_job({"name": "web", "count": 2, "task": task})
    m.c.settle()
    m.c.cut.add("n1")
    m.c.step(5.5)  # past the node timeout, not yet the move
    samples = m.scrape()
    assert value(samples, "cube_nodes", state="down") == 1 and value(samples, "cube_nodes", state="ready") == 1
    assert value(samples, "cube_tasks", cube_job="web", state="scheduled") == 1
    assert value(samples, "cube_tasks", cube_job="web", state="running") == 1
    assert shown_counts(m.c.manager) == {("web", "scheduled"): 1, ("web", "running"): 1}


def test_restarts_and_reschedules_are_counted(m):
    task = m.c.submit({"image": "busybox", "restart": {"max_restarts": 2}})
    m.c.settle()
    first = m.c.task(task["id"])["node"]
    for _ in range(3):
        runtime = m.c.runtimes[first]
        running = [x for x in runtime.containers.values() if x.task_id == task["id"] and x.running]
        runtime.kill(running[0].id, 1)
        m.c.run_for(5.0)
    m.c.run_for(6.0)
    assert m.c.task(task["id"])["reschedules"] == 1
    samples = m.scrape()
    assert value(samples, "cube_task_restarts_total") == 2
    assert value(samples, "cube_reschedules_total") == 1


def test_a_dispatch_that_fails_is_timed_as_failed(m):
    m.c.settle()  # the nodes reported once: the manager sends them what their diffs want
    m.c.cut.add("n1")
    m.c.cut.add("n2")
    m.c.submit({"image": "busybox"})
    m.c.step()
    assert value(m.scrape(), "cube_dispatch_seconds_count", kind="send", outcome="failed") >= 1


def test_long_polls_held_open_are_counted():
    manager = Manager(MemoryStore(), dispatch=lambda *a: {}, executor=None)
    release = threading.Event()

    def request(address, method, path, body=None, params=None, timeout=None):
        release.wait(10)
        raise Unavailable("no worker here")

    membership = Membership(manager, request, manager.store)
    exporter = ManagerExporter().watch(manager, membership)
    app = manager_app(manager, membership, Links(TOKEN), TOKEN, exporter=exporter)
    for name in ("n1", "n2"):
        manager.node_up(Node(name, f"http://{name}:1", Resources(4, 8 << 30, 1 << 30), last_seen=time.time()))
    try:
        membership.resume()
        deadline = time.monotonic() + 10
        while membership.open_polls < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert value(scrape(app), "cube_long_polls_open") == 2
        release.set()
        deadline = time.monotonic() + 10
        while membership.open_polls and time.monotonic() < deadline:
            time.sleep(0.01)
        assert value(scrape(app), "cube_long_polls_open") == 0
    finally:
        release.set()
        membership.close()
        manager.close()


# ---- the API: routes, token --------------------------------------------------------------------------------------


def test_requests_are_timed_by_route_rule_never_by_path(m):
    ids = [m.c.submit({"image": "busybox"})["id"] for _ in range(2)]
    for task_id in ids:
        assert call(m.app, "GET", f"/tasks/{task_id}").status == 200
    call(m.app, "GET", "/tasks/no-such-task")  # a 404 of a route is timed under its rule too
    call(m.app, "GET", "/no/such/route")  # no route: no series
    answer = call(m.app, "GET", "/metrics")
    text = answer.body.decode()
    assert not any(task_id in text for task_id in ids)
    samples = scrape(m.app)
    assert value(samples, "cube_http_request_duration_seconds_count", route="/tasks/<ref>", method="GET") == 3
    assert value(samples, "cube_http_request_duration_seconds_count", route="/metrics", method="GET") == 1
    assert "/no/such/route" not in text


def test_metrics_need_the_token(m):
    for token in (None, "wrong"):
        answer = call(m.app, "GET", "/metrics", token=token)
        assert answer.status == 401 and "token" in answer.json()["error"]
        assert_error_shape(answer)
    assert value(m.scrape(), "cube_nodes", state="ready") == 2


def test_metrics_open_opens_metrics_only():
    metered = Metered(open=True)
    try:
        assert value(metered.scrape(token=None), "cube_nodes", state="ready") == 2
        assert call(metered.app, "GET", "/tasks", token=None).status == 401
        assert call(metered.app, "GET", "/nodes", token="wrong").status == 401
    finally:
        metered.membership.close()
        metered.c.close()


def test_exporters_keep_their_own_series():
    """Many services in one process (the tests, `cube dev`): each exporter counts only its own."""
    one, two = Metered(), Metered()
    try:
        one.c.submit({"image": "busybox"})
        one.c.settle()
        assert value(one.scrape(), "cube_placements_total") == 1
        assert value(two.scrape(), "cube_placements_total") == 0
    finally:
        for metered in (one, two):
            metered.membership.close()
            metered.c.close()


# ---- the worker's series ----------------------------------------------------------------------------------------


@pytest.fixture
def metered_worker():
    runtime = FakeRuntime()
    exporter = WorkerExporter()
    worker = Worker("w1", runtime, MemoryStore(), sync=True, telemetry=exporter)
    exporter.watch(worker)
    yield worker, runtime, worker_app(worker, TOKEN, exporter=exporter)
    worker.close()


def test_worker_series_say_what_the_node_runs(metered_worker):
    worker, runtime, app = metered_worker
    for task_id in ("t1", "t2"):
        assert call(app, "POST", "/tasks", {**assignment(task_id), "job": "web"}).status == 201
    worker.tick()
    runtime.fail_next = 1
    assert call(app, "POST", "/tasks", assignment("t3")).status == 201
    worker.tick()
    containers = {task_id: container for task_id, _, container in worker.containers()}
    assert set(containers) == {"t1", "t2"}
    runtime.used[containers["t1"]] = Usage(cpu_seconds=12.5, memory=64 << 20)
    samples = scrape(app)
    assert value(samples, "cube_worker_tasks", state="running") == 2
    assert value(samples, "cube_worker_tasks", state="scheduled") == 1  # t3: retrying after the refused start
    assert value(samples, "cube_worker_engine_up") == 1
    assert value(samples, "cube_worker_container_starts_total") == 2
    assert value(samples, "cube_worker_container_start_failures_total") == 1
    assert value(samples, "cube_task_cpu_seconds_total", task="t1", cube_job="web") == 12.5
    assert value(samples, "cube_task_memory_bytes", task="t1", cube_job="web") == 64 << 20
    assert value(samples, "cube_task_memory_bytes", task="t2", cube_job="web") == 0
    assert value(samples, "cube_build_info", version=__version__, role="worker") == 1


def test_worker_without_its_engine_says_so_and_reports_no_usage(metered_worker):
    worker, runtime, app = metered_worker
    call(app, "POST", "/tasks", assignment("t1"))
    worker.tick()
    runtime.engine_stop(gone=True)
    with pytest.raises(Unavailable):
        worker.tick()
    samples = scrape(app)
    assert value(samples, "cube_worker_engine_up") == 0
    assert not [key for key in samples if key[0].startswith("cube_task_")]
    assert value(samples, "cube_worker_container_start_failures_total") == 0, "the engine, not a refused start"


def test_worker_metrics_need_the_token_unless_open():
    worker = Worker("w1", FakeRuntime(), MemoryStore(), sync=True)
    try:
        assert call(worker_app(worker, TOKEN, exporter=WorkerExporter()), "GET", "/metrics", token=None).status == 401
        assert scrape(worker_app(worker, TOKEN, exporter=WorkerExporter(open=True)), token=None)
        assert call(worker_app(worker, TOKEN), "GET", "/metrics").status == 404  # no exporter, no route
    finally:
        worker.close()


# ---- the flag, through `cube dev` (TLS) -----------------------------------------------------------------------


def _status(url: str, token: str | None = None) -> int:
    """The status of a GET over the cluster's TLS (its certificates name no host: not checked here)."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10, context=ssl._create_unverified_context()) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.mark.parametrize("metrics_open", [False, True])
def test_cube_dev_metrics_open_flag(tmp_path, metrics_open):
    service = start_dev(port=0, data=str(tmp_path / "dev"), workers=1, runtime=FakeRuntime(), metrics_open=metrics_open)
    try:
        worker = service.manager.list_nodes()[0]["address"]
        assert service.url.startswith("https://") and worker.startswith("https://")
        assert _status(f"{service.url}/metrics") == (200 if metrics_open else 401)
        assert _status(f"{service.url}/metrics", service.token) == 200
        assert _status(f"{worker}/metrics") == (200 if metrics_open else 401)
        assert _status(f"{service.url}/nodes") == 401, "only /metrics opens"
    finally:
        service.close()
