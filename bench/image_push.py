"""Benchmark 9: `cube image push` of an image of about 100 MB to two nodes, each with its own Docker engine (network
namespaces joined by a bridge: tests/engines.py's EngineLan), against `docker save | docker load` by hand in the same
run, and a second push of the same image (nothing moves).

The push runs as a user would on the manager's machine: `cube image push IMG --node n1 --node n2` in host 0's
namespace, against host 0's engine; the manager sends it over TLS to the workers on hosts 1 and 2, which load it
into their engines. The baseline does the same work by hand, without Cube and without the network: `docker save` on
host 0's engine piped (tee) into `docker load` on both other engines at once, over their unix sockets — a stricter
baseline than any network path. Before each sample both nodes' engines forget the image (`docker rmi`).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time

from .common import PYZ, child_env, wait_for
from .stats import Row

NAME = "image_push"
TITLE = "`cube image push` of ~100 MB to two nodes vs `docker save | docker load`"
COMMAND = "python -m bench image_push"
IMAGE = "cube-bench-push:1"
TOKEN = "bench-image-token"

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))


def _image_tar(size: int) -> bytes:
    import io
    import tarfile

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        tar.add("/usr/bin/busybox" if os.path.exists("/usr/bin/busybox") else "/bin/busybox", "bin/busybox")
        data = tarfile.TarInfo("data")
        data.size = size
        tar.addfile(data, io.BytesIO(os.urandom(size)))
    return out.getvalue()


def _docker(host, *args: str, **kwargs) -> subprocess.CompletedProcess:
    import engines

    return subprocess.run(
        ["docker", "-H", host.docker_host, *args], capture_output=True, timeout=300, env=engines._docker_env(), **kwargs
    )


def _forget(hosts) -> None:
    for host in hosts:
        _docker(host, "rmi", "-f", IMAGE)


def run(options) -> list[Row]:
    import engines

    n = options.repeat or (2 if options.quick else 5)
    with engines.EngineLan(3, prefix="cube-b", images=[]) as lan:
        h0, h1, h2 = lan.hosts
        done = _docker(h0, "import", "-c", "ENV PATH=/bin", "-", IMAGE, input=_image_tar(100 << 20))
        assert done.returncode == 0, done.stderr
        size = int(_docker(h0, "image", "inspect", "-f", "{{.Size}}", IMAGE).stdout)
        tmp = pathlib.Path(lan.root) / "cube"
        tmp.mkdir()
        env = child_env({"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp), "CUBE_TOKEN": TOKEN})
        procs = [
            lan.run(
                h0,
                [
                    str(PYZ),
                    "manager",
                    "--port",
                    "5555",
                    "--data",
                    str(tmp / "m"),
                    "--no-mdns",
                    "--workers",
                    f"{h1.ip}:5556,{h2.ip}:5556",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        ]
        wait_for(lambda: (tmp / "m" / "tls" / "ca.pem").exists(), timeout=30, what="the manager's CA")
        for host, name in ((h1, "n1"), (h2, "n2")):
            procs.append(
                lan.run(
                    host,
                    [
                        str(PYZ),
                        "worker",
                        "--port",
                        "5556",
                        "--name",
                        name,
                        "--data",
                        str(tmp / name),
                        "--manager",
                        f"https://{h0.ip}:5555",
                        "--no-mdns",
                    ],
                    env={**env, "DOCKER_HOST": host.docker_host},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        cli_env = {
            **env,
            "CUBE_MANAGER": f"https://{h0.ip}:5555",
            "DOCKER_HOST": h0.docker_host,
            "XDG_CACHE_HOME": str(tmp / "cache"),
        }
        push = lan.command(h0, [str(PYZ), "image", "push", IMAGE, "--node", "n1", "--node", "n2"])

        def nodes_ready() -> bool:
            out = subprocess.run(lan.command(h0, [str(PYZ), "nodes", "--json"]), env=cli_env, capture_output=True)
            return out.returncode == 0 and out.stdout.count(b'"ready"') == 2

        wait_for(nodes_ready, timeout=90, interval=0.5, what="two ready nodes")
        baseline_argv = lan.command(
            h0,
            [
                "bash",
                "-c",
                f"docker -H {h0.docker_host} save {IMAGE} | tee >(docker -H {h1.docker_host} load -q "
                f">/dev/null) | docker -H {h2.docker_host} load -q >/dev/null; wait",
            ],
        )
        cube, base, again = [], [], []
        for _ in range(n):
            _forget((h1, h2))
            began = time.perf_counter()
            out = subprocess.run(baseline_argv, env=engines._docker_env(), capture_output=True, timeout=300)
            base.append(time.perf_counter() - began)
            assert out.returncode == 0, out.stderr
            _forget((h1, h2))
            began = time.perf_counter()
            out = subprocess.run(push, env=cli_env, capture_output=True, timeout=300)
            cube.append(time.perf_counter() - began)
            assert out.returncode == 0 and out.stdout.count(b"loaded") == 2, out.stdout + out.stderr
            last = out.stdout.decode().strip().replace("\n", "; ")
        for _ in range(n):
            began = time.perf_counter()
            out = subprocess.run(push, env=cli_env, capture_output=True, timeout=300)
            again.append(time.perf_counter() - began)
            assert out.stdout.count(b"nothing sent") == 2, out.stdout + out.stderr
        for proc in procs:
            proc.terminate()
            proc.wait(15)
    median = sorted(cube)[len(cube) // 2] / sorted(base)[len(base) // 2]
    return [
        Row(
            NAME,
            f"`cube image push` of {size / 1e6:.0f} MB to 2 nodes (CLI start included)",
            "s",
            cube,
            "`docker save` tee'd into 2 × `docker load` (unix sockets)",
            base,
            "≤ 1.2× baseline",
            median <= 1.2,
            COMMAND,
            note=f"the last push said: {last}",
        ),
        Row(
            NAME,
            "second push of the same image (nothing sent)",
            "s",
            again,
            target="≤ 1 s",
            met=sorted(again)[len(again) // 2] <= 1.0,
            command=COMMAND,
        ),
    ]
