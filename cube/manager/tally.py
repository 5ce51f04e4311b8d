"""How many tasks each job has in each state, kept as tasks change, so that a reader (`GET /metrics`, scraped every
few seconds) takes a copy of a few counts under the manager's lock instead of deriving the state of every task:
0.03-0.04 ms instead of 16-30 ms at 10,000 tasks (BENCHMARKS.md, 12). A mixin of `Manager`, which calls
`_tally` from `_index` (every change of a task goes through it) and `_untally` when it forgets one.

The counts are of the state derived as on a ready node; a task on a node that is down shows scheduled while its
last report is not an end (`model.derive`): `task_counts` corrects for those, walking only the tasks of down
nodes."""

from __future__ import annotations

import threading
from collections import Counter

from cube.core.model import Node, Task, derive

NODE_STATES = ("ready", "unhealthy", "down")


class ManagerTally:
    # Owned and written by Manager (see manager.py).
    _lock: threading.RLock
    tasks: dict[str, Task]
    nodes: dict[str, Node]
    _by_node: dict[str, set[str]]
    _counts: Counter  # (job, state) -> tasks
    _counted: dict[str, tuple[str, str]]  # task id -> the (job, state) it is counted under

    def _tally(self, task: Task) -> None:
        """Count `task` under its (job, state) now, and no longer under the one it had (lock held)."""
        key = (task.job, task.state.value)
        before = self._counted.get(task.id)
        if before == key:
            return
        if before is not None:
            self._uncount(before)
        self._counts[key] += 1
        self._counted[task.id] = key

    def _untally(self, task_id: str) -> None:
        before = self._counted.pop(task_id, None)
        if before is not None:
            self._uncount(before)

    def _uncount(self, key: tuple[str, str]) -> None:
        self._counts[key] -= 1
        if self._counts[key] <= 0:
            del self._counts[key]

    def task_counts(self) -> dict[tuple[str, str], int]:
        """(job, state) -> how many tasks, as the API shows them ("" is the job of tasks run alone)."""
        with self._lock:
            counts = Counter(self._counts)
            for name, node in self.nodes.items():
                if node.state != "down":
                    continue
                for task_id in self._by_node.get(name, ()):
                    task = self.tasks[task_id]
                    shown = derive(task, "down")[0].value
                    counted = task.state.value
                    if shown != counted:
                        counts[(task.job, counted)] -= 1
                        counts[(task.job, shown)] += 1
        return {key: n for key, n in counts.items() if n > 0}

    def node_counts(self) -> dict[str, int]:
        """Node state -> how many nodes, every state named (0 when none)."""
        with self._lock:
            found = Counter(node.state for node in self.nodes.values())
        return {state: found.get(state, 0) for state in NODE_STATES}
