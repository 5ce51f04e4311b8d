"""The manager's and the worker's HTTP APIs, called in-process through WSGI (no socket, no server thread): the wire
contract of `cube/cluster/api.py` -- the token, the one JSON error shape, 400s that name the field, idempotent
submissions, jobs, nodes; the worker's assignments per generation and its long-poll state.

The manager runs on a MemoryStore with an inline executor and a dispatcher that records what it is given; the worker
on a FakeRuntime with `sync=True`, driven by `tick()`. Every error answer any test gets is checked for the JSON shape
`{"error": ..., "status": N}` and for the absence of a traceback (see `call`)."""

import io
import json
import threading
import time
from dataclasses import dataclass
from wsgiref.util import setup_testing_defaults

import pytest
from conftest import wait_for

from cube.cluster.api import manager_app, worker_app
from cube.cluster.links import Links
from cube.core.errors import Unavailable, from_status
from cube.core.model import Node, Resources
from cube.manager.manager import Manager
from cube.manager.membership import Membership
from cube.store import MemoryStore
from cube.worker.runtime import FakeRuntime
from cube.worker.worker import Worker

TOKEN = "s3cret-token"
IMAGE = "cube-busybox:latest"


# ---- a WSGI driver ---------------------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict  # lower-cased names
    body: bytes

    def json(self):
        return json.loads(self.body)


def call(
    app,
    method: str,
    path: str,
    body=None,
    *,
    token: str | None = TOKEN,
    raw: bytes | None = None,
    headers: dict | None = None,
    environ: dict | None = None,
) -> Response:
    """Call a WSGI `app` as a server would. `body` is sent as JSON, `raw` as it is; `token` as a bearer token;
    `environ`: what the server would add (the client's address, the scheme)."""
    given, environ = environ or {}, {}
    setup_testing_defaults(environ)
    path, _, query = path.partition("?")
    data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
    environ.update(
        {
            "REQUEST_METHOD": method,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_LENGTH": str(len(data)),
            "wsgi.input": io.BytesIO(data),
        }
    )
    if data:
        environ["CONTENT_TYPE"] = "application/json"
    environ.update(given)
    if token is not None:
        environ["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    started: dict = {}

    def start_response(status, response_headers, exc_info=None):
        started["status"] = int(status.split()[0])
        started["headers"] = {k.lower(): v for k, v in response_headers}

    result = app(environ, start_response)
    try:
        payload = b"".join(result)
    finally:
        if hasattr(result, "close"):
            result.close()
    response = Response(started["status"], started["headers"], payload)
    if response.status >= 400:
        assert_error_shape(response)
    return response


def assert_error_shape(response: Response) -> None:
    """The one error shape, and nothing of the server's insides."""
    assert response.headers.get("content-type", "").startswith("application/json"), response
    data = response.json()
    assert set(data) == {"error", "status"}, data
    assert data["status"] == response.status
    assert isinstance(data["error"], str) and data["error"]
    assert "Traceback" not in data["error"] and 'File "' not in data["error"], data["error"]


def error_of(response: Response, status: int) -> str:
    assert response.status == status, (response.status, response.body)
    return response.json()["error"]


# ---- the parts -------------------------------------------------------------------------------------------------


class Inline:
    """An executor that runs what it is given at once (the manager's deliveries)."""

    def submit(self, fn, *args):
        fn(*args)


class Recorder:
    """The manager's dispatcher: keeps what it is asked to send, answers nothing."""

    def __init__(self):
        self.sent: list[tuple] = []

    def __call__(self, address, method, path, body, params):
        self.sent.append((address, method, path, body, params))
        return {}


@pytest.fixture
def worker():
    w = Worker("w1", FakeRuntime(), MemoryStore(), sync=True)
    yield w
    w.close()


@pytest.fixture
def wapp(worker):
    return worker_app(worker, TOKEN)


@dataclass
class ManagerParts:
    app: object
    manager: Manager
    membership: Membership
    sent: list


@pytest.fixture
def mgr(worker):
    """A manager with one ready node, `n1` (its address answers nothing). `membership.add` reaches the in-process
    worker `w1` at http://w1:5556 for its /stats; other requests and addresses are Unavailable; one address raises
    an unexpected exception, to check that it does not leak."""
    recorder = Recorder()
    manager = Manager(MemoryStore(), dispatch=recorder, executor=Inline())

    def request(address, method, path, body=None, params=None, timeout=None):
        if address == "http://boom:1":
            raise RuntimeError("Traceback (most recent call last): a bug deep inside")
        if address.rstrip("/") == "http://w1:5556" and (method, path) == ("GET", "/stats"):
            return worker.stats()
        raise Unavailable(f"cannot reach {address}")

    membership = Membership(manager, request, manager.store)
    manager.node_up(
        Node(
            "n1",
            "http://127.0.0.1:1",
            Resources(4, 8 << 30, 100 << 30),
            labels={"node_id": "n1id", "arch": "x86_64"},
            last_seen=time.time(),
        )
    )
    yield ManagerParts(manager_app(manager, membership, Links(TOKEN), TOKEN), manager, membership, recorder.sent)
    membership.close()
    manager.close()


@pytest.fixture(params=["manager", "worker"])
def any_app(request, mgr, wapp):
    return mgr.app if request.param == "manager" else wapp


def assignment(task_id: str = "t1", generation: int = 1, **spec) -> dict:
    spec.setdefault("image", IMAGE)
    spec.setdefault("command", ["sleep", "300"])
    return {"id": task_id, "spec": spec, "job": "", "generation": generation, "desired": "run"}


# ---- both APIs: token, errors, routes --------------------------------------------------------------------------


def test_health_needs_no_token(any_app):
    answer = call(any_app, "GET", "/health", token=None)
    assert answer.status == 200
    assert answer.json()["status"] == "ok"


@pytest.mark.parametrize("auth", [None, "Bearer wrong", f"bearer {TOKEN}", TOKEN, f"Bearer {TOKEN}x", "Bearer "])
def test_every_other_route_needs_the_token(any_app, auth):
    headers = {"Authorization": auth} if auth is not None else None
    answer = call(any_app, "GET", "/tasks", token=None, headers=headers)
    message = error_of(answer, 401)
    assert "token" in message
    assert TOKEN not in message


def test_the_token_is_checked_before_the_body(any_app):
    # An unauthenticated client learns nothing about what it sent: not even that the body is bad.
    answer = call(any_app, "POST", "/tasks", raw=b"{", token="wrong")
    assert answer.status == 401


def test_the_right_token_is_let_through(any_app):
    answer = call(any_app, "GET", "/tasks")
    assert answer.status == 200 and answer.json() == []


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nope", 404),
        ("GET", "/tasks/t1/nope", 404),
        ("DELETE", "/nowhere", 404),
        ("PUT", "/tasks", 405),
        ("PATCH", "/health", 405),
    ],
)
def test_unknown_routes_and_methods_answer_in_the_json_shape(any_app, method, path, status):
    message = error_of(call(any_app, method, path), status)
    assert path in message


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"", "empty"),
        (b"{", "not valid JSON"),
        (b"{'image': 'x'}", "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
    ],
)
def test_bad_bodies_are_400s_that_say_what_is_wrong(any_app, raw, words):
    assert words in error_of(call(any_app, "POST", "/tasks", raw=raw), 400)


