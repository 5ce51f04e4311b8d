"""The `cube` command line. It decides what users type and see: commands and flags, human output by default and
`--json` for scripts, exit code 0 on success and a one-line error with a next step otherwise (2 for a command line
that does not fit the command, 1 for the rest) — never a traceback for a user's mistake. Each method of `Commands`
is a command: its docstring is its --help (usage line, what it does, one line per flag) and its signature is its
grammar (`cube.cli.args`). Imports are lazy: `cube status` loads neither the docker SDK nor zeroconf unless it has
to look for the manager on the LAN.
"""

from __future__ import annotations

import os
import sys
import time

from cube import __version__
from cube.cli.cluster import ClusterCommands
from cube.cli.common import as_list, job_or_none, manager_client, show, stack_or_none
from cube.cli.operate import OperateCommands
from cube.cli.stacks import StackCommands
from cube.core.errors import CubeError

USAGE = f"""cube {__version__} — a small container orchestrator for your LAN

Usage: cube COMMAND [FLAGS]        (cube COMMAND --help for its flags)

Work:
  run       run a container (or --count N of them) on the cluster
  status    list tasks and jobs, or show one in detail (alias: ps)
  stop      stop a task or a job
  deploy    deploy a compose file as a stack (again: update it, rolling); `cube stacks` lists them
  down      stop a stack's jobs (--volumes: and remove its volumes)
  history   a job's versions; `cube rollback JOB [--to N]` goes back to one
  scale     change a job's count
  logs      print a task's output
  events    what happened, as it happens
  nodes     list the cluster's nodes (alias: node); `cube node drain NAME`, `eligible NAME`, `rm NAME`
  explain   why a task or job's tasks run where they run, or why they wait
  restart   start a task's container afresh on its node
  volume    list named volumes (`cube volume ls`) and where they live; `cube volume rm NAME` removes one
  registry  credentials for private registries: `cube registry login HOST`, `ls`, `logout HOST`
  image     `cube image push IMAGE` sends an image from this engine to the nodes (no registry); `cube image ls`

Cluster:
  dev       a whole cluster in this process (manager + local workers)
  manager   run the manager
  worker    run a worker on this node
  join      join this node to a cluster (a worker does it by itself at first start)
  token     print the join token (--rotate: a new one)
  install   install this file as a systemd service (worker or manager)
  uninstall remove the systemd service
  upgrade   roll a new cube.pyz out to the workers, one at a time, then the manager
  doctor    check that this machine can run Cube

Every command reads CUBE_MANAGER (manager URL) and CUBE_TOKEN from the environment; without them it finds the
manager on this machine, then on the LAN (mDNS).
"""

ALIASES = {"ps": "status", "node": "nodes", "volumes": "volume", "registries": "registry", "images": "image"}
RETRY_EVERY = 1.0  # seconds between tries to reach a manager that `cube events --follow` lost


