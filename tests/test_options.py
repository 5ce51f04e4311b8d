"""A task's hardware, privilege, process and network options (issue 11), without Docker: what a request may hold
(400s that name the field, at the manager's API), the JSON round trip and old records, the device check and the
host-network ports in the scheduler, devices flowing from a worker's stats to its node and to placements (the
cluster harness), a task's own stop grace, and the `cube run` / `cube worker` flags. The same options on a real
engine: tests/test_options_docker.py and the runtime contract."""

import pytest
from factories import make_node, make_spec
from harness import ClusterHarness
from test_api import call, error_of, mgr, worker  # noqa: F401  (mgr and worker are fixtures)

from cube.cli.run import build_request
from cube.core.errors import InvalidSpec
from cube.core.model import Assignment, Node, TaskSpec
from cube.manager.membership import node_from_stats
from cube.scheduler import MISSING_DEVICE, PORT_IN_USE, place, place_many, release, reserve
from cube.store import MemoryStore
from cube.worker.devices import DeviceScan
from cube.worker.runtime import FakeRuntime
from cube.worker.worker import Worker

IMAGE = "cube-busybox:latest"

EVERY_OPTION = {
    "devices": ["/dev/ttyUSB0:/dev/zigbee:rw", {"host": "/dev/zero"}],
    "privileged": True,
    "cap_add": ["net_admin", "CAP_SYS_TIME"],
    "cap_drop": ["CHOWN"],
    "sysctls": {"net.ipv4.ip_forward": "1", "kernel.shmmax": 1 << 30},
    "hostname": "zigbee2mqtt",
    "user": "1000:20",
    "workdir": "/app",
    "entrypoint": ["/bin/sh", "-c"],
    "stop_signal": "int",
    "stop_timeout": 25,
    "init": True,
    "shm_size": "128m",
    "read_only": True,
}


# ---- what a request may hold ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"devices": ["ttyUSB0"]}, "devices: host path must be an absolute path under /dev"),
        ({"devices": ["/etc/passwd"]}, "devices: host path must be an absolute path under /dev"),
        ({"devices": ["/dev/../etc/shadow"]}, "devices: host path must not hold '..'"),
        ({"devices": ["/dev/ttyUSB0:zigbee"]}, "devices: container path must be an absolute path under /dev"),
        ({"devices": ["/dev/ttyUSB0:/dev/../x"]}, "devices: container path must not hold '..'"),
        ({"devices": ["/dev/ttyUSB0:/dev/zigbee:rwx"]}, "devices: permissions of /dev/ttyUSB0"),
        ({"devices": ["/dev/a:/dev/b:rw:extra"]}, "devices"),
        ({"devices": ["/dev/ttyUSB0", "/dev/ttyUSB0"]}, "devices lists the same container path twice"),
        ({"devices": [7]}, "devices"),
        ({"devices": [{"host": "/dev/zero", "mode": "rw"}]}, "unknown field in devices: mode"),
        ({"privileged": "yes"}, "privileged must be true or false"),
        ({"cap_add": ["NET_ADMINN"]}, "cap_add: 'NET_ADMINN' is not a Linux capability"),
        ({"cap_drop": ["CAP_WIZARD"]}, "cap_drop: 'CAP_WIZARD' is not a Linux capability"),
        ({"cap_add": "NET_ADMIN", "cap_drop": ["net_admin"]}, "cap_add and cap_drop both list NET_ADMIN"),
        ({"sysctls": {"kernel.hostname": "x"}}, "sysctls: kernel.hostname is not namespaced"),
        ({"sysctls": {"vm.swappiness": "10"}}, "sysctls: vm.swappiness is not namespaced"),
        ({"sysctls": ["net.ipv4.ip_forward"]}, "sysctls entries must look like key=value"),
        ({"sysctls": {"net..x": "1"}}, "sysctls: 'net..x' is not a sysctl name"),
        ({"sysctls": {"net.ipv4.ip_forward": ""}}, "sysctls value of net.ipv4.ip_forward"),
        ({"network": "host", "sysctls": {"net.ipv4.ip_forward": "1"}}, "sysctls: net.ipv4.ip_forward would change"),
        ({"network": "overlay"}, "network must be host"),
        ({"network": "host", "ports": ["8080:80"]}, "ports: with network host"),
        ({"hostname": "my_host"}, "hostname must be a DNS label"),
        ({"hostname": "a" * 64}, "hostname must be a DNS label"),
        ({"user": "root:wheel:extra"}, "user must be UID[:GID]"),
        ({"user": "4294967295"}, "user: 4294967295 is not a uid"),
        ({"workdir": "app"}, "workdir must be an absolute path"),
        ({"workdir": "/app/../etc"}, "workdir must not hold '..'"),
        ({"entrypoint": [1, 2]}, "entrypoint must be a list of strings"),
        ({"stop_signal": "SIGFOO"}, "stop_signal must be a signal name"),
        ({"stop_signal": "65"}, "stop_signal"),
        ({"stop_signal": 0}, "stop_signal"),
        ({"stop_timeout": -1}, "stop_timeout must be a number of seconds"),
        ({"stop_timeout": "10"}, "stop_timeout must be a number of seconds"),
        ({"init": 1}, "init must be true or false"),
        ({"shm_size": "lots"}, "shm_size must be a size"),
        ({"read_only": "true"}, "read_only must be true or false"),
        ({"devices": [f"/dev/d{i}" for i in range(65)]}, "devices has 65 entries: at most 64"),
    ],
)
def test_a_bad_option_is_a_400_that_names_the_field(mgr, options, words):  # noqa: F811
    body = {"image": IMAGE, **options}
    assert words in error_of(call(mgr.app, "POST", "/tasks", body), 400)
    assert call(mgr.app, "GET", "/tasks").json() == []  # nothing was kept


