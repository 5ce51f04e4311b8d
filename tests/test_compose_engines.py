"""The compose files of tests/compose deployed as users deploy them (`cube deploy -f ... --wait`, the pyz's CLI on
the manager's host) on nodes that each run their own Docker engine in a network namespace (tests/engines.py), with
the cluster network: a manager and three workers. Each stack comes up healthy and does what its file says: the
web service reaches its database and cache by name across nodes, and the cache again after its node dies;
published ports answer on every node; capabilities, sysctls and UDP ports; host networking; secrets and configs;
`.env` with two files merged; fields Cube does not support listed in one warning."""

from __future__ import annotations

import json
import pathlib

import pytest
from conftest import wait_for
from test_faults import TOKEN
from test_network_engines import NetCluster

pytestmark = [pytest.mark.docker, pytest.mark.netns]
FILES = pathlib.Path(__file__).resolve().parent / "compose"


@pytest.fixture
def cluster3(engine_lan, pyz, tmp_path):
    return NetCluster(engine_lan(4), pyz, tmp_path)


def deploy(c, *files: str, check: int = 0):
    argv = ["env", "CUBE_MANAGER=https://127.0.0.1:5555", f"CUBE_TOKEN={TOKEN}", "CUBE_NO_MDNS=1", c.pyz, "deploy"]
    for name in files:
        argv += ["-f", str(FILES / name)]
    done = c.lan.exec(c.manager_host, [*argv, "--wait", "--timeout", "150"], timeout=200)
    assert done.returncode == check, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stdout + done.stderr
    return done


def running(c, job: str, count: int = 1) -> list[dict]:
    return wait_for(
        lambda: (
            len(ts := [t for t in c.client.get(f"/jobs/{job}")["tasks"] if t["state"] == "running"]) == count and ts
        ),
        timeout=60,
    )


def every_node_answers(c, port: int, words: str) -> None:
    for host in c.worker_hosts:
        wait_for(lambda: words in c.fetch(c.manager_host, f"http://{host.ip}:{port}/"), timeout=30)


def inspect(c, task: dict) -> dict:
    return json.loads(c.lan.docker(c.host(task["node"]), "inspect", task["container_id"]).stdout)[0]


def test_compose_stacks_run_across_nodes_with_their_own_engines(cluster3):
    c = cluster3
    # web + db + cache: the web service waits for a healthy database; it reaches both by name, wherever they run.
    out = deploy(c, "webapp/compose.yaml")
    assert "every job is healthy" in out.stdout, out.stdout
    webs, (cache,) = running(c, "webapp-web", 2), running(c, "webapp-cache")
    running(c, "webapp-db")
    every_node_answers(c, 8080, "cube ok")
    caller = next((w for w in webs if w["node"] != cache["node"]), None)
    assert caller is not None, f"both web tasks share the cache's node {cache['node']}: nothing to move away from"
    assert "ping" in c.exec(caller, "sh", "-c", "echo ping | nc -w 2 db 5432").stdout
    assert "HTTP" in c.exec(caller, "sh", "-c", "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 cache 6379").stdout
    c.kill_worker(c.host(cache["node"]))  # the cache's node dies: it moves, and is found by name again
    wait_for(lambda: (t := c.task(cache["id"]))["state"] == "running" and t["node"] != cache["node"], timeout=60)
    wait_for(
        lambda: "HTTP" in c.exec(caller, "sh", "-c", "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 cache 6379").stdout,
        timeout=30,
    )
    assert c.task(caller["id"])["container_id"] == caller["container_id"], "the caller was not restarted"
    c.start_worker(c.host(cache["node"]))
    wait_for(lambda: c.node(cache["node"])["state"] == "ready", timeout=30)

    # Capabilities, a namespaced sysctl, UDP ports through the mesh on every node.
    deploy(c, "netadmin/compose.yaml")
    (dns,) = running(c, "netadmin-dns")
    config = inspect(c, dns)["HostConfig"]
    assert "NET_ADMIN" in config["CapAdd"] and config["Sysctls"] == {"net.ipv4.ip_unprivileged_port_start": "0"}
    every_node_answers(c, 8053, "cube ok")
    for host in c.worker_hosts:
        rules = c.lan.exec(host, ["iptables", "-t", "nat", "-S"]).stdout
        for port in (5353, 9000, 9001):
            assert f"-p udp -m udp --dport {port}" in rules, (host.name, port)

    # Host networking: the node's own port.
    deploy(c, "hostnet/compose.yaml")
    (monitor,) = running(c, "hostnet-monitor")
    assert "cube ok" in c.fetch(c.manager_host, f"http://{c.host(monitor['node']).ip}:18123/")

    # Secrets and configs, read-only in the containers.
    deploy(c, "secrets/compose.yaml")
    (app,) = running(c, "secrets-app")
    assert c.exec(app, "cat", "/run/secrets/app_db_password").stdout.strip() == "s3cret"
    assert c.exec(app, "cat", "/etc/app/site.conf").stdout.strip() == "listen 80;"
    every_node_answers(c, 8081, "cube ok")

    # .env and two files: 3 replicas in prod mode on the port the .env names.
    deploy(c, "override/compose.yaml", "override/compose.prod.yaml")
    tasks = running(c, "override-web", 3)
    assert {t["name"] for t in tasks} == {"override-web-1", "override-web-2", "override-web-3"}
    assert c.client.get("/jobs/override-web")["task"]["env"] == {"GREETING": "hello from .env", "MODE": "prod"}
    every_node_answers(c, 8082, "hello from .env")

    # Unsupported fields: one warning, by service and field; the rest runs.
    out = deploy(c, "unsupported/compose.yaml")
    warned = out.stderr
    for field in ("web.build", "web.container_name", "web.links", "api.deploy.mode"):
        assert field in warned, warned
    running(c, "unsupported-web")
    every_node_answers(c, 8083, "cube ok")
