"""Stacks: the jobs of one compose file, deployed, updated and removed together, with their files (secrets and
configs), and the order in which their jobs start (depends_on).

A deploy of a stack is checked whole before anything is written: every job valid and of this stack, no name twice,
every dependency a job of the stack, every file a task mounts given. Then, in one store batch, the files are kept
(sealed: the manager's key, as registry passwords), each job is deployed (deployments.py: created, unchanged,
scaled or updated by a rollout) and the stack's jobs that the file no longer has are stopped. A dry run answers the
same plan and writes nothing. A job's tasks wait, pending with the reason, until every job it depends on meets its
condition (started: all its tasks run; healthy: all serve; completed: a batch job that finished with code 0).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable

from cube.core.errors import BadRequest, InvalidSpec, NotFound
from cube.core.jobs import Job
from cube.core.model import Desired, State, Task, serving
from cube.core.spec import MAX_FILE_BYTES, MAX_JOB_NAME, _name
from cube.manager.parts import ManagerParts

MAX_STACK_JOBS = 100
FILES = "files"
STACKS = "stacks"


class ManagerStacks(ManagerParts):
    """Mixin of Manager: stacks, their files and their jobs' dependencies."""

    _deploy: Callable[[Job], str]
    _reconcile_job: Callable[[Job], None]
    job_detail: Callable[[str], dict]

    _sealer = None  # cube.cluster.pki.Sealer (the manager's service gives it); None: kept as given (tests)

    def _seal(self, text: str, context: str) -> str:
        return text if self._sealer is None else self._sealer.seal(text, context)

    def _unseal(self, text: str, context: str) -> str:
        return text if self._sealer is None else self._sealer.unseal(text, context)

    # ---- deploying -------------------------------------------------------------------------------------------

    def deploy_stack(self, name: str, body: object) -> dict:
        """`body`: {"jobs": [job, ...], "files": {"secrets/NAME": base64, ...}, "dry_run": bool}. Answers the plan:
        per job, its action (create, update with the changed fields, scale, unchanged, remove)."""
        _name(name, "stack", False, MAX_JOB_NAME)
        if not isinstance(body, dict):
            raise BadRequest('send {"jobs": [...], "files": {...}}: `cube deploy -f compose.yaml` does')
        jobs = _jobs(name, body.get("jobs"))
        files = _files(body.get("files"), jobs)
        with self._lock:
            plan = self._stack_plan(name, jobs)
            if body.get("dry_run"):
                return {"stack": name, "plan": plan, "dry_run": True}
            with self._saving():
                for source, data in files.items():
                    sealed = self._seal(data, f"{name}/{source}")
                    self.store.put(FILES, f"{name}/{source}", {"stack": name, "source": source, "sealed": sealed})
                record = {"name": name, "jobs": [j.name for j in jobs], "files": sorted(files)}
                self.store.put(STACKS, name, {**record, "updated_at": self.clock()})
                for job in jobs:
                    self._deploy(job)
                for step in plan:
                    step["version"] = self.jobs[step["job"]].version
                for step in plan:
                    if step["action"] == "remove":
                        self._stop_stack_job(self.jobs[step["job"]])
            due = self._flush()
        self._deliver_later(due)
        return {"stack": name, "plan": plan}

    def _stack_plan(self, name: str, jobs: list[Job]) -> list[dict]:
        plan = []
        for job in jobs:
            existing = self.jobs.get(job.name)
            if existing is None or existing.stopped:
                plan.append({"job": job.name, "action": "create", "count": job.count})
            elif existing.stack != job.stack:
                owner = f"stack {existing.stack}" if existing.stack else "no stack (cube run)"
                raise BadRequest(f"job {job.name} exists and belongs to {owner}: stop it first, or rename the service")
            elif not existing.same_deploy(job):
                changes = _changes(existing.definition(), job.definition())
                plan.append({"job": job.name, "action": "update", "changes": changes, "count": job.count})
            elif existing.count != job.count:
                plan.append({"job": job.name, "action": "scale", "from": existing.count, "count": job.count})
            else:
                plan.append({"job": job.name, "action": "unchanged", "count": job.count})
        wanted = {j.name for j in jobs}
        for other in sorted(self.jobs.values(), key=lambda j: j.name):
            if other.stack == name and not other.stopped and other.name not in wanted:
                plan.append({"job": other.name, "action": "remove"})
        return plan

    def _stop_stack_job(self, job: Job) -> None:
        job.stopped = True
        self._save_job(job)
        self._reconcile_job(job)

    # ---- reading and removing --------------------------------------------------------------------------------

    def stacks(self) -> list[dict]:
        with self._lock:
            names = sorted({j.stack for j in self.jobs.values() if j.stack and not j.stopped})
            return [self._stack_summary(n) for n in names]

    def _stack_summary(self, name: str) -> dict:
        jobs = [j for j in self.jobs.values() if j.stack == name and not j.stopped]
        running = 0
        for job in jobs:
            running += sum(1 for i in self._by_job.get(job.name, ()) if self.tasks[i].state is State.RUNNING)
        return {
            "name": name,
            "jobs": len(jobs),
            "desired": sum(j.count for j in jobs),
            "running": running,
            "updated_at": max((j.updated_at for j in jobs), default=0.0),
        }

    def stack(self, name: str) -> dict:
        with self._lock:
            jobs = sorted(j.name for j in self.jobs.values() if j.stack == name and not j.stopped)
            if not jobs:
                raise NotFound(f"no stack named {name!r} (`cube stacks` lists them)")
            return {**self._stack_summary(name), "jobs": [self.job_detail(j) for j in jobs]}

    def remove_stack(self, name: str) -> dict:
        """Stop every job of the stack and forget its files (its volumes stay: `cube down --volumes` removes them
        once nothing runs)."""
        with self._lock:
            known = [j for j in self.jobs.values() if j.stack == name]
            if not known:
                raise NotFound(f"no stack named {name!r} (`cube stacks` lists them)")
            jobs = [j for j in known if not j.stopped]  # none: down already (its volumes may still be there)
            volumes = sorted({v for j in known for v in j.spec.named_volumes})
            with self._saving():
                for job in jobs:
                    self._stop_stack_job(job)
                for record in self.store.values(FILES):
                    if record.get("stack") == name:
                        self.store.delete(FILES, f"{name}/{record['source']}")
                self.store.delete(STACKS, name)
            due = self._flush()
        self._deliver_later(due)
        return {
            "stack": name,
            "stopped": sorted(j.name for j in jobs),
            "jobs": sorted(j.name for j in known),
            "volumes": volumes,
        }

    # ---- files and dependencies --------------------------------------------------------------------------------

    def file_contents(self, task: Task) -> dict[str, str]:
        """The base64 contents of the files `task` mounts, for its assignment (lock held or not: store reads)."""
        job = self.jobs.get(task.job)
        stack = job.stack if job else ""
        out = {}
        for mount in task.spec.files:
            record = self.store.get(FILES, f"{stack}/{mount.source}")
            if record is not None:
                out[mount.source] = self._unseal(record["sealed"], f"{stack}/{mount.source}")
        return out

    def _waiting_for(self, task: Task) -> str:
        """Why `task` may not be placed yet because of its job's dependencies, or "" (lock held)."""
        job = self.jobs.get(task.job)
        if job is None or not job.depends_on:
            return ""
        for dep in job.depends_on:
            other = self.jobs.get(dep.job)
            if other is None or other.stopped:
                if dep.required:
                    return f"waiting for job {dep.job}, which is not deployed"
                continue
            tasks = [self.tasks[i] for i in self._by_job.get(other.name, ())]
            if not self._condition_met(other, tasks, dep.condition):
                if not dep.required and any(t.state is State.FAILED for t in tasks):
                    continue
                return f"waiting for job {dep.job} to be {dep.condition}"
        return ""

    def _condition_met(self, job: Job, tasks: list[Task], condition: str) -> bool:
        if condition == "completed":
            done = [t for t in tasks if t.version == job.version and t.state is State.COMPLETED]
            return len(done) >= job.count and all(t.current is None or t.current.exit_code in (0, None) for t in done)
        live = [t for t in tasks if t.desired is Desired.RUN]
        if len(live) < job.count:
            return False
        if condition == "healthy":
            return all(serving(t, self._state_of_node(t)) and _health_known(t) for t in live)
        return all(t.state is State.RUNNING for t in live)

    def _state_of_node(self, task: Task) -> str:
        node = self.nodes.get(task.node)
        return node.state if node else "down"


