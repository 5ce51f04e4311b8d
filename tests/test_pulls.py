"""Images (issue 11) without an engine: pull progress as the engine's stream tells it, the timeout and the stall
with their reasons, registry credentials (sealed on the manager, never answered back, handed over with an
assignment and kept by the worker in memory only), and a platform mismatch: the task fails at once, the manager
remembers it per image, and the next placement avoids that platform (the harness: real manager, real workers on
fake runtimes). The same with a real registry and real engines: tests/test_registry_docker.py."""

import json
import os
import stat
import time

import pytest
from factories import make_node, make_spec
from harness import ClusterHarness
from test_api import TOKEN, Recorder, call, error_of

from cube.cluster.api import manager_app, worker_app
from cube.cluster.links import Links
from cube.cluster.pki import SEAL_KEY, Sealer
from cube.core.errors import CubeError
from cube.core.images import lacking_arch, no_variant, platform, registry_host, same_platform
from cube.manager.manager import Manager
from cube.manager.membership import Membership
from cube.manager.registries import Registries
from cube.scheduler import IMAGE_PLATFORM, place
from cube.store import MemoryStore
from cube.worker.pulls import Credentials, PullProgress, refused
from cube.worker.runtime import FakeRuntime
from cube.worker.worker import Worker

AMD64_ONLY = "registry.lan:5000/tools:amd64"


# ---- names and platforms -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "host"),
    [
        ("nginx", "docker.io"),
        ("library/nginx:1.25", "docker.io"),
        ("registry.lan:5000/app:1", "registry.lan:5000"),
        ("localhost/app", "localhost"),
        ("10.0.0.2:5000/a/b@sha256:00", "10.0.0.2:5000"),
        ("Ghcr.IO/owner/x", "ghcr.io"),
    ],
)
def test_the_registry_of_an_image_is_read_as_docker_reads_it(image, host):
    assert registry_host(image) == host


def test_platforms_in_dockers_words():
    assert platform("aarch64") == "linux/arm64" == platform("arm64")
    assert platform("x86_64") == "linux/amd64" and platform("armv7l") == "linux/arm/v7"
    assert same_platform("armv7l", "linux/arm/v6") and not same_platform("aarch64", "linux/amd64")
    reason = no_variant("busybox", "aarch64", "it is linux/amd64", "pi1")
    assert reason.startswith("image busybox has no linux/arm64 variant (it is linux/amd64) on node pi1")
    assert lacking_arch(f"cannot start: {reason}") == "linux/arm64"
    assert lacking_arch("cannot start: image busybox could not be pulled") is None


# ---- pull progress and its limits ----------------------------------------------------------------------------------


def stream(pull: PullProgress, now: float) -> None:
    """What dockerd 20.10 says while pulling an image of two layers, one of them already present."""
    for message in (
        {"status": "Pulling from tools", "id": "amd64"},
        {"status": "Already exists", "id": "aaa", "progressDetail": {}},
        {"status": "Pulling fs layer", "id": "bbb", "progressDetail": {}},
        {"status": "Downloading", "id": "bbb", "progressDetail": {"current": 4_500_000, "total": 10_000_000}},
    ):
        pull.update(message, now)


def test_progress_is_read_from_the_engines_stream():
    pull = PullProgress("tools", "n1", started=0.0, last_word=0.0)
    assert pull.text("n1") == "pulling tools on n1" and pull.percent() is None
    stream(pull, 5.0)
    assert pull.percent() == 45
    assert pull.text("n1") == "pulling tools on n1: 45% (4.5 of 10.0 MB)"
    pull.update({"status": "Download complete", "id": "bbb"}, 6.0)
    pull.update({"status": "Pull complete", "id": "bbb"}, 7.0)
    assert pull.percent() == 100
    pull.update({"error": "unauthorized: authentication required"}, 8.0)
    assert pull.error == "unauthorized: authentication required"


