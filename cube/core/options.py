"""A task's hardware, privileges, process and network options (issue 11): devices passed in, privileged mode,
capabilities added or dropped, namespaced sysctls, host networking, and how the container's process runs (hostname,
user, working directory, entrypoint, stop signal and grace, init, /dev/shm size, read-only root). This module decides
what each accepts and what it means when left out; `TaskSpec.from_dict` calls `parse` and `TaskSpec.to_dict` calls
`to_dict`. Every error names the field. No I/O: whether a device exists on a node is the scheduler's question
(`Node.devices`) and then the engine's.

Left out, an option is its Docker default and is not written by `to_dict`: a task that uses none of them is sent
and stored as before, and a worker too old to know an option refuses the task that asks for it (an unknown field)
instead of running it without.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cube.core.errors import InvalidSpec
from cube.core.spec import MAX_ARGS, MAX_PATH, MAX_SHORT, MAX_TEXT, Port, arguments, kind_of, parse_size, shown, text

NETWORKS = ("host",)  # and "" (or "bridge"): Docker's default bridge, with published ports
MAX_DEVICES = 64
MAX_SYSCTLS = 64
MAX_STOP_TIMEOUT = 3600.0  # a stop waits this long on one of the worker's stop threads

# Linux capabilities (include/uapi/linux/capability.h, 0-40 as of Linux 5.9), without the CAP_ prefix Docker drops.
CAPABILITIES = frozenset(
    "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE NET_BIND_SERVICE "
    "NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO SYS_CHROOT SYS_PTRACE SYS_PACCT "
    "SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP "
    "MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF CHECKPOINT_RESTORE".split()
)

# Linux signal names as Docker parses them (moby/sys/signal, SignalMap on Linux), without the SIG prefix.
SIGNALS = {
    "HUP": 1,
    "INT": 2,
    "QUIT": 3,
    "ILL": 4,
    "TRAP": 5,
    "ABRT": 6,
    "IOT": 6,
    "BUS": 7,
    "FPE": 8,
    "KILL": 9,
    "USR1": 10,
    "SEGV": 11,
    "USR2": 12,
    "PIPE": 13,
    "ALRM": 14,
    "TERM": 15,
    "STKFLT": 16,
    "CHLD": 17,
    "CLD": 17,
    "CONT": 18,
    "STOP": 19,
    "TSTP": 20,
    "TTIN": 21,
    "TTOU": 22,
    "URG": 23,
    "XCPU": 24,
    "XFSZ": 25,
    "VTALRM": 26,
    "PROF": 27,
    "WINCH": 28,
    "IO": 29,
    "POLL": 29,
    "PWR": 30,
    "SYS": 31,
    "RTMIN": 34,
    **{f"RTMIN+{n}": 34 + n for n in range(1, 16)},
    **{f"RTMAX-{n}": 64 - n for n in range(1, 15)},
    "RTMAX": 64,
}

# The sysctls Docker lets a container set: those of the namespaces it owns (IPC, network), as Docker's
# `ValidateSysctl` has them; anything else would change the whole machine and Docker refuses it.
_IPC_SYSCTLS = frozenset(
    {"kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall", "kernel.shmmax"}
    | {"kernel.shmmni", "kernel.shm_rmid_forced"}
)
_SYSCTL_PREFIXES = ("net.", "fs.mqueue.")
_SYSCTL_KEY_RE = re.compile(r"[a-z0-9_]+(?:\.[A-Za-z0-9_-]+)+", re.ASCII)
_HOSTNAME_RE = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?", re.ASCII)  # a DNS label (RFC 1123)
_USER_PART = r"(?:[0-9]{1,10}|[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?)"  # a uid/gid, or a name as useradd takes one
_USER_RE = re.compile(rf"{_USER_PART}(?::{_USER_PART})?", re.ASCII)
_PERMISSIONS_RE = re.compile(r"(?!.*(.).*\1)[rwm]{1,3}", re.ASCII)  # r, w, m, each at most once


@dataclass(frozen=True)
class Device:
    """A host device passed into the container: `host` on the node, seen as `container` inside, with cgroup
    `permissions` (r read, w write, m mknod), as `docker run --device HOST[:CONTAINER[:PERMISSIONS]]`."""

    host: str
    container: str
    permissions: str = "rwm"

    @classmethod
    def parse(cls, value, what: str = "devices") -> "Device":
        """`/dev/ttyUSB0`, `/dev/ttyUSB0:/dev/zigbee`, `/dev/ttyUSB0:/dev/zigbee:rw`, or an object."""
        if isinstance(value, dict):
            unknown = sorted(set(value) - {"host", "container", "permissions"})
            if unknown:
                allowed = "allowed: container, host, permissions"
                raise InvalidSpec(f"unknown field in {what}: {', '.join(unknown)} ({allowed})")
            host, container, permissions = value.get("host"), value.get("container"), value.get("permissions")
        elif isinstance(value, str):
            parts = value.split(":")
            if len(parts) > 3:
                raise InvalidSpec(f"{what}: {shown(value)} is not HOST[:CONTAINER[:PERMISSIONS]] (e.g. /dev/ttyUSB0)")
            host, container, permissions = (parts + [None, None])[:3]
            if len(parts) == 2 and _PERMISSIONS_RE.fullmatch(parts[1]):  # docker's `/dev/ttyUSB0:rw`
                container, permissions = None, parts[1]
        else:
            raise InvalidSpec(f"{what} must be a list of paths such as /dev/ttyUSB0, not {kind_of(value)} entries")
        host_path = _dev_path(host, f"{what}: host path")
        container_path = _dev_path(container, f"{what}: container path") if container else host_path
        permissions = "rwm" if permissions in (None, "") else permissions
        if not isinstance(permissions, str) or not _PERMISSIONS_RE.fullmatch(permissions):
            raise InvalidSpec(
                f"{what}: permissions of {host_path} must be r, w and m (e.g. rwm), not {shown(permissions)}"
            )
        return cls(host_path, container_path, permissions)

    def to_dict(self) -> dict:
        return {"host": self.host, "container": self.container, "permissions": self.permissions}

    def __str__(self) -> str:
        return f"{self.host}:{self.container}:{self.permissions}"


def _dev_path(value, what: str) -> str:
    """An absolute path under /dev, without `..` (a device, not a way out of /dev) and without ':'."""
    path = text(value, what, MAX_PATH) if value is not None else ""
    if not path.startswith("/dev/") or path == "/dev/":
        raise InvalidSpec(f"{what} must be an absolute path under /dev, such as /dev/ttyUSB0, not {shown(value)}")
    if ".." in path.split("/") or any(c.isspace() for c in path):
        raise InvalidSpec(f"{what} must not hold '..' or spaces: {shown(path)}")
    return path


def _bool(data: dict, key: str) -> bool:
    value = data.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidSpec(f"{key} must be true or false, not {shown(value)}")
    return value


def _capabilities(data: dict, key: str) -> tuple[str, ...]:
    value = data.get(key) or ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise InvalidSpec(f'{key} must be a list of capabilities such as ["NET_ADMIN"], not {kind_of(value)}')
    found = set()
    for item in value:
        if not isinstance(item, str):
            raise InvalidSpec(f"{key} must list capability names, not {shown(item)}")
        name = item.strip().upper()
        name = name[4:] if name.startswith("CAP_") else name
        if name != "ALL" and name not in CAPABILITIES:
            raise InvalidSpec(
                f"{key}: {shown(item)} is not a Linux capability (e.g. NET_ADMIN, SYS_TIME or ALL; see capabilities(7))"
            )
        found.add(name)
    return tuple(sorted(found))


def _sysctls(value, network: str) -> tuple[tuple[str, str], ...]:
    if value in (None, "", (), []):
        return ()
    if isinstance(value, (list, tuple)):
        pairs = {}
        for item in value:
            if not isinstance(item, str) or "=" not in item:
                raise InvalidSpec(
                    f"sysctls entries must look like key=value (e.g. net.ipv4.ip_forward=1), not {shown(item)}"
                )
            key, _, setting = item.partition("=")
            pairs[key.strip()] = setting.strip()
        value = pairs
    if not isinstance(value, dict):
        raise InvalidSpec("sysctls must be an object of key: value, or a list of key=value")
    out = []
    for key, setting in value.items():
        if isinstance(setting, (int, float)) and not isinstance(setting, bool):
            setting = str(setting)
        if not isinstance(key, str) or not _SYSCTL_KEY_RE.fullmatch(key) or len(key) > MAX_SHORT:
            raise InvalidSpec(f"sysctls: {shown(key)} is not a sysctl name such as net.ipv4.ip_forward")
        if not (key.startswith(_SYSCTL_PREFIXES) or key in _IPC_SYSCTLS):
            raise InvalidSpec(
                f"sysctls: {key} is not namespaced, so a container may not set it (Docker allows net.*, fs.mqueue.* "
                f"and kernel.msg*, kernel.sem, kernel.shm*)"
            )
        if network == "host" and key.startswith("net."):
            raise InvalidSpec(f"sysctls: {key} would change the node's own network (network is host): leave it out")
        setting = text(setting, f"sysctls value of {key}", MAX_SHORT) if isinstance(setting, str) else setting
        if not isinstance(setting, str) or not setting.strip():
            raise InvalidSpec(f"sysctls value of {key} must be a non-empty string, not {shown(setting)}")
        out.append((key, setting))
    return tuple(sorted(out))


def _network(value) -> str:
    if value in (None, "", "bridge", "default"):
        return ""
    if value not in NETWORKS:
        raise InvalidSpec(f"network must be host (the node's own network) or bridge (the default), not {shown(value)}")
    return value


def _hostname(value) -> str:
    if value in (None, ""):
        return ""
    if not isinstance(value, str) or not _HOSTNAME_RE.fullmatch(value):
        raise InvalidSpec(f"hostname must be a DNS label: 1-63 letters, digits or '-', not {shown(value)}")
    return value


def _user(value) -> str:
    if value in (None, ""):
        return ""
    if not isinstance(value, str) or not _USER_RE.fullmatch(value):
        raise InvalidSpec(f"user must be UID[:GID] or NAME[:GROUP] (e.g. 1000:1000 or postgres), not {shown(value)}")
    for part in value.split(":"):
        if part.isdigit() and int(part) > 0xFFFFFFFE:
            raise InvalidSpec(f"user: {part} is not a uid or gid (at most 4294967294)")
    return value


def _workdir(value) -> str:
    if value in (None, ""):
        return ""
    path = text(value, "workdir", MAX_PATH)
    if not path.startswith("/"):
        raise InvalidSpec(f"workdir must be an absolute path such as /app, not {shown(value)}")
    if ".." in path.split("/"):
        raise InvalidSpec(f"workdir must not hold '..': {shown(path)}")
    return path


def stop_signal(value) -> str:
    """`SIGTERM`, `term`, `SIGRTMIN+3` or a number 1-64 → `SIGTERM`, `SIGRTMIN+3`, `10`; "" = the image's."""
    if value in (None, ""):
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str):
        if value.isdigit() and len(value) <= 2 and 1 <= int(value) <= 64:
            return str(int(value))
        name = value.strip().upper()
        name = name[3:] if name.startswith("SIG") else name
        if name in SIGNALS:
            return f"SIG{name}"
    raise InvalidSpec(
        f"stop_signal must be a signal name such as SIGTERM or SIGUSR1, or a number 1-64, not {shown(value)}"
    )


