"""`cube run`: turning flags (or a spec file) into a task or job request, submitting it, and waiting until the work
runs — or saying exactly why it cannot (no node fits, image cannot be pulled, container exits). Waiting follows the
manager's event stream (long poll), so the command answers as soon as the last task runs and has run for STABLE_FOR
seconds. The task id is chosen here, so a retried submission is the same task, never a second one. The spec is
validated by the manager only: its 400 answer names the field, and the CLI prints it as it is.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid

from cube.core.errors import CubeError

# A container that exits at once (a typo in the command, a missing file) does so within a second on Docker, and its
# node restarts it at once the first time: a task seen running once is watched this long before `cube run` says so.
STABLE_FOR = 2.0


def build_request(flags: dict) -> tuple[str, dict]:
    """("task", body) or ("job", body) from the `run` command's flags."""
    if flags.get("file"):
        return _from_file(flags["file"])
    if not flags.get("image"):
        raise CubeError("--image is required (e.g. `cube run --image nginx`), or give a spec file with -f")
    spec = {
        "image": str(flags["image"]),
        "command": _command(flags.get("cmd")),
        "env": _as_list(flags.get("env")),
        "ports": [str(p) for p in _as_list(flags.get("port"))],
        "cpu": flags.get("cpu") or 0,
        "memory": flags.get("memory") or 0,
        "disk": flags.get("disk") or 0,
        "restart": {
            "name": str(flags.get("restart") or "on-failure"),
            "max_restarts": flags.get("max_restarts", 3),
            "window": flags.get("restart_window", 600.0),
        },
        "constraints": [str(c) for c in _as_list(flags.get("constraint"))],
        "labels": dict(str(item).split("=", 1) for item in _as_list(flags.get("label")) if "=" in str(item)),
    }
    if flags.get("volume"):
        spec["volumes"] = [str(v) for v in _as_list(flags.get("volume"))]
    if flags.get("tmpfs"):
        spec["tmpfs"] = [str(v) for v in _as_list(flags.get("tmpfs"))]
    if flags.get("allow_host_root"):
        spec["allow_host_root"] = True
    if flags.get("on_disconnect"):
        spec["on_disconnect"] = str(flags["on_disconnect"])
    if flags.get("health"):
        spec["health"] = {"path": str(flags["health"]), "interval": flags.get("health_interval", 10.0)}
    spec.update(_options(flags))
    count = flags.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise CubeError(f"--count must be a whole number of at least 1, not {count!r}")
    name = str(flags["name"]) if flags.get("name") not in (None, "") else ""
    if count > 1 or flags.get("batch"):
        name = name or f"{_base(str(flags['image']))}-{uuid.uuid4().hex[:4]}"
        body = {"name": name, "count": count, "type": "batch" if flags.get("batch") else "service", "task": spec}
        return "job", body
    if name:
        spec["name"] = name
    return "task", {"id": uuid.uuid4().hex[:12], **spec}


def _options(flags: dict) -> dict:
    """The hardware, privilege, process and network flags that were given, as spec fields (the manager checks them)."""
    spec: dict = {}
    for flag, field in (("device", "devices"), ("cap_add", "cap_add"), ("cap_drop", "cap_drop")):
        if _as_list(flags.get(flag)):
            spec[field] = [str(item) for item in _as_list(flags.get(flag))]
    if _as_list(flags.get("sysctl")):
        spec["sysctls"] = [str(item) for item in _as_list(flags.get("sysctl"))]
    for flag in ("privileged", "init", "read_only"):
        if flags.get(flag):
            spec[flag] = True
    for flag in ("network", "hostname", "user", "workdir", "stop_signal", "shm_size"):
        if flags.get(flag) not in (None, ""):
            spec[flag] = str(flags[flag])
    if flags.get("entrypoint") not in (None, ""):
        spec["entrypoint"] = _command(flags["entrypoint"])
    if flags.get("stop_timeout") is not None:
        spec["stop_timeout"] = flags["stop_timeout"]
    return spec


