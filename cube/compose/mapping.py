"""One compose service → one Cube job dict (what `POST /stacks` takes): the task spec's keys, the count, the update
and rollback policies, the dependencies. This module decides what each compose field means for Cube, and names
the file, the service and the field of every value it refuses. Fields Cube does not support are not dropped
silently: each becomes one line of the stack's warning (`Context.unsupported`).

Decisions where compose and Cube differ (README, Compose):
- a published port with a host address (`127.0.0.1:8080:80`) is refused: Cube publishes a port on every node's
  addresses, so honouring the rest would expose the service wider than the file asks; `0.0.0.0` and `::` are all
  addresses and accepted;
- a host port range mapped onto one container port (`8000-8010:80`: "any free port of these") is refused;
- an anonymous volume (`- /data`) is listed in the warning: the path stays in the container's own filesystem;
- restart left out is Cube's default policy (on-failure, 3 restarts in 10 minutes), not compose's "no": a service
  that exits is restarted, and rescheduled when its node gives up;
- resources: Cube reserves what it limits, so a limit wins over a reservation (the reservation alone is taken
  when there is no limit), and a reservation that differs from the limit is listed in the warning.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field

from cube.compose.interpolate import parse_dotenv
from cube.compose.load import Origins
from cube.compose.schema import UNSUPPORTED
from cube.core import spec
from cube.core.errors import InvalidSpec

# Swarm's defaults (monitor 5 s, one at a time, pause on failure), but the order left to Cube: start-first for a
# job of one task (never down), stop-first for more.
UPDATE_DEFAULTS = {
    "max_parallel": 1,
    "min_healthy_time": 5,
    "healthy_deadline": 300,
    "auto_revert": False,
    "order": "",
}
# Docker's healthcheck defaults (the Dockerfile reference): a check runs inside the container, as Docker runs it.
HEALTH_DEFAULTS = {"interval": 30, "timeout": 30, "retries": 3, "start_period": 0}
SECRET_MODE = 0o444
CONDITIONS = {
    "service_started": "started",
    "service_healthy": "healthy",
    "service_completed_successfully": "completed",
}
_PORT_RANGE = re.compile(r"(\d{1,5})(?:-(\d{1,5}))?")
_ALL_ADDRESSES = ("", "0.0.0.0", "::", "[::]")
_CONSTRAINT = re.compile(r"\s*([\w.-]+)\s*(==|!=)\s*(\S+)\s*")
# Swarm's placement attributes → the node labels Cube's scheduler compares (a worker's labels: arch, hostname,
# node_id and the user's `--label`s).
_NODE_ATTRIBUTES = {"node.hostname": "hostname", "node.platform.arch": "arch", "node.id": "node_id"}


@dataclass
class Context:
    """What mapping one service needs from the whole stack."""

    stack: str
    project_dir: str
    environ: Mapping[str, str]
    top: dict  # the merged file: its top-level volumes, secrets and configs
    origins: Origins
    warnings: list[str] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)

    def file_of(self, section: str, name: str, first: str = "") -> str:
        return self.origins.get((section, name, first)) or self.origins.get((section, name, ""), "compose.yaml")

    def error(self, service: str, path: str, message: str) -> InvalidSpec:
        first = re.split(r"[.\[]", path, maxsplit=1)[0]
        return InvalidSpec(f"{self.file_of('services', service, first)}: services.{service}.{path}: {message}")

    def unsupported(self, service: str, path: str, reason: str | None = None) -> None:
        self.warnings.append(f"services.{service}.{path}: {reason or UNSUPPORTED.get(path, 'not supported')}")

    def path(self, value: str) -> str:
        """A host path as compose resolves it: `~` the user's home, a relative path against the first file's
        directory."""
        if value.startswith("~"):
            value = self.environ.get("HOME", "~") + value[1:]
        return os.path.normpath(os.path.join(self.project_dir, value))


def job(name: str, service: dict, ctx: Context) -> dict:
    """The job dict of service `name` (its `type` and `depends_on` are set by the stack, which sees them all)."""
    service = service or {}
    for key in service:
        if key in UNSUPPORTED:
            ctx.unsupported(name, key)
    image = service.get("image")
    if not image:
        why = " (Cube runs images, it does not build them: build and push it, then name it here)"
        raise ctx.error(name, "image", "required" + (why if "build" in service else ""))
    deploy = service.get("deploy") or {}
    network = _network_mode(name, service.get("network_mode"), ctx)
    task: dict = {"image": image}
    for key in ("command", "entrypoint"):
        if service.get(key) is not None:
            task[key] = _arguments(service[key])
    env = _environment(name, service, ctx)
    if env:
        task["env"] = env
    ports = _ports(name, service.get("ports") or [], ctx)
    if ports:
        task["ports"] = ports
    mounts = _volumes(name, service, ctx)
    if mounts:
        task["volumes"] = mounts
    task.update(_restart(name, service, deploy, ctx))
    health = _health(name, service.get("healthcheck"), ctx)
    if health:
        task["health"] = health
    task.update(_resources(name, service, deploy, ctx))
    constraints = _constraints(name, deploy, ctx)
    if constraints:
        task["constraints"] = constraints
    labels = {str(k): "" if v is None else _text(v) for k, v in (service.get("labels") or {}).items()}
    if labels:
        task["labels"] = labels
    sysctls = {str(k): "" if v is None else _text(v) for k, v in (service.get("sysctls") or {}).items()}
    if sysctls:
        task["sysctls"] = sysctls
    if network:
        task["network"] = network
    for key, to in (
        ("devices", "devices"),
        ("privileged", "privileged"),
        ("cap_add", "cap_add"),
        ("cap_drop", "cap_drop"),
        ("hostname", "hostname"),
        ("working_dir", "workdir"),
        ("stop_signal", "stop_signal"),
        ("init", "init"),
        ("read_only", "read_only"),
    ):
        if service.get(key) not in (None, "", [], False):
            task[to] = service[key]
    if service.get("user") not in (None, ""):
        task["user"] = str(service["user"])
    if service.get("shm_size") not in (None, ""):
        task["shm_size"] = spec.parse_size(service["shm_size"], "shm_size")
    if service.get("stop_grace_period") is not None:
        task["stop_timeout"] = duration(service["stop_grace_period"], name, "stop_grace_period", ctx)
    files = _files(name, service, ctx)
    if files:
        task["files"] = files
    _check(name, task, ctx)
    count = _count(name, service, deploy, ctx)
    return {
        "name": job_name(ctx.stack, name, ctx),
        "stack": ctx.stack,
        "count": count,
        "type": "service",
        "task": task,
        "update": _update(name, deploy.get("update_config"), "update_config", ctx),
        "rollback": _update(name, deploy.get("rollback_config"), "rollback_config", ctx),
        "depends_on": [],
    }


def job_name(stack: str, service: str, ctx: Context) -> str:
    """`<stack>-<service>`, a DNS label: other services reach it by its service name, so the name is not
    rewritten (an `_` or a capital is refused with the name to use instead)."""
    name = f"{stack}-{service}"
    if not re.fullmatch(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?", service):
        hint = re.sub(r"[^a-z0-9-]", "-", service.lower()).strip("-") or "web"
        raise InvalidSpec(
            f"{ctx.file_of('services', service)}: services.{service}: a service name becomes a job name and a DNS "
            f"name (db:5432), so it must be lowercase letters, digits and '-': rename it, e.g. {hint}"
        )
    if len(name) > spec.MAX_JOB_NAME:
        raise InvalidSpec(
            f"{ctx.file_of('services', service)}: services.{service}: the job name {name} is {len(name)} characters "
            f"long: at most {spec.MAX_JOB_NAME} (a DNS label, with room for -N per task); shorten the service or "
            f"the stack name (--name)"
        )
    return name


def duration(value, service: str, path: str, ctx: Context) -> int | float:
    """A compose duration (`1m30s`, `10s`, `500ms`; a bare number is seconds) → seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return value
    seconds = spec.parse_duration(value) if isinstance(value, str) else None
    if seconds is None:
        raise ctx.error(service, path, f"{value!r} is not a duration such as 10s, 1m30s or 500ms")
    return int(seconds) if seconds == int(seconds) else round(seconds, 6)


