"""The manager's decisions as pure functions over plain data (Nomad's reconciler, Kubernetes' controllers): what
should be, compared with what is, gives a plan; applying the plan is someone else's job, and re-running the
comparison on every report and on a tick repairs whatever a lost message or a crash left undone.

Per node (`node_diff`), the tasks placed there against the node's latest report:
- a task placed here to run, which the report lacks or shows at an older generation: send the assignment (the
  worker replaces an older copy by itself);
- a copy the report shows running that is not wanted here at that generation (the task is placed elsewhere or
  nowhere, was stopped, or is unknown): stop it, naming the generation, so the stop can never touch a newer copy.
  A copy is stale by (task id, generation), never by node name alone.

Per task (`task_decision`), its desired state, placement and observation against the health of its node:
- placed on a node that is down (or unhealthy) past its deadline: unplace it, to be placed again elsewhere; a task
  told to stop on a node that is down is let go of at once (the node's diff stops the copy when it is back);
- a service whose node has used up its restarts (observed failed): unplace it with a growing delay, avoiding
  that node if another fits; a batch task that failed stays failed;
- an observation of the current generation that the worker stopped without being asked: place it again.

Per job: see rollout.py (the count, and the versions of a rolling update).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cube.core.model import Desired, Node, State, Task

RESCHEDULE_BASE = 5.0  # seconds before the first reschedule of a failing service; doubles after
RESCHEDULE_MAX = 300.0
RESCHEDULE_RESET = 600.0  # a service that ran this long before failing starts its reschedule delay over


@dataclass(frozen=True)
class Reported:
    """What the manager keeps of a node's report of one task (enough to decide; the full observation is on the
    task)."""

    generation: int
    state: State
    desired: Desired

    @property
    def active(self) -> bool:
        """A copy that runs or will run unless told otherwise."""
        return self.desired is Desired.RUN and self.state in (State.SCHEDULED, State.RUNNING)


@dataclass
class NodePlan:
    send: list[str] = field(default_factory=list)  # task ids whose assignment to deliver
    stop: list[tuple[str, int]] = field(default_factory=list)  # (task id, generation) copies to stop

    def empty(self) -> bool:
        return not self.send and not self.stop


def node_diff(node: str, placed: list[Task], report: dict[str, Reported], lookup) -> NodePlan:
    """`placed`: the tasks whose placement is `node`; `report`: the node's latest report; `lookup(task_id)`: any
    task by id, or None."""
    plan = NodePlan()
    wanted = {}
    for task in placed:
        seen = report.get(task.id)
        if task.desired is Desired.RUN:
            wanted[task.id] = task.generation
            if seen is None or seen.generation < task.generation:
                plan.send.append(task.id)
        elif seen is not None and seen.active:
            plan.stop.append((task.id, seen.generation))
    for task_id, seen in report.items():
        if task_id in wanted or not seen.active:
            continue
        task = lookup(task_id)
        if task is not None and task.node == node and task.desired is Desired.STOP:
            continue  # already planned above
        plan.stop.append((task_id, seen.generation))
    return plan


@dataclass(frozen=True)
class Decision:
    """What to do with one task: `unplace` (to be placed again, after `not_before`), with a note for the user."""

    unplace: bool = False
    note: str = ""
    not_before: float = 0.0
    avoid: str = ""
    reschedules: int | None = None  # the new count, when this is a reschedule


KEEP = Decision()


def task_decision(task: Task, node: Node | None, now: float, node_timeout: float, job_type: str) -> Decision:
    """The decision for a task placed on `node` (None: the node is unknown)."""
    if not task.node:
        return KEEP
    if task.desired is Desired.STOP:
        if node is None or node.state == "down":  # cannot be told now: its diff stops the copy when it is back
            return Decision(True, f"node {task.node} is down: its copy is stopped when it answers again")
        return KEEP
    if node is None:
        return Decision(True, f"node {task.node} is gone: rescheduling")
    lost = _node_lost(task, node, now, node_timeout)
    if lost:
        return Decision(True, lost)
    obs = task.current
    if obs is None:
        return KEEP
    if obs.desired is Desired.STOP:
        return Decision(True, f"node {task.node} stopped it ({obs.reason or 'no reason given'}): placing it again")
    if obs.state is State.FAILED and _reschedules(task, job_type):
        count = task.reschedules + 1
        if (
            obs.started_at is not None
            and obs.finished_at is not None
            and obs.finished_at - obs.started_at >= RESCHEDULE_RESET
        ):
            count = 1
        delay = reschedule_delay(count)
        return Decision(
            True, f"failed on {task.node} ({obs.reason}): rescheduling in {delay:g} s", now + delay, task.node, count
        )
    return KEEP


def _node_lost(task: Task, node: Node, now: float, node_timeout: float) -> str:
    """Why the task's node counts as lost for this task now, or "". A task that stops itself when its node is cut
    off (on_disconnect: stop) is moved only once the node has surely stopped it: its disconnect timeout and stop
    timeout after the node's last answer, so that no two copies overlap."""
    if node.state == "down":
        wait = node_timeout
        if task.spec.disconnect == "stop" and node.disconnect_timeout:
            grace = node.stop_timeout if task.spec.stop_timeout is None else task.spec.stop_timeout
            wait = max(node_timeout, node.disconnect_timeout + grace + 1.0)
        if now - node.last_seen >= wait:
            return f"node {node.name} is down (no answer for {now - node.last_seen:.0f} s): rescheduling"
        return ""
    if node.state == "unhealthy" and now - node.since >= node_timeout:
        return f"node {node.name} is unhealthy ({node.reason}) for {now - node.since:.0f} s: rescheduling"
    return ""


def _reschedules(task: Task, job_type: str) -> bool:
    """Services are rescheduled when their node gives up on them; batch tasks and tasks that asked never to be
    restarted are not."""
    return job_type != "batch" and task.spec.restart.name != "no"


def reschedule_delay(count: int) -> float:
    """Delay before reschedule number `count` (from 1): 5 s, 10 s, 20 s ... RESCHEDULE_MAX."""
    return min(RESCHEDULE_BASE * 2 ** max(0, count - 1), RESCHEDULE_MAX)
