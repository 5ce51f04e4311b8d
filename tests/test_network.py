"""The cluster network on the fake runtime (issue 12): each node's subnet, the table every worker is sent and how it
converges (a lost message, a worker restart, a manager restart), the routes and rules a worker wants, and the
endpoint table. Routes and rules land in a MemoryHost per node; tests/test_network_engines.py runs the real ones."""

import pytest
from harness import ClusterHarness

from cube.core.errors import BadRequest, Conflict
from cube.manager.network import allot, lan_address, parse_cidr
from cube.worker.network import (
    Peer,
    Table,
    chains_plan,
    jump_plan,
    restore_text,
    route_plan,
    wanted_chains,
    wanted_routes,
)

CIDR = "10.210.0.0/16"


@pytest.fixture
def c():
    harness = ClusterHarness(["n1", "n2", "n3"], cluster_cidr=CIDR)
    yield harness
    harness.close()


def subnet_of(c, name: str) -> str:
    return c.manager.subnets[name]


def test_cluster_cidr_is_checked_and_says_what_would_do():
    assert str(parse_cidr(CIDR)) == CIDR and parse_cidr("off") is None and parse_cidr(None) is None
    for bad, said in [
        ("10.210.0.0/33", "10.210.0.0/16"),
        ("10.210.0.1/16", "host bits set"),
        ("10.210.0.0/25", "prefix must be from /8 to /24"),
        ("8.8.0.0/16", "public range"),
        ("fd00::/64", "prefix must be"),
        ("banana", "--cluster-cidr must be an IPv4 range"),
    ]:
        with pytest.raises(BadRequest) as caught:
            parse_cidr(bad)
        assert caught.value.status == 400 and said in caught.value.message, caught.value.message


def test_subnets_are_distinct_kept_across_a_manager_restart_and_freed_by_node_rm(c):
    subnets = {name: subnet_of(c, name) for name in ("n1", "n2", "n3")}
    assert subnets == {"n1": "10.210.0.0/24", "n2": "10.210.1.0/24", "n3": "10.210.2.0/24"}
    c.restart_manager()
    assert c.manager.subnets == subnets
    c.kill_worker("n2")
    c.run_for(10)
    assert c.node_state("n2") == "down"
    c.manager.remove_node("n2")
    assert "n2" not in c.manager.subnets
    c.add_node("n4")
    assert subnet_of(c, "n4") == "10.210.1.0/24", "the freed subnet is given again"


def test_a_node_at_a_loopback_address_gets_no_subnet():
    assert lan_address("https://127.0.0.1:5556") == "" and lan_address("https://10.77.0.11:5556") == "10.77.0.11"
    assert lan_address("https://worker.lan:5556") == ""
    assert allot(parse_cidr("10.9.0.0/23"), ["10.9.0.0/24"]) == "10.9.1.0/24"
    assert allot(parse_cidr("10.9.0.0/24"), ["10.9.0.0/24"]) == ""


def test_every_worker_gets_the_table_routes_to_the_others_and_tasks_get_addresses(c):
    job = c.manager.submit_job({"name": "web", "count": 3, "task": {"image": "busybox"}})[0]
    c.settle(6)
    tasks = c.manager.task_views(job=job.name)
    assert [t["state"] for t in tasks] == ["running"] * 3
    for t in tasks:
        assert t["address"].rsplit(".", 1)[0] == subnet_of(c, t["node"]).rsplit(".", 1)[0], t
    for name, host in c.hosts.items():
        others = {subnet_of(c, n): c.addresses[n].split("//")[1].split(":")[0] for n in c.hosts if n != name}
        assert host.routes() == others
        assert host.chain("filter", "CUBE-FORWARD")[0] == f"-s {CIDR} -d {CIDR} -j ACCEPT"
        assert host.chain("filter", "DOCKER-USER")[0] == "-j CUBE-FORWARD"
        assert host.chain("nat", "POSTROUTING") == ["-j CUBE-POSTROUTING"]
        assert host.chain("nat", "PREROUTING") == host.chain("nat", "OUTPUT") == ["-j CUBE-INGRESS"]
        assert host.sysctls["net.ipv4.ip_forward"] == "1"
        table = c.workers[name].network.table
        assert {e.address for e in table.endpoints} == {t["address"] for t in tasks}
        assert c.workers[name].stats()["network"]["state"] == "ready"
    for runtime in c.runtimes.values():  # every container joined the cluster network, with its gateway for DNS
        for cid in runtime.containers:
            network, dns = runtime.attached[cid]
            assert network == "cube" and dns.endswith(".1")


