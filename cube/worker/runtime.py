"""The container runtime as the worker sees it: a small interface (Nomad's driver verbs: start, stop, remove,
inspect, list owned, logs, events) and `FakeRuntime`, an in-memory implementation that can be told to fail, for
fast tests and simulated clusters. The real one is `cube.worker.docker_runtime.DockerRuntime`.

Every container a runtime creates carries the labels `cube.task_id` and `cube.node`: they are how a restarted
worker finds (adopts) its containers and how it recognises containers that no task owns.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cube.core.errors import Conflict, ImageUnavailable, NotFound, RuntimeFailure, Unavailable
from cube.core.images import no_variant, same_platform
from cube.core.model import Assignment

LABEL_TASK = "cube.task_id"
LABEL_NODE = "cube.node"
LABEL_GENERATION = "cube.generation"
LABEL_VOLUME = "cube.volume"  # on the named volumes Cube creates (with cube.node): how a node lists its own
LABEL_HOST_PORTS = "cube.host_ports"  # with host networking: the task's ports ("80/tcp,53/udp"), each the node's
LABEL_INGRESS = "cube.ingress"  # "80/tcp=8080,...": ports the routing mesh publishes (reported as host ports)
NETWORK = "cube"  # the node's cluster network (a bridge with the node's subnet; see cube.worker.network)


def ingress_ports(spec, network) -> dict[str, int]:
    """The spec's ports the routing mesh publishes ("80/tcp" -> node port) when the container joins the cluster
    network (`network` given); without one, every port is Docker's own binding on the node, as before the mesh."""
    return {p.key: p.host for p in spec.ingress_ports} if network is not None else {}


def missing_device(path: str, node: str) -> RuntimeFailure:
    """The start error of a task whose device is not on its node (both runtimes say it in these words)."""
    return RuntimeFailure(
        f"device {path} does not exist on node {node}: plug it in (or fix the path; `ls -l {path}` on the node), "
        f"or pass a device this node has"
    )


Files = Sequence[tuple[str, str]]  # a task's secrets and configs: (file on the node, target in the container)
Attachment = tuple[str, str] | None  # the cluster network's name and DNS server a container joins, or none


@dataclass
class ContainerInfo:
    id: str
    task_id: str
    node: str
    status: str  # created, running, exited, dead, ... (Docker's words)
    exit_code: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    host_ports: dict = field(default_factory=dict)  # "80/tcp" -> host port
    image: str = ""
    error: str = ""  # the engine's own explanation of a failure, when it gives one
    oom_killed: bool = False
    generation: int = 0
    health: str = ""  # a health command's verdict (Docker's words): "", starting, healthy, unhealthy
    address: str = ""  # on the node's cluster network (NETWORK), "" when not on it

    @property
    def running(self) -> bool:
        return self.status in ("running", "restarting")

    @property
    def ended(self) -> bool:
        return self.status in ("exited", "dead")


@dataclass
class VolumeInfo:
    """A named volume this node made for its tasks. `size`: bytes, None when the runtime cannot tell cheaply."""

    name: str
    node: str
    created_at: float | None = None
    size: int | None = None

    def to_dict(self) -> dict:
        return {"name": self.name, "node": self.node, "created_at": self.created_at, "size": self.size}


DISK_USAGE_LIMIT = 200_000  # entries walked at most: a bigger volume's size is unknown rather than a long walk


def disk_usage(path: str, limit: int = DISK_USAGE_LIMIT) -> int | None:
    """Bytes a directory tree takes on disk, as `du -s` counts them (allocated blocks, each hard-linked file once,
    symbolic links not followed); None when it cannot be read or has more than `limit` entries."""
    total, seen, entries = 0, set(), 0
    stack = [path]
    try:
        total = os.stat(path).st_blocks * 512  # the directory itself, as du counts it
        while stack:
            with os.scandir(stack.pop()) as found:
                for entry in found:
                    entries += 1
                    if entries > limit:
                        return None
                    info = entry.stat(follow_symlinks=False)
                    if info.st_nlink > 1 and not entry.is_dir(follow_symlinks=False):
                        if (info.st_dev, info.st_ino) in seen:
                            continue
                        seen.add((info.st_dev, info.st_ino))
                    total += info.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
    except OSError:
        return None
    return total