def _stop_timeout(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_STOP_TIMEOUT:
        raise InvalidSpec(
            f"stop_timeout must be a number of seconds from 0 to {MAX_STOP_TIMEOUT:g}, not {shown(value)}"
        )
    return float(value)


def parse(data: dict, ports: tuple[Port, ...], stored: bool) -> dict:
    """The options of a task spec's JSON object `data`, as TaskSpec's keyword arguments. `ports`: the spec's,
    already parsed (host networking publishes nothing: a container port is the node's port). With `stored`, the
    size limits are not applied (see `cube.core.spec`)."""
    devices = data.get("devices") or ()
    if isinstance(devices, (str, dict)):
        devices = [devices]
    if not isinstance(devices, (list, tuple)):
        raise InvalidSpec(f"devices must be a list of paths such as /dev/ttyUSB0, not {kind_of(devices)}")
    parsed_devices = tuple(Device.parse(item) for item in devices)
    inside = [d.container for d in parsed_devices]
    if len(set(inside)) != len(inside):
        raise InvalidSpec("devices lists the same container path twice")
    cap_add, cap_drop = _capabilities(data, "cap_add"), _capabilities(data, "cap_drop")
    both = sorted(set(cap_add) & set(cap_drop))
    if both:
        raise InvalidSpec(f"cap_add and cap_drop both list {', '.join(both)}: keep it in one of them")
    network = _network(data.get("network"))
    if network == "host":
        for port in ports:
            if port.host and port.host != port.container:
                raise InvalidSpec(
                    f"ports: with network host the container's port is the node's port: {port.host}:{port.container} "
                    f"cannot be mapped (use {port.container}, or a bridge network)"
                )
    options = {
        "devices": parsed_devices,
        "privileged": _bool(data, "privileged"),
        "cap_add": cap_add,
        "cap_drop": cap_drop,
        "sysctls": _sysctls(data.get("sysctls"), network),
        "network": network,
        "hostname": _hostname(data.get("hostname")),
        "user": _user(data.get("user")),
        "workdir": _workdir(data.get("workdir")),
        "entrypoint": arguments(data.get("entrypoint"), "entrypoint", '["/bin/sh", "-c"]'),
        "stop_signal": stop_signal(data.get("stop_signal")),
        "stop_timeout": _stop_timeout(data.get("stop_timeout")),
        "init": _bool(data, "init"),
        "shm_size": parse_size(data.get("shm_size") or 0, "shm_size"),
        "read_only": _bool(data, "read_only"),
    }
    if not stored:
        _check_limits(options)
    return options


def _check_limits(options: dict) -> None:
    """The sizes a request may ask for (README, Limits)."""
    for what, most in (("devices", MAX_DEVICES), ("sysctls", MAX_SYSCTLS), ("entrypoint", MAX_ARGS)):
        if len(options[what]) > most:
            raise InvalidSpec(f"{what} has {len(options[what]):,} entries: at most {most} are accepted")
    size = sum(len(argument) for argument in options["entrypoint"])
    if size > MAX_TEXT:
        raise InvalidSpec(f"entrypoint is {size:,} characters long: at most {MAX_TEXT:,} are accepted")


def to_dict(spec) -> dict:
    """The options of `spec` that are not their defaults, as JSON (see the module's docstring)."""
    out: dict = {}
    if spec.devices:
        out["devices"] = [device.to_dict() for device in spec.devices]
    for key in ("privileged", "init", "read_only", "network", "hostname", "user", "workdir", "stop_signal"):
        if getattr(spec, key):
            out[key] = getattr(spec, key)
    for key in ("cap_add", "cap_drop", "entrypoint"):
        if getattr(spec, key):
            out[key] = list(getattr(spec, key))
    if spec.sysctls:
        out["sysctls"] = dict(spec.sysctls)
    if spec.stop_timeout is not None:
        out["stop_timeout"] = spec.stop_timeout
    if spec.shm_size:
        out["shm_size"] = spec.shm_size
    return out