def test_host_network_tasks_stay_off_the_cluster_network(c):
    task = c.submit({"image": "busybox", "network": "host"})
    c.settle(6)
    seen = c.task(task["id"])
    assert seen["state"] == "running" and seen["address"] == ""


def test_a_lost_table_is_sent_again_and_a_restarted_worker_converges_without_duplicates(c):
    c.settle(4)
    version = c.manager.network_table("n1")["version"]
    c.cut.add("n1")
    c.submit({"image": "busybox", "constraints": ["hostname=n2"]})  # a new version, which n1 cannot get now
    c.settle(4)
    assert c.manager.network_table("n1")["version"] > version
    c.cut.discard("n1")
    c.settle(6)
    assert c.workers["n1"].network.table.version == c.manager.network_table("n1")["version"]

    host = c.hosts["n1"]
    host.route_table["10.210.77.0/24"] = "10.99.0.99"  # a stale route of ours (a node removed meanwhile)
    host.chains[("filter", "CUBE-FORWARD")] = []  # someone flushed our chain
    host.insert_jump("filter", "DOCKER-USER", "CUBE-FORWARD")  # and a second jump
    c.kill_worker("n1")
    c.start_worker("n1")  # applies the table it kept before the manager says anything
    c.workers["n1"].tick()
    assert "10.210.77.0/24" not in host.routes() and len(host.routes()) == 2
    assert host.chain("filter", "CUBE-FORWARD")[0].endswith("-j ACCEPT")
    assert host.chain("filter", "DOCKER-USER").count("-j CUBE-FORWARD") == 1
    restores = host.restores
    c.settle(4)
    assert host.restores == restores, "nothing changed: nothing written again"


def test_a_restarted_manager_sends_a_new_version_and_nothing_on_the_nodes_changes(c):
    c.submit({"image": "busybox"})
    c.settle(6)
    before = {name: (h.routes(), dict(h.chains)) for name, h in c.hosts.items()}
    old = c.workers["n1"].network.table.version
    c.restart_manager()
    c.settle(6)
    assert c.workers["n1"].network.table.version != old
    assert c.workers["n1"].network.table.version == c.manager.network_table("n1")["version"]
    assert {name: (h.routes(), dict(h.chains)) for name, h in c.hosts.items()} == before


def test_assignments_wait_until_the_node_holds_its_subnet(c):
    c.settle(2)
    c.add_node("n4")
    c.cut.add("n4")
    task = c.submit({"image": "busybox", "constraints": ["hostname=n4"]})
    c.cut.discard("n4")
    # Its first report shows no table: the assignment waits; the table goes first, then the task.
    c.poll("n4")
    assert c.runtimes["n4"].starts == 0 and c.workers["n4"].network.table is not None
    c.settle(4)
    seen = c.task(task["id"])
    assert seen["state"] == "running" and seen["address"].startswith("10.210.3."), seen


def test_endpoints_name_job_stack_service_and_health_and_follow_a_node_down(c):
    c.manager.submit_job({"name": "shop-db", "stack": "shop", "count": 1, "task": {"image": "busybox"}})
    c.settle(6)
    (row,) = c.manager.network_table("n1")["endpoints"]
    assert (row["job"], row["stack"], row["service"], row["healthy"]) == ("shop-db", "shop", "db", True)
    c.kill_worker(row["node"])

    def no_traffic_to_a_node_down():
        if c.node_state(row["node"]) == "down":
            rows = c.manager.network_table("n1")["endpoints"]
            assert not [r for r in rows if r["node"] == row["node"] and r["healthy"]], rows

    c.run_for(12, check=no_traffic_to_a_node_down)  # rescheduled: running elsewhere, at an address of its subnet
    (moved,) = [r for r in c.manager.network_table("n1")["endpoints"] if r["task"] == row["task"]]
    assert moved["node"] != row["node"] and moved["healthy"] is True
    assert moved["address"].rsplit(".", 1)[0] == subnet_of(c, moved["node"]).rsplit(".", 1)[0]


