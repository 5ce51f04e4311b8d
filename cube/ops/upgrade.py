"""What `cube upgrade` knows of pyz files, and how a running service replaces its own. It decides:

- what a pyz is (`describe`): a shiv zipapp holding cube, whose version and API level are read from its
  `cube/__init__.py` and whose architecture from the preamble build.sh writes (cube.ops.install.pyz_arch);
- how a file arrives (`receive`): streamed into a temporary file beside its target, bounded in size, hashed
  (sha256) as it comes, removed if anything fails, so no half-written pyz is ever left under the real name;
- how a service replaces itself (`SelfUpgrade`): the new file is checked (hash, architecture, version), the old one
  is kept as `<pyz>.old` (a hard link: a manual rollback is one `mv`), the new one renamed over the pyz, and the
  service is told to exit with RESTART_EXIT, which its unit restarts on the new file (RestartForceExitStatus).
  Nothing stops the containers: a worker's shutdown leaves them running, and the restarted worker adopts them.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import tempfile
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass

from cube import __version__
from cube.core.errors import BadRequest, Conflict
from cube.ops.install import build_id, pyz_arch
from cube.ops.zipapp import ELF_MACHINES

MAX_PYZ = 128 << 20  # bytes; a pyz is about 7 MiB
RESTART_EXIT = 75  # EX_TEMPFAIL: "start me again", which the units restart on (RestartForceExitStatus)
ARCHES = tuple(ELF_MACHINES.values())  # the architectures build.sh makes a pyz for
_VERSION_RE = re.compile(r'^__version__ = "([^"\n]{1,64})"$', re.M)
_API_RE = re.compile(r"^API_VERSION = (\d{1,6})$", re.M)


@dataclass(frozen=True)
class PyzInfo:
    version: str
    api: int
    arch: str

    def to_dict(self) -> dict:
        return {"version": self.version, "api": self.api, "arch": self.arch}


def describe(path: str) -> PyzInfo:
    """The version, API level and architecture of the pyz at `path`; a BadRequest when it is not a cube.pyz."""
    name = os.path.basename(path)
    if not build_id(path):
        raise BadRequest(f"{name} is not a cube.pyz (no shiv zipapp): ./build.sh makes one")
    try:
        with zipfile.ZipFile(path) as archive:
            init = archive.read("site-packages/cube/__init__.py").decode("utf-8", "replace")
    except (OSError, KeyError, zipfile.BadZipFile):
        raise BadRequest(f"{name} holds no cube package: it is not a cube.pyz") from None
    version, api = _VERSION_RE.search(init), _API_RE.search(init)
    arch = pyz_arch(path)
    if version is None or arch is None:
        raise BadRequest(f"{name} does not say its version and architecture: build it with ./build.sh")
    # A pyz from before API levels were counted speaks level 1.
    return PyzInfo(version.group(1), int(api.group(1)) if api else 1, arch)


def receive(read: Callable[[int], bytes], directory: str, limit: int = MAX_PYZ) -> tuple[str, str, int]:
    """Stream a body (`read(n)` until b"") into a new temporary file in `directory`: (path, sha256, size). At most
    `limit` bytes; on any failure the file is removed and the error raised."""
    digest, size = hashlib.sha256(), 0
    fd, path = tempfile.mkstemp(prefix=".cube-upgrade-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            while chunk := read(1 << 20):
                size += len(chunk)
                if size > limit:
                    raise BadRequest(f"the pyz is over {limit >> 20} MiB: this is not a cube.pyz")
                digest.update(chunk)
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        os.unlink(path)
        raise
    if size == 0:
        os.unlink(path)
        raise BadRequest("the body is empty: send the pyz")
    return path, digest.hexdigest(), size


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def replace(new: str, target: str) -> str:
    """Rename `new` over `target` (same directory), keeping the old file as `target`.old; returns that name."""
    old = target + ".old"
    os.chmod(new, 0o755)
    if os.path.exists(target):
        if os.path.lexists(old):
            os.unlink(old)
        try:
            os.link(target, old)
        except OSError:  # a file system without hard links
            shutil.copy2(target, old)
    os.replace(new, target)
    directory = os.open(os.path.dirname(target) or ".", os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut (a Pi's SD card)
    finally:
        os.close(directory)
    return old


def running_pyz() -> str | None:
    """The pyz this process runs from, or None (`cube dev` from sources, an editable install)."""
    from cube.ops import zipapp

    path = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return path if zipapp.BUILD_ARCH and path and build_id(path) else None


class SelfUpgrade:
    """A service's way to replace its own pyz and be restarted on it. `path`: the pyz it runs from (None: it runs
    from sources and cannot); `exit`: called once the new file is in place, to end the service with RESTART_EXIT
    after the answer is sent."""

    def __init__(self, path: str | None, arch: str | None, exit: Callable[[], None], role: str = "worker"):
        self.path, self.arch, self.role = path, arch, role
        self._exit = exit
        self._lock = threading.Lock()
        self.exiting = False  # the new pyz is in place: the service ends with RESTART_EXIT

    def apply(self, read: Callable[[int], bytes], sha256: str, version: str) -> dict:
        """Take the pyz streamed by `read`, check it is the one announced, put it in place, and exit."""
        if not self.path or not self.arch:
            raise Conflict(
                f"this {self.role} runs from sources (cube dev or an editable install), not from a cube.pyz: it "
                f"cannot replace itself; upgrade it by hand"
            )
        if not self._lock.acquire(blocking=False):
            raise Conflict(f"this {self.role} is already replacing its pyz")
        try:
            tmp, got, _ = receive(read, os.path.dirname(self.path))
            try:
                if got != sha256:
                    raise BadRequest(f"sha256: the pyz received hashes to {got}, not {sha256}: not replaced")
                info = describe(tmp)
                if info.arch != self.arch:
                    raise BadRequest(f"arch: the pyz is the {info.arch} build and this node runs {self.arch}")
                if info.version != version:
                    raise BadRequest(f"version: the pyz is cube {info.version}, not {version}")
                if os.path.exists(self.path) and sha256_of(self.path) == got:
                    # Already in place: the manager's node, whose worker shares its pyz, was upgraded first.
                    os.unlink(tmp)
                    old = self.path + ".old"
                else:
                    old = replace(tmp, self.path)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
        except BaseException:
            self._lock.release()
            raise
        # The lock stays taken: the process is about to exit on the new file.
        self.exiting = True
        timer = threading.Timer(0.3, self._exit)  # after the answer has left
        timer.daemon = True
        timer.start()
        return {"replaced": self.path, "old": old, "from": __version__, "to": version, "restarting": True}
