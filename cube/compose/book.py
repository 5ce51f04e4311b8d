"""The task files of *Build an Orchestrator in Go* (`cube run -f task1.json`): a TaskEvent (`{"ID", "State",
"Timestamp", "Task": {...}}`) or a bare Task, turned into the task spec dict `POST /tasks` takes, so that a reader
runs the book's examples unchanged. Keys are matched without regard to case, as Go's encoding/json does.

What maps: Image; Name (made a DNS label: `test-chapter-9.1` → `test-chapter-9-1`); ExposedPorts and PortBindings
(`"7777/tcp": "7777"`: host port 7777 → container port 7777; an exposed port without a binding gets a free host
port); HealthCheck (the book's GET of a path on the task's port: Cube's HTTP health check); RestartPolicy; Cpu
(cores), Memory and Disk (bytes). The Task's ID becomes the task's `id` when it is a UUID (its 32 hex digits: Cube's
task ids are 1-32 letters and digits); any other ID that Cube's rule accepts is kept, and one it refuses is left
out (Cube makes one) with a note. What the book's worker records about a running task (ContainerID, StartTime,
FinishTime, HostPorts, RestartCount, State) is not part of what to run and is ignored. An event whose State is
Completed (3) asks to stop a task: refused, with the command that does it."""

from __future__ import annotations

import re
import uuid

from cube.core import spec
from cube.core.errors import InvalidSpec

# The book's task states (task/state.go): Pending, Scheduled, Running, Completed, Failed.
COMPLETED = 3
RESTART_POLICIES = {"": None, "no": "no", "always": "always", "unless-stopped": "always", "on-failure": "on-failure"}


def is_book_file(data) -> bool:
    """Whether JSON `data` is one of the book's task files (a TaskEvent, or a Task with an Image)."""
    if not isinstance(data, dict):
        return False
    keys = {str(key).lower() for key in data}
    return "task" in keys and isinstance(_get(data, "Task"), dict) or "image" in keys and "exposedports" in keys


def task_from_book(data, notes: list[str] | None = None) -> dict:
    """The task spec dict (with `id`) of a book's TaskEvent or Task; `notes` receives one line per value changed
    or left out. Raises InvalidSpec naming the book's field."""
    notes = [] if notes is None else notes
    if not isinstance(data, dict):
        raise InvalidSpec("a task file must be a JSON object: the book's TaskEvent or Task")
    task = _get(data, "Task")
    if task is not None:
        if not isinstance(task, dict):
            raise InvalidSpec("Task must be an object with Image, Name, ExposedPorts, ...")
        if _get(data, "State") == COMPLETED:
            raise InvalidSpec("this task event asks to stop a task (State 3, Completed): stop it with cube stop TASK")
    else:
        task = data
    image = _get(task, "Image")
    if not image:
        raise InvalidSpec("Task.Image is required, e.g. timboring/echo-server:latest")
    out: dict = {"image": image}
    _identity(task, out, notes)
    ports = _ports(task)
    if ports:
        out["ports"] = ports
    health = _get(task, "HealthCheck")
    if health:
        if not ports:
            notes.append(f"HealthCheck {health}: left out, the task exposes no port to check it on")
        else:
            out["health"] = {"path": health if str(health).startswith("/") else f"/{health}"}
    restart = _get(task, "RestartPolicy") or ""
    if restart not in RESTART_POLICIES:
        raise InvalidSpec(f"Task.RestartPolicy must be one of always, unless-stopped, on-failure, no, not {restart!r}")
    if RESTART_POLICIES[restart]:
        out["restart"] = RESTART_POLICIES[restart]
    for key, to in (("Cpu", "cpu"), ("Memory", "memory"), ("Disk", "disk")):
        value = _get(task, key)
        if value:
            out[to] = value
    return out


def _identity(task: dict, out: dict, notes: list[str]) -> None:
    name = _get(task, "Name")
    if name:
        label = re.sub(r"[^a-z0-9-]+", "-", str(name).lower()).strip("-")[: spec.MAX_NAME].strip("-")
        if label != name:
            notes.append(f"Name {name}: the task is named {label} (a DNS label)")
        if label:
            out["name"] = label
    given = _get(task, "ID")
    if not given:
        return
    try:
        out["id"] = uuid.UUID(str(given)).hex
        return
    except ValueError:
        pass
    try:
        out["id"] = spec.task_id(given)
    except InvalidSpec:
        notes.append(f"ID {given}: left out (a Cube task id is 1-32 letters and digits); Cube gives the task one")


def _ports(task: dict) -> list[dict]:
    """ExposedPorts (`{"7777/tcp": {}}`) and PortBindings (`{"7777/tcp": "7777"}`) → Cube's ports."""
    exposed = _get(task, "ExposedPorts") or {}
    bindings = _get(task, "PortBindings") or {}
    if not isinstance(exposed, dict) or not isinstance(bindings, dict):
        raise InvalidSpec('Task.ExposedPorts and Task.PortBindings must be objects such as {"7777/tcp": {}}')
    out = []
    for key in dict.fromkeys([*exposed, *bindings]):
        container, _, protocol = str(key).partition("/")
        host = bindings.get(key)
        try:
            port = spec.Port.parse({"container": container, "host": host or None, "protocol": protocol or "tcp"})
        except InvalidSpec as error:
            raise InvalidSpec(f"Task.PortBindings {key}: {error.message}") from None
        out.append(port.to_dict())
    return out


def _get(data: dict, key: str):
    """`data[key]`, the key matched without regard to case (Go's encoding/json)."""
    if key in data:
        return data[key]
    lower = key.lower()
    return next((value for name, value in data.items() if str(name).lower() == lower), None)
