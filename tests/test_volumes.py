"""Volumes (issue 11): the spec's rules (a 400 naming the field), the scheduler's volume check, and the manager's
pinning driven through the harness (real manager, real workers on fake runtimes, one fake clock): a named volume
lives on the node of its first placement, its tasks go only there and wait for it when it is down, and nothing
but `cube volume rm` deletes it. The same on a real Docker engine: tests/test_volumes_docker.py."""

import pytest
from factories import make_node, make_spec
from harness import ClusterHarness, Inline
from test_api import call, error_of

from cube.cluster.api import manager_app
from cube.core.errors import Conflict, InvalidSpec, NotFound, StorageFull, Unavailable
from cube.core.model import Node, Resources, Task
from cube.core.spec import Mount, TaskSpec
from cube.manager.manager import Manager
from cube.scheduler import VOLUME_ELSEWHERE, place
from cube.scheduler.feasibility import check_state, checks_for, volume_check
from cube.store import MemoryStore

IMAGE = "cube-busybox:latest"


def spec(volumes=(), **more) -> dict:
    return {"image": IMAGE, "command": ["sleep", "3600"], "volumes": list(volumes), **more}


def refused(data: dict) -> str:
    with pytest.raises(InvalidSpec) as caught:
        TaskSpec.from_dict(data)
    assert caught.value.status == 400
    return caught.value.message


# ---- the spec ------------------------------------------------------------------------------------------------


def test_the_three_kinds_of_mount_parse_and_round_trip():
    parsed = TaskSpec.from_dict(
        spec(
            ["pgdata:/var/lib/postgresql/data", "/srv/media:/media:ro", {"source": "cache", "target": "/cache"}],
            tmpfs=["/run:size=64m", "/tmp"],
        )
    )
    assert parsed.volumes == (
        Mount("volume", "/var/lib/postgresql/data", "pgdata"),
        Mount("bind", "/media", "/srv/media", read_only=True),
        Mount("volume", "/cache", "cache"),
        Mount("tmpfs", "/run", size=64 << 20),
        Mount("tmpfs", "/tmp"),
    )
    assert parsed.named_volumes == ("pgdata", "cache")
    data = parsed.to_dict()
    assert "tmpfs" not in data, "tmpfs mounts are kept among the volumes"
    assert TaskSpec.from_dict(data) == parsed == TaskSpec.from_dict(data, stored=True)
    assert str(parsed.volumes[1]) == "/srv/media:/media:ro" and str(parsed.volumes[3]) == "tmpfs:/run:size=64 MiB"


def test_a_spec_without_mounts_is_written_as_before():
    # A worker of an older Cube refuses fields it does not know: a task without mounts must still run there.
    data = TaskSpec.from_dict({"image": IMAGE}).to_dict()
    assert "volumes" not in data and "allow_host_root" not in data
    old = {k: v for k, v in data.items()}  # a record an older Cube wrote
    assert TaskSpec.from_dict(old, stored=True).volumes == ()


@pytest.mark.parametrize(
    ("volumes", "tmpfs", "words"),
    [
        (["pgdata:data"], [], "volumes[0] target must be an absolute path"),
        (["pgdata:/var/../etc"], [], "volumes[0] target must not contain '..'"),
        (["data:/ok", "./media:/media"], [], "volumes[1]: volume name './media'"),
        (["/srv/../etc:/media"], [], "volumes[0] source must not contain '..'"),
        (["pgdata:/"], [], "volumes[0] target cannot be /"),
        (["a:/data"], [], "volumes[0]: volume name 'a' must be 2-255"),
        (["pgdata"], [], "volumes[0] must look like NAME:/path"),
        (["pgdata:/data:rx"], [], "volumes[0] must look like NAME:/path"),
        (["one:/data", "two:/data/"], [], "volumes mount /data twice"),
        ([{"type": "nfs", "source": "x", "target": "/x"}], [], "volumes[0].type must be one of volume, bind, tmpfs"),
        ([{"source": "pgdata", "target": "/d", "size": "1g"}], [], "volumes[0]: size is a tmpfs's"),
        ([], ["run"], "tmpfs[0] target must be an absolute path"),
        ([], ["/run:mode=1777"], "tmpfs[0] must look like /path or /path:size=64m"),
        ([], ["/run:size=lots"], "tmpfs[0] size must be a size"),
        ([7], [], "volumes[0] must be a string such as pgdata:/data or an object"),
        ([f"v{i}:/d{i}" for i in range(33)], [], "at most 32"),
    ],
)
def test_bad_mounts_are_refused_naming_the_field(volumes, tmpfs, words):
    assert words in refused(spec(volumes, tmpfs=tmpfs))