def test_a_job_with_a_bad_option_is_refused_too(mgr):  # noqa: F811
    body = {"name": "radio", "task": {"image": IMAGE, "cap_add": ["RADIO"]}}
    assert "cap_add" in error_of(call(mgr.app, "POST", "/jobs", body), 400)


def test_every_option_is_read_in_its_normal_form_and_survives_the_json_round_trip():
    spec = TaskSpec.from_dict({"image": IMAGE, **EVERY_OPTION})
    assert [str(d) for d in spec.devices] == ["/dev/ttyUSB0:/dev/zigbee:rw", "/dev/zero:/dev/zero:rwm"]
    assert spec.cap_add == ("NET_ADMIN", "SYS_TIME") and spec.cap_drop == ("CHOWN",)
    assert spec.sysctls == (("kernel.shmmax", str(1 << 30)), ("net.ipv4.ip_forward", "1"))
    assert (spec.stop_signal, spec.stop_timeout, spec.shm_size) == ("SIGINT", 25.0, 128 << 20)
    assert (spec.user, spec.workdir, spec.entrypoint, spec.hostname) == (
        "1000:20",
        "/app",
        ("/bin/sh", "-c"),
        "zigbee2mqtt",
    )
    assert spec.privileged and spec.init and spec.read_only and spec.network == ""
    assert TaskSpec.from_dict(spec.to_dict()) == spec
    assert TaskSpec.from_dict(spec.to_dict(), stored=True) == spec
    assert Assignment.from_dict(Assignment(id="t1", spec=spec, generation=2).to_dict()).spec == spec


@pytest.mark.parametrize(
    ("given", "kept"),
    [("SIGUSR1", "SIGUSR1"), ("usr1", "SIGUSR1"), ("10", "10"), (15, "15"), ("SIGRTMIN+3", "SIGRTMIN+3")],
)
def test_a_stop_signal_may_be_a_name_or_a_number(given, kept):
    assert make_spec(stop_signal=given).stop_signal == kept


def test_a_spec_without_options_is_written_as_before():
    """Left out, an option is not written: old records load, and a worker too old to know an option refuses a task
    that asks for one (an unknown field) instead of running it without."""
    plain = make_spec(ports=["8080:80"])
    assert not {"devices", "network", "user", "stop_timeout", "privileged"} & set(plain.to_dict())
    old_record = {"image": IMAGE, "name": "web", "command": ["sleep", "1"], "on_disconnect": ""}
    assert TaskSpec.from_dict(old_record, stored=True).devices == ()
    assert make_spec(stop_timeout=0).to_dict()["stop_timeout"] == 0.0  # 0 (kill at once) is not "left out"


def test_host_networking_takes_every_port_of_the_task_on_its_node():
    spec = make_spec(network="host", ports=["53/udp", "8123", "80:80"])
    assert sorted(spec.fixed_host_ports) == [(53, "udp"), (80, "tcp"), (8123, "tcp")]
    assert spec.disconnect == "stop"  # as a fixed host port: its replacement elsewhere serves the same port
    assert make_spec(ports=["8123"]).fixed_host_ports == []
    assert make_spec(network="bridge").network == ""


