"""How a Cube process runs as a long-lived service: it builds a worker (or manager) from the command's options,
starts its HTTP server, announces it, and shuts everything down cleanly on SIGTERM/SIGINT (systemd stop, Ctrl-C).
The CLI parses flags; this module owns the process lifecycle.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time

from cube.cluster.config import data_dir, find_token
from cube.worker.worker import node_id
from cube.core.errors import CubeError

log = logging.getLogger("cube")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def wait_for_signal(extra_stop: threading.Event | None = None) -> None:
    """Block until SIGTERM or SIGINT (or `extra_stop`)."""
    stop = extra_stop or threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass


def build_worker(name: str | None, data: str | None, cpus=None, memory=None, disk=None, labels=None,
                 runtime=None, reconcile_interval: float = 5.0, threads: int = 4, stop_timeout: float = 10.0,
                 unique_key: bool = False):
    """A Worker on the real Docker engine (or the given runtime) with its diskcache store. `unique_key`: label
    its containers with the name plus the node id even though a name is given (`cube dev`'s generated names repeat
    from one dev cluster to the next on the same engine)."""
    from cube.worker.metrics import Metrics
    from cube.store import DiskStore
    from cube.worker.worker import Worker
    directory = data_dir("worker", data)
    os.makedirs(directory, exist_ok=True)
    if runtime is None:
        from cube.worker.docker_runtime import DockerRuntime
        runtime = DockerRuntime()
    store = DiskStore(os.path.join(directory, "store"))
    # An explicit name is the user's promise that it is unique; the default (the hostname) may not be.
    key = f"{name or socket.gethostname()}.{node_id(store)}" if unique_key or not name else name
    return Worker(name or socket.gethostname(), runtime, store, key=key,
                  metrics=Metrics(directory, cpus, memory, disk), labels=labels,
                  reconcile_interval=reconcile_interval, threads=threads, stop_timeout=stop_timeout)


def run_worker(name=None, port=5556, host="0.0.0.0", data=None, token=None, token_file=None, cpus=None,
               memory=None, disk=None, labels=None, certfile=None, keyfile=None, manager=None, mdns=True,
               reconcile_interval: float = 5.0, stop_timeout: float = 10.0, threads: int = 4) -> None:
    """`cube worker`: serve the worker API until stopped. `threads`: how many container actions run at once."""
    from cube.cluster.api import Server, worker_app
    token = find_token(token, token_file)
    if not token:
        raise CubeError("the worker needs the cluster token: pass --token, set CUBE_TOKEN or --token-file "
                        "(print it on the manager with `cube token`)")
    worker = build_worker(name, data, cpus, memory, disk, labels, reconcile_interval=reconcile_interval,
                          stop_timeout=stop_timeout, threads=threads)
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

    QUIET = 10.0   # seconds without a manager's poll before registering (again)

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
            log.error("manager %s refused this worker: %s — start the worker with the token `cube token` prints "
                      "on the manager", url, error.message)
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


class ManagerService:
    """A manager with everything around it: store, membership (long polls), health checks, HTTP server.
    `cube manager` runs one; `cube dev` runs one plus in-process workers; tests start them on port 0."""

    def __init__(self, port=5555, host="0.0.0.0", data=None, token=None, strategy="epvm", node_timeout=5.0,
                 poll_wait=2.0, certfile=None, keyfile=None, role="manager"):
        from cube.cluster.api import Server, manager_app
        from cube.cluster.config import ensure_token
        from cube.manager.health import HealthChecker
        from cube.manager.manager import Manager
        from cube.manager.membership import Membership
        from cube.store import DiskStore
        self.directory = data_dir(role, data)
        self.token = ensure_token(self.directory, token or os.environ.get("CUBE_TOKEN") or None)
        self.store = DiskStore(os.path.join(self.directory, "store"))
        self.manager = Manager(self.store, strategy=strategy)
        self.membership = Membership(self.manager, self.token, node_timeout=node_timeout, poll_wait=poll_wait)
        self.health = HealthChecker(self.manager)
        self.server = Server(manager_app(self.manager, self.membership, self.token), host, port,
                             certfile=certfile, keyfile=keyfile)
        self._closers: list = []

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> "ManagerService":
        self.server.start()
        self.membership.start()
        self.health.start()
        with open(os.path.join(self.directory, "url"), "w") as handle:
            handle.write(self.url + "\n")
        return self

    def add_workers(self, addresses) -> None:
        """Static workers: admitted in the background, retried until they answer (they may start later)."""
        for address in addresses:
            threading.Thread(target=self._admit, args=(address,), daemon=True, name="cube-admit").start()

    def _admit(self, address: str) -> None:
        delay = 0.5
        while not self.membership._closed.is_set():
            try:
                self.membership.add(address)
                return
            except CubeError as error:
                log.warning("worker %s not admitted yet: %s", address, error.message)
            self.membership._closed.wait(delay)
            delay = min(delay * 2, 10)

    def announce(self) -> None:
        """Advertise the manager on the LAN and admit the workers that advertise themselves."""
        from cube.cluster.discovery import Advertiser, Browser
        try:
            advertiser = Advertiser("manager", f"cube-manager-{socket.gethostname()}", self.server.port,
                                    {"id": node_id(self.store)})  # the manager's own id, for its instance name
            self.on_close(advertiser.close)
        except CubeError as error:
            log.warning("not announcing on mDNS: %s", error.message)
        browser = Browser("worker", on_add=lambda found: self.add_workers([found.url]))
        self.on_close(browser.close)

    def on_close(self, closer) -> None:
        self._closers.append(closer)

    def close(self) -> None:
        self.health.close()
        self.membership.close()
        for closer in reversed(self._closers):
            closer()
        self.server.stop()
        self.manager.close()
        self.store.close()


def run_manager(port=5555, host="0.0.0.0", data=None, token=None, strategy="epvm", workers=(), node_timeout=5.0,
                certfile=None, keyfile=None, mdns=True) -> None:
    """`cube manager`: serve the manager API until stopped."""
    service = ManagerService(port, host, data, token, strategy, node_timeout, certfile=certfile,
                             keyfile=keyfile).start()
    service.add_workers(workers)
    if mdns:
        service.announce()
    log.info("manager serving on %s (data %s, scheduler %s)", service.url, service.directory, strategy)
    try:
        wait_for_signal()
    finally:
        log.info("manager stopping")
        service.close()


def start_dev(port=5555, data=None, workers=1, strategy="epvm", host="127.0.0.1", runtime=None, cpus=None,
              memory=None, node_timeout=5.0, stop_timeout=10.0) -> ManagerService:
    """A whole cluster in one process: a manager and `workers` local workers on the real Docker engine."""
    from cube.cluster.api import Server, worker_app
    service = ManagerService(port, host, data, None, strategy, node_timeout, role="dev")
    if runtime is None:
        from cube.worker.docker_runtime import DockerRuntime
        runtime = DockerRuntime()
    service.start()
    base = socket.gethostname()
    for i in range(1, int(workers) + 1):
        worker = build_worker(f"{base}-dev-{i}", os.path.join(service.directory, f"worker-{i}"), cpus, memory,
                              runtime=runtime, stop_timeout=stop_timeout, unique_key=True)
        server = Server(worker_app(worker, service.token), host, 0).start()
        worker.start()
        # Closed last-registered first: the worker wakes its long polls, then its server can stop at once.
        service.on_close(worker.store.close)
        service.on_close(server.stop)
        service.on_close(worker.close)
        service.membership.add(server.url)
    return service


def run_dev(port=5555, data=None, workers=1, strategy="epvm", cpus=None, memory=None, stop_timeout=10.0) -> None:
    """`cube dev`: start the one-process cluster, print how to reach it, run until stopped."""
    service = start_dev(port, data, workers, strategy, cpus=cpus, memory=memory, stop_timeout=stop_timeout)
    print(f"cube dev: manager {service.url} with {workers} worker(s); data {service.directory}")
    print(f"token: {service.token}")
    print(f"try:   cube run --image IMAGE   (this machine finds the manager and token by itself)", flush=True)
    try:
        wait_for_signal()
    finally:
        service.close()
