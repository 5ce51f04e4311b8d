"""DockerRuntime on the real engine: what `start` asks of Docker (labels, limits, ports) checked with the SDK's
own inspect, the life cycle (stop, restart, remove), the summary listing with exit codes, logs, the event stream
(promptness, stop, reconnection through a cuttable socket proxy) and failures (missing image, missing container,
no engine)."""

import os
import queue
import socket
import subprocess
import threading
import time
import urllib.request

import docker
import pytest
from conftest import remove_volumes, wait_for

from cube.core.errors import ImageUnavailable, NotFound, RuntimeFailure, Unavailable
from cube.core.model import Task, TaskSpec, new_id
from cube.worker.docker_runtime import DockerRuntime, container_name, parse_time
from cube.worker.runtime import disk_usage

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def sdk():
    client = docker.from_env()
    yield client
    client.close()


@pytest.fixture
def runtime():
    rt = DockerRuntime()
    yield rt
    rt.close()


def make_task(image, **spec):
    spec.setdefault("command", ["sleep", "300"])
    return Task(id=new_id(), spec=TaskSpec.from_dict({"image": image, **spec}))


def wait_ended(runtime, container_id, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = runtime.inspect(container_id)
        if info.ended:
            return info
        time.sleep(0.05)
    raise AssertionError(f"container {container_id} still {info.status} after {timeout} s")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_start_applies_labels_limits_env_and_command(runtime, sdk, busybox_image, node_name):
    task = make_task(
        busybox_image,
        name="web",
        cpu=0.5,
        memory="64m",
        env={"GREETING": "hi"},
        labels={"team": "blue", "cube.node": "forged"},
    )
    task.generation = 3
    info = runtime.start(task, node_name)
    assert (info.status, info.task_id, info.node, info.generation) == ("running", task.id, node_name, 3)
    assert info.image == busybox_image and info.exit_code is None
    assert abs(info.started_at - time.time()) < 30 and info.finished_at is None

    attrs = sdk.api.inspect_container(info.id)
    assert attrs["Name"] == f"/cube-web-{task.id}.{task.generation}" == "/" + container_name(task)
    labels = attrs["Config"]["Labels"]
    assert labels["cube.task_id"] == task.id and labels["cube.generation"] == "3"
    assert labels["cube.node"] == node_name and labels["team"] == "blue"
    assert attrs["HostConfig"]["NanoCpus"] == 500_000_000
    assert attrs["HostConfig"]["Memory"] == 64 * 1024 * 1024
    assert "GREETING=hi" in attrs["Config"]["Env"]
    assert attrs["Config"]["Cmd"] == ["sleep", "300"]


def test_no_limits_when_zero_and_image_default_command(runtime, sdk, busybox_image, node_name):
    task = Task(id=new_id(), spec=TaskSpec.from_dict({"image": busybox_image}))
    info = runtime.start(task, node_name)
    attrs = sdk.api.inspect_container(info.id)
    assert attrs["HostConfig"]["NanoCpus"] == 0 and attrs["HostConfig"]["Memory"] == 0
    assert attrs["Config"]["Cmd"] == ["/bin/sh"]  # the image's CMD


def test_dynamic_and_fixed_host_ports_are_reported_and_serve(runtime, busybox_image, node_name):
    fixed = free_port()
    task = make_task(
        busybox_image, command=["httpd", "-f", "-p", "80", "-h", "/www"], ports=["80", f"{fixed}:8080", "53/udp"]
    )
    info = runtime.start(task, node_name)
    dynamic = info.host_ports["80/tcp"]
    assert isinstance(dynamic, int) and dynamic > 0 and dynamic != fixed
    assert info.host_ports["8080/tcp"] == fixed and info.host_ports["53/udp"] > 0
    assert runtime.inspect(info.id).host_ports == info.host_ports
    [listed] = runtime.list_owned(node_name)
    assert listed.host_ports == info.host_ports

    deadline = time.monotonic() + 5
    while True:  # the server inside may need a moment to listen
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{dynamic}/", timeout=2) as response:
                assert response.read() == b"cube ok\n"
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_stop_then_remove_is_idempotent(runtime, busybox_image, node_name):
    info = runtime.start(make_task(busybox_image), node_name)
    started = time.monotonic()
    runtime.stop(info.id, timeout=1)  # sleep ignores SIGTERM as PID 1: killed after the grace period
    assert time.monotonic() - started < 8
    stopped = runtime.inspect(info.id)
    assert stopped.ended and stopped.exit_code == 137 and stopped.finished_at >= stopped.started_at
    runtime.stop(info.id, timeout=1)  # already stopped: fine
    runtime.remove(info.id)
    with pytest.raises(NotFound):
        runtime.inspect(info.id)
    runtime.remove(info.id)  # already gone: fine
    assert runtime.list_owned(node_name) == []


def test_missing_container_is_not_found(runtime, busybox_image):
    for call in (runtime.inspect, runtime.stop, runtime.restart, runtime.logs):
        with pytest.raises(NotFound, match="no-such-container"):
            call("no-such-container")


def test_list_owned_sees_exited_containers_with_exit_code(runtime, busybox_image, node_name):
    failing = runtime.start(make_task(busybox_image, command=["sh", "-c", "exit 3"]), node_name)
    running = runtime.start(make_task(busybox_image), node_name)
    runtime.start(make_task(busybox_image), node_name + "-other")  # another node's: not listed
    try:
        ended = wait_ended(runtime, failing.id)
        assert ended.exit_code == 3 and ended.finished_at is not None
        listed = {c.id: c for c in runtime.list_owned(node_name)}
        assert set(listed) == {failing.id, running.id}
        assert (listed[failing.id].status, listed[failing.id].exit_code) == ("exited", 3)
        assert (listed[running.id].status, listed[running.id].exit_code) == ("running", None)
        assert listed[failing.id].task_id == failing.task_id and listed[failing.id].node == node_name
    finally:
        for other in runtime.list_owned(node_name + "-other"):
            runtime.remove(other.id)


def test_logs_return_stdout_and_stderr(runtime, busybox_image, node_name):
    script = "echo hello; echo oops >&2; sleep 0.2; echo bye"  # the pause orders stderr before the last line
    info = runtime.start(make_task(busybox_image, command=["sh", "-c", script]), node_name)
    wait_ended(runtime, info.id)
    output = b"".join(runtime.logs(info.id))
    assert b"hello" in output and b"oops" in output and b"bye" in output
    assert b"".join(runtime.logs(info.id, tail=1)) == b"bye\n"


def test_follow_logs_streams_until_the_container_ends(runtime, busybox_image, node_name):
    info = runtime.start(make_task(busybox_image, command=["sh", "-c", "echo one; sleep 1; echo two"]), node_name)
    assert b"".join(runtime.logs(info.id, follow=True)) == b"one\ntwo\n"


def test_restart_starts_the_same_ended_container_again(runtime, busybox_image, node_name):
    info = runtime.start(make_task(busybox_image, command=["sh", "-c", "echo run; sleep 300"]), node_name)
    runtime.stop(info.id, timeout=0)
    first = runtime.inspect(info.id)
    again = runtime.restart(info.id)
    assert again.id == info.id and again.status == "running" and again.exit_code is None
    assert again.started_at > first.started_at
    deadline = time.monotonic() + 5
    while b"".join(runtime.logs(info.id)) != b"run\nrun\n":
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_leftover_container_of_the_same_task_is_replaced(runtime, busybox_image, node_name):
    task = make_task(busybox_image)
    first = runtime.start(task, node_name)  # as if the worker crashed before recording it
    second = runtime.start(task, node_name)
    assert second.id != first.id
    assert [c.id for c in runtime.list_owned(node_name)] == [second.id]


def test_command_that_cannot_start_fails_and_leaves_nothing(runtime, busybox_image, node_name):
    with pytest.raises(RuntimeFailure, match="no-such-program"):
        runtime.start(make_task(busybox_image, command=["no-such-program"]), node_name)
    assert runtime.list_owned(node_name) == []


def test_missing_image_fails_fast_with_the_reason(runtime, node_name):
    started = time.monotonic()
    with pytest.raises(ImageUnavailable) as caught:
        runtime.start(make_task("doesnotexist/nothing:1"), node_name)
    assert time.monotonic() - started < 30
    message = str(caught.value)
    assert "'doesnotexist/nothing:1' is not present locally and could not be pulled: " in message
    assert len(message.split("could not be pulled: ", 1)[1]) > 5  # and why
    assert runtime.list_owned(node_name) == []


def test_engine_that_does_not_answer_is_unavailable(tmp_path):
    runtime = DockerRuntime(base_url=f"unix://{tmp_path}/nothing.sock")
    started = time.monotonic()
    with pytest.raises(Unavailable, match="does not answer"):
        runtime.inspect("anything")
    assert time.monotonic() - started < 5


def collect_events(runtime, node, stop):
    events: queue.Queue = queue.Queue()

    def run():
        for event in runtime.events(node, stop):
            events.put(event)
        events.put(None)  # the generator ended

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return events, thread


def next_event(events, action, container_id, timeout):
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            event = events.get(timeout=left)
        except queue.Empty:
            break
        if event and (event.action, event.container_id) == (action, container_id):
            return event
    raise AssertionError(f"no {action} event for {container_id} within {timeout} s")


def test_events_report_die_promptly_after_kill(runtime, sdk, busybox_image, node_name):
    stop = threading.Event()
    events, thread = collect_events(runtime, node_name, stop)
    try:
        # The stream opens when the generator first runs: waiting for this start event proves it is open.
        deadline = time.monotonic() + 10
        while True:
            task = make_task(busybox_image)
            info = runtime.start(task, node_name)
            try:
                assert next_event(events, "start", info.id, 0.5).task_id == task.id
                break
            except AssertionError:
                assert time.monotonic() < deadline
        killed = time.monotonic()
        sdk.api.kill(info.id)
        die = next_event(events, "die", info.id, 3)
        assert time.monotonic() - killed < 1.5
        assert die.task_id == task.id
    finally:
        stop.set()
        thread.join(5)


def test_events_generator_ends_soon_after_stop(runtime, busybox_image, node_name):
    stop = threading.Event()
    events, thread = collect_events(runtime, node_name, stop)
    time.sleep(0.5)  # quiet stream: the generator is blocked reading
    stopped = time.monotonic()
    stop.set()
    thread.join(3)
    assert not thread.is_alive() and time.monotonic() - stopped < 1.5
    assert events.get(timeout=1) is None


class SocketProxy:
    """A unix socket forwarding to the Docker engine's socket that can be cut and restored: an engine restart
    as a client sees it, without touching the real engine."""

    def __init__(self, path, target="/var/run/docker.sock"):
        self.path, self.target = str(path), target
        self.listener = None
        self.conns: list[socket.socket] = []

    def up(self):
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(self.path)
        self.listener.listen(16)
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def down(self):
        self.listener.close()
        os.unlink(self.path)
        for conn in self.conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        self.conns.clear()

    def _accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.target)
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.mark.skipif(not os.path.exists("/var/run/docker.sock"), reason="the engine is not on the default socket")
def test_events_reconnect_and_replay_after_the_engine_goes_away(sdk, busybox_image, node_name, tmp_path):
    proxy = SocketProxy(tmp_path / "docker.sock")
    proxy.up()
    runtime = DockerRuntime(base_url=f"unix://{proxy.path}")
    stop = threading.Event()
    events, thread = collect_events(runtime, node_name, stop)
    try:
        deadline = time.monotonic() + 10
        while True:
            info = runtime.start(make_task(busybox_image), node_name)
            try:
                next_event(events, "start", info.id, 0.5)
                break
            except AssertionError:
                assert time.monotonic() < deadline
        proxy.down()
        sdk.api.kill(info.id)  # while the stream is cut: the event must be replayed on reconnection
        time.sleep(0.5)
        proxy.up()
        next_event(events, "die", info.id, 5)
    finally:
        stop.set()
        thread.join(5)
        runtime.close()
        proxy.down()
    assert not thread.is_alive()


