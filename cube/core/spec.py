"""What a user asks for, validated: task specs (image, command, env, ports, resources, restart policy, health
check, disconnect policy, labels, constraints) and jobs. This module decides what is valid input and what every
field means when left out; each error names the field and says what would be right. No I/O, no clock.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from cube.core.errors import InvalidSpec

RESTART_POLICIES = ("no", "on-failure", "always")
MAX_CPU = 1024.0
MAX_BYTES = 1 << 50  # 1 PiB: anything above is a typo, not a machine
_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(value, what: str = "size") -> int:
    """`256m`, `1g`, `1.5G`, `512MiB` or plain bytes → bytes."""
    if isinstance(value, bool):
        raise InvalidSpec(f"{what} must be a size such as 256m, 1g or a number of bytes, not {value!r}")
    if isinstance(value, (int, float)):
        number = value
    else:
        match = _SIZE_RE.match(str(value))
        if not match:
            raise InvalidSpec(f"{what} must be a size such as 256m, 1g or a number of bytes, not {value!r}")
        number = float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    if number < 0 or number > MAX_BYTES:
        raise InvalidSpec(f"{what} must be between 0 and 1 PiB, not {value!r}")
    return int(number)


def format_size(n: int | float) -> str:
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" or n >= 100 else f"{n:.1f} {unit}".replace(".0 ", " ")
        n /= 1024
    return f"{n} B"


@dataclass(frozen=True)
class Port:
    container: int
    host: int | None = None  # None: Docker picks a free one and the worker reports it back
    protocol: str = "tcp"

    @property
    def key(self) -> str:
        return f"{self.container}/{self.protocol}"

    @classmethod
    def parse(cls, value) -> "Port":
        """`8080`, `8080:80` (host:container, as docker -p), `80/udp`, or a dict."""
        if isinstance(value, Port):
            return value
        if isinstance(value, dict):
            _only(value, {"container", "host", "protocol"}, "port")
            if "container" not in value:
                raise InvalidSpec("port needs a 'container' port number")
            return cls(
                _port_number(value["container"], "container port"),
                None if value.get("host") in (None, 0) else _port_number(value["host"], "host port"),
                _protocol(value.get("protocol", "tcp")),
            )
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise InvalidSpec(f"port must be a number, 'host:container' or an object, not {value!r}")
        text = str(value).strip()
        protocol = "tcp"
        if "/" in text:
            text, protocol = text.split("/", 1)
        if ":" in text:
            host, container = text.split(":", 1)
            return cls(_port_number(container, "container port"), _port_number(host, "host port"), _protocol(protocol))
        return cls(_port_number(text, "container port"), None, _protocol(protocol))

    def to_dict(self) -> dict:
        return {"container": self.container, "host": self.host, "protocol": self.protocol}


def _port_number(value, what: str) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        raise InvalidSpec(f"{what} must be a number from 1 to 65535, not {value!r}") from None
    if not 1 <= number <= 65535:
        raise InvalidSpec(f"{what} must be from 1 to 65535, not {number}")
    return number


def _protocol(value) -> str:
    if value not in ("tcp", "udp"):
        raise InvalidSpec(f"port protocol must be tcp or udp, not {value!r}")
    return value


@dataclass(frozen=True)
class RestartPolicy:
    """How a node restarts a task's container on its own (Nomad's `restart` block, Docker's restart policies):
    at most `max_restarts` restarts within any `window` seconds, with a backoff that doubles from 1 s and is reset
    by a run of BACKOFF_RESET seconds (see cube.worker.restarts). A service whose node has used up its restarts is
    then rescheduled by the manager, with a delay, preferably elsewhere; a batch task fails."""

    name: str = "on-failure"
    max_restarts: int = 3
    window: float = 600.0  # seconds; Nomad's default interval is 30 min, Kubernetes resets after 10 min of run

    @classmethod
    def parse(cls, value) -> "RestartPolicy":
        if value is None:
            return cls()
        if isinstance(value, RestartPolicy):
            return value
        if isinstance(value, str):
            value = {"name": value}
        if not isinstance(value, dict):
            raise InvalidSpec(f"restart must be one of {', '.join(RESTART_POLICIES)} or an object")
        _only(value, {"name", "max_restarts", "window"}, "restart")
        name = value.get("name", "on-failure")
        if name not in RESTART_POLICIES:
            raise InvalidSpec(f"unknown restart policy {name!r}: use one of {', '.join(RESTART_POLICIES)}")
        max_restarts = value.get("max_restarts", 3)
        if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or not 0 <= max_restarts <= 1000:
            raise InvalidSpec(f"restart.max_restarts must be a whole number from 0 to 1000, not {max_restarts!r}")
        window = _number(value.get("window", 600.0), "restart.window", 1, 30 * 86400)
        return cls(name, max_restarts, window)

    def allows(self, exit_code: int | None, recent_restarts: int) -> bool:
        """Whether a container that ended with `exit_code`, after `recent_restarts` restarts within the window,
        gets another."""
        if self.name == "no" or recent_restarts >= self.max_restarts:
            return False
        return self.name == "always" or exit_code != 0

    def to_dict(self) -> dict:
        return {"name": self.name, "max_restarts": self.max_restarts, "window": self.window}


DISCONNECT_POLICIES = ("stop", "keep")


@dataclass(frozen=True)
class HealthCheck:
    path: str = "/"
    port: int | None = None  # container port; None: the task's first port
    interval: float = 10.0
    timeout: float = 2.0

    @classmethod
    def parse(cls, value) -> "HealthCheck | None":
        if value is None or isinstance(value, HealthCheck):
            return value
        if isinstance(value, str):
            value = {"path": value}
        if not isinstance(value, dict):
            raise InvalidSpec("health must be a path such as /health or an object with path, port, interval, timeout")
        _only(value, {"path", "port", "interval", "timeout"}, "health")
        path = value.get("path", "/")
        if not isinstance(path, str) or not path.startswith("/"):
            raise InvalidSpec(f"health.path must start with '/', not {path!r}")
        port = value.get("port")
        interval = _number(value.get("interval", 10.0), "health.interval", 0.1, 86400)
        timeout = _number(value.get("timeout", 2.0), "health.timeout", 0.05, 3600)
        return cls(path, None if port is None else _port_number(port, "health.port"), interval, timeout)

    def to_dict(self) -> dict:
        return {"path": self.path, "port": self.port, "interval": self.interval, "timeout": self.timeout}


def _number(value, what: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidSpec(f"{what} must be a number, not {value!r}")
    if not low <= value <= high:
        raise InvalidSpec(f"{what} must be between {low:g} and {high:g}, not {value:g}")
    return float(value)


def _only(data: dict, allowed: set[str], what: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise InvalidSpec(
            f"unknown field{'s' if len(unknown) > 1 else ''} in {what}: {', '.join(unknown)} "
            f"(allowed: {', '.join(sorted(allowed))})"
        )


def _constraint(value) -> str:
    if not isinstance(value, str) or not re.match(r"^[\w./-]+\s*(==|!=|=)\s*[\w./:-]+$", value):
        raise InvalidSpec(f"constraint must look like key=value or key!=value (e.g. arch=aarch64), not {value!r}")
    return re.sub(r"\s+", "", value)


@dataclass(frozen=True)
class TaskSpec:
    """What a user asks to run. Immutable; validated by `from_dict`."""

    image: str
    name: str = ""
    command: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    ports: tuple[Port, ...] = ()
    cpu: float = 0.0  # cores; 0 = no limit, nothing reserved
    memory: int = 0  # bytes; 0 = no limit, nothing reserved
    disk: int = 0  # bytes reserved on the node
    restart: RestartPolicy = RestartPolicy()
    health: HealthCheck | None = None
    labels: tuple[tuple[str, str], ...] = ()
    constraints: tuple[str, ...] = ()
    # What the node does with the task when it hears from no manager for its disconnect timeout: "stop" it (no two
    # copies can overlap once the manager moves it) or "keep" it running. "" = the default: stop for a task with a
    # fixed host port (its replacement elsewhere would serve the same address), keep for the others.
    on_disconnect: str = ""

    FIELDS = (
        "name",
        "image",
        "command",
        "env",
        "ports",
        "cpu",
        "memory",
        "disk",
        "restart",
        "health",
        "labels",
        "constraints",
        "on_disconnect",
    )

    @classmethod
    def from_dict(cls, data) -> "TaskSpec":
        if not isinstance(data, dict):
            raise InvalidSpec(f"a task spec must be a JSON object, not {type(data).__name__}")
        _only(data, set(cls.FIELDS), "task spec")
        image = data.get("image")
        if not image or not isinstance(image, str) or not image.strip() or any(c.isspace() for c in image):
            raise InvalidSpec("image is required: a name such as nginx or nginx:1.25")
        name = data.get("name") or ""
        if name and (not isinstance(name, str) or not _NAME_RE.match(name)):
            raise InvalidSpec(
                f"name must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit, not {name!r}"
            )
        command = data.get("command") or ()
        if isinstance(command, str):
            command = command.split()
        if not isinstance(command, (list, tuple)) or not all(isinstance(c, str) for c in command):
            raise InvalidSpec('command must be a list of strings, e.g. ["sleep", "3600"]')
        env = data.get("env") or {}
        if isinstance(env, (list, tuple)):
            env = dict(_env_pair(item) for item in env)
        if not isinstance(env, dict) or not all(isinstance(k, str) and k for k in env):
            raise InvalidSpec("env must be an object of NAME: value, or a list of NAME=value")
        ports = data.get("ports") or ()
        if not isinstance(ports, (list, tuple)):
            ports = [ports]
        parsed_ports = tuple(Port.parse(p) for p in ports)
        keys = [p.key for p in parsed_ports]
        if len(set(keys)) != len(keys):
            raise InvalidSpec("ports lists the same container port twice")
        hosts = [(p.host, p.protocol) for p in parsed_ports if p.host]
        if len(set(hosts)) != len(hosts):
            raise InvalidSpec("ports lists the same host port twice")
        cpu = _number(data.get("cpu", 0) or 0, "cpu", 0, MAX_CPU)
        labels = data.get("labels") or {}
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise InvalidSpec("labels must be an object of string: string")
        constraints = data.get("constraints") or ()
        if isinstance(constraints, str):
            constraints = [constraints]
        if not isinstance(constraints, (list, tuple)):
            raise InvalidSpec('constraints must be a list such as ["arch=aarch64"]')
        health = HealthCheck.parse(data.get("health"))
        if health and health.port is None and not parsed_ports:
            raise InvalidSpec("a health check needs a port: add ports, or set health.port")
        if health and health.port is not None and health.port not in {p.container for p in parsed_ports}:
            raise InvalidSpec(f"health.port {health.port} is not one of the task's container ports")
        on_disconnect = data.get("on_disconnect") or ""
        if on_disconnect not in ("", *DISCONNECT_POLICIES):
            raise InvalidSpec(f"on_disconnect must be stop or keep, not {on_disconnect!r}")
        return cls(
            image=image.strip(),
            name=name,
            command=tuple(command),
            env=tuple(sorted((k, str(v)) for k, v in env.items())),
            ports=parsed_ports,
            cpu=cpu,
            memory=parse_size(data.get("memory", 0) or 0, "memory"),
            disk=parse_size(data.get("disk", 0) or 0, "disk"),
            restart=RestartPolicy.parse(data.get("restart")),
            health=health,
            labels=tuple(sorted(labels.items())),
            constraints=tuple(_constraint(c) for c in constraints),
            on_disconnect=on_disconnect,
        )

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "image": self.image,
            "command": list(self.command),
            "env": dict(self.env),
            "ports": [p.to_dict() for p in self.ports],
            "cpu": self.cpu,
            "memory": self.memory,
            "disk": self.disk,
            "restart": self.restart.to_dict(),
            "health": self.health.to_dict() if self.health else None,
            "labels": dict(self.labels),
            "constraints": list(self.constraints),
            "on_disconnect": self.on_disconnect,
        }

    @property
    def disconnect(self) -> str:
        """The disconnect policy in force: the one asked for, else stop for fixed host ports, else keep."""
        if self.on_disconnect:
            return self.on_disconnect
        return "stop" if any(p.host for p in self.ports) else "keep"

    @property
    def health_port(self) -> Port | None:
        if not self.health:
            return None
        if self.health.port is None:
            return self.ports[0]
        return next(p for p in self.ports if p.container == self.health.port)


def _env_pair(item) -> tuple[str, str]:
    if not isinstance(item, str) or "=" not in item or item.startswith("="):
        raise InvalidSpec(f"env entries must look like NAME=value, not {item!r}")
    key, value = item.split("=", 1)
    return key, value


def new_id() -> str:
    return uuid.uuid4().hex[:12]


JOB_TYPES = ("service", "batch")


@dataclass
class Job:
    name: str
    spec: TaskSpec
    count: int = 1
    type: str = "service"
    created_at: float = 0.0
    stopped: bool = False

    @classmethod
    def from_dict(cls, data) -> "Job":
        if not isinstance(data, dict):
            raise InvalidSpec("a job must be a JSON object with name, task (a task spec), count and type")
        _only(data, {"name", "task", "spec", "count", "type", "created_at", "stopped"}, "job")
        name = data.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise InvalidSpec(f"job name is required: 1-63 letters, digits, '.', '_' or '-', not {name!r}")
        spec_data = data.get("task", data.get("spec"))
        if spec_data is None:
            raise InvalidSpec("job needs a task spec under 'task'")
        spec = TaskSpec.from_dict(spec_data)
        count = data.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= 10000:
            raise InvalidSpec(f"count must be a whole number from 0 to 10000, not {count!r}")
        kind = data.get("type", "service")
        if kind not in JOB_TYPES:
            raise InvalidSpec(f"job type must be service or batch, not {kind!r}")
        if kind == "batch" and spec.restart.name == "always":
            raise InvalidSpec("a batch job runs to completion: restart 'always' would never let it finish")
        return cls(name, spec, count, kind, float(data.get("created_at") or 0), bool(data.get("stopped")))

    @classmethod
    def from_request(cls, data) -> "Job":
        """A job as a client sends it: the fields the manager keeps (created_at, stopped) are not the client's."""
        if isinstance(data, dict):
            kept = sorted({"created_at", "stopped"} & set(data))
            if kept:
                raise InvalidSpec(f"{', '.join(kept)}: kept by the manager, not sent (stop a job with `cube stop`)")
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "task": self.spec.to_dict(),
            "count": self.count,
            "type": self.type,
            "created_at": self.created_at,
            "stopped": self.stopped,
        }
