"""Test harness: several "hosts" on this one machine, as Linux network namespaces joined by a bridge.

It decides how tests get a small private LAN without touching the machine's real network: every host is a
namespace with one veth `eth0` (10.77.0.0/24) and a multicast route, and the bridge joining them lives in
its own "hub" namespace, so nothing is created, addressed or sent in the root namespace. Names carry the
creating process's pid, so namespaces left by a crashed run are recognised and removed by the next one
without harming a run that is still going.

    with Lan(3) as lan:
        proc = lan.run(lan.hosts[0], [sys.executable, "-c", "..."], stdout=subprocess.PIPE)
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
from dataclasses import dataclass

SUBNET = "10.77.0"
PREFIX_LEN = 24
FIRST_HOST = 10  # host i gets 10.77.0.(10 + i)
STOP_GRACE = 2.0  # seconds between SIGTERM and SIGKILL for processes we started


@dataclass(frozen=True)
class Host:
    name: str  # the network namespace's name
    ip: str
    index: int


def available() -> str | None:
    """None when namespaces can be made here, else the reason they cannot (for a skip message)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is missing"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=20)


def _namespaces() -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    # Lines look like "name" or "name (id: 3)".
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _delete_namespace(name: str) -> None:
    """Kill whatever still runs inside (only our test processes can be there), then drop the namespace;
    its veth ends and bridge go with it."""
    pids = _ip("netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), 9)
        except (ProcessLookupError, ValueError):
            pass
    _ip("netns", "del", name, check=False)


def clean_stale(prefix: str) -> list[str]:
    """Remove namespaces named by this harness with `prefix` whose creating process is gone."""
    pattern = re.compile(rf"^{re.escape(prefix)}-(\d+)-[0-9a-f]+-")
    removed = []
    for name in _namespaces():
        match = pattern.match(name)
        if match and not _pid_alive(int(match.group(1))):
            _delete_namespace(name)
            removed.append(name)
    return removed


class Lan:
    """n hosts on one bridge; a context manager that always tears everything down."""

    def __init__(self, n_hosts: int, prefix: str = "cube-t"):
        if not 1 <= n_hosts <= 200:
            raise ValueError("n_hosts must be between 1 and 200")
        reason = available()
        if reason:
            raise RuntimeError(reason)
        clean_stale(prefix)
        tag = f"{prefix}-{os.getpid()}-{secrets.token_hex(2)}"
        self.hub = f"{tag}-hub"
        self.hosts = [Host(f"{tag}-h{i}", f"{SUBNET}.{FIRST_HOST + i}", i) for i in range(n_hosts)]
        self._procs: list[subprocess.Popen] = []
        self._made: list[str] = []
        self._closed = False
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        self._add_namespace(self.hub)
        # Snooping off: with no IGMP querier on this LAN a snooping bridge may stop forwarding mDNS.
        _ip(
            "-n",
            self.hub,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
            "mcast_snooping",
            "0",
        )
        _ip("-n", self.hub, "link", "set", "br0", "up")
        for host in self.hosts:
            self._add_namespace(host.name)
            # Both veth ends are born inside namespaces (created in the hub, peer moved at once), so the
            # root namespace never holds one, even for a moment.
            port = f"v{host.index}"
            _ip("-n", self.hub, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", host.name)
            _ip("-n", self.hub, "link", "set", port, "master", "br0", "up")
            _ip("-n", host.name, "addr", "add", f"{host.ip}/{PREFIX_LEN}", "dev", "eth0")
            _ip("-n", host.name, "link", "set", "eth0", "up")
            # No default route exists in a namespace; multicast needs one to leave by eth0.
            _ip("-n", host.name, "route", "add", "224.0.0.0/4", "dev", "eth0")

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self._made.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def __enter__(self) -> "Lan":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def command(self, host: Host, argv: list[str]) -> list[str]:
        """The argv that runs `argv` inside `host` (`ip netns exec` execs it, so the pid is the program's)."""
        return ["ip", "netns", "exec", host.name, *argv]

    def run(self, host: Host, argv: list[str], **popen_kwargs) -> subprocess.Popen:
        """Start `argv` inside `host`; close() stops it if the test did not."""
        if self._closed:
            raise RuntimeError("this Lan is closed")
        proc = subprocess.Popen(self.command(host, argv), **popen_kwargs)
        self._procs.append(proc)
        return proc

    def exec(self, host: Host, argv: list[str], timeout: float = 20) -> subprocess.CompletedProcess:
        """Run `argv` inside `host` to completion and return its text output."""
        return subprocess.run(self.command(host, argv), capture_output=True, text=True, timeout=timeout)

    def close(self) -> None:
        """Stop our processes, then delete the namespaces (which takes the veths and bridge along)."""
        if self._closed:
            return
        self._closed = True
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for name in reversed(self._made):
            _delete_namespace(name)


@contextlib.contextmanager
def lan_for_test(n_hosts: int, prefix: str):
    """A Lan for a test: skipped where namespaces cannot be made, except in CI, where that fails the test."""
    import pytest

    why = available()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs network namespaces: {why}")
        pytest.skip(why)
    with Lan(n_hosts, prefix=prefix) as lan:
        yield lan
