"""What a stack decides across its services: its name, which services its profiles leave in, the order of the
jobs (depends_on, with the cycle named when there is one), which jobs are batch jobs, and that no two services
publish the same host port."""

from __future__ import annotations

import os
import re

from cube.compose.mapping import CONDITIONS, Context, job_name
from cube.core import spec
from cube.core.errors import InvalidSpec


def name_of(given: str | None, declared, project_dir: str) -> str:
    """`--name`, else the file's `name:` (each must be a DNS label), else the directory's name made one: lowercase,
    only letters, digits and '-' (docker compose keeps '_', which a DNS label cannot hold), as compose normalizes
    a project name."""
    for value, what in ((given, "--name"), (declared, "name")):
        if value:
            if not re.fullmatch(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", str(value)):
                raise InvalidSpec(
                    f"{what} {value!r}: a stack name must be lowercase letters, digits and '-' (a DNS label)"
                )
            return str(value)
    base = os.path.basename(project_dir.rstrip("/")).lower().replace("_", "-").replace(".", "-")
    normal = re.sub(r"[^a-z0-9-]", "", base).strip("-")
    normal = re.sub(r"-{2,}", "-", normal)[: spec.MAX_NAME].strip("-")
    if not normal:
        raise InvalidSpec(f"the directory {project_dir} gives no stack name: pass --name or set name: in the file")
    return normal


def active_services(merged: dict, variables, ctx: Context) -> dict[str, dict]:
    """The services to run: a service with `profiles` only when one of them is in COMPOSE_PROFILES (as docker
    compose has it); the others are listed in the warning."""
    active = {p.strip() for p in variables.get("COMPOSE_PROFILES", "").split(",") if p.strip()}
    out = {}
    for name, data in (merged.get("services") or {}).items():
        data = data or {}
        profiles = data.get("profiles") or []
        if profiles and "*" not in active and not active & set(profiles):
            ctx.warnings.append(
                f"services.{name}: left out: its profiles ({', '.join(profiles)}) are not in COMPOSE_PROFILES"
            )
            continue
        out[name] = data
    if not out:
        raise InvalidSpec(f"{ctx.file_of('services', '')}: no services to run")
    return out


def link(jobs: dict[str, dict], services: dict[str, dict], declared: dict, ctx: Context) -> list[dict]:
    """Each job's depends_on and type; the jobs in an order where each comes after what it depends on (the file's
    order otherwise)."""
    edges: dict[str, list[str]] = {}
    completed: set[str] = set()
    for name, data in services.items():
        edges[name] = []
        for other, condition in (data.get("depends_on") or {}).items():
            condition = condition or {}
            what = f"depends_on.{other}"
            required = condition.get("required", True)
            if other not in services:
                if not required:
                    ctx.warnings.append(f"services.{name}.{what}: {other} is not in the stack (required: false)")
                    continue
                left_out = " (its profiles leave it out)" if other in declared else ""
                raise ctx.error(name, "depends_on", f"unknown service {other}{left_out}")
            if condition.get("restart"):
                ctx.unsupported(name, f"{what}.restart", "not supported (the service is not restarted with it)")
            kind = CONDITIONS[condition.get("condition") or "service_started"]
            if kind == "completed":
                completed.add(other)
            dependency: dict = {"job": job_name(ctx.stack, other, ctx), "condition": kind}
            if not required:
                dependency["required"] = False
            jobs[name]["depends_on"].append(dependency)
            edges[name].append(other)
    for name, item in jobs.items():
        restart = item["task"].get("restart", {}).get("name")
        if name in completed or restart == "no":
            if restart == "always":
                raise ctx.error(
                    name,
                    "restart",
                    "a service others wait for with service_completed_successfully runs to completion: restart "
                    "always would never let it complete (use on-failure or no)",
                )
            item["type"] = "batch"
    return [jobs[name] for name in _order(edges, ctx)]


def _order(edges: dict[str, list[str]], ctx: Context) -> list[str]:
    """Depth-first, in the file's order: each service after its dependencies; a cycle is named (a → b → a)."""
    done: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = path[path.index(name) :] + [name]
            raise ctx.error(cycle[0], "depends_on", f"a dependency cycle: {' → '.join(cycle)}")
        state[name] = "visiting"
        for other in edges[name]:
            visit(other, path + [name])
        state[name] = "done"
        done.append(name)

    for name in edges:
        visit(name, [])
    return done


def check_ports(jobs: list[dict], ctx: Context) -> None:
    """No two services take one host port and protocol (a published port, or any port of a host-network
    service): the routing mesh holds a published port on every node."""
    taken: dict[tuple, str] = {}
    for item in jobs:
        service = item["name"][len(ctx.stack) + 1 :]
        host_network = item["task"].get("network") == "host"
        seen = set()
        for port in item["task"].get("ports") or []:
            number = port["host"] or (port["container"] if host_network else None)
            key = (number, port["protocol"])
            if number is None or key in seen:
                continue
            seen.add(key)
            if key in taken:
                raise ctx.error(
                    service,
                    "ports",
                    f"host port {number}/{port['protocol']} is also published by service {taken[key]}",
                )
            taken[key] = service


def top_level_warnings(merged: dict, ctx: Context) -> None:
    if "version" in merged:
        ctx.warnings.append("version: obsolete, ignored (as docker compose does)")
    for network, data in (merged.get("networks") or {}).items():
        for key in sorted(set(data or {}) - {"name"}):
            ctx.warnings.append(f"networks.{network}.{key}: not supported: the services of a stack share one network")
    for name, data in (merged.get("services") or {}).items():
        networks = (data or {}).get("networks")
        if isinstance(networks, dict):
            for network, options in networks.items():
                for key in sorted(options or {}):
                    ctx.unsupported(name, f"networks.{network}.{key}", "not supported")
