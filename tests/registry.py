"""Test harness: Debian's `docker-registry` (distribution 2.8) with htpasswd auth, served inside a host of a test
LAN, and a small pusher that builds images without any engine (layers made here, the config written here, so an
image can say it is for another platform) and uploads them over the registry's HTTP API.

    reg = Registry(lan, lan.hosts[0], tmp_path, users={"ci": "pw-42"})
    reg.push("private/busybox", "1", busybox_layers(), user=("ci", "pw-42"))
    # an engine on the LAN pulls 10.77.0.10:5000/private/busybox:1 (listed in its insecure-registries)

It is started as a process of the test (never the system service), with a config file written to the test's
directory; `pause()` and `resume()` SIGSTOP and SIGCONT it: a registry that stops answering mid-pull.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
import urllib.error
import urllib.request

PORT = 5000


def available() -> str | None:
    for program, package in (
        ("docker-registry", "docker-registry"),
        ("htpasswd", "apache2-utils"),
        ("tc", "iproute2"),
        ("script", "bsdutils"),
    ):
        if shutil.which(program) is None:
            return f"`{program}` is missing (apt-get install {package})"
    return None


class Registry:
    def __init__(self, lan, host, directory, users: dict[str, str]):
        self.lan, self.host = lan, host
        self.address = f"{host.ip}:{PORT}"
        root = os.path.join(str(directory), "registry")
        os.makedirs(root, exist_ok=True)
        with open(os.path.join(root, "htpasswd"), "w") as f:
            for user, password in users.items():
                # bcrypt, as the registry requires
                out = subprocess.run(["htpasswd", "-Bbn", user, password], capture_output=True, text=True, check=True)
                f.write(out.stdout.strip() + "\n")
        config = os.path.join(root, "config.yml")
        with open(config, "w") as f:
            f.write(
                "version: 0.1\nlog:\n  level: info\n"
                f"storage:\n  filesystem:\n    rootdirectory: {root}/data\n  delete:\n    enabled: true\n"
                f"http:\n  addr: {self.address}\n  secret: cube-test-secret\n"
                f"auth:\n  htpasswd:\n    realm: cube-test\n    path: {root}/htpasswd\n"
            )
        self.log_path = os.path.join(root, "registry.log")
        with open(self.log_path, "ab") as log:
            self.proc = lan.run(
                host, ["docker-registry", "serve", config], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.url = f"http://127.0.0.1:{lan.forward(host, PORT)}"
        deadline = time.monotonic() + 20
        while self._status("/v2/") != 401:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry did not start: {self.log()[-2000:]}")
            time.sleep(0.1)

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def _status(self, path: str) -> int | None:
        try:
            with urllib.request.urlopen(self.url + path, timeout=2) as answer:
                return answer.status
        except urllib.error.HTTPError as error:
            return error.code
        except OSError:
            return None

    # ---- pushing, with the registry's API only -------------------------------------------------------------------

    def _request(self, method: str, url: str, user, data: bytes | None = None, headers=None):
        if not url.startswith("http"):
            url = self.url + url
        request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
        token = base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, dict(answer.headers), answer.read()

    def _blob(self, name: str, data: bytes, user) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        _, headers, _ = self._request("POST", f"/v2/{name}/blobs/uploads/", user, b"")
        location = headers["Location"]
        if location.startswith("/"):
            location = self.url + location
        separator = "&" if "?" in location else "?"
        self._request(
            "PUT",
            f"{location}{separator}digest={digest}",
            user,
            data,
            {"Content-Type": "application/octet-stream"},
        )
        return digest

    def push(self, name: str, tag: str, layers: list[bytes], user, arch: str = "amd64", cmd=("sh",)) -> str:
        """Upload an image of `layers` (uncompressed tars) whose config says linux/`arch`; its manifest digest."""
        compressed = [gzip.compress(layer, mtime=0) for layer in layers]
        config = {
            "architecture": arch,
            "os": "linux",
            "config": {"Cmd": list(cmd), "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(x).hexdigest() for x in layers]},
            "history": [{"created_by": "tests/registry.py"} for _ in layers],
        }
        config_data = json.dumps(config).encode()
        config_digest = self._blob(name, config_data, user)
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": len(config_data),
                "digest": config_digest,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "size": len(blob),
                    "digest": self._blob(name, blob, user),
                }
                for blob in compressed
            ],
        }
        body = json.dumps(manifest).encode()
        self._request(
            "PUT",
            f"/v2/{name}/manifests/{tag}",
            user,
            body,
            {"Content-Type": "application/vnd.docker.distribution.manifest.v2+json"},
        )
        return "sha256:" + hashlib.sha256(body).hexdigest()


def saved_layers(image: str) -> list[bytes]:
    """The layers (uncompressed tars) of an image of the machine's engine, from `docker save` (reads only)."""
    out = subprocess.run(["docker", "save", image], capture_output=True, timeout=120, check=True)
    with tarfile.open(fileobj=io.BytesIO(out.stdout)) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        return [tar.extractfile(path).read() for path in manifest[0]["Layers"]]  # type: ignore[union-attr]


def random_layer(size: int, path: str = "big.bin") -> bytes:
    """A layer of one file of `size` random (incompressible) bytes: a pull that takes long enough to watch."""
    data = os.urandom(size)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(path)
        info.size, info.mode, info.mtime = size, 0o644, 0
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
