"""The `Runtime` on a real Docker engine, and the only module that imports `docker`. It decides how a task
becomes a container (name, labels, limits, ports), how few round trips that takes, and how every failure of the
engine reads to a user: missing containers are `NotFound`, images that cannot be had are `ImageUnavailable`,
an engine that does not answer is `Unavailable`, anything else the engine refuses is `RuntimeFailure`.

Speed: `start` is one create, one start and one inspect (the inspect reads back the host ports Docker chose).
The image is not looked up first: a create answered with "No such image" is what triggers the pull, so a
present image costs nothing extra. `list_owned` is one call to `/containers/json` (the summary list) instead of
the SDK's `containers.list()`, which inspects each container (N+1 calls); the summary has labels, state, ports
and a status text such as "Exited (3) 2 seconds ago", from which the exit code is read. It has no start or
finish times: call `inspect` for those.

Threads: one client (a pooled `requests` session) is shared by all threads; its pool is larger than the
worker's thread pool so concurrent calls never wait for a connection. Streams that may stay quiet for a long
time (followed logs, pulls) go through a second client without a read timeout.
"""

from __future__ import annotations

import calendar
import contextlib
import logging
import math
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from typing import Any

import docker
import docker.errors
import docker.types
import requests.exceptions
import urllib3.exceptions

from cube.core import streams
from cube.core.errors import Conflict, CubeError, ImageUnavailable, NotFound, RuntimeFailure, Unavailable
from cube.core.images import image_platform, no_variant, same_platform
from cube.core.model import Assignment
from cube.worker.pulls import Credentials, PullProgress, refused
from cube.worker.runtime import (
    LABEL_GENERATION,
    LABEL_HOST_PORTS,
    LABEL_INGRESS,
    LABEL_NODE,
    LABEL_TASK,
    LABEL_VOLUME,
    NETWORK,
    Attachment,
    ContainerInfo,
    Files,
    RuntimeEvent,
    Usage,
    VolumeInfo,
    disk_usage,
    ingress_ports,
    missing_bind,
    missing_device,
)

log = logging.getLogger(__name__)
VOLUME_SIZE_EVERY = 300.0  # seconds between two walks of one volume's directory (see volumes)

POOL_SIZE = 16  # > the worker's 4-8 threads plus open event/log streams, so no call waits for a connection
USAGE_THREADS = 4  # stats calls at once for GET /metrics (see usage)
EVENT_ACTIONS = frozenset({"create", "start", "restart", "die", "kill", "oom", "stop", "destroy", "pause", "unpause"})
_EXITED = re.compile(r"^Exited \((-?\d+)\)")
_TIMESTAMP = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$")
_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]+")
# What dockerd 20.10 answers a start whose --device path is missing on the node.
_MISSING_DEVICE = re.compile(r'adding custom device "([^"]+)": no such file or directory')
_STREAM_ERRORS = (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError)