# ---- the manager -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"image": IMAGE, "bogus": 1}, "bogus"),
        ({"command": ["sleep", "1"]}, "image"),
        ({"image": ""}, "image"),
        ({"image": IMAGE, "ports": ["99999"]}, "port"),
        ({"image": IMAGE, "ports": ["http"]}, "port"),
        ({"image": IMAGE, "ports": [{"container": 80, "host": 0, "protocol": "sctp"}]}, "protocol"),
        ({"image": IMAGE, "memory": "lots"}, "memory"),
        ({"image": IMAGE, "cpu": -1}, "cpu"),
        ({"image": IMAGE, "restart": "sometimes"}, "restart"),
        ({"image": IMAGE, "id": "not an id!"}, "id"),
        ([{"image": IMAGE}], "JSON object"),
        ("just a string", "JSON object"),
    ],
)
def test_manager_rejects_bad_tasks_naming_the_field(mgr, body, field):
    assert field in error_of(call(mgr.app, "POST", "/tasks", body), 400)
    assert call(mgr.app, "GET", "/tasks").json() == []  # nothing was kept


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "web", "task": {"image": IMAGE}, "count": -1}, "count"),
        ({"name": "web", "task": {"image": IMAGE}, "count": "3"}, "count"),
        ({"name": "web", "task": {"image": IMAGE}, "count": True}, "count"),
        ({"name": "web", "task": {"image": IMAGE}, "count": 10001}, "count"),
        ({"name": "web", "task": {"image": IMAGE}, "type": "cron"}, "type"),
        ({"name": "web"}, "task"),
        ({"task": {"image": IMAGE}}, "name"),
        ({"name": "web", "task": {"image": IMAGE}, "replicas": 2}, "replicas"),
        ({"name": "web", "task": {"image": IMAGE, "ports": ["0"]}}, "port"),
    ],
)
def test_manager_rejects_bad_jobs_naming_the_field(mgr, body, field):
    assert field in error_of(call(mgr.app, "POST", "/jobs", body), 400)
    assert call(mgr.app, "GET", "/jobs").json() == []


