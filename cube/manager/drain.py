"""Taking a node out for maintenance: `cube node drain` and `cube node eligible` (Nomad's node drain).

A drained node takes no new placements (the scheduler's state check rejects it as "node ineligible"). Its service
tasks move the way a rollout moves them (`rollout.plan`'s `leaving`): a successor starts elsewhere and the old copy
stops only once the successor is healthy, `max_parallel` of a job at a time. Batch tasks run to their end. A task
with no job (`POST /tasks`) has no successor to wait for: it is placed elsewhere at once. A task bound to a named
volume that lives on the node cannot run anywhere else: the drain is refused while one runs there, unless `force`,
which stops such tasks at once (their jobs' replacements wait, pending, for the node to be eligible again).

At the deadline (when one was given) every task still on the node is stopped; its job places a replacement. When
nothing runs on the node any more the drain is complete: the node stays ineligible until `cube node eligible`. The
drain is kept in the node's record, so a manager that restarts goes on with it; everything else here is decided
again on every round from that record and the tasks, never remembered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from cube.core.errors import BadRequest, Conflict
from cube.core.jobs import Job
from cube.core.model import ACTIVE, Desired, Drain, Node, Task
from cube.manager.parts import ManagerParts
from cube.scheduler import Placement

log = logging.getLogger("cube.manager")

MAX_DEADLINE = 7 * 86400.0  # seconds: a week


class ManagerDrain(ManagerParts):
    """Mixin of Manager: drains and eligibility (the manager's lock guards everything here)."""

    _stop: Callable[[Task, str], None]
    _commit: Callable[..., Task]
    _note: Callable[[Task, str], None]
    _place: Callable[[list[Task]], None]
    _place_pending: Callable[[], None]
    _pick: Callable[..., Placement]
    _reconcile_job: Callable[[Job], None]
    save_node: Callable[[Node], None]
    volumes: dict[str, dict]
    _by_node: dict[str, set[str]]
    _node_named: Callable[[str], Node]

    def drain_node(self, name: str, deadline: float | None = None, force: bool = False) -> Node:
        """Start draining `name` (again: a new deadline or `force` replaces the drain's). `deadline`: seconds from
        now after which whatever is left is stopped; None waits as long as the moves take."""
        if deadline is not None and (
            isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or not 0 <= deadline <= MAX_DEADLINE
        ):
            raise BadRequest(f"deadline must be a number of seconds from 0 to {MAX_DEADLINE:g}, or null")
        if not isinstance(force, bool):
            raise BadRequest("force must be true or false")
        with self._lock:
            node = self._node_named(name)
            bound = self._volume_bound(node.name)
            if bound and not force:
                raise Conflict(_bound_message(node.name, bound))
            now = self.clock()
            with self._saving():
                node.eligible = False
                node.drain = Drain(now, None if deadline is None else now + deadline, force)
                self.save_node(node)
                self._drain_step(node, now)
            due = self._flush()
        self._deliver_later(due)
        log.warning("node %s draining%s", name, f" (deadline in {deadline:g} s)" if deadline is not None else "")
        return node

    def make_eligible(self, name: str) -> Node:
        """Let `name` take tasks again; a drain under way ends where it is (what moved stays moved)."""
        with self._lock:
            node = self._node_named(name)
            with self._saving():
                node.eligible, node.drain = True, None
                self.save_node(node)
                self._place_pending()
            due = self._flush()
        self._deliver_later(due)
        log.info("node %s eligible", name)
        return node

    def _volume_bound(self, name: str) -> list[Task]:
        """The tasks running on node `name` that mount a named volume living there (lock held)."""
        return [task for task in self._on(name) if self._bound_to(task, name)]

    def _on(self, name: str) -> list[Task]:
        """The tasks placed on node `name` still desired to run and not finished (lock held)."""
        tasks = (self.tasks[i] for i in self._by_node.get(name, ()))
        return [t for t in tasks if t.desired is Desired.RUN and t.state in ACTIVE]

    def _leaving(self, tasks: list[Task]) -> frozenset[str]:
        """Which of `tasks` are on a draining node and may move (lock held): not those bound to its volumes."""
        out = set()
        for task in tasks:
            node = self.nodes.get(task.node) if task.node else None
            if node is not None and node.drain is not None and not self._bound_to(task, node.name):
                out.add(task.id)
        return frozenset(out)

    def _bound_to(self, task: Task, name: str) -> bool:
        return any(self.volumes.get(v, {}).get("node") == name for v in task.spec.named_volumes)

    def _drain_round(self, now: float) -> None:
        """Every round (lock held, inside a store batch): move on every drain under way."""
        for node in list(self.nodes.values()):
            if node.drain is not None:
                self._drain_step(node, now)

    def _drain_step(self, node: Node, now: float) -> None:
        """One step of `node`'s drain: its jobs move their tasks (rollout.plan), tasks without a job move now,
        volume-bound ones stop when forced, everything stops past the deadline; an empty node ends the drain."""
        drain = node.drain
        assert drain is not None
        late = drain.deadline is not None and now >= drain.deadline
        jobs = set()
        for task in self._on(node.name):
            if task.job in self.jobs:
                jobs.add(task.job)  # its job moves it, or replaces it once it is stopped here
            if late:
                self._stop(task, f"node {node.name} drained: its deadline passed")
            elif self._bound_to(task, node.name):
                if drain.force:  # it cannot run anywhere else; the user said to stop it
                    self._stop(task, f"node {node.name} drains (forced): its volume lives there")
            elif task.job not in self.jobs:
                self._move(task, node.name)
        for name in sorted(jobs):
            self._reconcile_job(self.jobs[name])
        if not any(self.tasks[i].state in ACTIVE for i in self._by_node.get(node.name, ())):
            node.drain = None  # nothing runs there, nor is still stopping
            self.save_node(node)
            log.warning("node %s drained: nothing runs there; `cube node eligible %s` takes it back", *(node.name,) * 2)

    def _move(self, task: Task, name: str) -> None:
        """A task without a job leaves the draining node as soon as another node can take it: placed there, its
        copy here stopped by the node's diff (it is no longer placed here). Until one can, it stays."""
        if self._pick(task, list(self.nodes.values())).node is None:
            note = f"node {name} drains, but no other node can take it now: it stays until one can"
            if task.note != note:
                self._note(task, note)
                self._commit(task, message=note)
            return
        before = (task.node, task.job)
        task.node = ""
        self._note(task, f"node {name} drains: placing it elsewhere")
        self._commit(task, before, task.note)
        self._place([task])


def _bound_message(name: str, bound: list[Task]) -> str:
    names = ", ".join(sorted(t.name or t.id for t in bound)[:5])
    more = f" and {len(bound) - 5} more" if len(bound) > 5 else ""
    return (
        f"node {name} holds the volumes of {names}{more}: they cannot run anywhere else, so draining stops them until "
        f"the node is eligible again; drain with --force to do so"
    )