def test_a_pull_that_stalls_fails_before_its_timeout_and_says_both():
    pull = PullProgress("tools", "n1", started=0.0, last_word=0.0)
    stream(pull, 10.0)
    assert pull.overdue(300, 60, "n1", now=69.0) is None
    reason = pull.overdue(300, 60, "n1", now=71.0)
    assert reason is not None and reason.startswith(
        "pull of tools timed out after 71 s (no progress for 61 s) on node n1 (45% downloaded)"
    )
    pull.update({"status": "Downloading", "id": "bbb", "progressDetail": {"current": 5_000_000, "total": 10**7}}, 290)
    assert pull.overdue(300, 60, "n1", now=301.0).startswith(
        "pull of tools timed out after 301 s on node n1 (50% downloaded): a slow link or a big image"
    )


def test_a_refused_pull_says_what_to_do():
    error = "Head https://registry.lan:5000/v2/app/manifests/1: no basic auth credentials"
    assert refused("registry.lan:5000/app:1", error, None).startswith(
        "registry registry.lan:5000 wants credentials for registry.lan:5000/app:1: `cube registry login"
    )
    wrong = refused("registry.lan:5000/app:1", "unauthorized: authentication required", {"username": "ci"})
    assert wrong.startswith("registry registry.lan:5000 refused the credentials of ci")
    assert refused("x", "manifest unknown", None) == "manifest unknown"


def test_credentials_in_the_worker_are_shown_by_host_only():
    kept = Credentials()
    kept.remember({"host": "registry.lan:5000", "username": "ci", "password": "s3cret-pw"})
    kept.remember({"host": "x", "username": "", "password": "p"})  # incomplete: ignored
    kept.remember("junk")
    assert kept.for_image("registry.lan:5000/app") == {
        "username": "ci",
        "password": "s3cret-pw",
        "serveraddress": "registry.lan:5000",
    }
    assert kept.for_image("nginx") is None and kept.for_image("x/app") is None
    assert "s3cret" not in repr(kept) and "registry.lan:5000" in repr(kept)


# ---- credentials on the manager ---------------------------------------------------------------------------------


def test_sealed_secrets_open_only_with_their_key_and_host(tmp_path):
    sealer = Sealer(str(tmp_path))
    assert stat.S_IMODE(os.stat(tmp_path / SEAL_KEY).st_mode) == 0o600
    sealed = sealer.seal("s3cret-pw", "registry.lan:5000")
    assert "s3cret" not in sealed and sealer.unseal(sealed, "registry.lan:5000") == "s3cret-pw"
    assert Sealer(str(tmp_path)).unseal(sealed, "registry.lan:5000") == "s3cret-pw", "a restarted manager opens it"
    with pytest.raises(CubeError, match="does not open"):
        sealer.unseal(sealed, "other.lan")
    with pytest.raises(CubeError, match="does not open"):
        Sealer(str(tmp_path / "other")).unseal(sealed, "registry.lan:5000")


@pytest.fixture
def registries(tmp_path):
    sealer = Sealer(str(tmp_path))
    return Registries(MemoryStore(), sealer.seal, sealer.unseal)


@pytest.fixture
def app(registries):
    manager = Manager(registries.store, dispatch=Recorder(), executor=None)
    membership = Membership(manager, lambda *a, **k: {}, manager.store)
    return manager_app(manager, membership, Links(TOKEN), TOKEN, None, registries)


