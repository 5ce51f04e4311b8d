"""Benchmark 10: the routing mesh's added latency. One busybox httpd replica on node n2 (each node its own Docker engine
in a network namespace: tests/engines.py's EngineLan), published two ways by Cube in the same run: port 8080 through
the mesh (ingress: nat rules on every node) and port 8081 by Docker's own binding on n2 (`8081:8000/host`). A client in
host 0's namespace (the manager's, not a worker) does HTTP GETs, each on a new TCP connection: through the mesh to n1,
which does not run the replica (n1 DNATs to n2's container address and masquerades: the extra hop is the point), and
directly to n2's bound port. Batches of both alternate; each sample is a batch's median latency per request.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

from .common import PYZ, child_env, wait_for
from .stats import Row, ratio

NAME = "mesh"
TITLE = "Routing mesh: a new-connection HTTP GET through another node vs a direct host-mode binding"
COMMAND = "python -m bench mesh"
TOKEN = "bench-mesh-token"
IMAGE = "cube-busybox:latest"
HTTPD = ["sh", "-c", "mkdir -p /www && echo hello > /www/index.html && exec httpd -f -p 8000 -h /www"]

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))

# Run in the client's namespace: `count` GETs to host:port, each on a new connection; prints the latencies (s).
CLIENT = """
import json, socket, sys, time
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = []
for _ in range(count):
    began = time.perf_counter()
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.") and data.endswith(b"hello\\n"), data
    out.append(time.perf_counter() - began)
print(json.dumps(out))
"""


def _batch(lan, host, target: str, port: int, count: int) -> float:
    out = lan.exec(host, [sys.executable, "-c", CLIENT, target, str(port), str(count)], timeout=120)
    assert out.returncode == 0, out.stderr
    found = sorted(json.loads(out.stdout))
    return found[len(found) // 2] * 1000


def run(options) -> list[Row]:
    import engines

    from cube.cluster.client import Client
    from cube.cluster.trust import Trust

    batches = options.repeat or (2 if options.quick else 7)
    per_batch = 50 if options.quick else 300
    with engines.EngineLan(3, prefix="cube-b", images=[IMAGE]) as lan:
        h0, h1, h2 = lan.hosts
        tmp = pathlib.Path(lan.root) / "cube"
        tmp.mkdir()
        env = child_env({"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp), "CUBE_TOKEN": TOKEN})
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        procs = [
            lan.run(
                h0,
                [str(PYZ), "manager", "--data", str(tmp / "m"), "--no-mdns", "--workers", f"{h1.ip}:5556,{h2.ip}:5556"],
                env=env,
                **quiet,
            )
        ]
        wait_for(lambda: (tmp / "m" / "tls" / "ca.pem").exists(), timeout=30, what="the manager's CA")
        for host, name in ((h1, "n1"), (h2, "n2")):
            argv = [str(PYZ), "worker", "--name", name, "--data", str(tmp / name), "--no-mdns"]
            argv += ["--manager", f"https://{h0.ip}:5555", "--label", f"node={name}"]
            procs.append(lan.run(host, argv, env={**env, "DOCKER_HOST": host.docker_host}, **quiet))
        try:
            url = f"https://127.0.0.1:{lan.forward(h0, 5555)}"
            client = Client(url, TOKEN, timeout=10, trust=Trust(ca=(tmp / "m" / "tls" / "ca.pem").read_text()))
            wait_for(lambda: _ready(client) == 2, 90, 0.5, what="two ready nodes")
            spec = {"image": IMAGE, "command": HTTPD, "constraints": ["node=n2"]}
            client.post("/jobs", {"name": "meshed", "count": 1, "task": {**spec, "ports": ["8080:8000"]}})
            client.post("/jobs", {"name": "direct", "count": 1, "task": {**spec, "ports": ["8081:8000/host"]}})
            for port, at in ((8080, h1.ip), (8081, h2.ip)):
                wait_for(lambda: _ok(lan, h0, at, port), timeout=90, interval=0.5, what=f"port {port}")
            _batch(lan, h0, h1.ip, 8080, 20)  # warm both paths (ARP, conntrack, page cache)
            _batch(lan, h0, h2.ip, 8081, 20)
            mesh, direct = [], []
            for _ in range(batches):
                mesh.append(_batch(lan, h0, h1.ip, 8080, per_batch))
                direct.append(_batch(lan, h0, h2.ip, 8081, per_batch))
        finally:
            _stop(procs)
    row = Row(
        NAME,
        f"GET on a new connection through the mesh, via a node without the replica (median of {per_batch})",
        "ms",
        mesh,
        "the same GET to Docker's host-mode binding on the replica's node",
        direct,
        "≤ 1.5× baseline",
        ratio(mesh, direct) <= 1.5,
        COMMAND,
    )
    row.note = f"ratio {row.ratio:.2f}"
    return [row]


def _stop(procs) -> None:
    """The manager and workers, ended as systemd would."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(15)


def _ready(client) -> int:
    from cube.core.errors import CubeError

    try:
        return sum(n["state"] == "ready" for n in client.get("/nodes"))
    except CubeError:  # the manager is still starting
        return 0


def _ok(lan, host, address: str, port: int) -> bool:
    try:
        _batch(lan, host, address, port, 1)
    except (AssertionError, ValueError, subprocess.TimeoutExpired):
        return False
    return True
