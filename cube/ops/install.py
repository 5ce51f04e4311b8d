"""`cube install` and `cube uninstall`: how a node gets Cube as a systemd service. This module decides where
things live — the pyz at /usr/local/bin/cube, the units in /etc/systemd/system, settings and the worker's token in
/etc/cube/cube.env (mode 0600), data in /var/lib/cube (the units' StateDirectory, where shiv also unpacks the
pyz) — and what the services may do. The unit and environment file texts are written here once: the pyz carries
them, and systemd/ in the repository holds the same bytes (a test compares them).

Every path and every systemctl call goes through a `Host`: the real machine, or a directory standing for its root,
where tests install and uninstall for real — files, modes, `systemctl --root=DIR enable` — without touching the
machine. Running install twice changes nothing the second time; a changed pyz restarts the services that run it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field

from cube.cluster.config import MANAGER_PORT, TOKEN_FILE, WORKER_PORT
from cube.core.errors import CubeError
from cube.ops.zipapp import interpreter_arch

ROLES = ("worker", "manager")
PYZ = "/usr/local/bin/cube"
PYTHON = "/usr/bin/python3"
ENV_FILE = "/etc/cube/cube.env"
UNIT_DIR = "/etc/systemd/system"
STATE_DIR = "/var/lib/cube"
SHIV_ROOT = STATE_DIR + "/.shiv"
DOCKER_SOCKETS = ("/run/docker.sock", "/var/run/docker.sock")
ARGS = {"worker": "CUBE_WORKER_ARGS", "manager": "CUBE_MANAGER_ARGS"}

_UNIT = """\
# {unit}.service: written by `cube install {role}`. Settings live in {env_file}.
[Unit]
Description={description}
After={after}
Wants={after}

[Service]
Type=exec
Environment=CUBE_DATA=%S/cube SHIV_ROOT=%S/cube/.shiv
EnvironmentFile=-{env_file}
# -I: only the pyz's packages and the standard library, whatever the host has installed
ExecStart={python} -I {pyz} {role} ${args}
Restart=on-failure
RestartSec=3
# `cube upgrade`: a service that replaced its pyz exits 75 to be started again on the new one.
RestartForceExitStatus=75
SuccessExitStatus=75
TimeoutStopSec=30
StateDirectory=cube
StateDirectoryMode=0700
UMask=0077

# Hardening. {why}
NoNewPrivileges=yes
CapabilityBoundingSet=
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM
# `cube upgrade` renames a new pyz over {pyz} (keeping the old one as {pyz}.old).
ReadWritePaths={pyz_dir}
{extra}
[Install]
WantedBy=multi-user.target
"""

_ROLE_UNIT = {
    "worker": dict(
        description="Cube worker: runs the cluster's containers on this node",
        after="network-online.target docker.service",
        why=(
            "The worker only asks the Docker engine, over /run/docker.sock, to do\n"
            "# the privileged work: it needs no capability, writes only its state directory, and a socket on a\n"
            "# read-only file system still accepts connections."
        ),
        extra="",
    ),
    "manager": dict(
        description="Cube manager: schedules the cluster's work onto its workers",
        after="network-online.target",
        why=(
            "The manager only talks HTTP and mDNS and writes its state directory;\n"
            "# it has no business with the Docker engine of the node it runs on."
        ),
        extra="InaccessiblePaths=-/run/docker.sock\n",
    ),
}

ENV_TEMPLATE = f"""\
# {ENV_FILE}: settings of the cube-worker and cube-manager services, read by systemd.
# Mode 0600: it holds the cluster token. `cube install` writes it and keeps what is already here unless told
# otherwise; after editing, `sudo systemctl restart cube-worker` (or cube-manager).

# The cluster token: workers present it, the manager requires it. Without one here the manager makes one at its
# first start and keeps it in {STATE_DIR}/manager/{TOKEN_FILE}: copy that value here on every worker (a worker
# on the manager's own node finds it by itself).
CUBE_TOKEN=

