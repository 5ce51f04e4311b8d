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

from cube.cluster.config import data_dir, find_token, private_dir
from cube.cluster.service import stop_on_signal, wait_for_signal
from cube.core.errors import CubeError, Unauthorized
from cube.store import node_id

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
    devices=(),
    pull_timeout: float = 300.0,
    pull_stall: float = 60.0,
    image_source=None,
    telemetry=None,
):
    """A Worker on the real Docker engine (or the given runtime) with its diskcache store. `unique_key`: label
    its containers with the name plus the node id even though a name is given (`cube dev`'s generated names repeat
    from one dev cluster to the next on the same engine). `telemetry`: its exporter (cube.cluster.metrics)."""
    from cube.store import DiskStore
    from cube.worker.devices import DeviceScan
    from cube.worker.files import TaskFiles
    from cube.worker.kernel import SystemHost
    from cube.worker.metrics import Metrics
    from cube.worker.pulls import Credentials
    from cube.worker.worker import Worker

    directory = private_dir(data_dir("worker", data))
    credentials = Credentials()  # the runtime pulls with what the worker is handed
    files = TaskFiles(os.path.join(directory, "files"))
    if runtime is None:
        from cube.worker.docker_runtime import DockerRuntime

        runtime = DockerRuntime(
            stop_timeout=stop_timeout, pull_timeout=pull_timeout, stall_timeout=pull_stall, credentials=credentials
        )
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
        devices=DeviceScan(extra=devices),
        credentials=credentials,
        image_source=image_source,
        files=files,
        network_host=SystemHost(),
        network_dns=True,
        telemetry=telemetry,
    )


def worker_id(directory: str) -> str:
    """The node id of the worker whose data directory is `directory` (made and kept there when new)."""
    from cube.store import DiskStore

    store = DiskStore(os.path.join(directory, "store"))
    try:
        return node_id(store)
    finally:
        store.close()


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
    manager=None,
    mdns=True,
    reconcile_interval: float = 5.0,
    stop_timeout: float = 10.0,
    threads: int = 4,
    disconnect_timeout: float = 30.0,
    insecure: bool = False,
    devices=(),
    pull_timeout: float = 300.0,
    pull_stall: float = 60.0,
    metrics_open: bool = False,
) -> None:
    """`cube worker`: serve the worker API until stopped. `threads`: how many container actions run at once.
    `disconnect_timeout`: seconds without a manager before tasks with on_disconnect=stop are stopped (0: never).
    Joins the cluster first when this node has no certificate yet (the token is then needed; after, it is not)."""
    from cube.cluster.api import Access, Server, worker_app
    from cube.cluster.images import ManagerSource
    from cube.cluster.metrics import WorkerExporter
    from cube.cluster.trust import Trust, member_trust, parse_token

    given = parse_token(find_token(token, token_file))
    directory = data_dir("worker", data)
    if manager and not insecure and str(manager).startswith("http://"):
        manager = "https://" + str(manager)[len("http://") :]  # the user's own setting: the cluster speaks TLS
    trust = None if insecure else member_trust(directory, "manager")
    if not given and trust is None:
        raise CubeError(
            "the worker needs the join token: pass --token, set CUBE_TOKEN or --token-file "
            "(print it on the manager with `cube token`)"
        )
    if trust is None and not insecure and not manager and not mdns:
        raise CubeError("to join, the worker needs the manager: pass --manager URL (or leave mDNS on)")
    # A task's image that no registry gives is fetched from a peer node, through the manager (cube.cluster.images).
    source = ManagerSource(
        manager,
        given.secret if insecure and given else None,
        lambda: Trust(insecure=True) if insecure else member_trust(directory, "manager"),
    )
    exporter = WorkerExporter(metrics_open)
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
        devices=devices,
        pull_timeout=pull_timeout,
        pull_stall=pull_stall,
        image_source=source,
        telemetry=exporter,
    )
    exporter.watch(worker)
    for path in devices:
        if not os.path.exists(path):
            log.warning("--device %s: no such path on this machine; advertised once it exists", path)
    closed = stop_on_signal(threading.Event())
    if insecure:
        assert given is not None
        trust = Trust(insecure=True)
        access = Access(given.secret)
    else:
        if trust is None:
            assert given is not None
            trust = join_when_found(worker, directory, given, manager, mdns, closed)
            if trust is None:
                worker.store.close()
                return
        access = Access(given.secret if given else None, "manager")
    from cube.ops import zipapp
    from cube.ops.upgrade import SelfUpgrade, running_pyz

    upgrader = SelfUpgrade(running_pyz(), zipapp.BUILD_ARCH, closed.set)  # `cube upgrade`: see cube.ops.upgrade
    server = Server(
        worker_app(worker, access, upgrader, exporter), host, port, tls=None if insecure else trust.server_context()
    )
    worker.start()
    server.start()
    log.info("worker %s serving on %s:%s (data %s)", worker.name, host, server.port, directory)
    extras = _announce_worker(
        worker, server, mdns, manager, given.secret if insecure and given else None, trust, directory, source.found
    )
    try:
        wait_for_signal(closed)
    finally:
        log.info("worker %s stopping", worker.name)
        for close in extras:
            close()
        worker.close()  # wakes the manager's long poll, so the server stops at once; containers keep running
        server.stop()
        worker.store.close()
    if upgrader.exiting:
        from cube.ops.upgrade import RESTART_EXIT

        log.info("worker %s exiting to be restarted on its new pyz", worker.name)
        raise SystemExit(RESTART_EXIT)


