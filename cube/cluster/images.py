"""How images move between engines without a registry, over the cluster's own connections. It decides the paths:

- **push** (`cube image push IMAGE [--node N]`): the CLI asks the manager which nodes lack the image's id
  (`plan`: each target worker checks its engine, and tags an image it already has), then streams `docker save` to
  the manager once; the manager tees the stream to every node that lacks it (`tee`, a chunked `POST /images` to
  each worker, which pipes it into `docker load`). One upload from the CLI, whatever the number of nodes: the CLI
  has no certificate a worker would accept, and the manager already holds a mutually authenticated link to each.
- **peer fetch**: a worker whose task's image cannot be pulled asks its manager (`GET /images/fetch`, the one
  route besides its registration that a worker's certificate opens on the manager); the manager picks a ready node
  that reported the image (cube.manager.images) and relays that worker's `GET /images/export` stream. Workers keep
  accepting the manager alone: no worker opens its API to another worker, so a stolen worker key reads what a
  worker may read anyway (the cluster's images) and nothing else. The relay costs one extra hop through the
  manager; on a LAN that is the price of one trust rule.

Streams are chunks of 1 MiB (cube.core.streams), passed on as they come; the manager holds at most QUEUE chunks
per target node.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator

from cube.cluster.client import Client, read_chunks
from cube.core.errors import BadRequest, CubeError, NotFound, Unavailable
from cube.core.spec import shown
from cube.core.streams import CHUNK

log = logging.getLogger(__name__)

QUEUE = 8  # chunks buffered per target node: memory stays under QUEUE MiB per node, whatever the image's size
STREAM_TIMEOUT = 120.0  # seconds one read or write of a stream may take (a Pi's disk loading a big layer)
SOURCE_HEADER = "X-Cube-Source"


def _targets(manager, names) -> list:
    """The nodes a push goes to: those named (each must exist), or every ready node."""
    if names:
        nodes = []
        for name in names:
            node = manager.node(name)
            if node is None:
                raise NotFound(f"no node {shown(name)}: `cube nodes` lists them")
            nodes.append(node)
        return nodes
    nodes = [n for n in (manager.node(d["name"]) for d in manager.list_nodes()) if n is not None and n.state == "ready"]
    if not nodes:
        raise Unavailable("no node is ready to take the image: `cube nodes` shows why")
    return nodes


def plan(manager, links, body) -> dict:
    """Which target nodes lack the image (by id); those that have it get its tags. Asked of each worker at once."""
    if not isinstance(body, dict) or not isinstance(body.get("id"), str) or not body["id"].startswith("sha256:"):
        raise BadRequest('send {"id": "sha256:...", "tags": [...], "nodes": [...]}')
    tags = [str(t) for t in body.get("tags") or ()]
    nodes = _targets(manager, [str(n) for n in body.get("nodes") or ()])
    answers: dict[str, dict] = {}

    def ask(node) -> None:
        try:
            answers[node.name] = links.request(node.address, "POST", "/images/check", {"id": body["id"], "tags": tags})
        except CubeError as error:
            answers[node.name] = {"error": error.message}

    threads = [threading.Thread(target=ask, args=(n,), daemon=True) for n in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {
        "present": sorted(n for n, a in answers.items() if a.get("present")),
        "missing": sorted(n for n, a in answers.items() if "error" not in a and not a.get("present")),
        "unreachable": {n: a["error"] for n, a in sorted(answers.items()) if "error" in a},
    }


def tee(manager, links, names: list[str], read: Callable[[int], bytes]) -> dict:
    """Stream the upload (`read(n)`, the request body) to each named node's `POST /images` at once. A node that
    fails drops out and the others go on; each node's outcome is in the answer (loaded, bytes, seconds, or error)."""
    if not names:
        raise BadRequest("which nodes? pass ?node=NAME for each (the plan says which lack the image)")
    nodes = _targets(manager, names)
    began = time.monotonic()
    lanes = {n.name: _Lane(links.client(n.address), n.name) for n in nodes}
    total = 0
    while True:
        chunk = read(CHUNK)
        if not chunk:
            break
        total += len(chunk)
        # When every node failed, the rest is read and dropped: a client that is still sending reads the answer
        # (each node's reason) only once its upload is done, and a connection closed under it tells it nothing.
        for lane in lanes.values():
            if lane.error is None:
                lane.put(chunk)
    # Every node is told the stream ended before any is waited for: a node's `docker load` applies the image only
    # once its stream ends, and joining n1 before ending n2's stream made n2 wait for n1's load (0.6 s of 3.2 s
    # for 107 MB to two nodes, BENCHMARKS.md).
    for lane in lanes.values():
        lane.end()
    for lane in lanes.values():
        lane.wait()
    outcome = {name: lane.outcome() for name, lane in lanes.items()}
    return {"bytes": total, "seconds": time.monotonic() - began, "nodes": outcome}


