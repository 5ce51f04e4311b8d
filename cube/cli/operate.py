"""`cube node drain`, `cube node eligible`, `cube explain`, `cube restart`: operating the cluster from the command
line. A drain is followed until the node is empty (as `nomad node drain` monitors it), one line per task that left,
unless `--detach`; Ctrl-C stops the following, not the drain. Explanations print as a few lines a person reads
(`--json` gives the manager's whole answer).
"""

from __future__ import annotations

import time

from cube.cli.common import manager_client, show
from cube.core.errors import Conflict, CubeError, NotFound
from cube.core.units import parse_duration

POLL_EVERY = 0.5


def drain(client, name: str, deadline, force: bool, detach: bool, json: bool) -> None:
    body: dict = {"force": bool(force)}
    if deadline is not None:
        seconds = parse_duration(deadline)
        if seconds is None:
            raise CubeError(f"--deadline {deadline!r} is no duration: use seconds or a form such as 90s, 5m, 1h30m")
        body["deadline"] = seconds
    try:
        node = client.post(f"/nodes/{name}/drain", body)
    except Conflict as error:
        if "--force" in str(error):
            raise Conflict(f"{error}: `cube node drain {name} --force`") from None
        raise
    if json:
        show(node, True)
        return
    left = _on(client, name)
    until = f", deadline in {deadline}" if deadline is not None else ""
    print(f"node {name} draining: {_count(left)} to move{until}", flush=True)
    if detach:
        print(f"follow it with `cube nodes`; `cube node eligible {name}` ends it")
        return
    _follow(client, name, left)


def _follow(client, name: str, left: dict[str, dict]) -> None:
    try:
        while True:
            time.sleep(POLL_EVERY)
            node = next((n for n in client.get("/nodes") if n["name"] == name), None)
            if node is None:
                raise NotFound(f"node {name} was removed while it drained")
            now = _on(client, name)
            for task_id, task in left.items():
                if task_id not in now:
                    print(f"  {task.get('name') or task_id} left {name}: {_where(client, task)}", flush=True)
            left = now
            if node["eligibility"] != "draining":
                print(f"node {name} drained: nothing runs there; `cube node eligible {name}` takes it back")
                return
    except KeyboardInterrupt:
        print(f"\nstopped following; the drain goes on (`cube nodes` shows it, `cube node eligible {name}` ends it)")


def _on(client, name: str) -> dict[str, dict]:
    """The tasks that still run (or start, or stop) on the node."""
    tasks = client.get("/tasks", node=name)
    return {t["id"]: t for t in tasks if t["state"] in ("scheduled", "running")}


def _where(client, task: dict) -> str:
    """Where the task's successor (same name) runs now, or why it stopped."""
    if task.get("job"):
        for other in client.get("/tasks", job=task["job"], state="running"):
            if other["name"] == task["name"] and other["id"] != task["id"]:
                return f"{other['name']} runs on {other['node']}"
    try:
        now = client.get(f"/tasks/{task['id']}")
    except NotFound:
        return "gone"
    if now.get("node") and now["node"] != task.get("node"):
        return f"now on {now['node']}"
    return now.get("note") or now.get("reason") or now["state"]


def _count(tasks: dict) -> str:
    return f"{len(tasks)} task{'s' * (len(tasks) != 1)}"


def eligible(client, name: str, json: bool) -> None:
    node = client.post(f"/nodes/{name}/eligible", {})
    show(node if json else f"node {name} is eligible: new tasks may be placed there", json)


class OperateCommands:
    def explain(self, ref: str | None = None, manager: str | None = None, token: str | None = None, json: bool = False):
        """cube explain TASK_OR_JOB [--json]

        Why a task is where it is, or why it is still pending: each node with its reason (counted by kind), the
        scores of the nodes that could take it, and what else it waits for (a dependency, a reschedule delay). A
        job name explains each of its tasks.

        Example: cube explain web"""
        if not ref:
            raise CubeError("what to explain? `cube explain TASK_OR_JOB` (`cube status` lists them)")
        client = manager_client(manager, token)
        try:
            answer = client.get(f"/jobs/{ref}/explain")
        except NotFound:
            try:
                answer = client.get(f"/tasks/{ref}/explain")
            except NotFound:
                raise NotFound(f"no job or task {ref!r}: `cube status` lists them") from None
        show(answer if json else explanation(answer), json)

    def restart(self, ref: str | None = None, manager: str | None = None, token: str | None = None):
        """cube restart TASK

        Start a running task's container afresh on its node (not counted against its restart policy)."""
        if not ref:
            raise CubeError("which task? `cube restart TASK` (`cube status` lists them)")
        task = manager_client(manager, token).post(f"/tasks/{ref}/restart", {})
        print(f"task {task.get('name') or task['id']} restarts on {task['node']}")


def explanation(answer: dict) -> str:
    """The answer as lines: the summary, the tasks of a job, then every node's verdict."""
    lines = [answer["summary"]]
    for task in answer.get("tasks") or ():
        where = f" on {task['node']}" if task["node"] else ""
        why = f": {task['why']}" if task["why"] and task["state"] != "running" else ""
        lines.append(f"  {task['name']} {task['state']}{where}{why}")
    placed = answer.get("placed")
    if placed and placed.get("node") and placed.get("node") == answer.get("node"):
        at = time.strftime("%H:%M:%S", time.localtime(placed["time"]))
        lines.append(f"placed at {at} by {placed['strategy']}:")
        for name, score in sorted((placed.get("scores") or {}).items(), key=lambda kv: -kv[1]):
            lines.append(f"  {name:<16} score {score:g}{'  <- chosen' if name == placed['node'] else ''}")
        for name, why in sorted((placed.get("reasons") or {}).items()):
            lines.append(f"  {name:<16} {why}")
    else:
        lines.append("nodes now:")
        for row in answer.get("nodes") or ():
            verdict = (
                f"score {row['score']:g}{'  <- best' if row.get('best') else ''}" if row["feasible"] else row["reason"]
            )
            lines.append(f"  {row['name']:<16} {verdict}")
    return "\n".join(lines)


def nodes_usage_error(action: str) -> CubeError:
    return CubeError(
        f"unknown action {action!r}: use `cube nodes`, `cube node drain NAME [--deadline 5m] [--force]`, "
        f"`cube node eligible NAME` or `cube node rm NAME`"
    )
