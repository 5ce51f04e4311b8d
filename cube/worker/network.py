"""The node's part of the cluster network (host-gw, as flannel's backend of that name: no encapsulation, every node
on one LAN). The manager gives each node a /24 of the cluster range and sends every worker the table of nodes
(name, LAN address, subnet) and of endpoints (each task's cluster address); this module decides what the node's
kernel and engine must hold for it, and converges them by a pure diff, re-run whenever the table changes and every
CHECK_EVERY seconds (a worker restart, a flushed chain, a route someone deleted: all repaired the same way):

- a Docker bridge network `cube` (bridge `cube0`) with the node's subnet, the gateway its first address; Docker's own
  masquerading is off on it, so traffic between nodes keeps the container's address;
- for every other node, `ip route replace SUBNET via ADDRESS proto 210`, and no other route of protocol 210 (stale
  ones, of nodes removed or moved, are deleted; routes of other protocols are never touched);
- iptables chains of Cube's own, written whole with `iptables-restore --noflush` (a chain's declaration flushes it,
  so one restore replaces it atomically, as kube-proxy does): CUBE-FORWARD (jumped to from Docker's DOCKER-USER: Docker
  drops forwarded traffic into its bridges otherwise) accepts traffic between cluster subnets; CUBE-POSTROUTING (from
  nat POSTROUTING) masquerades only what leaves the cluster range. Each chain ends with a rule whose comment carries
  the hash of the chain's wanted content, so "is it as wanted" is one `iptables -S` per chain.

Why `ip` and `iptables-restore` rather than a library: pyroute2 would cover routes only (not iptables rules), and
both programs are on every Linux that runs Docker (Docker itself drives iptables the same way). The worker does
none of this when its engine is not in its own network namespace (a worker in a container, or two workers on one
engine): the engine's default bridge must be an interface of ours, or the node takes part in names only.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cube.core.errors import CubeError, InvalidSpec
from cube.core.model import Fields
from cube.store import Store
from cube.worker.mesh import INGRESS, MARK_BIT, mesh_chains
from cube.worker.runtime import NETWORK

log = logging.getLogger("cube.network")
BRIDGE = "cube0"
CHECK_EVERY = 10.0  # seconds between two checks of routes and rules when nothing changed
KIND = "network"  # the worker's store: the table it was last given (applied again after a restart)


@dataclass(frozen=True)
class Peer:
    name: str
    address: str  # the node's LAN address (where the manager reaches it)
    subnet: str  # "" when it has none (reached at a loopback address, or over its range)


@dataclass(frozen=True)
class Endpoint:
    """One task of the cluster with an address on the cluster network."""

    task: str
    job: str
    stack: str
    service: str
    node: str
    address: str
    healthy: bool


@dataclass(frozen=True)
class Table:
    """What the manager sends (PUT /network): its version (the worker reports it back), the recipient's own name,
    the cluster range, the nodes and the endpoints."""

    version: int
    node: str
    cidr: str
    peers: tuple[Peer, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()
    ingress: tuple[dict, ...] = ()  # {"port", "protocol", "target", "job"}: published by the mesh on every node
    raw: dict = field(default_factory=dict, compare=False)

    @classmethod
    def from_dict(cls, data) -> "Table":
        get = Fields("network table", data)
        cidr = _network(get.text("cidr"), "network table: cidr")
        peers = []
        for item in _items(data.get("nodes"), "nodes"):
            one = Fields("network table: nodes[]", item)
            subnet = one.text("subnet")
            if subnet:
                _network(subnet, "network table: nodes[].subnet")
            peers.append(Peer(one.text("name"), one.address("address"), subnet))
        endpoints = []
        for item in _items(data.get("endpoints"), "endpoints"):
            one = Fields("network table: endpoints[]", item)
            endpoints.append(
                Endpoint(
                    one.text("task"),
                    one.text("job"),
                    one.text("stack"),
                    one.text("service"),
                    one.text("node"),
                    one.address("address"),
                    item.get("healthy") is True,
                )
            )
        ingress = []
        for item in _items(data.get("ingress"), "ingress"):
            one = Fields("network table: ingress[]", item)
            protocol = one.text("protocol", "tcp")
            if protocol not in ("tcp", "udp"):
                raise InvalidSpec(f"network table: ingress[].protocol must be tcp or udp, not {protocol!r}")
            ingress.append(
                {
                    "port": one.whole("port", low=1),
                    "protocol": protocol,
                    "target": one.whole("target", low=1),
                    "job": one.text("job"),
                }
            )
        return cls(
            get.whole("version"),
            get.text("node"),
            str(cidr),
            tuple(peers),
            tuple(endpoints),
            tuple(ingress),
            dict(data),
        )

    @property
    def subnet(self) -> str:
        return next((p.subnet for p in self.peers if p.name == self.node), "")

    @property
    def gateway(self) -> str:
        return gateway(self.subnet) if self.subnet else ""


def gateway(subnet: str) -> str:
    """The first address of a subnet: the bridge's, the containers' gateway and DNS server."""
    return str(next(ipaddress.ip_network(subnet).hosts()))


def _network(value: str, what: str) -> ipaddress.IPv4Network:
    try:
        found = ipaddress.ip_network(value)
    except ValueError:
        raise InvalidSpec(f"{what} must be an IPv4 range such as 10.210.0.0/16, not {value!r}") from None
    if not isinstance(found, ipaddress.IPv4Network):
        raise InvalidSpec(f"{what} must be an IPv4 range, not {value!r}")
    return found


def _items(value, what: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > 100_000:
        raise InvalidSpec(f"network table: {what} must be a list")
    return value


# ---- what should be: pure functions of the table -------------------------------------------------------------


def wanted_routes(table: Table) -> dict[str, str]:
    """subnet -> LAN address of its node, for every other node with a subnet."""
    return {p.subnet: p.address for p in table.peers if p.name != table.node and p.subnet and p.address}


def route_plan(wanted: dict[str, str], present: dict[str, str]) -> tuple[list[tuple[str, str]], list[str]]:
    """(routes to replace, destinations to delete): the wanted routes missing or via another address, and every
    route of ours that is not wanted."""
    replace = sorted((dest, via) for dest, via in wanted.items() if present.get(dest) != via)
    delete = sorted(dest for dest in present if dest not in wanted)
    return replace, delete


# Where Cube's chains are entered: (table, built-in or Docker chain, Cube's chain), each jump first in its parent.
JUMPS = (
    ("filter", "DOCKER-USER", "CUBE-FORWARD"),
    ("nat", "POSTROUTING", "CUBE-POSTROUTING"),
    ("nat", "PREROUTING", INGRESS),
    ("nat", "OUTPUT", INGRESS),
)


def wanted_chains(table: Table) -> dict[tuple, list[str]]:
    """The rules of each chain of Cube's (the routing mesh's too, cube.worker.mesh), in `iptables -S` form without
    `-A CHAIN`, each ending with the rule that carries the digest of the others."""
    cidr, subnet = table.cidr, table.subnet
    chains: dict[tuple, list[str]] = {("filter", "CUBE-FORWARD"): [], ("nat", "CUBE-POSTROUTING"): []}
    if subnet:
        chains[("filter", "CUBE-FORWARD")] = [
            # Docker's FORWARD drops new connections into its bridges that no published port explains.
            f"-s {cidr} -d {cidr} -j ACCEPT",
            # The mesh's connections (marked by their first packet) and the rest of them.
            f"-m mark --mark {MARK_BIT}/{MARK_BIT} -j ACCEPT",
            "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        ]
        chains[("nat", "CUBE-POSTROUTING")] = [
            # The mesh's connections leave with this node's address, so their replies come back through it.
            f"-m mark --mark {MARK_BIT}/{MARK_BIT} -j MASQUERADE",
            # Within the cluster range a container keeps its address; out of it, the node's address stands for it.
            f"-s {subnet} -d {cidr} -j RETURN",
            f"-s {subnet} ! -o {BRIDGE} -j MASQUERADE",
        ]
        chains.update(mesh_chains(table))
    else:
        chains[("nat", INGRESS)] = []
    return {key: [*rules, f"-m comment --comment cube:{_digest(rules)} -j RETURN"] for key, rules in chains.items()}


def _digest(rules: list[str]) -> str:
    return hashlib.sha256("\n".join(rules).encode()).hexdigest()[:16]


def restore_text(chains: dict[tuple, list[str]], remove: tuple = ()) -> str:
    """One `iptables-restore --noflush` input that writes the given chains whole and deletes the chains `remove`
    ((table, chain), no longer referenced once the others are written), leaving every other chain alone."""
    out = []
    for name in sorted({t for t, _ in chains} | {t for t, _ in remove}):
        out.append(f"*{name}")
        mine = sorted(c for t, c in chains if t == name)
        gone = sorted(c for t, c in remove if t == name)
        out += [f":{chain} - [0:0]" for chain in mine + gone]
        for chain in mine:
            out += [f"-A {chain} {rule}" for rule in chains[(name, chain)]]
        out += [f"-X {chain}" for chain in gone]
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def chains_plan(wanted: dict[tuple, list[str]], present: dict[tuple, list[str] | None]) -> dict[tuple, list[str]]:
    """The chains whose content differs from the wanted (missing, or without the wanted last rule, or another
    number of rules)."""
    stale = {}
    for key, rules in wanted.items():
        have = present.get(key)
        if have is None or len(have) != len(rules) or not have or have[-1].split("cube:")[-1] != _tail(rules):
            stale[key] = rules
    return stale


def _tail(rules: list[str]) -> str:
    return rules[-1].split("cube:")[-1]


def jump_plan(parent_rules: list[str], chain: str) -> tuple[bool, int]:
    """(insert our jump first, how many later copies of it to delete) for a parent chain's rules (`-A ...` lines)."""
    jumps = [i for i, rule in enumerate(parent_rules) if rule.endswith(f"-j {chain}") and " -m " not in rule]
    first = bool(jumps) and jumps[0] == 0
    return (not first, len(jumps) - (1 if first else 0))


