"""A Nomad-style harness for the manager: a real Manager on a MemoryStore, real Workers on FakeRuntimes, one fake
clock for all, and an in-process "network" that the test can cut per node. Nothing runs in the background: the
test drives every round (`step`), so each test is fast and exact about what happened when.

    c = ClusterHarness(["n1", "n2"])
    task = c.submit({"image": "busybox"})
    c.settle()
    assert c.running_copies(task["id"]) == 1
"""

from __future__ import annotations

from cube.core.errors import NotFound, Unavailable
from cube.core.model import Assignment, Node, Resources
from cube.manager.manager import Manager
from cube.store import MemoryStore
from cube.worker.devices import DeviceScan
from cube.worker.kernel import MemoryHost
from cube.worker.metrics import Metrics
from cube.worker.runtime import FakeRuntime
from cube.worker.worker import Worker


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


class Inline:
    """An executor that runs what it is given at once (the manager's deliveries, in order)."""

    def submit(self, fn, *args):
        fn(*args)


class ClusterHarness:
    def __init__(
        self,
        names=("n1", "n2"),
        node_timeout: float = 5.0,
        disconnect_timeout: float = 15.0,
        stop_timeout: float = 1.0,
        cpus: float = 4,
        memory: int = 8 << 30,
        cluster_cidr: str | None = None,
        telemetry=None,
    ):
        """`cluster_cidr`: the manager's cluster network (cube.manager.network); the nodes then have LAN addresses
        (10.99.0.N) and each worker a MemoryHost for its routes and rules (`hosts`). `telemetry`: the manager's
        (cube.cluster.metrics.ManagerExporter), kept across manager restarts."""
        self.clock = Clock(1_000_000.0)
        self.mono = Clock(1000.0)
        self.node_timeout = node_timeout
        self.disconnect_timeout = disconnect_timeout
        self.stop_timeout = stop_timeout
        self.capacity = (cpus, memory)
        self.store = MemoryStore()
        self.cut: set[str] = set()  # nodes the network cannot reach (both ways)
        self.dead: set[str] = set()  # nodes whose worker process is not running
        self.sent: list[tuple] = []  # every request the manager's dispatcher was given
        self.workers: dict[str, Worker] = {}
        self.runtimes: dict[str, FakeRuntime] = {}
        self.stores: dict[str, MemoryStore] = {}
        self.devices: dict[str, DeviceScan] = {}  # what each node's worker finds plugged in (see add_node)
        self.cluster_cidr = cluster_cidr
        self.hosts: dict[str, MemoryHost] = {}  # each node's kernel (routes, iptables) with a cluster network
        self.addresses: dict[str, str] = {}  # node -> the address the manager reaches it at
        self.telemetry = telemetry
        self.manager = self._new_manager()
        for name in names:
            self.add_node(name)

    # ---- the parts --------------------------------------------------------------------------------------------

    def _new_manager(self) -> Manager:
        return Manager(
            self.store,
            clock=self.clock,
            monotonic=self.mono,
            dispatch=self.dispatch,
            node_timeout=self.node_timeout,
            executor=Inline(),
            cluster_cidr=self.cluster_cidr,
            telemetry=self.telemetry,
        )

    def restart_manager(self) -> None:
        """A manager killed and started again on the same store (what `kill -9` and systemd do)."""
        self.manager.close()
        self.manager = self._new_manager()

    def _new_worker(self, name: str) -> Worker:
        cpus, memory = self.capacity
        return Worker(
            name,
            self.runtimes[name],
            self.stores[name],
            clock=self.clock,
            monotonic=self.mono,
            metrics=Metrics(None, cpus, memory, 100 << 30),
            stop_timeout=self.stop_timeout,
            disconnect_timeout=self.disconnect_timeout,
            sync=True,
            devices=self.devices[name],
            network_host=self.hosts.get(name),
        )

    def add_node(self, name: str, devices=(), arch: str | None = None) -> None:
        """A node whose worker (and fake engine) has exactly the device paths `devices`; `arch`: its machine's (as
        `uname -m`), labelled as a worker labels it."""
        self.devices[name] = DeviceScan(extra=devices, patterns=(), ttl=0, exists=lambda path: True)
        self.runtimes[name] = FakeRuntime()
        self.runtimes[name].devices = set(devices)
        if arch is not None:
            self.runtimes[name].arch = arch
        self.stores[name] = MemoryStore()
        self.addresses[name] = f"fake://{name}"
        if self.cluster_cidr:
            self.hosts[name] = MemoryHost()
            self.addresses[name] = f"fake://10.99.0.{len(self.addresses)}:5556"
        self.workers[name] = self._new_worker(name)
        cpus, memory = self.capacity
        self.manager.node_up(
            Node(
                name,
                self.addresses[name],
                Resources(cpus, memory, 100 << 30),
                labels={"node_id": self.workers[name].id, "hostname": name, **({"arch": arch} if arch else {})},
                last_seen=self.clock(),
            )
        )

    def kill_worker(self, name: str) -> None:
        """kill -9 of the worker process: its containers go on running, its store stays."""
        self.workers[name].close()
        self.dead.add(name)

    def start_worker(self, name: str) -> None:
        self.workers[name] = self._new_worker(name)
        self.dead.discard(name)

    # ---- the network ------------------------------------------------------------------------------------------

    def dispatch(self, address: str, method: str, path: str, body: dict | None, params: dict | None):
        name = next(n for n, a in self.addresses.items() if a == address)
        self.sent.append((name, method, path, (body or {}).get("generation"), (params or {}).get("generation")))
        if name in self.cut or name in self.dead:
            raise Unavailable(f"cannot reach {address}")
        worker = self.workers[name]
        if method == "POST" and path == "/tasks":
            body = dict(body or {})
            contents = body.pop("files", None)  # a stack's files: written by the worker, as its API does
            assignment = Assignment.from_dict(body)
            worker.files.write(assignment, contents)
            return worker.accept(assignment)[0].to_dict()
        if method == "PUT" and path == "/network":
            return worker.update_network(body)
        if method == "DELETE" and path.startswith("/volumes/"):
            return worker.remove_volume(path.split("/")[2])
        task_id = path.split("/")[2]
        if method == "DELETE":
            try:
                return worker.stop_task(task_id, (params or {}).get("generation")).to_dict()
            except NotFound:
                raise
        if path.endswith("/restart"):
            return worker.restart_task(task_id, body["reason"]).to_dict()
        raise AssertionError(f"unexpected request {method} {path}")

    def poll(self, name: str) -> None:
        """One long-poll answer from the node, as membership handles it."""
        if name in self.cut or name in self.dead:
            return
        started = self.mono()
        answer = self.workers[name].state(events_since=-1)
        self.manager.heard(name, answer["stats"])
        for item in self.manager.observe(name, answer["tasks"], answer["events"], started):
            self.manager.deliver(item)

    # ---- driving ----------------------------------------------------------------------------------------------

    def step(self, seconds: float = 0.0) -> None:
        """Let `seconds` pass, then one round everywhere: every live worker reconciles and is polled, and the
        manager does its housekeeping."""
        self.clock.now += seconds
        self.mono.now += seconds
        for name, worker in self.workers.items():
            if name not in self.dead:
                try:
                    worker.tick()
                except Unavailable:
                    pass  # its engine is down: the worker recorded it, its report says so
        for name in self.workers:
            self.poll(name)
        self.manager.tick()
        for name in self.workers:
            self.poll(name)

    def settle(self, rounds: int = 4, seconds: float = 0.5) -> None:
        for _ in range(rounds):
            self.step(seconds)

    def run_for(self, seconds: float, every: float = 0.5, check=None) -> None:
        """Step through `seconds`, calling `check()` after each round (an invariant that must hold throughout)."""
        elapsed = 0.0
        while elapsed < seconds:
            self.step(every)
            elapsed += every
            if check is not None:
                check()

    # ---- looking ----------------------------------------------------------------------------------------------

    def submit(self, spec: dict) -> dict:
        return self.manager.submit_task(spec)[0].to_dict()

    def task(self, task_id: str) -> dict:
        return self.manager.task_detail(task_id)

    def copies(self, task_id: str) -> list[tuple[str, str]]:
        """(node, container id) of every running container of the task, on every node."""
        return [
            (name, c.id)
            for name, runtime in self.runtimes.items()
            for c in runtime.containers.values()
            if c.task_id == task_id and c.running
        ]

    def running_copies(self, task_id: str) -> int:
        return len(self.copies(task_id))

    def node_state(self, name: str) -> str:
        node = self.manager.node(name)
        return node.state if node else ""

    def close(self) -> None:
        for worker in self.workers.values():
            worker.close()
        self.manager.close()
