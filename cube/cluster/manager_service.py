"""`cube manager` and `cube dev` as long-lived services: a manager with its store, membership (the long polls),
health checks and HTTP server; `cube dev` adds in-process workers on this machine's engine. Everything is started
and closed in one place, in an order that lets long polls end at once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from cube.cluster.config import data_dir, private_dir
from cube.cluster.service import stop_on_signal, wait_for_signal
from cube.core.errors import BadRequest, CubeError, Unavailable, Untrusted
from cube.store import node_id

log = logging.getLogger("cube")
# What a worker's certificate opens on the manager: its registration, and an image relayed from a peer node (workers
# never call each other: cube.cluster.images).
WORKER_ROUTES = frozenset({("POST", "/nodes"), ("GET", "/images/fetch")})


class ManagerService:
    """A manager with everything around it: store, membership (long polls), health checks, HTTP server.
    `cube manager` runs one; `cube dev` runs one plus in-process workers; tests start them on port 0."""

    def __init__(
        self,
        port=5555,
        host="0.0.0.0",
        data=None,
        token=None,
        strategy="epvm",
        node_timeout=5.0,
        poll_wait=2.0,
        insecure=False,
        role="manager",
        cluster_cidr: str | None = None,
        metrics_open: bool = False,
        etcd: str | None = None,
    ):
        """`metrics_open`: GET /metrics answers without the token (a Prometheus that has none)."""
        from cube.cluster.api import Access, Server, manager_app
        from cube.cluster.config import ensure_token
        from cube.cluster.links import Links
        from cube.cluster.metrics import ManagerExporter
        from cube.cluster.sessions import Sessions
        from cube.cluster.trust import Trust, parse_token
        from cube.manager.health import HealthChecker
        from cube.manager.manager import Manager
        from cube.manager.membership import Membership
        from cube.manager.registries import Registries
        from cube.store import DiskStore

        self.directory = private_dir(data_dir(role, data))
        given = parse_token(token or os.environ.get("CUBE_TOKEN") or None)
        self.token = ensure_token(self.directory, given.secret if given else None)
        self.leadership = None
        if etcd:  # several managers on one etcd: this one serves only once it leads (cube/manager/leadership.py)
            self.store, self.leadership = _lead_on_etcd(etcd)
        else:
            self.store = DiskStore(os.path.join(self.directory, "store"))
        self.authority = None
        if insecure:
            self.trust = Trust(insecure=True, peer_role="worker")
            access = Access(self.token, sessions=Sessions())
        else:
            from cube.cluster.authority import Authority

            self.authority = Authority(self.directory, self.token, self.store, node_id(self.store))
            self.trust = self.authority.trust()
            authority = self.authority
            access = Access(
                lambda: authority.secret, "worker", WORKER_ROUTES, revoked=authority.revoked, sessions=Sessions()
            )
        # With TLS, workers know the manager by its certificate: the token is never sent to them.
        self.links = Links(self.token if insecure else None, trust=self.trust)
        sealer = _sealer(self.directory)
        self.registries = Registries(self.store, sealer.seal, sealer.unseal)
        self.exporter = ManagerExporter(metrics_open)
        self.manager = Manager(
            self.store,
            strategy=strategy,
            dispatch=self.registries.dispatching(self.links.dispatch),
            node_timeout=node_timeout,
            sealer=sealer,
            cluster_cidr=cluster_cidr,
            telemetry=self.exporter,
        )
        self.membership = Membership(
            self.manager, self.links.request, self.store, poll_wait=poll_wait, url=self._worker_url
        )
        self.exporter.watch(self.manager, self.membership)
        self.health = HealthChecker(self.manager)
        self.restart = threading.Event()  # set when the manager replaced its pyz (`cube upgrade`): exit, be restarted
        self.upgrades, shelf = self._upgrades()
        self.server = Server(
            manager_app(
                self.manager,
                self.membership,
                self.links,
                access,
                self.authority,
                self.registries,
                self.upgrades,
                shelf,
                self.exporter,
            ),
            host,
            port,
            tls=None if insecure else self.trust.server_context(),
        )
        self._closers: list = []
        self._ignored: set[str] = set()

    def _upgrades(self):
        """`cube upgrade`: the pyz shelf in the data directory, and the rollout driven from the store. The manager
        replaces itself last when it runs from a pyz."""
        from cube.cluster import upgrade
        from cube.manager.upgrade import Upgrades
        from cube.ops import zipapp
        from cube.ops.upgrade import SelfUpgrade, running_pyz

        shelf = upgrade.Shelf(self.directory)
        own = running_pyz()
        self.upgrader = SelfUpgrade(own, zipapp.BUILD_ARCH, self.restart.set, role="manager")
        upgrades = Upgrades(
            self.store,
            self.manager.list_nodes,
            shelf.held,
            lambda node, arch: upgrade.push(self.links, shelf, node, arch),
            lambda arch: upgrade.replace_self(shelf, self.upgrader, arch),
            manager_pyz=own,
            manager_arch=zipapp.BUILD_ARCH,
        )
        return upgrades, shelf

    def client(self, timeout: float = 10.0):
        """A client of this manager's API, as the CLI on this machine would make it (tests, `cube dev`)."""
        from cube.cluster.client import Client

        return Client(self.url, self.token, timeout=timeout, trust=self.trust.for_clients())

    def _worker_url(self, address: str) -> str:
        """A worker's URL. A TLS cluster never talks plain HTTP to a worker: anyone can advertise one."""
        url = self.trust.url(address)
        if not self.trust.insecure and url.startswith("http://"):
            raise BadRequest(f"address: {url} is plain HTTP, and this cluster uses TLS (workers join with the token)")
        return url

    @property
    def join_token(self) -> str:
        return self.authority.join_token() if self.authority else self.token

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> "ManagerService":
        self.server.start()
        self.membership.start()
        self.health.start()
        self.upgrades.start()
        try:  # a convenience for local tools: a full or read-only disk must not keep the manager from serving
            with open(os.path.join(self.directory, "url"), "w") as handle:
                handle.write(self.url + "\n")
        except OSError as error:
            log.warning("cannot write %s: %s", os.path.join(self.directory, "url"), error.strerror)
        return self

    def add_workers(self, addresses) -> None:
        """Static workers: admitted in the background, retried until they answer (they may start later)."""
        for address in addresses:
            threading.Thread(target=self._admit, args=(address,), daemon=True, name="cube-admit").start()

    def _admit(self, address: str) -> None:
        """Admit one worker, retrying while it cannot be reached. A peer that answers but cannot prove it is a
        member (anyone can advertise a worker) is logged once and ignored until it is advertised again."""
        delay = 0.5
        while not self.membership.closed.is_set():
            try:
                self.membership.add(address)
                self._ignored.discard(address)
                return
            except (Untrusted, BadRequest) as error:
                if address not in self._ignored:
                    self._ignored.add(address)
                    log.warning("ignoring the worker advertised at %s: %s", address, error.message)
                return
            except CubeError as error:
                log.warning("worker %s not admitted yet: %s", address, error.message)
            self.membership.closed.wait(delay)
            delay = min(delay * 2, 10)

    def announce(self) -> None:
        """Advertise the manager on the LAN and admit the workers that advertise themselves."""
        from cube.cluster.discovery import Advertiser, Browser

        try:
            advertiser = Advertiser(
                "manager",
                f"cube-manager-{socket.gethostname()}",
                self.server.port,
                {"id": node_id(self.store), "scheme": self.server.scheme},
            )  # the manager's own id, for its instance name
            self.on_close(advertiser.close)
        except CubeError as error:
            log.warning("not announcing on mDNS: %s", error.message)
        browser = Browser("worker", on_add=lambda found: self.add_workers([found.url]))
        self.on_close(browser.close)

    def on_close(self, closer) -> None:
        self._closers.append(closer)

    def close(self) -> None:
        self.manager.stop_waiting()  # a client's long poll of /events would hold the server's stop for 30 s
        self.health.close()
        self.upgrades.close()
        self.membership.close()
        for closer in reversed(self._closers):
            closer()
        self.server.stop()
        self.manager.close()
        self.store.close()
        if self.leadership is not None:
            self.leadership.close()  # last: nothing of this manager writes after it steps down


