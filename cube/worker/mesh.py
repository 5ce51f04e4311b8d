"""The routing mesh (issue 12), as kube-proxy's iptables mode does it: an ingress port (a published port of mode
ingress) answers on every node, whichever node runs its replicas. This module decides the node's nat rules for it,
as a pure function of the network table (cube.worker.network writes them with the rest of Cube's chains):

- CUBE-INGRESS (jumped to from nat PREROUTING, for traffic arriving, and OUTPUT, for the node's own): a connection to
  a local address of the node on an ingress port goes to that port's chain, CUBE-SVC-<hash>;
- CUBE-SVC-<hash> marks the connection (MARK_BIT: CUBE-POSTROUTING masquerades it, so replies come back through this
  node, which undoes the DNAT; CUBE-FORWARD accepts it past Docker's FORWARD policy) and DNATs it to one of the
  replicas taking traffic (the endpoint table's healthy ones), each with equal chance (`-m statistic --mode random`,
  probability 1/n, then 1/(n-1), ... then the last unconditionally);
- a port with no replica taking traffic has no rule: a new connection is refused at once by the node (nothing listens
  there), never left hanging.

127.0.0.1 works too: the node sets net.ipv4.conf.all.route_localnet=1 (as kube-proxy does for NodePorts on localhost),
without which the kernel drops a loopback-sourced packet routed to another host as a martian.
"""

from __future__ import annotations

import hashlib

MARK_BIT = "0x20000"
INGRESS = "CUBE-INGRESS"


def service_chain(port: int, protocol: str) -> str:
    digest = hashlib.sha256(f"{port}/{protocol}".encode()).hexdigest()[:12].upper()
    return f"CUBE-SVC-{digest}"


def backends(table, entry: dict) -> list[str]:
    """The addresses of the ingress entry's replicas that take traffic (by job name, or task id for a lone task)."""
    owner = entry.get("job")
    return sorted(
        {e.address for e in table.endpoints if e.healthy and (e.job or e.task) == owner},
        key=lambda a: tuple(int(p) for p in a.split(".")),
    )


def mesh_chains(table) -> dict[tuple[str, str], list[str]]:
    """nat CUBE-INGRESS and one CUBE-SVC chain per ingress port that has replicas taking traffic."""
    ingress: list[str] = []
    chains: dict[tuple[str, str], list[str]] = {("nat", INGRESS): ingress}
    for entry in sorted(table.ingress, key=lambda e: (e["port"], e["protocol"])):
        port, protocol, target = entry["port"], entry["protocol"], entry["target"]
        found = backends(table, entry)
        if not found:
            continue
        chain = service_chain(port, protocol)
        ingress.append(f"-p {protocol} -m {protocol} --dport {port} -m addrtype --dst-type LOCAL -j {chain}")
        rules = [f"-j MARK --set-xmark {MARK_BIT}/{MARK_BIT}"]
        for i, address in enumerate(found):
            left = len(found) - i
            pick = f"-m statistic --mode random --probability {1 / left:.5f} " if left > 1 else ""
            rules.append(f"-p {protocol} {pick}-j DNAT --to-destination {address}:{target}")
        chains[("nat", chain)] = rules
    return chains
