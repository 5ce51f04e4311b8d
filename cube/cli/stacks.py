"""`cube deploy`, `cube stacks`, `cube down`, `cube history`, `cube rollback`: compose files as stacks, and the
versions of jobs. A mixin of `Commands` (cli/main.py); the compose file is read here, on the user's machine (its
`.env`, its relative paths and its secrets' files are the user's), and the manager gets job requests and the files'
contents (`POST /stacks/NAME`). Following a rollout (`--wait`) tells a placement failure (no node fits: exit 3)
from a deployment failure (a new task failed or was not healthy in time: exit 1), as `nomad job run` does.
"""

from __future__ import annotations

import base64
import sys
import time

from cube.cli.common import manager_client, show
from cube.core.errors import CubeError, NotFound

PLACEMENT_FAILED = 3  # exit code: a task of the rollout cannot be placed (deployment failures exit 1)
POLL_EVERY = 0.5


class PlacementFailed(CubeError):
    """A task of a rollout fits no node (the CLI exits PLACEMENT_FAILED)."""

    exit_code = PLACEMENT_FAILED


class StackCommands:
    def deploy(
        self,
        file=(),
        name: str | None = None,
        env_file: str | None = None,
        wait: bool = False,
        dry_run: bool = False,
        timeout: float = 300.0,
        manager: str | None = None,
        token: str | None = None,
        json: bool = False,
    ):
        """cube deploy -f compose.yaml [-f override.yaml] [--name STACK] [--env-file F] [--wait] [--dry-run]

        Deploys a compose file as a stack: each service becomes a job named STACK-SERVICE. Deploying the same file
        again changes nothing; a new count only scales; any other change rolls the job's tasks over to the new
        version under its update policy (deploy.update_config). Services the file no longer has are stopped.
        Example: cube deploy -f compose.yaml --wait

        Flags:
          -f, --file FILE        a compose file (repeatable: later files override earlier ones)
          --name STACK           the stack's name (default: the file's `name:`, else its directory's name)
          --env-file F           variables for ${VAR} (default: .env beside the first file)
          --wait                 follow the rollout until every job is healthy (exit 1: a rollout failed;
                                 exit 3: a task cannot be placed)
          --dry-run              print what would be created, updated (and which fields), removed or unchanged
          --timeout S            seconds --wait waits (default 300)"""
        from cube.compose import load_stack

        files = [file] if isinstance(file, str) else list(file or ())
        if not files:
            raise CubeError("give the compose file: `cube deploy -f compose.yaml`")
        stack = load_stack(files, name=name, env_file=env_file)
        for warning in stack.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        client = manager_client(manager, token)
        body = {
            "jobs": stack.jobs,
            "files": {source: base64.b64encode(data).decode() for source, data in stack.files.items()},
            "dry_run": bool(dry_run),
        }
        answer = client.post(f"/stacks/{stack.name}", body)
        if json and not wait:
            show(answer, True)
            return None
        print(plan_text(answer))
        if wait and not dry_run:
            jobs = {step["job"]: step["version"] for step in answer["plan"] if step["action"] != "remove"}
            follow(client, jobs, float(timeout), progress=not json)
            print(f"stack {stack.name}: every job is healthy")
        return None

    def stacks(self, manager: str | None = None, token: str | None = None, json: bool = False):
        """cube stacks [--json]

        Lists the stacks: their jobs, tasks running of those wanted."""
        from cube.cli import output

        stacks = manager_client(manager, token).get("/stacks")
        if json:
            show(stacks, True)
            return None
        if not stacks:
            print("no stacks: deploy one with `cube deploy -f compose.yaml`")
            return None
        rows = [
            [s["name"], str(s["jobs"]), f"{s['running']}/{s['desired']}", output.age(s["updated_at"])] for s in stacks
        ]
        print(output.table(["STACK", "JOBS", "RUNNING", "UPDATED"], rows))
        return None

    def down(
        self,
        stack: str,
        volumes: bool = False,
        timeout: float = 60.0,
        manager: str | None = None,
        token: str | None = None,
        json: bool = False,
    ):
        """cube down STACK [--volumes]

        Stops every job of a stack and forgets its secrets and configs. Its named volumes are kept (their data
        stays on their nodes) unless --volumes, which removes them once the stack's tasks have stopped.
        Example: cube down shop

        Flags:
          --volumes              also remove the stack's named volumes (their data is gone)
          --timeout S            seconds to wait for the tasks to stop before removing volumes (default 60)"""
        client = manager_client(manager, token)
        answer = client.delete(f"/stacks/{stack}")
        removed = []
        if volumes and answer["volumes"]:
            _wait_stopped(client, answer.get("jobs", answer["stopped"]), float(timeout))
            for volume in answer["volumes"]:
                try:
                    client.delete(f"/volumes/{volume}")
                except NotFound:
                    continue  # removed before
                removed.append(volume)
        if json:
            show({**answer, "removed_volumes": removed}, True)
            return None
        stopped = ", ".join(answer["stopped"])
        print(f"stack {stack}: stopped {stopped}" if stopped else f"stack {stack}: down already, nothing to stop")
        if removed:
            print(f"removed volumes: {', '.join(removed)}")
        elif answer["volumes"]:
            print(f"kept volumes: {', '.join(answer['volumes'])} (`cube down {stack} --volumes` removes them)")
        return None

    def history(self, job: str, manager: str | None = None, token: str | None = None, json: bool = False):
        """cube history JOB [--json]

        Lists a job's kept versions (the last 10): when each was deployed, how its rollout ended, and its image.
        Example: cube history shop-web"""
        from cube.cli import output

        versions = manager_client(manager, token).get(f"/jobs/{job}/history")
        if json:
            show(versions, True)
            return None
        rows = [
            [str(v["version"]), v["status"], output.age(v["at"]), v["def"]["task"]["image"], str(v["def"].get("count"))]
            for v in versions
        ]
        print(output.table(["VERSION", "STATUS", "DEPLOYED", "IMAGE", "COUNT"], rows))
        return None

    def rollback(
        self,
        job: str,
        to: int | None = None,
        wait: bool = False,
        timeout: float = 300.0,
        manager: str | None = None,
        token: str | None = None,
        json: bool = False,
    ):
        """cube rollback JOB [--to VERSION] [--wait]

        Deploys an earlier version of a job again (as a new version), with its rollback policy: by default the
        last version whose rollout succeeded.
        Example: cube rollback shop-web --to 3

        Flags:
          --to VERSION           the version to go back to (`cube history JOB` lists them)
          --wait                 follow the rollout until the job is healthy
          --timeout S            seconds --wait waits (default 300)"""
        client = manager_client(manager, token)
        body = {} if to is None else {"version": to}
        answer = client.post(f"/jobs/{job}/rollback", body)
        if json and not wait:
            show(answer, True)
            return None
        print(f"job {job}: rolling back to version {answer['rolled_back_to']} (now version {answer['version']})")
        if wait:
            follow(client, {job: answer["version"]}, float(timeout), progress=not json)
            print(f"job {job}: healthy at version {answer['version']}")
        return None