def _health_known(task: Task) -> bool:
    """A task with a health command is healthy only once the engine says so (not while it is starting)."""
    obs = task.current
    if task.spec.health is None or not task.spec.health.in_container:
        return True
    return obs is not None and obs.health == "healthy"


def _jobs(stack: str, value: object) -> list[Job]:
    if not isinstance(value, list) or not value or len(value) > MAX_STACK_JOBS:
        raise BadRequest(f"jobs must be a list of 1 to {MAX_STACK_JOBS} jobs")
    jobs = []
    for index, data in enumerate(value):
        try:
            job = Job.from_request(data)
        except InvalidSpec as error:
            name = data.get("name") if isinstance(data, dict) else None
            raise InvalidSpec(
                f"jobs[{index}]{f' ({name})' if isinstance(name, str) else ''}: {error.message}"
            ) from None
        if job.stack != stack:
            raise BadRequest(f"jobs[{index}] ({job.name}) is of stack {job.stack or 'none'}, not {stack}")
        jobs.append(job)
    names = [j.name for j in jobs]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice:
        raise BadRequest(f"job {twice} is in the stack twice")
    for job in jobs:
        for dep in job.depends_on:
            if dep.job not in names and dep.required:
                raise BadRequest(f"job {job.name} depends on {dep.job}, which is not in stack {stack}")
    return jobs


def _files(value: object, jobs: list[Job]) -> dict[str, str]:
    """The stack's files, checked: each base64 and small enough, and every file a task mounts given."""
    value = value or {}
    if not isinstance(value, dict):
        raise BadRequest("files must be an object: secrets/NAME or configs/NAME → base64 content")
    for source, data in value.items():
        if not isinstance(data, str):
            raise BadRequest(f"files.{source} must be base64 text")
        try:
            size = len(base64.b64decode(data, validate=True))
        except (binascii.Error, ValueError):
            raise BadRequest(f"files.{source} is not base64") from None
        if size > MAX_FILE_BYTES:
            raise BadRequest(f"files.{source} is {size:,} bytes: at most {MAX_FILE_BYTES:,} are accepted")
    for job in jobs:
        for mount in job.spec.files:
            if mount.source not in value:
                raise BadRequest(f"job {job.name} mounts {mount.source}, which the deploy does not carry")
    return dict(value)


def _changes(before: dict, after: dict, prefix: str = "") -> list[str]:
    """The fields that differ, by dotted path (task.image, task.env, update.max_parallel)."""
    out = []
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict) and key == "task":
            out += _changes(a, b, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}")
    return out
