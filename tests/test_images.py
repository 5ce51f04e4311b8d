"""Images without a registry, over real HTTP on loopback (cheroot servers, the cluster's client and routes) with
fake engines: `cube image push` reaches the nodes that lack an image and skips those that have it, a task whose
image cannot be pulled gets it from a peer through the manager, and a stream cut short leaves nothing tagged. The
same on real engines, one per node: tests/test_images_engines.py."""

from __future__ import annotations

import io
import time

import pytest

from cube.cli import images as cli_images
from cube.cluster.api import Server, manager_app, worker_app
from cube.cluster.client import Client
from cube.cluster.images import ManagerSource
from cube.cluster.links import Links
from cube.cluster.trust import Trust
from cube.core import streams
from cube.core.errors import NotFound, Unavailable
from cube.core.model import Assignment, Node, Resources, State
from cube.core.spec import TaskSpec
from cube.manager.images import ImageMap, matches
from cube.manager.manager import Manager
from cube.store import MemoryStore
from cube.worker.metrics import Metrics
from cube.worker.runtime import FakeRuntime
from cube.worker.worker import Worker

TOKEN = "images-test-token"
IMAGE = "app:1.0"
ID = "sha256:" + "ab" * 32


class Cluster:
    """A manager and workers n1..nN, each worker on a fake engine and a real HTTP server on loopback."""

    def __init__(self, names=("n1", "n2", "n3")):
        self.manager = Manager(MemoryStore())
        self.links = Links(TOKEN)
        self.mserver = Server(manager_app(self.manager, None, self.links, TOKEN), "127.0.0.1").start()
        self.runtimes, self.workers, self.servers = {}, {}, {}
        for name in names:
            runtime = self.runtimes[name] = FakeRuntime()
            runtime.fail_images.add(IMAGE)  # no registry: a pull of it fails
            # As on an --insecure cluster: the manager answers the challenge before the token goes to it.
            source = ManagerSource(self.mserver.url, TOKEN, lambda: Trust(insecure=True))
            worker = self.workers[name] = Worker(
                name,
                runtime,
                MemoryStore(),
                metrics=Metrics(None, 2, 2 << 30, 10 << 30),
                sync=True,
                image_source=source,
            )
            server = self.servers[name] = Server(worker_app(worker, TOKEN), "127.0.0.1").start()
            self.manager.node_up(Node(name, server.url, Resources(2, 2 << 30, 10 << 30), last_seen=time.time()))
        self.client = Client(self.mserver.url, TOKEN)

    def report(self) -> None:
        """Each worker lists its images and answers a poll (as Membership folds it in)."""
        for name, worker in self.workers.items():
            worker.images.refresh(force=True)
            self.manager.heard(name, worker.stats())

    def close(self) -> None:
        for server in (*self.servers.values(), self.mserver):
            server.stop()
        for worker in self.workers.values():
            worker.close()
        self.manager.close()


@pytest.fixture
def cluster():
    c = Cluster()
    yield c
    c.close()


def local_engine(size: int = 1000) -> FakeRuntime:
    runtime = FakeRuntime()
    runtime.fake_images[ID] = {IMAGE}
    original = runtime.save
    runtime.save = lambda ref: original(ref, size)  # type: ignore[method-assign]
    return runtime


def test_push_reaches_the_named_nodes_and_a_second_push_moves_nothing(cluster):
    local = local_engine(6 << 20)  # more than cheroot's 4 MiB backstop on chunked bodies
    out = io.StringIO()
    result = cli_images.push(cluster.client, IMAGE, ["n1", "n2"], out, runtime=local)
    assert {n: o.get("loaded") for n, o in result["nodes"].items()} == {"n1": [IMAGE], "n2": [IMAGE]}
    assert result["nodes"]["n1"]["bytes"] > 6 << 20
    assert "sent 6.3 MB to n1, n2" in out.getvalue()
    assert [cluster.runtimes[n].loads for n in ("n1", "n2", "n3")] == [1, 1, 0]
    assert cluster.runtimes["n2"].image(IMAGE)["id"] == ID

    began = time.monotonic()
    again = cli_images.push(cluster.client, IMAGE, ["n1", "n2"], io.StringIO(), runtime=local)
    assert time.monotonic() - began < 1.0
    assert again["nodes"] == {"n1": {"present": True}, "n2": {"present": True}}
    assert "bytes" not in again  # nothing was sent
    assert [cluster.runtimes[n].loads for n in ("n1", "n2")] == [1, 1]
    assert (
        cli_images.push_text(again) == "n1: has app:1.0 already (nothing sent)\nn2: has app:1.0 already (nothing sent)"
    )


def test_a_node_with_the_image_under_another_name_is_only_tagged(cluster):
    cluster.runtimes["n1"].fake_images[ID] = {"old:name"}
    result = cli_images.push(cluster.client, IMAGE, ["n1"], io.StringIO(), runtime=local_engine())
    assert result["nodes"] == {"n1": {"present": True}}
    assert cluster.runtimes["n1"].fake_images[ID] == {"old:name", IMAGE}
    assert cluster.runtimes["n1"].loads == 0