def join(url: str, token, directory: str, node: str):
    """Join the cluster of the manager at `url`: check its CA (pinned by the join token, or proved with the secret),
    send a signing request for a new key with a proof of the secret bound to that key, keep what comes back."""
    from cube.cluster import pki
    from cube.cluster.authority import save_member
    from cube.cluster.client import Client, fetch_ca
    from cube.cluster.trust import Trust, member_trust, proof

    ca = fetch_ca(url, token)
    csr, key = pki.make_request(node)
    digest = pki.request_key_digest(csr)
    client = Client(url, None, timeout=15.0, trust=Trust(ca=ca, peer_role="manager"))
    answer = client.post(
        "/join", {"csr": csr.decode(), "node_id": node, "proof": proof(token.secret, "join", node, digest)}
    )
    save_member(directory, ca.encode(), str(answer["cert"]).encode(), key)
    log.info("joined the cluster of %s as node %s", url, node)
    trust = member_trust(directory, "manager")
    assert trust is not None
    return trust


def join_when_found(worker, directory: str, token, manager: str | None, mdns: bool, closed: threading.Event):
    """Join as soon as a manager is known and answers (given, or found over mDNS); None if stopped first. A peer
    that cannot prove it is the cluster's manager is logged once and skipped."""
    delay, refused = 1.0, set[str]()
    while not closed.is_set():
        url = manager or (_find_manager(refused) if mdns else None)
        if url:
            url = url if "://" in url else f"https://{url}"
            try:
                return join(url, token, directory, worker.id)
            except Unauthorized as error:
                if url not in refused:
                    log.error(
                        "not joining %s: %s (if it is your manager, this node's token is wrong: `cube token` on the "
                        "manager prints the right one)",
                        url,
                        error.message,
                    )
                    refused.add(url)
            except CubeError as error:
                log.warning("cannot join %s yet: %s", url, error.message)
        closed.wait(delay)
        delay = min(delay * 2, 10.0)
    return None


def _find_manager(skip=()) -> str | None:
    from cube.cluster.discovery import find_manager

    found = find_manager(timeout=3.0, skip=skip)
    return found.url if found else None


def _announce_worker(
    worker, server, mdns: bool, manager: str | None, token: str | None, trust, directory="", registered=None
) -> list:
    """Advertise the worker on the LAN (mDNS) and keep it registered with its manager. Returns closers."""
    port = server.port
    closers = []
    if mdns:
        from cube.cluster.discovery import Advertiser

        try:
            advertiser = Advertiser("worker", worker.name, port, {"id": worker.id, "scheme": server.scheme})
            closers.append(advertiser.close)
        except CubeError as error:
            log.warning("not announcing on mDNS: %s", error.message)
    if manager or mdns:
        registrar = Registrar(worker, port, manager, token, mdns, trust, server.scheme, directory, registered)
        registrar.start()
        closers.insert(0, registrar.close)
    return closers


class Registrar:
    """Keeps a worker known to a manager: when no manager has polled the worker for a while (first start,
    manager lost its data, new manager), it registers again with `POST /nodes` — level-triggered, so a missed
    registration is repaired by the next round. The manager is the given URL, or the one mDNS finds."""

    QUIET = 10.0  # seconds without a manager's poll before registering (again)

    def __init__(
        self,
        worker,
        port: int,
        manager: str | None,
        token,
        mdns: bool,
        trust=None,
        scheme="http",
        directory="",
        registered=None,
    ):
        """`registered(url)`: told each manager this worker registered with (where it fetches images from)."""
        self.worker, self.port, self.manager, self.token, self.mdns = worker, port, manager, token, mdns
        self.registered = registered
        self.trust, self.scheme, self.directory = trust, scheme, directory
        self._closed = threading.Event()
        self._refused: set[str] = set()

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
            if url and url.startswith("http://") and not self.token:
                continue  # a TLS worker registers over TLS only: whoever advertises plain HTTP is not our manager
            if url:
                self._register(url)

    def _find(self) -> str | None:
        return _find_manager(self._refused)

    def _register(self, url: str) -> None:
        from cube.cluster.client import Client

        # Over TLS the worker's certificate is its credential; the token goes only to an insecure manager that
        # answered the challenge first (see trust.py).
        client = Client(url, self.token, timeout=10.0, trust=self.trust)
        address = f"{self.scheme}://{_source_address(url)}:{self.port}"
        try:
            client.post("/nodes", {"address": address})
            log.info("registered with manager %s as %s", url, address)
            if self.registered is not None:
                self.registered(url)
            self._refused.discard(url)
        except Unauthorized as error:
            if url not in self._refused:  # a fake manager on the LAN is logged once, not every round
                log.error(
                    "manager %s refused or is not trusted: %s (a manager made anew has a new CA: to join it, "
                    "remove %s and start this worker with its join token)",
                    url,
                    error.message,
                    os.path.join(self.directory, "tls") if self.directory else "the worker's tls directory",
                )
                self._refused.add(url)
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