def test_post_task_is_201_then_200_for_the_same_id(mgr):
    first = call(mgr.app, "POST", "/tasks", {"id": "abc123", "image": IMAGE, "name": "web"})
    assert first.status == 201
    task = first.json()
    assert (task["id"], task["name"], task["image"], task["desired"]) == ("abc123", "web", IMAGE, "run")
    assert task["state"] == "scheduled" and task["node"] == "n1" and task["generation"] == 1
    again = call(mgr.app, "POST", "/tasks", {"id": "abc123", "image": IMAGE, "name": "web"})
    assert again.status == 200
    assert again.json()["id"] == "abc123" and again.json()["generation"] == 1
    assert [t["id"] for t in call(mgr.app, "GET", "/tasks").json()] == ["abc123"]


def test_post_task_with_a_known_id_and_another_spec_is_a_conflict(mgr):
    assert call(mgr.app, "POST", "/tasks", {"id": "abc123", "image": IMAGE}).status == 201
    answer = call(mgr.app, "POST", "/tasks", {"id": "abc123", "image": "nginx:1.25"})
    assert answer.status == 409


def test_a_task_without_an_id_gets_one(mgr):
    one = call(mgr.app, "POST", "/tasks", {"image": IMAGE}).json()
    two = call(mgr.app, "POST", "/tasks", {"image": IMAGE}).json()
    assert one["id"] and two["id"] and one["id"] != two["id"]


def test_a_second_active_task_with_the_same_name_is_a_conflict(mgr):
    assert call(mgr.app, "POST", "/tasks", {"image": IMAGE, "name": "web"}).status == 201
    assert "web" in error_of(call(mgr.app, "POST", "/tasks", {"image": IMAGE, "name": "web"}), 409)


def test_get_tasks_lists_them_oldest_first_and_filters(mgr):
    for task_id in ("aaa1", "bbb2", "ccc3"):
        call(mgr.app, "POST", "/tasks", {"id": task_id, "image": IMAGE})
    call(mgr.app, "POST", "/jobs", {"name": "web", "task": {"image": IMAGE}, "count": 2})
    listed = call(mgr.app, "GET", "/tasks").json()
    assert [t["id"] for t in listed][:3] == ["aaa1", "bbb2", "ccc3"] and len(listed) == 5
    assert all({"id", "name", "state", "node", "image", "host_ports", "restarts"} <= set(t) for t in listed)
    assert sorted(t["name"] for t in call(mgr.app, "GET", "/tasks?job=web").json()) == ["web-1", "web-2"]
    assert len(call(mgr.app, "GET", "/tasks?state=scheduled").json()) == 5
    assert call(mgr.app, "GET", "/tasks?state=running").json() == []


def test_get_task_by_id_prefix_or_name(mgr):
    call(mgr.app, "POST", "/tasks", {"id": "abc111", "image": IMAGE, "name": "web"})
    call(mgr.app, "POST", "/tasks", {"id": "abc222", "image": IMAGE})
    detail = call(mgr.app, "GET", "/tasks/abc1").json()
    assert detail["id"] == "abc111"
    assert detail["placement"]["node"] == "n1"
    assert [e["message"] for e in detail["events"]][:1] == ["submitted"]
    assert call(mgr.app, "GET", "/tasks/web").json()["id"] == "abc111"
    assert "several" in error_of(call(mgr.app, "GET", "/tasks/abc"), 400)
    assert "zzz" in error_of(call(mgr.app, "GET", "/tasks/zzz"), 404)


def test_delete_task_is_204_and_the_task_is_told_to_stop(mgr):
    call(mgr.app, "POST", "/tasks", {"id": "abc123", "image": IMAGE})
    answer = call(mgr.app, "DELETE", "/tasks/abc123")
    assert answer.status == 204 and answer.body == b""
    task = call(mgr.app, "GET", "/tasks/abc123").json()
    assert task["desired"] == "stop"
    assert call(mgr.app, "DELETE", "/tasks/abc123").status == 204  # stopping a stopped task is fine
    error_of(call(mgr.app, "DELETE", "/tasks/nothere"), 404)


