"""The cluster network as the manager keeps it (host-gw: see cube.worker.network for the node's side). The manager
decides three things here:

- each node's subnet: a /24 of the cluster range (`cube manager --cluster-cidr`, default 10.210.0.0/16; `off`: no
  cluster network), the lowest one free, given when the node is first seen and kept in the store ("subnets"), so a
  node keeps it across restarts of either side; freed only by `cube node rm`. A node the manager reaches at a loopback
  address gets none: no other node could route to it (a worker on the manager's own machine, `cube dev`);
- the endpoint table (`endpoints`, a pure function of the tasks): every task with an address on the cluster network,
  its job, stack and service, and whether it takes traffic (`serving`, on a node that is not down);
- what each node is sent: the table of nodes and endpoints (`PUT /network`), level-triggered like assignments. The
  table has a version; each worker reports the version it holds in every poll answer, and a node whose report
  shows another one is sent the table again (through an outbox of its own: in flight once, backoff on failure,
  not resent until a report taken after the delivery still lacks it). A manager restart starts the version anew from
  its clock, so no worker's version can pass for current.

Assignments to a node with a subnet wait until its report shows it holds a table with that subnet (`_network_ready`),
so a task's container starts on the cluster network, never on Docker's default bridge.
A mixin of `Manager`, which owns the lock, the store batch and the dispatcher.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from cube.core.errors import BadRequest, Conflict, CubeError
from cube.core.model import Desired, Job, Node, State, Task, TaskSpec, serving
from cube.manager.outbox import Outbox
from cube.manager.parts import ManagerParts

log = logging.getLogger("cube.manager")
DEFAULT_CIDR = "10.210.0.0/16"
KIND = "subnets"  # the store: node name -> {"node", "subnet"}
OFF = ("", "off", "none")
DRAIN_MOST = 5.0  # seconds a replaced replica's stop waits at most for every node to stop sending it traffic


def parse_cidr(value) -> ipaddress.IPv4Network | None:
    """The cluster range from `--cluster-cidr`: an IPv4 range from /8 to /24 (each node takes a /24), or None for
    `off`. A 400 that says what would do otherwise."""
    if value is None or (isinstance(value, str) and value.strip().lower() in OFF):
        return None
    hint = f"--cluster-cidr must be an IPv4 range such as {DEFAULT_CIDR} (a /24 of it per node), or off"
    try:
        found = ipaddress.ip_network(str(value).strip())
    except ValueError as error:
        raise BadRequest(f"{hint}; not {value!r} ({error})") from None
    if not isinstance(found, ipaddress.IPv4Network) or not 8 <= found.prefixlen <= 24:
        raise BadRequest(f"{hint}; not {value!r}: its prefix must be from /8 to /24")
    if not found.is_private:
        raise BadRequest(f"{hint}; not {value!r}: a public range would hide real addresses from the containers")
    return found


def lan_address(url: str) -> str:
    """The IPv4 address of a node's URL, or "" when it has none other nodes could route to (loopback, a name)."""
    try:
        host = urlsplit(url if "://" in url else f"http://{url}").hostname or ""
        found = ipaddress.ip_address(host)
    except ValueError:
        return ""
    return str(found) if isinstance(found, ipaddress.IPv4Address) and not found.is_loopback else ""


def allot(cidr: ipaddress.IPv4Network, taken: Iterable[str]) -> str:
    """The lowest /24 of the range that no node has, or "" when every one is taken."""
    used = set(taken)
    return next((str(s) for s in cidr.subnets(new_prefix=24) if str(s) not in used), "")


def endpoints(tasks: Iterable[Task], jobs: dict[str, Job], node_state: Callable[[str], str]) -> list[dict]:
    """Every task to run that has a running container with a cluster address: its job, stack, service (the job's
    name within its stack) and whether it takes traffic (serving, on a node that is not down)."""
    out = []
    for task in tasks:
        obs = task.current
        if task.desired is not Desired.RUN or obs is None or obs.state is not State.RUNNING or not obs.address:
            continue
        job = jobs.get(task.job)
        out.append(
            {
                "task": task.id,
                "name": task.name,
                "job": task.job,
                "stack": job.stack if job else "",
                "service": job.service if job else task.job,
                "node": task.node,
                "address": obs.address,
                "healthy": serving(task) and node_state(task.node) == "ready",
            }
        )
    return sorted(out, key=lambda e: (e["job"], e["task"]))


def holders(tasks: Iterable[Task], jobs: dict[str, Job]) -> dict[str, TaskSpec]:
    """Who holds published ports now: every job not stopped (by name, with its spec) and every task of no job that
    is desired to run (by id)."""
    found: dict[str, TaskSpec] = {name: job.spec for name, job in jobs.items() if not job.stopped}
    for task in tasks:
        if not task.job and task.desired is Desired.RUN:
            found[task.id] = task.spec
    return found