def test_routes_and_chains_are_pure_diffs():
    table = Table(
        7,
        "a",
        CIDR,
        (Peer("a", "10.0.0.1", "10.210.0.0/24"), Peer("b", "10.0.0.2", "10.210.1.0/24"), Peer("c", "10.0.0.3", "")),
    )
    assert wanted_routes(table) == {"10.210.1.0/24": "10.0.0.2"}
    assert route_plan({"x": "1", "y": "2"}, {"y": "3", "z": "4"}) == ([("x", "1"), ("y", "2")], ["z"])
    chains = wanted_chains(table)
    assert chains_plan(chains, {k: list(v) for k, v in chains.items()}) == {}
    changed = {k: list(v) for k, v in chains.items()}
    changed[("filter", "CUBE-FORWARD")] = changed[("filter", "CUBE-FORWARD")][1:]
    assert list(chains_plan(chains, changed)) == [("filter", "CUBE-FORWARD")]
    text = restore_text(chains)
    assert text.startswith("*filter\n:CUBE-FORWARD - [0:0]\n") and text.count("COMMIT") == 2
    assert "-X CUBE-SVC-OLD\n" in restore_text(chains, (("nat", "CUBE-SVC-OLD"),))
    assert jump_plan(["-A DOCKER-USER -j RETURN"], "CUBE-FORWARD") == (True, 0)
    assert jump_plan(["-A DOCKER-USER -j CUBE-FORWARD", "-A DOCKER-USER -j CUBE-FORWARD"], "CUBE-FORWARD") == (False, 1)


def test_a_table_with_bad_fields_is_refused():
    with pytest.raises(BadRequest):
        Table.from_dict({"version": 1, "node": "a", "cidr": "nonsense"})
    with pytest.raises(BadRequest):
        Table.from_dict({"version": 1, "node": "a", "cidr": CIDR, "nodes": [{"name": "b", "address": "1.2.3"}]})
    assert Conflict.status == 409


def test_ingress_ports_are_unique_in_the_cluster_and_a_conflict_names_the_holder(c):
    c.manager.submit_job({"name": "web", "count": 3, "task": {"image": "busybox", "ports": ["8080:80"]}})
    for clash in (["8080:81"], ["8080:80/host"]):
        with pytest.raises(Conflict) as caught:
            c.manager.submit_job({"name": "other", "count": 1, "task": {"image": "busybox", "ports": clash}})
        assert caught.value.status == 409 and "port 8080/tcp is already published by web" in caught.value.message
    with pytest.raises(Conflict):
        c.submit({"image": "busybox", "ports": ["8080:80"]})
    c.manager.submit_job({"name": "udp", "count": 1, "task": {"image": "busybox", "ports": ["8080:80/udp"]}})
    c.manager.submit_job({"name": "direct", "count": 1, "task": {"image": "busybox", "ports": ["9090:80/host"]}})
    with pytest.raises(Conflict) as caught:
        c.manager.submit_job({"name": "late", "count": 1, "task": {"image": "busybox", "ports": ["9090:80"]}})
    assert "published by direct (on its node)" in caught.value.message
    c.manager.submit_job({"name": "web", "count": 3, "task": {"image": "busybox", "ports": ["8080:80"]}})  # itself


def test_an_ingress_port_is_not_counted_against_a_node_and_every_node_gets_its_dnat(c):
    c.manager.submit_job({"name": "web", "count": 4, "task": {"image": "busybox", "ports": ["8080:80"]}})
    c.settle(6)
    tasks = c.manager.task_views(job="web")
    assert [t["state"] for t in tasks] == ["running"] * 4, "4 replicas of port 8080 on 3 nodes"
    assert all(t["host_ports"] == {"80/tcp": 8080} for t in tasks)
    addresses = sorted(t["address"] for t in tasks)
    for host in c.hosts.values():
        (rule,) = host.chain("nat", "CUBE-INGRESS")[:-1]
        assert rule.startswith("-p tcp -m tcp --dport 8080 -m addrtype --dst-type LOCAL -j CUBE-SVC-")
        service = host.chain("nat", rule.rsplit(" ", 1)[1])
        assert service[0] == "-j MARK --set-xmark 0x20000/0x20000"
        assert sorted(r.split("--to-destination ")[1] for r in service[1:-1]) == [f"{a}:80" for a in addresses]
        assert "--probability 0.25000" in service[1] and "statistic" not in service[4]
        assert host.sysctls["net.ipv4.conf.all.route_localnet"] == "1"
    for runtime in c.runtimes.values():  # the mesh publishes it: the containers are not
        assert all(c.host_ports == {"80/tcp": 8080} for c in runtime.containers.values())

    c.manager.stop_job("web")
    c.settle(4)
    for host in c.hosts.values():
        assert host.chain("nat", "CUBE-INGRESS")[:-1] == []
        assert not [name for name in host.names("nat") if name.startswith("CUBE-SVC-")], "stale chains removed"