def test_jobs_create_list_scale_and_stop(mgr):
    spec = {"name": "web", "task": {"image": IMAGE, "command": ["sleep", "300"]}, "count": 2}
    created = call(mgr.app, "POST", "/jobs", spec)
    assert created.status == 201
    job = created.json()
    assert (job["name"], job["count"], job["stopped"]) == ("web", 2, False)
    assert sorted(t["name"] for t in job["tasks"]) == ["web-1", "web-2"]
    assert all(t["job"] == "web" and t["node"] == "n1" for t in job["tasks"])

    again = call(mgr.app, "POST", "/jobs", spec)  # a resent submission is the same job
    assert again.status == 200
    assert sorted(t["id"] for t in again.json()["tasks"]) == sorted(t["id"] for t in job["tasks"])

    assert [j["name"] for j in call(mgr.app, "GET", "/jobs").json()] == ["web"]
    assert call(mgr.app, "GET", "/jobs/web").json()["count"] == 2
    error_of(call(mgr.app, "GET", "/jobs/nope"), 404)

    scaled = call(mgr.app, "POST", "/jobs/web/scale", {"count": 3})
    assert scaled.status == 200
    assert sorted(t["name"] for t in scaled.json()["tasks"]) == ["web-1", "web-2", "web-3"]
    down = call(mgr.app, "POST", "/jobs/web/scale", {"count": 1}).json()
    assert [t["name"] for t in down["tasks"]] == ["web-1"]

    assert call(mgr.app, "DELETE", "/jobs/web").status == 204
    stopped = call(mgr.app, "GET", "/jobs/web").json()
    assert stopped["stopped"] is True and stopped["tasks"] == []
    assert all(t["desired"] == "stop" for t in call(mgr.app, "GET", "/tasks?job=web").json())
    error_of(call(mgr.app, "DELETE", "/jobs/nope"), 404)


def test_a_job_deployed_again_is_unchanged_scaled_or_updated(mgr):
    first = call(mgr.app, "POST", "/jobs", {"name": "web", "task": {"image": IMAGE}, "count": 2})
    assert (first.status, first.json()["outcome"], first.json()["version"]) == (201, "created", 1)
    again = call(mgr.app, "POST", "/jobs", {"name": "web", "task": {"image": IMAGE}, "count": 2}).json()
    assert (again["outcome"], again["version"]) == ("unchanged", 1)
    scaled = call(mgr.app, "POST", "/jobs", {"name": "web", "task": {"image": IMAGE}, "count": 3}).json()
    assert (scaled["outcome"], scaled["version"], scaled["count"]) == ("scaled", 1, 3)
    updated = call(mgr.app, "POST", "/jobs", {"name": "web", "task": {"image": "nginx"}, "count": 3}).json()
    assert (updated["outcome"], updated["version"]) == ("updated", 2)
    assert updated["deployment"]["status"] == "running" and updated["deployment"]["from_version"] == 1
    history = call(mgr.app, "GET", "/jobs/web/history").json()
    assert [(v["version"], v["def"]["task"]["image"]) for v in history] == [(1, IMAGE), (2, "nginx")]
    assert error_of(call(mgr.app, "GET", "/jobs/nope/history"), 404)


def test_a_rollback_names_a_version_that_is_kept(mgr):
    call(mgr.app, "POST", "/jobs", {"name": "web", "task": {"image": IMAGE}, "count": 1})
    assert "no earlier version" in error_of(call(mgr.app, "POST", "/jobs/web/rollback", {}), 400)
    call(mgr.app, "POST", "/jobs", {"name": "web", "task": {"image": "nginx"}, "count": 1})
    assert "no version 7" in error_of(call(mgr.app, "POST", "/jobs/web/rollback", {"version": 7}), 400)
    assert "version" in error_of(call(mgr.app, "POST", "/jobs/web/rollback", {"version": "1"}), 400)
    back = call(mgr.app, "POST", "/jobs/web/rollback", {"version": 1}).json()
    assert (back["rolled_back_to"], back["version"], back["task"]["image"]) == (1, 3, IMAGE)
    assert back["deployment"]["policy"] == "rollback"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"count": -1}, "count"),
        ({"count": "2"}, "count"),
        ({"count": 1.5}, "count"),
        ({}, "count"),
        ([3], "count"),
    ],
)
def test_scale_rejects_a_bad_count(mgr, body, words):
    call(mgr.app, "POST", "/jobs", {"name": "web", "task": {"image": IMAGE}, "count": 2})
    assert words in error_of(call(mgr.app, "POST", "/jobs/web/scale", body), 400)
    assert call(mgr.app, "GET", "/jobs/web").json()["count"] == 2


