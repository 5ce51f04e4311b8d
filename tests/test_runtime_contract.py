"""One contract suite for the container runtime (`cube.worker.runtime.Runtime`), run against `FakeRuntime` and
against `DockerRuntime` on the real engine: the verbs the worker relies on (start, list_owned, inspect, stop,
restart, remove, logs, events, alive) must mean the same on both, and an engine that does not answer must read as
`Unavailable` on both. Where the fake legitimately differs from Docker, the test says so in a comment instead of
asserting the weaker of the two."""

import queue
import subprocess
import threading
import time
from dataclasses import dataclass

import pytest
from conftest import free_port, remove_volumes

from cube.core.errors import Conflict, NotFound, RuntimeFailure, Unavailable
from cube.core.model import Assignment, TaskSpec, new_id
from cube.worker.docker_runtime import DockerRuntime
from cube.worker.runtime import ContainerInfo, FakeRuntime, RuntimeEvent

IMAGE = "cube-busybox:latest"
SLEEP = ["sleep", "300"]


@dataclass
class Subject:
    engine: str  # "fake" or "docker"
    runtime: object  # the Runtime under test
    node: str  # this test's node: the Docker containers labelled with it are removed afterwards
    other: str  # a second node on the same engine
    image: str


def _sweep(node: str) -> None:
    ids = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=cube.node={node}"],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", "-v", *ids], check=False, capture_output=True, timeout=60)


@pytest.fixture(params=["fake", pytest.param("docker", marks=pytest.mark.docker)])
def subject(request):
    if request.param == "fake":
        yield Subject("fake", FakeRuntime(), "node-a", "node-b", IMAGE)
        return
    image = request.getfixturevalue("busybox_image")
    node = request.getfixturevalue("node_name")  # conftest removes this node's containers after the test
    runtime = DockerRuntime()
    other = f"{node}-other"
    try:
        yield Subject("docker", runtime, node, other, image)
    finally:
        runtime.close()
        _sweep(other)


def assignment(image: str, command=SLEEP, ports=(), generation: int = 1) -> Assignment:
    return Assignment(
        id=new_id(),
        spec=TaskSpec.from_dict({"image": image, "command": list(command), "ports": list(ports)}),
        generation=generation,
    )


def start(s: Subject, command=SLEEP, ports=(), generation: int = 1, node: str | None = None):
    task = assignment(s.image, command, ports, generation)
    return task, s.runtime.start(task, node or s.node)


def wait_ended(s: Subject, container_id: str, timeout: float = 10.0) -> ContainerInfo:
    """Until the container's command has exited. The fake runs no command, so its containers never end by themselves:
    it is told to end as a command that exits 0 would (`FakeRuntime.kill`, a fake-only verb)."""
    runtime = s.runtime
    if s.engine == "fake":
        runtime.kill(container_id, 0)
    deadline = time.monotonic() + timeout
    info = runtime.inspect(container_id)
    while not info.ended and time.monotonic() < deadline:
        time.sleep(0.02)
        info = runtime.inspect(container_id)
    assert info.ended, f"container {container_id} still {info.status} after {timeout} s"
    return info


class Events:
    """`runtime.events(node, stop)` read on a thread into a queue; `close` sets `stop` and joins the reader."""

    def __init__(self, runtime, node: str):
        self.stop = threading.Event()
        self.queue: queue.Queue = queue.Queue()
        self.seen: list[RuntimeEvent] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._read, args=(runtime, node), daemon=True)
        self.thread.start()

    def _read(self, runtime, node: str) -> None:
        try:
            for event in runtime.events(node, self.stop):
                self.queue.put(event)
        except Exception as error:  # noqa: BLE001 -- whatever it is, the test reports it (a thread would lose it)
            self.error = error

    def wait(self, action: str, container_id: str, timeout: float) -> RuntimeEvent | None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = self.queue.get(timeout=left)
            except queue.Empty:
                return None
            self.seen.append(event)
            if event.action == action and event.container_id == container_id:
                return event
        return None

    def close(self, timeout: float = 3.0) -> bool:
        """Whether the iterator ended within `timeout` of `stop` being set."""
        self.stop.set()
        self.thread.join(timeout)
        return not self.thread.is_alive()