def _text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _arguments(value) -> list[str]:
    """A string is split as a shell would (compose's shellwords); a list is kept."""
    if isinstance(value, str):
        return shlex.split(value)
    return [_text(item) for item in value]


def _network_mode(service: str, value, ctx: Context) -> str:
    if value in (None, "", "bridge", "default"):
        return ""
    if value == "host":
        return "host"
    raise ctx.error(
        service, "network_mode", f"{value!r} is not supported: use host, or leave it out (the stack's network)"
    )


def _environment(service: str, data: dict, ctx: Context) -> dict[str, str]:
    """env_file entries in order, then `environment`, which wins; `KEY` without a value takes the environment's
    (and is left out when that is unset), as in docker compose."""
    env: dict[str, str] = {}
    for index, entry in enumerate(data.get("env_file") or []):
        path, required = (entry, True) if isinstance(entry, str) else (entry["path"], entry.get("required", True))
        full = ctx.path(path)
        try:
            with open(full, encoding="utf-8") as handle:
                text = handle.read()
        except FileNotFoundError:
            if not required:
                continue
            raise ctx.error(service, f"env_file[{index}]", f"{full} does not exist") from None
        except (OSError, UnicodeDecodeError) as error:
            raise ctx.error(service, f"env_file[{index}]", f"{full} cannot be read: {error}") from None
        env.update(parse_dotenv(text, full, ctx.environ.get))
    for key, value in (data.get("environment") or {}).items():
        if value is None:
            if key in ctx.environ:
                env[str(key)] = ctx.environ[key]
            continue
        env[str(key)] = _text(value)
    return env