class DockerRuntime:
    def __init__(
        self,
        base_url: str | None = None,
        pull_timeout: float = 300.0,
        api_timeout: float = 30.0,
        stop_timeout: float | None = None,
        stall_timeout: float = 60.0,
        credentials: Credentials | None = None,
    ):
        """`stop_timeout`: the grace every container gets when the engine itself stops it (its StopTimeout): the
        worker's own, so `systemctl stop docker` treats a task as `cube stop` does (Docker's default is 10 s).
        `pull_timeout`: the longest a pull may take; `stall_timeout`: the longest it may go without progress.
        `credentials`: the registry credentials the manager handed over (see cube.worker.pulls)."""
        self.base_url = base_url
        self.stop_timeout = stop_timeout
        self.pull_timeout = pull_timeout
        self.stall_timeout = min(stall_timeout, pull_timeout)
        self.credentials = credentials or Credentials()
        self._arch = ""  # the engine's architecture (uname -m), asked once, when a pulled image is checked
        self.api_timeout = api_timeout
        self._lock = threading.Lock()
        self._sizes: dict[str, tuple[float, int | None]] = {}  # volume -> (monotonic time measured, bytes)
        self._measuring = False
        self._client: Any = None  # connected lazily: a worker may start before its engine answers
        self._stream_client: Any = None
        self._pulls: dict[str, PullProgress] = {}

    # -- connection ----------------------------------------------------------------------------------------

    def _api(self):
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._connect(self.api_timeout, version=None)
        return self._client.api

    def _stream_api(self):
        if self._stream_client is None:
            version = self._api().api_version  # reuse the negotiated version: no second /version call
            with self._lock:
                if self._stream_client is None:
                    self._stream_client = self._connect(None, version=version)
        return self._stream_client.api

    def _connect(self, timeout: float | None, version: str | None):
        with self._translate("connecting to the Docker engine"):
            try:
                if self.base_url:
                    return docker.DockerClient(
                        base_url=self.base_url, timeout=timeout, version=version, max_pool_size=POOL_SIZE
                    )
                return docker.from_env(timeout=timeout, version=version, max_pool_size=POOL_SIZE)
            except docker.errors.DockerException as e:
                # from_env asks the engine for its API version; failing that means it does not answer
                raise Unavailable(f"the Docker engine at {self._where()} does not answer: {e}") from None

    def _where(self) -> str:
        return self.base_url or "DOCKER_HOST or /var/run/docker.sock"

    @contextlib.contextmanager
    def _translate(self, doing: str):
        """Turns the SDK's and the transport's exceptions into Cube's, prefixed with what was being done."""
        try:
            yield
        except CubeError:
            raise
        except docker.errors.ImageNotFound as e:
            raise ImageUnavailable(f"{doing}: {_explain(e)}") from None
        except docker.errors.NotFound as e:
            raise NotFound(f"{doing}: {_explain(e)}") from None
        except docker.errors.APIError as e:
            raise RuntimeFailure(f"{doing}: {_explain(e)}") from None
        except requests.exceptions.Timeout:
            raise Unavailable(
                f"{doing}: the Docker engine at {self._where()} did not answer within {self.api_timeout:g} s"
            ) from None
        except (requests.exceptions.ConnectionError, urllib3.exceptions.HTTPError) as e:
            raise Unavailable(f"{doing}: the Docker engine at {self._where()} does not answer ({e})") from None
        except docker.errors.DockerException as e:
            raise RuntimeFailure(f"{doing}: {e}") from None

    # -- the Runtime protocol ------------------------------------------------------------------------------

    def start(self, task: Assignment, node: str, files: Files = (), network: Attachment = None) -> ContainerInfo:
        """`files`: (file on the node, target) of the task's secrets and configs, bound read-only. `network`: (the
        node's cluster network, its DNS server) for a container not on the host's network."""
        api = self._api()
        spec = task.spec
        name = container_name(task)
        with self._translate(f"starting task {task.id} ({spec.image})"):
            limits: dict[str, Any] = {}
            if spec.cpu > 0:
                limits["nano_cpus"] = int(spec.cpu * 1e9)
            if spec.memory > 0:
                limits["mem_limit"] = spec.memory
            # A stack's secrets and configs: read-only binds of the files the worker wrote (cube.worker.files).
            mounts = _mounts(task, node) + [docker.types.Mount(t, path, "bind", True) for path, t in files]
            if mounts:
                limits["mounts"] = mounts
            # With host networking nothing is published: the container's ports are the node's. On the cluster
            # network an ingress port is the routing mesh's (cube.worker.mesh), published on every node by DNAT.
            meshed = ingress_ports(spec, network)
            bindings = None
            if spec.network != "host":
                bindings = {p.key: p.host for p in spec.ports if p.key not in meshed} or None
            options = host_options(spec)
            if network is not None and spec.network != "host":
                options["network_mode"], options["dns"] = network[0], [network[1]]
            host_config = api.create_host_config(port_bindings=bindings, **limits, **options)
            labels = {
                **dict(spec.labels),
                LABEL_TASK: task.id,
                LABEL_NODE: node,
                LABEL_GENERATION: str(task.generation),
                **({LABEL_HOST_PORTS: ",".join(p.key for p in spec.ports)} if spec.network == "host" else {}),
                **({LABEL_INGRESS: ",".join(f"{k}={v}" for k, v in meshed.items())} if meshed else {}),
            }  # cube's labels last: a spec cannot forge them
            # The task's own stop grace wins over the node's (`cube worker --stop-timeout`).
            grace = self.stop_timeout if spec.stop_timeout is None else spec.stop_timeout

            def create() -> str:
                return api.create_container(
                    spec.image,
                    command=list(spec.command) or None,
                    name=name,
                    environment=dict(spec.env),
                    labels=labels,
                    ports=[(p.container, p.protocol) for p in spec.ports] or None,
                    host_config=host_config,
                    stop_timeout=None if grace is None else max(0, math.ceil(grace)),
                    healthcheck=_healthcheck(spec),
                    **container_options(spec),
                )["Id"]

            container_id = self._create(create, task, name, node, _bind_sources(task))
            try:
                api.start(container_id)
            except docker.errors.APIError as e:
                # A container that never ran (port taken, command not found) is removed, so a retry starts clean
                # and nothing is left behind for the reconciler to puzzle over.
                self.remove(container_id)
                device = _MISSING_DEVICE.search(_explain(e))
                if device:
                    raise missing_device(device.group(1), node) from None
                hint = ""
                if spec.privileged and "unable to apply caps" in _explain(e):
                    # runc gives a privileged container every capability the kernel knows; seen where dockerd
                    # itself runs with fewer (inside a container, a sandbox).
                    hint = " (a privileged container needs every capability, and this node's engine has fewer)"
                raise RuntimeFailure(f"task {task.id} ({spec.image}) could not start: {_explain(e)}{hint}") from None
            return _from_inspect(api.inspect_container(container_id))

    def _create(
        self, create: Callable[[], str], task: Assignment, name: str, node: str, binds: tuple[str, ...] = ()
    ) -> str:
        """Creates, pulling the image on "No such image" and clearing a leftover container of the same task
        (a crashed earlier attempt) on a name conflict; each repair is tried once. A bind source the node lacks is
        the engine's 400 ("bind source path does not exist: /srv/media"), told with the path and what to do."""
        pulled = cleared = False
        while True:
            try:
                return create()
            except docker.errors.ImageNotFound:
                if pulled:
                    raise
                self._pull(task.spec.image, node)
                pulled = True
            except docker.errors.APIError as e:
                missing = next((b for b in binds if "does not exist" in _explain(e) and b in _explain(e)), None)
                if missing is not None:
                    raise missing_bind(missing, node) from None
                if e.status_code != 409 or cleared:
                    raise
                self._clear_name(name, task.id, node)
                cleared = True

    def _clear_name(self, name: str, task_id: str, node: str) -> None:
        api = self._api()
        try:
            existing = api.inspect_container(name)
        except docker.errors.NotFound:
            return  # removed meanwhile
        labels = (existing.get("Config") or {}).get("Labels") or {}
        if labels.get(LABEL_TASK) != task_id or labels.get(LABEL_NODE) != node:
            raise RuntimeFailure(
                f"a container named {name} already exists and does not belong to task "
                f"{task_id} on node {node}; remove it (docker rm -f {name}) or rename the task"
            )
        log.info("removing leftover container %s of task %s before starting it again", name, task_id)
        self.remove(existing["Id"])

    def _pull(self, image: str, node: str) -> None:
        """Pulls `image`, waiting at most `pull_timeout`, and at most `stall_timeout` without progress; then checks
        that the image is for this engine's platform. Concurrent starts of one image share one pull; a pull given
        up is cancelled (its stream closed: the engine stops it)."""
        with self._lock:
            pull = self._pulls.get(image)
            if pull is None:
                pull = self._pulls[image] = PullProgress(image, node)
                threading.Thread(target=self._run_pull, args=(pull,), name=f"pull {image}", daemon=True).start()
        while not pull.done.wait(0.5):
            overdue = pull.overdue(self.pull_timeout, self.stall_timeout, node)
            if overdue:
                pull.error = pull.error or overdue
                with self._lock:
                    if self._pulls.get(image) is pull:
                        del self._pulls[image]  # the next start pulls afresh
                if pull.cancel is not None:
                    pull.cancel()
                raise ImageUnavailable(overdue)
        if pull.error:
            raise ImageUnavailable(f"image {image!r} is not present locally and could not be pulled: {pull.error}")
        self._check_platform(image, node)

    def pull_progress(self, image: str) -> PullProgress | None:
        """The pull of `image` under way, or None (the worker reports its progress)."""
        with self._lock:
            return self._pulls.get(image)

    def _run_pull(self, pull: PullProgress) -> None:
        auth = self.credentials.for_image(pull.image)
        try:
            log.info("pulling image %s%s", pull.image, " with credentials" if auth else "")
            # Errors may come as the HTTP status (registry unreachable) or inside the progress stream.
            stream = self._stream_api().pull(pull.image, stream=True, decode=True, auth_config=auth)
            pull.cancel = _canceller(stream)
            for message in stream:
                if isinstance(message, dict):
                    pull.update(message)
        except docker.errors.APIError as e:
            pull.error = _explain(e)
        except CubeError as e:
            pull.error = e.message
        except (*_STREAM_ERRORS, docker.errors.DockerException, ValueError, AttributeError) as e:
            # ValueError, AttributeError: what a read of a response whose socket `cancel` shut down may raise.
            pull.error = pull.error or f"the pull was interrupted ({e})"
        finally:
            if pull.error:
                mismatch = self._no_variant(pull.image, pull.error, pull.node)
                pull.error = mismatch or refused(pull.image, pull.error, auth)
            with self._lock:
                if self._pulls.get(pull.image) is pull:
                    self._pulls.pop(pull.image, None)
            pull.done.set()

    def _engine_arch(self) -> str:
        if not self._arch:
            with self._translate("asking the Docker engine its architecture"):
                self._arch = str(self._api().info().get("Architecture") or "")
        return self._arch

    def _no_variant(self, image: str, error: str, node: str) -> str | None:
        """A pull refused because the image's manifest list has nothing for this platform, in Cube's words."""
        # A manifest list without this platform; a single-platform image when the engine checks it (newer ones).
        if "no matching manifest" not in error and "does not match the specified platform" not in error:
            return None
        with contextlib.suppress(CubeError):
            return no_variant(image, self._engine_arch(), "its manifest list has other platforms only", node)
        return None

    def _check_platform(self, image: str, node: str) -> None:
        """An image pulled whole but made for another platform (a single-platform manifest: the engine pulls it and
        only its start would fail, with "exec format error", after every restart) is refused at once, and removed
        so that it is not run by a later start either."""
        api = self._api()
        with self._translate(f"inspecting image {image}"):
            data = api.inspect_image(image)
        found = image_platform(data.get("Os", ""), data.get("Architecture", ""), data.get("Variant", ""))
        arch = self._engine_arch()
        if arch and not same_platform(arch, found):
            with contextlib.suppress(docker.errors.DockerException):
                api.remove_image(image)
            raise ImageUnavailable(no_variant(image, arch, f"it is {found}", node))

    def restart(self, container_id: str) -> ContainerInfo:
        api = self._api()
        with self._translate(f"restarting container {container_id}"):
            api.start(container_id)
            return _from_inspect(api.inspect_container(container_id))

    def stop(self, container_id: str, timeout: float = 10) -> None:
        api = self._api()
        with self._translate(f"stopping container {container_id}"):
            # Docker's grace period is whole seconds; round up so the container gets at least what was asked.
            # Stopping a stopped container is answered 304, which the SDK treats as success.
            api.stop(container_id, timeout=max(0, math.ceil(timeout)))

    def remove(self, container_id: str) -> None:
        api = self._api()
        with self._translate(f"removing container {container_id}"):
            try:
                # v=True removes the container's anonymous volumes (an image's VOLUME it was not given a mount
                # for), never a named one: a task's named volumes outlive its containers (tests/test_volumes_docker).
                api.remove_container(container_id, force=True, v=True)
            except docker.errors.NotFound:
                pass  # already gone: removal is idempotent
            except docker.errors.APIError as e:
                if not (e.status_code == 409 and "already in progress" in _explain(e)):
                    raise

    def inspect(self, container_id: str) -> ContainerInfo:
        api = self._api()
        with self._translate(f"inspecting container {container_id}"):
            return _from_inspect(api.inspect_container(container_id))

    def list_owned(self, node: str) -> list[ContainerInfo]:
        api = self._api()
        with self._translate(f"listing the containers of node {node}"):
            summaries = api.containers(all=True, filters={"label": f"{LABEL_NODE}={node}"})
        return [_from_summary(s) for s in summaries]

    def logs(self, container_id: str, tail: int | None = None, follow: bool = False) -> Iterator[bytes]:
        # A followed log may be silent for longer than the API timeout: it reads through the no-timeout client.
        api = self._stream_api() if follow else self._api()
        with self._translate(f"reading the logs of container {container_id}"):
            stream = api.logs(
                container_id, stdout=True, stderr=True, stream=True, follow=follow, timestamps=False, tail=tail or "all"
            )  # as FakeRuntime: no tail (or 0) is all
        return self._guarded(stream, f"reading the logs of container {container_id}")

    def usage(self, container_ids: Sequence[str], timeout: float = 2.0) -> dict[str, Usage]:
        """One `stats` call per container, USAGE_THREADS at a time (with the worker's own calls, within the client's
        connection pool), all within `timeout`. One-shot (API 1.41+): the engine answers from its last reading
        instead of sampling for a second and more, which only a CPU percentage needs; CPU time is a counter."""
        if not container_ids:
            return {}
        try:
            api = self._api()
        except Unavailable:
            return {}
        one_shot = None if docker.utils.version_lt(api.api_version, "1.41") else True
        pool = ThreadPoolExecutor(max_workers=min(USAGE_THREADS, len(container_ids)), thread_name_prefix="cube-usage")
        asked = {pool.submit(api.stats, i, stream=False, one_shot=one_shot): i for i in container_ids}
        done, _ = wait_all(asked, timeout=timeout)
        pool.shutdown(wait=False, cancel_futures=True)  # the late ones end by themselves (api_timeout at most)
        found = {}
        for future in done:
            try:
                used = _usage(future.result())
            except (docker.errors.DockerException, *_STREAM_ERRORS):
                continue
            if used is not None:
                found[asked[future]] = used
        return found

    def _guarded(self, stream, doing: str) -> Iterator[bytes]:
        with self._translate(doing):
            yield from stream

    def events(self, node: str, stop: threading.Event) -> Iterator[RuntimeEvent]:
        """Follows Docker's event stream for this node's containers. A watcher thread closes the stream as soon
        as `stop` is set, so the generator ends within ~0.1 s even when no event comes. When the engine goes
        away the stream is reopened with backoff, from the time of the last event seen (events in Docker's
        buffer since then are replayed; the one already yielded is skipped)."""
        filters = {"type": "container", "label": [f"{LABEL_NODE}={node}"]}
        last_nano, last_keys = 0, set[tuple]()
        backoff = 0.25
        while not stop.is_set():
            try:
                since = f"{last_nano // 10**9}.{last_nano % 10**9:09d}" if last_nano else None
                with self._translate("following Docker events"):
                    stream = self._stream_api().events(since=since, filters=filters, decode=True)
            except (Unavailable, RuntimeFailure) as e:
                log.warning("%s; retrying in %.1f s", e.message, backoff)
                if stop.wait(backoff):
                    return
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.25
            watcher = _StreamCloser(stream, stop)
            try:
                for raw in stream:
                    nano = int(raw.get("timeNano") or 0)
                    key = (raw.get("id"), raw.get("Action"))
                    if nano < last_nano or (nano == last_nano and key in last_keys):
                        continue  # replayed after a reconnect
                    last_keys = last_keys | {key} if nano == last_nano else {key}
                    last_nano = nano
                    event = _event(raw)
                    if event:
                        yield event
                    if stop.is_set():
                        return
            except _STREAM_ERRORS as e:
                log.warning("Docker event stream broke (%s); reconnecting", e)
            finally:
                watcher.finish()
            if stop.wait(backoff):
                return

    def volumes(self, node: str) -> list[VolumeInfo]:
        """The named volumes this node made (labels cube.volume and cube.node): one call to /volumes, each with the
        size last measured. Docker counts sizes only in `system df -v`, which walks every volume of the engine and
        took seconds; so each volume's own directory is walked here instead, on a thread of its own, at most every
        VOLUME_SIZE_EVERY seconds (an SD card must not be read through twice a minute); None until measured."""
        api = self._api()
        with self._translate(f"listing the volumes of node {node}"):
            answer = api.volumes(filters={"label": [LABEL_VOLUME, f"{LABEL_NODE}={node}"]}) or {}
        found = [v for v in answer.get("Volumes") or () if (v.get("Labels") or {}).get(LABEL_VOLUME)]
        self._measure([(v["Name"], v.get("Mountpoint") or "") for v in found])
        return [
            VolumeInfo(v["Name"], node, parse_time(v.get("CreatedAt")), self._sizes.get(v["Name"], (0.0, None))[1])
            for v in found
        ]

    def _measure(self, volumes: list[tuple[str, str]]) -> None:
        """Walk, in the background, the directories of the volumes whose size is older than VOLUME_SIZE_EVERY."""
        now = time.monotonic()
        with self._lock:
            due = [
                (name, path)
                for name, path in volumes
                if path and now - self._sizes.get(name, (float("-inf"), None))[0] >= VOLUME_SIZE_EVERY
            ]
            if not due or self._measuring:
                return
            self._measuring = True

        def measure() -> None:
            try:
                for name, path in due:
                    size = disk_usage(path)
                    with self._lock:
                        self._sizes[name] = (time.monotonic(), size)
            finally:
                with self._lock:
                    self._measuring = False

        threading.Thread(target=measure, name="cube-volume-sizes", daemon=True).start()

    def remove_volume(self, name: str, node: str) -> None:
        api = self._api()
        with self._translate(f"removing volume {name}"):
            try:
                labels = api.inspect_volume(name).get("Labels") or {}
            except docker.errors.NotFound:
                return  # already gone
            if labels.get(LABEL_VOLUME) != name or labels.get(LABEL_NODE) != node:
                raise Conflict(
                    f"volume {name} on node {node} was not made by Cube for this node: remove it there yourself "
                    f"(docker volume rm {name}) if you mean it"
                )
            try:
                api.remove_volume(name)
            except docker.errors.NotFound:
                return
            except docker.errors.APIError as e:
                if e.status_code == 409:
                    raise Conflict(f"volume {name} is in use on node {node}: {_explain(e)}") from None
                raise

    # -- images (cube image push, peer fetch: cube.worker.images) ---------------------------------------------

    def images(self) -> list[dict]:
        """The engine's tagged images: [{"id", "tags"}], one call to /images/json."""
        api = self._api()
        with self._translate("listing images"):
            summaries = api.images()
        found = []
        for image in summaries:
            tags = sorted(t for t in image.get("RepoTags") or () if t and t != "<none>:<none>")
            if tags:
                found.append({"id": image["Id"], "tags": tags})
        return found

    def image(self, ref: str) -> dict | None:
        """{"id", "tags", "size"} of an image by name or id, None when the engine has none such."""
        api = self._api()
        with self._translate(f"inspecting image {ref}"):
            try:
                data = api.inspect_image(ref)
            except docker.errors.NotFound:
                return None
        tags = sorted(t for t in data.get("RepoTags") or () if t != "<none>:<none>")
        return {"id": data["Id"], "tags": tags, "size": int(data.get("Size") or 0)}

    def tag(self, image_id: str, tags) -> None:
        api = self._api()
        for tag in tags:
            repository, _, version = tag.rpartition(":") if ":" in tag.split("/")[-1] else (tag, "", "latest")
            with self._translate(f"tagging image {image_id[:19]} as {tag}"):
                api.tag(image_id, repository, version or "latest")

    def save(self, ref: str) -> Iterator[bytes]:
        """`docker save` as a stream of whole chunks of streams.CHUNK bytes, through the client without a read
        timeout: the engine writes the whole image to a directory of its own before the first byte (0.55 s for
        107 MB here). So the request goes out when the first chunk is asked for: a push sends its own request
        first, and the manager's connections to the nodes and their `docker load`s are set up meanwhile."""
        with self._translate(f"saving image {ref}"):
            yield from streams.whole(self._stream_api().get_image(ref, chunk_size=streams.CHUNK))

    def load(self, chunks: Iterator[bytes]) -> list[str]:
        """`docker load` of a tar stream; the names (or ids) it loaded. The engine tags an image only once all its
        layers and its config are in: a stream cut short is an error and leaves no tag behind."""
        api = self._stream_api()
        loaded: list[str] = []
        with self._translate("loading an image"):
            for message in api.load_image(chunks):
                if isinstance(message, dict) and message.get("error"):
                    raise RuntimeFailure(f"loading an image: {message['error']}")
                line = str(message.get("stream") or "") if isinstance(message, dict) else ""
                for prefix in ("Loaded image: ", "Loaded image ID: "):
                    if line.startswith(prefix):
                        loaded.append(line[len(prefix) :].strip())
        return loaded

    # -- the cluster network (cube.worker.network) ---------------------------------------------------------------

    def bridge(self) -> tuple[str, str]:
        """(interface, gateway) of the engine's default bridge network."""
        api = self._api()
        with self._translate("inspecting the engine's bridge network"):
            data = api.inspect_network("bridge")
        interface = (data.get("Options") or {}).get("com.docker.network.bridge.name", "docker0")
        config = ((data.get("IPAM") or {}).get("Config") or [{}])[0]
        return interface, str(config.get("Gateway") or "")

    def ensure_network(self, name: str, subnet: str, gateway: str, bridge: str) -> None:
        """The bridge network `name` on `subnet`, its bridge interface named `bridge`, without Docker's masquerading
        (the worker's rules masquerade only what leaves the cluster range). One inspect when it is already right."""
        api = self._api()
        with self._translate(f"inspecting network {name}"):
            try:
                data = api.inspect_network(name)
            except docker.errors.NotFound:
                data = None
        if data is not None:
            config = ((data.get("IPAM") or {}).get("Config") or [{}])[0]
            if config.get("Subnet") == subnet:
                return
            users = sorted((data.get("Containers") or {}).values(), key=lambda c: c.get("Name", ""))
            if users:
                raise RuntimeFailure(
                    f"network {name} has subnet {config.get('Subnet')}, this node's is now {subnet}, and "
                    f"{len(users)} container(s) still use it ({users[0].get('Name')}...): they move when restarted"
                )
            with self._translate(f"removing network {name} (subnet {config.get('Subnet')}, now {subnet})"):
                api.remove_network(data["Id"])
        pool = docker.types.IPAMPool(subnet=subnet, gateway=gateway)
        with self._translate(f"creating network {name} ({subnet})"):
            api.create_network(
                name,
                driver="bridge",
                ipam=docker.types.IPAMConfig(pool_configs=[pool]),
                options={
                    "com.docker.network.bridge.name": bridge,
                    "com.docker.network.bridge.enable_ip_masquerade": "false",
                },
                labels={"cube.network": name},
            )
        log.info("created network %s (%s, bridge %s)", name, subnet, bridge)

    def alive(self) -> bool:
        """Whether the engine accepts a new connection. When dockerd is stopped it closes its listener first and
        then stops the containers, while the connections it already has go on being served (Docker 20.10): the
        worker's kept-alive client sees the containers die before the engine seems gone; a fresh connection
        tells the truth."""
        try:
            version = self._api().api_version
            probe = self._connect(3.0, version=version)
        except CubeError:
            return False
        try:
            return bool(probe.api.ping())
        except (docker.errors.DockerException, *_STREAM_ERRORS):
            return False
        finally:
            probe.close()

    def close(self) -> None:
        with self._lock:
            for client in (self._client, self._stream_client):
                if client is not None:
                    client.close()
            self._client = self._stream_client = None


