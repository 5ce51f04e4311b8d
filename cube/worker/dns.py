"""Service names, answered by each worker on its cluster network's gateway (port 53, UDP and TCP), the DNS server
every container of the node is given; the only module that imports dnslib. It decides what a name means:

- from inside a task of stack S, `SERVICE` and `SERVICE.S` are the job `S-SERVICE`; `JOB` is any job by its name
  (a job of no stack, or another stack's by its full name); `SERVICE.STACK` works from anywhere;
- the answer is the cluster addresses of the job's tasks that take traffic (running, not failing their health
  check, on a node that is not down), wherever they run, with a TTL of TTL seconds: a caller that resolves again finds
  a moved service without being restarted. A name of the cluster with no task taking traffic is NXDOMAIN;
- any other name is passed to the node's own resolvers (/etc/resolv.conf), each tried for FORWARD_TIMEOUT; none
  answering is NXDOMAIN, at once when there is none to ask.

The caller's stack comes from the query's source address: the endpoint table names every task's address. Docker's
embedded DNS (127.0.0.11 in containers on a user-defined network) passes names it does not know to this server
from inside the container's namespace, so the source is the container's own address.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from dnslib import QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import DNSLogger, DNSServer

from cube.worker.network import Table

log = logging.getLogger("cube.dns")
TTL = 5
FORWARD_TIMEOUT = 1.5  # seconds per upstream resolver


def lookup(table: Table | None, client: str, name: str) -> list[str] | None:
    """The addresses `name` stands for when asked by `client` (a container's address), [] for a name of the
    cluster that has no task taking traffic now, None for a name that is not the cluster's."""
    if table is None:
        return None
    name = name.rstrip(".").lower()
    jobs: dict[str, list] = {}
    stack = ""
    for e in table.endpoints:
        jobs.setdefault(e.job, []).append(e)
        if e.address == client:
            stack = e.stack
    candidates = []
    if "." in name:
        service, _, of = name.partition(".")
        if "." not in of:
            candidates.append(f"{of}-{service}")
    elif stack:
        candidates.append(f"{stack}-{name}")
    if "." not in name:
        candidates.append(name)
    for job in candidates:
        if job in jobs:
            return sorted({e.address for e in jobs[job] if e.healthy}, key=_numeric)
    return None


def _numeric(address: str) -> tuple[int, ...]:
    return tuple(int(p) for p in address.split("."))


def upstreams(path: str = "/etc/resolv.conf") -> list[str]:
    """The node's own resolvers (`nameserver` lines); [] when it has none or the file cannot be read."""
    try:
        with open(path) as handle:
            return [line.split()[1] for line in handle if line.startswith("nameserver") and len(line.split()) > 1]
    except OSError:
        return []


class _Resolver:
    def __init__(self, table: Callable[[], Table | None], forward: Callable[[], list[str]]):
        self.table = table
        self.forward = forward

    def resolve(self, request, handler):
        reply = request.reply()
        question = request.q
        name = str(question.qname)
        found = lookup(self.table(), handler.client_address[0], name)
        if found is None:
            return self._forward(request, reply)
        if not found:
            reply.header.rcode = RCODE.NXDOMAIN
        elif question.qtype in (QTYPE.A, QTYPE.ANY):
            for address in found:
                reply.add_answer(RR(question.qname, QTYPE.A, rdata=A(address), ttl=TTL))
        return reply  # AAAA and others of a cluster name: no data (NOERROR), so clients use the A records

    def _forward(self, request, reply):
        for server in self.forward():
            try:
                return DNSRecord.parse(request.send(server, 53, timeout=FORWARD_TIMEOUT))
            except Exception as error:  # noqa: BLE001 - a resolver down, slow or answering garbage: try the next
                log.debug("resolver %s: %s", server, error)
        reply.header.rcode = RCODE.NXDOMAIN
        return reply


_QUIET = "-recv,-send,-request,-reply,-truncated,-error,-data"


class NameServer:
    """The node's DNS server on (address, port), UDP and TCP, answering from `table()` (read at each query)."""

    def __init__(
        self,
        table: Callable[[], Table | None],
        address: str,
        port: int = 53,
        forward: Callable[[], list[str]] = upstreams,
    ):
        self.address = address
        resolver = _Resolver(table, forward)
        logger = DNSLogger(_QUIET, prefix=False)
        udp = DNSServer(resolver, address, port, tcp=False, logger=logger)
        self.port = udp.server.server_address[1]  # port 0 (tests): TCP on the port UDP was given
        try:
            tcp = DNSServer(resolver, address, self.port, tcp=True, logger=logger)
        except OSError:
            udp.server.server_close()
            raise
        self._servers = [udp, tcp]
        self._threads: list[threading.Thread] = []
        for server in self._servers:
            thread = threading.Thread(target=server.server.serve_forever, name="cube-dns", daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        for server in self._servers:
            server.server.shutdown()
            server.server.server_close()


def query(server: str, port: int, name: str, qtype: str = "A", tcp: bool = False, timeout: float = 3.0) -> DNSRecord:
    """Ask `server` (tests, `cube doctor`)."""
    return DNSRecord.parse(DNSRecord.question(name, qtype).send(server, port, tcp=tcp, timeout=timeout))