def missing_bind(source: str, node: str) -> RuntimeFailure:
    """The start error of a bind mount whose host path does not exist: never a directory made for it."""
    return RuntimeFailure(
        f"bind mount source {source} does not exist on node {node}: create it there (with the owner the "
        f"container runs as), or fix the path; Cube never creates it"
    )


@dataclass(frozen=True)
class Usage:
    """What a container uses now, as its engine counts it: CPU time since it started (seconds), and memory
    (bytes, without the page cache the kernel may take back, as `docker stats` shows it)."""

    cpu_seconds: float
    memory: int


@dataclass(frozen=True)
class RuntimeEvent:
    """Something happened to a container this node owns: `action` is Docker's (start, die, oom, destroy)."""

    action: str
    container_id: str
    task_id: str


class Runtime(Protocol):
    def start(self, task: Assignment, node: str, files: Files = (), network: Attachment = None) -> ContainerInfo:
        """Pull the image if missing, create the container with labels and limits (and the task's `files` bound
        read-only), start it; on `network` (the cluster network's name and DNS server) unless its spec says host
        networking."""

    def restart(self, container_id: str) -> ContainerInfo:
        """Start an ended container again (same container, same logs)."""

    def stop(self, container_id: str, timeout: float = 10) -> None: ...
    def remove(self, container_id: str) -> None: ...
    def inspect(self, container_id: str) -> ContainerInfo: ...
    def list_owned(self, node: str) -> list[ContainerInfo]: ...
    def alive(self) -> bool:
        """Whether the engine answers a new connection (not one it keeps while shutting down)."""

    def logs(self, container_id: str, tail: int | None = None, follow: bool = False) -> Iterator[bytes]: ...

    def usage(self, container_ids: Sequence[str], timeout: float = 2.0) -> dict[str, Usage]:
        """Container id -> what it uses now, for the running ones among `container_ids`; those the engine does not
        tell within `timeout` seconds (or at all) are left out."""

    def events(self, node: str, stop: threading.Event) -> Iterator[RuntimeEvent]:
        """Blocks, yielding events of this node's containers until `stop` is set."""

    def volumes(self, node: str) -> list[VolumeInfo]:
        """The named volumes this node's tasks made (label cube.volume), kept whatever happens to the tasks."""

    def remove_volume(self, name: str, node: str) -> None:
        """Remove a named volume Cube made; Conflict while a container uses it; a missing one is already gone."""

    def images(self) -> list[dict]:
        """The engine's tagged images: [{"id", "tags"}] (reported to the manager: who can give which image)."""

    def image(self, ref: str) -> dict | None:
        """{"id", "tags", "size"} of an image by name or id; None when absent."""

    def tag(self, image_id: str, tags) -> None: ...
    def save(self, ref: str) -> Iterator[bytes]:
        """The image as `docker save` writes it, chunk by chunk."""

    def load(self, chunks: Iterator[bytes]) -> list[str]:
        """`docker load` of such a stream; a stream cut short raises and tags nothing."""

    def bridge(self) -> tuple[str, str]:
        """(interface, address) of the engine's default bridge: in this worker's network namespace, or the engine
        lives elsewhere (see cube.worker.network)."""

    def ensure_network(self, name: str, subnet: str, gateway: str, bridge: str) -> None:
        """The bridge network `name` with that subnet (made when missing; made again when it has another subnet and
        no container uses it; RuntimeFailure when containers still use the old one)."""

    def close(self) -> None: ...