def stop_until_die_seen(s: Subject, events: Events, container_id: str, tries: int = 5) -> RuntimeEvent:
    """Stop the container and wait for its `die`. The stream may not be subscribed yet when the first stop happens
    (both runtimes subscribe lazily, on the reader's first `next`), so a missed die is retried by restarting the
    container and stopping it again; a runtime that never sends `die` fails after `tries`."""
    for attempt in range(tries):
        if attempt:
            s.runtime.restart(container_id)
        s.runtime.stop(container_id, timeout=0)
        event = events.wait("die", container_id, timeout=2.0)
        if event is not None:
            return event
    raise AssertionError(f"no die event for {container_id} after {tries} stops; seen: {events.seen}")


# ---- start, inspect, list ----------------------------------------------------------------------------------------


def test_start_labels_the_container_and_runs_it(subject):
    task, info = start(subject, generation=3)
    assert info.id
    assert (info.task_id, info.node, info.generation) == (task.id, subject.node, 3)
    assert info.running and not info.ended
    assert info.status == "running"
    assert info.image == subject.image
    assert info.exit_code is None
    seen = subject.runtime.inspect(info.id)
    assert (seen.id, seen.task_id, seen.node, seen.generation) == (info.id, task.id, subject.node, 3)
    assert seen.running
    assert seen.started_at is not None and abs(seen.started_at - time.time()) < 60


def test_start_reports_the_host_port_of_a_published_port(subject):
    _, info = start(subject, ports=["80"])
    port = info.host_ports.get("80/tcp")
    assert isinstance(port, int) and 1 <= port <= 65535, info.host_ports
    assert subject.runtime.inspect(info.id).host_ports == {"80/tcp": port}
    # Not compared once the container has ended: Docker drops a port it chose when the container stops (only fixed
    # host ports are still known from the HostConfig), while the fake keeps it.


def test_start_keeps_a_fixed_host_port(subject):
    host = free_port()
    _, info = start(subject, ports=[f"{host}:80"])
    assert info.host_ports == {"80/tcp": host}


def test_list_owned_gives_only_this_nodes_containers(subject):
    mine_task, mine = start(subject, generation=2)
    _, theirs = start(subject, node=subject.other)
    listed = subject.runtime.list_owned(subject.node)
    assert [c.id for c in listed] == [mine.id]
    (entry,) = listed
    assert (entry.task_id, entry.node, entry.generation) == (mine_task.id, subject.node, 2)
    assert entry.running
    assert [c.id for c in subject.runtime.list_owned(subject.other)] == [theirs.id]
    assert subject.runtime.list_owned(f"{subject.node}-nobody") == []


# ---- hardware, privileges, process and network (issue 11) -------------------------------------------------------


def start_with(s: Subject, **options) -> ContainerInfo:
    task = Assignment(id=new_id(), spec=TaskSpec.from_dict({"image": s.image, "command": SLEEP, **options}))
    return s.runtime.start(task, s.node)


def options_of(s: Subject, container_id: str) -> dict:
    """The options a container was made with, as Docker's inspect shows them (HostConfig and Config); the fake
    records them in those words (`FakeRuntime.options`)."""
    if s.engine == "fake":
        return s.runtime.options[container_id]
    import docker

    client = docker.from_env()
    try:
        data = client.api.inspect_container(container_id)
    finally:
        client.close()
    return {**data["HostConfig"], **data["Config"]}


