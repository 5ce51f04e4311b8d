"""The cluster network on real parts (issue 12): a manager and two workers as pyz processes, each worker on a host
(network namespace) with its own Docker engine, the manager's default cluster range. Containers on different nodes
reach each other at their cluster addresses without NAT, a restarted worker re-applies its routes and rules and
leaves no stale ones, and nothing of it reaches the machine's root namespace. Routes and iptables are only ever
changed inside the namespaces the test made (EngineLan's hosts), which are removed afterwards, also on failure."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from conftest import wait_for
from test_faults import IMAGE, NODE_TIMEOUT, FaultCluster

pytestmark = [pytest.mark.docker, pytest.mark.netns]
# An HTTP server whose /cgi-bin/ip answers the caller's address as the server sees it.
SERVER = [
    "sh",
    "-c",
    "mkdir -p /www/cgi-bin && echo db-$HOSTNAME > /www/index.html"
    " && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho $REMOTE_ADDR\\n' > /www/cgi-bin/ip"
    " && chmod +x /www/cgi-bin/ip && exec httpd -f -p 8000 -h /www",
]


class NetCluster(FaultCluster):
    def run(self, node: str | None = None, command=None, **spec) -> dict:
        body = {"image": IMAGE, "command": command or ["sleep", "600"], **spec}
        if node:
            body["constraints"] = [f"node={node}"]
        task = self.client.post("/tasks", body)
        return wait_for(lambda: self.running_on(task["id"], node), timeout=60)

    def exec(self, task: dict, *argv: str, timeout: float = 15) -> subprocess.CompletedProcess:
        """`docker exec` in the task's container, on its node's engine."""
        return self.lan.docker(self.host(task["node"]), "exec", task["container_id"], *argv, timeout=timeout)

    def get(self, task: dict, url: str) -> str:
        done = self.exec(task, "wget", "-q", "-O-", url)
        return done.stdout if done.returncode == 0 else f"failed ({done.returncode}): {done.stderr.strip()}"

    def routes(self, node: str) -> dict[str, str]:
        out = self.lan.exec(self.host(node), ["ip", "-4", "-j", "route", "show", "proto", "210"]).stdout
        return {r["dst"]: r["gateway"] for r in json.loads(out or "[]")}

    def iptables(self, node: str, *args: str) -> list[str]:
        return self.lan.exec(self.host(node), ["iptables", *args]).stdout.splitlines()


@pytest.fixture
def cluster(engine_lan, pyz, tmp_path):
    return NetCluster(engine_lan(3), pyz, tmp_path)


def test_containers_on_two_nodes_reach_each_other_unmasqueraded_and_a_worker_restart_repairs_the_node(cluster):
    n1, n2 = (cluster.names[h.name] for h in cluster.worker_hosts)
    h1, h2 = (cluster.host(n) for n in (n1, n2))
    db = cluster.run(n2, SERVER)
    caller = cluster.run(n1)
    assert db["address"].startswith("10.210.") and caller["address"].startswith("10.210.")
    assert db["address"].rsplit(".", 1)[0] != caller["address"].rsplit(".", 1)[0], "one subnet per node"
    assert wait_for(lambda: cluster.get(caller, f"http://{db['address']}:8000/").startswith("db-"), timeout=20)
    seen_as = cluster.get(caller, f"http://{db['address']}:8000/cgi-bin/ip").strip().strip("[]")
    seen_as = seen_as.removeprefix("::ffff:")  # httpd listens on IPv6 too: an IPv4 peer reads mapped
    assert seen_as == caller["address"], "no NAT between cluster subnets"
    # Out of the cluster range a container is masqueraded: it reaches the manager's host by its LAN address.
    reach = cluster.exec(caller, "sh", "-c", f"nc -w 3 {cluster.manager_host.ip} 5555 </dev/null")
    assert reach.returncode == 0, reach.stderr

    subnet1 = wait_for(lambda: cluster.routes(n2) and cluster.routes(n2), timeout=10)
    assert list(subnet1.values()) == [h1.ip] and list(cluster.routes(n1).values()) == [h2.ip]

    # The worker of n1 dies; meanwhile its node's routes and rules are damaged; started again, it repairs them.
    cluster.kill_worker(h1)
    cluster.lan.exec(h1, ["ip", "route", "add", "10.210.99.0/24", "via", h2.ip, "proto", "210"])
    cluster.lan.exec(h1, ["iptables", "-F", "CUBE-FORWARD"])
    cluster.lan.exec(h1, ["iptables", "-I", "DOCKER-USER", "2", "-j", "CUBE-FORWARD"])
    assert "10.210.99.0/24" in cluster.routes(n1)
    cluster.start_worker(h1)
    wait_for(lambda: "10.210.99.0/24" not in cluster.routes(n1), timeout=30)
    assert list(cluster.routes(n1).values()) == [h2.ip]
    forward = wait_for(lambda: len(f := cluster.iptables(n1, "-S", "CUBE-FORWARD")) > 2 and f, timeout=30)
    assert "-A CUBE-FORWARD -s 10.210.0.0/16 -d 10.210.0.0/16 -j ACCEPT" in forward
    wait_for(lambda: cluster.iptables(n1, "-S", "DOCKER-USER").count("-A DOCKER-USER -j CUBE-FORWARD") == 1, 10)
    assert cluster.iptables(n1, "-S", "DOCKER-USER")[1] == "-A DOCKER-USER -j CUBE-FORWARD", "first"
    assert cluster.get(caller, f"http://{db['address']}:8000/").startswith("db-"), "the caller was not restarted"

    # The machine's own namespace never saw any of it.
    root = subprocess.run(["ip", "-4", "route", "show", "proto", "210"], capture_output=True, text=True).stdout
    assert root == ""
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    assert "CUBE-" not in rules


@pytest.fixture
def cluster3(engine_lan, pyz, tmp_path):
    """A manager and three workers (a service can move away from its caller's node and still have a node to go)."""
    return NetCluster(engine_lan(4), pyz, tmp_path)


def stack_job(cluster, service: str, command, *constraints: str, count: int = 1, **task) -> None:
    body = {"image": IMAGE, "command": command, "constraints": list(constraints), **task}
    cluster.client.post("/jobs", {"name": f"shop-{service}", "stack": "shop", "count": count, "task": body})


def job_tasks(cluster, job: str, running: int = 1) -> list[dict]:
    return wait_for(
        lambda: (
            len(ts := [t for t in cluster.client.get(f"/jobs/{job}")["tasks"] if t["state"] == "running"]) == running
            and ts
        ),
        timeout=60,
    )


def test_a_task_reaches_its_stacks_service_by_name_on_another_node_and_again_after_it_moves(cluster3):
    n1, n2, n3 = (cluster3.names[h.name] for h in cluster3.worker_hosts)
    c = cluster3
    stack_job(c, "db", SERVER, f"node!={n1}")
    stack_job(c, "web", ["sleep", "600"], f"node={n1}")
    (db,) = job_tasks(c, "shop-db")
    (web,) = job_tasks(c, "shop-web")
    assert db["node"] != web["node"]
    first = wait_for(lambda: (a := c.get(web, "http://db:8000/")).startswith("db-") and a, timeout=30)
    assert c.get(web, "http://db.shop:8000/") == first and c.get(web, "http://shop-db:8000/") == first
    looked = c.exec(web, "busybox", "nslookup", "db")
    assert db["address"] in looked.stdout, looked.stdout + looked.stderr
    outside = c.exec(web, "busybox", "nslookup", "nothing-here.invalid")
    assert outside.returncode != 0 and "NXDOMAIN" in outside.stdout + outside.stderr, outside.stdout

    # db's node dies (its worker killed: the node is down for the manager); db is placed on the third node and the
    # caller, never restarted, reaches it by the same name.
    killed = time.monotonic()
    c.kill_worker(c.host(db["node"]))
    moved = wait_for(
        lambda: (t := c.client.get(f"/tasks/{db['id']}"))["state"] == "running" and t["node"] != db["node"] and t,
        timeout=60,
    )
    assert moved["node"] not in (db["node"], n1)
    again = wait_for(lambda: (a := c.get(web, "http://db:8000/")).startswith("db-") and a != first and a, timeout=30)
    print(
        f"\nbefore: {first.strip()} on {db['node']}; after: {again.strip()} on {moved['node']}; reachable by name "
        f"again {time.monotonic() - killed:.1f} s after its node's worker was killed (node timeout {NODE_TIMEOUT} s)"
    )
    assert c.task(web["id"])["container_id"] == web["container_id"] and c.task(web["id"])["restarts"] == 0


def answers(cluster, from_host, url: str) -> str:
    """What a new connection to `url` from inside `from_host` gets (a hang fails the test: exec's timeout)."""
    return cluster.fetch(from_host, url).strip()


def test_an_ingress_port_answers_on_every_node_and_again_after_its_replica_moves(cluster3):
    c = cluster3
    n1 = c.names[c.worker_hosts[0].name]
    stack_job(c, "web", SERVER.copy(), f"node!={n1}", ports=["8080:8000"])
    (web,) = job_tasks(c, "shop-web")
    first = wait_for(lambda: (a := answers(c, c.manager_host, f"http://{c.host(web['node']).ip}:8080/")) and a, 30)
    assert first.startswith("db-")
    for host in c.worker_hosts:  # every node, the ones without the replica too, from another host and from itself
        assert wait_for(lambda: answers(c, c.manager_host, f"http://{host.ip}:8080/") == first, timeout=20)
        assert answers(c, host, f"http://{host.ip}:8080/") == first
    assert answers(c, c.worker_hosts[0], "http://127.0.0.1:8080/") == first, "route_localnet: 127.0.0.1 too"
    inspect = json.loads(c.lan.docker(c.host(web["node"]), "inspect", web["container_id"]).stdout)[0]
    assert not inspect["HostConfig"]["PortBindings"], "the container itself is not published"

    c.kill_worker(c.host(web["node"]))
    moved = wait_for(
        lambda: (t := c.task(web["id"]))["state"] == "running" and t["node"] != web["node"] and t, timeout=60
    )
    for host in c.worker_hosts:
        if c.names[host.name] == web["node"]:
            continue  # its worker is dead: its rules are as they were
        wait_for(
            lambda: (a := answers(c, c.manager_host, f"http://{host.ip}:8080/")).startswith("db-") and a != first, 30
        )
    print(f"\nport 8080 on every node: {first} on {web['node']}, then on {moved['node']}")


def test_the_mesh_stops_sending_to_a_node_once_it_is_down(cluster3):
    c = cluster3
    stack_job(c, "web", SERVER.copy(), count=3, ports=["8080:8000"])
    tasks = job_tasks(c, "shop-web", running=3)
    assert len({t["node"] for t in tasks}) == 3
    entry = c.worker_hosts[0]
    victim = next(h for h in c.worker_hosts if h is not entry)
    # The entry node's rules send to all three replicas once its table has them (a table follows the tasks).
    wait_for(lambda: all(t["address"] in _dnat_targets(c, entry) for t in tasks), timeout=30)
    seen = set()
    for _ in range(12):  # new connections spread over the replicas
        seen.add(answers(c, c.manager_host, f"http://{entry.ip}:8080/"))
    assert len(seen) > 1, seen
    c.lan.partition(victim)  # the node is cut off: the manager declares it down after its timeout
    wait_for(lambda: c.node(c.names[victim.name])["state"] == "down", timeout=30)
    lost = next(t for t in tasks if t["node"] == c.names[victim.name])
    wait_for(lambda: lost["address"] not in _dnat_targets(c, entry), timeout=30)
    # From now on no new connection is sent to the cut-off node: each one is answered (none hangs).
    for _ in range(12):
        assert answers(c, c.manager_host, f"http://{entry.ip}:8080/").startswith("db-")


def _dnat_targets(cluster, host) -> str:
    return "\n".join(
        r for r in cluster.lan.exec(host, ["iptables", "-t", "nat", "-S"]).stdout.splitlines() if "DNAT" in r
    )