def _ports(service: str, entries: list, ctx: Context) -> list[dict]:
    out: list[dict] = []
    for index, entry in enumerate(entries):
        what = f"ports[{index}]"
        if isinstance(entry, dict):
            address, published = entry.get("host_ip") or "", entry.get("published")
            target, protocol = entry["target"], entry.get("protocol") or "tcp"
            mode = entry.get("mode") or "ingress"
            for key in ("name", "app_protocol"):
                if key in entry:
                    ctx.unsupported(service, f"{what}.{key}", "not supported")
        else:
            text, _, protocol = str(entry).partition("/")
            protocol = protocol or "tcp"
            mode = "ingress"
            if text.startswith("[") and "]:" in text:  # [::1]:8080:80
                address, _, text = text[1:].partition("]:")
            else:
                parts = text.split(":")
                if len(parts) > 3:
                    raise ctx.error(service, what, f"{entry!r} is not [HOST:]PORT[:CONTAINER_PORT][/PROTOCOL]")
                address = parts[0] if len(parts) == 3 else ""
                text = ":".join(parts[-2:]) if len(parts) >= 2 else parts[0]
            published, _, target = text.rpartition(":")
            published = published or None
        if str(address) not in _ALL_ADDRESSES:
            raise ctx.error(
                service,
                what,
                f"host address {address} is not supported: Cube publishes a port on every node's addresses "
                f"(remove the address, or the port)",
            )
        if protocol not in ("tcp", "udp"):
            raise ctx.error(service, what, f"protocol must be tcp or udp, not {protocol!r}")
        targets = _port_range(target, service, what, ctx)
        hosts = _port_range(published, service, what, ctx) if published not in (None, "") else None
        if hosts is not None and len(hosts) != len(targets):
            raise ctx.error(
                service,
                what,
                f"{entry!r}: the published range and the container range must be of one length (a published "
                f"range for one container port, 'any free port of these', is not supported)",
            )
        for position, container in enumerate(targets):
            out.append(
                {
                    "container": container,
                    "host": hosts[position] if hosts else None,
                    "protocol": protocol,
                    "mode": mode,
                }
            )
    return out


def _port_range(value, service: str, what: str, ctx: Context) -> list[int]:
    match = _PORT_RANGE.fullmatch(str(value).strip())
    first = int(match.group(1)) if match else 0
    last = int(match.group(2) or first) if match else 0
    if not match or not 1 <= first <= last <= 65535:
        raise ctx.error(service, what, f"{value!r} is not a port (1-65535) or a range such as 8000-8010")
    return list(range(first, last + 1))