def _from_file(path: str) -> tuple[str, dict]:
    try:
        with open(path, encoding="utf-8") as handle:
            body = json.load(handle)
    except OSError as error:
        raise CubeError(f"cannot read {path}: {error.strerror}") from None
    except ValueError as error:
        raise CubeError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise CubeError(f"{path} must hold a JSON object: a task spec, or a job with name, count and task")
    from cube.compose.book import is_book_file, task_from_book

    if is_book_file(body):  # a task file of the book (Build an Orchestrator in Go), run as it is
        notes: list[str] = []
        spec = task_from_book(body, notes)
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        return "task", {"id": uuid.uuid4().hex[:12], **spec}
    if "task" in body or "count" in body:
        return "job", body
    return "task", {"id": uuid.uuid4().hex[:12], **body}


def _command(cmd) -> list[str]:
    if cmd in (None, ""):
        return []
    if isinstance(cmd, (list, tuple)):
        return [str(c) for c in cmd]
    import shlex

    return shlex.split(str(cmd))


def _as_list(value) -> list:
    if value in (None, "", ()):
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _base(image: str) -> str:
    name = image.rsplit("/", 1)[-1].split(":", 1)[0].split("@", 1)[0]
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)[:40] or "job"


def submit_and_wait(client, kind: str, body: dict, detach: bool, timeout: float, as_json: bool):
    """Submit; unless detached, wait until every task runs (batch: completes). Returns what to print."""
    progress = Progress(enabled=not as_json and sys.stderr.isatty())
    cursor = _event_cursor(client)
    if kind == "job":
        answer = client.post("/jobs", body)
        if answer.get("outcome") == "updated" and not detach:  # a new version of a job: follow its rollout
            from cube.cli.stacks import follow

            follow(client, {answer["name"]: answer["version"]}, timeout, progress=progress.enabled)
            progress.done()
            job = client.get(f"/jobs/{answer['name']}")
            return job["tasks"] if as_json else f"job {job['name']}: updated to version {job['version']}, healthy"
        submitted = answer["tasks"]
        batch = answer.get("type") == "batch"
    else:
        answer = client.post("/tasks", body)
        submitted = [answer]
        batch = False
    ids = [t["id"] for t in submitted]
    if not detach:
        restarts = {t["id"]: t.get("restarts", 0) for t in submitted}  # a resubmitted job's tasks may have some
        tasks = _wait(client, restarts, batch, timeout, cursor, progress)
    else:
        tasks = [client.get(f"/tasks/{i}") for i in ids]
    progress.done()
    if as_json:
        return tasks if kind == "job" else tasks[0]
    return _summary(kind, answer, tasks, detach)


def _event_cursor(client) -> int:
    newest = client.get("/events", tail=1)
    return newest[-1]["id"] if newest else 0


def _wait(client, restarts: dict[str, int], batch: bool, timeout: float, cursor: int, progress) -> list[dict]:
    """Until every task runs and has kept running for STABLE_FOR seconds (batch: has completed). `restarts`: each
    task's restarts when submitted; one more means its container exited."""
    goal = {"completed"} if batch else {"running"}
    deadline = time.monotonic() + timeout
    stable_at = None  # when the tasks, all running, will have run long enough
    while True:
        tasks = [client.get(f"/tasks/{i}") for i in restarts]
        _fail_if_stuck(tasks, batch)
        if not batch:
            _fail_if_exited(tasks, restarts)
        if all(t["state"] in goal for t in tasks):
            if batch:
                return tasks
            stable_at = stable_at or time.monotonic() + STABLE_FOR
            if time.monotonic() >= min(stable_at, deadline):
                return tasks
        else:
            stable_at = None
        left = min(stable_at or deadline, deadline) - time.monotonic()
        if time.monotonic() >= deadline:
            waiting = [t for t in tasks if t["state"] not in goal]
            raise CubeError(
                f"{len(waiting)} task(s) not {'/'.join(goal)} after {timeout:g} s (e.g. {waiting[0]['id']} "
                f"is {waiting[0]['state']}: {waiting[0]['reason'] or 'no reason given'}); "
                f"`cube status {waiting[0]['id']}` shows its events"
            )
        events = client.get("/events", since=cursor, wait=max(0.05, min(left, 5.0)), limit=1000)
        for event in events:
            cursor = max(cursor, event["id"])
            if event["task_id"] in restarts:
                progress.show(event)


