"""What a job is, validated: a named group of identical tasks with a count and a type, the stack it belongs to,
how a change of its spec rolls out (the update policy) and is undone (the rollback policy), and which jobs of its
stack must be started, healthy or completed before its tasks start. This module decides what a job request may
say and what each field means when left out. No I/O, no clock.

The manager keeps, beside what a client sends, `created_at`, `stopped` and `version` (1 at the first deploy, one
more at each deploy that changes the spec): a client never sends those.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from cube.core.errors import InvalidSpec
from cube.core.spec import MAX_JOB_NAME, TaskSpec, _name, _number, _only, shown, timestamp

JOB_TYPES = ("service", "batch")
MAX_COUNT = 10000
UPDATE_ORDERS = ("", "start-first", "stop-first")  # "": start-first for a job of one task, else stop-first
CONDITIONS = ("started", "healthy", "completed")
MAX_DEPENDENCIES = 64
MAX_VERSION = 1 << 53


def _whole(value, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidSpec(f"{what} must be a whole number from {low} to {high}, not {shown(value)}")
    return value


def _one_of(value, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise InvalidSpec(f"{what} must be one of {', '.join(a for a in allowed if a)}, not {shown(value)}")
    return value


def _flag(value, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidSpec(f"{what} must be true or false, not {shown(value)}")
    return value


@dataclass(frozen=True)
class UpdatePolicy:
    """How a changed spec replaces a job's tasks (Nomad's `update` block, Swarm's `update_config`): at most
    `max_parallel` tasks being replaced at a time; a new task counts as healthy once it has run (and passed its
    health check, when it has one) for `min_healthy_time` seconds; one that is not healthy within
    `healthy_deadline` seconds fails the rollout, which `auto_revert` then rolls back to the last version that
    was healthy. `order`: start the new task before stopping the old (no downtime for a job of one) or after."""

    max_parallel: int = 1
    min_healthy_time: float = 10.0  # Nomad's default
    healthy_deadline: float = 300.0  # Nomad's default: 5 minutes
    auto_revert: bool = False
    order: str = ""

    @classmethod
    def parse(cls, value, what: str = "update") -> "UpdatePolicy":
        if value is None:
            return cls()
        if isinstance(value, UpdatePolicy):
            return value
        if not isinstance(value, dict):
            raise InvalidSpec(f"{what} must be an object with max_parallel, min_healthy_time, healthy_deadline, ...")
        _only(value, {"max_parallel", "min_healthy_time", "healthy_deadline", "auto_revert", "order"}, what)
        order = _one_of(value.get("order", ""), UPDATE_ORDERS, f"{what}.order")
        auto_revert = _flag(value.get("auto_revert", False), f"{what}.auto_revert")
        policy = cls(
            _whole(value.get("max_parallel", 1), f"{what}.max_parallel", 1, MAX_COUNT),
            _number(value.get("min_healthy_time", 10.0), f"{what}.min_healthy_time", 0, 86400),
            _number(value.get("healthy_deadline", 300.0), f"{what}.healthy_deadline", 1, 7 * 86400),
            auto_revert,
            order,
        )
        if policy.healthy_deadline <= policy.min_healthy_time:
            raise InvalidSpec(
                f"{what}.healthy_deadline ({policy.healthy_deadline:g} s) must be longer than min_healthy_time "
                f"({policy.min_healthy_time:g} s): no task could ever be healthy in time"
            )
        return policy

    def start_first(self, count: int) -> bool:
        """Whether a replacement starts before the task it replaces stops."""
        return self.order == "start-first" or (self.order == "" and count == 1)

    def to_dict(self) -> dict:
        return {
            "max_parallel": self.max_parallel,
            "min_healthy_time": self.min_healthy_time,
            "healthy_deadline": self.healthy_deadline,
            "auto_revert": self.auto_revert,
            "order": self.order,
        }


@dataclass(frozen=True)
class Dependency:
    """A job of the same stack that must be `started` (running), `healthy` (running and passing its health check)
    or `completed` (a batch job that finished with exit code 0) before this job's tasks start (compose's
    `depends_on` conditions service_started, service_healthy, service_completed_successfully)."""

    job: str
    condition: str = "started"
    required: bool = True  # False: a dependency that failed or is not there does not hold the job back

    @classmethod
    def parse(cls, value, what: str) -> "Dependency":
        if isinstance(value, str):
            value = {"job": value}
        if not isinstance(value, dict):
            raise InvalidSpec(f"{what} must be a job name or an object with job and condition, not {shown(value)}")
        _only(value, {"job", "condition", "required"}, what)
        job = _name(value.get("job"), f"{what}.job", False, MAX_JOB_NAME)
        condition = _one_of(value.get("condition", "started"), CONDITIONS, f"{what}.condition")
        return cls(job, condition, _flag(value.get("required", True), f"{what}.required"))

    def to_dict(self) -> dict:
        return {"job": self.job, "condition": self.condition, "required": self.required}


def _dependencies(value, name: str) -> tuple[Dependency, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_DEPENDENCIES:
        raise InvalidSpec(f"depends_on must be a list of at most {MAX_DEPENDENCIES} jobs, not {shown(value)}")
    deps = tuple(Dependency.parse(item, f"depends_on[{i}]") for i, item in enumerate(value))
    seen: set[str] = set()
    for dep in deps:
        if dep.job == name:
            raise InvalidSpec(f"depends_on: job {name} cannot depend on itself")
        if dep.job in seen:
            raise InvalidSpec(f"depends_on: job {dep.job} is listed twice")
        seen.add(dep.job)
    return deps


@dataclass
class Job:
    name: str
    spec: TaskSpec
    count: int = 1
    type: str = "service"
    created_at: float = 0.0
    stopped: bool = False
    stack: str = ""  # the stack (compose file) it was deployed with; "" for a job of its own
    update: UpdatePolicy = UpdatePolicy()
    rollback: UpdatePolicy | None = None  # None: the update policy
    depends_on: tuple[Dependency, ...] = ()
    version: int = 1
    updated_at: float = 0.0

    KEPT: ClassVar[tuple[str, ...]] = ("created_at", "stopped", "version", "updated_at")

    @property
    def service(self) -> str:
        """The job's name within its stack (compose's service name): `db` for job `shop-db` of stack `shop`."""
        prefix = f"{self.stack}-"
        return self.name[len(prefix) :] if self.stack and self.name.startswith(prefix) else self.name

    @property
    def rollback_policy(self) -> UpdatePolicy:
        return self.rollback or self.update

    @classmethod
    def from_dict(cls, data, stored: bool = False) -> "Job":
        """A job from a request, or with `stored` a record read back (see TaskSpec.from_dict)."""
        if not isinstance(data, dict):
            raise InvalidSpec("a job must be a JSON object with name, task (a task spec), count and type")
        allowed = {"name", "task", "spec", "count", "type", "stack", "update", "rollback", "depends_on", *cls.KEPT}
        _only(data, allowed, "job")
        name = data.get("name")
        if name is None:
            raise InvalidSpec("job name is required: a DNS label such as web")
        _name(name, "job name", stored, MAX_JOB_NAME)
        spec_data = data.get("task", data.get("spec"))
        if spec_data is None:
            raise InvalidSpec("job needs a task spec under 'task'")
        spec = TaskSpec.from_dict(spec_data, stored)
        count = _whole(data.get("count", 1), "count", 0, MAX_COUNT)
        kind = data.get("type", "service")
        if kind not in JOB_TYPES:
            raise InvalidSpec(f"job type must be service or batch, not {shown(kind)}")
        if kind == "batch" and spec.restart.name == "always":
            raise InvalidSpec("a batch job runs to completion: restart 'always' would never let it finish")
        stack = data.get("stack") or ""
        if stack:
            _name(stack, "stack", stored, MAX_JOB_NAME)
            if not name.startswith(f"{stack}-") or name == f"{stack}-":
                raise InvalidSpec(f"job {name} of stack {stack} must be named {stack}-SERVICE")
        rollback = data.get("rollback")
        return cls(
            name,
            spec,
            count,
            kind,
            timestamp(data.get("created_at") or 0, "created_at"),
            bool(data.get("stopped")),
            stack,
            UpdatePolicy.parse(data.get("update")),
            None if rollback is None else UpdatePolicy.parse(rollback, "rollback"),
            _dependencies(data.get("depends_on"), name),
            _whole(data.get("version", 1), "version", 1, MAX_VERSION),
            timestamp(data.get("updated_at") or 0, "updated_at"),
        )

    @classmethod
    def from_request(cls, data) -> "Job":
        """A job as a client sends it: the fields the manager keeps (created_at, stopped, version) are not the
        client's."""
        if isinstance(data, dict):
            kept = sorted(set(cls.KEPT) & set(data))
            if kept:
                raise InvalidSpec(f"{', '.join(kept)}: kept by the manager, not sent (stop a job with `cube stop`)")
        return cls.from_dict(data)

    def same_deploy(self, other: "Job") -> bool:
        """Whether `other` asks for what this job already is, count aside: deploying it changes nothing."""
        return self.definition() == other.definition()

    def definition(self) -> dict:
        """What a deploy says, without the count and what the manager keeps: equal definitions, same version."""
        data = self.to_dict()
        for key in (*self.KEPT, "count"):
            data.pop(key, None)
        return data

    def to_dict(self) -> dict:
        data = {
            "name": self.name,
            "task": self.spec.to_dict(),
            "count": self.count,
            "type": self.type,
            "created_at": self.created_at,
            "stopped": self.stopped,
            "version": self.version,
            "updated_at": self.updated_at,
            "update": self.update.to_dict(),
            "depends_on": [d.to_dict() for d in self.depends_on],
        }
        if self.stack:
            data["stack"] = self.stack
        if self.rollback is not None:
            data["rollback"] = self.rollback.to_dict()
        return data
