"""A task's hardware, privilege, process and network options on the real engine (issue 11), checked from inside the
container and with the engine's own inspect: a device passed in is read, host networking shares the network
namespace (and the interfaces) of the engine's host, user, working directory, read-only root, init, host name,
entrypoint, capabilities, sysctls and /dev/shm are in effect, the stop signal is the one the task asked for and its
stop grace wins over the node's, and a device missing on the node is a start error that names it. The checks that
need no engine are in tests/test_options.py."""

import os
import socket
import time

import pytest
from test_docker_runtime import sdk  # noqa: F401  (a fixture: the SDK's client)

from cube.core.errors import RuntimeFailure
from cube.core.model import Assignment, State, TaskSpec, new_id
from cube.store import MemoryStore
from cube.worker.docker_runtime import DockerRuntime
from cube.worker.worker import Worker

pytestmark = pytest.mark.docker


@pytest.fixture
def runtime():
    rt = DockerRuntime(stop_timeout=10)
    yield rt
    rt.close()


def task_of(image: str, **spec) -> Assignment:
    spec.setdefault("command", ["sleep", "300"])
    return Assignment(id=new_id(), spec=TaskSpec.from_dict({"image": image, **spec}), generation=1)


def run_to_end(runtime, node: str, image: str, script: str, timeout: float = 20.0, **spec) -> tuple[int, str]:
    """Runs `script` with sh in a container made with `spec`'s options; its exit code and output."""
    spec.setdefault("command", ["sh", "-c", script])
    info = runtime.start(task_of(image, **spec), node)
    deadline = time.monotonic() + timeout
    while not (info := runtime.inspect(info.id)).ended:
        assert time.monotonic() < deadline, f"container {info.id} still {info.status} after {timeout} s"
        time.sleep(0.05)
    return info.exit_code, b"".join(runtime.logs(info.id)).decode()


def test_a_device_passed_in_is_read_inside_the_container(runtime, busybox_image, node_name):
    code, out = run_to_end(
        runtime,
        node_name,
        busybox_image,
        "busybox head -c 4 /dev/cube-zero | busybox od -An -tx1; ls -l /dev/cube-zero",
        devices=["/dev/zero:/dev/cube-zero:r"],
    )
    assert code == 0, out
    first, listing = out.strip().splitlines()
    assert first.split() == ["00", "00", "00", "00"]  # four bytes of /dev/zero, read through the device node
    assert listing.startswith("c") and "1,   5" in listing  # a character device, major 1 minor 5: /dev/zero's


def pids(client, container_id: str) -> tuple[int, int]:
    """(the container's first process, its parent: the runtime shim, which lives where the engine does)."""
    pid = client.api.inspect_container(container_id)["State"]["Pid"]
    with open(f"/proc/{pid}/stat") as stat:
        parent = int(stat.read().rsplit(")", 1)[1].split()[1])
    return pid, parent


def test_host_networking_shares_the_network_of_the_engines_host(runtime, sdk, busybox_image, node_name):  # noqa: F811
    host = runtime.start(task_of(busybox_image, network="host", ports=["18123"]), node_name)
    bridged = runtime.start(task_of(busybox_image), node_name)

    def in_engines_namespace(container_id: str) -> bool:
        pid, shim = pids(sdk, container_id)
        return os.readlink(f"/proc/{pid}/ns/net") == os.readlink(f"/proc/{shim}/ns/net")

    def interfaces(container_id: str) -> set[str]:
        run = sdk.api.exec_create(container_id, ["ls", "/sys/class/net"])
        return set(sdk.api.exec_start(run["Id"]).decode().split())

    assert in_engines_namespace(host.id), "a host-network container is in its node's network namespace"
    assert not in_engines_namespace(bridged.id), "a bridged container has a namespace of its own"
    with open(f"/proc/{pids(sdk, host.id)[1]}/net/dev") as dev:  # the engine host's interfaces, read from outside
        hosts = {line.split(":")[0].strip() for line in dev.read().splitlines()[2:]}
    assert interfaces(host.id) == hosts
    assert interfaces(bridged.id) == {"lo", "eth0"} != hosts
    attrs = sdk.api.inspect_container(host.id)
    assert attrs["HostConfig"]["NetworkMode"] == "host" and not attrs["HostConfig"]["PortBindings"]
    assert host.host_ports == {"18123/tcp": 18123}
    run = sdk.api.exec_create(host.id, ["cat", "/proc/sys/kernel/hostname"])
    assert sdk.api.exec_start(run["Id"]).decode().strip() == socket.gethostname()