# ---- the node's network, converged -----------------------------------------------------------------------------


class NodeNetwork:
    """Holds the table the manager last sent (persisted: a restarted worker applies it again before the manager
    says anything) and converges the node on it (`converge`, from the worker's loop). `host` None: nothing of the
    machine is touched (tests on the fake runtime, `cube dev`): the table is only kept and reported."""

    def __init__(
        self, runtime, store: Store, host=None, monotonic: Callable[[], float] | None = None, dns: bool = False
    ):
        """`dns`: answer service names on the gateway (cube.worker.dns) once the network is ready."""
        import time

        self.runtime = runtime
        self.store = store
        self.host = host
        self.monotonic = monotonic or time.monotonic
        self.table: Table | None = None
        self.error = ""
        self.state = "none"  # none (no table yet), ready, off (this node takes no part), error
        self.applied = ""  # the digest of what was last applied whole
        # The version of the table this node's rules and routes follow (what it reports): the manager waits for it
        # before stopping a replica the table no longer sends traffic to (cube.manager.network, draining).
        self.in_force: int | None = None
        self.tried: int | None = None  # the version of the table last converged on, well or not
        self._next = float("-inf")
        self.dns = dns
        self.dns_error = ""
        self._nameserver: Any = None  # cube.worker.dns.NameServer, once serving
        data = store.get(KIND, "table")
        if data:
            try:
                self.table = Table.from_dict(data)
            except InvalidSpec as error:
                log.warning("the network table kept in the store is unreadable (%s): waiting for the manager's", error)

    def update(self, data) -> Table:
        """A table from the manager: checked, kept, converged on by the next round."""
        table = Table.from_dict(data)
        self.store.put(KIND, "table", table.raw)
        self.table = table
        self._next = float("-inf")
        return table

    def attachment(self) -> tuple[str, str] | None:
        """(network, DNS server) a container joins, or None (no cluster network here yet)."""
        if self.state != "ready" or self.table is None or not self.table.subnet:
            return None
        return NETWORK, self.table.gateway

    def status(self) -> dict:
        table = self.table
        return {
            "version": self.in_force,
            # Shown once this table was tried: the manager sends tasks only then (on the network when it is ready).
            "subnet": table.subnet if table and self.tried == table.version else "",
            "state": self.state,
            "error": self.error or self.dns_error,
        }

    def converge(self, force: bool = False) -> bool:
        """One round, when due. Returns whether the status changed."""
        if not force and self.monotonic() < self._next:
            return False
        self._next = self.monotonic() + CHECK_EVERY
        before, before_tried = (self.state, self.error, self.in_force), self.tried
        table = self.table
        if table is None:
            return False
        self.tried = table.version
        if self.host is None or not table.subnet:
            self.state, self.error = "off", "" if table.subnet else "no subnet for this node"
            self.in_force = table.version
            return before != (self.state, self.error, self.in_force)
        try:
            self._converge(table)
            self.state, self.error = "ready", ""
            self.in_force = table.version
            if self.dns:
                self._serve_dns(table.gateway)
        except CubeError as error:
            if error.message != self.error:
                log.warning("cluster network: %s", error.message)
            self.state = "off" if isinstance(error, _Declined) else "error"
            self.error = error.message
            if isinstance(error, _Declined):  # the node takes no part: no rules of its own to wait for
                self.in_force = table.version
        return before != (self.state, self.error, self.in_force) or before_tried != self.tried

    def _serve_dns(self, address: str) -> None:
        """The name server on the gateway (started again when the gateway moves); a refusal is reported."""
        if self._nameserver is not None and self._nameserver.address == address:
            return
        self.close()
        from cube.worker.dns import NameServer  # dnslib: only a worker with a cluster network needs it

        try:
            self._nameserver = NameServer(lambda: self.table, address)
            self.dns_error = ""
            log.info("answering service names on %s:53", address)
        except OSError as error:
            self.dns_error = f"cannot answer names on {address}:53: {error.strerror or error}"
            log.warning("%s", self.dns_error)

    def close(self) -> None:
        if self._nameserver is not None:
            self._nameserver.close()
            self._nameserver = None

    def _converge(self, table: Table) -> None:
        host = self.host
        interface, address = self.runtime.bridge()
        if not host.has_address(interface, address):
            raise _Declined(
                f"the container engine's bridge {interface} ({address}) is not in this worker's network namespace: "
                f"this node takes no part in the cluster network (run the worker beside its engine)"
            )
        self.runtime.ensure_network(NETWORK, table.subnet, table.gateway, BRIDGE)
        host.sysctl("net.ipv4.ip_forward", "1")
        replace, delete = route_plan(wanted_routes(table), host.routes())
        for dest, via in replace:
            host.replace_route(dest, via)
        for dest in delete:
            host.delete_route(dest)
        host.sysctl("net.ipv4.conf.all.route_localnet", "1")  # the mesh on 127.0.0.1 (cube.worker.mesh)
        wanted = wanted_chains(table)
        stale = chains_plan(wanted, {key: host.chain(*key) for key in wanted})
        unused = tuple((t, c) for t in ("filter", "nat") for c in host.names(t) if (t, c) not in wanted)
        if stale or unused:
            host.restore(restore_text(stale, unused))
        for name, parent, chain in JUMPS:
            insert, extra = jump_plan(host.parent(name, parent), chain)
            for _ in range(extra):
                host.delete_jump(name, parent, chain)
            if insert:
                host.insert_jump(name, parent, chain)
        if replace or delete or stale:
            log.info(
                "cluster network %s: %d route(s) set, %d removed, %d chain(s) written",
                table.subnet,
                len(replace),
                len(delete),
                len(stale),
            )


class _Declined(CubeError):
    """The node takes no part (its engine is elsewhere)."""