def _canceller(stream) -> Callable[[], None]:
    """What ends a pull from the thread that gives it up: its socket shut down, so that the read blocked on a quiet
    registry returns at once and the engine sees its client go (it then cancels the pull). Not a close: closing the
    response waits for the lock the blocked read holds (seen: until the registry answered again, a minute later),
    and closing the generator fails while it executes. The SDK's pull stream is a generator over the HTTP response,
    which is found in its frame; its socket is the one `APIClient._get_raw_response_socket` reads."""

    def cancel() -> None:
        frame = getattr(stream, "gi_frame", None)
        response = frame.f_locals.get("response") if frame is not None else None
        with contextlib.suppress(Exception):  # the pull ended meanwhile: nothing to cancel
            raw = response.raw._fp.fp.raw  # type: ignore[union-attr]
            getattr(raw, "_sock", raw).shutdown(socket.SHUT_RDWR)

    return cancel


class _StreamCloser:
    """Closes a blocking Docker stream from another thread once `stop` is set (a read blocked on a quiet stream
    can be ended no other way); polls so that it also ends when the stream ends first."""

    def __init__(self, stream, stop: threading.Event):
        self._stream, self._stop, self._finished = stream, stop, threading.Event()
        threading.Thread(target=self._watch, name="docker-events-closer", daemon=True).start()

    def _watch(self) -> None:
        while not self._finished.is_set():
            if self._stop.wait(0.1):
                self._close()
                return

    def finish(self) -> None:
        """Called by the reading thread when it is done: also releases the socket, which `close` only shuts."""
        self._finished.set()
        self._close()
        response = getattr(self._stream, "_response", None)
        if response is not None:
            with contextlib.suppress(Exception):
                response.close()

    def _close(self) -> None:
        with contextlib.suppress(Exception):  # already closed or shut down by the other side
            self._stream.close()