# Flags of `cube worker` (see `cube worker --help`), split at spaces: port, manager address (without one the worker
# finds the manager by mDNS), labels for placement constraints, node name, capacity offered to the scheduler.
# Example: --port {WORKER_PORT} --manager https://192.168.1.10:{MANAGER_PORT} --label room=attic --memory 3g
{ARGS["worker"]}="--port {WORKER_PORT}"

# Flags of `cube manager` (see `cube manager --help`): port, scheduler, and static workers for networks
# without multicast. Example: --port {MANAGER_PORT} --scheduler epvm --workers 192.168.1.21:{WORKER_PORT}
# Either service: --metrics-open lets a Prometheus without the token scrape GET /metrics.
{ARGS["manager"]}="--port {MANAGER_PORT}"
"""


def unit_name(role: str) -> str:
    return f"cube-{_role(role)}.service"


def unit_text(role: str) -> str:
    """The systemd unit of a role, exactly as install writes it (and as systemd/ holds it)."""
    return _UNIT.format(
        unit=f"cube-{_role(role)}",
        role=role,
        env_file=ENV_FILE,
        python=PYTHON,
        pyz=PYZ,
        pyz_dir=os.path.dirname(PYZ),
        args=ARGS[role],
        **_ROLE_UNIT[role],
    )


def write_examples(directory: str) -> list[str]:
    """Write the units and the example environment file into `directory` (the repository's systemd/)."""
    os.makedirs(directory, exist_ok=True)
    files = {unit_name(role): unit_text(role) for role in ROLES}
    files["cube.env"] = ENV_TEMPLATE
    for name, text in files.items():
        with open(os.path.join(directory, name), "w", encoding="utf-8") as handle:
            handle.write(text)
    return sorted(files)


# -- the machine -----------------------------------------------------------------------------------------------


@dataclass
class Host:
    """Where install acts: `root` is the machine's root directory ("/" for real). On another root, systemctl is
    only asked to enable or disable units there (`systemctl --root=DIR`): no daemon, nothing starts — unless
    `live` says otherwise, which tests use with a `run` that records the commands instead of running them."""

    root: str = "/"
    euid: int = field(default_factory=os.geteuid)
    run: Callable[[list[str]], subprocess.CompletedProcess] | None = None
    live: bool | None = None
    settle: float = 3.0  # how long a started service must stay up before install calls it running
    wait: float = 10.0  # how long to wait for a new manager's token, for the join hint

    def __post_init__(self):
        self.root = os.path.abspath(self.root)
        if self.live is None:
            self.live = os.path.realpath(self.root) == "/"

    def path(self, absolute: str) -> str:
        return os.path.join(self.root, absolute.lstrip("/"))

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.command(["systemctl"] + ([] if self.live else [f"--root={self.root}"]) + list(args), check)

    def command(self, command: list[str], check: bool = True) -> subprocess.CompletedProcess:
        if self.run is not None:
            return self.run(command)
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise CubeError(f"{' '.join(command)} failed: {error}") from None
        if check and done.returncode != 0:
            raise CubeError(f"{' '.join(command)} failed: {(done.stderr or done.stdout).strip()}")
        return done


def preflight(role: str, host: Host, docker: bool = True) -> None:
    """Refuse early, with the fix, when install cannot work here."""
    if host.euid != 0:
        raise CubeError(
            f"installing a system service needs root: run it with sudo (sudo ./cube.pyz install {role} ...)"
        )
    if not os.path.isdir(host.path("/run/systemd/system")):
        raise CubeError(
            f"systemd is not running on this machine (no /run/systemd/system), and `cube install` "
            f"sets up systemd services: start `cube {role}` from your own service manager instead"
        )
    if docker and role == "worker" and not any(_is_socket(host.path(p)) for p in DOCKER_SOCKETS):
        raise CubeError(
            "Docker is not installed or not running (no /run/docker.sock), and a worker runs its tasks "
            "on it: `sudo apt install docker.io` (Raspberry Pi OS too), "
            "`sudo systemctl enable --now docker`, then install again"
        )


def _role(role: str) -> str:
    if role not in ROLES:
        raise CubeError(f"install what? say `worker` or `manager`, not {role!r}")
    return role


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


# -- the pyz ---------------------------------------------------------------------------------------------------


def running_pyz() -> str:
    """The cube.pyz this process runs from (install copies it), or a CubeError saying how to get one."""
    path = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if path and build_id(path):
        return path
    raise CubeError(
        "`cube install` copies the cube.pyz it runs from, and this cube does not run from one: "
        "run `sudo ./cube.pyz install ...` (./build.sh makes dist/cube-<version>-<arch>.pyz)"
    )


def build_id(path: str) -> str | None:
    """The shiv build id of a pyz (it names the directory the pyz unpacks into), or None if `path` is no pyz."""
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("environment.json"))["build_id"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def pyz_arch(path: str) -> str | None:
    """The architecture a pyz was built for, from the preamble build.sh writes into it (None if unknown)."""
    try:
        with zipfile.ZipFile(path) as archive:
            preamble = archive.read("site-packages/bin/cube_preamble.py").decode()
    except (OSError, KeyError, zipfile.BadZipFile):
        return None
    match = re.search(r'arch="([\w-]+)"', preamble)
    return match.group(1) if match else None


def prune_extractions(directory: str, keep: str | None) -> list[str]:
    """Remove what older pyz versions unpacked under SHIV_ROOT (each upgrade adds one), keeping `keep`."""
    name = os.path.basename(PYZ)
    removed: list[str] = []
    try:
        entries = sorted(os.listdir(directory))
    except OSError:
        return removed
    for entry in entries:
        bare = entry.lstrip(".").removesuffix("_lock").removesuffix(".tmp")
        if not bare.startswith(name + "_") or (keep and bare == f"{name}_{keep}"):
            continue
        path = os.path.join(directory, entry)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
        removed.append(entry)
    return removed


# -- files -----------------------------------------------------------------------------------------------------


def write_file(path: str, data: bytes, mode: int) -> bool:
    """Write atomically with `mode`; False (and nothing touched) when the file already is exactly that."""
    try:
        with open(path, "rb") as handle:
            same = handle.read() == data
        if same and stat.S_IMODE(os.stat(path).st_mode) == mode:
            return False
    except OSError:
        pass
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.cube-tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, mode)  # the umask may have taken bits away
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return True