# ---- the scheduler ---------------------------------------------------------------------------------------------


def test_a_task_with_a_device_lands_only_where_the_device_is():
    nodes = [make_node("n1"), make_node("n2", devices=["/dev/ttyUSB0", "/dev/video0"]), make_node("n3")]
    spec = make_spec(devices=["/dev/ttyUSB0:/dev/zigbee"])
    for seed in range(20):
        assert place(spec, nodes, seed=seed).node.name == "n2"


def test_no_node_with_the_device_is_a_reason_per_node():
    nodes = [make_node("n1", devices=["/dev/ttyACM0"]), make_node("n2")]
    placement = place(make_spec(devices=["/dev/ttyUSB0"]), nodes)
    assert placement.node is None
    assert placement.reasons == {"n1": "no device /dev/ttyUSB0", "n2": "no device /dev/ttyUSB0"}
    assert placement.tally() == f"2 {MISSING_DEVICE}"


def test_two_host_network_tasks_with_one_port_never_share_a_node():
    nodes = [make_node("n1"), make_node("n2")]
    spec = make_spec(network="host", ports=["53/udp"])
    placements = place_many(spec, 3, nodes)
    assert sorted(p.node.name for p in placements[:2]) == ["n1", "n2"]
    assert placements[2].node is None and placements[2].tally() == f"2 {PORT_IN_USE}"
    assert placements[2].reasons["n1"] == "host port 53/udp already used"
    release(nodes[0], spec)
    assert place(spec, nodes).node.name == "n1"


def test_a_host_network_port_and_a_published_port_collide():
    """A port published on the node itself (host mode; an ingress port is the mesh's, on every node: the manager
    keeps those unique cluster-wide, see test_network.py)."""
    node = make_node("n1")
    reserve(node, make_spec(ports=["8080:80/host"]))
    assert place(make_spec(network="host", ports=["8080"]), [node]).node is None
    assert place(make_spec(network="host", ports=["8081"]), [node]).node is node
    reserve(node, make_spec(network="host", ports=["9000"]))
    assert place(make_spec(ports=["9000:80/host"]), [node]).node is None


# ---- devices from the worker to the manager --------------------------------------------------------------------


def test_a_worker_advertises_the_devices_it_finds_and_those_it_is_given():
    present = {"/dev/ttyUSB0", "/dev/zero", "/dev/extra"}
    now = [0.0]
    scan = DeviceScan(extra=["/dev/extra", "/dev/gone"], patterns=["/dev/zero"], ttl=5, clock=lambda: now[0])
    scan.exists = lambda path: path in present
    node_worker = Worker("w", FakeRuntime(), MemoryStore(), sync=True, devices=scan)
    try:
        stats = node_worker.stats()
        assert stats["devices"] == ["/dev/extra", "/dev/zero"]  # /dev/gone is not there: not advertised
        present.discard("/dev/extra")
        assert node_worker.stats()["devices"] == ["/dev/extra", "/dev/zero"]  # within the scan's ttl
        now[0] = 5.0
        assert node_worker.stats()["devices"] == ["/dev/zero"]
        node = node_from_stats({**stats, "name": "w"}, "http://w:5556", 0.0)
        assert node.devices == {"/dev/extra", "/dev/zero"}
        assert Node.from_dict(node.to_dict()).devices == node.devices
    finally:
        node_worker.close()


def test_a_node_record_without_devices_loads():
    record = make_node("n1").to_dict()
    del record["devices"]
    assert Node.from_dict(record).devices == frozenset()
    with pytest.raises(InvalidSpec, match="devices"):
        Node.from_dict({**record, "devices": ["/etc/passwd"]})


def test_a_task_waits_for_its_device_and_runs_where_it_is_plugged_in():
    c = ClusterHarness(["n1", "n2"])
    try:
        c.settle()
        task = c.submit({"image": IMAGE, "devices": ["/dev/ttyUSB0:/dev/zigbee"]})
        c.settle()
        detail = c.task(task["id"])
        assert detail["state"] == "pending" and c.running_copies(task["id"]) == 0
        assert "no device /dev/ttyUSB0" in detail["reason"], detail["reason"]
        c.add_node("n3", devices=["/dev/ttyUSB0"])
        c.settle()
        assert c.copies(task["id"]) == [("n3", c.copies(task["id"])[0][1])]
        assert c.task(task["id"])["state"] == "running"
    finally:
        c.close()