def container_name(task: Assignment) -> str:
    """`cube-<name>-<task id>.<generation>`: readable in `docker ps`, unique per placement. A task moved to another
    node gets a new generation, so its new container never fights over a name with the stale copy (which matters
    when two nodes share one engine, and keeps `docker ps` on a shared host unambiguous)."""
    task_id = _NAME_UNSAFE.sub("-", task.id)
    name = _NAME_UNSAFE.sub("-", task.spec.name)[:40].strip("-.")
    base = f"cube-{name}-{task_id}" if name and name != task.id else f"cube-{task_id}"
    return f"{base}.{task.generation}" if task.generation else base


def _mounts(task: Assignment, node: str) -> list:
    """The spec's mounts as Docker's: a named volume made on first use carries the labels that list it (an existing
    one is used as it is); a bind is a Mount, not a `binds` entry, so a missing source is an error, never a
    directory the engine makes, owned by root."""
    mounts = []
    for m in task.spec.volumes:
        if m.type == "volume":
            labels = {LABEL_VOLUME: m.source, LABEL_NODE: node}
            mounts.append(docker.types.Mount(m.target, m.source, "volume", m.read_only, labels=labels))
        elif m.type == "bind":
            mounts.append(docker.types.Mount(m.target, m.source, "bind", m.read_only))
        else:
            mounts.append(docker.types.Mount(m.target, None, "tmpfs", tmpfs_size=m.size or None))
    return mounts