@pytest.mark.parametrize(
    "source", ["/", "/var/run/docker.sock", "/run/docker.sock", "/etc", "/etc/", "/proc", "/sys", "/dev", "/boot"]
)
def test_the_host_root_and_the_docker_socket_need_allow_host_root(source):
    message = refused(spec([f"{source}:/host"]))
    assert message.startswith("volumes[0]: a bind mount of ") and "allow_host_root: true" in message
    assert "--allow-host-root" in message
    allowed = TaskSpec.from_dict(spec([f"{source}:/host:ro"], allow_host_root=True))
    assert allowed.allow_host_root and allowed.to_dict()["allow_host_root"] is True
    assert "must be true or false" in refused(spec([f"{source}:/host"], allow_host_root="yes"))


def test_a_directory_under_etc_is_not_the_host_root():
    assert TaskSpec.from_dict(spec(["/etc/ssl/certs:/certs:ro"])).volumes[0].source == "/etc/ssl/certs"


def test_stored_records_load_without_the_request_rules():
    # What an older or a laxer Cube kept still loads (stored=True checks types and text only).
    record = spec(
        [{"type": "bind", "source": "/", "target": "/host"}, {"type": "volume", "source": "x", "target": "d"}]
    )
    loaded = TaskSpec.from_dict(record, stored=True)
    assert [m.source for m in loaded.volumes] == ["/", "x"]
    with pytest.raises(InvalidSpec, match=r"volumes\[0\] target must be printable text"):
        TaskSpec.from_dict(spec([{"source": "ab", "target": "/a\x00"}]), stored=True)


def test_the_api_answers_400_naming_the_field():
    manager = ClusterHarness(["n1"]).manager
    app = manager_app(manager, None, None, None)
    body = {"image": IMAGE, "volumes": ["/var/run/docker.sock:/var/run/docker.sock"]}
    assert "volumes[0]: a bind mount of /var/run/docker.sock" in error_of(call(app, "POST", "/tasks", body), 400)
    body = {"name": "db", "count": 2, "task": {"image": IMAGE, "volumes": ["pg:data"]}}
    assert "volumes[0] target must be an absolute path" in error_of(call(app, "POST", "/jobs", body), 400)
    assert manager.list_tasks() == []


# ---- the scheduler's check ------------------------------------------------------------------------------------


def test_the_volume_check_keeps_a_task_on_the_node_of_its_volume():
    task = make_spec(volumes=["pgdata:/data", "/srv:/srv"])
    n1, n2 = make_node("n1"), make_node("n2")
    check = volume_check({"pgdata": ("n2", "ready")})
    assert check(task, n2) is None
    found = check(task, n1)
    assert found.kind == VOLUME_ELSEWHERE and found.detail == "volume pgdata lives on n2"
    assert volume_check({"pgdata": ("n2", "down")})(task, n1).detail == "volume pgdata lives on n2, which is down"
    assert "which was removed from the cluster (`cube volume rm pgdata` forgets it)" in str(
        volume_check({"pgdata": ("n2", "gone")})(task, n1)
    )
    assert volume_check({"other": ("n2", "ready")})(task, n1) is None, "a volume the task does not mount"
    # Joined to the pipeline right after the state check, only when one of the spec's volumes lives somewhere.
    assert checks_for(task, {}) == (check_state,) == checks_for(task, {"other": ("n2", "ready")})
    assert len(checks_for(task, {"pgdata": ("n2", "ready")})) == 2


