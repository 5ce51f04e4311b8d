"""`cube doctor`: what a node needs before it can run Cube, checked one line at a time with the fix for each
problem. It decides what counts as broken (`fail`: this node cannot do its job — no Docker engine, no memory
cgroup, the wrong build for this machine) and what only limits it (`warn`: no multicast means no mDNS discovery,
an unsynchronized clock, little disk). It reads files and asks the Docker engine; it never sends network traffic.

Everything it reads from the machine goes through `Probes`, one method per source, so tests give each check
the machine they want (a Raspberry Pi with `cgroup_disable=memory`, a clock stuck in 1970) without having one.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

from cube.cluster.config import data_dir
from cube.core.errors import CubeError

IFF_UP, IFF_LOOPBACK, IFF_RUNNING, IFF_MULTICAST = 0x1, 0x8, 0x40, 0x1000
# Interfaces that never face the LAN: Docker's and container networks' own.
NOT_LAN = ("docker", "veth", "br-", "virbr", "cni", "flannel", "cali")
GIB = 1024**3
DISK_FAIL, DISK_WARN = 1 * GIB, 5 * GIB
PI_CMDLINE = ("/boot/firmware/cmdline.txt", "/boot/cmdline.txt")  # Raspberry Pi OS since bookworm, and before
BUILD_ARCHES = ("x86_64", "aarch64", "armv7l")


@dataclass
class Check:
    name: str
    status: str  # ok, warn or fail
    detail: str
    fix: str = ""


class Probes:
    """The machine as doctor sees it. Tests replace any method on an instance."""

    def docker(self) -> dict:
        from cube.worker.docker_runtime import engine_info

        return engine_info(timeout=10.0)

    def read(self, path: str) -> str | None:
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except OSError:
            return None

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def interfaces(self) -> dict[str, int]:
        """Interface name -> flags (IFF_*), from /sys/class/net. sysfs leaves IFF_RUNNING out of `flags`; it is
        set here from `operstate` (`unknown` is what drivers without carrier detection report)."""
        out = {}
        for name in sorted(os.listdir("/sys/class/net")) if os.path.isdir("/sys/class/net") else ():
            flags = self.read(f"/sys/class/net/{name}/flags")
            if flags:
                running = (self.read(f"/sys/class/net/{name}/operstate") or "").strip() in ("up", "unknown")
                out[name] = int(flags.strip(), 16) | (IFF_RUNNING if running else 0)
        return out

    def disk(self, path: str) -> tuple[str, int, int]:
        """(the existing directory measured, free bytes, total bytes) for `path` or its nearest parent."""
        while not os.path.exists(path) and os.path.dirname(path) != path:
            path = os.path.dirname(path)
        usage = shutil.disk_usage(path)
        return path, usage.free, usage.total

    def now(self) -> float:
        return time.time()

    def ntp_synchronized(self) -> bool | None:
        """timedatectl's answer, or None when there is no systemd to ask."""
        try:
            done = subprocess.run(
                ["timedatectl", "show", "-p", "NTPSynchronized", "--value"], capture_output=True, text=True, timeout=5
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        answer = done.stdout.strip()
        return {"yes": True, "no": False}.get(answer) if done.returncode == 0 else None

    def python(self) -> tuple[tuple[int, ...], str]:
        return tuple(sys.version_info[:3]), sys.executable

    def arch(self) -> tuple[str, str | None, str | None]:
        """(the kernel's machine, the interpreter's architecture, the architecture the pyz was built for)."""
        from cube.ops import zipapp

        return platform.machine(), zipapp.interpreter_arch(), zipapp.BUILD_ARCH

    def psutil(self) -> str:
        """psutil's version and where it comes from; raises when it cannot be imported."""
        import psutil

        where = "system" if "dist-packages" in (psutil.__file__ or "") else "bundled"
        return f"{psutil.__version__} ({where})"

    def tls(self) -> str:
        """The certificate library's version; raises when it cannot be loaded."""
        from cube.cluster import pki

        return pki.version()


# -- the checks ------------------------------------------------------------------------------------------------


def check_python(probes: Probes) -> Check:
    version, executable = probes.python()
    text = ".".join(map(str, version))
    if version < (3, 11):
        return Check(
            "python",
            "fail",
            f"Python {text} ({executable})",
            "Cube needs Python 3.11 or newer: Debian 12 and Raspberry Pi OS 12 (bookworm) have it",
        )
    return Check("python", "ok", f"Python {text} ({executable})")


def check_arch(probes: Probes) -> Check:
    machine, interpreter, built = probes.arch()
    running = interpreter or machine
    where = f"{running} userland on an {machine} kernel" if interpreter and interpreter != machine else running
    if built and built != running:
        return Check(
            "arch",
            "fail",
            f"{where}, but this cube.pyz is the {built} build",
            f"copy the {running} build instead: cube-<version>-{running}.pyz (./build.sh all makes it)",
        )
    if running not in BUILD_ARCHES:
        return Check(
            "arch",
            "warn",
            f"{where}: Cube has no build for it",
            f"builds exist for {', '.join(BUILD_ARCHES)}; run from sources with a local psutil",
        )
    return Check("arch", "ok", f"{where}" + (f" (the {built} build)" if built else " (running from sources)"))


def check_psutil(probes: Probes) -> Check:
    try:
        return Check("psutil", "ok", f"psutil {probes.psutil()}")
    except (ImportError, CubeError) as error:
        message = getattr(error, "message", None) or str(error)
        fix = "sudo apt install python3-psutil" if "python3-psutil" in message else "see the arch line"
        return Check("psutil", "fail", message, fix)


def check_tls(probes: Probes) -> Check:
    """The cluster CA (manager) and the join (worker) need cryptography, which needs `_cffi_backend`."""
    try:
        return Check("tls", "ok", f"cryptography {probes.tls()}")
    except (ImportError, CubeError) as error:
        message = getattr(error, "message", None) or str(error)
        fix = "sudo apt install python3-cffi-backend" if "cffi" in message else "see the arch line"
        return Check("tls", "fail", message, fix)


def check_docker(probes: Probes) -> tuple[Check, dict | None]:
    try:
        info = probes.docker()
    except CubeError as error:
        return Check(
            "docker",
            "fail",
            error.message,
            "start the engine (sudo systemctl enable --now docker), or install it (sudo apt install "
            "docker.io); a user who is not root needs to be in the docker group",
        ), None
    detail = (
        f"Docker {info.get('version')} (API {info.get('api_version')}), {info.get('arch')}, cgroup "
        f"v{info.get('cgroup_version')} ({info.get('cgroup_driver')}), data in {info.get('root_dir')}"
    )
    return Check("docker", "ok", detail), info


def check_cgroup_memory(probes: Probes, engine: dict | None) -> Check:
    """The memory controller must be on, or Docker cannot limit a task's memory (the classic Raspberry Pi pitfall:
    its kernels long shipped with `cgroup_disable=memory`)."""
    controllers = probes.read("/sys/fs/cgroup/cgroup.controllers")
    if controllers is not None:  # cgroup v2 only
        enabled, where = "memory" in controllers.split(), "cgroup v2"
    else:
        enabled = probes.exists("/sys/fs/cgroup/memory") and _v1_memory_enabled(probes.read("/proc/cgroups"))
        where = "cgroup v1"
    if engine is not None and engine.get("memory_limit") is False:
        enabled, where = False, f"{where}; Docker reports no memory limit support"
    if enabled:
        return Check("cgroup", "ok", f"memory controller enabled ({where})")
    cmdline = next((path for path in PI_CMDLINE if probes.exists(path)), None)
    if cmdline:
        fix = f"add `cgroup_enable=memory cgroup_memory=1` to the end of the single line in {cmdline}, then reboot"
    else:
        fix = (
            "enable the kernel's memory cgroup: add `cgroup_enable=memory` to the kernel command line "
            "(GRUB_CMDLINE_LINUX in /etc/default/grub, then update-grub) and reboot"
        )
    return Check("cgroup", "fail", f"memory controller disabled ({where}): task memory limits cannot work", fix)


def _v1_memory_enabled(table: str | None) -> bool:
    for line in (table or "").splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[0] == "memory":
            return fields[3] == "1"
    return False


def check_multicast(probes: Probes) -> Check:
    """An interface that is up, running and multicast-capable, facing the LAN: what mDNS discovery needs.
    Only flags are read; nothing is sent."""
    usable = [
        name
        for name, flags in probes.interfaces().items()
        if flags & IFF_UP
        and flags & IFF_RUNNING
        and flags & IFF_MULTICAST
        and not flags & IFF_LOOPBACK
        and not name.startswith(NOT_LAN)
    ]
    if usable:
        return Check("multicast", "ok", f"multicast-capable interfaces up: {', '.join(usable)}")
    return Check(
        "multicast",
        "warn",
        "no LAN interface is up with multicast: mDNS discovery will not work",
        "give addresses instead: cube worker --manager https://HOST:5555, cube manager --workers HOST:5556",
    )


def check_disk(probes: Probes, role: str, engine: dict | None) -> Check:
    places = [data_dir(role)] + ([engine["root_dir"]] if engine and engine.get("root_dir") else [])
    worst = None
    parts = []
    for place in places:
        measured, free, total = probes.disk(place)
        parts.append(f"{place}: {free / GIB:.1f} GiB free of {total / GIB:.1f} GiB")
        worst = free if worst is None else min(worst, free)
    detail = "; ".join(parts)
    if worst is not None and worst < DISK_FAIL:
        return Check("disk", "fail", detail, "free some space (docker system prune removes unused images)")
    if worst is not None and worst < DISK_WARN:
        return Check("disk", "warn", detail, "images need room: docker system prune removes unused ones")
    return Check("disk", "ok", detail)


def check_clock(probes: Probes) -> Check:
    now = probes.now()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))
    if time.gmtime(now).tm_year < 2024:
        return Check(
            "clock",
            "fail",
            f"the clock says {stamp}",
            "set the time (a Raspberry Pi has no battery clock): sudo timedatectl set-ntp true, and check "
            "that the node reaches the network",
        )
    synced = probes.ntp_synchronized()
    if synced is False:
        return Check(
            "clock",
            "warn",
            f"{stamp}, not synchronized by NTP",
            "sudo timedatectl set-ntp true (clocks that drift apart make events and logs disagree)",
        )
    return Check("clock", "ok", stamp + (", NTP synchronized" if synced else ""))


def run(role: str = "worker", probes: Probes | None = None) -> list[Check]:
    """All checks for a node of `role` (a manager needs no Docker engine nor memory cgroup)."""
    if role not in ("worker", "manager"):
        raise CubeError(f"doctor checks a `worker` or a `manager` node, not {role!r}")
    probes = probes or Probes()
    checks = [check_python(probes), check_arch(probes), check_tls(probes)]
    engine = None
    if role == "worker":  # psutil measures the node for the scheduler: a worker's business only
        docker, engine = check_docker(probes)
        checks += [check_psutil(probes), docker, check_cgroup_memory(probes, engine)]
    checks += [check_multicast(probes), check_disk(probes, role, engine), check_clock(probes)]
    return checks


def failed(checks: list[Check]) -> bool:
    return any(check.status == "fail" for check in checks)


def render(checks: list[Check], as_json: bool = False) -> str:
    if as_json:
        return json.dumps({"ok": not failed(checks), "checks": [asdict(c) for c in checks]}, indent=2)
    lines = []
    for check in checks:
        lines.append(f"{check.status:<5} {check.name:<10} {check.detail}")
        if check.fix and check.status != "ok":
            lines.append(f"{'':<16} fix: {check.fix}")
    return "\n".join(lines)