def _bind_sources(task: Assignment) -> tuple[str, ...]:
    return tuple(m.source for m in task.spec.volumes if m.type == "bind")


def host_options(spec) -> dict:
    """The spec's hardware, privilege and process options that go in the container's HostConfig, as the SDK's
    `create_host_config` takes them (only those set: the rest stay Docker's defaults)."""
    options: dict[str, Any] = {}
    if spec.devices:
        options["devices"] = [str(device) for device in spec.devices]  # HOST:CONTAINER:PERMISSIONS
    if spec.privileged:
        options["privileged"] = True
    if spec.cap_add:
        options["cap_add"] = list(spec.cap_add)
    if spec.cap_drop:
        options["cap_drop"] = list(spec.cap_drop)
    if spec.sysctls:
        options["sysctls"] = dict(spec.sysctls)
    if spec.network:
        options["network_mode"] = spec.network
    if spec.init:
        options["init"] = True
    if spec.shm_size:
        options["shm_size"] = spec.shm_size
    if spec.read_only:
        options["read_only"] = True
    return options


def container_options(spec) -> dict:
    """The spec's process options that go in the container's Config, as the SDK's `create_container` takes them."""
    options: dict[str, Any] = {}
    if spec.hostname:
        options["hostname"] = spec.hostname
    if spec.user:
        options["user"] = spec.user
    if spec.workdir:
        options["working_dir"] = spec.workdir
    if spec.entrypoint:
        options["entrypoint"] = list(spec.entrypoint)
    if spec.stop_signal:
        options["stop_signal"] = spec.stop_signal
    return options


