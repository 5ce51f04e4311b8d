"""Cube's records as plain data, and who writes which field (Nomad's split):

- `Assignment`: what a worker holds. The manager gives it (id, spec, job, generation, desired); the worker alone
  writes what it observes (state, container, ports, restarts, exit code, reason, times) and reports it.
- `Task`: what the manager holds. The manager alone writes desired state and placement (node, generation, note,
  reschedules); `observed` is the latest report of the node the task is placed on, copied verbatim.
- The state a user sees is derived from those two by one pure function, `derive`. Its moves follow the
  table below, which is `TRANSITIONS` (a test reads this docstring and compares)::

    pending   -> scheduled, completed, failed
    scheduled -> pending, scheduled, running, completed, failed
    running   -> pending, scheduled, running, completed, failed
    failed    -> pending, scheduled
    completed -> (terminal)

          ┌──────────── rescheduled (node lost, restarts used up) ───────────┐
          ▼                                                                  │
    pending ──placed──► scheduled ──started──► running ──exit 0 / stopped──► completed
       │                  ▲   │                 │  │
       │                  └───┼─ restart ───────┘  └──crashed, restarts used──► failed ──► pending / scheduled
       └── stopped ──► completed                                                       (service: rescheduled)

Also here: events, node records, resources. No I/O and no clock: callers pass `now`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum

from cube.core.errors import InvalidSpec, InvalidTransition
from cube.core.jobs import JOB_TYPES, Job  # noqa: F401
from cube.core.spec import (  # noqa: F401
    DISCONNECT_POLICIES,
    MAX_PATH,
    MAX_WHOLE,
    RESTART_POLICIES,
    HealthCheck,
    Port,
    RestartPolicy,
    TaskSpec,
    format_size,
    kind_of,
    new_id,
    parse_size,
    shown,
    text,
    timestamp,
)


class Fields:
    """Reads the fields of a record read back (the store, a node's report, an assignment from the manager): each
    of its type, or an InvalidSpec naming the record and the field. A corrupt record is that error, never a
    TypeError, an OverflowError or a record that breaks `cube status` later."""

    def __init__(self, what: str, data):
        if not isinstance(data, dict):
            raise InvalidSpec(f"{what} must be a JSON object, not {kind_of(data)}")
        self.what = what
        self.data = data

    def _bad(self, key: str, wanted: str) -> InvalidSpec:
        return InvalidSpec(f"{self.what}: {key} must be {wanted}, not {shown(self.data.get(key))}")

    def required(self, key: str):
        if key not in self.data:
            raise InvalidSpec(f"{self.what} is missing {key!r}")
        return self.data[key]

    def text(self, key: str, default: str = "") -> str:
        value = self.data.get(key)
        return default if value is None or value == "" else text(value, f"{self.what}: {key}", lines=True)

    def whole(self, key: str, default: int = 0, low: int = 0) -> int:
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_WHOLE:
            raise self._bad(key, f"a whole number from {low}")
        return value

    def optional_whole(self, key: str) -> int | None:
        return None if self.data.get(key) is None else self.whole(key, low=-MAX_WHOLE)

    def time(self, key: str, default: float = 0.0) -> float:
        value = self.data.get(key)
        if value is None:
            return default
        try:
            return timestamp(value, key)
        except InvalidSpec:
            raise self._bad(key, "a time in seconds") from None

    def optional_time(self, key: str) -> float | None:
        return None if self.data.get(key) is None else self.time(key)

    def choice(self, key: str, kind, default):
        value = self.data.get(key, default)
        try:
            return kind(value)
        except (ValueError, TypeError):
            raise self._bad(key, " or ".join(repr(k.value) for k in kind)) from None

    def host_ports(self, key: str) -> dict:
        """ "80/tcp" -> host port number."""
        value = self.data.get(key) or {}
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and len(k) <= 16 and isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 65535
            for k, v in value.items()
        ):
            raise self._bad(key, 'an object such as {"80/tcp": 32768}')
        return dict(value)

    def address(self, key: str) -> str:
        """An IPv4 address ("" when absent)."""
        value = self.data.get(key) or ""
        if not isinstance(value, str) or (value and not _is_ipv4(value)):
            raise self._bad(key, "an IPv4 address such as 10.210.0.2")
        return value

    def times(self, key: str) -> list:
        value = self.data.get(key) or []
        if not isinstance(value, list) or len(value) > 10000:
            raise self._bad(key, "a list of times")
        return [Fields(self.what, {key: t}).time(key) for t in value]


class State(str, Enum):
    PENDING = "pending"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class Health(str, Enum):
    """A health command's verdict, as the engine tells it (Docker's words); NONE: no command, or not known yet."""

    NONE = ""
    STARTING = "starting"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


class Desired(str, Enum):
    RUN = "run"
    STOP = "stop"


TRANSITIONS: dict[State, frozenset[State]] = {
    State.PENDING: frozenset({State.SCHEDULED, State.COMPLETED, State.FAILED}),
    # scheduled -> scheduled: placed again before the first start (the node was lost while the task waited).
    State.SCHEDULED: frozenset({State.PENDING, State.SCHEDULED, State.RUNNING, State.COMPLETED, State.FAILED}),
    State.RUNNING: frozenset({State.PENDING, State.SCHEDULED, State.RUNNING, State.COMPLETED, State.FAILED}),
    State.FAILED: frozenset({State.PENDING, State.SCHEDULED}),
    State.COMPLETED: frozenset(),
}
TERMINAL = frozenset({State.COMPLETED})
ACTIVE = frozenset({State.PENDING, State.SCHEDULED, State.RUNNING})


@dataclass
class Assignment:
    """A task as a worker holds it: what the manager gave (id, spec, job, generation, desired) and what the worker
    observes (the rest). The worker persists it before acknowledging, and reports it as `to_dict()`."""

    id: str
    spec: TaskSpec
    job: str = ""
    desired: Desired = Desired.RUN
    generation: int = 0
    state: State = State.SCHEDULED
    node: str = ""
    container_id: str = ""
    host_ports: dict = field(default_factory=dict)  # "80/tcp" -> host port number
    address: str = ""  # the container's address on the node's cluster network ("" when on none)
    restarts: int = 0  # restarts of this assignment, all told (shown to users)
    restart_times: list = field(default_factory=list)  # when the recent ones happened (the policy's window)
    streak: int = 0  # quick restarts in a row (the backoff)
    exit_code: int | None = None
    reason: str = ""  # why it is in its state: last failure, why it waits, ...
    health: str = ""  # its health command's verdict: "" (none), starting, healthy, unhealthy
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float = 0.0

    @property
    def name(self) -> str:
        return self.spec.name or self.id

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "job": self.job,
            "desired": self.desired.value,
            "generation": self.generation,
            "state": self.state.value,
            "node": self.node,
            "image": self.spec.image,
            "container_id": self.container_id,
            "host_ports": dict(self.host_ports),
            "address": self.address,
            "restarts": self.restarts,
            "restart_times": list(self.restart_times),
            "streak": self.streak,
            "exit_code": self.exit_code,
            "reason": self.reason,
            "health": self.health,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "updated_at": self.updated_at,
            "spec": self.spec.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Assignment":
        """An assignment from the manager or read back from the worker's store. Its spec is held to the rules of
        records (`stored`): the manager checked the request, and a task it accepted before an upgrade must run."""
        get = Fields("assignment", data)
        return cls(
            id=_record_id(get),
            spec=TaskSpec.from_dict(get.required("spec"), stored=True),
            job=get.text("job"),
            desired=get.choice("desired", Desired, "run"),
            generation=get.whole("generation"),
            state=get.choice("state", State, "scheduled"),
            node=get.text("node"),
            container_id=get.text("container_id"),
            host_ports=get.host_ports("host_ports"),
            address=get.address("address"),
            restarts=get.whole("restarts"),
            restart_times=get.times("restart_times"),
            streak=get.whole("streak"),
            exit_code=get.optional_whole("exit_code"),
            reason=get.text("reason"),
            health=get.choice("health", Health, "").value,
            created_at=get.time("created_at"),
            started_at=get.optional_time("started_at"),
            finished_at=get.optional_time("finished_at"),
            updated_at=get.time("updated_at"),
        )

    def copy(self) -> "Assignment":
        return dataclasses.replace(self, host_ports=dict(self.host_ports), restart_times=list(self.restart_times))


@dataclass(frozen=True)
class Observed:
    """One node's report of one assignment, as the manager keeps it: never edited, replaced by the next report."""

    node: str
    generation: int
    state: State
    desired: Desired = Desired.RUN  # the worker's copy of the manager's word (stop once told to stop)
    container_id: str = ""
    host_ports: dict = field(default_factory=dict)
    restarts: int = 0
    exit_code: int | None = None
    reason: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float = 0.0
    health: str = ""
    address: str = ""  # on the cluster network of its node (the worker's word; cube.manager.network reads it)

    FIELDS = (
        "state",
        "desired",
        "generation",
        "container_id",
        "host_ports",
        "restarts",
        "exit_code",
        "reason",
        "started_at",
        "finished_at",
        "updated_at",
        "health",
        "address",
    )

    @classmethod
    def from_report(cls, node: str, data: dict) -> "Observed":
        get = Fields(f"report of node {node}", data)
        return cls(
            node,
            get.whole("generation"),
            get.choice("state", State, "scheduled"),
            get.choice("desired", Desired, "run"),
            get.text("container_id"),
            get.host_ports("host_ports"),
            get.whole("restarts"),
            get.optional_whole("exit_code"),
            get.text("reason"),
            get.optional_time("started_at"),
            get.optional_time("finished_at"),
            get.time("updated_at"),
            get.choice("health", Health, "").value,
            get.address("address"),
        )

    def to_dict(self) -> dict:
        return {
            "node": self.node,
            "generation": self.generation,
            "state": self.state.value,
            "desired": self.desired.value,
            "container_id": self.container_id,
            "host_ports": dict(self.host_ports),
            "restarts": self.restarts,
            "exit_code": self.exit_code,
            "reason": self.reason,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "updated_at": self.updated_at,
            "health": self.health,
            "address": self.address,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Observed":
        return cls.from_report(Fields("observation", data).text("node"), data)

    @property
    def ended(self) -> bool:
        return self.state in (State.COMPLETED, State.FAILED)


@dataclass
class Task:
    """A task as the manager holds it. The manager writes every field but `observed`, which is the report of the
    node the task is placed on (for the current generation), copied verbatim."""

    id: str
    spec: TaskSpec
    job: str = ""
    created_at: float = 0.0
    desired: Desired = Desired.RUN
    node: str = ""  # where it is placed; "" = not placed (pending, or stopped before placement)
    generation: int = 0  # bumped at each placement, so a stale copy is known by (id, generation)
    note: str = ""  # the manager's latest word on it: placement problem, why stopped or moved
    note_at: float = 0.0
    reschedules: int = 0  # placements after the first, for the reschedule delay
    not_before: float = 0.0  # no placement before this time (reschedule delay)
    avoid: str = ""  # a node the next placement avoids if it can (restarts used up there)
    updated_at: float = 0.0
    version: int = 1  # the version of its job whose spec it runs (1 for a task of no job)
    observed: Observed | None = None

    @property
    def name(self) -> str:
        return self.spec.name or self.id

    @property
    def current(self) -> Observed | None:
        """The observation that speaks for the current placement, if any."""
        obs = self.observed
        if obs is None or obs.node != self.node or obs.generation != self.generation or not self.node:
            return None
        return obs

    @property
    def state(self) -> State:
        return derive(self)[0]

    @property
    def reason(self) -> str:
        return derive(self)[1]

    def to_dict(self, node_state: str = "ready") -> dict:
        """The API's view: the manager's fields, the observation, and the derived state with the observed fields
        a user reads most (flattened). `node_state`: the state of the node it is placed on."""
        state, reason = derive(self, node_state)
        obs = self.current
        shown = obs or Observed(self.node, self.generation, state)
        return {
            "id": self.id,
            "name": self.name,
            "job": self.job,
            "image": self.spec.image,
            "state": state.value,
            "reason": reason,
            "desired": self.desired.value,
            "node": self.node,
            "generation": self.generation,
            "note": self.note,
            "note_at": self.note_at,
            "reschedules": self.reschedules,
            "not_before": self.not_before,
            "avoid": self.avoid,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "version": self.version,
            "health": shown.health,
            "container_id": shown.container_id,
            "host_ports": dict(shown.host_ports),
            "address": shown.address,
            "restarts": shown.restarts,
            "exit_code": shown.exit_code,
            "started_at": shown.started_at,
            "finished_at": shown.finished_at if obs else (self.note_at if state in TERMINAL else None),
            "observed": self.observed.to_dict() if self.observed else None,
            "spec": self.spec.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Task":
        get = Fields("task record", data)
        observed = get.data.get("observed")
        if observed is None and "observed" not in data and get.data.get("node") and get.data.get("state"):
            observed = dict(data)  # a record from Cube 0.1, which kept the observed fields flat
        return cls(
            id=_record_id(get),
            spec=TaskSpec.from_dict(get.required("spec"), stored=True),
            job=get.text("job"),
            created_at=get.time("created_at"),
            desired=get.choice("desired", Desired, "run"),
            node=get.text("node"),
            generation=get.whole("generation"),
            note=get.text("note"),
            note_at=get.time("note_at"),
            reschedules=get.whole("reschedules"),
            not_before=get.time("not_before"),
            avoid=get.text("avoid"),
            updated_at=get.time("updated_at"),
            version=max(1, get.whole("version")),
            observed=Observed.from_dict(observed) if observed else None,
        )

    def copy(self) -> "Task":
        return dataclasses.replace(self)  # every field is immutable or replaced whole, never edited in place


def _record_id(get: Fields) -> str:
    """A task's id in a record: printable, and short (new ids follow `spec.task_id`; older records may not)."""
    value = get.required("id")
    if not isinstance(value, str) or not value or len(value) > 64:
        raise get._bad("id", "a task id")
    return text(value, f"{get.what}: id")


def derive(task: Task, node_state: str = "ready") -> tuple[State, str]:
    """The state a user sees and why, from the manager's fields, the current observation and the state of the node
    the task is placed on (a report from a node that no longer answers is not news)."""
    obs = task.current
    if task.desired is Desired.STOP:
        if obs is not None and not obs.ended:
            return obs.state, obs.reason if obs.desired is Desired.STOP else task.note  # still stopping
        if obs is not None and obs.state is State.FAILED:
            return State.FAILED, obs.reason
        return State.COMPLETED, task.note or "stopped"
    if not task.node:
        return State.PENDING, task.note
    if obs is None:
        return State.SCHEDULED, task.note
    if node_state == "down" and not obs.ended:
        return State.SCHEDULED, f"node {task.node} does not answer: the task moves if it stays silent"
    return obs.state, obs.reason


def serving(task: Task, node_state: str = "ready") -> bool:
    """Whether a task can take work: it runs, and its health command (if any) has not found it starting or
    unhealthy. (An HTTP health check is the manager's: a failed probe restarts the task, which then is not
    running.) What the rollouts wait for and what service names and the routing mesh send traffic to."""
    obs = task.current
    return (
        node_state != "down"
        and task.desired is Desired.RUN
        and obs is not None
        and obs.state is State.RUNNING
        and obs.health not in (Health.STARTING.value, Health.UNHEALTHY.value)
    )


def _is_ipv4(value: str) -> bool:
    parts = value.split(".")
    return len(parts) == 4 and all(p.isdigit() and len(p) <= 3 and int(p) <= 255 for p in parts)


@dataclass(frozen=True)
class Event:
    id: int
    task_id: str
    state: str
    time: float
    message: str = ""
    node: str = ""

    def to_dict(self) -> dict:
        # Written out: dataclasses.asdict deep-copies field by field, and every task change makes an event.
        return {
            "id": self.id,
            "task_id": self.task_id,
            "state": self.state,
            "time": self.time,
            "message": self.message,
            "node": self.node,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Event":
        if not isinstance(data, dict):
            raise InvalidSpec(f"an event record must be a JSON object, not {kind_of(data)}")
        get = data.get
        return cls(
            get("id", ""), get("task_id", ""), get("state", ""), get("time", ""), get("message", ""), get("node", "")
        )


def transition(record: Assignment, to: State, now: float, message: str = "") -> Event:
    """Move a worker's `record` to observed state `to` (in place) or raise InvalidTransition. Returns the event
    to record (id 0: the store numbers it)."""
    if to not in TRANSITIONS[record.state]:
        raise InvalidTransition(f"task {record.id}: cannot go from {record.state.value} to {to.value}")
    record.state = to
    record.updated_at = now
    if message:
        record.reason = message
    if to is State.RUNNING and record.started_at is None:
        record.started_at = now
    if to in (State.COMPLETED, State.FAILED):
        record.finished_at = now
    return Event(0, record.id, to.value, now, message, record.node)


@dataclass
class Resources:
    cpu: float = 0.0
    memory: int = 0
    disk: int = 0

    def to_dict(self) -> dict:
        return {"cpu": round(self.cpu, 3), "memory": self.memory, "disk": self.disk}

    @classmethod
    def from_dict(cls, data: dict | None) -> "Resources":
        get = Fields("resources", data or {})
        cpu = get.data.get("cpu") or 0
        if isinstance(cpu, bool) or not isinstance(cpu, (int, float)) or not 0 <= cpu <= 1 << 20:
            raise get._bad("cpu", "a number of cores")
        return cls(float(cpu), get.whole("memory"), get.whole("disk"))


# ready: takes placements. unhealthy: answers, but cannot run containers (its engine does not answer): no new
# placements, its tasks move once it stays so past the node timeout. down: no answer within the node timeout.
NODE_STATES = ("ready", "unhealthy", "down")


@dataclass(frozen=True)
class Drain:
    """A drain under way (`cube node drain`, Nomad's DrainStrategy): since when, until when its tasks may take to
    move (None: as long as they need), and whether tasks bound to the node's volumes were let go of (`force`)."""

    since: float
    deadline: float | None = None
    force: bool = False

    def to_dict(self) -> dict:
        return {"since": self.since, "deadline": self.deadline, "force": self.force}

    @classmethod
    def from_dict(cls, data) -> "Drain | None":
        if not data:
            return None
        get = Fields("node record: drain", data)
        deadline = get.data.get("deadline")
        return cls(get.time("since"), None if deadline is None else get.time("deadline"), bool(get.data.get("force")))


@dataclass
class Node:
    """A worker as the manager sees it. `capacity` is what the node offers, `allocated` what placed tasks
    reserve; `used_ports` are host ports taken by placed tasks. `state`, `reason` and `since` are written by the
    manager's membership; `disconnect_timeout` and `stop_timeout` are the worker's, from its reports."""

    name: str
    address: str  # http://host:port
    capacity: Resources = field(default_factory=Resources)
    allocated: Resources = field(default_factory=Resources)
    labels: dict = field(default_factory=dict)  # arch, hostname, user labels
    state: str = "ready"
    reason: str = ""
    since: float = 0.0  # when it entered its state
    last_seen: float = 0.0
    used_ports: set = field(default_factory=set)  # {(port, protocol)}
    tasks: int = 0
    disconnect_timeout: float = 0.0  # the worker stops its on-disconnect=stop tasks after this long alone
    stop_timeout: float = 10.0
    devices: frozenset = frozenset()  # the device paths the worker found on its machine (cube.worker.devices)
    version: str = ""  # the cube version the worker runs, from its reports (`cube upgrade` waits on it)
    # Written by the manager on a user's word: whether new tasks may be placed here, and a drain under way.
    eligible: bool = True
    drain: Drain | None = None

    @property
    def eligibility(self) -> str:
        """eligible, draining (its tasks are moving away), or ineligible (drained, until `cube node eligible`)."""
        if self.drain is not None:
            return "draining"
        return "eligible" if self.eligible else "ineligible"

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "address": self.address,
            "state": self.state,
            "reason": self.reason,
            "since": self.since,
            "eligibility": self.eligibility,
            "drain": self.drain.to_dict() if self.drain else None,
            "arch": self.labels.get("arch", ""),
            "cpus": self.capacity.cpu,
            "memory": self.capacity.memory,
            "disk": self.capacity.disk,
            "capacity": self.capacity.to_dict(),
            "allocated": self.allocated.to_dict(),
            "labels": dict(self.labels),
            "last_seen": self.last_seen,
            "tasks": self.tasks,
            "used_ports": sorted([list(p) for p in self.used_ports]),
            "disconnect_timeout": self.disconnect_timeout,
            "stop_timeout": self.stop_timeout,
            "devices": sorted(self.devices),
            "version": self.version,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Node":
        get = Fields("node record", data)
        name = get.required("name")
        if not isinstance(name, str) or not name:
            raise get._bad("name", "a node name")
        labels = get.data.get("labels") or {}
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            raise get._bad("labels", "an object of string: string")
        ports = get.data.get("used_ports") or ()
        if not isinstance(ports, (list, tuple)) or not all(
            isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(x, (int, str)) for x in p) for p in ports
        ):
            raise get._bad("used_ports", "a list of [port, protocol]")
        return cls(
            name=text(name, "node record: name"),
            address=get.text("address"),
            capacity=Resources.from_dict(get.data.get("capacity")),
            allocated=Resources.from_dict(get.data.get("allocated")),
            labels=dict(labels),
            state=get.text("state", "ready"),
            reason=get.text("reason"),
            since=get.time("since"),
            last_seen=get.time("last_seen"),
            used_ports={tuple(p) for p in ports},
            tasks=get.whole("tasks"),
            disconnect_timeout=get.time("disconnect_timeout"),
            stop_timeout=get.time("stop_timeout", 10.0) or 10.0,
            devices=device_paths(get.data.get("devices"), "node record: devices"),
            version=get.text("version"),
            eligible=get.data.get("eligibility", "eligible") == "eligible",
            drain=Drain.from_dict(get.data.get("drain")),
        )


MAX_NODE_DEVICES = 1024


def device_paths(value, what: str) -> frozenset:
    """The device paths a node has, as its worker reports them (or its record keeps them): text paths under /dev."""
    if value is None:
        return frozenset()
    if not isinstance(value, (list, tuple)) or len(value) > MAX_NODE_DEVICES:
        raise InvalidSpec(f"{what} must be a list of at most {MAX_NODE_DEVICES} device paths")
    for path in value:
        if not isinstance(path, str) or not path.startswith("/dev/"):
            raise InvalidSpec(f"{what} must hold paths under /dev, not {shown(path)}")
        text(path, what, MAX_PATH)
    return frozenset(value)