def test_port_modes_parse_and_keep_older_records_as_they_were():
    from cube.core.spec import Port

    assert Port.parse("8080:80").ingress and not Port.parse("8080:80/host").ingress
    assert Port.parse("8080:80/udp/host") == Port(80, 8080, "udp", "host")
    assert not Port.parse("80").ingress and Port.parse({"container": 80, "host": 81, "mode": "host"}).mode == "host"
    assert Port.parse("8080:80").to_dict() == {"container": 80, "host": 8080, "protocol": "tcp"}
    assert Port.parse("8080:80/host").to_dict()["mode"] == "host"
    for bad, said in [("80/ingress", "needs a host port"), ({"container": 80, "mode": "x"}, "ingress or host")]:
        with pytest.raises(BadRequest) as caught:
            Port.parse(bad)
        assert said in caught.value.message


def test_cube_manager_refuses_a_bad_cluster_cidr_before_starting_anything(tmp_path):
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parent.parent
    for bad, said in [("10.0.0.0/33", "does not appear to be"), ("10.1.0.0/26", "prefix must be from /8 to /24")]:
        done = subprocess.run(
            [sys.executable, str(root / "cube.py"), "manager", "--cluster-cidr", bad, "--data", str(tmp_path / "m")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 1 and "--cluster-cidr must be an IPv4 range" in done.stderr and said in done.stderr
        assert "Traceback" not in done.stderr and not (tmp_path / "m").exists()


def test_a_replica_leaving_the_mesh_is_stopped_once_every_node_follows_a_table_without_it():
    """Draining: the stop of a replica that took traffic waits until each ready node reports a table without it
    (so no new connection is sent to a container going away); a node that does not report holds it DRAIN_MOST
    seconds at most."""
    c = ClusterHarness(["n1", "n2", "n3"], cluster_cidr=CIDR, node_timeout=60)
    try:
        task = {"image": "busybox", "ports": ["8080:80"], "constraints": ["hostname=n1"]}
        c.manager.submit_job({"name": "web", "count": 1, "task": task})
        c.run_for(3.0)
        (task,) = c.manager.list_tasks(job="web")
        assert task.current is not None and task.current.state.value == "running"
        stops = lambda: [s for s in c.sent if s[1] == "DELETE" and s[2] == f"/tasks/{task.id}"]  # noqa: E731
        # Every node follows the tables: the stop goes at once (the same round as the table without it).
        c.kill_worker("n3")  # n3 stops answering: it keeps the table that sends traffic to the replica
        c.manager.stop_job("web")
        for _ in range(8):  # 4 s: less than DRAIN_MOST
            c.step(0.5)
        assert not stops(), "stopped while n3 may still send it connections"
        assert c.runtimes["n1"].containers[task.current.container_id].running
        c.run_for(2.0)
        assert stops() and task.current.container_id not in c.runtimes["n1"].containers  # stopped and removed
    finally:
        c.close()


def test_a_stop_waits_only_for_nodes_that_lag():
    c = ClusterHarness(["n1", "n2"], cluster_cidr=CIDR)
    try:
        c.manager.submit_job({"name": "web", "count": 1, "task": {"image": "busybox", "ports": ["8080:80"]}})
        c.settle()
        (task,) = c.manager.list_tasks(job="web")
        c.manager.stop_job("web")
        c.settle(rounds=3, seconds=0.2)  # both nodes report the new table: the stop is sent without waiting
        assert any(s[1] == "DELETE" and s[2] == f"/tasks/{task.id}" for s in c.sent)
        assert c.manager.task_detail(task.id)["state"] == "completed"
    finally:
        c.close()
