"""Leadership on one real etcd (tests/etcd_server.py, loopback): one campaign leads at a time, a standby takes over
when the leader steps down, and a leader whose key is gone cannot write (fencing) and learns it has lost. The
three-member cluster with manager processes, kill -9 and a partition is tests/test_leadership_etcd.py. Also the
`cube manager --etcd` mistakes said in one line."""

import signal
import subprocess
import sys
import threading
import uuid

import pytest
from etcd_server import Etcd, require

from cube.cli.main import main
from cube.manager.leadership import Leadership
from cube.store.etcd import EtcdStore, NotLeading


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    require()
    with Etcd(tmp_path_factory.mktemp("etcd")) as server:
        yield server


@pytest.fixture
def stores(etcd):
    prefix = f"/test/{uuid.uuid4().hex}/"
    opened = [EtcdStore(etcd.url, prefix=prefix) for _ in range(2)]
    yield opened
    for store in opened:
        store.close()


def test_one_leads_and_a_standby_takes_over_when_it_steps_down(stores):
    first, second = Leadership(stores[0], "m1", poll=0.05), Leadership(stores[1], "m2", poll=0.05)
    try:
        assert first.campaign() and first.leading.is_set()
        assert not second.try_lead() and first.holder() == first.value
        stores[0].put("tasks", "a", {"by": "m1"})
        campaigning = threading.Thread(target=second.campaign)
        campaigning.start()
        first.close()  # steps down: key and lease go at once
        campaigning.join(timeout=10)
        assert second.leading.is_set() and second.holder() == second.value
        stores[1].put("tasks", "a", {"by": "m2"})
        assert stores[0].get("tasks", "a") == {"by": "m2"}
    finally:
        first.close()
        second.close()


def test_a_leader_whose_key_is_gone_cannot_write_and_knows_it_lost(stores):
    leader, other = Leadership(stores[0], "m1"), Leadership(stores[1], "m2")
    try:
        assert leader.try_lead()
        stores[0].put("tasks", "a", {"v": 1})
        stores[1].etcd.revoke(leader.lease)  # as when its lease ran out while it was paused: the key goes with it
        assert other.try_lead()
        with pytest.raises(NotLeading, match="no longer leads"):
            with stores[0].batch():
                stores[0].put("tasks", "a", {"v": 2})
        assert leader.lost.is_set() and not leader.leading.is_set()
        assert stores[1].get("tasks", "a") == {"v": 1} and stores[1].last_event_id() == 0
    finally:
        leader.close()
        other.close()


def test_cube_manager_says_a_bad_or_unreachable_etcd_in_one_line(tmp_path, capsys):
    assert main(["manager", "--etcd", "etcd-host:2379", "--data", str(tmp_path), "--insecure", "--no-mdns"]) == 1
    assert capsys.readouterr().err == ("cube manager: etcd: 'etcd-host:2379' is not a URL like http://host:2379\n")
    argv = ["manager", "--etcd", "http://127.0.0.1:9", "--data", str(tmp_path), "--insecure", "--no-mdns"]
    assert main(argv) == 1
    assert capsys.readouterr().err == (
        "cube manager: etcd at http://127.0.0.1:9 cannot be reached (is etcd running there?)\n"
    )


def test_a_leader_stopped_by_sigterm_steps_down_at_once_and_exits_0(etcd, tmp_path):
    argv = [sys.executable, "-c", "import sys; from cube.cli.main import main; sys.exit(main())", "manager"]
    argv += ["--etcd", etcd.url, "--data", str(tmp_path), "--insecure", "--no-mdns", "--host", "127.0.0.1"]
    proc = subprocess.Popen([*argv, "--port", "0", "--token", "t"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    store = EtcdStore(etcd.url)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # until it serves (its signal handlers are set by then)
            if b"manager serving" in line:
                break
        assert store.etcd.read_key("/cube/leader") is not None
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0].decode()
        assert proc.returncode == 0, output
        assert store.etcd.read_key("/cube/leader") is None, "stepped down: a standby need not wait for the lease"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        store.close()


def test_the_pyz_carries_the_etcd_client(pyz, tmp_path):
    # The shipped file, not the source tree: etcd3gw and its dependencies load from the pyz (build.sh).
    argv = [pyz, "manager", "--etcd", "http://127.0.0.1:9", "--data", str(tmp_path), "--insecure", "--no-mdns"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr == "cube manager: etcd at http://127.0.0.1:9 cannot be reached (is etcd running there?)\n"
