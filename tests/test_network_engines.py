"""The cluster network on real parts (issue 12): a manager and two workers as pyz processes, each worker on a host
(network namespace) with its own Docker engine, the manager's default cluster range. Containers on different nodes
reach each other at their cluster addresses without NAT, a restarted worker re-applies its routes and rules and
leaves no stale ones, and nothing of it reaches the machine's root namespace. Routes and iptables are only ever
changed inside the namespaces the test made (EngineLan's hosts), which are removed afterwards, also on failure."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import wait_for
from test_faults import IMAGE, FaultCluster

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
    c.kill_worker(c.host(db["node"]))
    moved = wait_for(
        lambda: (t := c.client.get(f"/tasks/{db['id']}"))["state"] == "running" and t["node"] != db["node"] and t,
        timeout=60,
    )
    assert moved["node"] not in (db["node"], n1)
    again = wait_for(lambda: (a := c.get(web, "http://db:8000/")).startswith("db-") and a != first and a, timeout=30)
    print(f"\nbefore: {first.strip()} on {db['node']}; after: {again.strip()} on {moved['node']}")
    assert c.task(web["id"])["container_id"] == web["container_id"] and c.task(web["id"])["restarts"] == 0