def read_env(text: str) -> dict[str, str]:
    """KEY=VALUE lines as systemd reads them (comments skipped, one level of quotes removed)."""
    values = {}
    for line in text.splitlines():
        match = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if not match or line.lstrip().startswith("#"):
            continue
        value = match.group(2).strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
            if match.group(2).strip()[0] == '"':
                value = re.sub(r'\\(["\\$`])', r"\1", value)
        values[match.group(1)] = value
    return values


def update_env(text: str, values: dict[str, str]) -> str:
    """`text` with each KEY=... line of `values` replaced in place (or appended): comments and any other
    settings a person added stay as they are."""
    lines = text.splitlines()
    for key, value in values.items():
        line = f"{key}={_quote(value)}"
        for i, existing in enumerate(lines):
            if re.match(rf"\s*{key}=", existing):
                lines[i] = line
                break
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


def _quote(value: str) -> str:
    if "\n" in value:
        raise CubeError("a setting cannot span lines")
    if re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]*", value):
        return value
    return '"' + re.sub(r'(["\\$`])', r"\\\1", value) + '"'


def role_args(
    role: str, port=None, manager=None, labels=(), name=None, workers=(), scheduler=None, mdns: bool = True
) -> str | None:
    """The service's command-line flags from install's options, or None when none was given (keep the old ones).
    systemd splits them at spaces, so no value may hold one."""
    given = port is not None or manager or labels or name or workers or scheduler or not mdns
    if not given:
        return None
    default_port = WORKER_PORT if role == "worker" else MANAGER_PORT
    args = ["--port", str(int(port if port is not None else default_port))]
    if role == "worker":
        if manager:
            args += ["--manager", str(manager)]
        if name:
            args += ["--name", str(name)]
        for label in labels:
            if "=" not in str(label):
                raise CubeError(f"--label takes key=value, not {label!r}")
            args += ["--label", str(label)]
    else:
        if workers:
            args += ["--workers", ",".join(str(w) for w in workers)]
        if scheduler:
            args += ["--scheduler", str(scheduler)]
    if not mdns:
        args.append("--no-mdns")
    for arg in args:
        if not arg or re.search(r"[\s\"'\\$`]", arg):
            raise CubeError(f"{arg!r}: values in the service's flags cannot hold spaces, quotes, $ or backslashes")
    return " ".join(args)


