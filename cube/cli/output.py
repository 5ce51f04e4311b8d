"""How Cube shows things to a person: aligned tables, human ages and sizes, one-task detail. Pure formatting over
the API's JSON; the `--json` output of the CLI bypasses this module entirely."""

from __future__ import annotations

import shlex
import time

from cube.core.model import format_size


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def age(since: float | None, now: float | None = None) -> str:
    if not since:
        return "-"
    seconds = max(0, int((now or time.time()) - since))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def ports(host_ports: dict, spec_ports: list | None = None) -> str:
    if host_ports:
        return ",".join(f"{host}->{key}" for key, host in sorted(host_ports.items()))
    return ",".join(f"{p['container']}/{p['protocol']}" for p in spec_ports or []) or "-"


def shown_state(task: dict) -> str:
    """The state a person cares about: a task told to stop whose container still runs is `stopping`."""
    if task.get("desired") == "stop" and task["state"] in ("scheduled", "running"):
        return "stopping"
    return task["state"]


def tasks_table(tasks: list[dict]) -> str:
    rows = [
        [
            t["id"],
            t["name"],
            shown_state(t),
            t.get("node") or "-",
            t["image"],
            ports(t.get("host_ports") or {}, (t.get("spec") or {}).get("ports")),
            t.get("restarts", 0),
            age(t.get("created_at")),
        ]
        for t in tasks
    ]
    return table(["ID", "NAME", "STATE", "NODE", "IMAGE", "PORTS", "RESTARTS", "AGE"], rows)


def nodes_table(nodes: list[dict]) -> str:
    rows = []
    for n in nodes:
        alloc = n.get("allocated") or {}
        rows.append(
            [
                n["name"],
                n["address"],
                n["state"],
                n.get("eligibility") or "eligible",
                n.get("arch") or "-",
                f"{alloc.get('cpu', 0):g}/{n.get('cpus', 0):g}",
                f"{format_size(alloc.get('memory', 0))}/{format_size(n.get('memory', 0))}",
                f"{format_size(alloc.get('disk', 0))}/{format_size(n.get('disk', 0))}",
                n.get("tasks", 0),
                n.get("version") or "-",
            ]
        )
    text = table(["NAME", "ADDRESS", "STATE", "ELIGIBILITY", "ARCH", "CPU", "MEMORY", "DISK", "TASKS", "VERSION"], rows)
    # Why a node is not ready, below the table: a reason is a sentence, too long for a column.
    notes = [f"{n['name']}: {n['state']} — {n['reason']}" for n in nodes if n.get("reason")]
    return "\n".join([text, *notes])


def volumes_table(volumes: list[dict]) -> str:
    """NAME, NODE (with its state when not ready), SIZE ("-": the node does not measure it), AGE, TASKS (those to
    run that mount it; "-": none, so `cube volume rm` may remove it)."""
    rows = []
    for v in volumes:
        node = v["node"] if v.get("node_state") in (None, "ready") else f"{v['node']} ({v['node_state']})"
        size = format_size(v["size"]) if isinstance(v.get("size"), int) else "-"
        users = ",".join(t.get("name") or t["id"] for t in v.get("tasks") or ()) or "-"
        rows.append([v["name"], node, size, age(v.get("created_at")), users])
    return table(["NAME", "NODE", "SIZE", "AGE", "TASKS"], rows)


def event_line(e: dict) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(e["time"])) + f".{int(e['time'] * 1000) % 1000:03d}"
    node = f" [{e['node']}]" if e.get("node") else ""
    return f"{stamp} {e['task_id']} {e['state']:<9}{node} {e.get('message', '')}".rstrip()


def options(spec: dict) -> str:
    """A spec's hardware, privilege, process and network options that are set, as the `cube run` flags."""
    words = []
    for device in spec.get("devices") or ():
        path = device["host"] if device["container"] == device["host"] else f"{device['host']}:{device['container']}"
        words.append(f"--device {path}" + (f":{device['permissions']}" if device["permissions"] != "rwm" else ""))
    words += [f"--{flag.replace('_', '-')}" for flag in ("privileged", "init", "read_only") if spec.get(flag)]
    for field in ("cap_add", "cap_drop"):
        words += [f"--{field.replace('_', '-')} {name}" for name in spec.get(field) or ()]
    words += [f"--sysctl {key}={value}" for key, value in sorted((spec.get("sysctls") or {}).items())]
    for field in ("network", "hostname", "user", "workdir", "stop_signal"):
        if spec.get(field):
            words.append(f"--{field.replace('_', '-')} {spec[field]}")
    if spec.get("stop_timeout") is not None:
        words.append(f"--stop-timeout {spec['stop_timeout']:g}")
    if spec.get("entrypoint"):
        words.append(f"--entrypoint {shlex.quote(' '.join(spec['entrypoint']))}")
    if spec.get("shm_size"):
        words.append(f"--shm-size {format_size(spec['shm_size']).replace(' ', '')}")
    return " ".join(words)


def task_detail(t: dict) -> str:
    spec = t.get("spec") or {}
    lines = [
        f"ID:        {t['id']}",
        f"Name:      {t['name']}" + (f"   (job {t['job']})" if t.get("job") else ""),
        f"State:     {shown_state(t)} (desired: {t['desired']})" + (f" — {t['reason']}" if t.get("reason") else ""),
        f"Node:      {t.get('node') or '-'}",
        f"Image:     {t['image']}"
        + (f"   command: {' '.join(spec.get('command') or [])}" if spec.get("command") else ""),
        f"Ports:     {ports(t.get('host_ports') or {}, spec.get('ports'))}",
        f"Resources: cpu {spec.get('cpu', 0):g}, memory {format_size(spec.get('memory', 0))}, "
        f"disk {format_size(spec.get('disk', 0))}",
        f"Restarts:  {t.get('restarts', 0)} (policy {spec.get('restart', {}).get('name')}, "
        f"max {spec.get('restart', {}).get('max_restarts')})",
        f"Container: {(t.get('container_id') or '-')[:12]}   age {age(t.get('created_at'))}",
    ]
    if options(spec):
        lines.insert(-1, f"Options:   {options(spec)}")
    placement = t.get("placement") or {}
    if placement.get("reasons"):
        lines.append("Placement: " + (f"on {placement['node']}; " if placement.get("node") else "") + "rejected nodes:")
        lines += [f"  {name}: {why}" for name, why in sorted(placement["reasons"].items())]
    if t.get("events"):
        lines.append("Events:")
        lines += ["  " + event_line(e) for e in t["events"]]
    return "\n".join(lines)


def stack_detail(stack: dict) -> str:
    """`cube status STACK`: a line per job (version, rollout, running of wanted), then its tasks."""
    rows = []
    for job in stack["jobs"]:
        deployment = job.get("deployment") or {}
        rows.append(
            [
                job["name"],
                str(job["version"]),
                deployment.get("status", ""),
                f"{job['running']}/{job['count']}",
                job["task"]["image"],
            ]
        )
    head = f"stack {stack['name']}: {stack['running']}/{stack['desired']} running"
    tasks = [t for job in stack["jobs"] for t in job["tasks"]]
    return "\n".join(
        [head, table(["JOB", "VERSION", "ROLLOUT", "RUNNING", "IMAGE"], rows), "", tasks_table(tasks) if tasks else ""]
    ).rstrip()