def _volumes(service: str, data: dict, ctx: Context) -> list[dict]:
    out: list[dict] = []
    for index, entry in enumerate(data.get("volumes") or []):
        what = f"volumes[{index}]"
        if isinstance(entry, str):
            parts = entry.split(":")
            if len(parts) == 1:
                ctx.unsupported(
                    service,
                    what,
                    f"anonymous volume {entry}: not supported, the path stays in the container's own filesystem "
                    f"(name the volume to keep its data)",
                )
                continue
            source, target = parts[0], parts[1]
            options = parts[2].split(",") if len(parts) > 2 else []
            if len(parts) > 3 or any(o not in ("ro", "rw", "z", "Z", "nocopy") for o in options):
                raise ctx.error(service, what, f"{entry!r} is not SOURCE:TARGET[:ro|rw]")
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
            mount: dict = {"type": kind, "source": source, "target": target, "read_only": "ro" in options}
        else:
            kind = entry["type"]
            if kind not in ("volume", "bind", "tmpfs"):
                raise ctx.error(service, f"{what}.type", f"{kind!r} is not supported: use volume, bind or tmpfs")
            mount = {"type": kind, "source": entry.get("source") or "", "target": entry.get("target") or ""}
            if kind != "tmpfs":
                mount["read_only"] = bool(entry.get("read_only"))
            for key in ("consistency", "bind", "volume", "image"):
                if entry.get(key):
                    ctx.unsupported(service, f"{what}.{key}", "not supported")
            size = (entry.get("tmpfs") or {}).get("size")
            if size:
                mount["size"] = spec.parse_size(size, f"{what}.tmpfs.size")
            if (entry.get("tmpfs") or {}).get("mode"):
                ctx.unsupported(service, f"{what}.tmpfs.mode", "not supported")
            if kind == "volume" and not mount["source"]:
                ctx.unsupported(service, what, "anonymous volume: not supported (name the volume)")
                continue
        if mount["type"] == "bind":
            mount["source"] = ctx.path(mount["source"])
        elif mount["type"] == "volume":
            mount["source"] = _volume_name(service, what, mount["source"], ctx)
        out.append(mount)
    tmpfs = data.get("tmpfs") or []
    for index, entry in enumerate([tmpfs] if isinstance(tmpfs, str) else tmpfs):
        target, _, options = entry.partition(":")
        mount = {"type": "tmpfs", "source": "", "target": target}
        for option in filter(None, options.split(",")):
            key, _, value = option.partition("=")
            if key == "size":
                mount["size"] = spec.parse_size(value, f"tmpfs[{index}] size")
            else:
                ctx.unsupported(service, f"tmpfs[{index}]", f"option {option}: not supported")
        out.append(mount)
    return out


def _volume_name(service: str, what: str, name: str, ctx: Context) -> str:
    """A compose volume → the named volume on the node: `<stack>_<name>` (as docker compose names it), its `name:`,
    or the name itself when external."""
    volumes = ctx.top.get("volumes") or {}
    if name not in volumes:
        raise ctx.error(service, what, f"volume {name!r} is not declared under the top-level volumes")
    declared = volumes[name] or {}
    for key in ("driver", "driver_opts", "labels"):
        if declared.get(key) and not (key == "driver" and declared[key] == "local"):
            ctx.warnings.append(f"volumes.{name}.{key}: not supported (Docker's local volumes on the node)")
    if declared.get("name"):
        return declared["name"]
    if declared.get("external"):
        return name
    return f"{ctx.stack}_{name}"


def _restart(service: str, data: dict, deploy: dict, ctx: Context) -> dict:
    policy = deploy.get("restart_policy")
    if policy:
        name = {"none": "no", "on-failure": "on-failure", "any": "always"}[policy.get("condition") or "any"]
        restart: dict = {"name": name}
        if policy.get("max_attempts") is not None:
            restart["max_restarts"] = min(policy["max_attempts"], 1000)
        if policy.get("window") is not None:
            restart["window"] = duration(policy["window"], service, "deploy.restart_policy.window", ctx)
        if policy.get("delay") is not None:
            ctx.unsupported(service, "deploy.restart_policy.delay")
        return {"restart": restart}
    value = data.get("restart")
    if value is None:
        return {}
    text = _text(value)
    if text in ("no", "false"):
        return {"restart": {"name": "no"}}
    if text in ("always", "unless-stopped"):
        return {"restart": {"name": "always"}}
    name, _, count = text.partition(":")
    if name == "on-failure" and (not count or count.isdigit()):
        return {"restart": {"name": "on-failure", **({"max_restarts": min(int(count), 1000)} if count else {})}}
    raise ctx.error(service, "restart", f"{value!r}: use no, always, on-failure[:N] or unless-stopped")