def test_scale_of_an_unknown_job_is_404(mgr):
    error_of(call(mgr.app, "POST", "/jobs/nope/scale", {"count": 2}), 404)


def test_get_nodes(mgr):
    nodes = call(mgr.app, "GET", "/nodes").json()
    assert [n["name"] for n in nodes] == ["n1"]
    (node,) = nodes
    assert (node["state"], node["address"], node["arch"], node["cpus"]) == ("ready", "http://127.0.0.1:1", "x86_64", 4)


def test_post_nodes_admits_a_worker_that_answers(mgr):
    answer = call(mgr.app, "POST", "/nodes", {"address": "http://w1:5556"})
    assert answer.status == 201
    assert (answer.json()["name"], answer.json()["address"]) == ("w1", "http://w1:5556")
    assert [n["name"] for n in call(mgr.app, "GET", "/nodes").json()] == ["n1", "w1"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"address": "http://nobody:5556"}, 503),
        ({}, 400),
        ({"address": 5556}, 400),
    ],
)
def test_post_nodes_errors(mgr, body, status):
    error_of(call(mgr.app, "POST", "/nodes", body), status)
    assert [n["name"] for n in call(mgr.app, "GET", "/nodes").json()] == ["n1"]


def test_an_unexpected_exception_is_a_500_without_insides(mgr):
    message = error_of(call(mgr.app, "POST", "/nodes", {"address": "http://boom:1"}), 500)
    assert "deep inside" not in message  # the exception's text stays in the server's log


def test_events_since_tail_and_by_task(mgr):
    call(mgr.app, "POST", "/tasks", {"id": "aaa1", "image": IMAGE})
    call(mgr.app, "POST", "/tasks", {"id": "bbb2", "image": IMAGE})
    events = call(mgr.app, "GET", "/events").json()
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    assert {e["task_id"] for e in events} == {"aaa1", "bbb2"}
    assert {e["task_id"] for e in call(mgr.app, "GET", "/events?task=aaa1").json()} == {"aaa1"}
    assert [e["id"] for e in call(mgr.app, "GET", "/events?tail=1").json()] == [events[-1]["id"]]
    assert [e["id"] for e in call(mgr.app, "GET", f"/events?since={events[-2]['id']}").json()] == [events[-1]["id"]]
    assert "since" in error_of(call(mgr.app, "GET", "/events?since=yesterday"), 400)


def test_logs_of_a_task_not_placed_yet_are_404(mgr):
    mgr.manager.check_deadlines(time.time() + 3600)  # n1 is down: nothing can be placed
    call(mgr.app, "POST", "/tasks", {"id": "abc123", "image": IMAGE})
    assert "not been placed" in error_of(call(mgr.app, "GET", "/tasks/abc123/logs"), 404)


def test_logs_of_a_task_whose_node_does_not_answer_are_a_503(mgr):
    call(mgr.app, "POST", "/tasks", {"id": "abc123", "image": IMAGE})  # placed on n1, at a port nobody serves
    error_of(call(mgr.app, "GET", "/tasks/abc123/logs"), 503)


# ---- the worker ------------------------------------------------------------------------------------------------


def test_worker_takes_an_assignment_once_per_generation(wapp, worker):
    first = call(wapp, "POST", "/tasks", assignment("t1"))
    assert first.status == 201
    task = first.json()
    assert (task["id"], task["generation"], task["state"], task["node"]) == ("t1", 1, "scheduled", "w1")
    again = call(wapp, "POST", "/tasks", assignment("t1"))
    assert again.status == 200 and again.json()["generation"] == 1
    worker.tick()
    worker.tick()
    assert worker.runtime.starts == 1
    listed = call(wapp, "GET", "/tasks").json()
    assert [(t["id"], t["state"]) for t in listed] == [("t1", "running")]


def test_worker_ignores_an_older_generation(wapp, worker):
    assert call(wapp, "POST", "/tasks", assignment("t1", generation=2)).status == 201
    older = call(wapp, "POST", "/tasks", assignment("t1", generation=1, image="other:1"))
    assert older.status == 200
    assert older.json()["generation"] == 2 and older.json()["image"] == IMAGE
    newer = call(wapp, "POST", "/tasks", assignment("t1", generation=3))
    assert newer.status == 201 and newer.json()["generation"] == 3