def ingress_entries(held: dict[str, TaskSpec]) -> list[dict]:
    """The routing mesh's ports: {"port", "protocol", "target", "job"} (job: the job's name, or the lone task's id)."""
    out = [
        {"port": p.host, "protocol": p.protocol, "target": p.container, "job": owner}
        for owner, spec in held.items()
        for p in spec.ingress_ports
    ]
    return sorted(out, key=lambda e: (e["port"], e["protocol"], e["job"]))


def port_conflict(spec: TaskSpec, owner: str, held: dict[str, TaskSpec]) -> str:
    """Why `spec` (of job or task `owner`) may not publish its ports, or "": an ingress port is the cluster's, so no
    other job may publish it, in either mode, and no job may take a port another publishes by the mesh."""
    mine_ingress = {(p.host, p.protocol) for p in spec.ingress_ports}
    mine_host = set(spec.fixed_host_ports)
    for other, theirs in sorted(held.items()):
        if other == owner:
            continue
        their_ingress = {(p.host, p.protocol) for p in theirs.ingress_ports}
        clash = sorted((mine_ingress & (their_ingress | set(theirs.fixed_host_ports))) | (mine_host & their_ingress))
        if clash:
            port, protocol = clash[0]
            return (
                f"port {port}/{protocol} is already published by {other} "
                f"({'on every node, by the routing mesh' if (port, protocol) in their_ingress else 'on its node'}): "
                f"pick another port, or stop {other} first"
            )
    return ""


