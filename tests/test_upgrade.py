"""`cube upgrade`, fast: the one-at-a-time plan (a pure function), the rollout's record (checks of `POST /upgrade`,
resuming after a manager restart), a service replacing its own pyz (hash, architecture, version checked; the old
file kept), and the routes (400s naming the field, a refused skew) on a real manager and an in-process worker over
HTTP. The pyz files are the built dist/cube.pyz and copies of it with another version, API level or architecture
(tests/repack.py)."""

import hashlib
import json
import os
import shutil
import threading

import pytest
from conftest import wait_for
from repack import repack

from cube import API_VERSION, __version__
from cube.cli import upgrade as cli
from cube.cluster.api import Server, worker_app
from cube.cluster.manager_service import ManagerService
from cube.core.errors import BadRequest, Conflict, CubeError
from cube.manager.upgrade import FAILED, MANAGER, RUNNING, SUCCESSFUL, Upgrades, plan, skew
from cube.ops.upgrade import SelfUpgrade, describe, sha256_of
from cube.store import MemoryStore
from cube.worker.runtime import FakeRuntime
from cube.worker.worker import Worker

NEW = "9.9.9-test"
TOKEN = "upgrade-test-token"


@pytest.fixture(scope="module")
def files(pyz, tmp_path_factory):
    """The built pyz, one of a new version, one for armv7l, one two API levels up, and a file that is no pyz."""
    where = tmp_path_factory.mktemp("pyz")
    old = shutil.copy(pyz, where / "old.pyz")
    made = {
        "old": str(old),
        "new": repack(pyz, str(where / "new.pyz"), NEW),
        "armv7l": repack(pyz, str(where / "arm.pyz"), NEW, arch="armv7l"),
        "far": repack(pyz, str(where / "far.pyz"), "99.0.0", api=API_VERSION + 2),
        "junk": str(where / "junk.pyz"),
    }
    (where / "junk.pyz").write_bytes(b"#!/usr/bin/env python3\nprint('not a zip')\n" * 100)
    return made


def node(name, version="0.1.0", state="ready", arch="x86_64"):
    return {"name": name, "version": version, "state": state, "arch": arch, "address": f"http://{name}:1"}


def rollout(**extra):
    return {"version": "2", "sha256": {"x86_64": "a" * 64}, "nodes": {}, "status": RUNNING, **extra}


# ---- the plan ----------------------------------------------------------------------------------------------------


def test_plan_goes_one_node_at_a_time_in_name_order():
    nodes = [node("b"), node("a")]
    step = plan(rollout(), nodes, now=100)
    assert (step.action, step.node) == ("send", "a")
    sent = rollout(nodes={"a": {"sent": 100}})
    assert (plan(sent, nodes, now=101).action, plan(sent, nodes, now=101).node) == ("wait", "a")
    nodes[1]["version"] = "2"  # a is back at the new version
    step = plan(sent, nodes, now=102)
    assert (step.action, step.node) == ("send", "b")
    nodes[0]["version"] = "2"
    both = rollout(nodes={"a": {"sent": 100}, "b": {"sent": 102}})
    assert plan(both, nodes, now=103).action == "done"


def test_plan_waits_for_a_node_that_is_back_at_the_version_but_not_ready_yet():
    step = plan(rollout(nodes={"a": {"sent": 100}}), [node("a", version="2", state="down")], now=101)
    assert (step.action, step.node) == ("wait", "a")


def test_plan_fails_when_a_node_does_not_come_back_in_time():
    step = plan(rollout(nodes={"a": {"sent": 100}}), [node("a"), node("b")], now=100 + 121, deadline=120)
    assert step.action == "fail"
    assert "node a did not come back at cube 2 within 120 s" in step.reason and "cube 0.1.0" in step.reason


def test_plan_stops_at_a_refusal_and_the_nodes_after_it_keep_their_version():
    step = plan(rollout(nodes={"a": {"sent": 1, "error": "sha256: no match"}}), [node("a"), node("b")], now=2)
    assert (step.action, step.node) == ("fail", "a")
    assert step.reason == "node a refused the upgrade: sha256: no match"


