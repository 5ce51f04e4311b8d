"""The manager: the cluster's memory and its decisions. It accepts tasks and jobs (validated, persisted before they
are acknowledged), places them at once with the scheduler, hands them to workers, and keeps every task in its
desired state: it restarts what fails its health check, reschedules what ran on a node that stopped answering, and
stops the copy a returning node still runs — never two running copies of one task.

Rules kept here:
- One writer per field: the manager writes desired state and placement (node, generation); workers write observed
  state, which the manager copies from their reports (`observe`).
- A task holds resources on its node while it is desired to run and scheduled or running (`holds`); every change to
  a task goes through `_commit`, which keeps node allocations in step and persists task and event together.
- Placement is persisted before dispatch, so a worker never runs a task the manager does not know it placed there;
  a dispatch lost to a crash is repaired when the worker's next report does not list the task.
- Node liveness comes from one mechanism, the workers' long-poll answers (see `membership.py`); mDNS only finds
  addresses.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from cube import scheduler
from cube.core.errors import BadRequest, Conflict, CubeError, NotFound
from cube.core.model import (Desired, Event, InvalidSpec, Job, Node, Resources, State, Task, TaskSpec, new_id,
                    transition)
from cube.store import Store

log = logging.getLogger("cube.manager")
ACTIVE = (State.PENDING, State.SCHEDULED, State.RUNNING)
# The fields of a worker's task report that observe() reads: equal values mean an equal report.
REPORTED = ("id", "generation", "desired", "state", "container_id", "host_ports", "restarts", "exit_code", "reason",
            "started_at", "finished_at")
SAMPLE_ABOVE = 64   # nodes; above this, placement samples SAMPLE_LIMIT feasible nodes
SAMPLE_LIMIT = 16


def holds(task: Task) -> bool:
    """Whether `task` reserves resources on its node."""
    return bool(task.node) and task.desired is Desired.RUN and task.state in (State.SCHEDULED, State.RUNNING)


class Manager:
    def __init__(self, store: Store, *, strategy: str = "epvm", clock: Callable[[], float] = time.time,
                 dispatch: Callable[[Node, str, str, dict | None], object] | None = None, threads: int = 8):
        scheduler.scorer(strategy)  # unknown strategy: fail at start, not at the first placement
        self.store = store
        self.strategy = strategy
        self.clock = clock
        self.sched_state = scheduler.SchedulerState()
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self.tasks: dict[str, Task] = {}
        self.jobs: dict[str, Job] = {}
        self.nodes: dict[str, Node] = {}
        self.placements: dict[str, dict] = {}
        self._held: dict[str, str] = {}     # task id -> node whose allocation counts it
        self._folded: dict[str, tuple] = {}  # task id -> the report last folded into it (see observe)
        self._inflight: set[tuple] = set()   # dispatches queued or being sent (see _dispatch)
        self._send = dispatch               # (node, method, path, body) -> answer; set by membership
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cube-dispatch")
        self._load()

    # ---- persistence ---------------------------------------------------------------------------------------

    def _load(self) -> None:
        for data in self.store.values("nodes"):
            node = Node.from_dict(data)
            node.allocated, node.used_ports, node.tasks = Resources(), set(), 0
            self.nodes[node.name] = node
        for data in self.store.values("jobs"):
            job = Job.from_dict(data)
            self.jobs[job.name] = job
        for data in self.store.values("tasks"):
            task = Task.from_dict(data)
            self.tasks[task.id] = task
            self._account(task)
        for data in self.store.values("placements"):
            self.placements[data["task_id"]] = data

    def _account(self, task: Task) -> None:
        """Bring the node allocations in line with whether `task` holds resources now."""
        want = task.node if holds(task) and task.node in self.nodes else None
        have = self._held.get(task.id)
        if want == have:
            return
        if have and have in self.nodes:
            scheduler.release(self.nodes[have], task.spec)
        if want:
            scheduler.reserve(self.nodes[want], task.spec)
            self._held[task.id] = want
        else:
            self._held.pop(task.id, None)

    def _commit(self, task: Task, event: Event | None = None, message: str = "") -> Task:
        """Persist `task` (and its event, or a note `message` in its current state); keep allocations right.
        Called with the lock held."""
        self.tasks[task.id] = task
        self._folded.pop(task.id, None)
        self._account(task)
        self.store.put("tasks", task.id, task.to_dict())
        if event is None and message:
            event = Event(0, task.id, task.state.value, self.clock(), message, task.node)
        if event is not None:
            self.store.append_event(event)
        self._changed.notify_all()
        return task

    def save_node(self, node: Node) -> None:
        self.store.put("nodes", node.name, node.to_dict())

    # ---- submitting work -----------------------------------------------------------------------------------

    def submit_task(self, data: dict) -> tuple[Task, bool]:
        """Validate and keep a task, then place it. An `id` chosen by the client makes retries idempotent:
        the same id again answers with the existing task. Returns (task, created)."""
        if not isinstance(data, dict):
            raise BadRequest("a task must be a JSON object (a task spec, optionally with an id)")
        data = dict(data)
        task_id = data.pop("id", None) or new_id()
        if not isinstance(task_id, str) or not task_id.isalnum() or len(task_id) > 32:
            raise BadRequest("id must be 1-32 letters and digits")
        spec = _spec(data)
        with self._lock:
            if task_id in self.tasks:
                return self.tasks[task_id].copy(), False
            if spec.name:
                self._name_free(spec.name)
            task = Task(id=task_id, spec=spec, created_at=self.clock(), updated_at=self.clock())
            self._commit(task, Event(0, task.id, State.PENDING.value, task.created_at, "submitted"))
            self._place([task])
            return task.copy(), True

    def _name_free(self, name: str) -> None:
        for other in self.tasks.values():
            if other.name == name and other.desired is Desired.RUN and other.state in ACTIVE:
                raise Conflict(f"a task named {name!r} is already {other.state.value} (id {other.id}): "
                               f"stop it first or pick another name")

    def submit_job(self, data: dict) -> tuple[Job, bool]:
        """Keep a job and place its tasks in one pass. Submitting the same job again is idempotent; a different
        spec under an existing name is a conflict (scale or stop it instead)."""
        job = _job(data)
        with self._lock:
            existing = self.jobs.get(job.name)
            if existing is not None and not existing.stopped:
                if existing.spec == job.spec and existing.type == job.type and existing.count == job.count:
                    return existing, False
                raise Conflict(f"job {job.name!r} already exists with another spec or count: use "
                               f"`cube scale {job.name} N`, or stop it first")
            job.created_at = self.clock()
            self.jobs[job.name] = job
            self.store.put("jobs", job.name, job.to_dict())
            self._reconcile_job(job)
            return job, True

    def _reconcile_job(self, job: Job) -> None:
        """Make the job's active tasks number `job.count`: create the missing ones (named job-1, job-2, ...),
        stop the highest-numbered extra ones."""
        mine = sorted((t for t in self.tasks.values() if t.job == job.name and t.desired is Desired.RUN),
                      key=lambda t: _index(t.name))
        live = [t for t in mine if t.state in ACTIVE or (job.type == "batch" and t.state is State.COMPLETED)]
        for task in live[job.count:]:
            self._stop(task, f"job {job.name} scaled to {job.count}")
        used = {_index(t.name) for t in live[:job.count]}
        new = []
        index = 1
        for _ in range(job.count - min(len(live), job.count)):
            while index in used:
                index += 1
            used.add(index)
            spec = TaskSpec.from_dict({**job.spec.to_dict(), "name": f"{job.name}-{index}"})
            task = Task(id=new_id(), spec=spec, job=job.name, created_at=self.clock(), updated_at=self.clock())
            self._commit(task, Event(0, task.id, State.PENDING.value, task.created_at, f"created by job {job.name}"))
            new.append(task)
        if new:
            self._place(new)

    def scale_job(self, name: str, count) -> Job:
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= 10000:
            raise BadRequest(f"count must be a whole number from 0 to 10000, not {count!r}")
        with self._lock:
            job = self._job(name)
            job.count = count
            self.store.put("jobs", job.name, job.to_dict())
            self._reconcile_job(job)
            return job

    # ---- placing -------------------------------------------------------------------------------------------

    def _place(self, tasks: list[Task]) -> None:
        """Place pending tasks now (lock held); tasks that fit nowhere stay pending with the reasons."""
        nodes = list(self.nodes.values())
        for task in tasks:
            if task.state is not State.PENDING or task.desired is not Desired.RUN:
                continue
            placement = scheduler.place(task.spec, nodes, self.strategy, seed=f"{task.id}:{task.generation}",
                                        state=self.sched_state, limit=self._limit(len(nodes)))
            record = {"task_id": task.id, "time": self.clock(), "node": placement.node.name if placement.node
                      else "", "reasons": dict(placement.reasons), "strategy": self.strategy}
            previous = self.placements.get(task.id)
            self.placements[task.id] = record
            if placement.node is None:
                summary = _no_fit(placement, nodes)
                if task.reason != summary:
                    task.reason = summary
                    self._commit(task, message=summary)
                if not previous or previous.get("reasons") != record["reasons"]:
                    self.store.put("placements", task.id, record)
                continue
            self.store.put("placements", task.id, record)
            task.node = placement.node.name
            task.generation += 1
            task.container_id, task.host_ports, task.exit_code = "", {}, None
            self._commit(task, transition(task, State.SCHEDULED, self.clock(),
                                          f"placed on {task.node} ({self.strategy})"))
            self._dispatch(task.node, "POST", "/tasks", task.to_dict(), task.id)

    @staticmethod
    def _limit(n_nodes: int) -> int | None:
        """Small clusters: every node is scored. Large ones: the first 16 feasible nodes in a seeded order (Nomad's
        and Sparrow's sampling) — measured ~45x faster at 1,000 nodes for ~5% less even placement (BENCHMARKS.md)."""
        return None if n_nodes <= SAMPLE_ABOVE else SAMPLE_LIMIT

    def schedule_pending(self) -> int:
        """Try every pending task again (capacity may have appeared). Returns how many were placed."""
        with self._lock:
            pending = [t for t in self.tasks.values() if t.state is State.PENDING and t.desired is Desired.RUN]
            pending.sort(key=lambda t: t.created_at)
            self._place(pending)
            return sum(1 for t in pending if t.state is not State.PENDING)

    def _dispatch(self, node_name: str, method: str, path: str, body: dict | None, task_id: str) -> None:
        """Send to a worker on the pool: a slow worker must not hold up the others or the caller."""
        if self._send is None:
            return
        node = self.nodes.get(node_name)
        if node is None:
            return
        # The same message already on its way is not queued again: every report of a worker that is still taking
        # a big job's tasks would otherwise resend all those not yet taken (observe), and the queue grew
        # quadratically — 10,000 tasks queued ~250,000 objects and made garbage collections last seconds.
        key = (node_name, method, path, task_id, (body or {}).get("generation"))
        if key in self._inflight:
            return
        self._inflight.add(key)

        def send():
            try:
                self._send(node, method, path, body)
            except CubeError as error:
                self._dispatch_failed(task_id, node_name, method, error)
            finally:
                self._inflight.discard(key)
        self._pool.submit(send)

    def _dispatch_failed(self, task_id: str, node_name: str, method: str, error: CubeError) -> None:
        with self._lock:
            task = self.tasks.get(task_id)
            if task is None or task.node != node_name:
                return
            if method == "POST" and error.status in (400, 409):
                self._commit(task, transition(task, State.FAILED, self.clock(),
                                              f"worker {node_name} refused the task: {error.message}"))
            else:
                # Unreachable: the worker's next report (or its deadline) settles it; note it for the user.
                log.warning("%s %s to %s failed: %s", method, task_id, node_name, error.message)

    # ---- stopping ------------------------------------------------------------------------------------------

    def stop_task(self, task_id: str) -> Task:
        with self._lock:
            task = self._task(task_id)
            self._stop(task, "stop requested")
            return task.copy()

    def _stop(self, task: Task, why: str) -> None:
        if task.desired is Desired.STOP:
            return
        task.desired = Desired.STOP
        task.updated_at = self.clock()
        if task.state is State.PENDING or not task.node:
            if task.state in ACTIVE:
                self._commit(task, transition(task, State.COMPLETED, self.clock(), why))
            else:
                self._commit(task, message=why)
            return
        self._commit(task, message=why)
        self._dispatch(task.node, "DELETE", f"/tasks/{task.id}", None, task.id)

    def stop_job(self, name: str) -> Job:
        with self._lock:
            job = self._job(name)
            job.stopped = True
            self.store.put("jobs", job.name, job.to_dict())
            for task in list(self.tasks.values()):
                if task.job == name:
                    self._stop(task, f"job {name} stopped")
            return job

    # ---- what workers report -------------------------------------------------------------------------------

    def observe(self, node_name: str, reported: list[dict], events: list[dict]) -> None:
        """Fold a worker's report into the manager's view: copy observed state of the tasks placed there, stop
        copies that do not belong there, resend assignments the worker never got."""
        with self._lock:
            node = self.nodes.get(node_name)
            if node is None:
                return
            seen = set()
            for data in reported:
                seen.add(data["id"])
                # A worker reports all its tasks on every change of any one: a task whose report and record are
                # both as they were at the last fold has nothing new (folding 2,500 such tasks held the lock ~9 ms
                # per report, which API requests queued behind; BENCHMARKS.md, api).
                if self._folded.get(data["id"]) != tuple(map(data.get, REPORTED)):
                    self._observe_one(node, data)
            for task in list(self.tasks.values()):
                if task.node == node_name and task.id not in seen and task.state in (State.SCHEDULED,
                                                                                      State.RUNNING):
                    if task.desired is Desired.RUN:
                        self._dispatch(node_name, "POST", "/tasks", task.to_dict(), task.id)
                    else:
                        self._commit(task, transition(task, State.COMPLETED, self.clock(), "stopped"))
            for data in events:
                self.store.append_event(Event(0, data["task_id"], data["state"], data["time"],
                                              data.get("message", ""), node_name))
            self._changed.notify_all()

    def _observe_one(self, node: Node, data: dict) -> None:
        task = self.tasks.get(data["id"])
        generation = int(data.get("generation") or 0)
        copy_runs = data.get("desired") == Desired.RUN.value and data.get("state") in ("scheduled", "running")
        if task is None or task.node != node.name or generation < task.generation:
            if copy_runs:  # a copy this node should not run (moved away while the node was down, or forgotten)
                why = "unknown task" if task is None else f"task now on {task.node or 'no node'}"
                log.info("stopping stale copy of %s on %s (%s)", data["id"], node.name, why)
                self._dispatch(node.name, "DELETE", f"/tasks/{data['id']}", None, data["id"])
            return
        if task.desired is Desired.STOP and data.get("desired") == Desired.RUN.value:
            self._dispatch(node.name, "DELETE", f"/tasks/{task.id}", None, task.id)
        state = State(data["state"])
        fields = ("container_id", "host_ports", "restarts", "exit_code", "reason", "started_at", "finished_at")
        changed = state is not task.state or any(getattr(task, f) != data.get(f) for f in fields)
        if task.state is State.COMPLETED and state is not State.COMPLETED:
            return  # terminal on the manager (stopped); the worker is catching up
        if changed:
            task.state = state
            for f in fields:
                setattr(task, f, data.get(f) if f != "host_ports" else dict(data.get(f) or {}))
            task.updated_at = self.clock()
            self._commit(task)
        if task.desired is Desired.RUN and generation == task.generation:
            # Nothing to resend for this report (a stop or a stale copy is resent on every report until it lands).
            self._folded[task.id] = tuple(map(data.get, REPORTED))
        if changed and not holds(task):
            self.schedule_pending()

    def node_down(self, node_name: str, why: str) -> None:
        """The node missed its deadline: its tasks go elsewhere (a new generation each)."""
        with self._lock:
            node = self.nodes.get(node_name)
            if node is None or node.state == "down":
                return
            node.state = "down"
            self.save_node(node)
            moved = []
            for task in self.tasks.values():
                if task.node != node_name or task.state not in (State.SCHEDULED, State.RUNNING):
                    continue
                if task.desired is Desired.RUN:
                    self._commit(task, transition(task, State.PENDING, self.clock(),
                                                  f"node {node_name} is down ({why}): rescheduling"))
                    moved.append(task)
                else:  # a stop that could not be delivered: done here; the node is told again when it returns
                    self._commit(task, transition(task, State.COMPLETED, self.clock(),
                                                  f"stopped (node {node_name} is down)"))
            log.warning("node %s down (%s): rescheduling %d task(s)", node_name, why, len(moved))
            self._place(moved)
            self._changed.notify_all()

    def node_up(self, node: Node) -> None:
        """A node registered or answered again: keep it and try pending tasks."""
        with self._lock:
            known = self.nodes.get(node.name)
            if known is not None:
                known.address, known.capacity, known.labels = node.address, node.capacity, node.labels
                known.last_seen = node.last_seen
                was = known.state
                if known.state == "down":
                    known.state = "ready"
                node = known
            else:
                was = "new"
                self.nodes[node.name] = node
                for task in self.tasks.values():
                    self._account(task)
            self.save_node(node)
            if was != node.state:
                log.info("node %s is %s (was %s)", node.name, node.state, was)
            self.schedule_pending()

    # ---- health checks: decisions (probing lives in health.py) ---------------------------------------------------

    def health_failed(self, task_id: str, reason: str) -> None:
        """Restart on the same node while it can; reschedule when it is down (the restart count goes along)."""
        with self._lock:
            task = self.tasks.get(task_id)
            if task is None or task.state is not State.RUNNING or task.desired is not Desired.RUN:
                return
            node = self.nodes.get(task.node)
            self._commit(task, message=f"health check failed: {reason}")
            if node is None or node.state != "ready":
                self._commit(task, transition(task, State.PENDING, self.clock(), "node unavailable: rescheduling"))
                self._place([task])
                return
        try:
            self._send(node, "POST", f"/tasks/{task_id}/restart", {"reason": f"health check failed: {reason}"})
        except CubeError as error:
            log.warning("restart of %s on %s failed: %s", task_id, node.name, error.message)

    # ---- reading -------------------------------------------------------------------------------------------

    def task_detail(self, task_id: str) -> dict:
        with self._lock:
            task = self._task(task_id)
            data = task.to_dict()
            data["placement"] = self.placements.get(task_id)
        data["events"] = [e.to_dict() for e in self.store.events(task_id=task_id)]
        return data

    def list_tasks(self, job: str | None = None, state: str | None = None) -> list[Task]:
        with self._lock:
            tasks = [t.copy() for t in self.tasks.values() if (job is None or t.job == job)
                     and (state is None or t.state.value == state)]
        return sorted(tasks, key=lambda t: (t.created_at, t.name))

    def job_detail(self, name: str) -> dict:
        with self._lock:
            job = self._job(name)
            data = job.to_dict()
            tasks = [t for t in self.list_tasks(job=name) if t.desired is Desired.RUN or t.state in ACTIVE]
            data["tasks"] = [t.to_dict() for t in tasks]
            data["running"] = sum(1 for t in tasks if t.state is State.RUNNING)
            return data

    def list_nodes(self) -> list[dict]:
        with self._lock:
            return [n.to_dict() for n in sorted(self.nodes.values(), key=lambda n: n.name)]

    def find_task(self, ref: str) -> Task:
        """A task by id, id prefix or name (the newest when several share a name)."""
        with self._lock:
            if ref in self.tasks:
                return self.tasks[ref].copy()
            matches = [t for t in self.tasks.values() if t.id.startswith(ref) or t.name == ref]
            if not matches:
                raise NotFound(f"no task {ref!r}: `cube status` lists tasks")
            ids = {t.id for t in matches if t.id.startswith(ref)}
            if len(ids) > 1:
                raise BadRequest(f"{ref!r} matches several task ids: give more characters")
            return max(matches, key=lambda t: (t.desired is Desired.RUN, t.created_at)).copy()

    def _task(self, task_id: str) -> Task:
        task = self.tasks.get(task_id)
        if task is None:
            return self.tasks[self.find_task(task_id).id]
        return task

    def _job(self, name: str) -> Job:
        job = self.jobs.get(name)
        if job is None:
            raise NotFound(f"no job {name!r}: `cube status` lists jobs")
        return job

    def wait_changed(self, timeout: float) -> None:
        with self._changed:
            self._changed.wait(timeout)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _spec(data: dict) -> TaskSpec:
    try:
        return TaskSpec.from_dict(data)
    except InvalidSpec as error:
        raise BadRequest(str(error)) from None


def _job(data) -> Job:
    try:
        return Job.from_dict(data)
    except InvalidSpec as error:
        raise BadRequest(str(error)) from None


def _index(name: str) -> int:
    tail = name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _no_fit(placement, nodes: list[Node]) -> str:
    if not nodes:
        return "no nodes yet: start a worker (`cube worker`) or add one with --workers"
    return "no node fits: " + "; ".join(f"{name}: {why}" for name, why in sorted(placement.reasons.items()))