def test_worker_stop_by_generation(wapp, worker):
    call(wapp, "POST", "/tasks", assignment("t1", generation=1))
    worker.tick()
    call(wapp, "POST", "/tasks", assignment("t1", generation=2))  # placed here again: generation 2 held
    worker.tick()  # the old copy goes first
    worker.tick()  # then the new one starts
    container = worker.get("t1").container_id
    assert worker.get("t1").generation == 2
    assert [(c.id, c.generation, c.running) for c in worker.runtime.list_owned("w1")] == [(container, 2, True)]

    stale = call(wapp, "DELETE", "/tasks/t1?generation=1")  # a stop meant for the old copy
    assert stale.status == 204 and stale.body == b""
    worker.tick()
    assert worker.get("t1").desired.value == "run"
    assert worker.runtime.inspect(container).running

    assert call(wapp, "DELETE", "/tasks/t1?generation=2").status == 204
    worker.tick()
    stopped = call(wapp, "GET", "/tasks/t1").json()
    assert (stopped["desired"], stopped["state"]) == ("stop", "completed")
    assert worker.runtime.list_owned("w1") == []


def test_worker_stop_of_generation_n_stops_generation_n(wapp, worker):
    call(wapp, "POST", "/tasks", assignment("t1", generation=4))
    worker.tick()
    assert call(wapp, "DELETE", "/tasks/t1?generation=4").status == 204
    worker.tick()
    assert worker.get("t1").state.value == "completed"


@pytest.mark.parametrize(
    ("path", "status", "words"),
    [
        ("/tasks/nothere", 404, "nothere"),
        ("/tasks/t1?generation=two", 400, "generation"),
        ("/tasks/t1?generation=1.5", 400, "generation"),
    ],
)
def test_worker_stop_errors(wapp, path, status, words):
    call(wapp, "POST", "/tasks", assignment("t1"))
    assert words in error_of(call(wapp, "DELETE", path), status)


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({**assignment(), "desired": "stop"}, 409, "run"),
        ({**assignment(), "desired": "maybe"}, 400, "maybe"),
        ({"id": "t1", "generation": 1}, 400, "spec"),
        ({"spec": {"image": IMAGE}, "generation": 1}, 400, "id"),
        ({**assignment(), "generation": "two"}, 400, "two"),
        ({**assignment(), "spec": {"command": ["sleep", "1"]}}, 400, "image"),
        ({**assignment(), "spec": {"image": IMAGE, "ports": ["70000"]}}, 400, "port"),
        ({**assignment(), "spec": {"image": IMAGE, "bogus": True}}, 400, "bogus"),
        ([assignment()], 400, "JSON object"),
    ],
)
def test_worker_rejects_bad_assignments(wapp, worker, body, status, words):
    assert words in error_of(call(wapp, "POST", "/tasks", body), status)
    assert worker.assignments() == []


def test_worker_state_has_version_tasks_and_stats(wapp, worker):
    empty = call(wapp, "GET", "/state").json()
    assert empty["tasks"] == [] and empty["node"] == "w1"
    call(wapp, "POST", "/tasks", assignment("t1"))
    worker.tick()
    state = call(wapp, "GET", "/state?events_since=0").json()
    assert state["version"] > empty["version"]
    assert [(t["id"], t["state"], t["generation"]) for t in state["tasks"]] == [("t1", "running", 1)]
    stats = state["stats"]
    assert stats["runtime"]["ok"] is True and stats["runtime"]["error"] == ""
    assert stats["disconnect_timeout"] == 30.0
    assert stats["name"] == "w1" and stats["tasks"] == 1
    assert [e["state"] for e in state["events"]] == ["scheduled", "running"]
    assert state["last_event"] == state["events"][-1]["id"]
    assert call(wapp, "GET", f"/state?events_since={state['last_event']}").json()["events"] == []


def test_worker_state_reports_an_engine_that_does_not_answer(wapp, worker):
    worker.runtime.engine_stop(gone=True)
    with pytest.raises(Unavailable):
        worker.tick()
    runtime = call(wapp, "GET", "/state").json()["stats"]["runtime"]
    assert runtime["ok"] is False and "fake engine" in runtime["error"]