def test_plan_skips_a_node_that_is_down_and_names_it():
    step = plan(rollout(), [node("a", state="down"), node("b")], now=1)
    assert (step.action, step.node) == ("send", "b")
    step = plan(rollout(nodes={"b": {"sent": 1}}), [node("a", state="down"), node("b", version="2")], now=2)
    assert step.action == "done" and step.skipped == ["a"] and "down: a" in step.reason


def test_plan_refuses_a_node_of_an_architecture_without_a_pyz():
    step = plan(rollout(), [node("pi", arch="armv7l")], now=1)
    assert step.action == "fail" and "node pi runs armv7l and this rollout has no pyz for it" == step.reason


def test_plan_replaces_the_manager_last_and_waits_for_it():
    record = rollout(manager="/usr/local/bin/cube", manager_version="1", nodes={"a": {"sent": 1}})
    nodes = [node("a", version="2")]
    assert plan(record, nodes, now=2).action == "manager"
    record["nodes"][MANAGER] = {"sent": 2}
    assert plan(record, nodes, now=3).action == "wait"  # the old manager, about to exit
    assert plan(record, nodes, now=200, deadline=120).action == "fail"
    record["manager_version"] = "2"  # the new one, started
    assert plan(record, nodes, now=4).action == "done"


def test_skew_allows_one_api_level_either_way_and_says_what_to_do_beyond():
    assert skew(API_VERSION + 1, "x") is None and skew(API_VERSION - 1, "x") is None
    problem = skew(API_VERSION + 2, "7.0.0")
    assert problem is not None and f"level {API_VERSION + 2}" in problem
    assert f"upgrade through a release of level {API_VERSION + 1} first" in problem


# ---- the rollout's record ------------------------------------------------------------------------------------------


class Fleet:
    """Nodes whose versions a test moves, and a `send` that records who was sent what."""

    def __init__(self, *nodes):
        self.nodes = list(nodes)
        self.sent: list[str] = []
        self.refuse: str | None = None
        self.held = {"x86_64": {"version": "2", "api": API_VERSION, "sha256": "b" * 64}}

    def send(self, target, arch):
        self.sent.append(target["name"])
        if self.refuse:
            raise BadRequest(self.refuse)

    def upgrades(self, store, clock=lambda: 100.0):
        return Upgrades(store, lambda: [dict(n) for n in self.nodes], lambda: self.held, self.send, clock=clock)


def test_begin_names_the_field_of_a_bad_request():
    fleet = Fleet(node("a"))
    upgrades = fleet.upgrades(MemoryStore())
    bad = [
        ([], "send {"),
        ({"sha256": {"x86_64": "b" * 64}}, "version must be"),
        ({"version": "2"}, "sha256 must be"),
        ({"version": "2", "sha256": {"x86_64": "B0"}}, "sha256.x86_64 must be 64 hex digits"),
        ({"version": "2", "sha256": {"aarch64": "b" * 64}}, "sha256.aarch64: no pyz for aarch64 was uploaded"),
        ({"version": "2", "sha256": {"x86_64": "c" * 64}}, "sha256.x86_64: the manager holds a pyz of hash bbbb"),
        ({"version": "3", "sha256": {"x86_64": "b" * 64}}, "version: the x86_64 pyz is cube 2, not 3"),
    ]
    for body, words in bad:
        with pytest.raises(BadRequest) as caught:
            upgrades.begin(body)
        assert words in caught.value.message, (body, caught.value.message)
    assert upgrades.current() is None  # nothing recorded


def test_begin_refuses_a_cluster_architecture_without_a_pyz_and_a_version_too_far():
    fleet = Fleet(node("a"), node("pi", arch="armv7l"))
    upgrades = fleet.upgrades(MemoryStore())
    with pytest.raises(BadRequest, match="the cluster runs armv7l too"):
        upgrades.begin({"version": "2", "sha256": {"x86_64": "b" * 64}})
    fleet.nodes.pop()
    fleet.held["x86_64"]["api"] = API_VERSION + 2
    with pytest.raises(Conflict, match="upgrade through a release of level"):
        upgrades.begin({"version": "2", "sha256": {"x86_64": "b" * 64}})
    assert upgrades.current() is None