class _Lane:
    """One target node of a push: a thread that sends what the queue gives it as one chunked request."""

    def __init__(self, client: Client, name: str):
        self.name = name
        self.error: str | None = None
        self.answer: dict = {}
        self._queue: queue.Queue = queue.Queue(QUEUE)
        self._thread = threading.Thread(target=self._run, args=(client,), name=f"push {name}", daemon=True)
        self._thread.start()

    def _chunks(self) -> Iterator[bytes]:
        while True:
            chunk = self._queue.get()
            if chunk is None:
                return
            if isinstance(chunk, BaseException):
                raise chunk
            yield chunk

    def _run(self, client: Client) -> None:
        try:
            response = client.open("POST", "/images", chunks=self._chunks(), timeout=STREAM_TIMEOUT)
            try:
                self.answer = json.loads(response.read() or b"{}")
            finally:
                response.close()
        except CubeError as error:
            self.error = f"{error.message} (is its worker running? `cube nodes` shows it)"
        except Exception as error:  # noqa: BLE001 - one node's failure must not end the others' push
            log.exception("pushing an image to %s", self.name)
            self.error = f"internal error: {error}"
        finally:
            self.error = self.error if self.error is not None or self.answer else "no answer"
            while True:  # unblock a producer that waits on a full queue
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break

    def put(self, chunk: bytes) -> None:
        while self.error is None and self._thread.is_alive():
            try:
                self._queue.put(chunk, timeout=0.5)
                return
            except queue.Full:
                continue

    def end(self) -> None:
        """The stream is over: the node's request ends, and its answer comes once its engine loaded the image."""
        if self.error is None and self._thread.is_alive():
            self.put(None)  # type: ignore[arg-type]

    def wait(self) -> None:
        self._thread.join()

    def outcome(self) -> dict:
        return {"error": self.error} if self.error is not None else self.answer


def fetch(manager, links, image: str, asker: str, avoid=()) -> tuple[str, Iterator[bytes]]:
    """The stream of `image` from a ready node that has it, for node `asker` (the manager's relay); not from a node
    in `avoid` (one whose stream to the asker broke off)."""
    asking = manager.node(asker)
    arch = asking.labels.get("arch") if asking is not None else None
    ready = _ready(manager, arch)
    source = manager.images.source(image, asker, lambda n: n not in avoid and ready(n), _load(manager))
    if source is None:
        holders = [n for n in manager.images.holders(image) if n != asker and n not in avoid]
        why = (
            f"it is on {', '.join(holders)}, not ready or of another architecture" if holders else "no node reported it"
        )
        raise NotFound(f"no peer node can give image {image}: {why} (`cube image push {image}` sends it)")
    node = manager.node(source)
    assert node is not None
    client = links.client(node.address)
    response = client.open("GET", "/images/export", params={"image": image}, timeout=STREAM_TIMEOUT)
    return source, read_chunks(response, CHUNK)


def _ready(manager, arch: str | None) -> Callable[[str], bool]:
    """Whether a node may serve an image: ready, and of the asker's architecture (one tag may name an amd64 image
    on one node and an arm64 one on another)."""

    def ready(name: str) -> bool:
        node = manager.node(name)
        return node is not None and node.state == "ready" and (not arch or node.labels.get("arch") in (None, arch))

    return ready


def _load(manager) -> Callable[[str], int]:
    def load(name: str) -> int:
        node = manager.node(name)
        return node.tasks if node is not None else 0

    return load


class ManagerSource:
    """A worker's way to a missing image (cube.worker.images.Source): a stream relayed by its manager, whose URL is
    the one given (--manager) or the one the worker last registered with (`found`, called by its Registrar). `trust()`:
    how the worker reaches its manager, read when needed (a new worker has its certificate only once it joined)."""

    def __init__(self, manager: str | None, token: str | None, trust: Callable[[], object]):
        self.manager, self._token, self._trust = manager, token, trust

    def found(self, url: str) -> None:
        self.manager = url

    def __call__(self, image: str, node: str, avoid=()) -> tuple[str, Iterator[bytes]]:
        if not self.manager:
            raise Unavailable("this worker does not know its manager yet")
        client = Client(self.manager, self._token, timeout=STREAM_TIMEOUT, trust=self._trust())  # type: ignore[arg-type]
        params = [("image", image), ("node", node), *(("avoid", peer) for peer in avoid)]
        response = client.open("GET", "/images/fetch", params=params, timeout=STREAM_TIMEOUT)
        return response.getheader(SOURCE_HEADER) or "a peer", read_chunks(response, CHUNK)
