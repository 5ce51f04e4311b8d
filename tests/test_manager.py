"""Manager tests on the fake runtime through HTTP: a real manager and real workers talking on loopback (no Docker),
plus manager restarts from its diskcache store. The decisions themselves are tested in test_converge.py."""

import time

import pytest
from conftest import wait_for

from cube.cluster.client import Client
from cube.cluster.manager_service import start_dev
from cube.cluster.trust import Trust
from cube.core.errors import BadRequest, Conflict, NotFound, Unauthorized
from cube.worker.runtime import FakeRuntime


@pytest.fixture
def cluster(tmp_path):
    runtime = FakeRuntime()
    service = start_dev(
        port=0, data=str(tmp_path / "dev"), workers=2, runtime=runtime, cpus=2, memory=4 << 30, node_timeout=3.0
    )
    client = service.client()
    yield service, client, runtime
    service.close()


def running(client, ref):
    task = client.get(f"/tasks/{ref}")
    return task if task["state"] == "running" else None


def test_task_submitted_is_placed_at_once_and_runs(cluster):
    service, client, runtime = cluster
    task = client.post("/tasks", {"image": "busybox", "command": ["sleep", "60"], "ports": ["80"]})
    assert task["state"] in ("scheduled", "running") and task["node"], "placed before the answer, not on a tick"
    got = wait_for(lambda: running(client, task["id"]), timeout=10)
    assert got["host_ports"]["80/tcp"] and got["container_id"]
    states = [e["state"] for e in got["events"]]
    assert states[0] == "pending" and "running" in states


def test_job_of_three_spreads_and_scales(cluster):
    service, client, runtime = cluster
    job = client.post("/jobs", {"name": "web", "count": 3, "task": {"image": "busybox", "cpu": 0.5}})
    assert len(job["tasks"]) == 3
    wait_for(lambda: client.get("/jobs/web")["running"] == 3)
    nodes = {t["node"] for t in client.get("/tasks", job="web")}
    assert len(nodes) == 2, "E-PVM spreads three tasks over two empty nodes"
    assert sorted(t["name"] for t in client.get("/jobs/web")["tasks"]) == ["web-1", "web-2", "web-3"]
    client.post("/jobs/web/scale", {"count": 1})
    wait_for(lambda: len([t for t in client.get("/tasks", job="web") if t["state"] == "running"]) == 1)
    wait_for(lambda: len(runtime.containers) == 1)
    client.delete("/jobs/web")
    wait_for(lambda: not runtime.containers)


def test_no_node_fits_stays_pending_with_reasons_then_places(cluster):
    service, client, runtime = cluster
    task = client.post("/tasks", {"image": "busybox", "memory": "8g"})
    assert task["state"] == "pending"
    detail = client.get(f"/tasks/{task['id']}")
    assert "insufficient memory (needs 8 GiB, free 4 GiB)" in detail["reason"]
    assert set(detail["placement"]["reasons"]) == {n["name"] for n in client.get("/nodes")}
    client.delete(f"/tasks/{task['id']}")
    assert client.get(f"/tasks/{task['id']}")["state"] == "completed"


def test_pending_task_placed_when_capacity_frees(cluster):
    service, client, runtime = cluster
    big = [client.post("/tasks", {"image": "busybox", "cpu": 2}) for _ in range(2)]
    waiting = client.post("/tasks", {"image": "busybox", "cpu": 1.5})
    assert waiting["state"] == "pending"
    client.delete(f"/tasks/{big[0]['id']}")
    wait_for(lambda: running(client, waiting["id"]))


def test_bad_input_is_400_with_message(cluster):
    service, client, runtime = cluster
    with pytest.raises(BadRequest, match="image is required"):
        client.post("/tasks", {"command": ["true"]})
    with pytest.raises(BadRequest, match="unknown field in task spec: imagee"):
        client.post("/tasks", {"image": "x", "imagee": "y"})
    with pytest.raises(BadRequest, match="from 1 to 65535"):
        client.post("/tasks", {"image": "x", "ports": ["70000"]})
    with pytest.raises(BadRequest, match="count must be"):
        client.post("/jobs", {"name": "j", "count": -1, "task": {"image": "x"}})
    with pytest.raises(BadRequest, match="not valid JSON"):
        client._local.conn = None
        import http.client

        conn = http.client.HTTPSConnection(
            "127.0.0.1", service.server.port, context=service.trust.for_clients().client_context()
        )
        conn.request("POST", "/tasks", body=b"{nope", headers={"Authorization": f"Bearer {service.token}"})
        response = conn.getresponse()
        from cube.cluster.client import _error

        raise _error(response.status, response.read())
    assert client.get("/tasks") == []


def test_wrong_token_is_401_and_health_is_open(cluster):
    service, client, runtime = cluster
    with pytest.raises(Unauthorized):
        Client(service.url, "wrong", trust=service.trust.for_clients()).get("/tasks")
    assert Client(service.url, trust=Trust()).health()["status"] == "ok"  # no CA, no token: /health only


def test_unknown_task_and_job_are_404(cluster):
    service, client, runtime = cluster
    with pytest.raises(NotFound):
        client.get("/tasks/nope")
    with pytest.raises(NotFound):
        client.delete("/jobs/nope")


def test_same_client_id_is_idempotent_and_names_unique(cluster):
    service, client, runtime = cluster
    first = client.post("/tasks", {"id": "abc123", "name": "web", "image": "busybox"})
    again = client.post("/tasks", {"id": "abc123", "name": "web", "image": "busybox"})
    assert first["id"] == again["id"] == "abc123"
    with pytest.raises(Conflict, match="already"):
        client.post("/tasks", {"name": "web", "image": "busybox"})
    wait_for(lambda: running(client, "abc123"))
    assert runtime.starts == 1


def test_manager_restart_keeps_everything_and_restarts_nothing(tmp_path):
    runtime = FakeRuntime()
    data = str(tmp_path / "dev")
    service = start_dev(port=0, data=data, workers=1, runtime=runtime)
    client = service.client()
    client.post("/jobs", {"name": "api", "count": 2, "task": {"image": "busybox"}})
    single = client.post("/tasks", {"image": "busybox", "name": "solo"})
    wait_for(lambda: client.get("/jobs/api")["running"] == 2 and running(client, single["id"]))
    events_before = len(client.get("/events"))
    service.close()
    starts = runtime.starts
    again = start_dev(port=0, data=data, workers=1, runtime=runtime)
    try:
        client = again.client()
        assert client.get("/jobs/api")["running"] == 2
        assert running(client, single["id"])
        time.sleep(1.0)
        assert runtime.starts == starts, "no container started again"
        assert len(runtime.containers) == 3
        assert len(client.get("/events")) >= events_before
        assert {t["name"] for t in client.get("/tasks")} == {"api-1", "api-2", "solo"}
    finally:
        again.close()