def test_parse_time():
    assert parse_time("0001-01-01T00:00:00Z") is None
    assert parse_time("") is None and parse_time(None) is None
    assert parse_time("2024-03-01T12:00:00.123456789Z") == pytest.approx(1709294400.123456789)
    assert parse_time("2024-03-01T14:00:00+02:00") == 1709294400


def test_a_volumes_size_is_measured_in_the_background(runtime, busybox_image, node_name):
    """`cube volume ls` SIZE: the volume's own directory walked on a thread of its own, not `system df -v`."""
    name = f"cube-size-{node_name}"
    try:
        task = make_task(
            busybox_image,
            command=["sh", "-c", "head -c 3145728 /dev/urandom > /data/blob; sleep 300"],
            volumes=[f"{name}:/data"],
        )
        runtime.start(task, node_name)
        blob = os.path.join(_mountpoint(name), "blob")
        wait_for(lambda: os.path.exists(blob) and os.path.getsize(blob) == 3 << 20, timeout=10)
        runtime._sizes.clear()  # measured before the file was whole: ask again
        sizes = wait_for(lambda: [v.size for v in runtime.volumes(node_name) if v.name == name and v.size], timeout=10)
        assert 3 << 20 <= sizes[0] < 4 << 20, sizes
    finally:
        for info in runtime.list_owned(node_name):
            runtime.remove(info.id)
        remove_volumes(node_name)


def _mountpoint(name: str) -> str:
    return docker.from_env().api.inspect_volume(name)["Mountpoint"]


def test_disk_usage_counts_as_du_does(tmp_path):
    (tmp_path / "a").write_bytes(os.urandom(100_000))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(os.urandom(5000))
    os.link(tmp_path / "a", tmp_path / "sub" / "a-again")  # one file, two names: counted once
    os.symlink("/usr", tmp_path / "elsewhere")  # not followed
    du = subprocess.run(["du", "-s", "--block-size=1", str(tmp_path)], capture_output=True, text=True, check=True)
    assert disk_usage(str(tmp_path)) == int(du.stdout.split()[0])
    assert disk_usage(str(tmp_path), limit=3) is None, "a tree bigger than the limit: unknown, not a long walk"
    assert disk_usage(str(tmp_path / "nothing-here")) is None
