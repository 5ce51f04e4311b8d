"""A real Prometheus (Debian's `prometheus` package) scrapes a manager and a worker, each its own pyz process on
loopback (an insecure cluster with a token): the manager with the token in the scrape config's `authorization`, the
worker started with --metrics-open and scraped without one. Prometheus is started by the test (never the system
service), with its own storage and config in the test's directory and a free port, and killed at the end. The test
asks Prometheus itself, through its HTTP API, that both targets are up and that the series are there.

Without the `prometheus` binary the test skips, except in CI (CI=true), where it fails (.ci/run installs it)."""

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request

import pytest
from conftest import free_port, wait_for

from cube.cluster.client import Client

TOKEN = "prometheus-test-token"


@pytest.fixture
def prometheus(tmp_path):
    """Starts a Prometheus with the given scrape configs; every one started is killed at the end."""
    binary = shutil.which("prometheus")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI needs Prometheus: apt-get install prometheus")
        pytest.skip("`prometheus` is missing (apt-get install prometheus)")
    started: list[Prometheus] = []
    yield lambda jobs: Prometheus(binary, tmp_path, jobs, started)
    for each in started:
        each.kill()


class Prometheus:
    """The prometheus binary on 127.0.0.1:`port`, scraping the `jobs` (scrape configs) every second; its log in
    the directory. Added to `started` as soon as it runs, so that the fixture kills it whatever happens next."""

    def __init__(self, binary: str, directory, jobs: list[dict], started: list):
        self.port = free_port()
        config = directory / "prometheus.yml"
        # JSON is YAML: the scrape config written without a YAML library.
        config.write_text(
            json.dumps({"global": {"scrape_interval": "1s", "scrape_timeout": "1s"}, "scrape_configs": jobs})
        )
        self.log_path = directory / "prometheus.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={directory / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(self)
        wait_for(self._ready, timeout=30, interval=0.1)

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{self.log()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=1) as answer:
                return answer.status == 200
        except OSError:
            return False

    def api(self, path: str, **params) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=5) as answer:
            data = json.loads(answer.read())
        assert data["status"] == "success", data
        return data["data"]

    def targets(self) -> dict:
        """job -> (health, last error) of its one target."""
        return {t["labels"]["job"]: (t["health"], t["lastError"]) for t in self.api("targets")["activeTargets"]}

    def query(self, expression: str) -> list[dict]:
        return self.api("query", query=expression)["result"]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=15)


def test_prometheus_scrapes_a_manager_and_a_worker(prometheus, pyz, procs, tmp_path):
    manager_port, worker_port = free_port(), free_port()

    def start(role: str, port: int, *flags: str):
        common = ["--insecure", "--token", TOKEN, "--host", "127.0.0.1", "--port", str(port), "--no-mdns"]
        argv = [pyz, role, *common, "--data", str(tmp_path / role), *flags]
        return procs(argv, tmp_path / f"{role}.log")

    manager = start("manager", manager_port, "--workers", f"127.0.0.1:{worker_port}")
    worker = start(
        "worker",
        worker_port,
        "--name",
        f"prom-{worker_port}",
        "--manager",
        f"http://127.0.0.1:{manager_port}",
        "--metrics-open",
    )
    manager.wait_http(f"http://127.0.0.1:{manager_port}")
    worker.wait_http(f"http://127.0.0.1:{worker_port}")
    client = Client(f"http://127.0.0.1:{manager_port}", TOKEN)
    wait_for(lambda: len(client.get("/nodes")) == 1, timeout=30)
    # A job whose task no node fits: it stays pending (no container on this machine's engine, if it has one).
    client.post("/jobs", {"name": "big", "count": 1, "task": {"image": "cube-busybox:latest", "cpu": 1000}})

    server = prometheus(
        [
            {
                "job_name": "cube-manager",
                "authorization": {"credentials": TOKEN},
                "static_configs": [{"targets": [f"127.0.0.1:{manager_port}"]}],
            },
            {"job_name": "cube-worker", "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}]},
        ],
    )
    up = {"cube-manager": ("up", ""), "cube-worker": ("up", "")}
    wait_for(lambda: server.targets() == up, timeout=30, interval=0.5)
    wait_for(lambda: server.query('cube_tasks{cube_job="big",state="pending"} == 1'), timeout=15, interval=0.5)
    # One series per state, with the target's job label beside the task's: neither renamed.
    tasks = [r["metric"] for r in server.query("cube_tasks")]
    assert [(t["job"], t["cube_job"]) for t in tasks] == [("cube-manager", "big")] * 5, tasks
    nodes = server.query("cube_nodes")
    assert sorted(r["metric"]["state"] for r in nodes) == ["down", "ready", "unhealthy"]
    assert sum(float(r["value"][1]) for r in nodes) == 1
    assert server.query('cube_placement_failures_total{reason="insufficient cpu"} == 1')
    assert server.query('cube_http_request_duration_seconds_count{route="/jobs",method="POST"} == 1')
    assert [r["metric"]["job"] for r in server.query("cube_worker_engine_up")] == ["cube-worker"]
    assert len(server.query("cube_worker_tasks")) == 5
    server.kill()
    # The token is what let Prometheus in: without it the manager refuses /metrics.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{manager_port}/metrics", timeout=5)
    assert refused.value.code == 401
    worker.kill(15)
    manager.kill(15)