def test_a_refusal_fails_the_rollout_and_says_which_node_and_why():
    fleet = Fleet(node("a"), node("b"))
    fleet.refuse = "sha256: the pyz received hashes to 00, not bb: not replaced"
    upgrades = fleet.upgrades(MemoryStore())
    upgrades.begin({"version": "2", "sha256": {"x86_64": "b" * 64}})
    upgrades.tick()  # sends to a, which refuses
    upgrades.tick()
    status = upgrades.status()
    assert fleet.sent == ["a"]
    assert status["status"] == FAILED
    assert status["reason"] == f"node a refused the upgrade: {fleet.refuse}"
    assert [row["step"] for row in status["nodes"]] == [f"refused: {fleet.refuse}", "waiting its turn"]


def test_a_restarted_manager_resumes_the_rollout_where_it_was():
    store, now = MemoryStore(), [100.0]
    fleet = Fleet(node("a"), node("b"))
    first = fleet.upgrades(store, clock=lambda: now[0])
    first.begin({"version": "2", "sha256": {"x86_64": "b" * 64}})
    first.tick()
    assert fleet.sent == ["a"]
    # The manager restarts: a new Upgrades on the same store, while node a is still restarting.
    second = fleet.upgrades(store, clock=lambda: now[0])
    second.tick()
    assert fleet.sent == ["a"], "a node already sent its pyz is waited for, not sent it again"
    fleet.nodes[0]["version"] = "2"
    second.tick()
    assert fleet.sent == ["a", "b"]
    fleet.nodes[1]["version"] = "2"
    second.tick()
    assert second.status()["status"] == SUCCESSFUL
    assert [row["step"] for row in second.status()["nodes"]] == ["upgraded", "upgraded"]


def test_begin_again_with_the_same_files_is_the_running_rollout_and_another_is_refused():
    fleet = Fleet(node("a"))
    upgrades = fleet.upgrades(MemoryStore())
    body = {"version": "2", "sha256": {"x86_64": "b" * 64}}
    started = upgrades.begin(body)["started"]
    assert upgrades.begin(body)["started"] == started
    fleet.held["x86_64"] = {"version": "3", "api": API_VERSION, "sha256": "d" * 64}
    with pytest.raises(Conflict, match="an upgrade to cube 2 is running"):
        upgrades.begin({"version": "3", "sha256": {"x86_64": "d" * 64}})


# ---- a service replacing its pyz ------------------------------------------------------------------------------------


def chunks_of(path):
    handle = open(path, "rb")
    return lambda size: handle.read(size)


@pytest.fixture
def installed(files, tmp_path):
    """An installed pyz (a copy of the built one) and a SelfUpgrade of it that records its exit."""
    path = str(tmp_path / "bin" / "cube")
    os.makedirs(os.path.dirname(path))
    shutil.copy(files["old"], path)
    exited = threading.Event()
    return path, SelfUpgrade(path, describe(path).arch, exited.set), exited


def test_self_upgrade_replaces_the_pyz_keeps_the_old_one_and_exits(files, installed):
    path, upgrader, exited = installed
    before = sha256_of(path)
    answer = upgrader.apply(chunks_of(files["new"]), sha256_of(files["new"]), NEW)
    assert answer == {"replaced": path, "old": path + ".old", "from": __version__, "to": NEW, "restarting": True}
    assert sha256_of(path) == sha256_of(files["new"]) and sha256_of(path + ".old") == before
    assert os.access(path, os.X_OK)
    assert exited.wait(5) and upgrader.exiting
    assert sorted(os.listdir(os.path.dirname(path))) == ["cube", "cube.old"]  # no temporary file left


