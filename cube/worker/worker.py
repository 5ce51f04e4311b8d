"""The worker: keeps the tasks assigned to this node in their desired state on a container runtime.

It decides three things. What it holds: every assignment is persisted before it is acknowledged, so a worker killed
with `kill -9` comes back with the same tasks and adopts their running containers by label instead of starting new
ones. When it acts: a level-triggered loop (`tick`) re-reads everything on a short interval, and the runtime's event
stream (a container died) makes the next tick come at once — a missed event is repaired by the next tick, a seen one
is acted on in milliseconds. How it acts: `reconcile.diff` computes a plan; actions run on a small thread pool
(starting 100 containers one by one would take 100 engine round trips in a row), one action per task at a time.

The manager learns what happens here through `state()`, a long poll that answers as soon as anything changes.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

from cube import __version__
from cube.core.errors import Conflict, CubeError, ImageUnavailable, NotFound, Unavailable
from cube.worker.metrics import Metrics, machine_arch
from cube.core.model import Desired, Event, Resources, State, Task, transition
from cube.worker.reconcile import Plan, backoff, diff
from cube.worker.runtime import ContainerInfo, Runtime
from cube.store import Store

log = logging.getLogger("cube.worker")


class Worker:
    def __init__(self, name: str, runtime: Runtime, store: Store, *, metrics: Metrics | None = None,
                 labels: dict | None = None, reconcile_interval: float = 5.0, threads: int = 4,
                 stop_timeout: float = 10.0, clock: Callable[[], float] = time.time, key: str | None = None):
        self.name = name
        # What this worker's containers are labelled with (cube.node): its name by default. Two workers with one
        # hostname sharing one Docker engine need distinct keys, or each would remove the other's containers.
        self.key = key or name
        self.id = node_id(store)
        self.runtime = runtime
        self.store = store
        self.metrics = metrics or Metrics()
        self.labels = dict(labels or {})
        self.reconcile_interval = reconcile_interval
        self.stop_timeout = stop_timeout
        self.clock = clock
        self.tasks: dict[str, Task] = {}
        for data in store.values("tasks"):
            task = Task.from_dict(data)
            self.tasks[task.id] = task
        self.version = 1
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._busy: set[str] = set()            # task ids (and container ids) with an action in flight
        self._settled: dict[str, float] = {}     # task id -> monotonic time its last action ended
        self._due: dict[str, float] = {}         # task id -> earliest restart (backoff)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cube-action")
        # Stops wait up to stop_timeout for a container to exit: on a pool of their own they never hold up
        # a start or a restart.
        self._stop_pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cube-stop")
        self._kick = threading.Event()
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sync = False                       # tests: run actions inline in tick()
        self._dead_ids: set[str] = set()             # container ids the event stream reported dead
        self.last_polled = float("-inf")         # monotonic time of the last state() call (a manager's poll)

    # ---- what the API calls -------------------------------------------------------------------------------

    def accept(self, task: Task) -> tuple[Task, bool]:
        """Take an assignment from the manager. Idempotent per (id, generation): the same assignment twice is
        one task. Returns (task, created)."""
        if task.desired is not Desired.RUN:
            raise Conflict("an assignment must have desired state 'run'")
        with self._lock:
            existing = self.tasks.get(task.id)
            if existing is not None and existing.generation >= task.generation:
                return existing.copy(), False
            task = task.copy()
            task.node, task.state, task.container_id, task.host_ports = self.name, State.SCHEDULED, "", {}
            task.exit_code, task.started_at, task.finished_at = None, None, None
            task.updated_at = self.clock()
            self._save(task, Event(0, task.id, State.SCHEDULED.value, task.updated_at,
                                   f"assigned to node {self.name}", self.name))
            self._due.pop(task.id, None)
        self._kick.set()
        return task.copy(), True

    def stop_task(self, task_id: str) -> Task:
        with self._lock:
            task = self._get(task_id)
            if task.desired is not Desired.STOP:
                task.desired = Desired.STOP
                task.updated_at = self.clock()
                self._save(task, Event(0, task.id, task.state.value, task.updated_at, "stop requested", self.name))
        self._kick.set()
        return task.copy()

    def restart_task(self, task_id: str, reason: str) -> Task:
        """Restart a running task's container because of `reason` (a failed health check), counting it against
        the restart limit; past the limit the task fails and keeps the reason."""
        with self._lock:
            task = self._get(task_id)
            if task.state is not State.RUNNING or task.desired is not Desired.RUN or task_id in self._busy:
                raise Conflict(f"task {task_id} is {task.state.value}, not running: nothing to restart")
            limit = task.spec.restart.max_restarts
            now = self.clock()
            container_id = task.container_id
            if task.restarts >= limit:
                event = transition(task, State.FAILED, now, f"{reason}; giving up after {task.restarts} "
                                                            f"restart{'s' if task.restarts != 1 else ''}")
            else:
                task.restarts += 1
                event = transition(task, State.SCHEDULED, now, f"{reason}; restarting ({task.restarts} of {limit})")
            self._save(task, event)
            self._busy.add(task_id)
        self._submit(task_id, self._stop_container, task_id, container_id, False, pool=self._stop_pool)
        return task.copy()

    def get(self, task_id: str) -> Task:
        with self._lock:
            return self._get(task_id).copy()

    def detail(self, task_id: str) -> dict:
        task = self.get(task_id)
        data = task.to_dict()
        data["container"] = None
        if task.container_id:
            try:
                data["container"] = vars(self.runtime.inspect(task.container_id))
            except NotFound:
                pass
        data["events"] = [e.to_dict() for e in self.store.events(task_id=task_id)]
        return data

    def list(self) -> list[Task]:
        with self._lock:
            return [t.copy() for t in self.tasks.values()]

    def logs(self, task_id: str, tail: int | None = None, follow: bool = False) -> Iterator[bytes]:
        task = self.get(task_id)
        if not task.container_id:
            raise NotFound(f"task {task_id} has no container yet ({task.state.value}: {task.reason or 'waiting'})")
        return self.runtime.logs(task.container_id, tail=tail, follow=follow)

    def stats(self) -> dict:
        data = self.metrics.snapshot()
        with self._lock:
            active = [t for t in self.tasks.values() if t.desired is Desired.RUN
                      and t.state in (State.SCHEDULED, State.RUNNING)]
        data.update(name=self.name, id=self.id, version=__version__, labels=self.node_labels(), tasks=len(active),
                    allocated=_allocated(active).to_dict())
        return data

    def node_labels(self) -> dict:
        """arch and hostname from the machine, then the user's labels (which may override them)."""
        return {"arch": machine_arch(), "hostname": socket.gethostname(), **self.labels}

    def state(self, version: int | None = None, wait: float = 0.0, events_since: int = 0) -> dict:
        """Everything the manager needs in one answer. With `version` equal to the current one and `wait` > 0,
        waits up to `wait` seconds for a change first (long poll): the manager hears of a change at once,
        and a silent node answers anyway, which is its heartbeat."""
        self.last_polled = time.monotonic()
        with self._changed:
            if version is not None and wait > 0 and version == self.version:
                self._changed.wait_for(lambda: self.version != version or self._closed.is_set(),
                                       timeout=min(wait, 30.0))
            tasks = [t.to_dict() for t in self.tasks.values()]
            current = self.version
        if events_since >= 0:
            events = self.store.events(since=events_since, limit=500)
            # The cursor is the last event handed over: an event appended after the read is sent next time.
            last = events[-1].id if events else events_since
        else:
            events, last = [], self.store.last_event_id()
        return {"node": self.name, "version": current, "tasks": tasks, "stats": self.stats(),
                "events": [e.to_dict() for e in events], "last_event": last}

    # ---- the loop -----------------------------------------------------------------------------------------

    def tick(self, now: float | None = None) -> Plan:
        """One reconcile round: list containers, diff against the tasks, start the actions. With `_sync` the
        actions run before tick returns (tests)."""
        listed_at = time.monotonic()
        containers = self._fresh(self.runtime.list_owned(self.key))
        now = self.clock() if now is None else now
        with self._lock:
            # A task whose action ended after the listing began is judged next round: the listing may
            # not show what that action did.
            skip = {tid for tid, at in self._settled.items() if at >= listed_at}
            busy = frozenset(self._busy | skip)
            plan = diff({tid: t.copy() for tid, t in self.tasks.items()}, containers, now, busy, dict(self._due))
            for task_id in self._plan_task_ids(plan):
                self._busy.add(task_id)
        self._apply(plan)
        return plan

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
        """Run an action for `key` (already marked busy) on the pool; clear the mark and wake the loop after."""
        def run():
            try:
                fn(*args)
            except Exception:  # an action must never kill the pool thread; the next tick retries
                log.exception("action %s for %s failed", getattr(fn, "__name__", fn), key)
            finally:
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
        task = self.get(task_id)
        try:
            info = self.runtime.start(task, self.key)
        except ImageUnavailable as error:
            self._update(task_id, State.FAILED, f"cannot start: {error.message}")
            return
        except CubeError as error:
            self._failed_start(task_id, f"container failed to start: {error.message}")
            return
        self._running(task_id, info, f"container {info.id[:12]} started")

    def _restart(self, task_id: str, container_id: str) -> None:
        try:
            info = self.runtime.restart(container_id)
        except NotFound:
            self._start(task_id)
            return
        except CubeError as error:
            self._failed_start(task_id, f"container failed to restart: {error.message}")
            return
        self._running(task_id, info, f"container {info.id[:12]} restarted")

    def _failed_start(self, task_id: str, message: str) -> None:
        with self._lock:
            task = self._get(task_id)
            if task.spec.restart.allows(1, task.restarts):
                self._due[task_id] = self.clock() + backoff(task.restarts)
                task.restarts += 1
                self._save(task, Event(0, task_id, task.state.value, self.clock(),
                                       f"{message}; retrying ({task.restarts} of {task.spec.restart.max_restarts})",
                                       self.name))
            else:
                self._save(task, transition(task, State.FAILED, self.clock(), message))

    def _running(self, task_id: str, info: ContainerInfo, message: str) -> None:
        with self._lock:
            task = self._get(task_id)
            task.container_id, task.host_ports, task.exit_code = info.id, dict(info.host_ports), None
            if task.state is State.RUNNING:
                self._save(task, Event(0, task_id, State.RUNNING.value, self.clock(), message, self.name))
            else:
                self._save(task, transition(task, State.RUNNING, self.clock(), message))

    def _observe(self, task_id: str, info: ContainerInfo) -> None:
        adopted = self.get(task_id).container_id != info.id
        self._running(task_id, info, f"adopted running container {info.id[:12]}" if adopted
                      else f"container {info.id[:12]} running")

    def _died(self, task_id: str, info: ContainerInfo | None) -> None:
        with self._lock:
            task = self._get(task_id)
            code = info.exit_code if info else None
            what = "container vanished" if info is None else f"container exited with code {code}" + \
                (" (out of memory)" if info.oom_killed else "") + (f": {info.error}" if info and info.error else "")
            task.exit_code = code
            policy = task.spec.restart
            now = self.clock()
            if policy.allows(code, task.restarts):
                self._due[task_id] = now + backoff(task.restarts)
                task.restarts += 1
                if info is None:
                    task.container_id = ""
                event = transition(task, State.SCHEDULED, now,
                                   f"{what}; restarting ({task.restarts} of {policy.max_restarts})")
            elif code == 0:
                event = transition(task, State.COMPLETED, now, what)
            else:
                why = "restart policy is 'no'" if policy.name == "no" else \
                    f"{task.restarts} of {policy.max_restarts} restarts used"
                event = transition(task, State.FAILED, now, f"{what}; {why}")
            self._save(task, event)

    def _stop_container(self, task_id: str, container_id: str, remove: bool) -> None:
        try:
            self.runtime.stop(container_id, timeout=self.stop_timeout)
            if remove:
                self.runtime.remove(container_id)
        except NotFound:
            pass
        if remove:
            self._complete_stopped(task_id)

    def _complete_stopped(self, task_id: str) -> None:
        with self._lock:
            task = self._get(task_id)
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
            task = self._get(task_id)
            self._save(task, transition(task, state, self.clock(), message))

    # ---- bookkeeping ---------------------------------------------------------------------------------------

    def _get(self, task_id: str) -> Task:
        task = self.tasks.get(task_id)
        if task is None:
            raise NotFound(f"no task {task_id} on node {self.name}")
        return task

    def _save(self, task: Task, event: Event | None) -> None:
        """Persist the task, then its event; wake long polls. Called with the lock held."""
        self.tasks[task.id] = task
        self.store.put("tasks", task.id, task.to_dict())
        if event is not None:
            self.store.append_event(Event(0, event.task_id, event.state, event.time, event.message, self.name))
        self.version += 1
        self._changed.notify_all()

    # ---- running for real ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the reconcile loop and the event watcher in the background."""
        for target, name in ((self._loop, "cube-reconcile"), (self._watch_events, "cube-events")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _loop(self) -> None:
        while not self._closed.is_set():
            self._kick.clear()
            try:
                self.tick()
            except Unavailable as error:
                log.warning("runtime unavailable: %s", error.message)
            except Exception:
                log.exception("reconcile failed")
            self._kick.wait(self._next_wait())

    def _next_wait(self) -> float:
        """Until the next full reconcile, or sooner when a restart's backoff ends before it."""
        with self._lock:
            due = [at for tid, at in self._due.items() if tid in self.tasks
                   and self.tasks[tid].state is State.SCHEDULED]
        if not due:
            return self.reconcile_interval
        return max(0.0, min(self.reconcile_interval, min(due) - self.clock()))

    def _watch_events(self) -> None:
        while not self._closed.is_set():
            try:
                for event in self.runtime.events(self.key, self._closed):
                    if event.action in ("die", "oom"):
                        with self._lock:
                            self._dead_ids.add(event.container_id)
                    self._kick.set()
            except Exception as error:  # the engine restarted or the stream broke: the loop still reconciles
                log.warning("runtime event stream ended: %s", error)
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


def node_id(store: Store) -> str:
    """A random id kept in the store: stable across restarts, distinct between two nodes with one hostname."""
    value = store.get("meta", "node_id")
    if not value:
        import secrets
        value = {"id": secrets.token_hex(4)}
        store.put("meta", "node_id", value)
    return value["id"]


def _allocated(tasks: list[Task]) -> Resources:
    return Resources(sum(t.spec.cpu for t in tasks), sum(t.spec.memory for t in tasks),
                     sum(t.spec.disk for t in tasks))
