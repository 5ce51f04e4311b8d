"""The baselines on the Docker engine itself (the only bench module that imports `docker`): raw containers through
the SDK's low-level API — the same calls Cube's DockerRuntime makes (create, start, inspect) — the engine's event
stream as a stopwatch that needs no polling, removal by label, and Docker Swarm on this one engine.

Swarm is always left on the way out (`docker swarm leave --force`), also on failure, and only if this run joined it:
an engine that was already part of a swarm is not touched (the Swarm figures are then skipped with that reason).
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import threading
import time

import docker

from .common import IMAGE

_client = None


def api():
    """One low-level client for the run (a pooled HTTP session, as Cube's runtime uses)."""
    global _client
    if _client is None:
        _client = docker.from_env(timeout=60, max_pool_size=16)
    return _client.api


def image_id(image: str = IMAGE) -> str:
    return api().inspect_image(image)["Id"]


def run_raw(label: str, command=("sleep", "300")) -> str:
    """create + start + inspect until running: what `docker run -d` does, and what Cube's runtime does per task."""
    client = api()
    container = client.create_container(IMAGE, command=list(command), labels={"cube.bench": label})["Id"]
    client.start(container)
    while True:
        state = client.inspect_container(container)["State"]
        if state["Running"] or state["Status"] == "exited":  # a probe's `true` may already be done
            return container
        time.sleep(0.005)


def kill(container_id: str) -> None:
    api().kill(container_id)


def running_ids(*filters: str) -> list[str]:
    wanted = {"status": "running", "label": []}
    for f in filters:
        key, value = f.split("=", 1)
        if key == "label":
            wanted["label"].append(value)
        else:
            wanted[key] = value
    return [c["Id"] for c in api().containers(filters=wanted)]


def count_running(label: str) -> int:
    return len(api().containers(filters={"status": "running", "label": label}))


def remove_labelled(*labels: str) -> int:
    """Force-remove every container (running or not) carrying one of `labels` (key=value); returns how many."""
    client = api()
    ids = set()
    for label in labels:
        ids |= {c["Id"] for c in client.containers(all=True, filters={"label": label})}
    if not ids:
        return 0
    # `docker rm -f` of many ids in one call: the engine removes them in parallel better than one SDK call each.
    for start in range(0, len(ids), 50):
        chunk = sorted(ids)[start : start + 50]
        subprocess.run(["docker", "rm", "-f", "-v", *chunk], capture_output=True, timeout=600)
    return len(ids)


class EventClock:
    """The engine's event stream read on a thread: `wait(predicate)` returns the local monotonic time at which the
    first matching event arrived after `since`. Events carry the container id and its labels (`Actor.Attributes`)."""

    def __init__(self, actions=("start", "die")):
        self._queue: queue.Queue = queue.Queue()
        self._seen: list[tuple[float, dict]] = []
        self._stream = api().events(decode=True, filters={"type": "container", "event": list(actions)})
        self._thread = threading.Thread(target=self._read, daemon=True, name="bench-events")
        self._thread.start()

    def _read(self) -> None:
        try:
            for event in self._stream:
                self._queue.put((time.monotonic(), event))
        except Exception:  # closed
            pass

    def wait(self, predicate, since: float, timeout: float = 60.0) -> float:
        deadline = time.monotonic() + timeout
        for at, event in self._seen:
            if at >= since and predicate(event):
                return at
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no matching engine event")
            try:
                at, event = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            self._seen.append((at, event))
            if at >= since and predicate(event):
                return at

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._stream.close()


def started(container_id: str | None = None, label: str | None = None):
    """A predicate for EventClock: a `start` event of that container, or of any container with `label` (k=v)."""

    def match(event: dict) -> bool:
        if event.get("Action") != "start" and event.get("status") != "start":
            return False
        if container_id is not None and event.get("id") != container_id:
            return False
        if label is not None:
            key, value = label.split("=", 1)
            if event.get("Actor", {}).get("Attributes", {}).get(key) != value:
                return False
        return True

    return match


# ---- Swarm ------------------------------------------------------------------------------------------------------


def swarm_state() -> str:
    return api().info().get("Swarm", {}).get("LocalNodeState", "")


PRIVATE_SOCKET = "unix:///var/run/cube-bench-docker.sock"  # bench/engine.sh's engine


@contextlib.contextmanager
def swarm():
    """Yields None when this run made the engine a one-node swarm (left afterwards, whatever happens), or the reason
    Swarm cannot be used here. Only on the private engine (bench/engine.sh) or when CUBE_BENCH_SWARM=1 says the
    engine may be put at risk: leaving a swarm can deadlock a Docker 20.10 engine for everyone using it."""
    if os.environ.get("DOCKER_HOST") != PRIVATE_SOCKET and os.environ.get("CUBE_BENCH_SWARM") != "1":
        yield (
            "skipped on a shared engine (leaving a swarm can deadlock Docker 20.10's network controller): run on "
            "the private engine, `eval $(bench/engine.sh start)`, or set CUBE_BENCH_SWARM=1"
        )
        return
    state = swarm_state()
    if state == "active":
        yield "the engine is already part of a swarm that this benchmark did not create; not touching it"
        return
    init = subprocess.run(
        ["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"], capture_output=True, text=True, timeout=120
    )
    if init.returncode != 0:
        yield f"`docker swarm init` failed: {init.stderr.strip()[:300]}"
        return
    try:
        yield None
    finally:
        time.sleep(2)  # let the last service's network endpoints go before the node leaves (see service_remove)
        subprocess.run(["docker", "swarm", "leave", "--force"], capture_output=True, timeout=120)


def service_create(name: str, replicas: int, command=("sleep", "300"), extra=()) -> None:
    """A service of `replicas` by image id (a tag makes Swarm ask a registry for the digest first)."""
    subprocess.run(
        [
            "docker",
            "service",
            "create",
            "--detach",
            "--quiet",
            "--name",
            name,
            "--replicas",
            str(replicas),
            "--label",
            f"cube.bench={name}",
            "--container-label",
            f"cube.bench={name}",
            *extra,
            image_id(),
            *command,
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )


def service_remove(name: str) -> None:
    """Remove the service and wait until Swarm has removed its containers itself: removing them by hand while Swarm
    does, or leaving the swarm before it is done, is how Docker 20.10's network controller deadlocks."""
    subprocess.run(["docker", "service", "rm", name], capture_output=True, timeout=120)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and api().containers(all=True, filters={"label": f"cube.bench={name}"}):
        time.sleep(0.5)


def healthy(timeout: float = 30.0) -> str | None:
    """None when the engine creates, starts and removes a container within `timeout`, else what is wrong."""
    result: list = []

    def probe():
        try:
            container = run_raw("probe", command=("true",))
            api().remove_container(container, force=True)
            result.append(None)
        except Exception as error:  # noqa: BLE001 - reported as text
            result.append(f"{type(error).__name__}: {error}")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    if not result:
        return f"the Docker engine did not create and start a container within {timeout:g} s (wedged?)"
    return result[0]