def test_push_without_nodes_goes_to_every_ready_node_and_names_an_unknown_one(cluster):
    result = cli_images.push(cluster.client, IMAGE, [], io.StringIO(), runtime=local_engine())
    assert sorted(result["nodes"]) == ["n1", "n2", "n3"]
    with pytest.raises(NotFound, match="no node 'n9'"):
        cli_images.push(cluster.client, IMAGE, ["n9"], io.StringIO(), runtime=local_engine())


def test_a_node_that_fails_mid_push_drops_out_and_the_others_get_the_image(cluster):
    cluster.runtimes["n2"].down = "engine stopped"
    result = cli_images.push(cluster.client, IMAGE, ["n1", "n2"], io.StringIO(), runtime=local_engine(3 << 20))
    assert result["nodes"]["n1"]["loaded"] == [IMAGE]
    assert "engine stopped" in result["nodes"]["n2"]["error"]
    assert cluster.runtimes["n2"].fake_images == {}


class _ManagerGoneMidPush:
    """A manager that plans a push to n1 and goes away once `after` chunks of the upload reached it."""

    base_url = "https://manager:5555"

    def __init__(self, after: int = 2):
        self.after = after

    def post(self, path, body=None, timeout=None):
        return {"present": [], "missing": ["n1"], "unreachable": {}}

    def open(self, method, path, params=None, chunks=None, timeout=None):
        for count, _ in enumerate(chunks, 1):
            if count == self.after:
                break
        raise Unavailable(f"{self.base_url} broke off the exchange: [Errno 104] Connection reset by peer")


def test_a_manager_gone_mid_push_is_one_error_with_the_next_step_on_a_line_of_its_own():
    out = io.StringIO()
    with pytest.raises(Unavailable) as raised:
        cli_images.push(_ManagerGoneMidPush(), IMAGE, ["n1"], out, runtime=local_engine(3 << 20))
    assert raised.value.message.startswith("the push broke off (https://manager:5555 broke off the exchange: ")
    assert raised.value.message.endswith("push again once `cube nodes` answers")
    assert out.getvalue().startswith("\r  sent ") and out.getvalue().endswith("  \n")  # the line is ended


def test_an_engine_that_fails_mid_push_is_its_own_error_not_the_managers():
    local = local_engine(3 << 20)
    saved = local.save

    def broken(ref):
        yield next(iter(saved(ref)))
        raise Unavailable("saving image app:1.0: the Docker engine does not answer")

    local.save = broken  # type: ignore[method-assign]
    with pytest.raises(Unavailable, match="^saving image app:1.0: the Docker engine does not answer$"):
        cli_images.push(_ManagerGoneMidPush(after=10), IMAGE, ["n1"], io.StringIO(), runtime=local)


def run_task(cluster, node: str, image: str = IMAGE) -> Assignment:
    worker = cluster.workers[node]
    worker.accept(Assignment("t1", TaskSpec.from_dict({"image": image}), generation=1))
    worker.tick()
    return worker.get("t1")


def test_a_task_whose_image_cannot_be_pulled_gets_it_from_a_peer(cluster):
    cluster.runtimes["n1"].fake_images[ID] = {IMAGE}
    cluster.report()
    assert cluster.client.get("/images") == [{"id": ID, "tags": [IMAGE], "nodes": ["n1"]}]
    task = run_task(cluster, "n3")
    assert task.state is State.RUNNING, task.reason
    said = [e.message for e in cluster.workers["n3"].store.events()]
    assert any(m.startswith("image app:1.0 fetched from n1 (1.1 kB in ") for m in said), said
    cluster.report()
    assert cluster.client.get("/images")[0]["nodes"] == ["n1", "n3"]


def test_a_peer_whose_stream_breaks_off_is_left_for_another_that_has_the_image(cluster):
    for name in ("n1", "n2"):
        cluster.runtimes[name].fake_images[ID] = {IMAGE}
    saved = cluster.runtimes["n1"].save

    def breaks(ref):
        yield next(iter(saved(ref)))
        raise Unavailable("saving image app:1.0: the Docker engine does not answer")

    cluster.runtimes["n1"].save = breaks  # type: ignore[method-assign]
    cluster.report()
    task = run_task(cluster, "n3")
    assert task.state is State.RUNNING, task.reason
    said = [e.message for e in cluster.workers["n3"].store.events()]
    fetched = next(m for m in said if m.startswith("image app:1.0 fetched from "))
    assert fetched.startswith("image app:1.0 fetched from n2 ("), fetched
    assert " after loading the image from n1 failed after " in fetched, fetched


def test_no_peer_with_the_image_fails_the_task_with_both_reasons(cluster):
    cluster.report()
    task = run_task(cluster, "n2")
    assert task.state is State.FAILED
    assert "could not be pulled" in task.reason and "no peer node can give image app:1.0" in task.reason