# -- install and uninstall -------------------------------------------------------------------------------------


def install(
    role: str, pyz: str | None = None, token: str | None = None, args: str | None = None, host: Host | None = None
) -> list[str]:
    """Install (or update) a role's service; returns what was done, one line each, for the user."""
    host = host or Host()
    _role(role)
    preflight(role, host)
    if not os.path.exists(host.path(PYTHON)):
        raise CubeError(f"the service runs {PYTHON}, which this machine lacks: `sudo apt install python3`")
    if token is not None and (not str(token).strip() or re.search(r"\s", str(token))):
        raise CubeError("--token cannot be empty or hold spaces")
    if role == "worker" and not (
        token
        or read_env(_read(host.path(ENV_FILE))).get("CUBE_TOKEN")
        or os.path.exists(host.path(f"{STATE_DIR}/manager/{TOKEN_FILE}"))
    ):
        raise CubeError("the worker needs the join token: pass --token (on the manager: sudo cube token)")
    source = pyz or running_pyz()
    if not build_id(source):
        raise CubeError(f"{source} is not a cube.pyz")
    built, machine = pyz_arch(source), interpreter_arch(host.path(PYTHON))
    if built and machine and built != machine:
        raise CubeError(
            f"{source} is the {built} build, and this machine's {PYTHON} runs {machine} programs: "
            f"install cube-<version>-{machine}.pyz instead (./build.sh all makes it)"
        )
    with open(source, "rb") as handle:
        binary = handle.read()
    fresh = not _installed(role, host)
    done: list[str] = []
    new_binary = write_file(host.path(PYZ), binary, 0o755)
    done.append(f"{'copied ' + source + ' to' if new_binary else 'kept'} {PYZ}")
    changed = new_binary
    unit = unit_name(role)
    wrote = write_file(host.path(f"{UNIT_DIR}/{unit}"), unit_text(role).encode(), 0o644)
    changed |= wrote
    done.append(f"{'wrote' if wrote else 'kept'} {UNIT_DIR}/{unit}")
    changed |= _install_env(role, token, args, host, done)
    if role == "manager" and token:
        changed |= _install_manager_token(str(token), host, done)
    if host.live:
        host.systemctl("daemon-reload")
    host.systemctl("enable", unit)
    if host.live:
        # A new pyz is the binary of every cube service on this node: restart them all onto it.
        restart = [unit] + ([unit_name(r) for r in ROLES if r != role and _installed(r, host)] if new_binary else [])
        for name in restart:
            if changed:
                host.systemctl("restart", name)
            else:
                host.systemctl("start", name)
        _check_running(restart, host, restarted=changed)
        done.append(
            f"{'started' if fresh else 'restarted' if changed else 'running'} {' '.join(restart)} "
            f"(systemctl status {unit}; journalctl -u {unit} -f)"
        )
    else:
        done.append(f"enabled {unit}")
    prune_extractions(host.path(SHIV_ROOT), build_id(host.path(PYZ)))
    if role == "manager":
        done.extend(_join_hint(args, host, host.wait if host.live else 0))
    return done