class Commands(ClusterCommands, StackCommands, OperateCommands):
    """Each method is a command; its docstring is its --help."""

    # ---- work ----------------------------------------------------------------------------------------------

    def run(
        self,
        image: str | None = None,
        name: str | None = None,
        count: int = 1,
        cmd: str | None = None,
        env=(),
        port=(),
        cpu: float = 0.0,
        memory=0,
        disk=0,
        volume=(),
        tmpfs=(),
        allow_host_root: bool = False,
        restart: str = "on-failure",
        max_restarts: int = 3,
        restart_window: float = 600.0,
        health: str | None = None,
        health_interval: float = 10.0,
        constraint=(),
        label=(),
        on_disconnect: str | None = None,
        device=(),
        privileged: bool = False,
        cap_add=(),
        cap_drop=(),
        sysctl=(),
        network: str | None = None,
        hostname: str | None = None,
        user: str | None = None,
        workdir: str | None = None,
        entrypoint: str | None = None,
        stop_signal: str | None = None,
        stop_timeout: float | None = None,
        init: bool = False,
        shm_size=None,
        read_only: bool = False,
        batch: bool = False,
        detach: bool = False,
        file: str | None = None,
        timeout: float = 120.0,
        manager: str | None = None,
        token: str | None = None,
        json: bool = False,
    ):
        """cube run --image IMAGE [FLAGS]      (or: cube run -f SPEC.json)

        Runs a container on the cluster and waits until it runs, then watches it for 2 s: a container that exits
        at once is reported with its exit code (and `cube run` exits 1). With --batch it waits until the work
        completes. A node restarts a crashed container at most --max-restarts times within --restart-window
        seconds; then a service moves to another node.

        Flags:
          --image IMAGE          the container image, e.g. nginx or nginx:1.25
          --name NAME            the task's name (the job's, with --count or --batch)
          -n, --count N          run N identical tasks as a job (default 1)
          --cmd "COMMAND"        the command to run, split as a shell would, e.g. --cmd "sleep 3600"
          --env K=V              an environment variable (repeatable)
          --port PORT            publish a container port: 80 (on any free host port) or 8080:80 (repeatable)
          --cpu N                CPUs to reserve, e.g. 0.5
          --memory SIZE          memory limit, e.g. 256m or 1g
          --disk SIZE            disk space to reserve, e.g. 1g
          --volume SPEC          a named volume NAME:/path (it lives on the node of the first placement, and
                                 the task only runs there), or a bind mount /host/path:/path; :ro for read-only
                                 (repeatable)
          --tmpfs PATH           a tmpfs mount, PATH or PATH:size=64m (repeatable)
          --allow-host-root      allow a bind mount of /, the Docker socket, /etc, /proc, /sys, /dev or /boot
          --restart POLICY       no, on-failure (default) or always
          --max-restarts N       restarts allowed on a node within --restart-window (default 3)
          --restart-window S     seconds over which a node counts restarts (default 600)
          --health /PATH         an HTTP path checked on the task's first port
          --health-interval S    seconds between health checks (default 10)
          --constraint K=V       place only on nodes where K is V (K!=V: is not); e.g. arch=aarch64 (repeatable)
          --label K=V            a label on the task (repeatable)
          --on-disconnect WHAT   stop or keep the task on a node cut off from the manager (default: stop with
                                 a fixed host port, else keep)
          --device PATH          pass a device in: /dev/ttyUSB0 or /dev/ttyUSB0:/dev/zigbee[:rwm]; the task is
                                 placed only on nodes that have it (repeatable)
          --privileged           give the container every capability and every device of its node
          --cap-add CAP          add a Linux capability, e.g. NET_ADMIN (repeatable)
          --cap-drop CAP         drop a Linux capability, e.g. CHOWN, or ALL (repeatable)
          --sysctl K=V           a namespaced kernel setting, e.g. net.ipv4.ip_forward=1 (repeatable)
          --network host         use the node's own network (its ports count as used on that node)
          --hostname NAME        the container's host name
          --user USER            run as UID[:GID] or NAME[:GROUP], e.g. 1000:1000
          --workdir DIR          the working directory inside the container, e.g. /app
          --entrypoint "CMD"     replace the image's entrypoint, split as a shell would
          --stop-signal SIG      the signal that asks the container to stop, e.g. SIGINT (default: the image's)
          --stop-timeout S       seconds it gets to exit before it is killed (default: the node's)
          --init                 run an init process as PID 1 (reaps zombies, forwards signals)
          --shm-size SIZE        size of /dev/shm, e.g. 256m (default 64m)
          --read-only            mount the container's root filesystem read-only
          --batch                run to completion (a batch job) instead of keeping it running
          --detach               return once submitted, without waiting
          -f, --file SPEC.json   a task spec, or a job (name, count, task), as JSON
          --timeout S            seconds to wait for the tasks to run (default 120)"""
        from cube.cli.run import build_request, submit_and_wait

        client = manager_client(manager, token)
        kind, body = build_request(
            {
                "image": image,
                "name": name,
                "count": count,
                "cmd": cmd,
                "env": env,
                "port": port,
                "cpu": cpu,
                "memory": memory,
                "disk": disk,
                "volume": volume,
                "tmpfs": tmpfs,
                "allow_host_root": allow_host_root,
                "restart": restart,
                "max_restarts": max_restarts,
                "restart_window": restart_window,
                "health": health,
                "health_interval": health_interval,
                "constraint": constraint,
                "label": label,
                "on_disconnect": on_disconnect,
                "device": device,
                "privileged": privileged,
                "cap_add": cap_add,
                "cap_drop": cap_drop,
                "sysctl": sysctl,
                "network": network,
                "hostname": hostname,
                "user": user,
                "workdir": workdir,
                "entrypoint": entrypoint,
                "stop_signal": stop_signal,
                "stop_timeout": stop_timeout,
                "init": init,
                "shm_size": shm_size,
                "read_only": read_only,
                "batch": batch,
                "file": file,
            }
        )
        result = submit_and_wait(client, kind, body, detach=detach, timeout=float(timeout), as_json=json)
        show(result, json)
        return None

    def status(
        self,
        ref: str | None = None,
        manager: str | None = None,
        token: str | None = None,
        json: bool = False,
        all: bool = False,
    ):
        """cube status [ID_OR_NAME_OR_JOB_OR_STACK] [--all] [--json]

        Lists tasks, or shows one task, job or stack in detail (a task with its events and placement).

        Flags:
          --all                  list stopped tasks too"""
        from cube.cli import output

        client = manager_client(manager, token)
        if ref is None:
            # Finished tasks stay out unless --all: the manager leaves them out (a list of 100,000 costs nothing).
            tasks = client.get("/tasks") if all else client.get("/tasks", finished="false")
            show(
                tasks if json else (output.tasks_table(tasks) if tasks else "no tasks: try `cube run --image IMAGE`"),
                json,
            )
            return None
        ref = str(ref)
        job = job_or_none(client, ref)
        stack = None if job is not None else stack_or_none(client, ref)
        if stack is not None:
            show(stack if json else output.stack_detail(stack), json)
            return None
        if job is not None:
            show(
                job
                if json
                else f"job {job['name']} ({job['type']}): {job['running']}/{job['count']} running\n"
                + output.tasks_table(job["tasks"]),
                json,
            )
            return None
        task = client.get(f"/tasks/{ref}")
        show(task if json else output.task_detail(task), json)
        return None

    def stop(
        self,
        ref: str,
        detach: bool = False,
        timeout: float = 60.0,
        manager: str | None = None,
        token: str | None = None,
        json: bool = False,
    ):
        """cube stop ID_OR_NAME_OR_JOB [--detach] [--timeout 60]

        Stops a task (its container is stopped and removed), or every task of a job; waits until they are stopped
        (containers get the worker's stop timeout, 10 s by default, to exit) unless --detach.
        Example: cube stop web

        Flags:
          --detach               return once the stop is asked for, without waiting
          --timeout S            seconds to wait for the containers to stop (default 60)"""
        from cube.cli.run import stop_and_wait

        message = stop_and_wait(manager_client(manager, token), str(ref), bool(detach), float(timeout))
        show({"result": message} if json else message, json)

    def scale(self, job: str, count: int, manager: str | None = None, token: str | None = None, json: bool = False):
        """cube scale JOB N [--json]

        Changes how many tasks a job runs.
        Example: cube scale web 3"""
        answer = manager_client(manager, token).post(f"/jobs/{job}/scale", {"count": count})
        show(answer if json else f"job {job}: count {answer['count']} ({answer['running']} running now)", json)

    def logs(
        self,
        ref: str,
        follow: bool = False,
        tail: int | None = None,
        manager: str | None = None,
        token: str | None = None,
    ):
        """cube logs ID_OR_NAME [--follow] [--tail N]

        Prints a task's output (stdout and stderr).
        Example: cube logs web-1

        Flags:
          --follow               keep printing as the task writes
          --tail N               only the last N lines"""
        client = manager_client(manager, token)
        params = {"tail": tail, "follow": "1" if follow else None}
        out = sys.stdout.buffer
        for chunk in client.stream(f"/tasks/{ref}/logs", params=params, timeout=None if follow else 30):
            out.write(chunk)
            out.flush()

    def events(
        self,
        follow: bool = False,
        since: int = 0,
        task: str | None = None,
        manager: str | None = None,
        token: str | None = None,
        json: bool = False,
    ):
        """cube events [--follow] [--since N] [--task ID] [--json]

        Prints what happened (task state changes, placements, restarts): the last 50 events, or those after --since.
        With --follow it keeps printing as it happens, waits for the manager when it restarts or cannot be reached
        (it says so once on stderr), and goes on from the last event it printed; Ctrl-C stops it.

        Flags:
          --follow               keep printing events as they happen
          --since N              the events after event number N (the first column of --json: id)
          --task ID              only this task's events"""
        import json as jsonlib

        from cube.cli import output
        from cube.core.errors import Unavailable

        client = manager_client(manager, token)
        cursor = since
        tail = None if since else 50  # without --since: the last 50, then (with --follow) what comes
        wait = 25 if follow else None
        unreachable = False
        while True:
            params = {"since": cursor, "tail": tail, "task": task, "wait": wait}
            try:
                # The manager holds a long poll up to `wait`: the answer may take that long, and more.
                batch = client.request("GET", "/events", params=params, timeout=wait and wait + 15)
            except Unavailable:
                if not follow:
                    raise
                if not unreachable:  # once per outage: a restarting manager is not worth a line a second
                    print("cube events: manager unreachable, retrying (Ctrl-C stops)", file=sys.stderr, flush=True)
                    unreachable = True
                time.sleep(RETRY_EVERY)
                continue
            unreachable, tail = False, None
            for event in batch:
                print(jsonlib.dumps(event) if json else output.event_line(event), flush=True)
                cursor = max(cursor, event["id"])
            if not follow and len(batch) < 1000:
                return None

    def nodes(
        self,
        action: str | None = None,
        name: str | None = None,
        deadline=None,
        force: bool = False,
        detach: bool = False,
        manager: str | None = None,
        token: str | None = None,
        json: bool = False,
    ):
        """cube nodes [drain|eligible|rm NAME] [--json]

        Lists the nodes: name, address, state, eligibility, arch, cpu/memory/disk (allocated/total), tasks, cube
        version.

        `cube node drain NAME [--deadline 5m] [--force] [--detach]` takes a node out for maintenance: no new tasks
        go there, and each service task gets a replacement running (and healthy) on another node before its copy
        there stops, so a job of two or more is never down. Batch tasks run to their end; at the deadline whatever
        is left is stopped. A node holding a task's volume is drained only with --force (that task then waits for
        the node). The drain is followed until the node is empty unless --detach; Ctrl-C stops only the following.
        `cube node eligible NAME` lets the node take tasks again.

        `cube node rm NAME` removes a node that is down: its tasks go elsewhere and its certificate is revoked, so
        it cannot come back without the join token.

        Flags:
          --deadline D           drain: stop what has not moved after D (90s, 5m, 1h30m; default: no deadline)
          --force                drain: a node holding a task's volume too (that task waits for the node)
          --detach               drain: return at once instead of following it"""
        from cube.cli import operate, output

        if action not in (None, "ls", "list", "rm", "drain", "eligible"):
            raise operate.nodes_usage_error(str(action))
        if action in ("rm", "drain", "eligible") and not name:
            raise CubeError(f"which node? `cube node {action} NAME` (`cube nodes` lists them)")
        if action == "drain":
            return operate.drain(manager_client(manager, token), str(name), deadline, force, detach, json)
        if action == "eligible":
            return operate.eligible(manager_client(manager, token), str(name), json)
        if action == "rm":
            answer = manager_client(manager, token).delete(f"/nodes/{name}")
            revoked = "its certificate is revoked" if answer and answer.get("revoked") else "it had no certificate"
            print(
                f"removed node {name}; {revoked}. Containers left on that machine are not Cube's any more: "
                f"remove them there (docker ps --filter label=cube.task)"
            )
            return None
        nodes = manager_client(manager, token).get("/nodes")
        show(
            nodes
            if json
            else (
                output.nodes_table(nodes)
                if nodes
                else "no nodes yet: start `cube worker` on a machine (or `cube dev` here)"
            ),
            json,
        )

    def registry(
        self,
        action: str | None = None,
        host: str | None = None,
        username: str | None = None,
        password_stdin: bool = False,
        manager: str | None = None,
        token: str | None = None,
        json: bool = False,
    ):
        """cube registry [ACTION] [HOST] [--username U] [--password-stdin] [--json]

        ACTION is ls (the default), login or logout. Credentials for private registries, kept by the manager
        (encrypted) and handed to a node's engine only when it pulls an image of that registry (HOST or HOST:PORT,
        as in the image's name; docker.io for Docker Hub). `cube registry ls` shows hosts and user names, never a
        password. Without --password-stdin the password is asked for on the terminal.

        Example: echo "$PASSWORD" | cube registry login registry.lan:5000 --username ci --password-stdin

        Flags:
          --username U           the registry user (asked for when not given)
          --password-stdin       read the password from standard input, not the terminal"""
        from cube.cli.registry import registry_command

        text = registry_command(
            manager_client(manager, token), action, host, username, bool(password_stdin), as_json=bool(json)
        )
        show(text, json)

    def image(
        self,
        action: str | None = None,
        image: str | None = None,
        node=(),
        manager: str | None = None,
        token: str | None = None,
        json: bool = False,
    ):
        """cube image ACTION [IMAGE] [--node N]... [--json]

        ACTION is `ls` (the default) or `push`. `cube image push IMAGE` sends IMAGE from the Docker engine on this
        machine to the nodes that lack it (every ready node, or those given with --node), through the manager: no
        registry needed. A node whose engine has the image's id already gets only its tags, so a second push sends
        nothing. A task whose image cannot be pulled is fetched from a node that has it anyway. `cube image ls`
        (alias: images) lists which node has what.

        Example: cube image push myapp:1.0 --node pi1 --node pi2

        Flags:
          --node N               push to node N only (repeat for several)"""
        from cube.cli import images

        if action not in (None, "ls", "list", "push"):
            raise CubeError(f"unknown action {action!r}: use `cube image ls` or `cube image push IMAGE`")
        if action == "push" and not image:
            raise CubeError("which image? `cube image push IMAGE [--node N]` (`docker images` lists them)")
        client = manager_client(manager, token)
        if action == "push":
            assert image is not None
            result = images.push(client, image, as_list(node), sys.stderr)
            show(result if json else images.push_text(result), json)
            if any("error" in outcome for outcome in result["nodes"].values()):
                raise CubeError(f"{image} did not reach every node: see above")
            return None
        listed = client.get("/images")
        show(listed if json else images.listing_text(listed), json)
        return None

    def volume(
        self,
        action: str | None = None,
        name: str | None = None,
        manager: str | None = None,
        token: str | None = None,
        json: bool = False,
    ):
        """cube volume [ls | rm NAME] [--json]

        Lists the named volumes (alias: volumes): name, the node it lives on, size when known, age, and the tasks
        to run that mount it. A volume lives on the node of the first task that mounted it, and stays when its
        tasks stop, fail or move. `cube volume rm NAME` removes it on its node (refused while a task to run
        mounts it, or while its node is down)."""
        from cube.cli import output

        if action not in (None, "ls", "list", "rm"):
            raise CubeError(f"unknown action {action!r}: use `cube volume ls` or `cube volume rm NAME`")
        client = manager_client(manager, token)
        if action == "rm":
            if not name:
                raise CubeError("which volume? `cube volume rm NAME` (`cube volume ls` lists them)")
            answer = client.delete(f"/volumes/{name}") or {}
            note = f" ({answer['note']})" if answer.get("note") else ""
            show(answer if json else f"removed volume {name} from node {answer.get('node', '?')}{note}", json)
            return None
        volumes = client.get("/volumes")
        show(
            volumes
            if json
            else (
                output.volumes_table(volumes)
                if volumes
                else "no volumes yet: `cube run --volume NAME:/path` makes one on the node where the task runs"
            ),
            json,
        )


