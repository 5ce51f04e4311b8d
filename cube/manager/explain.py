"""`cube explain TASK_OR_JOB`: why a task is where it is, or why it waits (Nomad's placement metrics).

Two answers side by side, because they answer different questions. The placement record kept when the task was
last placed (or refused) says why it went where it went: each node's rejection, the scores of the feasible ones and
the strategy. A placement tried now, against the nodes as they are (a dry run: nothing is reserved, the scheduler's
round-robin is left alone), says what would happen now: for a pending task that is why it still waits, for a
running one whether it could go elsewhere. Every node is looked at (no sampling), so each has its reason or its
score. A task may also wait for something other than a node: its job's dependencies, a reschedule delay, a drain.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from cube.core.jobs import Job
from cube.core.model import Desired, Node, Task, TaskSpec
from cube.manager.parts import ManagerParts
from cube.scheduler import Placement, SchedulerState, place

MAX_NODES_SHOWN = 200  # a 1,000-node cluster's answer lists the feasible nodes and this many rejected ones


class ManagerExplain(ManagerParts):
    """Mixin of Manager: explanations (read only; the manager's lock guards the reads)."""

    placements: dict[str, dict]
    strategy: str
    _waiting_for: Callable[[Task], str]
    _homes: Callable[[TaskSpec], dict]
    _lacking: Callable[[TaskSpec], dict]
    find_task: Callable[[str], Task]
    _job: Callable[[str], Job]
    view: Callable[[Task], dict]

    def explain_task(self, ref: str) -> dict:
        with self._lock:
            task = self.tasks[self.find_task(ref).id]
            view = self.view(task)
            record = self.placements.get(task.id)
            now = self._dry_run(task.spec, f"{task.id}:explain")
            out = {
                "task": task.id,
                "name": task.name,
                "job": task.job,
                "state": view["state"],
                "node": task.node,
                "note": task.note,
                "waiting": self._waits(task),
                "placed": record,
                "nodes": _nodes(now, self.nodes),
                "counts": dict(now.counts()),
            }
        out["summary"] = _task_summary(out, record, now)
        return out

    def explain_job(self, name: str) -> dict:
        with self._lock:
            job = self._job(name)
            tasks = [self.tasks[i] for i in self._by_job.get(name, ())]
            live = sorted((t for t in tasks if t.desired is Desired.RUN), key=lambda t: (t.name, t.created_at))
            now = self._dry_run(job.spec, f"{name}:explain")
            rows = []
            for task in live:
                view = self.view(task)
                rows.append(
                    {
                        "task": task.id,
                        "name": task.name,
                        "state": view["state"],
                        "node": task.node,
                        "why": self._waits(task) or view["reason"] or task.note,
                    }
                )
            states = Counter(r["state"] for r in rows)
            out = {
                "job": name,
                "count": job.count,
                "stopped": job.stopped,
                "tasks": rows,
                "nodes": _nodes(now, self.nodes),
                "counts": dict(now.counts()),
            }
        waiting = [r for r in rows if r["state"] == "pending"]
        head = f"job {name}: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items())) if rows else f"job {name}"
        if job.stopped:
            head += " (stopped)"
        if waiting:
            head += f"; {waiting[0]['name']} waits: {waiting[0]['why']}"
        out["summary"] = f"{head}; {_now_line(now)}"
        return out

    def _dry_run(self, spec: TaskSpec, seed: str) -> Placement:
        """A placement against every node as it is now, reserving nothing."""
        nodes = sorted(self.nodes.values(), key=lambda n: n.name)
        return place(
            spec,
            nodes,
            self.strategy,
            seed=seed,
            state=SchedulerState(),
            homes=self._homes(spec),
            lacking=self._lacking(spec),
        )

    def _waits(self, task: Task) -> str:
        """What a task waits for other than a node, or "" (lock held)."""
        if task.desired is not Desired.RUN or task.node:
            return ""
        waiting = self._waiting_for(task)
        if waiting:
            return waiting
        if task.not_before > self.clock():
            return f"rescheduled: tried again in {task.not_before - self.clock():.0f} s ({task.note})"
        return ""


def _nodes(placement: Placement, nodes: dict[str, Node]) -> list[dict]:
    """Each node's verdict now: feasible with its score (best first), or its rejection (kind and words)."""
    rows = []
    for name, score in sorted(placement.scores.items(), key=lambda item: (-item[1], item[0])):
        best = placement.node is not None and name == placement.node.name
        rows.append(_row(nodes[name], True, score=round(score, 4), best=best))
    rejected = sorted(placement.rejections.items())
    for name, rejection in rejected[:MAX_NODES_SHOWN]:
        rows.append(_row(nodes[name], False, kind=rejection.kind, reason=rejection.detail))
    return rows


def _row(node: Node, feasible: bool, **fields) -> dict:
    return {"name": node.name, "state": node.state, "eligibility": node.eligibility, "feasible": feasible, **fields}


def _now_line(placement: Placement) -> str:
    if placement.node is None:
        return f"now: {placement.summary()}"
    feasible = len(placement.scores)
    rejected = f"; {len(placement.rejections)} rejected: {placement.tally()}" if placement.rejections else ""
    return f"now: {feasible} node{'s' * (feasible != 1)} could take one, {placement.node.name} best{rejected}"


def _task_summary(out: dict, record: dict | None, now: Placement) -> str:
    state, node = out["state"], out["node"]
    if out["waiting"]:
        return f"{state}: {out['waiting']}"
    if state == "pending":
        return f"pending: {now.summary()}" if now.node is None else f"pending: {out['note']}; {_now_line(now)}"
    if node and record and record.get("node") == node:
        score = (record.get("scores") or {}).get(node)
        others = len(record.get("scores") or {}) - 1
        scored = f" with score {score:g}" if score is not None else ""
        against = f", best of {others + 1} feasible" if others > 0 else ""
        tied = sum(1 for other in (record.get("scores") or {}).values() if other == score) - 1
        if tied > 0:
            against = f", tied with {tied} of {others + 1} feasible (ties go by a hash of the task's id)"
        rejected = record.get("counts") or {}
        tally = ", ".join(f"{n} {kind}" for kind, n in sorted(rejected.items(), key=lambda kv: -kv[1]))
        return f"{state} on {node}: placed by {record.get('strategy')}{scored}{against}" + (
            f"; rejected: {tally}" if tally else ""
        )
    if node:
        return f"{state} on {node}"
    return f"{state}: {out['note']}" if out["note"] else state