def plan_text(answer: dict) -> str:
    """`cube deploy`'s plan, one line per job."""
    lines = []
    for step in answer["plan"]:
        action, job = step["action"], step["job"]
        if action == "update":
            detail = f"update: {', '.join(step['changes'])}"
        elif action == "scale":
            detail = f"scale {step['from']} → {step['count']}"
        elif action == "create":
            detail = f"create ({step['count']} task{'s' if step['count'] != 1 else ''})"
        else:
            detail = action
        lines.append(f"  {job:<28} {detail}")
    head = f"stack {answer['stack']}{' (dry run: nothing changed)' if answer.get('dry_run') else ''}:"
    return "\n".join([head, *lines])


def follow(client, jobs: dict[str, int], timeout: float, progress: bool = True) -> None:
    """Until each job's deployment of the given version is successful; CubeError when one fails or is reverted
    (a later version rolling back), PlacementFailed when a task of the new version fits no node."""
    deadline = time.monotonic() + timeout
    said: dict[str, str] = {}
    while True:
        done = True
        for name, version in jobs.items():
            job = client.get(f"/jobs/{name}")
            deployment = job.get("deployment") or {}
            line = _check(job, deployment, version)
            if progress and said.get(name) != line:
                said[name] = line
                print(f"  {name}: {line}", file=sys.stderr, flush=True)
            done = done and deployment.get("status") == "successful"
        if done:
            return
        if time.monotonic() > deadline:
            raise CubeError(f"not healthy within {timeout:g} s: {'; '.join(f'{k}: {v}' for k, v in said.items())}")
        time.sleep(POLL_EVERY)


def _check(job: dict, deployment: dict, version: int) -> str:
    status = deployment.get("status")
    # A later version under the rollback policy is the revert of the one followed: that one failed.
    reverted = deployment.get("version", version) > version and deployment.get("policy") == "rollback"
    if reverted or status == "failed":
        what, which = ("failed and was reverted", version) if reverted else ("failed", deployment["version"])
        raise CubeError(
            f"rollout of job {job['name']} version {which} {what}: {deployment.get('reason')}; "
            f"`cube history {job['name']}` lists its versions"
        )
    for task in job["tasks"]:
        if task["state"] == "pending" and str(task.get("reason", "")).startswith(("no node fits", "no nodes")):
            raise PlacementFailed(
                f"task {task['name']} of job {job['name']} cannot be placed: {task['reason']}. It stays pending; "
                f"`cube stop {job['name']}` cancels it"
            )
    if status == "successful":
        return f"healthy at version {job['version']} ({job['count']} task{'s' if job['count'] != 1 else ''})"
    waiting = next((t["reason"] for t in job["tasks"] if str(t.get("reason", "")).startswith("waiting for")), "")
    if waiting:
        return waiting
    return f"{deployment.get('serving', 0)} of {job['count']} serving at version {job['version']}"


def _wait_stopped(client, jobs: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tasks = [t for name in jobs for t in client.get("/tasks", job=name)]
        if all(t["state"] in ("completed", "failed") for t in tasks):
            return
        time.sleep(POLL_EVERY)
    raise CubeError(f"the stack's tasks did not stop within {timeout:g} s: volumes kept (try `cube down` again)")