def test_start_creates_the_container_with_the_tasks_options(subject):
    # With `sh -c` as the entrypoint the command is one script: "sleep 300" (as SLEEP's two words, sh would run
    # `sleep` alone, which exits at once, and the container was running or not by luck).
    info = start_with(
        subject,
        command=["sleep 300"],
        devices=["/dev/zero:/dev/cube-zero:r"],
        cap_add=["NET_ADMIN"],
        cap_drop=["MKNOD"],
        sysctls={"net.ipv4.ip_forward": "1"},
        user="1000:1000",
        workdir="/tmp",
        entrypoint=["/bin/sh", "-c"],
        stop_signal="SIGUSR1",
        stop_timeout=7,
        init=True,
        shm_size="8m",
        read_only=True,
    )
    assert info.running
    seen = options_of(subject, info.id)
    expected = {
        "Devices": [{"PathOnHost": "/dev/zero", "PathInContainer": "/dev/cube-zero", "CgroupPermissions": "r"}],
        "CapAdd": ["NET_ADMIN"],
        "CapDrop": ["MKNOD"],
        "Sysctls": {"net.ipv4.ip_forward": "1"},
        "Privileged": False,
        "User": "1000:1000",
        "WorkingDir": "/tmp",
        "Entrypoint": ["/bin/sh", "-c"],
        "StopSignal": "SIGUSR1",
        "StopTimeout": 7,
        "Init": True,
        "ShmSize": 8 << 20,
        "ReadonlyRootfs": True,
    }
    assert {key: seen.get(key) for key in expected} == expected


def test_a_missing_device_is_a_start_error_that_names_it(subject):
    with pytest.raises(RuntimeFailure, match=r"device /dev/cube-no-such-device does not exist on node"):
        start_with(subject, devices=["/dev/cube-no-such-device"])
    assert subject.runtime.list_owned(subject.node) == []  # nothing left behind


def test_host_networking_reports_each_port_as_the_nodes(subject):
    port = free_port()
    info = start_with(subject, network="host", ports=[str(port), f"{port}/udp"])
    ports = {f"{port}/tcp": port, f"{port}/udp": port}
    assert info.host_ports == ports
    assert subject.runtime.inspect(info.id).host_ports == ports
    (listed,) = subject.runtime.list_owned(subject.node)
    assert listed.host_ports == ports  # the summary list agrees with inspect: the worker sees no change
    assert options_of(subject, info.id)["NetworkMode"] == "host"


# ---- stop, restart, remove ---------------------------------------------------------------------------------------


def test_stop_ends_the_container_and_is_idempotent(subject):
    _, info = start(subject)
    subject.runtime.stop(info.id, timeout=0)
    ended = subject.runtime.inspect(info.id)  # stop returns once the container has ended
    assert ended.ended and not ended.running
    # Docker kills `sleep` (PID 1 ignores SIGTERM; the grace is 0 s), so it reports 137; the fake models a clean
    # stop and reports 0. Both report *an* exit code, which is what the worker reads.
    assert ended.exit_code is not None
    assert ended.finished_at is not None
    subject.runtime.stop(info.id, timeout=0)  # already ended: no error, nothing changes
    again = subject.runtime.inspect(info.id)
    assert again.ended and again.exit_code == ended.exit_code
    (listed,) = subject.runtime.list_owned(subject.node)
    assert listed.id == info.id and listed.ended and listed.exit_code == ended.exit_code


def test_restart_runs_the_same_container_again(subject):
    _, info = start(subject)
    subject.runtime.stop(info.id, timeout=0)
    restarted = subject.runtime.restart(info.id)
    assert restarted.id == info.id
    assert restarted.running and restarted.exit_code is None
    assert subject.runtime.inspect(info.id).running
    assert [c.id for c in subject.runtime.list_owned(subject.node)] == [info.id]


def test_usage_is_given_for_running_containers_only(subject):
    _, running = start(subject)
    _, stopped = start(subject)
    subject.runtime.stop(stopped.id, timeout=0)
    used = subject.runtime.usage([running.id, stopped.id, "0123456789ab"], timeout=10)
    assert set(used) == {running.id}
    assert used[running.id].cpu_seconds >= 0 and used[running.id].memory >= 0
    if subject.engine == "docker":  # the fake uses what it is told (nothing by default); a real sleep uses memory
        assert used[running.id].memory > 0