@pytest.mark.parametrize(
    "which, sha, version, words",
    [
        ("new", "0" * 64, NEW, "sha256: the pyz received hashes to"),
        ("armv7l", None, NEW, "arch: the pyz is the armv7l build and this node runs x86_64"),
        ("new", None, "1.2.3", f"version: the pyz is cube {NEW}, not 1.2.3"),
        ("junk", None, NEW, "is not a cube.pyz"),
    ],
)
def test_self_upgrade_refuses_a_pyz_that_is_not_the_one_announced(files, installed, which, sha, version, words):
    path, upgrader, exited = installed
    before = sha256_of(path)
    with pytest.raises(BadRequest) as caught:
        upgrader.apply(chunks_of(files[which]), sha or sha256_of(files[which]), version)
    assert words in caught.value.message
    assert sha256_of(path) == before and sorted(os.listdir(os.path.dirname(path))) == ["cube"]
    assert not upgrader.exiting and not exited.is_set()


def test_a_service_not_run_from_a_pyz_says_it_cannot_replace_itself(files):
    upgrader = SelfUpgrade(None, None, lambda: None)
    with pytest.raises(Conflict, match="runs from sources .* not from a cube.pyz: it cannot replace itself"):
        upgrader.apply(chunks_of(files["new"]), sha256_of(files["new"]), NEW)


# ---- over HTTP: a real manager, an in-process worker ------------------------------------------------------------


@pytest.fixture
def service(tmp_path):
    service = ManagerService(
        port=0, host="127.0.0.1", data=str(tmp_path / "m"), token=TOKEN, insecure=True, node_timeout=3
    ).start()
    yield service
    service.close()


def put_pyz(client, arch, path):
    with open(path, "rb") as handle:
        response = client.open("PUT", f"/upgrade/pyz/{arch}", chunks=iter(lambda: handle.read(65536), b""))
    try:
        return json.loads(response.read())
    finally:
        response.close()


def test_pyz_upload_checks_the_file_and_its_architecture(service, files):
    client = service.client()
    with pytest.raises(BadRequest, match="arch must be one of x86_64, aarch64, armv7l, not 'sparc'"):
        put_pyz(client, "sparc", files["new"])
    with pytest.raises(BadRequest, match="is not a cube.pyz"):
        put_pyz(client, "x86_64", files["junk"])
    with pytest.raises(BadRequest, match="arch: the file is the armv7l build, not the x86_64 one"):
        put_pyz(client, "x86_64", files["armv7l"])
    with pytest.raises(BadRequest, match="send the pyz as a chunked body"):
        client.request("PUT", "/upgrade/pyz/x86_64", body={})
    assert client.get("/upgrade/pyz") == {}
    assert os.listdir(os.path.join(service.directory, "upgrade")) == []  # nothing half-written kept
    held = put_pyz(client, "x86_64", files["new"])
    digest = hashlib.sha256(open(files["new"], "rb").read()).hexdigest()
    assert held == {"version": NEW, "api": API_VERSION, "arch": "x86_64", "sha256": digest, "size": held["size"]}
    with pytest.raises(BadRequest, match="sha256.x86_64 must be 64 hex digits"):
        client.post("/upgrade", {"version": NEW, "sha256": {"x86_64": "xyz"}})
    with pytest.raises(BadRequest, match="version must be the version of the uploaded pyz"):
        client.post("/upgrade", {"version": 7, "sha256": {"x86_64": digest}})
    assert client.get("/upgrade")["status"] == ""


def test_a_pyz_too_many_api_levels_away_is_refused_in_one_line(service, files):
    client = service.client()
    held = put_pyz(client, "x86_64", files["far"])
    with pytest.raises(Conflict) as caught:
        client.post("/upgrade", {"version": "99.0.0", "sha256": {"x86_64": held["sha256"]}})
    assert "\n" not in caught.value.message and "upgrade through a release of level" in caught.value.message


def test_the_manager_pushes_the_pyz_to_its_worker_which_replaces_its_own(service, files, tmp_path):
    """A worker served over HTTP, as `cube worker` serves it, with a pyz of its own: the rollout pushes the new pyz,
    the worker checks and puts it in place, and says it is restarting (here it does not: its version stays, and the
    rollout waits for it)."""
    path = str(tmp_path / "w" / "cube")
    os.makedirs(os.path.dirname(path))
    shutil.copy(files["old"], path)
    exited = threading.Event()
    worker = Worker("w-upgrade", FakeRuntime(), MemoryStore(), sync=True)
    server = Server(worker_app(worker, TOKEN, SelfUpgrade(path, "x86_64", exited.set)), "127.0.0.1", 0).start()
    try:
        service.membership.add(server.url)
        client = service.client()
        held = put_pyz(client, "x86_64", files["new"])
        status = client.post("/upgrade", {"version": NEW, "sha256": {"x86_64": held["sha256"]}})
        assert status["status"] == RUNNING and status["nodes"][0]["from"] == __version__
        assert exited.wait(15), service.upgrades.status()
        assert sha256_of(path) == held["sha256"] and os.path.exists(path + ".old")
        wait_for(lambda: client.get("/upgrade")["nodes"][0]["step"] == "restarting", timeout=5)
        assert client.get("/upgrade")["status"] == RUNNING
    finally:
        server.stop()
        worker.close()