def _fail_if_stuck(tasks: list[dict], batch: bool) -> None:
    for t in tasks:
        if t["state"] == "failed":
            raise CubeError(
                f"task {t['id']} ({t['name']}) failed: {t['reason']}; `cube status {t['id']}` shows its events"
            )
        if t["state"] == "completed" and not batch:
            raise CubeError(
                f"task {t['id']} ({t['name']}) ended: {t['reason'] or 'completed'}; use --batch for "
                f"work that runs to completion, `cube logs {t['id']}` for its output"
            )
        if t["state"] == "pending" and t.get("reason", "").startswith("failed on "):
            # A service whose node gave up on it: the cluster tries again elsewhere, the user hears why now.
            raise CubeError(
                f"task {t['id']} ({t['name']}) {t['reason']}; `cube status {t['id']}` shows its events, "
                f"`cube stop {t['job'] or t['id']}` gives up"
            )
        if t["state"] == "pending" and t.get("reason", "").startswith(("no node fits", "no nodes")):
            raise CubeError(
                f"task {t['id']} cannot be placed: {t['reason']}. It stays pending and starts when a node "
                f"fits (`cube stop {t['job'] or t['id']}` cancels it)"
            )


def _fail_if_exited(tasks: list[dict], restarts: dict[str, int]) -> None:
    """A service whose container exited since it was submitted: its node may already have restarted it (the first
    restart is immediate), so the count of restarts tells, and the event that ended its run says how."""
    for t in tasks:
        if t.get("restarts", 0) > restarts[t["id"]]:
            raise CubeError(
                f"task {t['id']} ({t['name']}) {_exit_message(t)}; `cube logs {t['id']}` shows its output, "
                f"`cube stop {t['job'] or t['id']}` gives up"
            )


def _exit_message(task: dict) -> str:
    """The message of the newest event that ended a run (`container exited with code 3; restarting (1 of 3)`)."""
    ended = None
    previous = ""
    for event in task.get("events") or ():
        if previous == "running" and event["state"] != "running":
            ended = event.get("message")
        previous = event["state"]
    return f"stopped running: {ended}" if ended else f"was restarted {task['restarts']} time(s)"


def _summary(kind: str, answer: dict, tasks: list[dict], detach: bool) -> str:
    from cube.cli.output import ports

    verb = "submitted" if detach else "running"
    if kind == "job":
        nodes = sorted({t["node"] for t in tasks if t.get("node")})
        where = f" on {', '.join(nodes)}" if nodes and not detach else ""
        return f"job {answer['name']}: {len(tasks)} task(s) {verb}{where}"
    t = tasks[0]
    where = f" on {t['node']}" if t.get("node") else ""
    published = ports(t.get("host_ports") or {})
    return f"{t['id']} {verb}{where}" + (f", ports {published}" if published != "-" else "")


class Progress:
    """One updating line on stderr while waiting (only on a terminal)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and os.environ.get("TERM") != "dumb"
        self._shown = False

    def show(self, event: dict) -> None:
        if not self.enabled:
            return
        words = {"pending": "placing", "scheduled": "starting", "running": "running"}
        text = f"{event['task_id']}: {words.get(event['state'], event['state'])} — {event.get('message', '')}"
        sys.stderr.write("\r\033[K" + text[:150])
        sys.stderr.flush()
        self._shown = True

    def done(self) -> None:
        if self._shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def stop_and_wait(client, ref: str, detach: bool, timeout: float) -> str:
    """`cube stop`: a job (all its tasks) or a task; waits until the containers are stopped unless detached."""
    from cube.core.errors import NotFound

    try:
        job = client.get(f"/jobs/{ref}")
    except NotFound:
        job = None
    if job is not None:
        client.delete(f"/jobs/{ref}")
        ids, what = [t["id"] for t in job["tasks"]], f"job {ref}"
    else:
        task = client.get(f"/tasks/{ref}")
        client.delete(f"/tasks/{task['id']}")
        ids, what = [task["id"]], f"task {task['id']} ({task['name']})"
    if detach:
        return f"stopping {what}"
    deadline = time.monotonic() + timeout
    while True:
        tasks = [client.get(f"/tasks/{i}") for i in ids]
        if all(t["state"] in ("completed", "failed") for t in tasks):
            return f"stopped {what}"
        if time.monotonic() > deadline:
            return f"stopping {what}: still stopping after {timeout:g} s (`cube status` follows it)"
        time.sleep(0.1)
