"""The worker: keeps the tasks assigned to this node in their desired state on a container runtime, and reports
what it observes. It is the only writer of its tasks' observed state.

It decides four things. What it holds: every assignment is persisted before it is acknowledged, so a worker killed with
`kill -9` comes back with the same tasks and adopts their running containers by label instead of starting new ones; a
change the store refuses (disk full, read-only) is not made in memory either (`_save`), and an assignment the store
refused is answered 507 or 503 and never started. When it acts: a level-triggered loop (`tick`) re-reads everything on a
short interval, and the runtime's event stream (a container died) makes the next tick come at once — a missed event is
repaired by the next tick, a seen one is acted on in milliseconds. How it acts: `reconcile.diff` computes a plan;
actions run on a small thread pool (starting 100 containers one by one would take 100 engine round trips in a row), one
action per task at a time. When it waits for the manager (holds, see holds.py): after this worker restarts, after its
engine comes back, and after a disconnect stopped a task, the tasks it held before are not started again until the
manager has seen the new situation, so a task moved elsewhere meanwhile never runs twice.

Engine health is node health: a runtime that does not answer is reported (`stats()["runtime"]`), its running tasks
are shown waiting for the engine (not completed), and containers that ended with the engine are restarted when it
returns, without counting against the restart policy (see `restarts.py`). Disconnect: a worker that hears from no
manager for `disconnect_timeout` stops the tasks whose policy says `on_disconnect: stop` and keeps the others.

The manager learns what happens here through `state()`, a long poll that answers as soon as anything changes.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress

from cube import __version__
from cube.core.errors import (
    Conflict,
    CubeError,
    ImageUnavailable,
    NotFound,
    RuntimeFailure,
    StorageFailed,
    Unavailable,
)
from cube.core.model import Assignment, Desired, Event, Health, Resources, State, transition
from cube.core.spec import is_volume_name, shown
from cube.core.telemetry import WorkerTelemetry
from cube.store import Store, node_id
from cube.worker.devices import DeviceScan
from cube.worker.files import TaskFiles
from cube.worker.holds import DISCONNECT, Holds
from cube.worker.images import NodeImages, Source
from cube.worker.metrics import Metrics, machine_arch
from cube.worker.network import NodeNetwork
from cube.worker.pulls import Credentials, follow
from cube.worker.reconcile import Plan, diff
from cube.worker.restarts import backoff, ran_stable, recent
from cube.worker.runtime import ContainerInfo, Runtime

log = logging.getLogger("cube.worker")
ENGINE_RETRY_MAX = 5.0  # seconds between reconcile rounds while the engine does not answer (it was 142 logs/s)
VOLUMES_EVERY = 30.0  # seconds between listings of the node's volumes (sooner after a start that mounts one)
FORGET_AFTER = 600.0  # seconds an assignment stopped for good is still held (and reported) before it is dropped


class Worker:
    def __init__(
        self,
        name: str,
        runtime: Runtime,
        store: Store,
        *,
        metrics: Metrics | None = None,
        labels: dict | None = None,
        reconcile_interval: float = 5.0,
        threads: int = 4,
        stop_timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
        key: str | None = None,
        disconnect_timeout: float = 30.0,
        monotonic: Callable[[], float] = time.monotonic,
        sync: bool = False,
        devices: DeviceScan | None = None,
        credentials: Credentials | None = None,
        image_source: Source | None = None,
        files: TaskFiles | None = None,
        network_host=None,
        network_dns: bool = False,
        telemetry: WorkerTelemetry | None = None,
    ):
        """`sync` (tests): actions run inside `tick()` instead of on the thread pools. `devices`: what finds the
        device paths this node advertises (the usual places, see cube.worker.devices, by default). `image_source`:
        where a task's image that cannot be pulled is fetched from (a peer node, through the manager; see
        cube.worker.images). `network_host`: what sets the node's routes and rules for the cluster network
        (cube.worker.network.SystemHost); None: the machine is left alone (tables are only kept and reported).
        `telemetry`: told of container starts and refused starts (cube.cluster.metrics)."""
        self.name = name
        # What this worker's containers are labelled with (cube.node): its name by default. Two workers with one
        # hostname sharing one Docker engine need distinct keys, or each would remove the other's containers.
        self.key = key or name
        self.id = node_id(store)
        self.runtime = runtime
        self.store = store
        self.metrics = metrics or Metrics()
        self.telemetry = telemetry or WorkerTelemetry()
        self.labels = dict(labels or {})
        self.devices = devices or DeviceScan()
        # Registry credentials the manager hands over with assignments: memory only (see cube.worker.pulls); the
        # runtime that pulls is given the same object.
        self.credentials = credentials or Credentials()
        # A stack's secrets and configs for the tasks here (see cube.worker.files).
        self.files = files or TaskFiles(None)
        self.reconcile_interval = reconcile_interval
        self.stop_timeout = stop_timeout
        self.disconnect_timeout = disconnect_timeout
        self.clock = clock
        self.monotonic = monotonic
        self.tasks: dict[str, Assignment] = {}
        for data in store.values("tasks"):
            task = Assignment.from_dict(data)
            self.tasks[task.id] = task
        self.version = 1
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._busy: set[str] = set()  # task ids (and container ids) with an action in flight
        self._settled: dict[str, float] = {}  # task id -> monotonic time its last action ended
        self._due: dict[str, float] = {}  # task id -> earliest restart (backoff)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cube-action")
        # Stops wait up to stop_timeout for a container to exit: on a pool of their own they never hold up
        # a start or a restart.
        self._stop_pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cube-stop")
        self._kick = threading.Event()
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sync = sync
        self._local = threading.local()  # the (task id, generation) an action thread acts for
        self._dead_ids: set[str] = set()  # container ids the event stream reported dead
        self._store_trouble = ""  # the store's last refusal, logged once
        self.holds = Holds(monotonic())
        self._answered_at = float("-inf")  # when the manager last had this node's state (wall clock)
        self._forgot_at = float("-inf")
        # Engine health, as the last reconcile round found it.
        self.engine_ok = True
        self.engine_error = ""
        self.engine_since = clock()
        # Restarts counted lately (task id -> clock times): Docker 20.10 stops the containers before its API goes
        # away when it is stopped, so the deaths are seen first; when the engine turns out to be going down, the
        # restarts counted for them are given back (see _engine_down).
        self._counted: dict[str, list[float]] = {}
        # The node's named volumes, as the last listing found them (reported in stats, for `cube volume ls`).
        self._volumes: list[dict] = []
        self._volumes_due = float("-inf")  # monotonic time of the next listing
        self.images = NodeImages(runtime, name, image_source, monotonic, changed=self._images_changed)
        self.network = NodeNetwork(runtime, store, network_host, monotonic, dns=network_dns)
        for task in self.tasks.values():
            if task.desired is Desired.RUN and task.state in (State.SCHEDULED, State.RUNNING):
                self.holds.hold(task.id, "worker restarted", self.holds.started)

    # ---- what the API calls -------------------------------------------------------------------------------

    def accept(self, task: Assignment) -> tuple[Assignment, bool]:
        """Take an assignment from the manager. Idempotent per (id, generation): the same assignment twice is
        one task, an older generation than the one held is ignored. Returns (task, created)."""
        if task.desired is not Desired.RUN:
            raise Conflict("an assignment must have desired state 'run'")
        with self._lock:
            existing = self.tasks.get(task.id)
            if existing is not None and existing.generation >= task.generation:
                return existing.copy(), False
            task = Assignment(
                id=task.id,
                spec=task.spec,
                job=task.job,
                generation=task.generation,
                node=self.name,
                created_at=self.clock(),
                updated_at=self.clock(),
            )
            self._save(
                task,
                Event(0, task.id, State.SCHEDULED.value, task.updated_at, f"assigned to node {self.name}", self.name),
            )
            self._due.pop(task.id, None)
            self.holds.drop(task.id)
        self._kick.set()
        return task.copy(), True

    def stop_task(self, task_id: str, generation: int | None = None) -> Assignment:
        """Stop a task (the manager's word). With `generation`, only a copy of that generation or older is
        stopped: a stop meant for a stale copy never touches the task placed here again since."""
        with self._lock:
            task = self._get(task_id)
            if generation is not None and task.generation > generation:
                return task.copy()
            if task.desired is not Desired.STOP:
                task.desired = Desired.STOP
                task.updated_at = self.clock()
                self._say(task, "stop requested", task.updated_at)
        self._kick.set()
        return task.copy()

    def restart_task(self, task_id: str, reason: str) -> Assignment:
        """Restart a running task's container because of `reason` (a failed health check), counting it against
        the restart policy; past the limit the task fails and keeps the reason."""
        with self._lock:
            task = self._get(task_id)
            if task.state is not State.RUNNING or task.desired is not Desired.RUN or task_id in self._busy:
                raise Conflict(f"task {task_id} is {task.state.value}, not running: nothing to restart")
            container_id = self._charge_restart(task, reason)
            self._busy.add(task_id)
        self._submit(task_id, self._stop_container, task_id, container_id, False, pool=self._stop_pool)
        return task.copy()

    def _charge_restart(self, task: Assignment, reason: str) -> str:
        """Count a restart for `reason` against the policy (past its limit the task fails) and return the
        container to stop (lock held)."""
        now = self.clock()
        policy = task.spec.restart
        counted = recent(task.restart_times, now, policy.window)
        if len(counted) >= policy.max_restarts:
            event = transition(task, State.FAILED, now, f"{reason}; {_used(len(counted), policy)}")
        else:
            task.restarts += 1
            task.restart_times = counted + [now]
            event = transition(
                task, State.SCHEDULED, now, f"{reason}; restarting ({len(counted) + 1} of {_limit(policy)})"
            )
        self._save(task, event)
        return task.container_id

    def get(self, task_id: str) -> Assignment:
        with self._lock:
            return self._get(task_id).copy()

    def detail(self, task_id: str) -> dict:
        task = self.get(task_id)
        data = task.to_dict()
        data["container"] = None
        if task.container_id:
            try:
                data["container"] = vars(self.runtime.inspect(task.container_id))
            except (NotFound, Unavailable):
                pass
        data["events"] = [e.to_dict() for e in self.store.events(task_id=task_id)]
        return data

    def assignments(self) -> list[Assignment]:
        with self._lock:
            return [t.copy() for t in self.tasks.values()]

    def state_counts(self) -> dict[str, int]:
        """Observed state -> how many of the tasks this node holds."""
        with self._lock:
            return dict(Counter(t.state.value for t in self.tasks.values()))

    def containers(self) -> list[tuple[str, str, str]]:
        """(task id, job, container id) of the tasks running here."""
        with self._lock:
            return [
                (t.id, t.job, t.container_id)
                for t in self.tasks.values()
                if t.state is State.RUNNING and t.container_id
            ]

    def logs(self, task_id: str, tail: int | None = None, follow: bool = False) -> Iterator[bytes]:
        task = self.get(task_id)
        if not task.container_id:
            raise NotFound(f"task {task_id} has no container yet ({task.state.value}: {task.reason or 'waiting'})")
        return self.runtime.logs(task.container_id, tail=tail, follow=follow)

    def stats(self) -> dict:
        data = self.metrics.snapshot()
        with self._lock:
            active = [
                t
                for t in self.tasks.values()
                if t.desired is Desired.RUN and t.state in (State.SCHEDULED, State.RUNNING)
            ]
            runtime = {"ok": self.engine_ok, "error": self.engine_error, "since": self.engine_since}
        data.update(
            name=self.name,
            id=self.id,
            version=__version__,
            labels=self.node_labels(),
            tasks=len(active),
            allocated=_allocated(active).to_dict(),
            runtime=runtime,
            disconnect_timeout=self.disconnect_timeout,
            stop_timeout=self.stop_timeout,
            devices=self.devices.paths(),
        )
        with self._lock:
            data["volumes"] = [dict(v) for v in self._volumes]
        data["images"] = self.images.listed()
        data["network"] = self.network.status()
        return data

    def node_labels(self) -> dict:
        """arch and hostname from the machine, then the user's labels (which may override them)."""
        return {"arch": machine_arch(), "hostname": socket.gethostname(), **self.labels}

    def state(self, version: int | None = None, wait: float = 0.0, events_since: int = 0) -> dict:
        """Everything the manager needs in one answer. With `version` equal to the current one and `wait` > 0,
        waits up to `wait` seconds for a change first (long poll): the manager hears of a change at once,
        and a silent node answers anyway, which is its heartbeat."""
        with self._changed:
            released = self.holds.polled(self.monotonic())
            if version is not None and wait > 0 and version == self.version and not released:
                self._changed.wait_for(
                    lambda: self.version != version or self._closed.is_set(), timeout=min(wait, 30.0)
                )
            tasks = [t.to_dict() for t in self.tasks.values()]
            current = self.version
            self.holds.answered()
            self._answered_at = self.clock()
        if released:
            self._kick.set()
        if events_since >= 0:
            events = self.store.events(since=events_since, limit=500)
            # The cursor is the last event handed over: an event appended after the read is sent next time.
            last = events[-1].id if events else events_since
        else:
            events, last = [], self.store.last_event_id()
        return {
            "node": self.name,
            "version": current,
            "tasks": tasks,
            "stats": self.stats(),
            "events": [e.to_dict() for e in events],
            "last_event": last,
        }

    # ---- holds ----------------------------------------------------------------------------------------------

    @property
    def last_polled(self) -> float:
        """Monotonic time of the last poll (a manager's GET /state); the registrar registers after a quiet spell."""
        return self.holds.last_polled

    # ---- the loop -----------------------------------------------------------------------------------------

    def tick(self, now: float | None = None) -> Plan:
        """One reconcile round: list containers, diff against the tasks, start the actions. With `_sync` the
        actions run before tick returns (tests). Raises Unavailable when the engine does not answer (after
        recording it)."""
        listed_at = time.monotonic()
        try:
            containers = self._fresh(self.runtime.list_owned(self.key))
            if not self.engine_ok and not self.runtime.alive():
                raise Unavailable("the container engine refuses new connections (it is stopping)")
        except Unavailable as error:
            self._engine_down(error.message)
            raise
        self._engine_up()
        if self.network.converge():
            with self._lock:
                self._bump()
        self._list_volumes()
        self.images.refresh()
        now = self.clock() if now is None else now
        with self._lock:
            self.holds.release(self.monotonic())
            self._disconnect(now)
            self._forget_ended(now, containers)
            # A task whose action ended after the listing began is judged next round: the listing may
            # not show what that action did.
            skip = {tid for tid, at in self._settled.items() if at >= listed_at}
            busy = frozenset(self._busy | skip)
            plan = diff(
                {tid: t.copy() for tid, t in self.tasks.items()},
                containers,
                now,
                busy,
                dict(self._due),
                self.holds.held(),
            )
        if plan.died and not self.runtime.alive():
            # Containers died and the engine takes no new connection: it is stopping them (see
            # DockerRuntime.alive). Their ends are the engine's, not the tasks' failures.
            why = "the container engine refuses new connections (it is stopping)"
            self._engine_down(why)
            raise Unavailable(why)
        with self._lock:
            for task_id in self._plan_task_ids(plan):
                self._busy.add(task_id)
        self._apply(plan)
        return plan

    def _engine_down(self, error: str) -> None:
        """The engine stopped answering: say so in the report, and show the running tasks as waiting for it (their
        containers may be gone; they are judged again when it answers)."""
        with self._lock:
            if not self.engine_ok and self.engine_error == error:
                return
            was_ok, self.engine_ok, self.engine_error = self.engine_ok, False, error
            now = self.clock()
            if was_ok:
                self.engine_since = now
                log.warning("container runtime unavailable: %s", error)
                with suppress(StorageFailed):  # logged once by _save: the engine's state is reported all the same
                    self._refund(now)
            for task_id in list(self.tasks):
                task = self.tasks[task_id]
                if task.desired is Desired.RUN and task.state is State.RUNNING:
                    with suppress(StorageFailed):
                        self._save(
                            task,
                            transition(
                                task,
                                State.SCHEDULED,
                                now,
                                f"waiting for the container engine, which does not answer: {error}",
                            ),
                        )
                    task = self.tasks[task_id]
                if task.desired is Desired.RUN and task.state is State.SCHEDULED:
                    self.holds.hold(task.id, "engine", self.monotonic())
            self._bump()

    def _refund(self, now: float) -> None:
        """Give back the restarts counted for deaths that came with the engine's shutdown: those within its stop
        grace (the containers' StopTimeout is the worker's stop timeout) and a margin (lock held)."""
        window = self.stop_timeout + 3.0
        for task_id, times in list(self._counted.items()):
            task = self.tasks.get(task_id)
            recent_ones = [at for at in times if now - at <= window]
            if task is None or not recent_ones:
                continue
            for at in recent_ones:
                if at in task.restart_times:
                    task.restart_times.remove(at)
                task.restarts = max(0, task.restarts - 1)
                task.streak = max(0, task.streak - 1)
            self._due.pop(task_id, None)
            self._say(task, f"the container engine stopped: {len(recent_ones)} restart(s) not counted", now)
        self._counted.clear()

    def _count(self, task: Assignment, now: float) -> None:
        """Count a restart against the task's policy (lock held)."""
        task.streak += 1
        task.restarts += 1
        task.restart_times = recent(task.restart_times, now, task.spec.restart.window) + [now]
        self._counted.setdefault(task.id, []).append(now)
        cutoff = now - self.stop_timeout - 3.0
        for task_id in [tid for tid, times in self._counted.items() if times[-1] < cutoff]:
            del self._counted[task_id]

    def _engine_up(self) -> None:
        with self._lock:
            if self.engine_ok:
                return
            log.info("container runtime answers again (was down for %.1f s)", self.clock() - self.engine_since)
            self.engine_ok, self.engine_error, self.engine_since = True, "", self.clock()
            self.holds.renew("engine", self.monotonic())  # the manager must see the engine back first
            self._bump()

    def _disconnect(self, now: float) -> None:
        """No manager for `disconnect_timeout`: stop the running tasks whose policy says so (lock held)."""
        if not self.disconnect_timeout:
            return
        alone = self.holds.alone(self.monotonic())
        if alone < self.disconnect_timeout:
            return
        for task in self.tasks.values():
            if (
                task.desired is Desired.RUN
                and task.spec.disconnect == "stop"
                and task.state is State.RUNNING
                and task.id not in self.holds
                and task.id not in self._busy
            ):
                message = (
                    f"stopped: no manager for {alone:.0f} s (on_disconnect: stop); starts again when a "
                    f"manager answers and keeps it here"
                )
                self._save(task, transition(task, State.SCHEDULED, now, message))
                self.holds.hold(task.id, DISCONNECT, self.monotonic())
                self._busy.add(task.id)
                self._submit(task.id, self._stop_container, task.id, task.container_id, False, pool=self._stop_pool)

    def _fresh(self, containers: list[ContainerInfo]) -> list[ContainerInfo]:
        """Docker's container list can lag its own `die` event by a few milliseconds: a container reported dead
        by the event stream is inspected directly (which also gives the OOM flag and finish time)."""
        with self._lock:
            died, self._dead_ids = self._dead_ids, set()
        if not died:
            return containers
        fresh = []
        for info in containers:
            if info.id in died:
                try:
                    info = self.runtime.inspect(info.id)
                except NotFound:
                    continue
            fresh.append(info)
        return fresh

    @staticmethod
    def _plan_task_ids(plan: Plan) -> set[str]:
        ids = set(plan.start) | set(plan.stopped)
        ids |= {tid for tid, _ in plan.restart + plan.stop}
        ids |= {tid for tid, _ in plan.died + plan.observe}
        return ids

    def _apply(self, plan: Plan) -> None:
        for task_id in plan.start:
            self._submit(task_id, self._start, task_id)
        for task_id, container_id in plan.restart:
            self._submit(task_id, self._restart, task_id, container_id)
        for task_id, info in plan.died:
            self._submit(task_id, self._died, task_id, info)
        for task_id, container_id in plan.stop:
            self._submit(task_id, self._stop_container, task_id, container_id, True, pool=self._stop_pool)
        for task_id in plan.stopped:
            self._submit(task_id, self._complete_stopped, task_id)
        for task_id, info in plan.observe:
            self._submit(task_id, self._observe, task_id, info)
        for container_id in plan.orphans:
            with self._lock:
                if container_id in self._busy:
                    continue
                self._busy.add(container_id)
            self._submit(container_id, self._remove_orphan, container_id, pool=self._stop_pool)

    def _submit(self, key: str, fn, *args, pool: ThreadPoolExecutor | None = None) -> None:
        """Run an action for `key` (already marked busy) on the pool; clear the mark and wake the loop after. The
        action acts for the task's generation of now: if the task is assigned again meanwhile, what the action
        would record is not the new assignment's (`_mine` raises _Stale) and the next round judges afresh."""
        with self._lock:
            task = self.tasks.get(key)
            acting = (key, task.generation if task else None)

        def run():
            self._local.acting = acting
            try:
                fn(*args)
            except _Stale:
                log.debug("action %s for %s: the task was assigned again meanwhile", getattr(fn, "__name__", fn), key)
            except StorageFailed:
                pass  # logged once by _save; memory is as the store has it, and the next round tries again
            except Unavailable as error:  # the engine went away mid-action: the next round judges again
                log.info("action %s for %s: %s", getattr(fn, "__name__", fn), key, error.message)
            except Exception:  # an action must never kill the pool thread; the next tick retries
                log.exception("action %s for %s failed", getattr(fn, "__name__", fn), key)
            finally:
                self._local.acting = None
                with self._lock:
                    self._busy.discard(key)
                    self._settled[key] = time.monotonic()
                self._kick.set()

        if self._sync:
            run()
        else:
            (pool or self._pool).submit(run)

    # ---- actions (each runs with its task marked busy) -------------------------------------------------------

    def _start(self, task_id: str) -> None:
        with self._lock:
            task = self._mine(task_id).copy()
        pulled = threading.Event()
        self._follow_pull(task_id, task.spec.image, pulled)
        try:
            info: ContainerInfo | None = self._runtime_start(task)
        except ImageUnavailable as error:
            info = self._start_fetched(task, error)
        except Unavailable:
            raise  # the engine, not the task: nothing is counted
        except CubeError as error:
            self._failed_start(task_id, f"container failed to start: {error.message}")
            return
        finally:
            pulled.set()
        if info is None:
            return
        if task.spec.named_volumes:
            self._volumes_due = float("-inf")  # a volume may be new: listed by the next round
        self._running(task_id, info, f"container {info.id[:12]} started")

    def _runtime_start(self, task: Assignment) -> ContainerInfo:
        """Start on the cluster network when the node has one (cube.worker.network)."""
        files = self.files.mounts(task)
        attachment = self.network.attachment()
        try:
            if attachment is None:
                info = self.runtime.start(task, self.key, files)
            else:
                info = self.runtime.start(task, self.key, files, network=attachment)
        except Unavailable:
            raise  # the engine, not the start: the node's health says it
        except CubeError:
            self.telemetry.start_failed()
            raise
        self.telemetry.started()
        return info

    def _follow_pull(self, task_id: str, image: str, done: threading.Event) -> None:
        """While a start waits for its image, tell the task's events how the pull goes ("pulling nginx on n1:
        45%"), at most once a second (`pulls.follow`); the manager passes them on, and `cube run` shows them."""
        find = getattr(self.runtime, "pull_progress", None)
        if find is None:
            return
        acting = getattr(self._local, "acting", None)

        def say(text: str) -> None:
            self._local.acting = acting
            with self._lock, suppress(NotFound, _Stale, StorageFailed):
                task = self._mine(task_id)
                if task.state is State.SCHEDULED and not task.container_id:
                    self._say(task, text, self.clock())

        threading.Thread(
            target=follow,
            args=(lambda: find(image), self.name, say, done),
            name=f"pull-progress {task_id}",
            daemon=True,
        ).start()

    def _start_fetched(self, task: Assignment, missing: ImageUnavailable) -> ContainerInfo | None:
        """The task's image cannot be pulled: fetch it from a peer node that has it and start again; None (the
        task failed, with both reasons) when no peer gives it."""
        if self.images.source is None:
            self._update(task.id, State.FAILED, f"cannot start: {missing.message}")
            return None
        try:
            said = self.images.fetch(task.spec.image)
        except CubeError as error:
            self._update(
                task.id,
                State.FAILED,
                f"cannot start: {missing.message}; and no peer node gave it: {error.message}",
            )
            return None
        with self._lock:
            self._say(self._mine(task.id), said, self.clock())
        try:
            return self._runtime_start(task)
        except ImageUnavailable as error:
            self._update(task.id, State.FAILED, f"cannot start: {error.message}")
        except Unavailable:
            raise
        except CubeError as error:
            self._failed_start(task.id, f"container failed to start: {error.message}")
        return None

    def _images_changed(self) -> None:
        with self._lock:
            self._bump()

    def _restart(self, task_id: str, container_id: str) -> None:
        """Start the task's ended container again; if the engine cannot (the container is gone, or it is left in
        a state it will not start from, as after an engine restart: "task ... already exists"), replace it."""
        try:
            info = self.runtime.restart(container_id)
        except (NotFound, RuntimeFailure) as error:
            if isinstance(error, RuntimeFailure):
                log.info("replacing container %s of task %s: %s", container_id[:12], task_id, error.message)
                self.runtime.remove(container_id)
            self._start(task_id)
            return
        self.telemetry.started()
        self._running(task_id, info, f"container {info.id[:12]} restarted")

    def _failed_start(self, task_id: str, message: str) -> None:
        with self._lock:
            task = self._mine(task_id)
            now = self.clock()
            policy = task.spec.restart
            counted = recent(task.restart_times, now, policy.window)
            if policy.allows(1, len(counted)):
                self._due[task_id] = now + backoff(task.streak)
                self._count(task, now)
                self._say(task, f"{message}; retrying ({len(counted) + 1} of {_limit(policy)})", now)
            else:
                self._save(task, transition(task, State.FAILED, now, message))

    def _running(self, task_id: str, info: ContainerInfo, message: str) -> None:
        with self._lock:
            task = self._mine(task_id)
            task.container_id, task.host_ports, task.exit_code = info.id, dict(info.host_ports), None
            task.health = info.health
            task.address = info.address
            task.finished_at = None
            if task.state is State.RUNNING:
                self._say(task, message, self.clock())
            else:
                self._save(task, transition(task, State.RUNNING, self.clock(), message))
                task.started_at = info.started_at or task.updated_at

    def _observe(self, task_id: str, info: ContainerInfo) -> None:
        with self._lock:
            adopted = self._mine(task_id).container_id != info.id
        self._running(
            task_id,
            info,
            f"adopted running container {info.id[:12]}"
            if adopted
            else f"container {info.id[:12]} {info.health or 'running'}",
        )
        if info.health == Health.UNHEALTHY.value:
            # Docker only marks it (a container of `docker run` stays unhealthy for good); an orchestrator
            # replaces it, as Swarm does: a restart, counted against the task's restart policy.
            with self._lock:
                task = self._mine(task_id)
                retries = task.spec.health.retries if task.spec.health else 0
                container_id = self._charge_restart(task, f"health check failed {retries} times in a row")
            self._stop_container(task_id, container_id, False)

    def _died(self, task_id: str, info: ContainerInfo | None) -> None:
        with self._lock:
            task = self._mine(task_id)
            code = info.exit_code if info else None
            what = (
                "container vanished"
                if info is None
                else f"container exited with code {code}"
                + (" (out of memory)" if info.oom_killed else "")
                + (f": {info.error}" if info and info.error else "")
            )
            task.exit_code = code
            if info is None:
                task.container_id = ""
            policy = task.spec.restart
            now = self.clock()
            if info is not None and ran_stable(info.started_at, info.finished_at):
                task.streak = 0
            counted = recent(task.restart_times, now, policy.window)
            if policy.allows(code, len(counted)):
                self._due[task_id] = now + backoff(task.streak)
                self._count(task, now)
                event = transition(
                    task, State.SCHEDULED, now, f"{what}; restarting ({len(counted) + 1} of {_limit(policy)})"
                )
            elif code == 0:
                event = transition(task, State.COMPLETED, now, what)
            else:
                why = "restart policy is 'no'" if policy.name == "no" else _used(len(counted), policy)
                event = transition(task, State.FAILED, now, f"{what}; {why}")
            self._save(task, event)

    def _grace(self, task_id: str) -> float:
        """Seconds a task's container gets to exit when stopped: the task's stop_timeout, else the node's."""
        with self._lock:
            task = self.tasks.get(task_id)
        if task is None or task.spec.stop_timeout is None:
            return self.stop_timeout
        return task.spec.stop_timeout

    def _stop_container(self, task_id: str, container_id: str, remove: bool) -> None:
        try:
            self.runtime.stop(container_id, timeout=self._grace(task_id))
            if remove:
                self.runtime.remove(container_id)
        except NotFound:
            pass
        if remove:
            self.files.remove(task_id)
            self._complete_stopped(task_id)

    def _complete_stopped(self, task_id: str) -> None:
        with self._lock:
            task = self._mine(task_id)
            if task.state in (State.PENDING, State.SCHEDULED, State.RUNNING):
                self._save(task, transition(task, State.COMPLETED, self.clock(), "stopped"))
            elif task.container_id:
                task.container_id = ""
                self._save(task, None)

    def _remove_orphan(self, container_id: str) -> None:
        log.info("removing container %s: no task owns it", container_id[:12])
        self.runtime.remove(container_id)

    def _update(self, task_id: str, state: State, message: str) -> None:
        with self._lock:
            task = self._mine(task_id)
            self._save(task, transition(task, state, self.clock(), message))

    # ---- bookkeeping ---------------------------------------------------------------------------------------

    def _get(self, task_id: str) -> Assignment:
        task = self.tasks.get(task_id)
        if task is None:
            raise NotFound(f"no task {task_id} on node {self.name}")
        return task

    def _mine(self, task_id: str) -> Assignment:
        """The task an action on this thread acts for (lock held), or _Stale if it was assigned again since."""
        task = self._get(task_id)
        acting = getattr(self._local, "acting", None)
        if acting and acting[0] == task_id and acting[1] is not None and task.generation != acting[1]:
            raise _Stale(task_id)
        return task

    def _save(self, task: Assignment, event: Event | None) -> None:
        """Persist the task with its event (together or not at all), then keep it; wake long polls. Lock held. If
        the store refuses (disk full: 507; read-only: 503), the task in memory goes back to what the store has
        (an assignment never kept is dropped: no container starts for it) and StorageFailed is raised."""
        try:
            with self.store.batch():
                self.store.put("tasks", task.id, task.to_dict())
                if event is not None:
                    self.store.append_event(Event(0, event.task_id, event.state, event.time, event.message, self.name))
        except StorageFailed as error:
            data = self.store.get("tasks", task.id)
            if data is None:
                self.tasks.pop(task.id, None)
            else:
                self.tasks[task.id] = Assignment.from_dict(data)
            if error.message != self._store_trouble:
                self._store_trouble = error.message
                log.warning("%s: changes refused until then, memory kept as the store has it", error.message)
            raise
        if self._store_trouble:
            log.info("the store takes writes again (was: %s)", self._store_trouble)
            self._store_trouble = ""
        self.tasks[task.id] = task
        self._bump()

    def _say(self, task: Assignment, message: str, when: float) -> None:
        """Record `message` about `task` in its current state (lock held)."""
        self._save(task, Event(0, task.id, task.state.value, when, message, self.name))

    def _bump(self) -> None:
        self.version += 1
        self._changed.notify_all()

    def _forget_ended(self, now: float, containers) -> None:
        """Drop the assignments that are over for good (lock held): stopped at the manager's word, no container
        left, ended FORGET_AFTER ago, and reported to the manager since (it has their end; a later report without
        them changes nothing there). A node's report and store then stay the size of what it runs."""
        if now - self._forgot_at < FORGET_AFTER / 10:
            return
        self._forgot_at = now
        present = {c.task_id for c in containers}
        for task_id, task in list(self.tasks.items()):
            ended_at = task.finished_at or task.updated_at
            if (
                task.desired is Desired.STOP
                and task.state in (State.COMPLETED, State.FAILED)
                and task_id not in present
                and task_id not in self._busy
                and now - ended_at > FORGET_AFTER
                and self._answered_at > max(ended_at, task.updated_at)
            ):
                try:
                    with self.store.batch():
                        self.store.delete("tasks", task_id)
                        self.store.forget_task_events(task_id)
                except StorageFailed:
                    return  # said by _save's path when it matters; tried again next time
                del self.tasks[task_id]
                self._bump()

    # ---- the cluster network (cube.worker.network) ------------------------------------------------------------

    def update_network(self, data) -> dict:
        """The manager's network table (PUT /network): kept, reported at once, converged on by the next round."""
        table = self.network.update(data)
        with self._lock:
            self._bump()
        self._kick.set()
        return {"version": table.version}

    # ---- volumes -------------------------------------------------------------------------------------------

    def _list_volumes(self, force: bool = False) -> None:
        """List the node's named volumes when due (every VOLUMES_EVERY s, or sooner after a start that mounts one);
        a new list wakes the manager's long poll."""
        if not force and self.monotonic() < self._volumes_due:
            return
        self._volumes_due = self.monotonic() + VOLUMES_EVERY
        try:
            found = sorted((v.to_dict() for v in self.runtime.volumes(self.key)), key=lambda v: v["name"])
        except CubeError as error:
            log.info("listing volumes: %s", error.message)
            return
        with self._lock:
            if found != self._volumes:
                self._volumes = found
                self._bump()

    def remove_volume(self, name: str) -> None:
        """Remove a named volume this node made (`cube volume rm`, through the manager). Refused while a task held
        here to run mounts it."""
        if not is_volume_name(name):
            raise NotFound(f"no volume {shown(name)} on node {self.name}: not a volume name")
        with self._lock:
            users = [t.id for t in self.tasks.values() if t.desired is Desired.RUN and name in t.spec.named_volumes]
        if users:
            raise Conflict(f"volume {name} is mounted by task {users[0]} on node {self.name}: stop it first")
        self.runtime.remove_volume(name, self.key)
        self._list_volumes(force=True)

    # ---- running for real ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the reconcile loop and the event watcher in the background."""
        for target, name in ((self._loop, "cube-reconcile"), (self._watch_events, "cube-events")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _loop(self) -> None:
        failures = 0
        while not self._closed.is_set():
            self._kick.clear()
            wait = None
            try:
                self.tick()
                failures = 0
            except (Unavailable, StorageFailed):
                # Logged once (by _engine_down, by _save); retried with a growing pause, whatever kicks the loop.
                failures += 1
                wait = min(0.5 * 2 ** (failures - 1), ENGINE_RETRY_MAX)
            except Exception:
                log.exception("reconcile failed")
            if wait is not None:
                self._closed.wait(wait)
                continue
            self._kick.wait(self._next_wait())

    def _next_wait(self) -> float:
        """Until the next full reconcile, or sooner when a restart's backoff or a hold ends before it."""
        with self._lock:
            due = [
                at for tid, at in self._due.items() if tid in self.tasks and self.tasks[tid].state is State.SCHEDULED
            ]
            held = bool(self.holds)
        wait = self.reconcile_interval
        if held:
            wait = min(wait, 1.0)  # a hold ends by the clock when no manager is around
        if self.disconnect_timeout:
            wait = min(wait, max(0.2, self.disconnect_timeout / 4))
        if due:
            wait = min(wait, max(0.0, min(due) - self.clock()))
        return wait

    def _watch_events(self) -> None:
        while not self._closed.is_set():
            try:
                for event in self.runtime.events(self.key, self._closed):
                    if event.action in ("die", "oom"):
                        with self._lock:
                            self._dead_ids.add(event.container_id)
                    self._kick.set()
            except Exception as error:  # the engine restarted or the stream broke: the loop still reconciles
                log.debug("runtime event stream ended: %s", error)
            self._closed.wait(1.0)

    def close(self) -> None:
        self._closed.set()
        self._kick.set()
        with self._changed:
            self._changed.notify_all()
        for thread in self._threads:
            thread.join(timeout=3)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._stop_pool.shutdown(wait=False, cancel_futures=True)
        self.network.close()


class _Stale(Exception):
    """An action's task was assigned again (a new generation) while the action ran."""


def _limit(policy) -> str:
    return f"{policy.max_restarts} within {policy.window:g} s"


def _used(count: int, policy) -> str:
    return f"{count} of {policy.max_restarts} restarts within {policy.window:g} s used"


def _allocated(tasks: list[Assignment]) -> Resources:
    return Resources(sum(t.spec.cpu for t in tasks), sum(t.spec.memory for t in tasks), sum(t.spec.disk for t in tasks))