def test_a_worker_in_its_managers_process_refuses_and_the_rollout_stops(service, files):
    worker = Worker("w-dev", FakeRuntime(), MemoryStore(), sync=True)
    server = Server(worker_app(worker, TOKEN), "127.0.0.1", 0).start()
    try:
        service.membership.add(server.url)
        client = service.client()
        held = put_pyz(client, "x86_64", files["new"])
        client.post("/upgrade", {"version": NEW, "sha256": {"x86_64": held["sha256"]}})
        final = wait_for(lambda: (s := client.get("/upgrade"))["status"] != RUNNING and s, timeout=15)
        assert final["status"] == FAILED
        assert final["reason"] == (
            "node w-dev refused the upgrade: this worker runs inside its manager's process (cube dev): "
            "it cannot replace itself"
        )
    finally:
        server.stop()
        worker.close()


def test_the_worker_route_names_a_bad_query(files):
    worker = Worker("w-q", FakeRuntime(), MemoryStore(), sync=True)
    server = Server(worker_app(worker, TOKEN, SelfUpgrade(None, None, lambda: None)), "127.0.0.1", 0).start()
    try:
        from cube.cluster.client import Client

        client = Client(server.url, TOKEN)
        with pytest.raises(BadRequest, match="query parameter sha256 must be 64 hex digits"):
            client.open("POST", "/upgrade", params={"sha256": "x", "version": "1"}, chunks=iter([b"x"]))
        with pytest.raises(BadRequest, match="query parameter version is missing"):
            client.open("POST", "/upgrade", params={"sha256": "a" * 64}, chunks=iter([b"x"]))
        with pytest.raises(CubeError, match="runs from sources"):
            client.open("POST", "/upgrade", params={"sha256": "a" * 64, "version": "1"}, chunks=iter([b"x"]))
    finally:
        server.stop()
        worker.close()


# ---- the command line's own checks ----------------------------------------------------------------------------------


def test_the_cli_checks_the_files_before_sending_anything(files, tmp_path):
    found = cli.read_files([files["new"], files["armv7l"]])
    assert {arch: info.version for arch, (_, info) in found.items()} == {"x86_64": NEW, "armv7l": NEW}
    with pytest.raises(CubeError, match="are both the x86_64 build: give one"):
        cli.read_files([files["new"], files["old"]])
    with pytest.raises(CubeError, match="the files are of different versions"):
        cli.read_files([files["old"], files["armv7l"]])
    with pytest.raises(CubeError, match="--pyz .*junk.pyz: junk.pyz is not a cube.pyz"):
        cli.read_files([files["junk"]])
    with pytest.raises(CubeError, match="this cube runs from sources, not from a pyz: pass the new one with --pyz"):
        cli.read_files([])


def test_the_cli_refuses_a_skew_before_uploading(service, files):
    client, said = service.client(), []
    with pytest.raises(CubeError, match="upgrade through a release of level"):
        cli.start(client, cli.read_files([files["far"]]), False, said.append)
    assert said == [] and client.get("/upgrade/pyz") == {}


def test_the_cli_says_when_there_is_nothing_to_upgrade(service, files):
    client, said = service.client(), []  # a manager of this version, without nodes; the built pyz is this version
    assert cli.start(client, cli.read_files([files["old"]]), False, said.append) is None
    assert said == [f"every node and the manager already run cube {__version__}: nothing to upgrade"]
    assert client.get("/upgrade/pyz") == {}
