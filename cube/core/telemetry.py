"""What the manager and the worker say as things happen, for `GET /metrics`: a placement made or failed (and why),
a task rescheduled or restarted, a request delivered to a worker (and how long it took), a container started or
refused. An interface only, with no I/O: these recorders count nothing. `cube.cluster.metrics` gives the services
ones that keep Prometheus series (the only module that imports prometheus_client); tests and simulations keep
these. What can be read from state at any moment (tasks by state, nodes, open long polls) is not told here: the
exporter reads it at scrape time."""

from __future__ import annotations

from collections.abc import Mapping


class ManagerTelemetry:
    def placed(self, placed: bool, rejections: Mapping[str, int]) -> None:
        """A placement decided: on a node (`placed`) or nowhere, with how many nodes each kind of reason rejected
        (`scheduler.Placement.counts()`; none when nowhere: no node is known)."""

    def rescheduled(self) -> None:
        """A task desired to run was taken off its node to be placed again (its node lost, or it failed there)."""

    def restarted(self, count: int) -> None:
        """A node's report shows `count` more restarts of a task than the one before."""

    def dispatched(self, kind: str, outcome: str, seconds: float) -> None:
        """A request of the node diff (`send`: an assignment, `stop`) answered: `ok`, `refused` or `failed`."""


class WorkerTelemetry:
    def started(self) -> None:
        """The engine started (or restarted) a task's container."""

    def start_failed(self) -> None:
        """The engine refused to start a task's container (an engine that does not answer is not counted here:
        that is the node's health)."""
