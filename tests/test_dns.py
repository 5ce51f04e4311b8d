"""Service names (issue 12): what a name means to whom (`lookup`, pure), and the worker's name server on loopback
(UDP and TCP, a short TTL, names of the cluster with no task taking traffic, forwarding to the node's resolvers and
NXDOMAIN when none answers). Everything binds 127.0.0.1 only."""

import socket

import pytest
from dnslib import RCODE

from cube.worker.dns import TTL, NameServer, lookup, query, upstreams
from cube.worker.network import Endpoint, Table


def table(*rows) -> Table:
    return Table(1, "n1", "10.210.0.0/16", (), tuple(Endpoint(*row) for row in rows))


TABLE = table(
    ("t1", "shop-db", "shop", "db", "n1", "10.210.0.2", True),
    ("t2", "shop-db", "shop", "db", "n2", "10.210.1.2", True),
    ("t3", "shop-db", "shop", "db", "n2", "10.210.1.3", False),  # not taking traffic
    ("t4", "shop-web", "shop", "web", "n1", "10.210.0.3", True),
    ("t5", "db", "", "db", "n1", "10.210.0.4", True),  # a job of its own, named db
    ("t6", "blog-web", "blog", "web", "n2", "10.210.1.4", True),
    ("t7", "cache", "", "cache", "n2", "10.210.1.5", False),
)


def test_a_name_means_the_service_of_the_callers_stack_first_then_any_job():
    web = "10.210.0.3"  # a task of stack shop
    assert lookup(TABLE, web, "db") == ["10.210.0.2", "10.210.1.2"], "its stack's db, healthy replicas only"
    assert lookup(TABLE, web, "db.shop.") == ["10.210.0.2", "10.210.1.2"]
    assert lookup(TABLE, web, "web.blog") == ["10.210.1.4"], "another stack's service by SERVICE.STACK"
    assert lookup(TABLE, web, "blog-web") == ["10.210.1.4"], "any job by its name"
    assert lookup(TABLE, "10.210.1.4", "db") == ["10.210.0.4"], "stack blog has no db: the job named db"
    assert lookup(TABLE, "10.210.9.9", "db") == ["10.210.0.4"], "a caller of no stack"
    assert lookup(TABLE, web, "cache") == [], "a job of the cluster with no replica taking traffic"
    assert lookup(TABLE, web, "example.org") is None and lookup(TABLE, web, "nothing") is None
    assert lookup(None, web, "db") is None


def test_upstreams_are_the_nodes_resolvers(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("# made by hand\nsearch lan\nnameserver 192.168.1.1\nnameserver 9.9.9.9\noptions ndots:1\n")
    assert upstreams(str(conf)) == ["192.168.1.1", "9.9.9.9"]
    assert upstreams(str(tmp_path / "missing")) == []


@pytest.fixture
def upstream():
    """A resolver on loopback that knows one name (a node's own resolver)."""
    from dnslib import QTYPE, RR, A

    class Known:
        def resolve(self, request, handler):
            reply = request.reply()
            if str(request.q.qname) == "printer.lan.":
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A("192.168.1.50"), ttl=300))
            else:
                reply.header.rcode = RCODE.NXDOMAIN
            return reply

    from dnslib.server import DNSLogger, DNSServer

    server = DNSServer(Known(), "127.0.0.1", 0, logger=DNSLogger("-recv,-send,-request,-reply,-data", False))
    server.start_thread()
    yield server.server.server_address[1]
    server.stop()


@pytest.fixture
def ports(monkeypatch):
    """Where each upstream "resolver" at 127.0.0.1 really listens: the server forwards to port 53, which a test may not
    bind; `ports["127.0.0.1"] = N` sends those queries to N instead."""
    import cube.worker.dns as dns

    real_send = dns.DNSRecord.send
    mapping: dict[str, int] = {}

    def send(self, host, port=53, tcp=False, timeout=None, ipv6=False):
        return real_send(self, host, mapping.get(host, port) if port == 53 else port, tcp=tcp, timeout=timeout)

    monkeypatch.setattr(dns.DNSRecord, "send", send)
    return mapping


def test_the_name_server_answers_over_udp_and_tcp_with_a_short_ttl_and_forwards_the_rest(upstream, ports):
    ports["127.0.0.1"] = upstream
    current = {"table": TABLE}
    server = NameServer(lambda: current["table"], "127.0.0.1", 0, forward=lambda: ["127.0.0.1"])
    try:
        for tcp in (False, True):
            answer = query("127.0.0.1", server.port, "shop-db", tcp=tcp)
            assert sorted(str(r.rdata) for r in answer.rr) == ["10.210.0.2", "10.210.1.2"]
            assert {r.ttl for r in answer.rr} == {TTL}
        assert query("127.0.0.1", server.port, "cache").header.rcode == RCODE.NXDOMAIN
        assert query("127.0.0.1", server.port, "shop-db", "AAAA").rr == []
        forwarded = query("127.0.0.1", server.port, "printer.lan")
        assert [str(r.rdata) for r in forwarded.rr] == ["192.168.1.50"]
        assert query("127.0.0.1", server.port, "nowhere.lan").header.rcode == RCODE.NXDOMAIN
        # The service moves: the next query (after the TTL, a caller asks again) has the new address.
        current["table"] = table(("t1", "shop-db", "shop", "db", "n3", "10.210.2.7", True))
        assert [str(r.rdata) for r in query("127.0.0.1", server.port, "shop-db").rr] == ["10.210.2.7"]
    finally:
        server.close()


def test_no_resolver_answering_or_none_configured_is_nxdomain(ports):
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never answers
    silent.bind(("127.0.0.1", 0))
    ports["127.0.0.1"] = silent.getsockname()[1]
    servers = [NameServer(lambda: TABLE, "127.0.0.1", 0, forward=f) for f in (lambda: [], lambda: ["127.0.0.1"])]
    try:
        for server in servers:
            assert query("127.0.0.1", server.port, "example.org").header.rcode == RCODE.NXDOMAIN
    finally:
        for server in servers:
            server.close()
        silent.close()
