"""What a user asks for, validated: task specs (image, command, env, ports, resources, restart policy, health
check, disconnect policy, labels, constraints) and jobs. This module decides what is valid input and what every
field means when left out; each error names the field and says what would be right. No I/O, no clock.

Two sets of rules. Every value must have its type, be printable text (no control characters, no lone surrogates)
and hold finite numbers in range: a record that breaks those is corrupt, wherever it comes from. A request (the
API, the CLI) must also follow the user-facing rules: names are DNS labels, images follow Docker's reference
grammar, and every field has a size limit (`LIMITS`, listed in the README). Records read back (`stored=True`: the
store, an assignment from the manager) are not held to those, so that what an older Cube accepted still loads.
"""

from __future__ import annotations

import math
import posixpath
import re
import reprlib
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cube.core.errors import InvalidSpec
from cube.core.units import format_size, parse_duration  # noqa: F401 (theirs to import from here too)

if TYPE_CHECKING:
    from cube.core.options import Device

RESTART_POLICIES = ("no", "on-failure", "always")
MAX_CPU = 1024.0
MAX_BYTES = 1 << 50  # 1 PiB: anything above is a typo, not a machine
MAX_WHOLE = (1 << 63) - 1  # counters and generations: what every store and JSON peer keeps exactly as an integer

# Per-field limits of a request. A task's view is sent in every task list: with one 10 MB env value accepted,
# GET /tasks grew to 13.9 MB. Docker's own: a repository name of at most 255 characters, a tag of at most 128.
MAX_IMAGE_NAME = 255
MAX_IMAGE = 600  # name, ':' tag (128) and '@' digest (sha512: 135)
MAX_NAME = 63  # a DNS label (RFC 1123)
MAX_JOB_NAME = MAX_NAME - len("-10000")  # its tasks are named NAME-1 ... NAME-10000
MAX_ARGS = 256
MAX_ENV = 256
MAX_LABELS = 64
MAX_PORTS = 100
MAX_CONSTRAINTS = 32
MAX_TEXT = 64 * 1024  # the command's arguments all told; the env's names and values all told; one string
MAX_SHORT = 255  # an env name, a label key, a constraint
MAX_LABEL_VALUE = 1024
MAX_PATH = 1024  # health.path
MAX_VOLUMES = 32  # mounts of one task: volumes, binds and tmpfs together

_NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)  # a DNS label
_LEGACY_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}", re.ASCII)  # names before 0.3: still load
_TASK_ID_RE = re.compile(r"[A-Za-z0-9]{1,32}", re.ASCII)
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", re.IGNORECASE | re.ASCII)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
# Not printable: C0 and C1 controls, DEL, and lone surrogates (JSON's "\ud800" decodes to one; printing it raises).
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# Text that may span lines (command arguments, env values: a script, a PEM certificate) may hold tab, LF and CR.
_UNPRINTABLE_IN_LINES = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")

# Docker's image reference grammar (github.com/distribution/reference, regexp.go), written out here:
#   reference := name [ ":" tag ] [ "@" digest ];  name := [domain "/"] path-component ["/" path-component]*
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE_RE = re.compile(
    rf"(?P<name>(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)(?::(?P<tag>{_TAG}))?(?:@{_DIGEST})?",
    re.ASCII,
)
_CONSTRAINT_RE = re.compile(r"[\w./-]+\s*(==|!=|=)\s*[\w./:-]+")
_IMAGE_ID_RE = re.compile(r"[a-f0-9]{64}", re.ASCII)  # Docker refuses a name that reads as an image id


class _Shown(reprlib.Repr):
    """repr for error messages: short, and safe on any JSON value (repr of an int of 4,300+ digits raises)."""

    def __init__(self):
        super().__init__()
        self.maxstring = self.maxother = 60
        self.maxlevel = 3

    def repr_int(self, x, level):
        if x.bit_length() > 64:
            return f"<a number of {x.bit_length()} bits>"
        return super().repr_int(x, level)


shown = _Shown().repr


def kind_of(value) -> str:
    """A JSON value's kind, as a user reads it."""
    if value is None:
        return "null"
    names = {bool: "true/false", int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}
    return names.get(type(value), type(value).__name__)