def test_remove_is_idempotent_and_the_container_is_gone(subject):
    _, info = start(subject)
    subject.runtime.remove(info.id)  # removes a running container too
    subject.runtime.remove(info.id)  # already gone: no error
    with pytest.raises(NotFound):
        subject.runtime.inspect(info.id)
    assert subject.runtime.list_owned(subject.node) == []


@pytest.mark.parametrize("verb", ["inspect", "stop", "restart", "logs"])
def test_verbs_on_an_unknown_container_raise_not_found(subject, verb):
    _, info = start(subject)
    subject.runtime.remove(info.id)
    call = {
        "inspect": lambda: subject.runtime.inspect(info.id),
        "stop": lambda: subject.runtime.stop(info.id, timeout=0),
        "restart": lambda: subject.runtime.restart(info.id),
        "logs": lambda: list(subject.runtime.logs(info.id)),
    }[verb]
    with pytest.raises(NotFound):
        call()


# ---- logs --------------------------------------------------------------------------------------------------------


def test_logs_give_the_containers_output(subject):
    _, info = start(subject, command=["sh", "-c", "echo hello; echo world"])
    wait_ended(subject, info.id)
    chunks = list(subject.runtime.logs(info.id))
    assert chunks and all(isinstance(c, bytes) for c in chunks)
    last = b"".join(subject.runtime.logs(info.id, tail=1))
    if subject.engine == "docker":
        assert b"".join(chunks) == b"hello\nworld\n"
        assert last == b"world\n"
    else:
        # The fake runs nothing: its log is one line it writes at start, naming the image and the command. The
        # protocol only promises bytes, oldest first, and `tail`; the content is the engine's.
        assert b"".join(chunks) == f"started {subject.image} sh -c echo hello; echo world\n".encode()
        assert last == b"".join(chunks)


# ---- events ------------------------------------------------------------------------------------------------------


def test_a_die_event_arrives_when_a_container_is_stopped_and_the_stream_ends_on_stop(subject):
    task, info = start(subject)
    events = Events(subject.runtime, subject.node)
    try:
        died = stop_until_die_seen(subject, events, info.id)
        assert died == RuntimeEvent("die", info.id, task.id)
    finally:
        ended = events.close()
    assert ended, "the events iterator did not end within 3 s of `stop` being set"
    assert events.error is None


def test_events_of_another_nodes_containers_are_not_given(subject):
    _, mine = start(subject)
    _, theirs = start(subject, node=subject.other)
    events = Events(subject.runtime, subject.node)
    try:
        stop_until_die_seen(subject, events, mine.id)  # the stream is subscribed from here on
        subject.runtime.stop(theirs.id, timeout=0)
        subject.runtime.remove(theirs.id)
        subject.runtime.restart(mine.id)
        stop_until_die_seen(subject, events, mine.id)  # events come in order: theirs would have come before
    finally:
        events.close()
    assert [e for e in events.seen if e.container_id == theirs.id] == []
    assert all(e.container_id == mine.id for e in events.seen)


# ---- the engine answering or not --------------------------------------------------------------------------------


def test_alive_when_the_engine_answers(subject):
    assert subject.runtime.alive() is True


VERBS = ["start", "restart", "stop", "remove", "inspect", "list_owned", "logs"]


def _dead_cases():
    for engine in ("fake", "docker"):
        for verb in VERBS:
            yield pytest.param(engine, verb, id=f"{engine}-{verb}")


@pytest.fixture
def dead_engine(request, tmp_path):
    """A runtime whose engine does not answer, and the id of a container (known to the fake before it went down;
    for Docker the socket never had an engine behind it)."""
    engine = request.node.callspec.params["engine"]
    if engine == "fake":
        runtime = FakeRuntime()
        info = runtime.start(assignment(IMAGE), "node-a")
        runtime.engine_stop(gone=True)
        yield runtime, info.id
    else:
        runtime = DockerRuntime(base_url=f"unix://{tmp_path}/nothing.sock", api_timeout=2.0)
        yield runtime, "0123456789ab"
        runtime.close()