def test_placement_goes_to_the_volume_s_node_or_nowhere():
    task = make_spec(volumes=["pgdata:/data"], cpu=1)
    nodes = [make_node(f"n{i}") for i in range(1, 5)]
    assert {place(task, nodes, seed=s).node.name for s in range(20)} == {"n1", "n2", "n3", "n4"}
    homes = {"pgdata": ("n3", "ready")}
    assert {place(task, nodes, seed=s, homes=homes).node.name for s in range(20)} == {"n3"}
    nodes[2].state = "down"
    placement = place(task, nodes, homes={"pgdata": ("n3", "down")})
    assert placement.node is None
    assert placement.reasons["n1"] == "volume pgdata lives on n3, which is down"
    assert placement.reasons["n3"] == "node is down"
    assert placement.tally() == "3 volume on another node, 1 node not ready"


# ---- the manager, through the harness ----------------------------------------------------------------------------


@pytest.fixture
def c():
    harness = ClusterHarness(["n1", "n2", "n3"])
    yield harness
    harness.close()


def test_the_first_placement_pins_the_volume_and_its_other_tasks_follow(c):
    first = c.submit(spec(["pgdata:/data"]))
    c.settle()
    home = c.task(first["id"])["node"]
    assert c.store.get("volumes", "pgdata")["node"] == home
    others = [c.submit(spec(["pgdata:/backup:ro", "scratch:/tmp/s"])) for _ in range(5)]
    job = c.manager.submit_job({"name": "readers", "count": 3, "task": spec(["pgdata:/data:ro"])})[0]
    c.settle()
    tasks = [c.task(t["id"]) for t in others] + c.manager.job_detail(job.name)["tasks"]
    assert {t["node"] for t in tasks} == {home} and {t["state"] for t in tasks} == {"running"}
    assert c.store.get("volumes", "scratch")["node"] == home, "a new volume beside a pinned one lives there too"
    assert {v.name for v in c.runtimes[home].volumes(home)} == {"pgdata", "scratch"}
    assert all(not r.volumes(n) for n, r in c.runtimes.items() if n != home)
    listed = {v["name"]: v for v in c.manager.list_volumes()}
    assert listed["pgdata"]["node"] == home and listed["pgdata"]["present"] is True
    assert len(listed["pgdata"]["tasks"]) == 9 and listed["scratch"]["node_state"] == "ready"


def test_a_task_whose_volume_node_is_down_waits_for_it_and_goes_back_there(c):
    task = c.submit(spec(["pgdata:/data"]))
    c.settle()
    home = c.task(task["id"])["node"]
    made = c.runtimes[home].fake_volumes["pgdata"]
    c.cut.add(home)
    c.run_for(12.0)  # past the node timeout (5 s): the task is unplaced, and waits
    seen = c.task(task["id"])
    assert c.node_state(home) == "down"
    assert seen["state"] == "pending" and seen["node"] == ""
    assert f"volume pgdata lives on {home}, which is down" in seen["reason"]
    assert [n for n, _ in c.copies(task["id"]) if n != home] == [], "never started empty elsewhere"
    c.cut.clear()
    c.settle()
    back = c.task(task["id"])
    assert back["node"] == home and back["state"] == "running"
    assert c.runtimes[home].fake_volumes["pgdata"] is made, "the same volume, not a new one"
    assert [n for n, _ in c.copies(task["id"])] == [home]


def test_a_service_that_fails_on_its_volume_node_is_rescheduled_there(c):
    task = c.submit(spec(["pgdata:/data"], restart={"name": "on-failure", "max_restarts": 0}))
    c.settle()
    home = c.task(task["id"])["node"]
    (container,) = [cid for n, cid in c.copies(task["id"])]
    c.runtimes[home].kill(container, 1)
    c.settle()
    assert "rescheduling" in c.task(task["id"])["reason"]
    c.run_for(8.0)
    assert c.task(task["id"])["node"] == home and c.task(task["id"])["state"] == "running"


def test_volume_rm_is_refused_while_in_use_and_removes_it_on_its_node_after(c):
    task = c.submit(spec(["pgdata:/data"]))
    c.settle()
    home = c.task(task["id"])["node"]
    with pytest.raises(Conflict, match=rf"volume pgdata is mounted by task {task['id']} .*: stop it first"):
        c.manager.remove_volume("pgdata")
    c.manager.stop_task(task["id"])
    c.settle()
    assert "pgdata" in c.runtimes[home].fake_volumes, "stopping a task keeps its volume"
    assert c.manager.list_volumes()[0]["tasks"] == []
    assert c.manager.remove_volume("pgdata") == {"removed": "pgdata", "node": home, "note": ""}
    assert "pgdata" not in c.runtimes[home].fake_volumes and c.store.get("volumes", "pgdata") is None
    assert c.manager.list_volumes() == []
    with pytest.raises(NotFound):
        c.manager.remove_volume("pgdata")


