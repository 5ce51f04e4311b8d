"""Several managers on one etcd (issue 15), with real parts: a three-member etcd cluster (Debian's etcd 3.4), each
member in its own network namespace, and `cube manager --etcd` processes in two more, all on one bridge.

One test walks through the failures in order (starting the cluster is the slow part): one manager leads and serves,
the other waits; kill -9 of the leader -> the standby leads (the time is printed: issue 15 asks for it, and
BENCHMARKS.md keeps it; no timing is asserted here); the leader cut from etcd stops (its lease is gone, so is its
key) and the other takes over; a leader paused past its lease (SIGSTOP) finds it gone when it resumes and stops (a
write it made first would be refused by etcd: the fence, tested in tests/test_leadership.py); one etcd member
killed -> writes still land; two killed -> a write is refused with "etcd has no quorum", in one line, and the
leader stops; nothing is numbered twice throughout."""

import os
import signal
import subprocess
import sys
import time

import pytest
from etcd_server import EtcdCluster, require
from netns import lan_for_test

pytestmark = pytest.mark.netns
TOKEN = "leadership-test-token"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {ROOT!r}); {code}"]


class Managers:
    """`cube manager --etcd` processes, one per host, started and killed by the test."""

    def __init__(self, lan, urls, directory):
        self.lan, self.urls, self.directory = lan, ",".join(urls), str(directory)
        self.procs: dict[int, subprocess.Popen] = {}

    def start(self, host) -> subprocess.Popen:
        data = os.path.join(self.directory, f"manager-{host.index}-{len(self.procs)}")
        argv = _python("from cube.cli.main import main; sys.exit(main())") + [
            "manager",
            f"--etcd={self.urls}",
            "--insecure",
            "--no-mdns",
            f"--host={host.ip}",
            "--port=5555",
            f"--data={data}",
            f"--token={TOKEN}",
            "--cluster-cidr=off",
        ]
        log = open(data + ".log", "wb")
        proc = self.lan.run(host, argv, stdout=log, stderr=subprocess.STDOUT)
        proc.log_path = data + ".log"  # type: ignore[attr-defined]
        self.procs[host.index] = proc
        return proc


def log_of(proc) -> str:
    with open(proc.log_path) as f:
        return f.read()


def leader(lan, client_host, urls) -> str:
    """The value of /cube/leader ("<name> <campaign>") as etcd has it, or ""."""
    out = lan.exec(
        client_host, ["etcdctl", f"--endpoints={','.join(urls)}", "get", "/cube/leader", "--print-value-only"]
    )
    return out.stdout.strip()


def post_task(lan, host, address: str) -> tuple[int, str]:
    """POST /tasks to the manager at `address`, from inside `host`: (status, body)."""
    code = (
        "import urllib.request, urllib.error, json; "
        f"r = urllib.request.Request('http://{address}:5555/tasks', method='POST', "
        "data=json.dumps({'image': 'cube-busybox:latest', 'command': ['sleep', '1']}).encode(), "
        f"headers={{'Authorization': 'Bearer {TOKEN}', 'Content-Type': 'application/json'}})\n"
        "try:\n    a = urllib.request.urlopen(r, timeout=20); print(a.status, a.read().decode())\n"
        "except urllib.error.HTTPError as e:\n    print(e.code, e.read().decode())\n"
        "except OSError as e:\n    print(0, e)"
    )
    out = lan.exec(host, [sys.executable, "-c", code], timeout=40).stdout.strip()
    status, _, body = out.partition(" ")
    return int(status or 0), body


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout:g} s: {what}")


def events(lan, host, urls) -> list[int]:
    out = lan.exec(
        host, ["etcdctl", f"--endpoints={','.join(urls)}", "get", "/cube/e/", "--prefix", "--keys-only"], timeout=30
    )
    return [int(line.rsplit("/", 1)[1]) for line in out.stdout.split() if line.strip()]