def _health(service: str, check: dict | None, ctx: Context) -> dict | None:
    if not check or check.get("disable"):
        return None
    test = check.get("test")
    if isinstance(test, str):
        command = ["CMD-SHELL", test]
    elif isinstance(test, list) and test[:1] == ["NONE"]:
        return None
    elif isinstance(test, list) and test[:1] in (["CMD"], ["CMD-SHELL"]) and len(test) > 1:
        command = list(test)
    elif test is None:
        raise ctx.error(service, "healthcheck.test", "required (the image's own check is not read by Cube)")
    else:
        raise ctx.error(
            service, "healthcheck.test", 'must start with CMD or CMD-SHELL, e.g. ["CMD-SHELL", "nc -z 127.0.0.1 80"]'
        )
    health: dict = {"command": command}
    for key, default in HEALTH_DEFAULTS.items():
        value = check.get(key, default)
        health[key] = value if key == "retries" else duration(value, service, f"healthcheck.{key}", ctx)
    if "start_interval" in check:
        ctx.unsupported(service, "healthcheck.start_interval")
    return health


def _resources(service: str, data: dict, deploy: dict, ctx: Context) -> dict:
    resources = deploy.get("resources") or {}
    limits, reservations = resources.get("limits") or {}, resources.get("reservations") or {}
    for key, kind in (("pids", "limits"), ("devices", "reservations"), ("generic_resources", "reservations")):
        if key in (limits if kind == "limits" else reservations):
            ctx.unsupported(service, f"deploy.resources.{kind}.{key}")
    out: dict = {}
    cpu_limit = limits.get("cpus", data.get("cpus"))
    memory_limit = limits.get("memory", data.get("mem_limit"))
    memory_reservation = reservations.get("memory", data.get("mem_reservation"))
    for key, limit, reserved, parse in (
        ("cpu", cpu_limit, reservations.get("cpus"), lambda v: float(v)),
        ("memory", memory_limit, memory_reservation, lambda v: spec.parse_size(v, "memory")),
    ):
        try:
            limit_value = None if limit is None else parse(limit)
            reserved_value = None if reserved is None else parse(reserved)
        except (ValueError, InvalidSpec) as error:
            raise ctx.error(service, "deploy.resources", f"{key}: {error}") from None
        if limit_value is not None and reserved_value is not None and reserved_value != limit_value:
            ctx.unsupported(
                service,
                f"deploy.resources.reservations.{'cpus' if key == 'cpu' else 'memory'}",
                f"Cube reserves what it limits: {key} {limit} is both",
            )
        value = limit_value if limit_value is not None else reserved_value
        if value:
            out[key] = value
    return out


def _constraints(service: str, deploy: dict, ctx: Context) -> list[str]:
    placement = deploy.get("placement") or {}
    for key in ("preferences", "max_replicas_per_node"):
        if key in placement:
            ctx.unsupported(service, f"deploy.placement.{key}")
    out = []
    for index, text in enumerate(placement.get("constraints") or []):
        what = f"deploy.placement.constraints[{index}]"
        match = _CONSTRAINT.fullmatch(text)
        if not match:
            raise ctx.error(service, what, f"{text!r} is not ATTRIBUTE == VALUE or ATTRIBUTE != VALUE")
        attribute, operator, value = match.groups()
        op = "=" if operator == "==" else "!="
        if attribute.startswith("node.labels.") and len(attribute) > len("node.labels."):
            out.append(f"{attribute[len('node.labels.') :]}{op}{value}")
        elif attribute in _NODE_ATTRIBUTES:
            out.append(f"{_NODE_ATTRIBUTES[attribute]}{op}{value}")
        elif attribute == "node.platform.os":
            if (value.lower() == "linux") != (op == "="):
                raise ctx.error(service, what, f"{text!r}: every Cube node runs Linux, so no node would do")
            # every node is Linux: the constraint holds everywhere and is not kept
        else:
            raise ctx.error(
                service,
                what,
                f"{attribute} cannot be mapped: Cube places on node.labels.*, node.hostname, node.id and "
                f"node.platform.arch (a worker's --label, hostname, node_id and arch)",
            )
    return out


def _count(service: str, data: dict, deploy: dict, ctx: Context) -> int:
    if deploy.get("mode") not in (None, "replicated"):
        ctx.unsupported(service, "deploy.mode")
    for key in ("endpoint_mode", "labels"):
        if key in deploy:
            ctx.unsupported(service, f"deploy.{key}")
    replicas = deploy.get("replicas", data.get("scale", 1))
    if not 0 <= replicas <= 10000:
        raise ctx.error(service, "deploy.replicas", f"must be from 0 to 10000, not {replicas}")
    return replicas


