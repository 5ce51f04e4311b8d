"""The worker's reconciliation as a pure diff (Nomad's reconciler, kubelet's sync loop): from the tasks a worker
holds (desired + last observed state) and the containers the runtime shows for this node, compute a `Plan` of what
to do. No I/O and no clock inside: `now` is an argument, so every branch is testable with plain data.

Rules, in the order they are decided for each task:
- containers of a task whose generation is older than the task's are stale copies (the task was re-placed): removed;
  of several current containers the recorded one (else the newest running) is kept, the rest removed;
- desired `stop`: any container is stopped and removed, then the task is completed;
- desired `run` and the container runs: recorded as running (this is how a restarted worker adopts its containers);
- desired `run` and the container ended: restarted when the restart policy allows (after the backoff), otherwise the
  task completes (exit 0) or fails;
- desired `run` and no container: started if the task is waiting to start; if it was running, its container
  vanished, which counts as a failure;
- a task with a stale copy still running waits for its removal (this round) before it starts (the next);
- a task on hold (`blocked`: it waits for the manager's word after a worker or engine restart, or after a
  disconnect stopped it) is neither started nor restarted; everything else about it is still observed;
- a container labelled for this node that no task owns is an orphan: removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cube.core.model import Assignment, Desired, State
from cube.worker.runtime import ContainerInfo


@dataclass
class Plan:
    start: list[str] = field(default_factory=list)  # task ids to create a container for
    restart: list[tuple[str, str]] = field(default_factory=list)  # (task id, ended container id)
    died: list[tuple[str, ContainerInfo | None]] = field(default_factory=list)  # ended since last seen
    stop: list[tuple[str, str]] = field(default_factory=list)  # (task id, container id)
    stopped: list[str] = field(default_factory=list)  # desired stop, nothing left: complete
    observe: list[tuple[str, ContainerInfo]] = field(default_factory=list)  # running, record is behind
    orphans: list[str] = field(default_factory=list)  # container ids nobody owns

    def empty(self) -> bool:
        return not any((self.start, self.restart, self.died, self.stop, self.stopped, self.observe, self.orphans))


def diff(
    tasks: dict[str, Assignment],
    containers: list[ContainerInfo],
    now: float,
    busy: frozenset[str] = frozenset(),
    due: dict[str, float] | None = None,
    blocked: frozenset[str] = frozenset(),
) -> Plan:
    """`busy`: task ids with an action in flight (left alone this round). `due`: task id -> earliest restart
    time (backoff). `blocked`: task ids on hold (not started or restarted this round)."""
    due = due or {}
    plan = Plan()
    by_task: dict[str, list[ContainerInfo]] = {}
    for c in containers:
        if c.task_id in tasks:
            by_task.setdefault(c.task_id, []).append(c)
        else:
            plan.orphans.append(c.id)
    for task_id, task in tasks.items():
        if task_id in busy:
            continue
        current, extra = _current(task, by_task.get(task_id, []))
        plan.orphans.extend(c.id for c in extra)
        if task.desired is Desired.STOP:
            _plan_stop(plan, task, current)
            continue
        # A stale copy still running is removed first: the new one may need its host port or its name.
        wait = task_id in blocked or any(c.running for c in extra)
        _plan_run(plan, task, current, now, float("inf") if wait else due.get(task_id, 0.0))
    return plan


def _current(task: Assignment, containers: list[ContainerInfo]) -> tuple[ContainerInfo | None, list[ContainerInfo]]:
    """The container that stands for `task`, and the others (stale generations and duplicates)."""
    live = [c for c in containers if c.generation >= task.generation]
    stale = [c for c in containers if c.generation < task.generation]
    if not live:
        return None, stale
    recorded = [c for c in live if c.id == task.container_id]
    running = sorted((c for c in live if c.running), key=lambda c: c.started_at or 0, reverse=True)
    keep = (recorded or running or sorted(live, key=lambda c: c.started_at or 0, reverse=True))[0]
    return keep, stale + [c for c in live if c is not keep]


def _plan_stop(plan: Plan, task: Assignment, current: ContainerInfo | None) -> None:
    if current is not None:
        plan.stop.append((task.id, current.id))
    elif task.state is not State.COMPLETED:
        plan.stopped.append(task.id)


def _plan_run(plan: Plan, task: Assignment, current: ContainerInfo | None, now: float, due: float) -> None:
    if task.state in (State.COMPLETED, State.FAILED):
        # Terminal here: the manager decides whether it is placed again (with a new generation). An ended
        # container stays for its logs; one still running has no business running.
        if current is not None and current.running:
            plan.orphans.append(current.id)
        return
    if current is not None and current.running:
        if (
            task.state is not State.RUNNING
            or task.container_id != current.id
            or task.host_ports != current.host_ports
            or task.health != current.health
        ):
            plan.observe.append((task.id, current))
        return
    if current is not None:  # ended
        if task.state is State.RUNNING:
            plan.died.append((task.id, current))
        elif now >= due:
            plan.restart.append((task.id, current.id))
        return
    if task.state is State.RUNNING:
        plan.died.append((task.id, None))
    elif now >= due:
        plan.start.append(task.id)
