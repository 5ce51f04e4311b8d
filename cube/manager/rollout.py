"""How a job's tasks follow its spec and count: a pure decision, re-run on every change and on a tick.

A job at one version keeps `count` tasks desired to run (named JOB-1 ... JOB-N). When a deploy changes the spec, the
job's version goes up and its tasks of older versions are replaced by tasks of the new one, a few at a time (the
update policy's `max_parallel`): stop-first (stop an old task, then start its replacement) or start-first (start
the replacement, stop the old task once the new one is healthy: a job of one task is never down). A new task is
healthy once it has served (`model.serving`: running, its health command not failing) for `min_healthy_time`; one
that is not healthy within `healthy_deadline` of its creation, or that failed, fails the rollout, which then stops
moving (and is reverted by the caller when the policy says `auto_revert`). A change of the count alone only scales.

A task on a draining node (`leaving`) moves the same way, always start-first: a successor of the same name starts
on another node, and the leaving task stops once its successor is healthy, `max_parallel` at a time; until then the
successor stands in its place for everything else the plan decides. A job of two or more is never short of a
serving task, and a job of one only for the moment traffic moves. Batch tasks are not moved: they run to their end
(or to the drain's deadline, which the caller enforces).
"""

from __future__ import annotations

from collections.abc import Callable, Set
from dataclasses import dataclass, field

from cube.core.jobs import Job, UpdatePolicy
from cube.core.model import Desired, State, Task

ROLLING, SUCCESSFUL, FAILED = "running", "successful", "failed"


@dataclass
class RolloutPlan:
    create: list[int] = field(default_factory=list)  # indexes of tasks to create at the job's version
    stop: list[tuple[str, str]] = field(default_factory=list)  # (task id, why)
    status: str = ""  # "" nothing rolls; running; successful (every task at the version and healthy); failed
    reason: str = ""  # why it failed, or how far it is
    healthy: int = 0  # tasks at the job's version that are healthy


def task_index(name: str) -> int:
    tail = name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def plan(
    job: Job,
    tasks: list[Task],
    now: float,
    healthy_since: dict[str, float],
    policy: UpdatePolicy,
    leaving: Set[str] = frozenset(),
) -> RolloutPlan:
    """What to create and stop for `job` now. `tasks`: the job's tasks; `healthy_since`: when each task began to
    serve without a break (the caller's observation); `policy`: the update or the rollback policy; `leaving`: the
    ids of tasks on draining nodes."""
    out = RolloutPlan()
    live = sorted((t for t in tasks if t.desired is Desired.RUN), key=lambda t: task_index(t.name))
    if job.stopped:
        out.stop = [(t.id, f"job {job.name} stopped") for t in live]
        return out

    def healthy(task: Task) -> bool:
        if job.type == "batch" and task.state is State.COMPLETED:
            return True
        since = healthy_since.get(task.id)
        return since is not None and now - since >= policy.min_healthy_time

    moves: list[int] = []
    if leaving and job.type != "batch":
        stood_for = _migrate(out, moves, job, live, leaving, healthy, policy.max_parallel)
        live = [t for t in live if t.id not in stood_for]
    _versions(out, job, live, now, healthy, policy)
    out.create = moves + out.create
    return out


def _migrate(
    out: RolloutPlan,
    moves: list[int],
    job: Job,
    live: list[Task],
    leaving: Set[str],
    healthy: Callable[[Task], bool],
    max_parallel: int,
) -> set[str]:
    """Move the job's tasks off draining nodes: a successor (same index) for each, `max_parallel` in flight; a
    leaving task whose successor is healthy stops. Returns the leaving tasks a successor now stands in for."""
    current = [t for t in live if t.version == job.version]
    staying = {task_index(t.name): t for t in current if t.id not in leaving}
    going = [t for t in current if t.id in leaving]
    in_flight = sum(1 for t in going if (s := staying.get(task_index(t.name))) is not None and not healthy(s))
    budget = max(0, max_parallel - in_flight)
    stood_for = set()
    for task in going:
        successor = staying.get(task_index(task.name))
        if successor is None:
            if budget > 0:
                moves.append(task_index(task.name))
                budget -= 1
            continue
        stood_for.add(task.id)
        if healthy(successor):
            out.stop.append((task.id, f"its node drains: {successor.name} ({successor.id}) serves in its place"))
    return stood_for