def _usage(raw: dict) -> Usage | None:
    """A container's stats as `Usage`; None for one that is not running (the engine answers zeros)."""
    memory = raw.get("memory_stats") or {}
    if "usage" not in memory:
        return None
    stats = memory.get("stats") or {}
    # cgroup v2 names the reclaimable page cache inactive_file, v1 total_inactive_file: docker stats leaves it out.
    cache = stats.get("inactive_file", stats.get("total_inactive_file", 0))
    cpu = ((raw.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage", 0)
    return Usage(cpu_seconds=cpu / 1e9, memory=max(0, int(memory["usage"]) - int(cache)))


def _explain(error: docker.errors.APIError) -> str:
    return str(error.explanation or error).strip()


def _event(raw: dict) -> RuntimeEvent | None:
    action = str(raw.get("Action") or raw.get("status") or "").split(":")[0]
    if raw.get("Type", "container") != "container" or action not in EVENT_ACTIONS:
        return None
    actor = raw.get("Actor") or {}
    attributes = actor.get("Attributes") or {}
    return RuntimeEvent(action, actor.get("ID") or raw.get("id", ""), attributes.get(LABEL_TASK, ""))


def parse_time(value: str | None) -> float | None:
    """Docker's RFC 3339 timestamps with nanoseconds → epoch seconds; the zero time (year 1) → None."""
    match = _TIMESTAMP.match(value or "")
    if not match or match.group(1) == "0001":
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    epoch = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    fraction = float(f"0.{match.group(7)}") if match.group(7) else 0.0
    zone = match.group(8) or "Z"
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        epoch -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return epoch + fraction


def _generation(labels: dict) -> int:
    try:
        return int(labels.get(LABEL_GENERATION) or 0)
    except ValueError:
        return 0


def _host_network_ports(labels: dict) -> dict:
    """ "80/tcp,53/udp" (the label a host-network container carries) → {"80/tcp": 80, "53/udp": 53}."""
    ports = {}
    for key in labels.get(LABEL_HOST_PORTS, "").split(","):
        number = key.split("/", 1)[0]
        if number.isdigit():
            ports[key] = int(number)
    return ports


def _address(settings: dict | None) -> str:
    """The container's address on the cluster network (inspect and the summary list both have it here)."""
    network = ((settings or {}).get("Networks") or {}).get(NETWORK) or {}
    return str(network.get("IPAddress") or "")


def _ingress_ports(labels: dict) -> dict:
    """ "80/tcp=8080" (the label of a container whose port is the routing mesh's) → {"80/tcp": 8080}."""
    ports = {}
    for item in labels.get(LABEL_INGRESS, "").split(","):
        key, _, number = item.partition("=")
        if number.isdigit():
            ports[key] = int(number)
    return ports


def _from_inspect(data: dict) -> ContainerInfo:
    state = data.get("State") or {}
    config = data.get("Config") or {}
    labels = config.get("Labels") or {}
    status = state.get("Status", "")
    ports = {}
    for key, bindings in ((data.get("NetworkSettings") or {}).get("Ports") or {}).items():
        host = next((b["HostPort"] for b in bindings or () if b.get("HostPort")), None)
        if host:
            ports[key] = int(host)
    if labels.get(LABEL_HOST_PORTS):  # host networking: each container port is the node's
        ports = _host_network_ports(labels)
    ports.update(_ingress_ports(labels))
    if not ports:  # a stopped container has no live bindings; fixed host ports are still known
        for key, bindings in ((data.get("HostConfig") or {}).get("PortBindings") or {}).items():
            host = next((b["HostPort"] for b in bindings or () if b.get("HostPort")), None)
            if host:
                ports[key] = int(host)
    return ContainerInfo(
        id=data["Id"],
        task_id=labels.get(LABEL_TASK, ""),
        node=labels.get(LABEL_NODE, ""),
        status=status,
        exit_code=state.get("ExitCode") if status in ("exited", "dead") else None,
        started_at=parse_time(state.get("StartedAt")),
        finished_at=parse_time(state.get("FinishedAt")),
        host_ports=ports,
        image=config.get("Image") or data.get("Image", ""),
        error=state.get("Error") or "",
        oom_killed=bool(state.get("OOMKilled")),
        generation=_generation(labels),
        health=(state.get("Health") or {}).get("Status", "") if status == "running" else "",
        address=_address(data.get("NetworkSettings")),
    )


def _from_summary(data: dict) -> ContainerInfo:
    """From `/containers/json`: no times, no OOM flag; the exit code comes from the status text."""
    labels = data.get("Labels") or {}
    status = data.get("State", "")
    match = _EXITED.match(data.get("Status") or "")
    ports = {
        f"{p['PrivatePort']}/{p.get('Type', 'tcp')}": int(p["PublicPort"])
        for p in data.get("Ports") or ()
        if p.get("PublicPort")
    }
    if labels.get(LABEL_HOST_PORTS):
        ports = _host_network_ports(labels)
    ports.update(_ingress_ports(labels))
    return ContainerInfo(
        id=data["Id"],
        task_id=labels.get(LABEL_TASK, ""),
        node=labels.get(LABEL_NODE, ""),
        status=status,
        exit_code=int(match.group(1)) if match else None,
        host_ports=ports,
        image=data.get("Image", ""),
        generation=_generation(labels),
        health=_summary_health(data.get("Status") or "") if status == "running" else "",
        address=_address(data.get("NetworkSettings")),
    )


_SUMMARY_HEALTH = re.compile(r"\((healthy|unhealthy|health: starting)\)\s*$")


def _summary_health(status: str) -> str:
    """The health in a container list's status text: "Up 5 seconds (health: starting)" → starting."""
    match = _SUMMARY_HEALTH.search(status)
    return "" if match is None else match.group(1).replace("health: ", "")


def _healthcheck(spec) -> dict | None:
    """The engine's HEALTHCHECK for a health command (times in nanoseconds); None for none or an HTTP check,
    which the manager probes."""
    health = spec.health
    if health is None or not health.in_container:
        return None
    return {
        "test": list(health.command),
        "interval": int(health.interval * 1e9),
        "timeout": int(health.timeout * 1e9),
        "retries": health.retries,
        "start_period": int(health.start_period * 1e9),
    }


def engine_info(base_url: str | None = None, timeout: float = 5.0) -> dict:
    """What `cube doctor` reports about the engine (one /version and one /info call); Unavailable if it does not
    answer. `memory_limit` False means the kernel's memory cgroup is off, so task memory limits cannot hold."""
    runtime = DockerRuntime(base_url, api_timeout=timeout)
    try:
        api = runtime._api()
        with runtime._translate("asking the Docker engine about itself"):
            version, info = api.version(), api.info()
    finally:
        runtime.close()
    return {
        "version": version.get("Version"),
        "api_version": version.get("ApiVersion"),
        "os": info.get("OperatingSystem"),
        "arch": info.get("Architecture"),
        "cgroup_version": info.get("CgroupVersion"),
        "cgroup_driver": info.get("CgroupDriver"),
        "memory_limit": info.get("MemoryLimit"),
        "root_dir": info.get("DockerRootDir"),
        "warnings": list(info.get("Warnings") or []),
    }