def test_worker_state_long_poll_waits_and_answers_at_a_change(wapp, worker):
    version = call(wapp, "GET", "/state").json()["version"]
    polled = worker.last_polled
    answers: list = []
    poll = threading.Thread(target=lambda: answers.append(call(wapp, "GET", f"/state?version={version}&wait=20")))
    poll.start()
    # `last_polled` is set under the worker's lock, which the poll holds until it waits: once it has moved, the
    # assignment below (which takes that lock) can only land while the poll waits.
    wait_for(lambda: worker.last_polled != polled, timeout=5)
    assert answers == [], "the long poll answered without a change"
    call(wapp, "POST", "/tasks", assignment("t1"))
    poll.join(timeout=5)
    assert not poll.is_alive(), "the long poll did not answer the change within 5 s (it waits up to 20)"
    assert answers[0].json()["version"] > version
    assert [t["id"] for t in answers[0].json()["tasks"]] == ["t1"]


def test_worker_state_rejects_a_bad_version(wapp):
    assert "version" in error_of(call(wapp, "GET", "/state?version=latest"), 400)


def test_worker_task_detail_logs_and_restart(wapp, worker):
    call(wapp, "POST", "/tasks", assignment("t1"))
    error_of(call(wapp, "POST", "/tasks/t1/restart"), 409)  # not running yet
    error_of(call(wapp, "GET", "/tasks/t1/logs"), 404)  # no container yet
    worker.tick()
    detail = call(wapp, "GET", "/tasks/t1").json()
    assert detail["container"]["id"] == detail["container_id"] and detail["container"]["status"] == "running"
    assert [e["state"] for e in detail["events"]] == ["scheduled", "running"]
    logs = call(wapp, "GET", "/tasks/t1/logs")
    assert logs.status == 200 and logs.headers["content-type"].startswith("text/plain")
    assert logs.body == f"started {IMAGE} sleep 300\n".encode()  # what the fake writes at start
    restarted = call(wapp, "POST", "/tasks/t1/restart", {"reason": "health check failed: 500"})
    assert restarted.status == 200 and restarted.json()["restarts"] == 1
    error_of(call(wapp, "GET", "/tasks/nothere"), 404)


# ---- the two together ------------------------------------------------------------------------------------------


class Deferred:
    """An executor that keeps what it is given until `run` (a nested WSGI call inside a bottle route would rebind
    bottle's thread-local request)."""

    def __init__(self):
        self.jobs: list = []

    def submit(self, fn, *args):
        self.jobs.append((fn, args))

    def run(self) -> int:
        jobs, self.jobs = self.jobs, []
        for fn, args in jobs:
            fn(*args)
        return len(jobs)


def test_a_task_submitted_to_the_manager_api_runs_through_the_worker_api(worker, wapp):
    """The manager's requests (assignment body, stop with its generation) are what the worker's routes accept."""

    def dispatch(address, method, path, body, params):
        assert address == "http://w1:5556"
        query = "&".join(f"{k}={v}" for k, v in (params or {}).items())
        answer = call(wapp, method, f"{path}?{query}" if query else path, body)
        if answer.status >= 400:
            raise from_status(answer.status, answer.json()["error"])
        return answer.json() if answer.body else None

    executor = Deferred()
    manager = Manager(MemoryStore(), dispatch=dispatch, executor=executor)
    try:
        mapp = manager_app(manager, None, Links(TOKEN), TOKEN)
        manager.node_up(Node("w1", "http://w1:5556", Resources(4, 8 << 30, 100 << 30), last_seen=time.time()))

        def poll():  # one long-poll answer, as Membership folds it in
            answer = call(wapp, "GET", "/state?events_since=-1").json()
            manager.heard("w1", answer["stats"])
            for item in manager.observe("w1", answer["tasks"], answer["events"]):
                manager.deliver(item)
            executor.run()

        poll()
        assert call(mapp, "POST", "/tasks", {"id": "abc123", "image": IMAGE}).status == 201
        assert executor.run() == 1  # the assignment went to the worker
        worker.tick()
        poll()
        assert call(mapp, "GET", "/tasks/abc123").json()["state"] == "running"
        assert call(mapp, "DELETE", "/tasks/abc123").status == 204
        assert executor.run() == 1  # the stop, naming generation 1
        worker.tick()
        poll()
        assert call(mapp, "GET", "/tasks/abc123").json()["state"] == "completed"
        assert worker.runtime.list_owned("w1") == []
    finally:
        manager.close()


