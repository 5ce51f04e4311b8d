"""Shared fixtures for tests on a real Docker engine: the local test image and a per-test node name whose
containers are removed afterwards. Without an engine these tests skip, except in CI (CI=true), where they fail."""

import os
import pathlib
import subprocess
import uuid

import pytest
from engines import engine_lan  # noqa: F401  (the fixture: a LAN of hosts with a Docker engine each)

IMAGE = "cube-busybox:latest"
HERE = pathlib.Path(__file__).parent


def _docker_answers() -> bool:
    try:
        # `docker version` asks the engine too, and stays cheap where `docker info` can hang (seen after a
        # swarm was left on Docker 20.10).
        return (
            subprocess.run(
                ["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True, timeout=20
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def busybox_image() -> str:
    """`cube-busybox:latest`, built by tests/make_image.sh when missing."""
    if not _docker_answers():
        if os.environ.get("CI") == "true":
            pytest.fail("CI needs a Docker engine and none answers (start dockerd)")
        pytest.skip("no Docker engine answers")
    subprocess.run(["bash", str(HERE / "make_image.sh"), IMAGE], check=True, timeout=120)
    return IMAGE


@pytest.fixture
def node_name(busybox_image) -> str:
    """A node name of this test only (`test-<hex>`); every container labelled with it is removed afterwards."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name
    kill_started()  # a worker still running could create a container after the sweep below
    ids = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=cube.node={name}"], capture_output=True, text=True, timeout=30
    ).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", "-v", *ids], capture_output=True, timeout=60)


ROOT = HERE.parent
PYZ = ROOT / "dist" / "cube.pyz"


@pytest.fixture(scope="session")
def pyz() -> str:
    """The built zipapp: the tests run the artifact users get (`./build.sh` makes it; .ci/run builds first)."""
    if not PYZ.exists():
        pytest.fail(f"{PYZ} is missing: run ./build.sh first")
    return str(PYZ)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A cube process started from the pyz, with its output in a file; killed (and reaped) at the end."""

    def __init__(self, argv: list[str], log_path, env: dict | None = None):
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "ab")
        full_env = {**os.environ, "CUBE_NO_MDNS": "1", **(env or {})}
        self.popen = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True
        )

    def wait_http(self, url: str, timeout: float = 30.0) -> None:
        import time

        from cube.cluster.client import Client
        from cube.cluster.trust import Trust
        from cube.core.errors import CubeError

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise AssertionError(f"process exited with {self.popen.returncode}:\n{self.output()}")
            try:
                Client(url, timeout=1.0, trust=Trust(insecure=url.startswith("http://"))).health(timeout=1.0)
                return
            except CubeError:
                time.sleep(0.05)
        raise AssertionError(f"{url} did not answer within {timeout} s:\n{self.output()}")

    def output(self) -> str:
        self._log.flush()
        return pathlib.Path(self.log_path).read_text(errors="replace")[-4000:]

    def kill(self, sig=9) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, 9)
                self.popen.wait(timeout=5)
        self._log.close()


_STARTED: list[Proc] = []


def kill_started() -> None:
    """Kill every process the `procs` fixture started that still runs (container sweeps call it first)."""
    while _STARTED:
        _STARTED.pop().kill()


@pytest.fixture
def procs():
    def start(argv, log_path, env=None) -> Proc:
        proc = Proc(argv, log_path, env)
        _STARTED.append(proc)
        return proc

    yield start
    kill_started()


def cluster_client(url: str, token: str, timeout: float = 10.0, manager_data=None):
    """A client of the manager at `url` as the CLI makes one: the manager's CA read from its data directory when
    given, else fetched and checked with the token (see cube.cluster.client.manager_trust)."""
    from cube.cluster.client import Client, manager_trust
    from cube.cluster.trust import member_files, parse_token

    given = parse_token(token)
    local = None
    if manager_data is not None and os.path.exists(member_files(str(manager_data))[0]):
        local = pathlib.Path(member_files(str(manager_data))[0]).read_text()
    return Client(url, given.secret, timeout=timeout, trust=manager_trust(url, given, local))


def wait_for(predicate, timeout=10.0, interval=0.02):
    import time

    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s (last value {last!r})")


def docker_ids(*filters: str) -> list[str]:
    argv = ["docker", "ps", "-q", "--no-trunc"]
    for f in filters:
        argv += ["--filter", f]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.split()


def remove_volumes(*nodes: str) -> None:
    """Remove the named volumes Cube made for these nodes (label cube.node); their containers must be gone first."""
    for node in nodes:
        names = subprocess.run(
            ["docker", "volume", "ls", "-q", "--filter", f"label=cube.node={node}"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.split()
        if names:
            subprocess.run(["docker", "volume", "rm", "-f", *names], capture_output=True, timeout=60)


def docker_inspect(container_id: str) -> dict:
    import json

    out = subprocess.run(["docker", "inspect", container_id], capture_output=True, text=True, timeout=30)
    return json.loads(out.stdout)[0]


def _cube_containers() -> set[str]:
    if not _docker_answers():
        return set()
    out = subprocess.run(
        ["docker", "ps", "-aq", "--no-trunc", "--filter", "label=cube.node"], capture_output=True, text=True, timeout=30
    )
    return set(out.stdout.split())


_BEFORE: set[str] = set()


def pytest_sessionstart(session):
    """Cube's containers on the machine's engine before this run began: another run's, not this one's leftovers."""
    _BEFORE.update(_cube_containers())


def _leftovers(basetemp: str) -> list[str]:
    """What this run left behind: containers of Cube on the machine's engine made since it began, processes started
    from the run's temporary directory, network namespaces named with this process's pid."""
    found = [f"container {i[:12]}" for i in sorted(_cube_containers() - _BEFORE)]
    me = str(os.getpid())
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit() or entry.name == me:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if basetemp and basetemp in argv:
            found.append(f"process {entry.name}: {argv[:120]}")
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    found += [f"network namespace {n}" for n in names if f"-{me}-" in n]
    return found


def pytest_sessionfinish(session, exitstatus):
    """The suite must leave no container, process or namespace behind (issue 9): the run fails if it does."""
    if getattr(session.config, "workerinput", None) is not None:
        return
    try:
        basetemp = str(session.config._tmp_path_factory.getbasetemp())
    except (AttributeError, ValueError):
        basetemp = ""
    left = _leftovers(basetemp)
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = ["", "the tests left these behind:", *(f"  {item}" for item in left)]
        if reporter:
            reporter.write_line("\n".join(lines), red=True)
        session.exitstatus = 1