def run_manager(
    port=5555,
    host="0.0.0.0",
    data=None,
    token=None,
    strategy="epvm",
    workers=(),
    node_timeout=5.0,
    mdns=True,
    insecure=False,
    cluster_cidr: str | None = "10.210.0.0/16",
    metrics_open: bool = False,
    etcd: str | None = None,
) -> None:
    """`cube manager`: serve the manager API until stopped (with `etcd`: once it leads, until it no longer does)."""
    service = ManagerService(
        port,
        host,
        data,
        token,
        strategy,
        node_timeout,
        insecure=insecure,
        cluster_cidr=cluster_cidr,
        metrics_open=metrics_open,
        etcd=etcd,
    ).start()
    service.add_workers(workers)
    if mdns:
        service.announce()
    stop_on_signal(service.restart)  # before the line that says it serves: a SIGTERM from then on stops it cleanly
    log.info("manager serving on %s (data %s, scheduler %s)", service.url, service.directory, strategy)
    if service.leadership is not None:  # a lost leadership stops the manager as a signal or an upgrade does
        service.leadership.on_lost = service.restart.set
        if service.leadership.lost.is_set():  # lost before the hook was there
            service.restart.set()
    try:
        wait_for_signal(service.restart)
    finally:
        log.info("manager stopping")
        service.close()
    if service.upgrader.exiting:
        from cube.ops.upgrade import RESTART_EXIT

        log.info("manager exiting to be restarted on its new pyz")
        raise SystemExit(RESTART_EXIT)
    if service.leadership is not None and service.leadership.lost.is_set():
        raise Unavailable("this manager lost the leadership in etcd and stopped (a new start campaigns again)")