class ManagerNetwork(ManagerParts):
    monotonic: Callable[[], float]
    _dispatch: Callable | None
    _report_start: dict[str, float]
    _mark: Callable

    cidr: ipaddress.IPv4Network | None
    subnets: dict[str, str]  # node -> its subnet (the store's "subnets")

    def _load_network(self, cidr) -> None:
        self.cidr = parse_cidr(cidr)
        self.subnets = {}
        self._net_version = int(self.clock() * 1000)  # a restarted manager's versions are all new
        self._net_table: tuple[int, list[dict], list[dict], list[dict]] | None = None  # the table last versioned
        self._net_dirty = True
        self._net_held: dict[str, tuple] = {}  # node -> (version, subnet) its latest report shows
        self._net_outbox = Outbox(self.monotonic)
        self._draining: dict[str, tuple[int, float]] = {}  # task -> (table version without it, since when)
        for data in self.store.values(KIND):
            if isinstance(data, dict) and isinstance(data.get("node"), str) and isinstance(data.get("subnet"), str):
                self.subnets[data["node"]] = data["subnet"]

    def _net_changed(self) -> None:
        """Something the table is made of may have changed (a task, a node): it is compared at the next flush."""
        self._net_dirty = True

    def _allot_subnet(self, node: Node) -> None:
        """Give a node its subnet when it has none that fits (lock held). Reached at no routable address: none."""
        if self.cidr is None:
            return
        have = self.subnets.get(node.name, "")
        if have and ipaddress.ip_network(have).subnet_of(self.cidr):  # type: ignore[arg-type]
            return
        if not lan_address(node.address):
            return
        subnet = allot(self.cidr, (s for n, s in self.subnets.items() if n != node.name))
        if not subnet:
            log.warning("node %s gets no subnet: every /24 of %s is taken (widen --cluster-cidr)", node.name, self.cidr)
            return
        self.store.put(KIND, node.name, {"node": node.name, "subnet": subnet})
        self.subnets[node.name] = subnet
        self._net_dirty = True
        log.info("node %s: cluster subnet %s", node.name, subnet)

    def _free_subnet(self, name: str) -> None:
        if self.subnets.pop(name, None) is not None:
            self.store.delete(KIND, name)
        self._net_held.pop(name, None)
        self._net_dirty = True

    def _heard_network(self, name: str, stats: dict) -> None:
        """What a node's poll answer says of its network: the table version and subnet it holds (lock held). The
        first report that shows the subnet opens its assignments (`_network_ready`)."""
        seen = stats.get("network")
        if not isinstance(seen, dict):
            seen = {}
        held = (seen.get("version"), seen.get("subnet") or "")
        if self._net_held.get(name) != held:
            opened = not self._network_ready(name)
            self._net_held[name] = held
            if opened and self._network_ready(name):
                self._mark(name, None)

    def _network_ready(self, name: str) -> bool:
        """Whether tasks may be sent to the node: it has no subnet, or its worker holds a table that gives it one."""
        subnet = self.subnets.get(name, "") if self.cidr is not None else ""
        return not subnet or self._net_held.get(name, (None, ""))[1] == subnet

    def _ports_free(self, spec: TaskSpec, owner: str) -> None:
        """409 when `spec` would publish a port another job holds (cluster-wide for ingress ports). Lock held."""
        why = port_conflict(spec, owner, holders(self.tasks.values(), self.jobs))
        if why:
            raise Conflict(why)

    def network_table(self, node: str) -> dict:
        """What `node` is sent (lock held): see cube.worker.network.Table."""
        version, nodes, found, ingress = self._net_current()
        return {
            "version": version,
            "node": node,
            "cidr": str(self.cidr),
            "nodes": nodes,
            "endpoints": found,
            "ingress": ingress,
        }

    def _net_current(self) -> tuple[int, list[dict], list[dict], list[dict]]:
        """The table's version, nodes, endpoints and ingress ports; a new version when they changed since."""
        if self._net_dirty or self._net_table is None:
            self._net_dirty = False
            nodes = [
                {"name": n.name, "address": lan_address(n.address), "subnet": self.subnets.get(n.name, "")}
                for n in sorted(self.nodes.values(), key=lambda n: n.name)
            ]
            found = endpoints(self.tasks.values(), self.jobs, lambda n: self.nodes[n].state if n in self.nodes else "")
            ingress = ingress_entries(holders(self.tasks.values(), self.jobs))
            if self._net_table is None or (nodes, found, ingress) != self._net_table[1:]:
                self._net_version += 1
                if self._net_table is not None:
                    self._drain(self._net_table[2], found)
                self._net_table = (self._net_version, nodes, found, ingress)
        return self._net_table

    def _drain(self, before: list[dict], after: list[dict]) -> None:
        """Replicas that took traffic and no longer do (stopped, replaced by a rollout, unhealthy) drain: their stop
        waits until every node follows a table without them (`_stop_waits`), so no new connection goes to a
        container that is going away."""
        now = self.monotonic()
        taking = {e["task"] for e in after if e["healthy"]}
        for entry in before:
            if entry["healthy"] and entry["task"] not in taking:
                self._draining[entry["task"]] = (self._net_version, now)

    def _stop_waits(self, task_id: str) -> bool:
        """Whether the stop of `task_id` waits for the nodes to drop it from their rules (lock held): until each
        ready node with a subnet reports a table at least as new as the first without it, DRAIN_MOST seconds at
        most (a node that does not answer must not keep a stopped task running)."""
        if self.cidr is None:
            return False
        self._net_current()  # a replica the table just lost starts draining here, before its stop is first sent
        if task_id not in self._draining:
            return False
        version, since = self._draining[task_id]
        lagging = [
            name
            for name, node in self.nodes.items()
            if node.state == "ready"
            and self.subnets.get(name)
            and (self._net_held.get(name, (None,))[0] or 0) < version
        ]
        if lagging and self.monotonic() - since < DRAIN_MOST:
            return True
        del self._draining[task_id]
        return False

    def _draining_nodes(self) -> set[str]:
        """The nodes whose diff may hold a draining stop (lock held): looked at again on every tick. Entries past
        DRAIN_MOST go (a replica that stopped taking traffic without being stopped leaves one behind)."""
        now = self.monotonic()
        for task_id, (_, since) in list(self._draining.items()):
            if now - since >= DRAIN_MOST + 1.0:
                del self._draining[task_id]
        return {t.node for i in self._draining if (t := self.tasks.get(i)) is not None and t.node}

    def _network_due(self, reported: Iterable[str]) -> list[tuple]:
        """The table deliveries due now, for every node that reported and is not down (lock held)."""
        if self.cidr is None or not self.subnets:
            return []
        version = self._net_current()[0]
        due = []
        for name in reported:
            node = self.nodes.get(name)
            if node is None or node.state == "down":
                continue
            wanted = set() if self._net_held.get(name, (None,))[0] == version else {("network", "", version)}
            due += self._net_outbox.due(name, wanted, self._report_start.get(name, float("-inf")))
        return due

    def _deliver_network(self, item: tuple) -> None:
        """Send a node the table (the current one: a newer version than the item's is as good)."""
        name = item[0]
        with self._lock:
            node = self.nodes.get(name)
            body = self.network_table(name) if node is not None else None
        ok = False
        try:
            if node is not None and self._dispatch is not None and body is not None:
                self._dispatch(node.address, "PUT", "/network", body, None)
                ok = True
        except CubeError as error:
            log.warning("network table to %s failed: %s", name, error.message)
        finally:
            with self._lock:
                self._net_outbox.done(name, item[1:], ok)