class FakeRuntime:
    """Containers as dicts. `fail_images` makes starts of those images fail as a missing image would;
    `fail_next` makes the next N starts fail with RuntimeFailure. `kill(id, code)` ends a container as a crash would,
    and emits a `die` event. `devices`: the device paths the fake node has (a start that passes another in fails as
    Docker's does); `options[container id]`: the hardware, privilege, process and network options it was created
    with, in the words of Docker's inspect (HostConfig and Config), so the contract tests compare the two."""

    def __init__(self):
        self._lock = threading.Lock()
        self.containers: dict[str, ContainerInfo] = {}
        self.logs_by_id: dict[str, list[bytes]] = {}
        self.fail_images: set[str] = set()
        self.unhealthy_images: set[str] = set()  # their health command fails
        self.fail_next = 0
        self.starts = 0
        self._ids = itertools.count(1)
        self._ports = itertools.count(32768)
        self._subscribers: list[queue.Queue] = []
        self.down: str | None = None  # set: the engine does not answer, every call raises Unavailable (why)
        self.stopping = False  # set: shutting down as dockerd 20.10 does (lists still answer, alive not)
        self.mounts: dict[str, tuple] = {}  # container id -> the spec's mounts (cube.core.spec.Mount)
        self.fake_volumes: dict[str, VolumeInfo] = {}  # name -> volume: created by a start, removed only on demand
        self.devices: set[str] = {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"}
        self.options: dict[str, dict] = {}
        # Images made for one platform (image -> "linux/amd64"): a start of one on a node of another (`arch`, as
        # `uname -m` says it) fails as DockerRuntime's does after the pull, at once and with the same words.
        self.image_platforms: dict[str, str] = {}
        self.arch = "x86_64"
        self.fake_images: dict[str, set[str]] = {}  # image id -> tags: what save, load and images see
        self.loads = 0  # how many loads this engine was asked for
        self.networks: dict[str, str] = {}  # name -> subnet (ensure_network)
        self.attached: dict[str, tuple[str, str]] = {}  # container id -> (network, DNS server) it was started with
        self.used: dict[str, Usage] = {}  # container id -> what `usage` says it uses (nothing: 0 s, 0 bytes)

    def alive(self) -> bool:
        return self.down is None and not self.stopping

    def engine_stop(self, exit_code: int = 143, gone: bool = False) -> None:
        """The engine stops as dockerd 20.10 does on `systemctl stop docker`: it refuses new connections, its
        containers end, and the connections it has still answer for a while; `gone`: and then it answers no more."""
        with self._lock:
            for info in self.containers.values():
                if info.running:
                    info.status, info.exit_code, info.finished_at = "exited", exit_code, time.time()
            self.stopping = True
            if gone:
                self.down = "the fake engine is stopped"

    def engine_start(self) -> None:
        with self._lock:
            self.down = None
            self.stopping = False

    def _check(self) -> None:
        if self.down:
            raise Unavailable(f"fake engine: {self.down}")

    def _emit(self, action: str, info: ContainerInfo) -> None:
        # The node is taken now, as Docker's label filter does: a container removed later is still another node's.
        for q in list(self._subscribers):
            q.put((info.node, RuntimeEvent(action, info.id, info.task_id)))

    def start(self, task: Assignment, node: str, files: Files = (), network: Attachment = None) -> ContainerInfo:
        with self._lock:
            self._check()
            if task.spec.image in self.fail_images and self._image_id(task.spec.image) is None:
                raise ImageUnavailable(f"image {task.spec.image!r} is not present and could not be pulled")
            found = self.image_platforms.get(task.spec.image)
            if found is not None and not same_platform(self.arch, found):
                raise ImageUnavailable(no_variant(task.spec.image, self.arch, f"it is {found}", node))
            if self.fail_next:
                self.fail_next -= 1
                raise RuntimeFailure("fake runtime told to fail")
            for mount in task.spec.volumes:
                # As Docker with a Mount: a bind source must exist on the machine (this fake's machine is the one
                # it runs on), a named volume is made on first use.
                if mount.type == "bind" and not os.path.exists(mount.source):
                    raise missing_bind(mount.source, node)
            absent = next((path for path, _ in files if not os.path.exists(path)), None)
            if absent:
                raise RuntimeFailure(f"task {task.id}: its file {absent} is not on node {node}")
            missing = next((d.host for d in task.spec.devices if d.host not in self.devices), None)
            if missing:
                raise missing_device(missing, node)
            for name in task.spec.named_volumes:
                self.fake_volumes.setdefault(name, VolumeInfo(name, node, time.time()))
            self.starts += 1
            cid = f"fake{next(self._ids):08d}"
            self.mounts[cid] = task.spec.volumes
            if task.spec.network == "host":  # the container's ports are the node's
                ports = {p.key: p.container for p in task.spec.ports}
            else:
                ports = {p.key: p.host or next(self._ports) for p in task.spec.ports}  # meshed: the node port
            self.options[cid] = inspected_options(task.spec)
            address = ""
            if network is not None and task.spec.network != "host" and network[0] in self.networks:
                self.attached[cid] = network
                address = self._address(self.networks[network[0]])
            info = ContainerInfo(
                cid,
                task.id,
                node,
                "running",
                started_at=time.time(),
                host_ports=ports,
                image=task.spec.image,
                generation=task.generation,
                health=self._health(task),
                address=address,
            )
            self.containers[cid] = info
            self.logs_by_id[cid] = [f"started {task.spec.image} {' '.join(task.spec.command)}\n".encode()]
        self._emit("start", info)
        return _copy(info)

    def _health(self, task: Assignment) -> str:
        """A health command passes at once, unless the task's image is one of `unhealthy_images`."""
        if task.spec.health is None or not task.spec.health.in_container:
            return ""
        return "unhealthy" if task.spec.image in self.unhealthy_images else "healthy"

    def restart(self, container_id: str) -> ContainerInfo:
        with self._lock:
            self._check()
            info = self._get(container_id)
            info.status, info.exit_code, info.started_at, info.finished_at = "running", None, time.time(), None
            self.starts += 1
        self._emit("start", info)
        return _copy(info)

    def kill(self, container_id: str, exit_code: int = 137) -> None:
        with self._lock:
            info = self._get(container_id)
            info.status, info.exit_code, info.finished_at = "exited", exit_code, time.time()
        self._emit("die", info)

    def stop(self, container_id: str, timeout: float = 10) -> None:
        with self._lock:
            self._check()
            info = self._get(container_id)
            if info.running:
                info.status, info.exit_code, info.finished_at = "exited", 0, time.time()
        self._emit("die", info)

    def remove(self, container_id: str) -> None:
        with self._lock:
            self._check()
            info = self.containers.pop(container_id, None)
            self.mounts.pop(container_id, None)  # its named volumes stay
        if info:
            self._emit("destroy", info)

    def inspect(self, container_id: str) -> ContainerInfo:
        with self._lock:
            self._check()
            return _copy(self._get(container_id))

    def list_owned(self, node: str) -> list[ContainerInfo]:
        with self._lock:
            self._check()
            return [_copy(c) for c in self.containers.values() if c.node == node]

    def logs(self, container_id: str, tail: int | None = None, follow: bool = False) -> Iterator[bytes]:
        with self._lock:
            self._check()
            self._get(container_id)
            lines = list(self.logs_by_id.get(container_id, []))
        return iter(lines[-tail:] if tail else lines)

    def usage(self, container_ids: Sequence[str], timeout: float = 2.0) -> dict[str, Usage]:
        with self._lock:
            if self.down:
                return {}
            return {
                i: self.used.get(i, Usage(0.0, 0))
                for i in container_ids
                if i in self.containers and self.containers[i].running
            }

    def events(self, node: str, stop: threading.Event) -> Iterator[RuntimeEvent]:
        q: queue.Queue = queue.Queue()
        self._subscribers.append(q)
        try:
            while not stop.is_set():
                try:
                    owner, event = q.get(timeout=0.1)
                except queue.Empty:
                    continue
                if owner == node:
                    yield event
        finally:
            self._subscribers.remove(q)

    def volumes(self, node: str) -> list[VolumeInfo]:
        with self._lock:
            self._check()
            return [VolumeInfo(**vars(v)) for v in self.fake_volumes.values() if v.node == node]

    def remove_volume(self, name: str, node: str) -> None:
        with self._lock:
            self._check()
            volume = self.fake_volumes.get(name)
            if volume is None:
                return
            if volume.node != node:
                raise Conflict(f"volume {name} was made by node {volume.node}, not {node}")
            users = [cid for cid, mounts in self.mounts.items() if any(m.source == name for m in mounts)]
            if users:
                raise Conflict(f"volume {name} is in use by container {users[0]}: remove the container first")
            del self.fake_volumes[name]

    # A saved fake image is its id and tags as JSON, padded with `size` bytes: enough for a load to check it whole.

    def _image_id(self, ref: str) -> str | None:
        if ref in self.fake_images:
            return ref
        return next((i for i, tags in self.fake_images.items() if ref in tags), None)

    def images(self) -> list[dict]:
        with self._lock:
            self._check()
            return [{"id": i, "tags": sorted(t)} for i, t in sorted(self.fake_images.items()) if t]

    def image(self, ref: str) -> dict | None:
        with self._lock:
            self._check()
            found = self._image_id(ref)
            return None if found is None else {"id": found, "tags": sorted(self.fake_images[found]), "size": 0}

    def tag(self, image_id: str, tags) -> None:
        with self._lock:
            self._check()
            if image_id not in self.fake_images:
                raise NotFound(f"no image {image_id}")
            self.fake_images[image_id].update(tags)

    def save(self, ref: str, size: int = 1000) -> Iterator[bytes]:
        with self._lock:
            self._check()
            found = self._image_id(ref)
            if found is None:
                raise ImageUnavailable(f"saving image {ref}: no such image")
            head = json.dumps({"id": found, "tags": sorted(self.fake_images[found]), "size": size}).encode()
        return iter([head + b"\n", b"x" * size])

    def load(self, chunks: Iterator[bytes]) -> list[str]:
        data = b"".join(chunks)  # a broken stream raises here, before anything is tagged (as Docker)
        head, _, rest = data.partition(b"\n")
        try:
            meta = json.loads(head)
        except ValueError:
            raise RuntimeFailure("loading an image: not an image archive") from None
        if len(rest) != meta["size"]:
            raise RuntimeFailure("loading an image: unexpected EOF")
        with self._lock:
            self._check()
            self.loads += 1
            self.fake_images.setdefault(meta["id"], set()).update(meta["tags"])
        return list(meta["tags"]) or [meta["id"]]

    def bridge(self) -> tuple[str, str]:
        return "docker0", "172.17.0.1"

    def ensure_network(self, name: str, subnet: str, gateway: str, bridge: str) -> None:
        with self._lock:
            self._check()
            if self.networks.get(name, subnet) != subnet and any(n == name for n, _ in self.attached.values()):
                raise RuntimeFailure(f"network {name} has subnet {self.networks[name]}, and containers use it")
            self.networks[name] = subnet

    def _address(self, subnet: str) -> str:
        """The lowest free address of the subnet after its gateway (as Docker's IPAM gives them). Lock held."""
        taken = {c.address for c in self.containers.values() if c.running}
        hosts = ipaddress.ip_network(subnet).hosts()
        next(hosts)
        return str(next(a for a in hosts if str(a) not in taken))

    def close(self) -> None:
        pass

    def _get(self, container_id: str) -> ContainerInfo:
        info = self.containers.get(container_id)
        if info is None:
            raise NotFound(f"no container {container_id}")
        return info


def inspected_options(spec) -> dict:
    """A spec's hardware, privilege, process and network options as Docker's inspect shows a container made with them
    (the fields of HostConfig and Config, with Docker's values for what was left out)."""
    return {
        "Devices": [
            {"PathOnHost": d.host, "PathInContainer": d.container, "CgroupPermissions": d.permissions}
            for d in spec.devices
        ],
        "Privileged": spec.privileged,
        "CapAdd": list(spec.cap_add),
        "CapDrop": list(spec.cap_drop),
        "Sysctls": dict(spec.sysctls),
        "NetworkMode": spec.network or "default",
        "Init": spec.init,
        "ShmSize": spec.shm_size or 64 << 20,
        "ReadonlyRootfs": spec.read_only,
        "User": spec.user,
        "WorkingDir": spec.workdir,
        "Entrypoint": list(spec.entrypoint),
        "StopSignal": spec.stop_signal,
        "StopTimeout": spec.stop_timeout,
    }


def _copy(info: ContainerInfo) -> ContainerInfo:
    return ContainerInfo(**{**info.__dict__, "host_ports": dict(info.host_ports)})