@pytest.mark.parametrize(("engine", "verb"), list(_dead_cases()))
def test_every_verb_raises_unavailable_when_the_engine_does_not_answer(engine, verb, dead_engine):
    runtime, container_id = dead_engine
    call = {
        "start": lambda: runtime.start(assignment(IMAGE), "node-a"),
        "restart": lambda: runtime.restart(container_id),
        "stop": lambda: runtime.stop(container_id, timeout=0),
        "remove": lambda: runtime.remove(container_id),
        "inspect": lambda: runtime.inspect(container_id),
        "list_owned": lambda: runtime.list_owned("node-a"),
        "logs": lambda: list(runtime.logs(container_id)),
    }[verb]
    with pytest.raises(Unavailable):
        call()


@pytest.mark.parametrize("engine", ["fake", "docker"])
def test_not_alive_and_events_end_on_stop_when_the_engine_does_not_answer(engine, dead_engine):
    runtime, container_id = dead_engine
    assert runtime.alive() is False
    assert runtime.usage([container_id], timeout=1) == {}  # a scrape of /metrics: no figures, no error
    # The event stream does not raise when the engine is away (Docker's reconnects with a backoff, the fake's waits
    # for events): it yields nothing and ends when told to.
    events = Events(runtime, "node-a")
    assert events.wait("die", "any", timeout=0.3) is None
    assert events.close(), "the events iterator did not end within 3 s of `stop` being set"
    assert events.error is None and events.seen == []


# ---- volumes: named volumes outlive containers, a bind source must exist --------------------------------------------


@pytest.fixture
def volumes(subject):
    """The subject, and after the test: its node's containers, then the volumes Cube made for it, removed (also
    when the test failed)."""
    yield subject
    if subject.engine == "docker":
        _sweep(subject.node)
        remove_volumes(subject.node)


def mounting(s: Subject, *volumes: str, tmpfs=()) -> Assignment:
    spec = {"image": s.image, "command": SLEEP, "volumes": list(volumes), "tmpfs": list(tmpfs)}
    return Assignment(id=new_id(), spec=TaskSpec.from_dict(spec), generation=1)


def test_a_named_volume_is_made_on_first_use_and_outlives_its_container(volumes):
    s = volumes
    name = f"{s.node}-data"
    info = s.runtime.start(mounting(s, f"{name}:/data"), s.node)
    assert [(v.name, v.node) for v in s.runtime.volumes(s.node)] == [(name, s.node)]
    assert s.runtime.volumes(s.other) == [], "a volume is listed by the node that made it only"
    with pytest.raises(Conflict):
        s.runtime.remove_volume(name, s.node)  # a container uses it
    s.runtime.stop(info.id, timeout=0)
    s.runtime.remove(info.id)
    listed = s.runtime.volumes(s.node)
    assert [v.name for v in listed] == [name], "removing the container keeps its named volume"
    assert listed[0].created_at is not None and abs(listed[0].created_at - time.time()) < 120
    s.runtime.remove_volume(name, s.node)
    assert s.runtime.volumes(s.node) == []
    s.runtime.remove_volume(name, s.node)  # already gone: nothing to do


def test_a_missing_bind_source_is_a_start_error_naming_it_and_nothing_is_created(volumes, tmp_path):
    s = volumes
    missing = tmp_path / "not-there"
    with pytest.raises(RuntimeFailure, match=f"bind mount source {missing} does not exist on node {s.node}"):
        s.runtime.start(mounting(s, f"{missing}:/media:ro"), s.node)
    assert not missing.exists(), "no directory made for it"
    assert s.runtime.list_owned(s.node) == [], "no container left behind"
    (tmp_path / "media").mkdir()
    info = s.runtime.start(mounting(s, f"{tmp_path / 'media'}:/media:ro", tmpfs=["/run:size=1m"]), s.node)
    assert s.runtime.inspect(info.id).running
