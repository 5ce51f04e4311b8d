"""Trust on a real (private) LAN: a manager, workers and a hostile peer in network namespaces, mDNS between them.
The hostile peer (tests/fake_peer.py) advertises itself as a Cube worker and as a Cube manager, over TLS with a CA of
its own and over plain HTTP, answers everything with a plausible 200 and records every byte it receives. The real
nodes must form their cluster around it, send it neither the token nor anything that stands for it, and say why they
ignore it; the CLI, pointed at it directly, must refuse it before sending the token."""

import json
import os
import subprocess
import sys
import time

import netns
import pytest
from conftest import wait_for

from cube.cluster.trust import join_token

pytestmark = [pytest.mark.netns, pytest.mark.docker]
SECRET = "trust-test-secret-0123456789"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def lan():
    with netns.lan_for_test(5, "cube-trust") as lan:
        yield lan


def test_a_fake_peer_gets_nothing_and_the_cluster_forms_around_it(lan, pyz, tmp_path):
    manager_host, worker_a, fake_host, worker_b, cli_host = lan.hosts
    env = {**os.environ, "CUBE_DATA": str(tmp_path / "cli")}
    env.pop("CUBE_NO_MDNS", None)
    env.pop("CUBE_MANAGER", None)
    env.pop("CUBE_TOKEN", None)
    logs = {}

    def start(host, argv, name, extra_env=None):
        logs[name] = tmp_path / f"{name}.log"
        out = open(logs[name], "wb")
        return lan.run(host, argv, stdout=out, stderr=subprocess.STDOUT, env={**env, **(extra_env or {})})

    def cube(host, *args, token=SECRET):
        return subprocess.run(
            lan.command(host, [pyz, *args]),
            capture_output=True,
            text=True,
            env={**env, "CUBE_TOKEN": token},
            timeout=60,
        )

    def dump():
        return "\n".join(f"--- {name}\n{path.read_text(errors='replace')[-2500:]}" for name, path in logs.items())

    records = tmp_path / "fake"
    records.mkdir()
    fake = start(
        fake_host,
        [sys.executable, os.path.join(REPO, "tests", "fake_peer.py"), str(records)],
        "fake",
        {"PYTHONPATH": REPO},
    )
    wait_for(lambda: "ready" in logs["fake"].read_text(), timeout=20)
    start(manager_host, [pyz, "manager", "--data", str(tmp_path / "m"), "--token", SECRET], "manager")
    wait_for((tmp_path / "m" / "tls" / "ca.pem").exists, timeout=30)
    pinned = join_token(SECRET, (tmp_path / "m" / "tls" / "ca.pem").read_text())
    # One worker with the bare secret (the manager proves it holds it), one with the join token (the CA is pinned);
    # neither is told where the manager is.
    start(worker_a, [pyz, "worker", "--data", str(tmp_path / "wa"), "--name", "wa"], "worker-a", {"CUBE_TOKEN": SECRET})
    start(worker_b, [pyz, "worker", "--data", str(tmp_path / "wb"), "--name", "wb"], "worker-b", {"CUBE_TOKEN": pinned})
    manager_url = f"https://{manager_host.ip}:5555"

    def nodes():
        result = cube(cli_host, "nodes", "--json", "--manager", manager_url)
        return result.returncode == 0 and json.loads(result.stdout)

    try:
        found = wait_for(
            lambda: (n := nodes()) and len(n) == 2 and all(x["state"] == "ready" for x in n) and n,
            timeout=60,
            interval=0.5,
        )
    except AssertionError:
        raise AssertionError(dump()) from None
    assert sorted(n["name"] for n in found) == ["wa", "wb"], found
    assert all(n["address"].startswith("https://") for n in found)

    # Pointed at the fake directly, every client refuses it before the token goes out.
    fake_ip = fake_host.ip
    refusals = {
        "CLI, TLS, bare secret": (cube(cli_host, "nodes", "--manager", f"https://{fake_ip}:7103"), "could not prove"),
        "CLI, TLS, join token": (
            cube(cli_host, "nodes", "--manager", f"https://{fake_ip}:7103", token=pinned),
            "not the manager this token belongs to",
        ),
        "CLI, plain HTTP": (cube(cli_host, "nodes", "--manager", f"http://{fake_ip}:7104"), "could not prove"),
        "join, TLS": (
            cube(cli_host, "join", "--manager", f"https://{fake_ip}:7103", "--data", str(tmp_path / "j")),
            "could not prove",
        ),
    }
    for what, (result, expected) in refusals.items():
        assert result.returncode == 1 and expected in result.stderr, (what, result.stderr)
        assert "Traceback" not in result.stderr
    # The manager, asked to admit the fake as a worker, refuses it: another cluster's certificate, or plain HTTP.
    for address, expected in (
        (f"https://{fake_ip}:7101", "not a member of this cluster"),
        (f"http://{fake_ip}:7102", "plain HTTP"),
    ):
        added = subprocess.run(
            lan.command(cli_host, [sys.executable, "-c", ADD_NODE, manager_url, SECRET, address, str(tmp_path / "m")]),
            capture_output=True,
            text=True,
            env={**env, "PYTHONPATH": REPO},
            timeout=30,
        )
        assert expected in added.stdout, (address, added.stdout, added.stderr)
    time.sleep(12)  # the worker's registrar looks for a manager when none polled it for 10 s; mDNS keeps answering
    assert sorted(n["name"] for n in nodes()) == ["wa", "wb"], "the fake never became a node"

    received = {path.name: path.read_bytes() for path in records.glob("*.bin")}
    errors = {path.name: path.read_text() for path in records.glob("*.errors")}
    print(
        f"\nthe fake received: { {name: len(data) for name, data in received.items()} } bytes; "
        f"failed handshakes: { {name: text.count(chr(10)) for name, text in errors.items()} }"
    )
    everything = b"".join(received.values())
    assert everything, "the fake was asked things (else this test proves nothing)"
    assert "7101.bin.errors" in errors, "the manager tried the fake worker's TLS and refused its certificate"
    assert SECRET.encode() not in everything and b"Bearer" not in everything
    assert b"proof" not in everything, "no proof of the secret was sent to it"
    assert pinned.encode() not in everything
    manager_log = logs["manager"].read_text()
    assert "ignoring the worker advertised at" in manager_log or "not a member" in manager_log, dump()
    assert SECRET not in manager_log and all(SECRET not in logs[w].read_text() for w in ("worker-a", "worker-b"))
    fake.terminate()


# Ask the manager to admit an address (POST /nodes) and print what it answered.
ADD_NODE = """
import sys
from cube.cluster.client import Client
from cube.cluster.trust import Trust
from cube.core.errors import CubeError
url, secret, address, data = sys.argv[1:]
ca = open(data + "/tls/ca.pem").read()
try:
    print(Client(url, secret, trust=Trust(ca=ca)).post("/nodes", {"address": address}))
except CubeError as error:
    print(type(error).__name__, error.message)
"""
