"""Deploys, versions and rollouts of jobs: the manager's side of `cube run` of a job name that exists, `cube
deploy`, `cube history` and `cube rollback`.

A deploy of a job is one of four outcomes: created (a new name), unchanged (the same definition and count:
nothing is touched, no container restarts), scaled (only the count differs) or updated (the definition differs:
the version goes up and `rollout.plan` replaces the tasks under the update policy). Each version's definition is
kept (store kind `versions`, the last KEEP_VERSIONS per job) with its outcome, so a rollback deploys an earlier
one again as a new version (as `nomad job revert` does). A rollout that fails is reverted to the last version
that was healthy when the policy says `auto_revert`; otherwise it stops where it is, and says why.

The deployment of each job (store kind `deployments`): version, from which, status (running, successful, failed:
a revert is the next version's deployment, under the rollback policy, its reason saying why), reason, times.
"Healthy since" is this manager's own observation of each task (when it began to serve without a break): a manager
that restarts mid-rollout waits `min_healthy_time` again, never less.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from collections.abc import Callable

from cube.core.errors import BadRequest, Conflict, NotFound
from cube.core.jobs import Job
from cube.core.model import Desired, Task, new_id, serving
from cube.manager import rollout
from cube.manager.parts import ManagerParts

log = logging.getLogger("cube.manager")

KEEP_VERSIONS = 10
CREATED, UNCHANGED, SCALED, UPDATED = "created", "unchanged", "scaled", "updated"


def version_key(name: str, version: int) -> str:
    return f"{name}/{version:012d}"


class ManagerDeployments(ManagerParts):
    """Mixin of Manager: job deploys, versions, rollouts (the manager's lock guards everything here)."""

    _stop: Callable[[Task, str], None]
    _commit: Callable[..., Task]
    _place: Callable[[list[Task]], None]
    _leaving: Callable[[list[Task]], frozenset[str]]
    cidr: ipaddress.IPv4Network | None  # the cluster range (cube.manager.network); None: no cluster network
    subnets: dict[str, str]

    deployments: dict[str, dict]  # job -> its deployment: the store's "deployments", in memory
    _healthy_since: dict[str, float]  # task id -> when it began to serve without a break (this manager's clock)

    def _load_deployments(self) -> None:
        self.deployments = {d["job"]: d for d in self.store.values("deployments")}
        self._healthy_since = {}

    def _restore_deployments(self, names: set[str]) -> None:
        """Memory back to the store's deployments after a refused batch (versions live in the store only)."""
        for name in names:
            data = self.store.get("deployments", name)
            if data is None:
                self.deployments.pop(name, None)
            else:
                self.deployments[name] = data

    # ---- deploying -------------------------------------------------------------------------------------------

    def _deploy(self, job: Job) -> str:
        """Make `job` (a request) the job of its name (lock held, inside a store batch). Returns the outcome."""
        now = self.clock()
        existing = self.jobs.get(job.name)
        if existing is not None and not existing.stopped:
            if existing.same_deploy(job):
                if existing.count == job.count:
                    return UNCHANGED
                existing.count = job.count
                self._save_job(existing)
                self._reconcile_job(existing)
                return SCALED
            self._check_stack(existing, job)
            job.created_at, job.version = existing.created_at, existing.version + 1
            outcome = UPDATED
        else:
            job.created_at = now
            job.version = existing.version + 1 if existing is not None else self._last_version(job.name) + 1
            outcome = CREATED
        job.updated_at = now
        self._save_job(job)
        self.jobs[job.name] = job
        self._keep_version(job, "deployed")
        self._start_deployment(job, existing.version if existing else 0, "update")
        self._reconcile_job(job)
        return outcome

    @staticmethod
    def _check_stack(existing: Job, job: Job) -> None:
        if existing.stack != job.stack:
            owner = f"stack {existing.stack}" if existing.stack else "no stack"
            raise Conflict(f"job {job.name} belongs to {owner}: deploy it from there, or stop it first")

    def _start_deployment(self, job: Job, previous: int, policy: str, reason: str = "") -> None:
        record = {
            "job": job.name,
            "version": job.version,
            "from_version": previous,
            "policy": policy,
            "status": rollout.ROLLING,
            "reason": reason,
            "started_at": self.clock(),
            "updated_at": self.clock(),
        }
        self._save_deployment(record)

    def _save_deployment(self, record: dict) -> None:
        self.store.put("deployments", record["job"], record)
        self._touch("deployments", record["job"])
        self.deployments[record["job"]] = record

    def _keep_version(self, job: Job, status: str) -> None:
        record = {"job": job.name, "version": job.version, "status": status, "at": self.clock(), "def": job.to_dict()}
        self.store.put("versions", version_key(job.name, job.version), record)
        for old in self._versions(job.name)[:-KEEP_VERSIONS]:
            self.store.delete("versions", version_key(job.name, old["version"]))

    def _versions(self, name: str) -> list[dict]:
        found = [v for v in self.store.values("versions") if v.get("job") == name]
        return sorted(found, key=lambda v: v["version"])

    def _last_version(self, name: str) -> int:
        versions = self._versions(name)
        return versions[-1]["version"] if versions else 0

    def _mark_version(self, name: str, version: int, status: str) -> None:
        record = self.store.get("versions", version_key(name, version))
        if record is not None and record["status"] != status:
            self.store.put("versions", version_key(name, version), {**record, "status": status})

    # ---- history and rollback ----------------------------------------------------------------------------------

    def history(self, name: str) -> list[dict]:
        """The kept versions of a job, oldest first: version, status, when, and the definition."""
        with self._lock:
            versions = self._versions(name)
            if not versions and name not in self.jobs:
                raise NotFound(f"no job named {name!r}")
            return [dict(v) for v in versions]

    def rollback(self, name: str, to: int | None = None) -> tuple[Job, int]:
        """Deploy an earlier version of a job again, as a new version, with its rollback policy. `to`: which
        (default: the last version before the current one that was healthy, else the one before it)."""
        with self._lock:
            job = self.jobs.get(name)
            if job is None:
                raise NotFound(f"no job named {name!r}")
            target = self._rollback_target(job, to)
            with self._saving():
                self._revert(job, target, "rollback")
            due = self._flush()
        self._deliver_later(due)
        return self.jobs[name], target["version"]

    def _rollback_target(self, job: Job, to: int | None) -> dict:
        kept = self._versions(job.name)
        versions = [v for v in kept if v["version"] < job.version or v["version"] == to]
        if to is not None:
            found = [v for v in versions if v["version"] == to]
            if not found:
                kept_list = ", ".join(str(v["version"]) for v in kept)
                raise BadRequest(f"job {job.name} has no version {to} (kept: {kept_list})")
            if to == job.version:
                raise BadRequest(f"job {job.name} is at version {to} already")
            return found[0]
        good = [v for v in versions if v["status"] == "successful"]
        if good:
            return good[-1]
        if versions:
            return versions[-1]
        raise BadRequest(f"job {job.name} has no earlier version to roll back to")

    def _revert(self, job: Job, target: dict, why: str) -> None:
        """Deploy `target`'s definition as the next version, with the rollback policy (lock held, in a batch)."""
        earlier = Job.from_dict({**target["def"], "stopped": False}, stored=True)
        reverted = dataclasses.replace(
            earlier,
            count=job.count,
            created_at=job.created_at,
            version=job.version + 1,
            updated_at=self.clock(),
        )
        self._save_job(reverted)
        self.jobs[job.name] = reverted
        self._keep_version(reverted, "deployed")
        self._start_deployment(reverted, job.version, "rollback", f"{why} to version {target['version']}")
        log.info("job %s: %s to version %s (now version %s)", job.name, why, target["version"], reverted.version)
        self._reconcile_job(reverted)

    # ---- reconciling ---------------------------------------------------------------------------------------------

    def _reconcile_job(self, job: Job) -> None:
        """Apply `rollout.plan` to the job (lock held): stop what it says, create and place what it says, and
        follow its deployment's status."""
        tasks = [self.tasks[i] for i in self._by_job.get(job.name, ())]
        record = self.deployments.get(job.name)
        policy = job.rollback_policy if _rolling_back(record) else job.update
        if not policy.order and not self._ports_allow_start_first(job):
            policy = dataclasses.replace(policy, order="stop-first")
        decided = rollout.plan(job, tasks, self.clock(), self._healthy_since, policy, self._leaving(tasks))
        for task_id, why in decided.stop:
            self._stop(self.tasks[task_id], why)
        new = []
        for index in decided.create:
            spec = dataclasses.replace(job.spec, name=f"{job.name}-{index}")
            task = Task(id=new_id(), spec=spec, job=job.name, created_at=self.clock(), version=job.version)
            self._commit(task, message=f"created by job {job.name} version {job.version}")
            new.append(task)
        self._place(new)
        if record is not None and record["version"] == job.version:
            self._follow(job, record, decided)

    def _ports_allow_start_first(self, job: Job) -> bool:
        """Whether a replacement can run beside the task it replaces: nothing binds a node's port directly (host
        networking, a host-mode port, or an ingress port where no cluster network carries the mesh), so the two
        copies never compete for one (`cube dev`'s workers share an engine: its ports are one machine's)."""
        spec = job.spec
        meshed = self.cidr is not None and bool(self.subnets)
        return not spec.fixed_host_ports and (meshed or not spec.ingress_ports)

    def _follow(self, job: Job, record: dict, decided: rollout.RolloutPlan) -> None:
        if record["status"] != rollout.ROLLING or decided.status in ("", rollout.ROLLING):
            return
        # A revert's reason (why it was started) stays once it succeeds; a failure says its own.
        reason = decided.reason or record["reason"]
        record = {**record, "status": decided.status, "reason": reason, "updated_at": self.clock()}
        self._save_deployment(record)
        self._mark_version(job.name, job.version, decided.status)
        if decided.status == rollout.FAILED:
            log.warning("job %s: rollout of version %s failed: %s", job.name, job.version, decided.reason)
            # A rollback that fails stays where it is: reverting it would undo the user's own way back.
            if job.update.auto_revert and not _rolling_back(record):
                good = [v for v in self._versions(job.name) if v["status"] == "successful"]
                if good:
                    self._revert(job, good[-1], f"version {job.version} failed ({decided.reason}): reverted")

    def _note_health(self, task: Task) -> None:
        """Follow when each task began to serve without a break (lock held): what min_healthy_time counts from."""
        node = self.nodes.get(task.node)
        now_serving = serving(task, node.state if node else "down")
        if now_serving == (task.id in self._healthy_since):
            return
        if now_serving:
            self._healthy_since[task.id] = self.clock()
        else:
            self._healthy_since.pop(task.id, None)

    def _rolling_jobs(self) -> list[Job]:
        """Jobs whose deployment is still running, or which wait for their tasks to become healthy."""
        return [
            self.jobs[name]
            for name, record in self.deployments.items()
            if record["status"] == rollout.ROLLING and name in self.jobs
        ]

    def deployment(self, name: str) -> dict | None:
        with self._lock:
            record = self.deployments.get(name)
            if record is None:
                return None
            job = self.jobs.get(name)
            tasks = [self.tasks[i] for i in self._by_job.get(name, ())]
            live = [t for t in tasks if t.desired is Desired.RUN]
            current = [t for t in live if job is not None and t.version == job.version]
            return {
                **record,
                "tasks": len(live),
                "at_version": len(current),
                "serving": sum(1 for t in current if t.id in self._healthy_since),
            }


def _rolling_back(record: dict | None) -> bool:
    """Whether a deployment runs under the job's rollback policy (a rollback, or a revert) rather than its update."""
    return record is not None and record.get("policy") == "rollback"