def main(argv: list[str] | None = None) -> int:
    try:
        return _run(list(sys.argv[1:] if argv is None else argv))
    except BrokenPipeError:
        # `cube status | head`: the reader is gone. stdout goes to /dev/null so that Python's own flush at exit
        # does not fail again (the recipe of the `signal` module's documentation).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _dispatch(command: str, args: list, kwargs: dict) -> None:
    """fire runs the command. It gets values already checked and converted (cli/args.py), each written as a Python
    literal, so that it takes them as they are: `--name 0x10` stays the text "0x10", where fire alone makes 16."""
    import fire

    from cube.cli.args import positionals

    names = [param.name for param in positionals(getattr(Commands, command))]
    words = [f"--{name}={value!r}" for name, value in [*zip(names, args, strict=False), *kwargs.items()]]
    fire.Fire(Commands, command=[command, *words], name="cube")


def _run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if argv[0] in ("--version", "-V"):
        print(f"cube {__version__}")
        return 0
    command = ALIASES.get(argv[0], argv[0])
    if command.startswith("_") or not callable(getattr(Commands, command, None)):
        print(f"cube: unknown command {argv[0]!r}: see `cube --help`", file=sys.stderr)
        return 2
    from cube.cli.args import UsageError, help_text, parse
    from cube.core.errors import Unauthorized, Untrusted
    from cube.core.model import InvalidSpec

    rest = argv[1:]
    if any(a in ("-h", "--help") for a in rest):
        print(help_text(getattr(Commands, command)))
        return 0
    try:
        args, kwargs = parse(command, getattr(Commands, command), rest)
        _dispatch(command, args, kwargs)
    except UsageError as error:
        print(f"cube {command}: {error.message}", file=sys.stderr)
        return 2
    except Unauthorized as error:
        # The manager's 401 is worded for any HTTP client; a CLI user sets a variable or a flag instead. (Untrusted
        # is the CLI's own finding about the manager, already with its next step.)
        refused = "the manager refused the cluster token (missing or wrong): set CUBE_TOKEN or pass --token; " + (
            "`cube token` on the manager prints it"
        )
        print(f"cube {command}: {error.message if isinstance(error, Untrusted) else refused}", file=sys.stderr)
        return 1
    except (CubeError, InvalidSpec) as error:
        print(f"cube {command}: {getattr(error, 'message', None) or error}", file=sys.stderr)
        return getattr(error, "exit_code", 1)
    except KeyboardInterrupt:
        return 130
    return 0
