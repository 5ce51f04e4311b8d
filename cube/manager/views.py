"""What the manager shows: copies of its records, taken under its lock, for the API, the CLI, membership and the
health checker — never its dicts or its lock. A mixin of `Manager`, which owns the state these read.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from cube.core.errors import BadRequest, NotFound
from cube.core.model import Desired, Event, Job, Node, Task
from cube.store import Store

EVENT_SCAN = 50_000  # events one filtered read looks at, at most (the answer says where to go on)


class ManagerViews:
    # Owned and written by Manager (see manager.py).
    _lock: threading.RLock
    deployment: Callable[[str], dict | None]
    _changed: threading.Condition
    tasks: dict[str, Task]
    jobs: dict[str, Job]
    nodes: dict[str, Node]
    placements: dict[str, dict]
    store: Store
    _by_node: dict[str, set[str]]
    _by_job: dict[str, set[str]]
    _current: set[str]  # the tasks not finished (manager.finished)
    _usage: dict[str, dict]  # node -> what its machine uses now

    def view(self, task: Task) -> dict:
        """A task as the API shows it (lock held): derived with the state of its node."""
        node = self.nodes.get(task.node)
        return task.to_dict(node.state if node else "ready")

    def task_detail(self, task_id: str) -> dict:
        with self._lock:
            task = self._task(task_id)
            data = self.view(task)
            data["placement"] = self.placements.get(task_id)
        data["events"] = [e.to_dict() for e in self.store.events(task_id=task_id)]
        return data

    def list_tasks(self, job: str | None = None, state: str | None = None) -> list[Task]:
        with self._lock:
            pool = self.tasks.values() if job is None else [self.tasks[i] for i in self._by_job.get(job, ())]
            tasks = [t.copy() for t in pool if state is None or t.state.value == state]
        return sorted(tasks, key=lambda t: (t.created_at, t.name))

    def task_views(self, job: str | None = None, state: str | None = None) -> list[dict]:
        """The API's task list: `view` of each, oldest first, without the node's raw report (its fields that users
        read are flattened in already; the whole report is in the task's own view): 27 % less to send."""
        return self.task_page(job=job, state=state)[0]

    def task_page(
        self,
        job: str | None = None,
        state: str | None = None,
        node: str | None = None,
        limit: int | None = None,
        after: tuple | None = None,
        finished: bool | None = None,
    ) -> tuple[list[dict], tuple | None]:
        """A page of the task list, oldest first, filtered by job, state, node and `finished` (False: only tasks
        not over, True: only those over; see manager.finished): at most `limit` views after the key `after` (the
        last one of the page before), and the key of this page's last view when more follow."""
        with self._lock:
            pool = self._task_pool(job, node, finished)
            chosen = sorted(
                (
                    t
                    for t in pool
                    if (job is None or t.job == job)
                    and (node is None or t.node == node)
                    and (after is None or _key(t) > after)
                    and (finished is None or (t.id not in self._current) is finished)
                ),
                key=_key,
            )
            views = []
            for task in chosen:
                view = self.view(task)
                if state is None or view["state"] == state:
                    del view["observed"]
                    views.append(view)
                    if limit is not None and len(views) > limit:
                        break
        if limit is not None and len(views) > limit:
            views = views[:limit]
            last = views[-1]
            return views, (last["created_at"], last["name"], last["id"])
        return views, None

    def _task_pool(self, job: str | None, node: str | None, finished: bool | None) -> list[Task]:
        """The smallest index that holds every task the filters may keep (lock held)."""
        pools = []
        if job is not None:
            pools.append(self._by_job.get(job, ()))
        if node is not None:
            pools.append(self._by_node.get(node, ()))
        if finished is False:
            pools.append(self._current)
        if not pools:
            return list(self.tasks.values())
        return [self.tasks[i] for i in min(pools, key=len)]

    def job_detail(self, name: str) -> dict:
        with self._lock:
            job = self._job(name)
            data = job.to_dict()
            views = self.task_page(job=name, finished=False)[0]
            data["tasks"] = views
            data["running"] = sum(1 for v in views if v["state"] == "running")
            data["deployment"] = self.deployment(name)
            return data

    def job_names(self) -> list[str]:
        with self._lock:
            return sorted(self.jobs)

    def list_nodes(self) -> list[dict]:
        with self._lock:
            return [self._node_dict(n) for n in sorted(self.nodes.values(), key=lambda n: n.name)]

    def _node_dict(self, node: Node) -> dict:
        """A node as the API shows it: its record, and what its machine uses now (lock held)."""
        return {**node.to_dict(), "used": self._usage.get(node.name)}

    def node_view(self, name: str) -> dict:
        """The API's view of one node."""
        with self._lock:
            return self._node_dict(self._node_named(name))

    def node(self, name: str) -> Node | None:
        """A copy of the node record, or None."""
        with self._lock:
            node = self.nodes.get(name)
            return Node.from_dict(node.to_dict()) if node else None

    def node_names(self) -> list[str]:
        with self._lock:
            return list(self.nodes)

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

    def _node_named(self, name: str) -> Node:
        node = self.nodes.get(name)
        if node is None:
            raise NotFound(f"no node named {name!r}: `cube nodes` lists them")
        return node

    def _job(self, name: str) -> Job:
        job = self.jobs.get(name)
        if job is None:
            raise NotFound(f"no job {name!r}: `cube status` lists jobs")
        return job

    def events(self, since: int = 0, limit: int = 1000, task_id: str | None = None) -> list[Event]:
        return self.store.events(since=since, limit=limit, task_id=task_id)

    def events_of(self, since: int, limit: int, job: str | None, node: str | None) -> tuple[list[Event], int]:
        """Events after `since` of a job's tasks and/or on a node: at most `limit`, from a scan of at most
        EVENT_SCAN events of the log. Returns them and the id the scan reached (the `since` of the next call)."""
        with self._lock:
            ids = set(self._by_job.get(job, ())) if job is not None else None
        found: list[Event] = []
        last = self.store.last_event_id()
        cursor = since
        while len(found) < limit and cursor < last and cursor - since < EVENT_SCAN:
            batch = self.store.events(since=cursor, limit=1000)
            if not batch:
                break
            for event in batch:
                cursor = event.id
                if (ids is None or event.task_id in ids) and (node is None or event.node == node):
                    found.append(event)
                    if len(found) >= limit:
                        break
        return found, cursor

    def last_event_id(self) -> int:
        return self.store.last_event_id()

    def wait_changed(self, timeout: float) -> None:
        with self._changed:
            if not getattr(self, "_stopping", False):
                self._changed.wait(timeout)

    def stop_waiting(self) -> None:
        """Shutting down: long polls (`GET /events?wait=`) answer now, and later ones do not wait."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()


def _key(task: Task) -> tuple:
    """The task list's order: oldest first, then by name and id (unique: a page boundary never splits a tie)."""
    return (task.created_at, task.name, task.id)
