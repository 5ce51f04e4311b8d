"""`GET /metrics` of the manager and of each worker, in Prometheus's text format (prometheus_client is imported here
only). It decides the series, their names and labels, and where each value comes from:

- what is true at any moment (tasks by state, nodes by state, long polls held open, the engine's health, what each
  container uses) is read at scrape time from the manager's or the worker's snapshots (`task_counts`, `node_counts`,
  `open_polls`, `state_counts`, `containers`, the runtime's `usage`), so a scrape costs a copy of a few counts, never
  a walk over every task under the manager's lock;
- what happens (placements and their failures, reschedules, restarts, dispatches, container starts, API requests) is
  counted as it happens: the exporters are the manager's and the worker's telemetry (cube.core.telemetry), and the
  API's timing plugin (cube.cluster.api) reports each request by its route's rule (`/tasks/<ref>`, never the path:
  one series per route, whatever the ids).

A task's job is the label `cube_job`: `job` (and `instance`) are the labels Prometheus gives every series of a
target; a series of its own named so would be renamed `exported_job` at each scrape.

It lives in cube/cluster, beside the HTTP API that serves it, because it reads both the manager and the worker
(cluster depends on both; neither depends on it), and core has no I/O. Each exporter has a registry of its own, never
prometheus_client's global one: the tests run many managers and workers in one process.
"""

from __future__ import annotations

from collections.abc import Mapping

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram, Info, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from cube import __version__
from cube.core.model import State
from cube.core.telemetry import ManagerTelemetry, WorkerTelemetry

# The `_created` twin of every counter and histogram (a timestamp per series) doubles what a scrape sends and no
# Cube query reads it. Process-wide, like the library's setting it is; nothing else here uses prometheus_client.
prometheus_client.disable_created_metrics()

STATES = tuple(state.value for state in State)
NO_NODES = "no nodes"  # the reason of a failed placement when the manager knows no node at all
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # what generate_latest writes, which Prometheus 2 reads
USAGE_TIMEOUT = 2.0  # seconds a scrape waits for the engine's per-container figures (Prometheus's default is 10)


class Exporter:
    """A registry with what both services have: the build, the process (CPU, memory, open files) and the API's
    request durations. `open`: /metrics answers without the token (`--metrics-open`)."""

    def __init__(self, role: str, open: bool = False):
        self.open = open
        self.registry = CollectorRegistry()
        Info("cube_build", "The Cube version this process runs.", registry=self.registry).info(
            {"version": __version__, "role": role}
        )
        ProcessCollector(registry=self.registry)
        self._requests = Histogram(
            "cube_http_request_duration_seconds",
            "Time to answer an API request, by route (its rule, e.g. /tasks/<ref>) and method.",
            ["route", "method"],
            registry=self.registry,
        )

    def request(self, method: str, route: str, seconds: float) -> None:
        self._requests.labels(route=route, method=method).observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The scrape's body and content type."""
        return prometheus_client.generate_latest(self.registry), CONTENT_TYPE

    def _collect(self, collector: Collector) -> None:
        self.registry.register(collector)