def _update(service: str, config: dict | None, key: str, ctx: Context) -> dict:
    out = dict(UPDATE_DEFAULTS)
    config = config or {}
    if "parallelism" in config:
        out["max_parallel"] = config["parallelism"] or 10000  # swarm's 0: all at once
    if "monitor" in config:
        out["min_healthy_time"] = duration(config["monitor"], service, f"deploy.{key}.monitor", ctx)
    if "failure_action" in config:
        if config["failure_action"] == "continue":
            ctx.unsupported(service, f"deploy.{key}.failure_action", "continue: not supported, a failed update stops")
        out["auto_revert"] = key == "update_config" and config["failure_action"] == "rollback"
    if "order" in config:
        out["order"] = config["order"]
    for unsupported in ("delay", "max_failure_ratio"):
        if unsupported in config:
            ctx.unsupported(service, f"deploy.{key}.{unsupported}")
    return out


def _files(service: str, data: dict, ctx: Context) -> list[dict]:
    """secrets and configs: their contents go into the stack's files (read here, kept by the manager), each
    mounted read-only at its target."""
    out = []
    for section, base in (("secrets", "/run/secrets/"), ("configs", "/")):
        declared = ctx.top.get(section) or {}
        for index, entry in enumerate(data.get(section) or []):
            what = f"{section}[{index}]"
            source = entry if isinstance(entry, str) else entry.get("source")
            if not source or source not in declared:
                why = f"{section[:-1]} {source!r} is not declared under the top-level {section}"
                raise ctx.error(service, what, why)
            target = source if isinstance(entry, str) else entry.get("target") or source
            if not target.startswith("/"):
                target = base + target
            mode = SECRET_MODE if isinstance(entry, str) else entry.get("mode", SECRET_MODE)
            if isinstance(mode, str):
                try:
                    mode = int(mode, 8)
                except ValueError:
                    raise ctx.error(service, f"{what}.mode", f"{mode!r} is not an octal mode such as 0440") from None
            for key in ("uid", "gid"):
                if not isinstance(entry, str) and key in entry:
                    ctx.unsupported(service, f"{what}.{key}", "not supported (the file belongs to root)")
            key = f"{section}/{source}"
            if key not in ctx.files:
                ctx.files[key] = _contents(section, source, declared[source] or {}, ctx)
            out.append({"source": key, "target": target, "mode": mode})
    return out


def _contents(section: str, name: str, declared: dict, ctx: Context) -> bytes:
    where = f"{ctx.file_of(section, name)}: {section}.{name}"
    if declared.get("external"):
        raise InvalidSpec(
            f"{where}: external {section} are not supported (Cube keeps the contents itself): use file: PATH"
        )
    if "content" in declared:
        return str(declared["content"]).encode()
    if "environment" in declared:
        variable = declared["environment"]
        if variable not in ctx.environ:
            raise InvalidSpec(f"{where}.environment: the variable {variable} is not set")
        return ctx.environ[variable].encode()
    if not declared.get("file"):
        raise InvalidSpec(f"{where}: needs file: PATH (or environment: VARIABLE)")
    path = ctx.path(declared["file"])
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise InvalidSpec(f"{where}.file: {path} does not exist") from None
    except OSError as error:
        raise InvalidSpec(f"{where}.file: {path} cannot be read: {error.strerror}") from None


def _check(service: str, task: dict, ctx: Context) -> None:
    """The task dict through Cube's own validation, so that an error names the service. The keys the manager's
    newer spec adds (health in exec form, files, a port's mode) are left out of this check."""
    today = {key: value for key, value in task.items() if key not in ("health", "files")}
    if "ports" in today:
        today["ports"] = [{k: v for k, v in port.items() if k != "mode"} for port in today["ports"]]
    try:
        spec.TaskSpec.from_dict(today)
    except InvalidSpec as error:
        field_name = error.message.split(" ", 1)[0].split("[", 1)[0].split(".", 1)[0].rstrip(":")
        raise InvalidSpec(
            f"{ctx.file_of('services', service, _COMPOSE_FIELD.get(field_name, field_name))}: services.{service}: "
            f"{error.message}"
        ) from None


_COMPOSE_FIELD = {"env": "environment", "workdir": "working_dir", "network": "network_mode"}