def test_a_task_keeps_its_own_stop_grace():
    class Recording(FakeRuntime):
        def __init__(self):
            super().__init__()
            self.graces: list[float] = []

        def stop(self, container_id, timeout=10):
            self.graces.append(timeout)
            super().stop(container_id, timeout)

    runtime = Recording()
    node_worker = Worker("w", runtime, MemoryStore(), sync=True, stop_timeout=10.0)
    try:
        for task_id, extra in (("slow", {"stop_timeout": 45}), ("plain", {})):
            spec = make_spec(command=["sleep", "300"], **extra)
            node_worker.accept(Assignment(id=task_id, spec=spec, generation=1))
        node_worker.tick()
        for task_id in ("slow", "plain"):
            node_worker.stop_task(task_id, 1)
        node_worker.tick()
        assert sorted(runtime.graces) == [10.0, 45.0]
    finally:
        node_worker.close()


# ---- the command line ------------------------------------------------------------------------------------------


def test_cube_run_flags_become_the_spec_fields():
    kind, body = build_request(
        {
            "image": IMAGE,
            "device": ["/dev/ttyUSB0:/dev/zigbee", "/dev/video0"],
            "privileged": True,
            "cap_add": ["NET_ADMIN"],
            "cap_drop": ["ALL"],
            "sysctl": ["kernel.shmmax=1073741824"],
            "network": "host",
            "hostname": "ha",
            "user": "1000:1000",
            "workdir": "/config",
            "entrypoint": "/bin/sh -c",
            "stop_signal": "SIGINT",
            "stop_timeout": 0.0,
            "init": True,
            "shm_size": "256m",
            "read_only": True,
        }
    )
    assert kind == "task"
    spec = TaskSpec.from_dict({k: v for k, v in body.items() if k != "id"})
    assert [str(d) for d in spec.devices] == ["/dev/ttyUSB0:/dev/zigbee:rwm", "/dev/video0:/dev/video0:rwm"]
    assert spec.sysctls == (("kernel.shmmax", "1073741824"),)
    assert (spec.network, spec.entrypoint, spec.stop_timeout, spec.shm_size) == (
        "host",
        ("/bin/sh", "-c"),
        0.0,
        256 << 20,
    )
    assert spec.privileged and spec.init and spec.read_only and spec.cap_drop == ("ALL",)
    _, plain = build_request({"image": IMAGE, "privileged": False, "device": (), "stop_timeout": None})
    assert not {"devices", "privileged", "stop_timeout"} & set(plain)


def test_cube_status_shows_the_options_as_the_flags_that_ask_for_them():
    import shlex

    from cube.cli import args
    from cube.cli.main import Commands
    from cube.cli.output import options

    spec = make_spec(**EVERY_OPTION)
    line = options(spec.to_dict())
    assert line.startswith("--device /dev/ttyUSB0:/dev/zigbee:rw --device /dev/zero --privileged")
    _, flags = args.parse("run", Commands.run, ["--image", IMAGE, *shlex.split(line)])
    _, body = build_request({"image": IMAGE, **flags})
    assert TaskSpec.from_dict({k: v for k, v in body.items() if k != "id"}) == spec  # the same task again
    assert options(make_spec().to_dict()) == ""


def test_a_task_cut_off_with_its_node_moves_only_after_its_own_stop_grace():
    """A task that stops itself on a cut-off node (on_disconnect: stop) is moved once its node has surely stopped it:
    the node's disconnect timeout plus the task's stop grace (its own when it has one, else the node's)."""
    from cube.core.model import Task
    from cube.manager.reconcile import task_decision

    node = make_node("n1", state="down")
    node.disconnect_timeout, node.stop_timeout, node.last_seen = 15.0, 10.0, 1000.0

    def moved(after: float, **spec) -> bool:
        task = Task(id="t1", spec=make_spec(ports=["8080:80"], **spec), node="n1")
        return task_decision(task, node, 1000.0 + after, 5.0, "service").unplace

    assert not moved(25.0) and moved(26.0)  # 15 + 10 + 1
    assert not moved(55.0, stop_timeout=40) and moved(56.0, stop_timeout=40)
    assert moved(16.0, stop_timeout=0)