def _install_env(role: str, token: str | None, args: str | None, host: Host, done: list[str]) -> bool:
    path = host.path(ENV_FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        text = ENV_TEMPLATE
    current = read_env(text)
    values = {}
    if token:  # both services read it; the manager prefers it to the token file it keeps
        values["CUBE_TOKEN"] = str(token)
    if args is not None or ARGS[role] not in current:
        values[ARGS[role]] = args if args is not None else read_env(ENV_TEMPLATE)[ARGS[role]]
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    wrote = write_file(path, update_env(text, values).encode(), 0o600)
    done.append(f"{'wrote' if wrote else 'kept'} {ENV_FILE} (mode 0600)")
    return wrote


def _install_manager_token(token: str, host: Host, done: list[str]) -> bool:
    """The manager's own copy, where `cube token` and a worker on this node look for it."""
    path = host.path(f"{STATE_DIR}/manager/{TOKEN_FILE}")
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    wrote = write_file(path, (token + "\n").encode(), 0o600)
    done.append(f"{'wrote' if wrote else 'kept'} the manager's token in {STATE_DIR}/manager/{TOKEN_FILE}")
    return wrote


def _check_running(units: list[str], host: Host, restarted: bool) -> None:
    """A service that dies at once (no token, port taken) restarts forever: say so now, with its last words.
    NRestarts counts automatic restarts since the last start by hand, so it says something only after one."""
    time.sleep(host.settle if restarted else 0)
    for unit in units:
        state = host.systemctl("show", "-p", "ActiveState", "-p", "NRestarts", unit, check=False).stdout or ""
        fields = dict(line.split("=", 1) for line in state.splitlines() if "=" in line)
        if fields.get("ActiveState") != "active" or (restarted and fields.get("NRestarts", "0") != "0"):
            log = (
                host.command(["journalctl", "-u", unit, "-n", "15", "--no-pager", "-o", "cat"], check=False).stdout
                or ""
            ).strip()
            raise CubeError(
                f"{unit} does not stay up ({fields.get('ActiveState', 'unknown')}); its last lines:\n"
                f"{log}\nfix, then run install again (journalctl -u {unit} for more)"
            )


def _join_hint(args: str | None, host: Host, wait: float) -> list[str]:
    """How workers join: the manager's address and its join token (made at the manager's first start)."""
    from cube.cluster.config import local_join_token
    from cube.cluster.trust import member_files

    directory = host.path(f"{STATE_DIR}/manager")
    path, ca_path = os.path.join(directory, TOKEN_FILE), member_files(directory)[0]
    deadline = time.monotonic() + wait
    while not (os.path.exists(path) and os.path.exists(ca_path)) and time.monotonic() < deadline:
        time.sleep(0.2)
    token = local_join_token(directory)
    if not token:
        return ["the manager makes its join token when it starts: `sudo cube token` prints it"]
    current = read_env(_read(host.path(ENV_FILE)))
    match = re.search(r"--port\s+(\d+)", args or current.get(ARGS["manager"], ""))
    port = match.group(1) if match else MANAGER_PORT
    return [
        f"workers join with: sudo ./cube.pyz install worker --manager https://{socket.gethostname()}:{port} "
        f"--token {token}"
    ]


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError:
        return ""


def _installed(role: str, host: Host) -> bool:
    return os.path.exists(host.path(f"{UNIT_DIR}/{unit_name(role)}"))


def uninstall(role: str, purge: bool = False, host: Host | None = None) -> list[str]:
    """Stop and remove a role's service. Data and settings stay unless `purge`; the pyz and what it unpacked go
    with the last role."""
    host = host or Host()
    _role(role)
    preflight(role, host, docker=False)
    unit = unit_name(role)
    done: list[str] = []
    if _installed(role, host):
        if host.live:
            host.systemctl("disable", "--now", unit)
        else:
            host.systemctl("disable", unit)
        os.unlink(host.path(f"{UNIT_DIR}/{unit}"))
        if host.live:
            host.systemctl("daemon-reload")
        done.append(f"stopped and removed {unit}")
    else:
        done.append(f"{unit} is not installed")
    last = not any(_installed(r, host) for r in ROLES)
    if purge:
        _remove(host.path(f"{STATE_DIR}/{role}"), done)
    if last:
        _remove(host.path(PYZ), done)
        _remove(host.path(PYZ + ".old"), done)  # what `cube upgrade` kept for a manual rollback
        _remove(host.path(SHIV_ROOT), done)
        if purge:
            _remove(host.path(ENV_FILE), done)
            for directory in (os.path.dirname(ENV_FILE), STATE_DIR):
                if os.path.isdir(host.path(directory)) and not os.listdir(host.path(directory)):
                    os.rmdir(host.path(directory))
    if not purge:
        done.append(f"kept {ENV_FILE} and {STATE_DIR}/{role} (uninstall --purge removes them)")
    return done


def _remove(path: str, done: list[str]) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)
    else:
        return
    done.append(f"removed {path}")
