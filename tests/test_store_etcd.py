"""What the etcd store promises beyond the contract suite (tests/test_store.py runs that one on etcd too): two
writers on one etcd (two managers) never number an event twice, a fenced store cannot write once its fence is gone,
a batch over etcd's limits is refused whole with the flag to raise, and etcd that cannot be used is one clear line.
All on real etcd processes (tests/etcd_server.py)."""

import http.server
import threading
import uuid

import pytest
from etcd_server import Etcd, require

from cube.core.errors import BadRequest, StorageFailed
from cube.core.model import Event
from cube.store.etcd import EtcdStore, NotLeading
from cube.store.etcd_gateway import parse_endpoints


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    require()
    with Etcd(tmp_path_factory.mktemp("etcd")) as server:
        yield server


def event(task_id: str) -> Event:
    return Event(0, task_id, "running", 1.0, "", "n1")


@pytest.fixture
def prefix() -> str:
    return f"/test/{uuid.uuid4().hex}/"


def test_two_writers_on_one_etcd_number_events_once_each(etcd, prefix):
    # Each store takes its own lock; only etcd's compares on the counter keep two processes apart.
    stores = [EtcdStore(etcd.url, prefix=prefix) for _ in range(2)]
    got: dict[str, list[int]] = {}

    def append(store: EtcdStore, name: str) -> None:
        got[name] = [store.append_event(event(name)).id for _ in range(40)]

    threads = [threading.Thread(target=append, args=(s, f"w{i}")) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(got["w0"] + got["w1"]) == list(range(1, 81))
    reader = stores[0]
    assert reader.last_event_id() == 80
    assert [e.id for e in reader.events(limit=100)] == list(range(1, 81))
    for name, mine in got.items():
        assert [e.id for e in reader.events(task_id=name)] == mine
    for s in stores:
        s.close()


def test_a_fenced_store_writes_nothing_once_its_fence_is_gone(etcd, prefix):
    leader_key = prefix + "leader"
    store, other = EtcdStore(etcd.url, prefix=prefix), EtcdStore(etcd.url, prefix=prefix)
    assert store.etcd.create(leader_key, "me") == (True, "me")
    assert store.etcd.create(leader_key, "other") == (False, "me")  # only if absent
    store.fence(leader_key, "me")
    store.put("tasks", "a", {"v": 1})
    assert other.get("tasks", "a") == {"v": 1}
    assert other.etcd.delete_key(leader_key, "me")
    assert other.etcd.create(leader_key, "other") == (True, "other")
    with pytest.raises(NotLeading, match="no longer leads"):
        with store.batch():
            store.put("tasks", "a", {"v": 2})
            store.put("tasks", "b", {"v": 2})
            store.append_event(event("a"))
    assert other.get("tasks", "a") == {"v": 1} and other.get("tasks", "b") is None
    assert other.last_event_id() == 0
    with pytest.raises(NotLeading):
        store.append_event(event("a"))  # an append of its own is not retried into a fenced etcd
    assert other.last_event_id() == 0
    store.close()
    other.close()


def test_a_batch_over_etcds_limits_is_refused_whole_naming_the_flag(tmp_path, prefix):
    require()
    with Etcd(tmp_path, raised_limits=False) as small:  # etcd's defaults: 128 operations in a txn
        store = EtcdStore(small.url, prefix=prefix)
        store.put("jobs", "web", {"count": 0})
        with pytest.raises(StorageFailed, match=r"--max-txn-ops \(raise it: see README\)") as refused:
            with store.batch():
                store.put("jobs", "web", {"count": 200})
                for i in range(200):
                    store.put("tasks", f"t{i}", {"i": i})
        assert "\n" not in str(refused.value) and small.url in str(refused.value)
        assert store.get("jobs", "web") == {"count": 0} and store.values("tasks") == []
        with pytest.raises(StorageFailed, match=r"--max-request-bytes"):
            store.put("blobs", "big", {"data": "x" * (2 << 20)})
        assert store.values("blobs") == []
        store.close()


def test_etcd_that_cannot_be_reached_is_one_line_naming_the_url(tmp_path):
    with pytest.raises(StorageFailed) as refused:
        EtcdStore("http://127.0.0.1:9", timeout=2)
    assert str(refused.value) == "etcd at http://127.0.0.1:9 cannot be reached (is etcd running there?)"


class NotEtcd(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.send_response(404)
        self.end_headers()
        self.wfile.write(b"404 page not found")

    def log_message(self, *args):
        pass


class OldEtcd(http.server.BaseHTTPRequestHandler):
    """What etcd 3.3 would answer at /v3/maintenance/status, had it a /v3 gateway (its was /v3beta)."""

    def do_POST(self):
        body = b'{"header": {}, "version": "3.3.25", "leader": "1"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(
    "handler, said",
    [
        (NotEtcd, r"does not answer as etcd's /v3 gateway \(is it an etcd 3.4\+ client URL\?\)"),
        (OldEtcd, r"is version 3.3.25: Cube needs etcd 3.4 or later"),
    ],
)
def test_a_url_that_is_not_etcd_or_too_old_is_one_line(handler, said):
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        with pytest.raises(StorageFailed, match=said) as refused:
            EtcdStore(url, timeout=2)
        assert url in str(refused.value) and "\n" not in str(refused.value)
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("urls", ["", "etcd-host:2379", "ftp://a:2379", "http://a:2379/v3", "http://a:port", " , "])
def test_bad_etcd_urls_are_refused_naming_them(urls):
    with pytest.raises(BadRequest, match="etcd: "):
        parse_endpoints(urls)


def test_several_urls_go_to_one_that_answers(etcd, prefix):
    assert parse_endpoints("http://a, https://b:2380") == ["http://a:2379", "https://b:2380"]
    store = EtcdStore(f"http://127.0.0.1:9,{etcd.url}", prefix=prefix)
    store.put("tasks", "a", {"v": 1})
    assert store.get("tasks", "a") == {"v": 1} and store.url == etcd.url
    store.close()