def test_a_stream_cut_short_tags_nothing_and_says_why():
    runtime = FakeRuntime()
    runtime.fail_images.add(IMAGE)

    def source(image, node, avoid=()):
        if "n1" in avoid:
            raise NotFound(f"no peer node can give image {image}: no node reported it")

        def chunks():
            yield b'{"id": "%s", "tags": ["%s"], "size": 5000}\n' % (ID.encode(), image.encode())
            yield b"x" * 100
            raise Unavailable("the stream broke off: source node gone")

        return "n1", chunks()

    worker = Worker("n2", runtime, MemoryStore(), sync=True, image_source=source)
    try:
        worker.accept(Assignment("t1", TaskSpec.from_dict({"image": IMAGE}), generation=1))
        worker.tick()
        task = worker.get("t1")
        assert task.state is State.FAILED
        assert "no peer node gave it: loading the image from n1 failed after 217 B: " in task.reason
        assert task.reason.endswith("the stream broke off: source node gone; no other peer has it"), task.reason
        assert runtime.fake_images == {}
    finally:
        worker.close()


def test_the_map_picks_a_ready_holder_other_than_the_asker_least_busy_first():
    images = ImageMap()
    images.heard("a", [{"id": ID, "tags": [IMAGE]}])
    images.heard("b", [{"id": ID, "tags": [IMAGE]}])
    images.heard("c", [{"id": ID, "tags": [IMAGE]}])
    busy = {"a": 5, "b": 1, "c": 0}
    assert images.source(IMAGE, "c", lambda n: True, busy.__getitem__) == "b"
    assert images.source(IMAGE, "c", lambda n: n != "b", busy.__getitem__) == "a"
    assert images.source("other:1", "c", lambda n: True, busy.__getitem__) is None
    assert matches("app", ID, ["app:latest"]) and matches(ID[7:19], ID, []) and not matches("ab", ID, [])


def test_a_stream_is_passed_on_in_whole_chunks_whatever_the_pieces_it_came_in():
    pieces = [b"a" * 3, b"", b"b" * 5, b"c" * 7, b"d", b"e" * 8]
    chunks = list(streams.whole(pieces, 4))
    assert [len(c) for c in chunks] == [4, 4, 4, 4, 4, 4]
    assert b"".join(chunks) == b"".join(pieces)
    assert [len(c) for c in streams.whole([b"x" * 9], 4)] == [4, 4, 1]
    assert list(streams.whole([], 4)) == [] and list(streams.whole([b""], 4)) == []


@pytest.mark.docker
def test_the_docker_runtime_tags_saves_and_lists_an_image(busybox_image):
    from cube.worker.docker_runtime import DockerRuntime

    runtime = DockerRuntime()
    try:
        found = runtime.image(busybox_image)
        assert found is not None and busybox_image in found["tags"] and found["size"] > 0
        runtime.tag(found["id"], ["cube-images-test/tagged:1", "cube-images-test-bare"])
        try:
            assert {"cube-images-test/tagged:1", "cube-images-test-bare:latest"} <= set(
                runtime.image(found["id"])["tags"]
            )
            assert any(i["id"] == found["id"] for i in runtime.images())
            chunks = list(runtime.save("cube-images-test/tagged:1"))
            assert b"manifest.json" in b"".join(chunks)
            assert all(len(c) == streams.CHUNK for c in chunks[:-1]) and 0 < len(chunks[-1]) <= streams.CHUNK
        finally:
            import subprocess

            subprocess.run(["docker", "rmi", "cube-images-test/tagged:1", "cube-images-test-bare"], capture_output=True)
        assert runtime.image("cube-images-test-none:1") is None
    finally:
        runtime.close()


def test_a_peer_of_another_architecture_is_not_asked(cluster):
    cluster.runtimes["n1"].fake_images[ID] = {IMAGE}
    cluster.report()
    for name, arch in (("n1", "armv7l"), ("n3", "x86_64")):  # the same tag may name another platform's image on n1
        node = cluster.manager.node(name)
        cluster.manager.node_up(Node(name, node.address, node.capacity, labels={"arch": arch}, last_seen=time.time()))
    task = run_task(cluster, "n3")
    assert task.state is State.FAILED
    assert "it is on n1, not ready or of another architecture" in task.reason


def test_a_workers_certificate_opens_the_image_relay_on_the_manager_and_nothing_more_of_images():
    from cube.cluster.api import Access
    from cube.cluster.manager_service import WORKER_ROUTES
    from cube.core.errors import Unauthorized

    access = Access("secret", "worker", WORKER_ROUTES)
    worker = {"SSL_CLIENT_S_DN_OU": "worker", "SSL_CLIENT_S_DN_CN": "n2"}
    access.check(worker, "GET", "/images/fetch")
    for method, path in (("POST", "/images"), ("POST", "/images/push"), ("GET", "/images")):
        with pytest.raises(Unauthorized):
            access.check(worker, method, path)