def text(value, what: str, limit: int | None = None, lines: bool = False) -> str:
    """A string of printable characters (with `lines`, also tab, LF and CR), of at most `limit` characters."""
    if not isinstance(value, str):
        raise InvalidSpec(f"{what} must be a string, not {kind_of(value)}")
    if limit is not None and len(value) > limit:
        raise InvalidSpec(f"{what} is {len(value):,} characters long: at most {limit:,} are accepted")
    bad = (_UNPRINTABLE_IN_LINES if lines else _UNPRINTABLE).search(value)
    if bad:
        char = bad.group()
        what_char = "a lone surrogate" if "\ud800" <= char <= "\udfff" else "a control character"
        raise InvalidSpec(f"{what} must be printable text: it holds {what_char} (U+{ord(char):04X}) at {bad.start()}")
    return value


def task_id(value) -> str:
    """A task id a client chooses: 1-32 ASCII letters and digits (it names containers and URLs)."""
    if not isinstance(value, str) or not _TASK_ID_RE.fullmatch(value):
        raise InvalidSpec(f"id must be 1-32 letters and digits, not {shown(value)}")
    return value


def image_reference(value) -> str:
    """An image as Docker's reference grammar has it: [HOST[:PORT]/]PATH[:TAG][@DIGEST]."""
    example = "e.g. nginx, nginx:1.25 or registry.lan:5000/team/app:v2"
    reference = text(value, "image", MAX_IMAGE)
    match = _REFERENCE_RE.fullmatch(reference)
    if match is None:
        path = reference.split("@", 1)[0].rsplit("/", 1)[-1].split(":", 1)[0]
        if any(c.isspace() for c in reference):
            why = "it holds a space"
        elif path != path.lower():
            why = "repository names are lowercase"
        elif reference.count(":") > 1 and "/" not in reference:
            why = "one ':' separates the tag"
        else:
            why = "use letters, digits and . _ - in names, and a tag of at most 128 of them"
        raise InvalidSpec(f"image {shown(reference)} is not a valid image reference: {why} ({example})")
    if len(match.group("name")) > MAX_IMAGE_NAME:
        raise InvalidSpec(f"image name is {len(match.group('name'))} characters long: at most {MAX_IMAGE_NAME}")
    if _IMAGE_ID_RE.fullmatch(match.group("name")):
        raise InvalidSpec("image name must not be 64 hex digits (that is an image id): add a tag, or a registry")
    return reference


def arguments(value, what: str, example: str) -> tuple[str, ...]:
    """A command line as a list of strings (a string is split on spaces), each printable text that may span lines."""
    value = value or ()
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
        raise InvalidSpec(f"{what} must be a list of strings, e.g. {example}")
    for index, argument in enumerate(value):
        text(argument, f"{what}[{index}]", lines=True)
    return tuple(value)