def test_one_manager_leads_fails_over_and_is_fenced_and_etcd_quorum_is_said(tmp_path):
    require()
    with lan_for_test(6, "cube-etcd") as lan:
        members, (a_host, b_host, client) = lan.hosts[:3], lan.hosts[3:]
        cluster = EtcdCluster(lan, members, tmp_path)
        urls = cluster.urls
        try:
            managers = Managers(lan, urls, tmp_path)
            a = managers.start(a_host)
            first = wait_for(lambda: leader(lan, client, urls), 30, "a manager leads")
            wait_for(lambda: post_task(lan, client, a_host.ip)[0] == 201, 30, "the leader serves")
            b = managers.start(b_host)
            said = f"standby: {first.split()[0]} leads"
            wait_for(lambda: said in log_of(b), 30, "the standby says who leads")
            assert b.poll() is None and leader(lan, client, urls) == first
            assert post_task(lan, client, b_host.ip)[0] == 0, "a standby does not serve (forwarding: later)"

            # kill -9 of the leader: the standby leads once the lease is gone.
            a.kill()
            killed = time.monotonic()
            second = wait_for(lambda: (v := leader(lan, client, urls)) and v != first and v, 30, "the standby leads")
            print(f"\nfailover after kill -9: {time.monotonic() - killed:.2f} s (lease TTL 3 s)")
            status, body = wait_for(lambda: (r := post_task(lan, client, b_host.ip))[0] and r, 30, "b serves")
            assert status == 201, body

            # The leader cut from etcd: it stops (its lease and key go), the other manager takes over.
            a2 = managers.start(a_host)
            time.sleep(1)
            assert leader(lan, client, urls) == second and a2.poll() is None
            lan.exec(b_host, ["ip", "link", "set", "eth0", "down"])
            cut = time.monotonic()
            wait_for(lambda: b.poll() is not None, 30, "the cut-off leader stops")
            print(f"cut-off leader stopped after {time.monotonic() - cut:.2f} s, exit {b.returncode}")
            assert b.returncode != 0
            assert "lost the leadership" in log_of(b)
            third = wait_for(lambda: (v := leader(lan, client, urls)) and v != second and v, 30, "a2 leads")
            assert third.split()[1] != first.split()[1]
            wait_for(lambda: post_task(lan, client, a_host.ip)[0] == 201, 30, "a2 serves")

            # The link heals: a manager started there is a standby. The leader paused past its lease (SIGSTOP):
            # the standby leads; resumed, the old leader finds its lease gone and stops.
            lan.exec(b_host, ["ip", "link", "set", "eth0", "up"])
            b2 = managers.start(b_host)
            said = f"standby: {third.split()[0]} leads"
            wait_for(lambda: said in log_of(b2), 30, "the manager on the healed link is a standby")
            os.kill(a2.pid, signal.SIGSTOP)
            fourth = wait_for(lambda: (v := leader(lan, client, urls)) and v != third and v, 30, "b2 leads")
            wait_for(lambda: post_task(lan, client, b_host.ip)[0] == 201, 30, "b2 serves")
            os.kill(a2.pid, signal.SIGCONT)
            wait_for(lambda: a2.poll() is not None, 30, "the resumed leader stops")
            assert a2.returncode == 1 and "lost the leadership" in log_of(a2)
            assert leader(lan, client, urls) == fourth

            # One etcd member down: still writes. Two down: a clear "no quorum".
            gone = cluster.leader(0)  # etcd's own raft leader: the member whose loss costs an election
            cluster.kill(gone)
            status, body = post_task(lan, client, b_host.ip)
            assert status == 201, body
            alive = [u for i, u in enumerate(urls) if i != gone]
            ids = events(lan, client, alive)
            assert ids == list(range(1, len(ids) + 1)), "every event numbered once"
            cluster.kill(urls.index(alive[1]))
            probe = _python(
                "from cube.store.etcd import EtcdStore\n"
                "from cube.core.errors import CubeError\n"
                "try:\n"
                f"    EtcdStore({alive[0]!r}, prefix='/probe/').put('tasks', 'x', {{'v': 1}})\n"
                "except CubeError as e:\n"
                "    print(e.status, e.message)"
            )
            out = lan.exec(client, probe, timeout=60)
            assert (
                out.stdout.strip()
                == f"503 etcd has no quorum (at {alive[0]}: no leader; start the members that are down)"
            ), out
            assert "Traceback" not in out.stderr
            wait_for(lambda: b2.poll() is not None, 30, "the leader stops without quorum (its lease cannot be kept)")
            assert b2.returncode == 1
        finally:
            cluster.close()