def test_login_keeps_the_password_sealed_and_no_answer_carries_it(app, registries):
    answer = call(
        app, "POST", "/registries", {"host": "https://Registry.LAN:5000/", "username": "ci", "password": "pw-42"}
    )
    assert answer.status == 201 and answer.json()["host"] == "registry.lan:5000" and "pw-42" not in answer.body.decode()
    listed = call(app, "GET", "/registries")
    assert [(r["host"], r["username"]) for r in listed.json()] == [("registry.lan:5000", "ci")]
    assert "pw-42" not in listed.body.decode() and "sealed" not in listed.body.decode()
    assert "pw-42" not in json.dumps(registries.store.values("registries"))
    assert registries.auth_for("registry.lan:5000/app:1") == {
        "host": "registry.lan:5000",
        "username": "ci",
        "password": "pw-42",
    }
    assert registries.auth_for("nginx") is None
    assert call(app, "DELETE", "/registries/registry.lan:5000").json()["username"] == "ci"
    assert "no credentials for registry registry.lan:5000" in error_of(
        call(app, "DELETE", "/registries/registry.lan:5000"), 404
    )
    assert call(app, "GET", "/registries", token="wrong").status == 401


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"host": "bad host", "username": "u", "password": "p"}, "host must be a registry's HOST or HOST:PORT"),
        ({"host": "r.lan", "username": "", "password": "p"}, "username must be a non-empty name"),
        ({"host": "r.lan", "username": "u", "password": ""}, "password must be non-empty"),
        (["r.lan"], 'send {"host"'),
    ],
)
def test_a_bad_login_is_a_400_naming_the_field(app, body, words):
    assert words in error_of(call(app, "POST", "/registries", body), 400)


def test_an_assignment_carries_its_registrys_credentials_and_the_worker_keeps_them_in_memory_only(registries):
    registries.login({"host": "registry.lan:5000", "username": "ci", "password": "pw-42"})
    sent = Recorder()
    dispatch = registries.dispatching(sent)
    body = {"id": "t1", "spec": {"image": "registry.lan:5000/app:1"}, "generation": 1, "desired": "run"}
    dispatch("http://w1", "POST", "/tasks", body, None)
    dispatch("http://w1", "POST", "/tasks", {**body, "id": "t2", "spec": {"image": "nginx"}}, None)
    assert sent.sent[0][3]["registry_auth"] == {"host": "registry.lan:5000", "username": "ci", "password": "pw-42"}
    assert "registry_auth" not in sent.sent[1][3] and "registry_auth" not in body

    store = MemoryStore()
    worker = Worker("w1", FakeRuntime(), store, sync=True)
    try:
        answer = call(worker_app(worker, TOKEN), "POST", "/tasks", sent.sent[0][3])
        assert answer.status == 201 and "pw-42" not in answer.body.decode()
        assert worker.credentials.for_image("registry.lan:5000/app:1")["password"] == "pw-42"
        kept = json.dumps([store.values(kind) for kind in ("tasks",)]) + json.dumps(
            [e.to_dict() for e in store.events(since=0, limit=1000)]
        )
        assert "pw-42" not in kept and "registry_auth" not in kept
    finally:
        worker.close()


# ---- platform mismatch --------------------------------------------------------------------------------------------


def test_the_platform_check_rejects_nodes_of_a_platform_the_image_lacks():
    spec = make_spec(image=AMD64_ONLY)
    pi, pc = make_node("pi1", arch="aarch64"), make_node("pc1", arch="x86_64")
    placement = place(spec, [pi, pc], lacking={"linux/arm64": "pi0"})
    assert placement.node is pc
    assert placement.counts()[IMAGE_PLATFORM] == 1 and placement.tally() == "1 image lacks platform"
    nowhere = place(spec, [pi], lacking={"linux/arm64": "pi0"})
    assert nowhere.node is None and "has no linux/arm64 variant (found on pi0)" in str(nowhere.rejections["pi1"])
    assert place(spec, [pi]).node is pi, "nothing known: any node"


