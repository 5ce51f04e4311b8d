"""The manager: the cluster's memory and its decisions. It accepts tasks and jobs (validated, persisted before they
are acknowledged), places them with the scheduler, and converges: what should run on each node is compared with
what that node last reported, and the difference is sent, again and again until the node's report shows it done.

Rules kept here:
- One writer per field: the manager writes desired state, placement (node, generation) and its notes; a task's
  `observed` is the report of the node it is placed on, copied verbatim (`observe`); the state a user sees is
  derived (`model.derive`).
- Level-triggered: every decision is a pure function in `reconcile.py` (per node, per task, per job), re-run on
  every report, after every change, and on `tick`. Events (a report, a submission) only make the next round come
  sooner. A dispatch that fails is still in the next round's diff (with a backoff); one that succeeded is not
  resent until a report taken after it still lacks it.
- Every change to a task goes through `_commit`, which persists it (with its event), keeps the indexes and the
  node allocations in step, and marks the nodes whose diff may have changed.
- Store first, memory as the store has it: each operation (a submission, a job of N tasks, a report folded in, a
  tick) is one store batch (`_saving`). When the store refuses it (disk full: 507; read-only: 503), every task, job
  and placement it touched is read back from the store, so nothing of a refused change remains, and the request
  gets the error. Background rounds (`_trying`) log the cause once and are retried by the next round. Node records
  are the exception: what a node is (ready, down) is observed, not asked for; one not saved is saved again later.
- Node health: ready, unhealthy (it answers but its engine does not: no new placements) or down (no answer within
  the node timeout); only the workers' long-poll answers (`heard`) move a node back to ready.
- The dispatcher (how a request reaches a worker) and the clocks are constructor arguments; the API and the health
  checker read copies (`list_tasks`, `task_detail`, `health_targets`, ...), never the dicts or the lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from cube import scheduler
from cube.core.errors import BadRequest, Conflict, CubeError, InvalidSpec, NotFound, StorageFailed
from cube.core.model import (
    ACTIVE,
    Desired,
    Event,
    Job,
    Node,
    Observed,
    Resources,
    State,
    Task,
    TaskSpec,
    device_paths,
    new_id,
)
from cube.core.spec import shown
from cube.core.spec import task_id as spec_task_id
from cube.core.telemetry import ManagerTelemetry
from cube.manager.deployments import UNCHANGED, ManagerDeployments
from cube.manager.drain import ManagerDrain
from cube.manager.explain import ManagerExplain
from cube.manager.housekeeping import KEEP_FINISHED, RETENTION, ManagerHousekeeping
from cube.manager.images import ImageMap
from cube.manager.network import ManagerNetwork
from cube.manager.outbox import RETRY_MAX, Outbox
from cube.manager.platforms import KIND as PLATFORMS_KIND
from cube.manager.platforms import ManagerPlatforms
from cube.manager.reconcile import Reported, node_diff, task_decision
from cube.manager.stacks import ManagerStacks
from cube.manager.tally import ManagerTally
from cube.manager.views import ManagerViews
from cube.manager.volumes import ManagerVolumes
from cube.store import Store

log = logging.getLogger("cube.manager")
SAMPLE_ABOVE = 64  # nodes; above this, placement samples SAMPLE_LIMIT feasible nodes
SAMPLE_LIMIT = 16
SWEEP_EVERY = 10.0  # seconds between full rounds over every task and node (the safety net under the indexes)

# (address, method, path, body, params) -> the worker's answer; raises CubeError.
Dispatch = Callable[[str, str, str, "dict | None", "dict | None"], object]


def finished(task: Task) -> bool:
    """Whether `task` is over for good: told to stop, and stopped (or never started)."""
    return task.desired is Desired.STOP and task.state not in ACTIVE


def holds(task: Task) -> bool:
    """Whether `task` reserves resources on its node."""
    return bool(task.node) and task.desired is Desired.RUN and task.state in (State.SCHEDULED, State.RUNNING)


class Manager(
    ManagerViews,
    ManagerTally,
    ManagerVolumes,
    ManagerPlatforms,
    ManagerNetwork,
    ManagerDeployments,
    ManagerStacks,
    ManagerDrain,
    ManagerExplain,
    ManagerHousekeeping,
):
    def __init__(
        self,
        store: Store,
        *,
        strategy: str = "epvm",
        clock: Callable[[], float] = time.time,
        dispatch: Dispatch | None = None,
        node_timeout: float = 5.0,
        threads: int = 8,
        monotonic: Callable[[], float] = time.monotonic,
        executor=None,
        sealer=None,
        cluster_cidr: str | None = None,
        telemetry: ManagerTelemetry | None = None,
        retention: float = RETENTION,
        keep_finished: int = KEEP_FINISHED,
    ):
        """`executor` (tests): runs deliveries (`submit(fn, *args)`) instead of the manager's thread pool.
        `sealer`: what seals a stack's files in the store (cube.cluster.pki.Sealer); None keeps them as given.
        `cluster_cidr`: the range of the nodes' subnets (cube.manager.network); None: no cluster network.
        `telemetry`: told of placements, reschedules, restarts and dispatches (cube.cluster.metrics).
        `retention`, `keep_finished`: how long finished tasks are kept, and how many per job (housekeeping.py)."""
        scheduler.scorer(strategy)  # unknown strategy: fail at start, not at the first placement
        self.store = store
        self.strategy = strategy
        self.clock = clock
        self.monotonic = monotonic
        self.node_timeout = node_timeout
        self.sched_state = scheduler.SchedulerState()
        self._dispatch = dispatch
        self._sealer = sealer
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self.tasks: dict[str, Task] = {}
        self.jobs: dict[str, Job] = {}
        self.nodes: dict[str, Node] = {}
        self.placements: dict[str, dict] = {}
        self._held: dict[str, str] = {}  # task id -> node whose allocation counts it
        self._by_node: dict[str, set[str]] = {}  # node -> ids of the tasks placed there
        self._by_job: dict[str, set[str]] = {}
        self._pending: set[str] = set()  # desired to run, placed nowhere
        self._counts: Counter = Counter()  # (job, state) -> tasks: see tally.py
        self._counted: dict[str, tuple[str, str]] = {}
        self.telemetry = telemetry or ManagerTelemetry()
        # Tasks not finished (desired to run, or still stopping): what `cube status` and the jobs list show. Kept as
        # an index so that 100,000 finished tasks cost those lists nothing (housekeeping.py collects them later).
        self._current: set[str] = set()
        self._reports: dict[str, dict[str, Reported]] = {}
        self._report_start: dict[str, float] = {}  # node -> monotonic start of the poll of its latest report
        self._folded: dict[str, tuple] = {}  # task id -> the report fields last copied into it
        self._outbox = Outbox(monotonic)
        # Whose diff may have changed: node -> the task ids to look at again, or None for all of them. A report of
        # 2,500 tasks of which one changed re-diffs one task, not 2,500 (the API's latency under load, BENCHMARKS.md).
        self._dirty: dict[str, set[str] | None] = {}
        self._raw: dict[str, dict[str, tuple]] = {}  # node -> task id -> (generation, state, desired) as reported
        self._seen: dict[str, float] = {}  # node -> its last answer (see alive), written without the lock
        # node -> what its machine uses now (cpu cores, memory and disk bytes), from its last answer: shown, never
        # stored (it changes at every answer, and an SD card would pay for each write).
        self._usage: dict[str, dict] = {}
        self._swept = float("-inf")
        self._touched: dict[str, set[str]] | None = None  # what the open store batch changed (see _saving)
        self._unsaved: set[str] = set()  # nodes whose record the store refused: saved again by tick
        self._store_trouble = ""  # the store's refusal now, "" while it takes writes
        # The last refusal warned of: its message, when, and whether "takes writes again" is still to be said.
        self._store_warned: tuple[str, float, bool] = ("", float("-inf"), False)
        self._pool = executor or ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cube-dispatch")
        self._cluster_cidr = cluster_cidr
        self.retention, self.keep_finished = retention, keep_finished
        self._collected_at = float("-inf")
        self._load()

    # ---- persistence ---------------------------------------------------------------------------------------

    def _load(self) -> None:
        now = self.clock()
        for data in self.store.values("nodes"):
            node = Node.from_dict(data)
            node.allocated, node.used_ports, node.tasks = Resources(), set(), 0
            node.last_seen = now  # every node gets a full deadline to answer the new manager
            self.nodes[node.name] = node
        for data in self.store.values("jobs"):
            job = Job.from_dict(data, stored=True)
            self.jobs[job.name] = job
        for data in self.store.values("tasks"):
            task = Task.from_dict(data)
            self.tasks[task.id] = task
            self._index(task, None)
        for data in self.store.values("placements"):
            self.placements[data["task_id"]] = data
        self._load_volumes()
        self._load_platforms()
        self._load_deployments()
        self._load_network(self._cluster_cidr)
        self.images = ImageMap()  # which node has which image (cube image ls, peer fetch), from the poll answers
        with self._lock, self._trying():
            # A job cut short by a crash (its record kept, some of its tasks not yet) is completed here.
            for job in list(self.jobs.values()):
                self._reconcile_job(job)
            for node in self.nodes.values():  # a range changed since: subnets out of it are given anew
                self._allot_subnet(node)

    def _index(self, task: Task, before: tuple[str, str] | None) -> None:
        """Keep the indexes and the node allocations in line with `task` (`before`: its (node, job) before)."""
        if before is not None and before[0] != task.node:
            self._by_node.get(before[0], set()).discard(task.id)
        if task.node:
            self._by_node.setdefault(task.node, set()).add(task.id)
        if task.job:
            self._by_job.setdefault(task.job, set()).add(task.id)
        if task.desired is Desired.RUN and not task.node:
            self._pending.add(task.id)
        else:
            self._pending.discard(task.id)
        if finished(task):
            self._current.discard(task.id)
        else:
            self._current.add(task.id)
        self._account(task)
        self._tally(task)

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

    def _commit(self, task: Task, before: tuple[str, str] | None = None, message: str = "") -> Task:
        """Persist `task` (with an event when `message` is given: the decision in the task's derived state), then
        keep it, its indexes and allocations; mark the nodes whose diff changed. Lock held, inside `_saving`."""
        task.updated_at = self.clock()
        self._touch("tasks", task.id)
        self.store.put("tasks", task.id, task.to_dict())
        if message:
            self.store.append_event(Event(0, task.id, task.state.value, task.updated_at, message, task.node))
        self.tasks[task.id] = task
        self._index(task, before)
        self._net_changed()
        if task.node:
            self._mark(task.node, {task.id})
        if before and before[0] and before[0] != task.node:
            self._mark(before[0], {task.id})
        self._changed.notify_all()
        return task

    def _note(self, task: Task, note: str) -> None:
        task.note, task.note_at = note, self.clock()

    def save_node(self, node: Node) -> None:
        self._touch("nodes", node.name)
        self.store.put("nodes", node.name, node.to_dict())
        self._unsaved.discard(node.name)

    def _save_job(self, job: Job) -> None:
        self._touch("jobs", job.name)
        self.store.put("jobs", job.name, job.to_dict())

    def _touch(self, kind: str, key: str) -> None:
        if self._touched is not None:
            self._touched[kind].add(key)

    @contextmanager
    def _saving(self) -> Iterator[None]:
        """One operation's writes as one store batch (lock held; nested: part of the outer one). If the store
        refuses it (or the operation fails half-way), the tasks, jobs and placements it touched are put back as
        the store has them: nothing of it remains. Raises StorageFailed (StorageFull: 507) for the caller."""
        if self._touched is not None:
            yield
            return
        touched: dict[str, set[str]] = {
            "tasks": set(),
            "jobs": set(),
            "placements": set(),
            "nodes": set(),
            "volumes": set(),
            "deployments": set(),
            PLATFORMS_KIND: set(),
        }
        self._touched = touched
        try:
            with self.store.batch():
                yield
        except BaseException as error:
            self._touched = None
            self._restore(touched)
            if isinstance(error, StorageFailed) and error.message != self._store_trouble:
                self._store_trouble = error.message
                self._warn_store(error.message)
            raise
        self._touched = None
        if self._store_trouble and any(touched.values()):  # a round that wrote nothing proves nothing
            if self._store_warned[2]:
                log.info("the store takes writes again (was: %s)", self._store_trouble)
                self._store_warned = (self._store_warned[0], self._store_warned[1], False)
            self._store_trouble = ""

    def _warn_store(self, message: str) -> None:
        """Once per cause and minute: a nearly full disk takes some writes and refuses others, and each refusal
        after a success would otherwise be a new warning."""
        now = self.monotonic()
        last, at, _ = self._store_warned
        if message != last or now - at >= 60.0:
            log.warning("%s: changes refused until then, memory kept as the store has it", message)
            self._store_warned = (message, now, True)

    @contextmanager
    def _trying(self) -> Iterator[None]:
        """`_saving` for background rounds (reports, ticks, start-up): a refusal is logged once (by `_saving`) and
        the round's changes wait for a later round."""
        try:
            with self._saving():
                yield
        except StorageFailed:
            pass

    def _restore(self, touched: dict[str, set[str]]) -> None:
        """Memory back to what the store has for everything a refused batch touched (lock held)."""
        for task_id in touched["tasks"]:
            current, data = self.tasks.get(task_id), self.store.get("tasks", task_id)
            self._folded.pop(task_id, None)  # the next report is folded in again
            if current is not None and current.node:
                self._mark(current.node, {task_id})
            if data is None:
                if current is not None:
                    self._forget(current)
                continue
            task = Task.from_dict(data)
            self.tasks[task_id] = task
            self._index(task, (current.node, current.job) if current else None)
            if task.node:
                self._mark(task.node, {task_id})
        for name in touched["jobs"]:
            data = self.store.get("jobs", name)
            if data is None:
                self.jobs.pop(name, None)
            else:
                self.jobs[name] = Job.from_dict(data)
        for task_id in touched["placements"]:
            data = self.store.get("placements", task_id)
            if data is None:
                self.placements.pop(task_id, None)
            else:
                self.placements[task_id] = data
        self._restore_volumes(touched["volumes"])
        self._restore_deployments(touched["deployments"])
        self._restore_platforms(touched[PLATFORMS_KIND])
        self._unsaved |= touched["nodes"]

    def _forget(self, task: Task) -> None:
        """Drop a task the store never kept from memory and its indexes (lock held)."""
        del self.tasks[task.id]
        task.desired, task.node = Desired.STOP, ""  # so that _account releases what it held
        self._account(task)
        for ids in (*self._by_node.values(), self._by_job.get(task.job, set()), self._pending, self._current):
            ids.discard(task.id)
        self.placements.pop(task.id, None)
        self._untally(task.id)
        self._folded.pop(task.id, None)
        self._healthy_since.pop(task.id, None)

    # ---- submitting work -----------------------------------------------------------------------------------

    def submit_task(self, data: dict) -> tuple[Task, bool]:
        """Validate and keep a task, then place it. An `id` chosen by the client makes retries idempotent:
        the same id again answers with the existing task. Returns (task, created)."""
        if not isinstance(data, dict):
            raise BadRequest("a task must be a JSON object (a task spec, optionally with an id)")
        data = dict(data)
        task_id = spec_task_id(data.pop("id", None) or new_id())
        spec = TaskSpec.from_dict(data)
        with self._lock:
            if task_id in self.tasks:
                existing = self.tasks[task_id]
                if existing.spec != spec:
                    raise Conflict(
                        f"task {task_id} already exists with another spec: pick another id, or stop it and submit again"
                    )
                return existing.copy(), False
            if spec.name:
                self._name_free(spec.name)
            self._ports_free(spec, task_id)
            task = Task(id=task_id, spec=spec, created_at=self.clock())
            with self._saving():
                self._commit(task, message="submitted")
                self._place([task])
            due = self._flush()
        self._deliver_later(due)
        return task.copy(), True

    def _name_free(self, name: str) -> None:
        for other in self.tasks.values():
            if other.name == name and other.desired is Desired.RUN and other.state in ACTIVE:
                raise Conflict(
                    f"a task named {name!r} is already {other.state.value} (id {other.id}): "
                    f"stop it first or pick another name"
                )

    def submit_job(self, data: dict) -> tuple[Job, str]:
        """Deploy a job: create it, or bring the job of that name to this definition and count (see
        deployments.py: unchanged, scaled, or updated by a rollout). Submitting the same job again changes nothing,
        so a client may resend after a lost answer, perhaps after a manager crash cut the first one short (the
        job's record is kept first: the load completes its tasks). Returns (job, outcome)."""
        job = Job.from_request(data)
        with self._lock:
            self._ports_free(job.spec, job.name)
            with self._saving():  # the job, its version and its tasks: all kept, or none
                outcome = self._deploy(job)
                if outcome == UNCHANGED:
                    self._reconcile_job(self.jobs[job.name])
            due = self._flush()
        self._deliver_later(due)
        return self.jobs[job.name], outcome

    def scale_job(self, name: str, count) -> Job:
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= 10000:
            raise BadRequest(f"count must be a whole number from 0 to 10000, not {shown(count)}")
        with self._lock:
            job = self._job(name)
            with self._saving():
                job.count = count
                self._save_job(job)
                self._reconcile_job(job)
            due = self._flush()
        self._deliver_later(due)
        return job

    # ---- placing -------------------------------------------------------------------------------------------

    def _place(self, tasks: list[Task]) -> None:
        """Place the given tasks that wait for a node now (lock held); those that fit nowhere stay pending with
        the reasons. A task that failed on a node avoids it when another node fits."""
        nodes = list(self.nodes.values())
        now = self.clock()
        for task in tasks:
            if task.node or task.desired is not Desired.RUN or task.not_before > now:
                continue
            waiting = self._waiting_for(task)
            if waiting:  # depends_on: its job starts after what it depends on
                if task.note != waiting:
                    self._note(task, waiting)
                    self._commit(task, message=waiting)
                continue
            candidates = [n for n in nodes if n.name != task.avoid] if task.avoid else nodes
            placement = self._pick(task, candidates)
            if placement.node is None and task.avoid:
                placement = self._pick(task, nodes)
            self._record_placement(task, placement, nodes)
            if placement.node is None:
                continue
            before = (task.node, task.job)
            task.node = placement.node.name
            task.generation += 1
            task.avoid, task.not_before = "", 0.0
            self._note(task, f"placed on {task.node} ({self.strategy})")
            self._commit(task, before, task.note)
            self._pin_volumes(task)

    def _pick(self, task: Task, nodes: list[Node]):
        return scheduler.place(
            task.spec,
            nodes,
            self.strategy,
            seed=f"{task.id}:{task.generation}",
            state=self.sched_state,
            limit=self._limit(len(nodes)),
            homes=self._homes(task.spec),
            lacking=self._lacking(task.spec),
        )

    def _record_placement(self, task: Task, placement, nodes: list[Node]) -> None:
        record = {
            "task_id": task.id,
            "time": self.clock(),
            "node": placement.node.name if placement.node else "",
            "reasons": dict(placement.reasons),
            "counts": dict(placement.counts()),
            # What `cube explain` shows of the feasible nodes: their scores (a sampled placement scores at most
            # SAMPLE_LIMIT of them, so the record stays small on a large cluster).
            "scores": {name: round(score, 4) for name, score in placement.scores.items()},
            "strategy": self.strategy,
        }
        previous = self.placements.get(task.id)
        self._touch("placements", task.id)
        self.placements[task.id] = record
        if placement.node is None:
            summary = _no_fit(placement, nodes)
            if task.note != summary:
                self._note(task, summary)
                self._commit(task, message=summary)
            if previous and previous.get("reasons") == record["reasons"]:
                return  # the same refusal again: nothing new to keep (idle managers write nothing), nor to count
        self.telemetry.placed(placement.node is not None, placement.counts())
        self.store.put("placements", task.id, record)

    @staticmethod
    def _limit(n_nodes: int) -> int | None:
        """Small clusters: every node is scored. Large ones: the first 16 feasible nodes in a seeded order (Nomad's
        and Sparrow's sampling) — measured ~45x faster at 1,000 nodes for ~5% less even placement (BENCHMARKS.md)."""
        return None if n_nodes <= SAMPLE_ABOVE else SAMPLE_LIMIT

    def _place_pending(self) -> None:
        """Try every task waiting for a node again, oldest first (capacity may have appeared). Lock held."""
        self._place(sorted((self.tasks[i] for i in self._pending), key=lambda t: t.created_at))

    # ---- stopping ------------------------------------------------------------------------------------------

    def stop_task(self, task_id: str) -> Task:
        with self._lock:
            task = self._task(task_id)
            with self._saving():
                self._stop(task, "stop requested")
            task = self.tasks[task_id]
            due = self._flush()
        self._deliver_later(due)
        return task.copy()

    def _stop(self, task: Task, why: str) -> None:
        """Desired stop (lock held). A task on a node that cannot be told now (down, unknown) is let go of: the
        node's diff stops its copy when the node reports again."""
        if task.desired is Desired.STOP:
            return
        before = (task.node, task.job)
        task.desired = Desired.STOP
        decision = task_decision(task, self.nodes.get(task.node), self.clock(), self.node_timeout, "")
        if decision.unplace:  # its node cannot be told now
            why = f"{why} ({decision.note})"
            task.node = ""
        self._note(task, why)
        self._commit(task, before, why)

    def restart_task(self, task_id: str) -> Task:
        """Start the task's container afresh on its node (`cube restart`, the dashboard's restart): a new
        generation there, so the node's diff replaces the copy it runs. Not counted against the restart policy:
        a user asked for it."""
        with self._lock:
            task = self._task(task_id)
            if task.desired is not Desired.RUN or not task.node or task.state is not State.RUNNING:
                raise Conflict(f"task {task.name or task.id} is {task.state.value}, not running: nothing to restart")
            with self._saving():
                task.generation += 1
                self._note(task, "restart requested")
                self._commit(task, (task.node, task.job), task.note)
            task = self.tasks[task_id]
            due = self._flush()
        self._deliver_later(due)
        return task.copy()

    def stop_job(self, name: str) -> Job:
        with self._lock:
            job = self._job(name)
            with self._saving():
                job.stopped = True
                self._save_job(job)
                self._reconcile_job(job)
            due = self._flush()
        self._deliver_later(due)
        return job

    # ---- what workers report -------------------------------------------------------------------------------

    def observe(
        self, node_name: str, reported: list[dict], events: list[dict], poll_started: float | None = None
    ) -> list[tuple]:
        """Fold a node's report in: copy the observations of the tasks placed there, keep what the node holds for
        its diff, act on what changed. Returns the stops the node's diff wants delivered now: the caller (the node's
        poller) delivers them before it polls again, so a worker that waits for the manager's word (see worker.py,
        holds) has it by its next poll. Everything else due is sent on the pool."""
        with self._lock:
            node = self.nodes.get(node_name)
            if node is None:
                return []
            with self._trying():
                self._fold(node_name, reported, events, poll_started)
            due = self._flush()
            self._changed.notify_all()
        # Stops for this node go back to its poller, to be delivered before it polls again (a worker's holds wait
        # for them); the rest go on the pool: a thousand assignments sent in line would delay its heartbeat.
        mine = [d for d in due if d[0] == node_name and d[1] == "stop"]
        self._deliver_later([d for d in due if d not in mine])
        return mine

    def _fold(self, node_name: str, reported: list[dict], events: list[dict], poll_started: float | None) -> None:
        """observe's work (lock held, inside a store batch)."""
        self._report_start[node_name] = self.monotonic() if poll_started is None else poll_started
        first = node_name not in self._raw
        raw = self._raw.setdefault(node_name, {})
        report = self._reports.setdefault(node_name, {})
        touched, present = set(), set()
        changed = []
        for data in reported:
            task_id = data["id"]
            present.add(task_id)
            key = (data.get("generation"), data["state"], data.get("desired", "run"))
            if raw.get(task_id) != key:
                raw[task_id] = key
                report[task_id] = Reported(int(key[0] or 0), State(key[1]), Desired(key[2]))
                touched.add(task_id)
            task = self.tasks.get(task_id)
            if task is None or task.node != node_name or report[task_id].generation != task.generation:
                continue
            # A worker reports all its tasks on every change of any one: a report equal to the one last
            # copied has nothing new (folding 2,500 such tasks held the lock ~9 ms per report; BENCHMARKS.md).
            fields = tuple(map(data.get, Observed.FIELDS))
            if self._folded.get(task_id) == fields:
                continue
            self._folded[task_id] = fields
            was = task.current
            task.observed = Observed.from_report(node_name, data)
            if was is not None and task.observed.restarts > was.restarts:
                self.telemetry.restarted(task.observed.restarts - was.restarts)
            self._note_platform(task)
            self._note_health(task)
            self._commit(task)
            changed.append(task)
        for task_id in raw.keys() - present:  # the node no longer has it
            del raw[task_id], report[task_id]
            touched.add(task_id)
        self._mark(node_name, None if first else touched)
        for data in events:
            self.store.append_event(
                Event(0, data["task_id"], data["state"], data["time"], data.get("message", ""), node_name)
            )
        self._decide(changed)
        for name in sorted({t.job for t in changed if t.job in self.deployments and t.job in self.jobs}):
            self._reconcile_job(self.jobs[name])  # a rollout moves on as its new tasks come up
        if any(not holds(t) for t in changed):
            self._place_pending()

    def _decide(self, tasks: list[Task]) -> None:
        """Apply `reconcile.task_decision` to each task (lock held); unplaced tasks are placed again at once
        when they may be."""
        now = self.clock()
        moved = []
        for task in tasks:
            job = self.jobs.get(task.job)
            decision = task_decision(
                task, self.nodes.get(task.node), now, self.node_timeout, job.type if job else "service"
            )
            if not decision.unplace:
                continue
            before = (task.node, task.job)
            log.info("task %s: %s", task.id, decision.note)
            task.node = ""
            task.not_before, task.avoid = decision.not_before, decision.avoid
            if decision.reschedules is not None:
                task.reschedules = decision.reschedules
            if task.desired is Desired.RUN:
                self.telemetry.rescheduled()
            self._note(task, decision.note)
            self._commit(task, before, decision.note)
            moved.append(task)
        self._place(moved)

    # ---- nodes ---------------------------------------------------------------------------------------------

    def node_up(self, node: Node) -> None:
        """A node registered (or was admitted again): keep it and try pending tasks."""
        with self._lock:
            known = self.nodes.get(node.name)
            self._net_changed()
            if known is not None:
                known.address, known.capacity, known.labels = node.address, node.capacity, node.labels
                known.devices = node.devices
                known.last_seen = node.last_seen
                node = known
            else:
                node.since = self.clock()
                self.nodes[node.name] = node
                for task in self.tasks.values():
                    self._account(task)
            with self._trying():
                self.save_node(node)
                self._allot_subnet(node)
                self._place_pending()
            due = self._flush()
        self._deliver_later(due)

    def remove_node(self, name: str) -> Node:
        """Forget a node that is down (`cube node rm`): its tasks are placed elsewhere, its poller ends. A node
        that still answers is refused: its copies would keep running with nobody to stop them."""
        with self._lock:
            node = self.nodes.get(name)
            if node is None:
                raise NotFound(f"no node named {name!r}: `cube nodes` lists them")
            if node.state != "down":
                raise Conflict(
                    f"node {name} is {node.state}: stop its worker first (systemctl stop cube-worker on it), "
                    f"wait until `cube nodes` shows it down, then remove it"
                )
            self.store.delete("nodes", name)  # first: a refusal (507, 503) leaves the node as it was
            del self.nodes[name]
            self.images.forget(name)
            for per_node in (self._seen, self._reports, self._report_start, self._dirty, self._raw, self._usage):
                per_node.pop(name, None)
            self._unsaved.discard(name)
            self._free_subnet(name)
            with self._trying():  # refused: its tasks are placed elsewhere by the next sweep (their node is gone)
                self._decide([self.tasks[i] for i in list(self._by_node.get(name, ()))])
            self._changed.notify_all()
            due = self._flush()
        self._deliver_later(due)
        log.warning("node %s removed", name)
        return node

    def alive(self, node_name: str) -> None:
        """A node answered: its heartbeat, recorded without waiting for the lock (a busy manager must not declare
        down a node whose answers it has not yet had time to fold in)."""
        self._seen[node_name] = self.clock()

    def heard(self, node_name: str, stats: dict) -> None:
        """A node answered its poll: it is alive; its engine's health and its capacity are as it says."""
        self.alive(node_name)
        with self._lock:
            node = self.nodes.get(node_name)
            if node is None:
                return
            node.last_seen = max(node.last_seen, self._seen.get(node_name, 0.0))
            self._usage[node_name] = _usage(stats)
            self._heard_volumes(node_name, stats)
            self._heard_network(node_name, stats)
            self.images.heard(node_name, stats.get("images"))
            runtime = stats.get("runtime") or {}
            state, reason = (
                ("ready", "")
                if runtime.get("ok", True)
                else ("unhealthy", f"container engine not answering: {runtime.get('error') or 'no detail'}")
            )
            changed = _refresh(node, stats)
            if state != node.state:
                with self._trying():
                    self._node_state(node, state, reason)
                changed = True
            elif reason != node.reason:
                node.reason = reason  # the same trouble in other words: its deadline runs on
                changed = True
            if changed:
                with self._trying():
                    self.save_node(node)
                    self._place_pending()
                due = self._flush()
            else:
                due = []
        self._deliver_later(due)

    def _node_state(self, node: Node, state: str, reason: str) -> None:
        """Move a node to `state` (lock held) and decide again for the tasks placed there."""
        was = node.state
        node.state, node.reason, node.since = state, reason, self.clock()
        self._net_changed()  # its tasks take traffic, or no more
        self._mark(node.name, None)  # back from down: its whole diff again
        log.log(
            logging.WARNING if state != "ready" else logging.INFO,
            "node %s is %s%s (was %s)",
            node.name,
            state,
            f": {reason}" if reason else "",
            was,
        )
        self._decide([self.tasks[i] for i in list(self._by_node.get(node.name, ()))])
        self._changed.notify_all()

    def check_deadlines(self, now: float | None = None) -> None:
        """Nodes silent past the node timeout are down."""
        with self._lock, self._trying():
            now = self.clock() if now is None else now
            for node in self.nodes.values():
                node.last_seen = max(node.last_seen, self._seen.get(node.name, 0.0))
                silent = now - node.last_seen
                if node.state != "down" and silent > self.node_timeout:
                    self._node_state(node, "down", f"no answer within the node timeout ({self.node_timeout:g} s)")
                    self.save_node(node)

    # ---- the round -----------------------------------------------------------------------------------------

    def tick(self, now: float | None = None) -> None:
        """One round of housekeeping: deadlines, decisions that wait on the clock (a node lost for long enough, a
        reschedule delay over), pending placements, dispatches due again; every SWEEP_EVERY seconds, every task
        and node (the safety net under the indexes)."""
        with self._lock:
            now = self.clock() if now is None else now
            self.check_deadlines(now)
            with self._trying():
                self._round(now)
            for name, ids in self._outbox.waiting().items():
                self._mark(name, ids)
            due = self._flush()
        self._deliver_later(due)

    def _round(self, now: float) -> None:
        """tick's decisions (lock held, inside a store batch)."""
        for name in sorted(self._unsaved):  # node records the store refused before
            if name in self.nodes:
                self.save_node(self.nodes[name])
        self._unsaved &= self.nodes.keys()
        for name in self._draining_nodes():  # a stop that waited for the nodes' tables may be due now
            self._mark(name, None)
        sweep = now - self._swept >= SWEEP_EVERY
        if sweep:
            self._swept = now
            for name in self.nodes:
                self._mark(name, None)
            for job in list(self.jobs.values()):
                self._reconcile_job(job)
            self._decide([t for t in self.tasks.values() if t.desired is Desired.RUN and t.node])
        else:
            for node in self.nodes.values():
                if node.state != "ready":
                    self._decide([self.tasks[i] for i in list(self._by_node.get(node.name, ()))])
        self._drain_round(now)
        self._collect(now)
        for job in self._rolling_jobs():  # min_healthy_time and healthy_deadline pass on the clock
            for task_id in list(self._by_job.get(job.name, ())):
                self._note_health(self.tasks[task_id])
            self._reconcile_job(job)
        self._place_pending()

    # ---- dispatch ------------------------------------------------------------------------------------------

    def _flush(self) -> list[tuple]:
        """The requests due now for every node whose diff may have changed (lock held). A node that is down or
        has not reported since this manager started is left alone: its first report brings its diff."""
        due = []
        for name, scope in sorted(self._dirty.items()):
            node = self.nodes.get(name)
            if node is None or node.state == "down" or name not in self._reports:
                continue
            due.extend(self._node_due(name, scope))
        self._dirty.clear()
        return due + self._network_due(self._reports)

    def _mark(self, node: str, ids: set[str] | None) -> None:
        """Note that the diff of `node` may have changed for `ids` (None: for everything)."""
        if ids is None or self._dirty.get(node, set()) is None:
            self._dirty[node] = None
        else:
            self._dirty.setdefault(node, set()).update(ids)  # type: ignore[union-attr]

    def _node_due(self, name: str, scope: set[str] | None) -> list[tuple]:
        report = self._reports[name]
        if scope is None:
            placed = [self.tasks[i] for i in self._by_node.get(name, ())]
        else:
            placed = [t for i in scope if (t := self.tasks.get(i)) is not None and t.node == name]
            report = {i: report[i] for i in scope if i in report}
        plan = node_diff(name, placed, report, self.tasks.get)
        if not self._network_ready(name):
            plan.send = []  # until its worker holds its subnet: a container must start on the cluster network
        plan.stop = [(tid, gen) for tid, gen in plan.stop if not self._stop_waits(tid)]
        wanted = {("send", tid, self.tasks[tid].generation) for tid in plan.send}
        wanted |= {("stop", tid, gen) for tid, gen in plan.stop}
        return self._outbox.due(name, wanted, self._report_start.get(name, float("-inf")), scope)

    def _deliver_later(self, due: list[tuple]) -> None:
        """Deliver on the pool: a slow worker must not hold up the others or the caller."""
        if self._dispatch is None:
            return
        for item in due:
            self._pool.submit(self.deliver, item)

    def deliver(self, item: tuple) -> None:
        """Send one request the node diff wants (an assignment, or a stop naming its generation) and record how
        it went; a failure is tried again after a backoff, by the diff."""
        node_name, kind, task_id, generation = item
        if kind == "network":
            self._deliver_network(item)
            return
        with self._lock:
            node = self.nodes.get(node_name)
            task = self.tasks.get(task_id)
            body = _assignment(task) if kind == "send" and task is not None else None
            if body is not None and task is not None and task.spec.files:
                body["files"] = self.file_contents(task)  # a stack's secrets and configs, for this send only
        ok, refused = False, None
        started = self.monotonic()
        try:
            if node is None or self._dispatch is None or (kind == "send" and body is None):
                return
            if kind == "send":
                self._dispatch(node.address, "POST", "/tasks", body, None)
            else:
                self._dispatch(node.address, "DELETE", f"/tasks/{task_id}", None, {"generation": generation})
            ok = True
        except CubeError as error:
            if kind == "stop" and error.status == 404:
                ok = True  # the node does not know the task: nothing of it runs there
            elif kind == "send" and error.status in (400, 409):
                refused = error.message
            else:
                log.warning("%s of %s to %s failed: %s", kind, task_id, node_name, error.message)
        finally:
            self._delivered(node_name, (kind, task_id, generation), ok, refused)
        outcome = "ok" if ok else "refused" if refused else "failed"
        self.telemetry.dispatched(kind, outcome, self.monotonic() - started)

    def _delivered(self, node_name: str, key: tuple, ok: bool, refused: str | None) -> None:
        with self._lock:
            self._outbox.done(node_name, key, ok)
            task = self.tasks.get(key[1])
            if refused and task is not None and task.node == node_name and task.generation == key[2]:
                # The worker will not take it (an older Cube, a spec it cannot run): try another node later.
                before = (task.node, task.job)
                with self._trying():
                    task.node, task.avoid, task.not_before = "", node_name, self.clock() + RETRY_MAX
                    self._note(task, f"node {node_name} refused the task: {refused}")
                    self._commit(task, before, task.note)

    # ---- health checks: decisions (probing lives in health.py) -----------------------------------------------

    def health_targets(self) -> list[dict]:
        """What the health checker probes: running tasks with a health check and a published port."""
        with self._lock:
            out = []
            for task in self.tasks.values():
                obs = task.current
                if (
                    not task.spec.health
                    or task.desired is not Desired.RUN
                    or obs is None
                    or obs.state is not State.RUNNING
                    or not obs.container_id
                ):
                    continue
                node = self.nodes.get(task.node)
                port = task.spec.health_port
                host_port = obs.host_ports.get(port.key) if port else None
                if node is None or not host_port:
                    continue
                out.append(
                    {
                        "task_id": task.id,
                        "container_id": obs.container_id,
                        "restarts": obs.restarts,
                        "address": node.address,
                        "port": int(host_port),
                        "path": task.spec.health.path,
                        "interval": task.spec.health.interval,
                        "timeout": task.spec.health.timeout,
                    }
                )
            return out

    def health_failed(self, task_id: str, reason: str) -> None:
        """Restart on the same node (the worker counts it against the restart policy). A node that is not ready
        is not asked: its own deadline decides."""
        with self._lock:
            task = self.tasks.get(task_id)
            node = self.nodes.get(task.node) if task else None
            if (
                task is None
                or task.state is not State.RUNNING
                or task.desired is not Desired.RUN
                or node is None
                or node.state != "ready"
            ):
                return
            with self._trying():
                self.store.append_event(
                    Event(0, task.id, task.state.value, self.clock(), f"health check failed: {reason}", task.node)
                )
            address = node.address
        if self._dispatch is None:
            return
        try:
            self._dispatch(
                address, "POST", f"/tasks/{task_id}/restart", {"reason": f"health check failed: {reason}"}, None
            )
        except CubeError as error:
            log.warning("restart of %s on %s failed: %s", task_id, node.name, error.message)

    def close(self) -> None:
        if isinstance(self._pool, ThreadPoolExecutor):
            self._pool.shutdown(wait=False, cancel_futures=True)


def _assignment(task: Task) -> dict:
    """What a worker is given: the task's identity, spec and generation (never the manager's other fields)."""
    return {
        "id": task.id,
        "spec": task.spec.to_dict(),
        "job": task.job,
        "generation": task.generation,
        "desired": Desired.RUN.value,
    }


def _usage(stats: dict) -> dict:
    """What a node's machine uses, from its answer: cpu in cores, memory and disk in bytes (None: not said)."""
    cpu, memory, disk = stats.get("cpu") or {}, stats.get("memory") or {}, stats.get("disk") or {}
    try:
        return {
            "cpu": round(float(cpu["percent"]) / 100 * float(cpu["count"]), 2) if "percent" in cpu else None,
            "memory": int(memory["total"]) - int(memory["available"]) if "available" in memory else None,
            "disk": int(disk["total"]) - int(disk["free"]) if "free" in disk else None,
        }
    except (KeyError, TypeError, ValueError):
        return {"cpu": None, "memory": None, "disk": None}


def _refresh(node: Node, stats: dict) -> bool:
    """Copy what a node says of itself (capacity, timeouts, devices, version) into its record. Returns whether it
    changed."""
    capacity = Resources.from_dict(stats.get("capacity")) if stats.get("capacity") else node.capacity
    disconnect = float(stats.get("disconnect_timeout") or 0)
    stop = float(stats.get("stop_timeout") or node.stop_timeout)
    # The devices it has now: a stick plugged in lets a task waiting for it be placed; one pulled out stops new
    # placements there (a worker too old to report devices keeps what its node record has).
    try:
        devices = device_paths(stats["devices"], "the worker's devices") if "devices" in stats else node.devices
    except InvalidSpec:
        devices = node.devices
    version = str(stats.get("version") or node.version)[:64]  # a worker restarted onto a new pyz (`cube upgrade`)
    if (capacity.to_dict(), disconnect, stop, devices, version) == (
        node.capacity.to_dict(),
        node.disconnect_timeout,
        node.stop_timeout,
        node.devices,
        node.version,
    ):
        return False
    node.capacity, node.disconnect_timeout, node.stop_timeout = capacity, disconnect, stop
    node.devices, node.version = devices, version
    return True


def _no_fit(placement, nodes: list[Node]) -> str:
    if not nodes:
        return "no nodes yet: start a worker (`cube worker`) or add one with --workers"
    # The counts first (what to fix), then each node's own words; a long list is cut (a reason is one line).
    details = sorted(placement.reasons.items())
    shown = "; ".join(f"{name}: {why}" for name, why in details[:8])
    more = f"; and {len(details) - 8} more" if len(details) > 8 else ""
    return f"no node fits ({placement.tally()}): {shown}{more}"