def _lead_on_etcd(urls: str):
    """The etcd store and this manager's leadership, once it leads: a standby waits here (its state is loaded from
    etcd only after, so it starts from what the last leader wrote)."""
    from cube.manager.leadership import Leadership
    from cube.store.etcd import EtcdStore

    store = EtcdStore(urls)
    leadership = Leadership(store, socket.gethostname())
    holder = leadership.holder()
    if holder is not None:
        log.info("standby: %s leads (etcd %s); waiting for the leadership", holder.split()[0], store.url)
    leadership.campaign()
    return store, leadership


def start_dev(
    port=5555,
    data=None,
    workers=1,
    strategy="epvm",
    host="127.0.0.1",
    runtime=None,
    cpus=None,
    memory=None,
    node_timeout=5.0,
    stop_timeout=10.0,
    insecure=False,
    metrics_open=False,
) -> ManagerService:
    """A whole cluster in one process: a manager and `workers` local workers on the real Docker engine."""
    from cube.cluster.api import Access, Server, worker_app
    from cube.cluster.metrics import WorkerExporter
    from cube.cluster.worker_service import build_worker  # imports psutil: a manager alone does not need it

    service = ManagerService(
        port, host, data, None, strategy, node_timeout, insecure=insecure, role="dev", metrics_open=metrics_open
    )
    if runtime is None:
        from cube.worker.docker_runtime import DockerRuntime

        runtime = DockerRuntime()
    service.start()
    base = socket.gethostname()
    for i in range(1, int(workers) + 1):
        exporter = WorkerExporter(metrics_open)
        worker = build_worker(
            f"{base}-dev-{i}",
            os.path.join(service.directory, f"worker-{i}"),
            cpus,
            memory,
            runtime=runtime,
            stop_timeout=stop_timeout,
            unique_key=True,
            telemetry=exporter,
        )
        exporter.watch(worker)
        if service.authority is None:
            server = Server(worker_app(worker, service.token, exporter=exporter), host, 0).start()
        else:  # joined directly: the manager signs the worker's certificate in-process
            trust = service.authority.enroll(os.path.join(service.directory, f"worker-{i}"), worker.id)
            access = Access(None, "manager")
            server = Server(worker_app(worker, access, exporter=exporter), host, 0, tls=trust.server_context())
            server.start()
        worker.start()
        # Closed last-registered first: the worker wakes its long polls, then its server can stop at once.
        service.on_close(worker.store.close)
        service.on_close(server.stop)
        service.on_close(worker.close)
        service.membership.add(server.url)
    return service


def run_dev(
    port=5555,
    data=None,
    workers=1,
    strategy="epvm",
    cpus=None,
    memory=None,
    stop_timeout=10.0,
    insecure=False,
    metrics_open=False,
) -> None:
    """`cube dev`: start the one-process cluster, print how to reach it, run until stopped."""
    service = start_dev(
        port,
        data,
        workers,
        strategy,
        cpus=cpus,
        memory=memory,
        stop_timeout=stop_timeout,
        insecure=insecure,
        metrics_open=metrics_open,
    )
    print(f"cube dev: manager {service.url} with {workers} worker(s); data {service.directory}")
    print(f"token: {service.join_token}")
    print(f"dashboard: {service.url}/   (sign in with the token)")
    print("try:   cube run --image IMAGE   (this machine finds the manager and token by itself)", flush=True)
    try:
        wait_for_signal()
    finally:
        service.close()


def _sealer(directory: str):
    """What seals registry passwords and stacks' files in the store: a key file beside it (cube.cluster.pki)."""
    from cube.cluster.pki import Sealer

    return Sealer(directory)