def test_user_workdir_read_only_init_hostname_and_entrypoint_are_in_effect(runtime, sdk, busybox_image, node_name):  # noqa: F811
    script = (
        "busybox id -u; busybox id -g; busybox pwd; cat /proc/sys/kernel/hostname; "
        "cat /proc/1/cmdline | busybox tr '\\0' ' '; echo; "
        "touch /cube-written 2>/dev/null && echo writable || echo read-only"
    )
    code, out = run_to_end(
        runtime,
        node_name,
        busybox_image,
        "",
        entrypoint=["/bin/sh", "-c"],
        command=[script],
        user="1000:1001",
        workdir="/tmp",
        read_only=True,
        init=True,
        hostname="zigbee",
    )
    assert code == 0, out
    uid, gid, cwd, hostname, pid1, root = out.strip().splitlines()
    assert (uid, gid, cwd, hostname, root) == ("1000", "1001", "/tmp", "zigbee", "read-only")
    assert pid1.split()[0].endswith("docker-init"), pid1  # the init process is PID 1, the task's sh its child
    assert "/bin/sh -c" in pid1


def test_capabilities_privileged_sysctls_and_shm_size_are_in_effect(runtime, busybox_image, node_name):
    def effective(**spec) -> int:
        code, out = run_to_end(runtime, node_name, busybox_image, "busybox grep CapEff /proc/self/status", **spec)
        assert code == 0, out
        return int(out.split()[1], 16)

    net_admin, chown = 1 << 12, 1 << 0
    default = effective()
    assert not default & net_admin and default & chown
    added = effective(cap_add=["NET_ADMIN"], cap_drop=["CHOWN"])
    assert added & net_admin and not added & chown
    assert effective(cap_drop=["ALL"]) == 0
    code, out = run_to_end(
        runtime,
        node_name,
        busybox_image,
        "cat /proc/sys/net/ipv4/ip_forward; busybox df -k /dev/shm | busybox tail -1",
        sysctls={"net.ipv4.ip_forward": "1"},
        shm_size="8m",
    )
    forward, shm = out.strip().splitlines()
    assert code == 0 and forward == "1" and shm.split()[1] == "8192", out


def test_privileged_gives_every_capability(runtime, busybox_image, node_name):
    with open("/proc/sys/kernel/cap_last_cap") as last, open("/proc/self/status") as status:
        every = (1 << (int(last.read()) + 1)) - 1
        bounding = int(next(line for line in status if line.startswith("CapBnd")).split()[1], 16)
    if bounding != every:
        # runc gives a privileged container every capability the kernel has: where this machine itself runs with
        # fewer (a container or a sandbox), the start fails with "unable to apply caps".
        # What a user gets here is that refusal, said plainly: that is what this machine can check (never a skip:
        # CI runs on such a machine).
        with pytest.raises(RuntimeFailure, match="a privileged container needs every capability"):
            runtime.start(task_of(busybox_image, privileged=True), node_name)
        print(f"\nthis machine lacks capabilities itself (CapBnd {bounding:x}, all {every:x}): the refusal checked")
        return
    code, out = run_to_end(runtime, node_name, busybox_image, "busybox grep CapEff /proc/self/status", privileged=True)
    assert code == 0 and int(out.split()[1], 16) == every, out


def test_the_stop_signal_and_the_tasks_grace_are_used(runtime, sdk, busybox_image, node_name):  # noqa: F811
    script = "trap 'echo got USR1; exit 3' USR1; echo ready; while true; do sleep 0.1; done"
    info = runtime.start(
        task_of(busybox_image, command=["sh", "-c", script], stop_signal="SIGUSR1", stop_timeout=3), node_name
    )
    config = sdk.api.inspect_container(info.id)["Config"]
    assert (config["StopSignal"], config["StopTimeout"]) == ("SIGUSR1", 3)  # the task's grace over the node's 10
    deadline = time.monotonic() + 10
    while b"ready" not in b"".join(runtime.logs(info.id)):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    runtime.stop(info.id, timeout=10)
    ended = runtime.inspect(info.id)
    assert ended.exit_code == 3  # the trap ran: the container got SIGUSR1, not SIGTERM (or SIGKILL after the grace)
    assert "got USR1" in b"".join(runtime.logs(info.id)).decode()


def test_a_missing_device_is_a_clear_start_error(runtime, busybox_image, node_name):
    with pytest.raises(RuntimeFailure) as raised:
        runtime.start(task_of(busybox_image, devices=["/dev/cube-no-such-stick:/dev/zigbee"]), node_name)
    message = raised.value.message
    assert message.startswith(f"device /dev/cube-no-such-stick does not exist on node {node_name}"), message
    assert runtime.list_owned(node_name) == []  # the container that could not start was removed

    # Through a worker: the task's events say it in the same words.
    worker = Worker(node_name, runtime, MemoryStore(), sync=True)
    try:
        spec = TaskSpec.from_dict({"image": busybox_image, "devices": ["/dev/cube-no-such-stick"]})
        worker.accept(Assignment(id="stick", spec=spec, generation=1))
        worker.tick()
        assert worker.get("stick").state in (State.SCHEDULED, State.FAILED)  # retried as its restart policy says
        said = [event["message"] for event in worker.state(events_since=0)["events"]]
        assert any(
            message.startswith("container failed to start: device /dev/cube-no-such-stick does not exist on node")
            for message in said
        ), said
    finally:
        worker.close()