def test_volume_rm_with_the_node_down_keeps_the_volume_and_its_record(c):
    task = c.submit(spec(["pgdata:/data"]))
    c.settle()
    home = c.task(task["id"])["node"]
    c.manager.stop_task(task["id"])
    c.settle()
    c.cut.add(home)
    c.run_for(8.0)
    with pytest.raises(Unavailable, match=f"volume pgdata lives on {home}, which is down: it is kept"):
        c.manager.remove_volume("pgdata")
    assert c.store.get("volumes", "pgdata")["node"] == home and "pgdata" in c.runtimes[home].fake_volumes


def test_the_worker_refuses_to_remove_a_volume_its_tasks_mount(c):
    task = c.submit(spec(["pgdata:/data"]))
    c.settle()
    worker = c.workers[c.task(task["id"])["node"]]
    with pytest.raises(Conflict, match=f"mounted by task {task['id']}"):
        worker.remove_volume("pgdata")


def test_pins_survive_a_manager_restart(c):
    task = c.submit(spec(["pgdata:/data"]))
    c.settle()
    home = c.task(task["id"])["node"]
    c.manager.stop_task(task["id"])
    c.settle()
    c.restart_manager()
    c.settle()
    again = [c.submit(spec(["pgdata:/data"])) for _ in range(4)]
    c.settle()
    assert {c.task(t["id"])["node"] for t in again} == {home}


class FullOnVolumes(MemoryStore):
    """A store whose disk fills up when a volume record is written (a batch refused whole, as on a full disk)."""

    full = True

    def put(self, kind, key, value):
        if kind == "volumes" and self.full:
            raise StorageFull("data disk full: /var/lib/cube/manager (free space, then retry)")
        return super().put(kind, key, value)


def test_a_pin_the_store_refuses_is_not_kept_nor_the_task():
    store = FullOnVolumes()
    manager = Manager(store, executor=Inline())
    manager.node_up(Node("n1", "fake://n1", Resources(4, 8 << 30, 100 << 30), last_seen=manager.clock()))
    with pytest.raises(StorageFull):
        manager.submit_task(spec(["pgdata:/data"]))
    assert manager.list_volumes() == [] and manager.list_tasks() == [] and store.values("tasks") == []
    store.full = False
    task, _ = manager.submit_task(spec(["pgdata:/data"]))
    assert [(v["name"], v["node"]) for v in manager.list_volumes()] == [("pgdata", "n1")] and task.node == "n1"


def test_a_task_is_a_task_record_with_its_volumes():
    task = Task(id="t1", spec=TaskSpec.from_dict(spec(["pgdata:/data"])))
    assert Task.from_dict(task.to_dict()).spec.named_volumes == ("pgdata",)


def test_a_volume_whose_node_was_removed_is_forgotten_by_volume_rm_and_its_tasks_wait_until_then(c):
    task = c.submit(spec(["pgdata:/data"]))
    c.settle()
    home = c.task(task["id"])["node"]
    c.manager.stop_task(task["id"])
    c.settle()
    c.cut.add(home)
    c.run_for(8.0)
    c.manager.remove_node(home)
    again = c.submit(spec(["pgdata:/data"]))
    c.settle()
    waiting = c.task(again["id"])
    assert waiting["state"] == "pending" and "which was removed from the cluster" in waiting["reason"]
    assert c.manager.list_volumes()[0]["node_state"] == "gone"
    with pytest.raises(Conflict):
        c.manager.remove_volume("pgdata")  # the waiting task is to run
    c.manager.stop_task(again["id"])
    answer = c.manager.remove_volume("pgdata")
    assert answer["node"] == home and "was removed: its data stays on that machine" in answer["note"]
    third = c.submit(spec(["pgdata:/data"]))
    c.settle()
    assert c.task(third["id"])["state"] == "running" and c.task(third["id"])["node"] != home
