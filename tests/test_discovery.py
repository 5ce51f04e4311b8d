"""mDNS discovery between real processes on a private LAN of network namespaces (tests/netns.py).

Every zeroconf socket in these tests lives inside a namespace the test made: the test process itself only
starts children there and reads their JSON reports (tests/discovery_child.py)."""

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import netns  # tests/ is on sys.path (no __init__.py: pytest's rootdir-relative imports)
import pytest

from cube.cluster import discovery

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parent.parent
CHILD = str(Path(__file__).with_name("discovery_child.py"))
ROOT_NETNS = os.stat("/proc/self/ns/net").st_ino
WAIT = 8.0  # seconds any single expected report may take


class Child:
    """One discovery_child.py process inside a host; its reports are read on a thread into a queue."""

    def __init__(self, lan: netns.Lan, host: netns.Host, *args: str):
        self.host = host
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        self.proc = lan.run(
            host, [sys.executable, CHILD, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        self.reports: queue.Queue = queue.Queue()
        self.seen: list[dict] = []
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.reports.put(json.loads(line))

    def expect(self, event: str, timeout: float = WAIT, where=lambda report: True) -> dict:
        """The next report of this kind that satisfies `where`, waiting at most `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                report = self.reports.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"no {event!r} from {self.host.name} in {timeout}s; saw {self.seen}; "
                    f"stderr: {''.join(self.stderr)[-2000:]}"
                ) from None
            self.seen.append(report)
            if report["event"] == event and where(report):
                return report

    def first(self, event: str) -> dict:
        """A report of this kind already read."""
        return next(report for report in self.seen if report["event"] == event)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(5)


def netns_inode(host: netns.Host) -> int:
    return os.stat(f"/run/netns/{host.name}").st_ino


def need_netns() -> None:
    """Skip without namespaces, except in CI, where their absence is a failure."""
    reason = netns.available()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def lan():
    need_netns()
    with netns.Lan(3) as lan:
        yield lan


def test_txt_record_carries_identity_and_never_a_secret():
    props = discovery.txt_record("pi", 7001, {"id": "n1"})
    assert props["name"] == "pi" and props["port"] == "7001" and props["id"] == "n1"
    assert props["arch"] and props["version"]
    for key in ("token", "cluster_token", "Auth", "password"):
        with pytest.raises(ValueError):
            discovery.txt_record("pi", 7001, {key: "s3cret"})
    with pytest.raises(ValueError):  # refused before any socket is opened
        discovery.Advertiser("worker", "pi", 7001, {"token": "s3cret"})
    with pytest.raises(ValueError):
        discovery.Advertiser("scheduler", "pi", 7001)


def test_lan_leaves_the_root_namespace_alone():
    def root_links() -> set[str]:
        lines = netns._ip("-o", "link").stdout.splitlines()
        return {line.split(":")[1].strip().split("@")[0] for line in lines}

    def root_addrs() -> list[str]:
        # Docker's veth* come and go with containers (other tests' containers may still be going away).
        return [line for line in netns._ip("-o", "addr").stdout.splitlines() if " veth" not in line]

    need_netns()
    links, addrs = root_links(), root_addrs()
    with netns.Lan(2, prefix="cube-tr") as lan:
        # Docker may add its own veth* meanwhile; anything else new in the root namespace would be ours.
        assert {name for name in root_links() - links if not name.startswith("veth")} == set()
        assert root_addrs() == addrs and not any("10.77." in line for line in addrs)
        inside = lan.exec(lan.hosts[1], ["ip", "-o", "-4", "addr", "show", "dev", "eth0"]).stdout
        assert "10.77.0.11/24" in inside
        names = [host.name for host in lan.hosts] + [lan.hub]
        assert set(names) <= set(netns._namespaces())
    assert not set(names) & set(netns._namespaces()), "namespaces left behind"


def test_stale_namespaces_of_dead_runs_are_removed():
    need_netns()
    dead_pid = 2**22 + 1  # above the kernel's pid_max, so never a live process
    stale = f"cube-ts-{dead_pid}-abcd-h0"
    netns._ip("netns", "add", stale)
    live = f"cube-ts-{os.getpid()}-abcd-h0"
    netns._ip("netns", "add", live)
    try:
        assert netns.clean_stale("cube-ts") == [stale]
        assert stale not in netns._namespaces() and live in netns._namespaces()
    finally:
        for name in (stale, live):
            netns._delete_namespace(name)


def test_workers_and_manager_find_each_other(lan):
    a, b, c = lan.hosts
    browser = Child(lan, a, "browse", "worker")
    browser.expect("waiting")
    manager = Child(lan, a, "advertise", "manager", "boss", "7000", "id=m0000001")
    workers = {
        b.ip: Child(lan, b, "advertise", "worker", "pi", "7001", "id=b0000001"),
        c.ip: Child(lan, c, "advertise", "worker", "pi", "7001", "id=c0000001"),
    }
    ready = {ip: child.expect("ready") for ip, child in workers.items()}
    manager.expect("ready")

    # Both workers called "pi" are found, under distinct instance names, each at its own address.
    added = {}
    while len(added) < 2:
        report = browser.expect("add")
        added[report["found"]["host"]] = report
    assert set(added) == {b.ip, c.ip}
    assert added[b.ip]["found"]["name"] != added[c.ip]["found"]["name"]
    for ip, report in added.items():
        found = report["found"]
        assert found["name"] == ready[ip]["instance"]
        assert report["url"] == f"https://{ip}:7001"  # no scheme advertised: TLS
        assert found["properties"]["name"] == "pi"
        assert found["properties"]["id"] == ("b0000001" if ip == b.ip else "c0000001")
        assert set(found["properties"]) == {"id", "name", "port", "arch", "version"}
        assert not any("token" in key.lower() for key in found["properties"])
        print(
            f"discovery of {found['name']}: {report['t'] - workers[ip].first('start')['t']:.2f}s "
            f"from Advertiser start to the browser's add"
        )
    assert ready[b.ip]["addresses"] == [b.ip] and ready[c.ip]["addresses"] == [c.ip]

    # A one-shot lookup from C returns as soon as the manager resolves.
    lookup = Child(lan, c, "find-manager", "5")
    result = lookup.expect("manager")
    assert result["found"]["host"] == a.ip and result["found"]["port"] == 7000
    assert result["found"]["properties"]["name"] == "boss"
    assert result["seconds"] < 3, result
    print(f"find_manager answered in {result['seconds']:.2f}s")

    # SIGTERM makes B say goodbye: it closes quickly and vanishes from A's browser.
    gone_at = time.time()
    assert workers[b.ip].stop() == 0
    assert workers[b.ip].expect("closed")["seconds"] < 2
    removed = browser.expect("remove", where=lambda r: r["found"]["host"] == b.ip)
    print(f"removal seen {removed['t'] - gone_at:.3f}s after SIGTERM")
    assert removed["found"]["name"] == ready[b.ip]["instance"]

    # Every child ran inside its own test namespace, never in the root one.
    for child in [browser, manager, lookup, *workers.values()]:
        inodes = {report["netns"] for report in child.seen}
        assert inodes == {netns_inode(child.host)} and ROOT_NETNS not in inodes
    for child in (browser, manager, workers[c.ip]):
        assert child.stop() == 0
        assert child.expect("closed")["seconds"] < 2


def test_a_taken_name_gets_a_new_one(lan):
    a, b, c = lan.hosts
    first = Child(lan, b, "advertise", "worker", "twin", "7002", "id=same0001")
    first_name = first.expect("ready")["instance"]
    second = Child(lan, c, "advertise", "worker", "twin", "7002", "id=same0001")
    second_name = second.expect("ready")["instance"]
    assert first_name == "twin-same0001" and second_name != first_name
    browser = Child(lan, a, "browse", "worker")
    hosts = {browser.expect("add")["found"]["host"] for _ in range(2)}
    assert hosts == {b.ip, c.ip}
    for child in (first, second, browser):
        assert child.stop() == 0