def parse_size(value, what: str = "size") -> int:
    """`256m`, `1g`, `1.5G`, `512MiB` or plain bytes → bytes."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidSpec(f"{what} must be a size such as 256m, 1g or a number of bytes, not {shown(value)}")
    if isinstance(value, str):
        match = _SIZE_RE.fullmatch(value) if len(value) <= 40 else None
        if not match:
            raise InvalidSpec(f"{what} must be a size such as 256m, 1g or a number of bytes, not {shown(value)}")
        number: float = float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    else:
        number = value
    if not 0 <= number <= MAX_BYTES:  # NaN fails it too
        raise InvalidSpec(f"{what} must be between 0 and 1 PiB, not {shown(value)}")
    return int(number)


@dataclass(frozen=True)
class Port:
    """A container port, and how it is published: `ingress` (the default for a port with a host port: published on
    every node by the routing mesh, cube.worker.mesh, and unique in the cluster) or `host` (Docker's own binding on
    the task's node; the only mode of a port without a host port, whose number Docker picks)."""

    container: int
    host: int | None = None  # None: Docker picks a free one and the worker reports it back
    protocol: str = "tcp"
    mode: str = ""  # "ingress" or "host"; "" (from the constructor): the default for the port, see `ingress`

    @property
    def key(self) -> str:
        return f"{self.container}/{self.protocol}"

    @property
    def ingress(self) -> bool:
        return bool(self.host) and self.mode != "host"

    @classmethod
    def parse(cls, value) -> "Port":
        """`8080`, `8080:80` (host:container, as docker -p), `80/udp`, `8080:80/host`, `8080:80/udp/host`, or a
        dict (with `mode`)."""
        if isinstance(value, Port):
            return value
        if isinstance(value, dict):
            _only(value, {"container", "host", "protocol", "mode"}, "port")
            if "container" not in value:
                raise InvalidSpec("port needs a 'container' port number")
            return cls._made(
                _port_number(value["container"], "container port"),
                None if value.get("host") in (None, 0) else _port_number(value["host"], "host port"),
                _protocol(value.get("protocol", "tcp")),
                value.get("mode") or "",
            )
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(_port_number(value, "container port"))
        if not isinstance(value, str) or len(value) > 28:
            raise InvalidSpec(f"port must be a number, 'host:container' or an object, not {shown(value)}")
        text, *tail = value.strip().split("/")
        protocol = next((t for t in tail if t not in PORT_MODES), "tcp")
        mode = next((t for t in tail if t in PORT_MODES), "")
        if len(tail) > 2:
            raise InvalidSpec(f"port {shown(value)}: at most a protocol and a mode after the number (8080:80/udp/host)")
        if ":" in text:
            host, container = text.split(":", 1)
            number = _port_number(container, "container port")
            return cls._made(number, _port_number(host, "host port"), _protocol(protocol), mode)
        return cls._made(_port_number(text, "container port"), None, _protocol(protocol), mode)

    @classmethod
    def _made(cls, container: int, host: int | None, protocol: str, mode) -> "Port":
        if mode not in ("", *PORT_MODES):
            raise InvalidSpec(f"port mode must be ingress or host, not {shown(mode)}")
        if mode == "ingress" and not host:
            raise InvalidSpec(f"port {container}/{protocol}: an ingress port needs a host port (8080:{container})")
        return cls(container, host, protocol, "host" if host and mode == "host" else "")

    def to_dict(self) -> dict:
        data: dict = {"container": self.container, "host": self.host, "protocol": self.protocol}
        if self.host and self.mode == "host":  # the default (ingress) is left out: older records read the same
            data["mode"] = "host"
        return data


PORT_MODES = ("ingress", "host")


def _port_number(value, what: str) -> int:
    if isinstance(value, str) and re.fullmatch(r"\s*\d{1,6}\s*", value, re.ASCII):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSpec(f"{what} must be a number from 1 to 65535, not {shown(value)}")
    number = value
    if not 1 <= number <= 65535:
        raise InvalidSpec(f"{what} must be from 1 to 65535, not {shown(number)}")
    return number


def _protocol(value) -> str:
    if value not in ("tcp", "udp"):
        raise InvalidSpec(f"port protocol must be tcp or udp, not {shown(value)}")
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
            raise InvalidSpec(f"unknown restart policy {shown(name)}: use one of {', '.join(RESTART_POLICIES)}")
        max_restarts = value.get("max_restarts", 3)
        if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or not 0 <= max_restarts <= 1000:
            raise InvalidSpec(f"restart.max_restarts must be a whole number from 0 to 1000, not {shown(max_restarts)}")
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


HEALTH_FORMS = ("CMD", "CMD-SHELL")


@dataclass(frozen=True)
class HealthCheck:
    """How a task shows it is healthy. Two kinds: an HTTP GET of `path` on a container port (`port`; None: the
    task's first), probed by the manager (the book's); or a `command` run inside the container by its engine
    (Docker's HEALTHCHECK, compose's `healthcheck.test`: `("CMD", arg, ...)` or `("CMD-SHELL", "line")`), which
    the worker reads back as the container's health. Either way `retries` failures in a row make it unhealthy,
    and failures during the first `start_period` seconds do not count (Docker's rules)."""

    path: str = "/"
    port: int | None = None  # container port; None: the task's first port
    interval: float = 10.0
    timeout: float = 2.0
    command: tuple[str, ...] = ()
    retries: int = 3
    start_period: float = 0.0

    @classmethod
    def parse(cls, value) -> "HealthCheck | None":
        if value is None or isinstance(value, HealthCheck):
            return value
        if isinstance(value, str):
            value = {"path": value}
        if not isinstance(value, dict):
            raise InvalidSpec(
                "health must be a path such as /health or an object with path (or command), port, interval, timeout"
            )
        _only(value, {"path", "port", "interval", "timeout", "command", "retries", "start_period"}, "health")
        command = _health_command(value.get("command"))
        if command and ("path" in value or "port" in value):
            raise InvalidSpec("health has a command and a path: pick one (a command runs inside the container)")
        path = value.get("path", "/")
        if not isinstance(path, str) or not path.startswith("/") or any(c.isspace() for c in path):
            raise InvalidSpec(f"health.path must start with '/' and hold no spaces, not {shown(path)}")
        text(path, "health.path")
        port = value.get("port")
        retries = value.get("retries", 3)
        if isinstance(retries, bool) or not isinstance(retries, int) or not 1 <= retries <= 100:
            raise InvalidSpec(f"health.retries must be a whole number from 1 to 100, not {shown(retries)}")
        return cls(
            path,
            None if port is None else _port_number(port, "health.port"),
            _number(value.get("interval", 10.0), "health.interval", 0.1, 86400),
            _number(value.get("timeout", 2.0), "health.timeout", 0.05, 3600),
            command,
            retries,
            _number(value.get("start_period", 0.0), "health.start_period", 0, 86400),
        )

    @property
    def in_container(self) -> bool:
        return bool(self.command)

    def to_dict(self) -> dict:
        if not self.command:  # the book's form, as older Cubes know it
            return {"path": self.path, "port": self.port, "interval": self.interval, "timeout": self.timeout}
        return {
            "command": list(self.command),
            "interval": self.interval,
            "timeout": self.timeout,
            "retries": self.retries,
            "start_period": self.start_period,
        }


def _health_command(value) -> tuple[str, ...]:
    """`["CMD", "pg_isready"]`, `["CMD-SHELL", "curl -f localhost"]`, or a line (run by the container's shell)."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = ["CMD-SHELL", value]
    command = arguments(value, "health.command", '["CMD-SHELL", "wget -q -O- http://127.0.0.1/"]')
    if len(command) < 2 or command[0] not in HEALTH_FORMS:
        raise InvalidSpec(
            f"health.command must start with CMD or CMD-SHELL and name what to run, not {shown(list(command))}"
        )
    if command[0] == "CMD-SHELL" and len(command) != 2:
        raise InvalidSpec('health.command: CMD-SHELL takes one line, e.g. ["CMD-SHELL", "pg_isready || exit 1"]')
    return command


# ---- mounts: named volumes, bind mounts, tmpfs ------------------------------------------------------------------

MOUNT_TYPES = ("volume", "bind", "tmpfs")
_VOLUME_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+", re.ASCII)  # Docker's rule for a volume name
# Host paths that hand a task the machine itself when bound whole: the root, the Docker socket (the engine is
# root), the host's configuration, kernel interfaces, devices, the boot files, and the directories that hold the
# socket or the engine's data. Refused unless the spec says `allow_host_root: true` (`--allow-host-root`).
HOST_ROOTS = frozenset(
    {
        "/",
        "/var/run/docker.sock",
        "/run/docker.sock",
        "/etc",
        "/proc",
        "/sys",
        "/dev",
        "/boot",
        "/run",
        "/var/run",
        "/var/lib/docker",
    }
)


@dataclass(frozen=True)
class Mount:
    """One mount of a task's container. `volume`: a named volume (`source` is its name), which lives on one node
    and is never deleted implicitly; `bind`: a host path (`source`), which must exist on the node; `tmpfs`: memory,
    of at most `size` bytes (0: Docker's default, half the node's memory)."""

    type: str
    target: str
    source: str = ""
    read_only: bool = False
    size: int = 0

    @classmethod
    def parse(cls, value, what: str, stored: bool = False) -> "Mount":
        """`NAME:/path[:ro]` (a named volume), `/host/path:/path[:ro]` (a bind mount), or an object with type,
        source, target, read_only and size."""
        if isinstance(value, Mount):
            return value
        if isinstance(value, str):
            text(value, what, MAX_PATH * 2 + 4)
            parts = value.split(":")
            if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
                raise InvalidSpec(
                    f"{what} must look like NAME:/path or /host/path:/path, with :ro to mount it read-only "
                    f"(e.g. pgdata:/var/lib/postgresql/data), not {shown(value)}"
                )
            source, target = parts[0], parts[1]
            kind = "bind" if source.startswith("/") else "volume"
            read_only = len(parts) == 3 and parts[2] == "ro"
            return cls._checked(kind, source, target, read_only, 0, what, stored)
        if not isinstance(value, dict):
            raise InvalidSpec(f"{what} must be a string such as pgdata:/data or an object, not {kind_of(value)}")
        _only(value, {"type", "source", "target", "read_only", "size"}, what)
        source = value.get("source") or ""
        if not isinstance(source, str):
            raise InvalidSpec(f"{what}.source must be a string, not {kind_of(source)}")
        kind = value.get("type") or ("bind" if source.startswith("/") else "volume")
        if kind not in MOUNT_TYPES:
            raise InvalidSpec(f"{what}.type must be one of {', '.join(MOUNT_TYPES)}, not {shown(kind)}")
        read_only = value.get("read_only", False)
        if not isinstance(read_only, bool):
            raise InvalidSpec(f"{what}.read_only must be true or false, not {shown(read_only)}")
        size = parse_size(value.get("size") or 0, f"{what}.size")
        return cls._checked(kind, source, value.get("target"), read_only, size, what, stored)

    @classmethod
    def parse_tmpfs(cls, value, what: str) -> "Mount":
        """`/path` or `/path:size=64m` (as `docker run --tmpfs`)."""
        if not isinstance(value, str):
            return cls.parse(value, what)
        target, _, options = text(value, what, MAX_PATH + 40).partition(":")
        size = 0
        if options:
            key, _, number = options.partition("=")
            if key != "size" or not number:
                raise InvalidSpec(f"{what} must look like /path or /path:size=64m, not {shown(value)}")
            size = parse_size(number, f"{what} size")
        return cls._checked("tmpfs", "", target, False, size, what, False)

    @classmethod
    def _checked(cls, kind, source, target, read_only, size, what, stored) -> "Mount":
        if target is None or target == "":
            raise InvalidSpec(f"{what} needs a target: the absolute path inside the container")
        target = _mount_path(target, f"{what} target", stored)
        if not stored and target == "/":
            raise InvalidSpec(f"{what} target cannot be / (the container's own root)")
        if kind == "tmpfs":
            if source:
                raise InvalidSpec(f"{what}: a tmpfs has no source, only a target (and a size)")
        elif not source:
            raise InvalidSpec(f"{what} needs a source: a volume name, or an absolute host path")
        elif kind == "bind":
            source = _mount_path(source, f"{what} source", stored)
        else:
            text(source, f"{what} source", MAX_SHORT)
            if not stored and not is_volume_name(source):
                raise InvalidSpec(
                    f"{what}: volume name {shown(source)} must be 2-{MAX_SHORT} letters, digits or . _ -, starting "
                    f"with a letter or digit (or an absolute host path, for a bind mount)"
                )
        if size and kind != "tmpfs":
            raise InvalidSpec(f"{what}: size is a tmpfs's (a volume or a bind mount has the size of its disk)")
        return cls(kind, target, source, read_only, size)

    def to_dict(self) -> dict:
        return {
            "type": self.type,
            "source": self.source,
            "target": self.target,
            "read_only": self.read_only,
            "size": self.size,
        }

    def __str__(self) -> str:
        if self.type == "tmpfs":
            return f"tmpfs:{self.target}" + (f":size={format_size(self.size)}" if self.size else "")
        return f"{self.source}:{self.target}" + (":ro" if self.read_only else "")


def is_volume_name(value) -> bool:
    """Whether `value` is a volume name Docker takes (a route's path segment is checked with it before any engine
    sees it)."""
    return isinstance(value, str) and len(value) <= MAX_SHORT and _VOLUME_NAME_RE.fullmatch(value) is not None


def _mount_path(value, what: str, stored: bool) -> str:
    """An absolute path without '..' (a request's; a stored one is only checked for its type and text)."""
    path = text(value, what, MAX_PATH)
    if stored:
        return path
    if not path.startswith("/"):
        raise InvalidSpec(f"{what} must be an absolute path (starting with /), not {shown(path)}")
    if ".." in path.split("/"):
        raise InvalidSpec(f"{what} must not contain '..': give the path itself, not {shown(path)}")
    if any(c.isspace() and c != " " for c in path) or ":" in path:
        raise InvalidSpec(f"{what} must not hold ':' or line breaks, not {shown(path)}")
    path = posixpath.normpath(path)
    return "/" + path.lstrip("/")  # normpath keeps a leading '//'


_FILE_SOURCE_RE = re.compile(r"(secrets|configs)/[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}", re.ASCII)
MAX_FILES = 64
MAX_FILE_BYTES = 512 * 1024  # a secret or config: Swarm's limit is 500 KB


@dataclass(frozen=True)
class FileMount:
    """A file the manager keeps for a stack (a compose secret or config: `source` is `secrets/NAME` or
    `configs/NAME`), mounted read-only at `target` in the task's container with `mode`. The worker is handed its
    content with the assignment and keeps it in its private directory while the task is there."""

    source: str
    target: str
    mode: int = 0o444

    @classmethod
    def parse(cls, value, what: str, stored: bool) -> "FileMount":
        if not isinstance(value, dict):
            raise InvalidSpec(f"{what} must be an object with source, target and mode, not {shown(value)}")
        _only(value, {"source", "target", "mode"}, what)
        source = value.get("source")
        if not isinstance(source, str) or not _FILE_SOURCE_RE.fullmatch(source):
            raise InvalidSpec(f"{what}.source must be secrets/NAME or configs/NAME, not {shown(source)}")
        mode = value.get("mode", 0o444)
        if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
            raise InvalidSpec(f"{what}.mode must be a file mode from 0 to 0o777 (511), not {shown(mode)}")
        return cls(source, _mount_path(value.get("target"), f"{what}.target", stored), mode)

    def to_dict(self) -> dict:
        return {"source": self.source, "target": self.target, "mode": self.mode}


def _files(value, stored: bool) -> tuple[FileMount, ...]:
    if not value:
        return ()
    if not isinstance(value, (list, tuple)) or len(value) > MAX_FILES:
        raise InvalidSpec(f"files must be a list of at most {MAX_FILES} objects (source, target, mode)")
    files = tuple(FileMount.parse(item, f"files[{i}]", stored) for i, item in enumerate(value))
    targets = [f.target for f in files]
    twice = next((t for t in targets if targets.count(t) > 1), None)
    if twice:
        raise InvalidSpec(f"files: {twice} is the target of two files")
    return files


def _mounts(data: dict, stored: bool) -> tuple[Mount, ...]:
    """A spec's `volumes` (and, in a request, `tmpfs`, which joins them), checked together: no target twice, no
    host root without `allow_host_root`."""
    volumes = data.get("volumes") or ()
    if isinstance(volumes, (str, dict)):
        volumes = [volumes]
    if not isinstance(volumes, (list, tuple)):
        raise InvalidSpec('volumes must be a list such as ["pgdata:/var/lib/postgresql/data", "/srv/media:/media:ro"]')
    tmpfs = data.get("tmpfs") or ()
    if isinstance(tmpfs, str):
        tmpfs = [tmpfs]
    if not isinstance(tmpfs, (list, tuple)):
        raise InvalidSpec('tmpfs must be a list such as ["/run:size=64m"]')
    if not stored and len(volumes) + len(tmpfs) > MAX_VOLUMES:
        raise InvalidSpec(f"volumes and tmpfs hold {len(volumes) + len(tmpfs):,} mounts: at most {MAX_VOLUMES}")
    mounts = [Mount.parse(v, f"volumes[{i}]", stored) for i, v in enumerate(volumes)]
    mounts += [Mount.parse_tmpfs(v, f"tmpfs[{i}]") for i, v in enumerate(tmpfs)]
    targets = [m.target for m in mounts]
    twice = sorted({t for t in targets if targets.count(t) > 1})
    if twice:
        raise InvalidSpec(f"volumes mount {twice[0]} twice: one mount per container path")
    allow = data.get("allow_host_root", False)
    if not isinstance(allow, bool):
        raise InvalidSpec(f"allow_host_root must be true or false, not {shown(allow)}")
    if not stored and not allow:
        for index, mount in enumerate(mounts):
            if mount.type == "bind" and mount.source in HOST_ROOTS:
                raise InvalidSpec(
                    f"volumes[{index}]: a bind mount of {mount.source} hands the task the host itself; it is "
                    f"refused unless the spec says allow_host_root: true (cube run --allow-host-root)"
                )
    return tuple(mounts)


def _number(value, what: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidSpec(f"{what} must be a number, not {shown(value)}")
    if not low <= value <= high:  # NaN and infinities fail it too; `:g` of a huge int would raise
        raise InvalidSpec(f"{what} must be between {low:g} and {high:g}, not {shown(value)}")
    return float(value)


def timestamp(value, what: str) -> float:
    """A time in seconds (the epoch's, or a test's clock): a finite number."""
    return _number(value, what, -1e13, 1e13)


def _only(data: dict, allowed: set[str], what: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise InvalidSpec(
            f"unknown field{'s' if len(unknown) > 1 else ''} in {what}: {', '.join(unknown)} "
            f"(allowed: {', '.join(sorted(allowed))})"
        )


def _constraint(value) -> str:
    if not isinstance(value, str) or len(value) > MAX_SHORT or not _CONSTRAINT_RE.fullmatch(value):
        raise InvalidSpec(f"constraint must look like key=value or key!=value (e.g. arch=aarch64), not {shown(value)}")
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
    # Named volumes, bind mounts and tmpfs (see `Mount`); a bind of the host's root, socket or system directories
    # only with `allow_host_root`.
    volumes: tuple[Mount, ...] = ()
    allow_host_root: bool = False
    # Hardware, privileges, process and network (cube.core.options: what each accepts; left out, Docker's default).
    devices: tuple[Device, ...] = ()
    privileged: bool = False
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    sysctls: tuple[tuple[str, str], ...] = ()
    network: str = ""  # "" the bridge, or "host"
    hostname: str = ""
    user: str = ""
    workdir: str = ""
    entrypoint: tuple[str, ...] = ()
    stop_signal: str = ""
    stop_timeout: float | None = None  # seconds; None: the node's (`cube worker --stop-timeout`)
    init: bool = False
    shm_size: int = 0  # bytes; 0: Docker's 64 MiB
    read_only: bool = False
    files: tuple[FileMount, ...] = ()

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
        "volumes",
        "tmpfs",  # a request's tmpfs mounts: kept among the volumes
        "allow_host_root",
        "files",
        "devices",
        "privileged",
        "cap_add",
        "cap_drop",
        "sysctls",
        "network",
        "hostname",
        "user",
        "workdir",
        "entrypoint",
        "stop_signal",
        "stop_timeout",
        "init",
        "shm_size",
        "read_only",
    )

    @classmethod
    def from_dict(cls, data, stored: bool = False) -> "TaskSpec":
        """A spec from a request, held to every rule; with `stored`, a record read back (see the module's docstring:
        types, printable text and numbers are checked, names, image grammar and sizes are not)."""
        from cube.core import options  # it builds on this module's rules (text, sizes, ports)

        if not isinstance(data, dict):
            raise InvalidSpec(f"a task spec must be a JSON object, not {kind_of(data)}")
        _only(data, set(cls.FIELDS), "task spec")
        image = data.get("image")
        if image is None or image == "":
            raise InvalidSpec("image is required: a name such as nginx or nginx:1.25")
        if stored:
            if any(c.isspace() for c in text(image, "image")):
                raise InvalidSpec(f"image {shown(image)} is not a valid image reference: it holds a space")
        else:
            image_reference(image)
        name = data.get("name") or ""
        if name:
            _name(name, "name", stored, MAX_NAME)
        command = arguments(data.get("command"), "command", '["sleep", "3600"]')
        env = data.get("env") or {}
        if isinstance(env, (list, tuple)):
            env = dict(_env_pair(item) for item in env)
        if not isinstance(env, dict):
            raise InvalidSpec("env must be an object of NAME: value, or a list of NAME=value")
        env_pairs = tuple(sorted(_env_entry(k, v) for k, v in env.items()))
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
        for key, value in labels.items():
            text(key, "label name")
            text(value, f"label {key}")
        constraints = data.get("constraints") or ()
        if isinstance(constraints, str):
            constraints = [constraints]
        if not isinstance(constraints, (list, tuple)):
            raise InvalidSpec('constraints must be a list such as ["arch=aarch64"]')
        health = HealthCheck.parse(data.get("health"))
        if health and not health.in_container and health.port is None and not parsed_ports:
            raise InvalidSpec("a health check needs a port: add ports, or set health.port")
        if health and health.port is not None and health.port not in {p.container for p in parsed_ports}:
            raise InvalidSpec(f"health.port {health.port} is not one of the task's container ports")
        on_disconnect = data.get("on_disconnect") or ""
        if on_disconnect not in ("", *DISCONNECT_POLICIES):
            raise InvalidSpec(f"on_disconnect must be stop or keep, not {shown(on_disconnect)}")
        spec = cls(
            image=image,
            name=name,
            command=command,
            env=env_pairs,
            ports=parsed_ports,
            cpu=cpu,
            memory=parse_size(data.get("memory", 0) or 0, "memory"),
            disk=parse_size(data.get("disk", 0) or 0, "disk"),
            restart=RestartPolicy.parse(data.get("restart")),
            health=health,
            labels=tuple(sorted(labels.items())),
            constraints=tuple(_constraint(c) for c in constraints),
            on_disconnect=on_disconnect,
            volumes=_mounts(data, stored),
            allow_host_root=bool(data.get("allow_host_root", False)),
            files=_files(data.get("files"), stored),
            **options.parse(data, parsed_ports, stored),
        )
        if not stored:
            _check_limits(spec)
        return spec

    def to_dict(self) -> dict:
        from cube.core import options

        data = {
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
            **options.to_dict(self),
        }
        # Only when set: a worker of an older Cube refuses a spec with fields it does not know, and every task
        # without mounts must still run there.
        if self.volumes:
            data["volumes"] = [m.to_dict() for m in self.volumes]
        if self.allow_host_root:
            data["allow_host_root"] = True
        if self.files:
            data["files"] = [f.to_dict() for f in self.files]
        return data

    @property
    def named_volumes(self) -> tuple[str, ...]:
        """The names of the named volumes the task mounts, in order, each once."""
        return tuple(dict.fromkeys(m.source for m in self.volumes if m.type == "volume"))

    @property
    def disconnect(self) -> str:
        """The disconnect policy in force: the one asked for, else stop for fixed host ports (ingress ones too: a
        published service is one copy unless said otherwise), else keep."""
        if self.on_disconnect:
            return self.on_disconnect
        return "stop" if self.fixed_host_ports or self.ingress_ports else "keep"

    @property
    def fixed_host_ports(self) -> list[tuple[int, str]]:
        """The (port, protocol) this task takes on its node whichever copy runs there: the fixed host ports, and
        with host networking every port (the container's port is the node's)."""
        if self.network == "host":
            return [(p.host or p.container, p.protocol) for p in self.ports]
        return [(p.host, p.protocol) for p in self.ports if p.host and not p.ingress]

    @property
    def ingress_ports(self) -> list[Port]:
        """The ports the routing mesh publishes on every node (none with host networking: its ports are the node's)."""
        return [] if self.network == "host" else [p for p in self.ports if p.ingress]

    @property
    def health_port(self) -> Port | None:
        """The port the manager probes; None when there is no HTTP health check."""
        if not self.health or self.health.in_container:
            return None
        if self.health.port is None:
            return self.ports[0]
        return next(p for p in self.ports if p.container == self.health.port)


def _env_pair(item) -> tuple[str, str]:
    if not isinstance(item, str) or "=" not in item or item.startswith("="):
        raise InvalidSpec(f"env entries must look like NAME=value, not {shown(item)}")
    key, value = item.split("=", 1)
    return key, value


def _env_entry(key, value) -> tuple[str, str]:
    """One env variable: a name without '=' or spaces; a value of printable text, which may span lines (a
    script, a certificate). A number or true/false is taken as its text, as before."""
    if not isinstance(key, str) or not key or "=" in key or any(c.isspace() for c in key):
        raise InvalidSpec(f"env names must be non-empty, without '=' or spaces, not {shown(key)}")
    text(key, "env name")
    if isinstance(value, int) and value.bit_length() > 64 or isinstance(value, float) and not math.isfinite(value):
        raise InvalidSpec(f"env value of {key} must be a string, not {shown(value)}")
    if not isinstance(value, (str, int, float)):  # bool is an int
        raise InvalidSpec(f"env value of {key} must be a string, not {kind_of(value)}")
    return key, text(str(value), f"env value of {key}", lines=True)


def _name(value, what: str, stored: bool, longest: int) -> str:
    """A task or job name: a DNS label (it names containers and appears in host names); a name read back may
    follow the rule before Cube 0.3 (letters of either case, digits, '.', '_', '-')."""
    if isinstance(value, str) and len(value) <= longest and (_LEGACY_NAME_RE if stored else _NAME_RE).fullmatch(value):
        return value
    raise InvalidSpec(
        f"{what} must be 1-{longest} lowercase letters, digits or '-', starting and ending with a letter or digit "
        f"(a DNS label), not {shown(value)}"
    )


def _check_limits(spec: TaskSpec) -> None:
    """The sizes a request may ask for (README, Limits)."""
    counted = (
        ("command", spec.command, MAX_ARGS, "arguments"),
        ("env", spec.env, MAX_ENV, "variables"),
        ("ports", spec.ports, MAX_PORTS, "ports"),
        ("labels", spec.labels, MAX_LABELS, "labels"),
        ("constraints", spec.constraints, MAX_CONSTRAINTS, "constraints"),
    )
    for what, items, most, unit in counted:
        if len(items) > most:
            raise InvalidSpec(f"{what} has {len(items):,} {unit}: at most {most} are accepted")
    sized = (
        ("command", sum(len(a) for a in spec.command), MAX_TEXT),
        ("env", sum(len(k) + len(v) for k, v in spec.env), MAX_TEXT),
        ("an env name", max((len(k) for k, _ in spec.env), default=0), MAX_SHORT),
        ("a label name", max((len(k) for k, _ in spec.labels), default=0), MAX_SHORT),
        ("a label value", max((len(v) for _, v in spec.labels), default=0), MAX_LABEL_VALUE),
        ("health.path", len(spec.health.path) if spec.health else 0, MAX_PATH),
    )
    for what, size, most in sized:
        if size > most:
            raise InvalidSpec(f"{what} is {size:,} characters long: at most {most:,} are accepted")


def new_id() -> str:
    return uuid.uuid4().hex[:12]