def test_a_job_cannot_be_sent_with_the_managers_own_fields(mgr):
    body = {"name": "web", "count": 1, "task": {"image": IMAGE}, "stopped": True}
    assert "stopped: kept by the manager" in error_of(call(mgr.app, "POST", "/jobs", body), 400)
    assert call(mgr.app, "GET", "/jobs").json() == []


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_event_limits_count_at_least_one(mgr, limit):
    assert "limit" in error_of(call(mgr.app, "GET", f"/events?limit={limit}"), 400)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"update": {"order": "sideways"}}, "update.order"),
        ({"update": {"max_parallel": 0}}, "update.max_parallel"),
        ({"update": {"min_healthy_time": 60, "healthy_deadline": 30}}, "healthy_deadline"),
        ({"update": {"auto_revert": "yes"}}, "update.auto_revert"),
        ({"depends_on": [{"job": "db", "condition": "ready"}]}, "depends_on[0].condition"),
        ({"depends_on": ["web"]}, "cannot depend on itself"),
        ({"stack": "shop"}, "must be named shop-SERVICE"),
        ({"version": 3}, "kept by the manager"),
    ],
)
def test_a_bad_job_policy_is_a_400_naming_the_field(mgr, extra, words):
    body = {"name": "web", "task": {"image": IMAGE}, **extra}
    assert words in error_of(call(mgr.app, "POST", "/jobs", body), 400)
    assert call(mgr.app, "GET", "/jobs").json() == []


def test_a_stack_deploy_is_checked_whole_before_anything_is_kept(mgr):
    good = {"name": "shop-web", "stack": "shop", "task": {"image": IMAGE}}
    files = [{"source": "secrets/pw", "target": "/run/secrets/pw"}]
    bad = [
        ({"jobs": []}, "jobs must be a list"),
        ({"jobs": [good, {"name": "shop-db", "stack": "other", "task": {"image": IMAGE}}]}, "of stack other"),
        ({"jobs": [good, good]}, "twice"),
        ({"jobs": [{**good, "depends_on": ["shop-db"]}]}, "not in stack shop"),
        ({"jobs": [{**good, "task": {"image": IMAGE, "files": files}}]}, "does not carry"),
        ({"jobs": [good], "files": {"secrets/pw": "not base64!"}}, "not base64"),
    ]
    for body, words in bad:
        assert words in error_of(call(mgr.app, "POST", "/stacks/shop", body), 400), body
    assert call(mgr.app, "GET", "/stacks").json() == [] and call(mgr.app, "GET", "/jobs").json() == []
    assert "DNS label" in error_of(call(mgr.app, "POST", "/stacks/Shop_1", {"jobs": [good]}), 400)


def test_the_task_list_pages_with_a_cursor_and_filters_by_job_state_and_node(mgr):
    call(mgr.app, "POST", "/jobs", {"name": "web", "task": {"image": IMAGE}, "count": 7})
    for _ in range(3):
        call(mgr.app, "POST", "/tasks", {"image": IMAGE})
    everything = call(mgr.app, "GET", "/tasks").json()
    assert len(everything) == 10
    seen, path, pages = [], "/tasks?limit=4", 0
    while path:
        page = call(mgr.app, "GET", path)
        assert page.status == 200 and len(page.json()) <= 4
        seen += [t["id"] for t in page.json()]
        pages += 1
        link = page.headers.get("link")
        assert (link is None) == (page.headers.get("cube-next-cursor") is None)
        path = link[1 : link.index(">")] if link else None
    assert pages == 3 and seen == [t["id"] for t in everything], "every task once, in the list's order"
    web = call(mgr.app, "GET", "/tasks?job=web&limit=5")
    assert len(web.json()) == 5 and all(t["job"] == "web" for t in web.json())
    second = call(mgr.app, "GET", f"/tasks?job=web&limit=5&cursor={web.headers['cube-next-cursor']}")
    assert len(second.json()) == 2 and "cube-next-cursor" not in second.headers
    on_n1 = call(mgr.app, "GET", "/tasks?node=n1").json()
    assert on_n1 and all(t["node"] == "n1" for t in on_n1)
    assert call(mgr.app, "GET", "/tasks?node=nowhere").json() == []
    states = {t["state"] for t in everything}
    for state in states:
        assert {t["state"] for t in call(mgr.app, "GET", f"/tasks?state={state}").json()} == {state}


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("limit=0", "limit"),
        ("limit=x", "limit"),
        ("limit=10001", "limit"),
        ("state=sleeping", "state must be one of"),
        ("cursor=nonsense", "cursor"),
        ("cursor=WzEsMl0=", "cursor"),
    ],
)
def test_a_bad_page_or_filter_is_a_400_naming_it(mgr, query, words):
    assert words in error_of(call(mgr.app, "GET", f"/tasks?{query}"), 400)