def test_a_platform_mismatch_fails_at_once_and_the_next_placement_avoids_that_platform():
    c = ClusterHarness(names=())
    try:
        c.add_node("pi1", arch="aarch64")
        for runtime in c.runtimes.values():
            runtime.image_platforms[AMD64_ONLY] = "linux/amd64"
        task = c.submit({"image": AMD64_ONLY, "command": ["sleep", "3600"]})
        c.settle()
        seen = c.task(task["id"])
        assert c.runtimes["pi1"].starts == 0
        messages = [e["message"] for e in seen["events"]]
        failed = [m for m in messages if "has no linux/arm64 variant" in m]
        assert failed and "restarting" not in " ".join(messages), messages  # at once, not after 3 restarts
        assert seen["state"] == "pending" and seen["reason"].startswith("failed on pi1 (cannot start: image ")
        c.settle(rounds=4, seconds=5)  # past the reschedule delay: the only node is of the platform it lacks
        seen = c.task(task["id"])
        assert seen["state"] == "pending" and "1 image lacks platform" in seen["reason"], seen["reason"]
        assert c.runtimes["pi1"].starts == 0

        c.add_node("pc1", arch="x86_64")
        c.runtimes["pc1"].image_platforms[AMD64_ONLY] = "linux/amd64"
        c.settle(rounds=4, seconds=30)  # past the reschedule delay
        assert c.task(task["id"])["state"] == "running" and c.task(task["id"])["node"] == "pc1"

        # A second task of the image never tries a Pi: the fact outlives a manager restart.
        c.restart_manager()
        c.add_node("pi2", arch="aarch64")
        other = c.submit({"image": AMD64_ONLY, "command": ["sleep", "3600"], "name": "second"})
        c.settle()
        assert c.task(other["id"])["node"] == "pc1"
        assert c.runtimes["pi2"].starts == 0
    finally:
        c.close()


class PullingRuntime(FakeRuntime):
    """A fake engine whose starts pull first, for 3 s: at 40% from the start, at 80% from 1.5 s (the worker looks
    once a second: at 1 s and 2 s, far from either change)."""

    def __init__(self):
        super().__init__()
        self.pull: PullProgress | None = None

    def pull_progress(self, image):
        return self.pull

    def start(self, task, node, *args, **kwargs):
        self.pull = PullProgress(task.spec.image, node)
        for percent in (40, 80):
            detail = {"current": percent * 100_000, "total": 10_000_000}
            self.pull.update({"status": "Downloading", "id": "l1", "progressDetail": detail})
            time.sleep(1.5)
        self.pull.done.set()
        self.pull = None
        return super().start(task, node, *args, **kwargs)


def test_the_worker_tells_the_pulls_progress_in_the_tasks_events_once_a_second():
    from cube.core.model import Assignment

    store = MemoryStore()
    worker = Worker("n1", PullingRuntime(), store, sync=True)
    try:
        worker.accept(Assignment.from_dict({"id": "t1", "spec": {"image": "big:1"}, "generation": 1}))
        worker.tick()
        messages = [e.message for e in store.events(since=0, limit=100) if e.task_id == "t1"]
        pulling = [m for m in messages if m.startswith("pulling")]
        assert pulling == ["pulling big:1 on n1: 40% (4.0 of 10.0 MB)", "pulling big:1 on n1: 80% (8.0 of 10.0 MB)"], (
            messages
        )
        assert worker.get("t1").state.value == "running"
    finally:
        worker.close()


def test_credentials_outlive_a_manager_restart_and_need_no_token(tmp_path):
    from cube.store import DiskStore

    store = DiskStore(str(tmp_path / "store"))
    sealer = Sealer(str(tmp_path))
    Registries(store, sealer.seal, sealer.unseal).login({"host": "r.lan", "username": "ci", "password": "pw-42"})
    store.close()
    # A restarted manager (a new store handle, the key file read again); the cluster token plays no part, so
    # `POST /token/rotate` leaves the sealed passwords as they are.
    again = DiskStore(str(tmp_path / "store"))
    try:
        reopened = Sealer(str(tmp_path))
        assert Registries(again, reopened.seal, reopened.unseal).auth_for("r.lan/app")["password"] == "pw-42"
        assert all(b"pw-42" not in p.read_bytes() for p in (tmp_path / "store").rglob("*") if p.is_file())
    finally:
        again.close()