class ManagerExporter(Exporter, ManagerTelemetry):
    """The manager's series. Made before the manager (which is given it as its telemetry); `watch` then reads the
    manager and its membership at each scrape."""

    def __init__(self, open: bool = False):
        super().__init__("manager", open)
        self._placements = Counter("cube_placements", "Tasks placed on a node.", registry=self.registry)
        self._failures = Counter(
            "cube_placement_failures",
            "Placements that found no node, once under each reason that rejected a node (a retry refused for the "
            "same reasons is not counted again).",
            ["reason"],
            registry=self.registry,
        )
        self._reschedules = Counter(
            "cube_reschedules", "Tasks taken off their node to be placed again.", registry=self.registry
        )
        self._restarts = Counter("cube_task_restarts", "Task restarts the workers reported.", registry=self.registry)
        self._dispatch = Histogram(
            "cube_dispatch_seconds",
            "Time from sending a worker a request of its node's diff (kind: send, an assignment; stop) to its answer "
            "(outcome: ok, refused, failed).",
            ["kind", "outcome"],
            registry=self.registry,
        )

    def watch(self, manager, membership) -> ManagerExporter:
        self._collect(_ManagerState(manager, membership))
        return self

    def placed(self, placed: bool, rejections: Mapping[str, int]) -> None:
        if placed:
            self._placements.inc()
            return
        for reason in rejections or (NO_NODES,):
            self._failures.labels(reason=reason).inc()

    def rescheduled(self) -> None:
        self._reschedules.inc()

    def restarted(self, count: int) -> None:
        self._restarts.inc(count)

    def dispatched(self, kind: str, outcome: str, seconds: float) -> None:
        self._dispatch.labels(kind=kind, outcome=outcome).observe(seconds)


class _ManagerState(Collector):
    def __init__(self, manager, membership):
        self.manager, self.membership = manager, membership

    def collect(self):
        tasks = GaugeMetricFamily(
            "cube_tasks", "Tasks by job and state, as the API shows them.", labels=["cube_job", "state"]
        )
        counts = self.manager.task_counts()
        for job in sorted({job for job, _ in counts}):
            for state in STATES:  # every state of a job named, so that a state emptied reads 0, not a gap
                tasks.add_metric([job, state], counts.get((job, state), 0))
        yield tasks
        nodes = GaugeMetricFamily("cube_nodes", "Nodes by state.", labels=["state"])
        for state, n in self.manager.node_counts().items():
            nodes.add_metric([state], n)
        yield nodes
        yield GaugeMetricFamily(
            "cube_long_polls_open", "Long polls to workers held open now.", value=self.membership.open_polls
        )


class WorkerExporter(Exporter, WorkerTelemetry):
    """A worker's series. Made before the worker (its telemetry); `watch` then reads it at each scrape."""

    def __init__(self, open: bool = False):
        super().__init__("worker", open)
        self._starts = Counter(
            "cube_worker_container_starts", "Containers the engine started (or restarted).", registry=self.registry
        )
        self._start_failures = Counter(
            "cube_worker_container_start_failures",
            "Container starts the engine refused (not counted while the engine does not answer).",
            registry=self.registry,
        )

    def watch(self, worker) -> WorkerExporter:
        self._collect(_WorkerState(worker))
        return self

    def started(self) -> None:
        self._starts.inc()

    def start_failed(self) -> None:
        self._start_failures.inc()


class _WorkerState(Collector):
    def __init__(self, worker):
        self.worker = worker

    def collect(self):
        tasks = GaugeMetricFamily("cube_worker_tasks", "Tasks this node holds, by observed state.", labels=["state"])
        counts = self.worker.state_counts()
        for state in STATES:
            tasks.add_metric([state], counts.get(state, 0))
        yield tasks
        yield GaugeMetricFamily(
            "cube_worker_engine_up",
            "1 when the container engine answered the last reconcile round, 0 when it did not.",
            value=1 if self.worker.engine_ok else 0,
        )
        running = self.worker.containers()
        used = self.worker.runtime.usage([c for _, _, c in running], USAGE_TIMEOUT) if running else {}
        cpu = CounterMetricFamily(
            "cube_task_cpu_seconds",
            "CPU time a task's container used, as its engine counts it.",
            labels=["task", "cube_job"],
        )
        memory = GaugeMetricFamily(
            "cube_task_memory_bytes",
            "Memory a task's container uses, without reclaimable page cache (as docker stats shows it).",
            labels=["task", "cube_job"],
        )
        for task_id, job, container in running:
            if container in used:
                cpu.add_metric([task_id, job], used[container].cpu_seconds)
                memory.add_metric([task_id, job], used[container].memory)
        yield cpu
        yield memory