def _versions(
    out: RolloutPlan, job: Job, live: list[Task], now: float, healthy: Callable[[Task], bool], policy: UpdatePolicy
) -> None:
    """Bring the job's live tasks to its version and count."""
    new = [t for t in live if t.version == job.version]
    old = [t for t in live if t.version != job.version]
    ready = [t for t in new if healthy(t)]
    waiting = [t for t in new if not healthy(t)]
    out.healthy = len(ready)
    if not old:
        _scale(out, job, new, waiting)
        out.status = SUCCESSFUL if len(ready) >= job.count else ""
        return
    out.status = ROLLING
    # A new task that failed on its node (and was moved: its restarts there were used up) fails the rollout, as
    # one that is not healthy by the deadline does.
    late = [
        t
        for t in waiting
        if t.state is State.FAILED or t.reschedules > 0 or now - t.created_at > policy.healthy_deadline
    ]
    if late:
        task = late[0]
        why = f"not healthy within {policy.healthy_deadline:g} s"
        if task.state is State.FAILED or task.reschedules > 0:
            why = f"failed: {task.note or task.reason}"
        out.status, out.reason = FAILED, f"task {task.name} of version {job.version}: {why}"
        return
    _roll(out, job, new, old, ready, waiting, policy)
    out.reason = f"{len(ready)} of {job.count} tasks at version {job.version} healthy"


def _scale(out: RolloutPlan, job: Job, new: list[Task], waiting: list[Task]) -> None:
    """No older task: keep exactly `count`, stopping the not yet healthy and the highest indexes first."""
    excess = len(new) - job.count
    if excess > 0:
        order = sorted(new, key=lambda t: (t not in waiting, -task_index(t.name)))
        out.stop = [(t.id, f"job {job.name} scaled to {job.count}") for t in order[:excess]]
    used = {task_index(t.name) for t in new}
    out.create = _free_indexes(used, job.count - len(new))


def _roll(
    out: RolloutPlan,
    job: Job,
    new: list[Task],
    old: list[Task],
    ready: list[Task],
    waiting: list[Task],
    policy: UpdatePolicy,
) -> None:
    why = f"replaced by version {job.version}"
    count, budget = job.count, max(0, policy.max_parallel - len(waiting))
    used = {task_index(t.name) for t in new}
    covered = {task_index(t.name) for t in ready}
    # Old tasks in the order they go: those a healthy new task already stands for, then by index.
    old = sorted(old, key=lambda t: (task_index(t.name) not in covered, task_index(t.name)))
    if policy.start_first(count):
        # Start replacements within the budget (and whatever the count lacks outright); stop old tasks only as
        # healthy new ones stand for them.
        lacking = max(0, count - len(new) - len(old))
        n_create = min(count - len(new), max(lacking, budget))
        stops = old[: max(0, len(ready) + len(old) - count)]
    else:
        # Stop-first: old tasks beyond the count go at once; then each step stops one and starts its replacement.
        surplus = max(0, len(new) + len(old) - count)
        stops = old[:surplus]
        if surplus > len(old):  # scaled down below the new tasks: the not yet healthy go first
            extra = sorted(new, key=lambda t: (t not in waiting, -task_index(t.name)))[: surplus - len(old)]
            out.stop += [(t.id, f"job {job.name} scaled to {count}") for t in extra]
        remaining = old[len(stops) :]
        step = remaining[:budget]
        stops = stops + step
        n_create = min(count - len(new), len(step) + max(0, count - len(new) - len(remaining)))
    out.stop += [(t.id, why) for t in stops]
    # Replacements take the indexes of the old tasks they replace, lowest first (names stay JOB-1 ... JOB-N).
    inherit = [i for i in dict.fromkeys(task_index(t.name) for t in stops + old) if i not in used]
    out.create = inherit[:n_create]
    out.create += _free_indexes(used | set(inherit), n_create - len(out.create))


def _free_indexes(used: set[int], n: int) -> list[int]:
    out: list[int] = []
    index = 1
    while len(out) < n:
        if index not in used:
            out.append(index)
        index += 1
    return out
