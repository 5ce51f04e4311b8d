"""Housekeeping: finished tasks do not pile up (Nomad's garbage collection of terminal allocations).

A task is finished once it was told to stop and has stopped (`manager.finished`): no node runs it, no job counts
it. Its record stays for `retention` seconds after its last change, so that `cube status --all`, its events and
`cube explain` can still answer what happened; past that, or beyond the newest `keep` finished tasks of its job
(tasks without a job count as one job), it is collected: its record, placement and event index leave the store
and memory. Lists never pay for finished tasks anyway (the manager's index of current tasks); this bounds the
store, the memory and a restart's load. A node that reports a copy of a collected task gets it stopped: an unknown
task is a stale copy to its diff (reconcile.node_diff).

Events are capped by the store itself (store.base.EVENT_RETENTION).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from cube.core.model import Task
from cube.manager.parts import ManagerParts

log = logging.getLogger("cube.manager")

RETENTION = 3600.0  # seconds a finished task is kept (Nomad keeps terminal allocations an hour by default)
KEEP_FINISHED = 50  # finished tasks kept per job whatever their age
COLLECT_EVERY = 30.0  # seconds between collections
COLLECT_MOST = 2000  # tasks collected per round at most: a round holds the lock briefly


class ManagerHousekeeping(ManagerParts):
    """Mixin of Manager: collection of finished tasks (the manager's lock held by the caller)."""

    retention: float
    keep_finished: int
    placements: dict[str, dict]
    _current: set[str]
    _forget: Callable[[Task], None]
    _collected_at: float

    def _collect(self, now: float) -> int:
        """One collection (lock held, inside a store batch); returns how many tasks were collected."""
        if now - self._collected_at < COLLECT_EVERY:
            return 0
        self._collected_at = now
        finished: dict[str, list[Task]] = {}
        for task in self.tasks.values():
            if task.id not in self._current:
                finished.setdefault(task.job, []).append(task)
        doomed: list[Task] = []
        for tasks in finished.values():
            tasks.sort(key=lambda t: t.updated_at, reverse=True)
            doomed += [t for i, t in enumerate(tasks) if i >= self.keep_finished or now - t.updated_at > self.retention]
        doomed.sort(key=lambda t: t.updated_at)
        for task in doomed[:COLLECT_MOST]:
            self._touch("tasks", task.id)
            self.store.delete("tasks", task.id)
            self._touch("placements", task.id)
            self.store.delete("placements", task.id)
            self.store.forget_task_events(task.id)
            self._forget(task)
        if doomed:
            log.info("collected %d finished tasks", min(len(doomed), COLLECT_MOST))
        return min(len(doomed), COLLECT_MOST)
