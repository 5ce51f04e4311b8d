"""`cube worker` as a long-lived service: builds a worker from the command's options (the real Docker engine and a
diskcache store), serves its API, announces it on the LAN and keeps it registered with a manager, and stops it
cleanly on SIGTERM/SIGINT.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from cube.cluster.config import data_dir, find_token
from cube.cluster.service import wait_for_signal
from cube.core.errors import CubeError
from cube.worker.worker import node_id

log = logging.getLogger("cube")


def build_worker(
    name: str | None,
    data: str | None,
    cpus=None,
    memory=None,
    disk=None,
    labels=None,
    runtime=None,
    reconcile_interval: float = 5.0,
    threads: int = 4,
    stop_timeout: float = 10.0,
    unique_key: bool = False,
    disconnect_timeout: float = 30.0,
):
    """A Worker on the real Docker engine (or the given runtime) with its diskcache store. `unique_key`: label
    its containers with the name plus the node id even though a name is given (`cube dev`'s generated names repeat
    from one dev cluster to the next on the same engine)."""
    from cube.store import DiskStore
    from cube.worker.metrics import Metrics
    from cube.worker.worker import Worker

    directory = data_dir("worker", data)
    os.makedirs(directory, exist_ok=True)
    if runtime is None:
        from cube.worker.docker_runtime import DockerRuntime

        runtime = DockerRuntime(stop_timeout=stop_timeout)
    store = DiskStore(os.path.join(directory, "store"))
    # An explicit name is the user's promise that it is unique; the default (the hostname) may not be.
    key = f"{name or socket.gethostname()}.{node_id(store)}" if unique_key or not name else name
    return Worker(
        name or socket.gethostname(),
        runtime,
        store,
        key=key,
        metrics=Metrics(directory, cpus, memory, disk),
        labels=labels,
        reconcile_interval=reconcile_interval,
        threads=threads,
        stop_timeout=stop_timeout,
        disconnect_timeout=disconnect_timeout,
    )


def run_worker(
    name=None,
    port=5556,
    host="0.0.0.0",
    data=None,
    token=None,
    token_file=None,
    cpus=None,
    memory=None,
    disk=None,
    labels=None,
    certfile=None,
    keyfile=None,
    manager=None,
    mdns=True,
    reconcile_interval: float = 5.0,
    stop_timeout: float = 10.0,
    threads: int = 4,
    disconnect_timeout: float = 30.0,
) -> None:
    """`cube worker`: serve the worker API until stopped. `threads`: how many container actions run at once.
    `disconnect_timeout`: seconds without a manager before tasks with on_disconnect=stop are stopped (0: never)."""
    from cube.cluster.api import Server, worker_app

    token = find_token(token, token_file)
    if not token:
        raise CubeError(
            "the worker needs the cluster token: pass --token, set CUBE_TOKEN or --token-file "
            "(print it on the manager with `cube token`)"
        )
    worker = build_worker(
        name,
        data,
        cpus,
        memory,
        disk,
        labels,
        reconcile_interval=reconcile_interval,
        stop_timeout=stop_timeout,
        threads=threads,
        disconnect_timeout=disconnect_timeout,
    )
    server = Server(worker_app(worker, token), host, port, certfile=certfile, keyfile=keyfile)
    worker.start()
    server.start()
    log.info("worker %s serving on %s:%s (data %s)", worker.name, host, server.port, data_dir("worker", data))
    extras = _announce_worker(worker, server.port, mdns, manager, token)
    try:
        wait_for_signal()
    finally:
        log.info("worker %s stopping", worker.name)
        for close in extras:
            close()
        worker.close()  # wakes the manager's long poll, so the server stops at once
        server.stop()
        worker.store.close()


def _announce_worker(worker, port: int, mdns: bool, manager: str | None, token: str) -> list:
    """Advertise the worker on the LAN (mDNS) and keep it registered with its manager. Returns closers."""
    closers = []
    if mdns:
        from cube.cluster.discovery import Advertiser

        try:
            advertiser = Advertiser("worker", worker.name, port, {"id": worker.id})
            closers.append(advertiser.close)
        except CubeError as error:
            log.warning("not announcing on mDNS: %s", error.message)
    if manager or mdns:
        registrar = Registrar(worker, port, manager, token, mdns)
        registrar.start()
        closers.insert(0, registrar.close)
    return closers


class Registrar:
    """Keeps a worker known to a manager: when no manager has polled the worker for a while (first start,
    manager lost its data, new manager), it registers again with `POST /nodes` — level-triggered, so a missed
    registration is repaired by the next round. The manager is the given URL, or the one mDNS finds."""

    QUIET = 10.0  # seconds without a manager's poll before registering (again)

    def __init__(self, worker, port: int, manager: str | None, token: str, mdns: bool):
        self.worker, self.port, self.manager, self.token, self.mdns = worker, port, manager, token, mdns
        self._closed = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._run, name="cube-register", daemon=True).start()

    def close(self) -> None:
        self._closed.set()

    def _run(self) -> None:
        delay = 0.0
        while not self._closed.wait(delay):
            delay = 2.0
            if time.monotonic() - self.worker.last_polled < self.QUIET:
                continue
            url = self.manager or self._find()
            if url:
                self._register(url)

    def _find(self) -> str | None:
        from cube.cluster.discovery import find_manager

        found = find_manager(timeout=3.0)
        return found.url if found else None

    def _register(self, url: str) -> None:
        from cube.cluster.client import Client
        from cube.core.errors import Unauthorized

        client = Client(url, self.token, timeout=10.0)
        address = f"http://{_source_address(url)}:{self.port}"
        try:
            client.post("/nodes", {"address": address})
            log.info("registered with manager %s as %s", url, address)
        except Unauthorized as error:
            log.error(
                "manager %s refused this worker: %s — start the worker with the token `cube token` prints "
                "on the manager",
                url,
                error.message,
            )
        except CubeError as error:
            log.warning("cannot register with manager %s: %s", url, error.message)


def _source_address(url: str) -> str:
    """The local address the manager at `url` reaches us by: the source of a route towards it (no packet sent)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url if "://" in url else f"http://{url}")
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect((parts.hostname, parts.port or 80))
        return probe.getsockname()[0]
    except OSError:
        return socket.gethostname()
    finally:
        probe.close()
