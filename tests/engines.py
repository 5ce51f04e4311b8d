"""Test harness: a LAN of hosts that each run their own Docker engine, so a test can fail one node's engine or
network while the others, and the machine's own engine, carry on.

It decides how such a host is made on one machine. Each host is a namespace of `netns.Lan` (10.77.0.0/24, bridge
in a hub namespace, nothing in the root namespace) in which a containerd and a dockerd of the host's own run, with
data, exec root, sockets and cgroup parent all under names that carry the creating pid. The engines are faulted
the way real nodes fail: `stop_engine` is `systemctl stop docker`, `kill_engine` is `kill -9 dockerd` (containerd
stays up, as Debian's separate containerd.service does), `partition` pulls the host's cable. `close()` and the
next run's `clean_stale` remove every process, mount, cgroup, socket and directory a run made.

    with EngineLan(3, images=["cube-busybox:latest"]) as lan:
        lan.docker(lan.hosts[0], "run", "-d", "-p", "8080:80", "cube-busybox:latest", "httpd", "-f", "-h", "/www")
        port = lan.forward(lan.hosts[0], 8080)     # http://127.0.0.1:<port>/ from the test process

Why a containerd of our own per host: dockerd 20.10 uses the system's /run/containerd/containerd.sock whenever
that file exists (Debian's containerd.service makes it), so every engine would share one containerd; started
explicitly, each host's containerd is its own wherever the tests run.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass

import netns
import pytest

BASE = "/var/lib/cube-engines"  # one directory per run below it; the parent stays, other runs may be using it
START_TIMEOUT = 60.0  # a restart without live-restore first stops old containers: 10 s each that ignore SIGTERM
STOP_GRACE = 5.0  # between SIGTERM and SIGKILL at teardown, when nothing runs any more
SHIM_SOCKETS = "/run/containerd/s"  # containerd 1.6 puts every shim's socket here, whatever its own state dir
SUN_PATH_MAX = 107  # a unix socket path is 108 bytes with its NUL
CLONE_NEWNET = 0x40000000
MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class EngineHost(netns.Host):
    root: str  # everything of this host's engine lives below it
    cgroup_parent: str

    @property
    def docker_host(self) -> str:
        return f"unix://{self.root}/docker.sock"

    @property
    def netns_path(self) -> str:
        return f"/var/run/netns/{self.name}"

    @property
    def containerd_sock(self) -> str:
        return f"{self.root}/containerd.sock"


def available() -> str | None:
    """None when engines can be made here, else the reason they cannot (for a skip message)."""
    reason = netns.available()
    if reason:
        return reason
    for program in ("dockerd", "containerd", "nsenter", "docker"):
        if shutil.which(program) is None:
            return f"`{program}` is missing"
    return None


# ---- processes, mounts, cgroups: what a run leaves behind, found by its paths and names -----------------------


def _pids_mentioning(text: str) -> list[int]:
    """Processes whose command line contains `text`: given a host's root, its dockerd, containerd and shims."""
    needle = text.encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if needle in f.read():
                    found.append(int(entry))
        except OSError:
            pass
    return found


def _cgroup_mounts() -> list[str]:
    """Every cgroup hierarchy's mount point (v1 has one per controller, v2 one)."""
    with open("/proc/mounts") as f:
        return [fields[1] for fields in map(str.split, f) if fields[2] in ("cgroup", "cgroup2")]


def _cgroup_dirs(name: str) -> list[str]:
    """The cgroup `name` in every hierarchy that has it."""
    return [f"{mount}/{name}" for mount in _cgroup_mounts() if os.path.isdir(f"{mount}/{name}")]


def _cgroup_pids(name: str) -> set[int]:
    """Every process in the cgroup subtree `name`: the containers an engine ran there."""
    pids = set()
    for top in _cgroup_dirs(name):
        for dirpath, _, files in os.walk(top):
            if "cgroup.procs" in files:
                try:
                    with open(f"{dirpath}/cgroup.procs") as f:
                        pids.update(int(p) for p in f.read().split())
                except OSError:
                    pass
    return pids


def _alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a zombie holds no resources we wait for)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _kill_all(pids, deadline: float) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _wait_until(lambda: not any(_alive(p) for p in pids), deadline, "killed processes did not go away")


def _mounts_under(path: str) -> list[str]:
    prefix = path.rstrip("/") + "/"
    with open("/proc/mounts") as f:
        points = [line.split()[1] for line in f]
    # dockerd bind-mounts its data root onto itself (to make it shared), so the root itself counts too.
    return sorted({p for p in points if p == path.rstrip("/") or p.startswith(prefix)}, key=len, reverse=True)


def _unmount_under(path: str) -> None:
    """Lazily detach every mount below `path`, deepest first: overlay roots, container netns files, the bind of
    the data root. Lazy, because a process we could not see may still hold one."""
    for point in _mounts_under(path):
        if _libc.umount2(point.encode(), MNT_DETACH) != 0:
            err = ctypes.get_errno()
            if err not in (22, 2):  # EINVAL: not a mount point any more; ENOENT: gone
                raise OSError(err, f"umount {point}: {os.strerror(err)}")


def _remove_cgroups(name: str, deadline: float) -> None:
    """rmdir the cgroup subtree `name`, children first; a cgroup is busy for a moment after its last process."""
    for top in _cgroup_dirs(name):
        for dirpath, _, _ in sorted(os.walk(top), key=lambda w: len(w[0]), reverse=True):
            _wait_until(lambda d=dirpath: _rmdir(d), deadline, f"cgroup {dirpath} stays busy")


def _rmdir(path: str) -> bool:
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return True


def _container_ids(root: str) -> set[str]:
    """Ids of the containers an engine knew, from dockerd's records and containerd's task state."""
    ids = set()
    for path in (f"{root}/data/containers", f"{root}/containerd-state/io.containerd.runtime.v2.task/moby"):
        if os.path.isdir(path):
            ids.update(os.listdir(path))
    return ids


def shim_socket(containerd_sock: str, container_id: str) -> str:
    """Where containerd 1.6 puts the shim socket of a container of Docker's ("moby" namespace): a hash of
    containerd's address, the namespace and the id, in the directory every containerd of the machine shares."""
    digest = hashlib.sha256(f"{containerd_sock}/moby/{container_id}".encode()).hexdigest()
    return f"{SHIM_SOCKETS}/{digest}"


def _remove_shim_sockets(containerd_sock: str, ids) -> None:
    """A shim killed rather than stopped leaves its socket behind; remove ours by name."""
    for cid in ids:
        try:
            os.unlink(shim_socket(containerd_sock, cid))
        except FileNotFoundError:
            pass


def sweep_host(root: str, cgroup_parent: str, timeout: float = 20.0) -> None:
    """Remove what one host's engine left, whatever state it is in: its processes (by path), its containers' processes
    (by cgroup), shim sockets, mounts, cgroups, then its directory. Safe to run on a host already clean."""
    deadline = time.monotonic() + timeout
    _kill_all(set(_pids_mentioning(f"{root}/")) | _cgroup_pids(cgroup_parent), deadline)
    _remove_shim_sockets(f"{root}/containerd.sock", _container_ids(root))
    _unmount_under(root)
    _remove_cgroups(cgroup_parent, deadline)
    shutil.rmtree(root, ignore_errors=True)
    if os.path.exists(root):
        raise RuntimeError(f"could not remove {root}")


def _stale_hosts(prefix: str) -> dict[str, set[str]]:
    """Hosts ("h0", ...) of each run named with `prefix` whose creating process is gone, found by the run's
    directory and by its cgroups, so a sweep cut short after removing one of them is finished next time."""
    pattern = re.compile(rf"^({re.escape(prefix)}-(\d+)-[0-9a-f]+)(?:-(h\d+))?$")
    names = _listdir(BASE) + [f"{run}-{host}" for run in _listdir(BASE) for host in _listdir(f"{BASE}/{run}")]
    names += [name for mount in _cgroup_mounts() for name in _listdir(mount)]
    stale: dict[str, set[str]] = {}
    for name in names:
        match = pattern.match(name)
        if match and not netns._pid_alive(int(match.group(2))):
            stale.setdefault(match.group(1), set()).update(filter(None, [match.group(3)]))
    return stale


def _listdir(path: str) -> list[str]:
    return os.listdir(path) if os.path.isdir(path) else []


def clean_stale(prefix: str) -> list[str]:
    """Remove the engines, namespaces and directories of runs named with `prefix` whose creating process is gone;
    a run still going is left alone."""
    stale = _stale_hosts(prefix)
    for run, hosts in sorted(stale.items()):
        for host in sorted(hosts):
            sweep_host(f"{BASE}/{run}/{host}", f"{run}-{host}")
        shutil.rmtree(f"{BASE}/{run}", ignore_errors=True)
    return sorted(stale) + netns.clean_stale(prefix)


# ---- waiting ----------------------------------------------------------------------------------------------------


def _wait_until(predicate, deadline: float, what: str, interval: float = 0.02):
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(interval)


def _accepts(path: str) -> bool:
    """True when something accepts connections on the unix socket `path`."""
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(path)
        except OSError:
            return False
    return True


def _engine_answers(path: str) -> bool:
    """True when the Docker API on the unix socket `path` answers its ping (cheaper than a `docker` process)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(2)
        try:
            s.connect(path)
            s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            return s.recv(64).split(b" ")[1:2] == [b"200"]
        except OSError:
            return False


def _await(proc: subprocess.Popen, ready, deadline: float, what: str, log_path: str) -> None:
    """Poll `ready` until the deadline; fail at once, with the log's end, if the process exits first."""

    def check():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{_tail(log_path)}")
        return ready()

    try:
        _wait_until(check, deadline, what)
    except TimeoutError:
        raise TimeoutError(f"{what} not ready in time:\n{_tail(log_path)}") from None


def _tail(path: str, size: int = 3000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - size))
            return f.read().decode(errors="replace")
    except OSError as e:
        return f"(no log: {e})"


def _stop(proc: subprocess.Popen, grace: float) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _docker_env() -> dict:
    """The environment for a `docker -H ...` of ours: no context or TLS setting of the caller's may redirect it."""
    env = dict(os.environ)
    for name in ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
        env.pop(name, None)
    return env


# ---- a TCP port of the root namespace relayed into a host ------------------------------------------------------


def _enter_netns(path: str) -> None:
    """Move the calling thread (only it: setns acts per thread) into the network namespace at `path`."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


class _Forwarder:
    """Listens on 127.0.0.1 in the root namespace and relays each connection to `target` as seen from inside a
    host: the outbound socket is made by a thread that entered the host's namespace (a socket keeps the namespace
    it was made in), a thread that serves that one connection and then ends."""

    def __init__(self, netns_path: str, target: tuple[str, int]):
        self._netns_path = netns_path
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._closed = False
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True, name=f"forward-{self.port}")
        self._acceptor.start()

    def _track(self, sock: socket.socket) -> bool:
        """Remember `sock` for close(); False once closed (the caller then drops the connection)."""
        with self._lock:
            if not self._closed:
                self._sockets.add(sock)
            return not self._closed

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # close() shut the listener down
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        upstream = None
        try:
            _enter_netns(self._netns_path)
            upstream = socket.create_connection(self._target, timeout=10)
            upstream.settimeout(None)
            if self._track(client) and self._track(upstream):
                back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
                back.start()
                _pump(client, upstream)
                back.join()
        except OSError:
            pass  # the client sees its connection closed, as with a refused one
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    with self._lock:
                        self._sockets.discard(sock)
                    sock.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sockets = [self._listener, *self._sockets]
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() or recv() blocked on it; close() alone does not
            except OSError:
                pass
            sock.close()
        self._acceptor.join(5)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy src to dst until src ends, then pass the end on (half-close), so HTTP/1.0 style exchanges finish. On
    an error (a reset) both directions end, so the other pump does not wait for a peer that is gone."""
    try:
        while data := src.recv(65536):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


# ---- the LAN of engines -----------------------------------------------------------------------------------------


class EngineLan:
    """n hosts, each a namespace of a `netns.Lan` running its own containerd and dockerd; a context manager that
    always tears everything down, also when the constructor fails half way."""

    def __init__(
        self,
        n_hosts: int,
        prefix: str = "cube-e",
        images=(),
        log_dir=None,
        live_restore: bool = False,
        insecure_registries=(),
    ):
        """Start `n_hosts` engines and load `images` (names on the machine's engine) into each. `log_dir`: where
        the engines' logs go (default: inside the run's directory, removed at close). `live_restore`: dockerd's
        option, so containers outlive a stopped or killed engine. `insecure_registries`: registries (HOST:PORT or
        a CIDR) the engines pull from over plain HTTP (a test's docker-registry in a host of the LAN)."""
        self.insecure_registries = list(insecure_registries)
        reason = available()
        if reason:
            raise RuntimeError(reason)
        self.images = tuple(images)
        self.live_restore = live_restore
        self.hosts: list[EngineHost] = []
        self.root: str | None = None
        self.startup_seconds: float | None = None
        self._log_dir = str(log_dir) if log_dir is not None else None
        self._dockerd: dict[int, subprocess.Popen] = {}
        self._containerd: dict[int, subprocess.Popen] = {}
        self._forwarders: list[_Forwarder] = []
        self._closed = False
        self.net: netns.Lan | None = None
        started = time.monotonic()
        try:
            clean_stale(prefix)
            self.net = netns.Lan(n_hosts, prefix=prefix)
            self._make_hosts()
            self._start_all()
        except BaseException:
            self.close()
            raise
        self.startup_seconds = time.monotonic() - started

    def _make_hosts(self) -> None:
        # The run's tag is netns.Lan's ("<prefix>-<pid>-<hex>", its hub is "<tag>-hub"): namespaces, directories
        # and cgroups of one run share one name, which clean_stale reads the pid from.
        tag = self.net.hub.removesuffix("-hub")
        self.root = f"{BASE}/{tag}"
        self.hosts = [
            EngineHost(h.name, h.ip, h.index, f"{self.root}/h{h.index}", f"/{tag}-h{h.index}") for h in self.net.hosts
        ]
        longest = f"{self.hosts[-1].containerd_sock}.ttrpc"
        if len(longest) > SUN_PATH_MAX:
            raise ValueError(f"prefix too long: {longest} passes the unix socket limit of {SUN_PATH_MAX} bytes")
        for host in self.hosts:
            os.makedirs(host.root)
            self._write_configs(host)

    def _write_configs(self, host: EngineHost) -> None:
        # An empty daemon.json of its own: the machine's /etc/docker/daemon.json must not shape our engines.
        with open(f"{host.root}/daemon.json", "w") as f:
            json.dump({"insecure-registries": self.insecure_registries} if self.insecure_registries else {}, f)
        # Everything containerd keeps is below the host's root; only shim sockets go to /run/containerd/s (see
        # _remove_shim_sockets). No CRI: Docker does not use it, and it would start a CNI machinery of its own.
        with open(f"{host.root}/containerd.toml", "w") as f:
            f.write(
                f'version = 2\nroot = "{host.root}/containerd"\nstate = "{host.root}/containerd-state"\n'
                f'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
                f'[grpc]\n  address = "{host.containerd_sock}"\n'
                f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{host.root}/opt"\n'
            )

    def _start_all(self) -> None:
        # In parallel: each engine waits mostly on its own I/O, so three start in about the time of one.
        with ThreadPoolExecutor(len(self.hosts) + 1) as pool:
            saved = pool.submit(self._save_images)
            booted = [pool.submit(self._boot, host, saved) for host in self.hosts]
            for future in booted:
                future.result()

    def _save_images(self) -> bytes:
        """The images from the machine's engine, saved once for every host."""
        if not self.images:
            return b""
        out = subprocess.run(["docker", "save", *self.images], capture_output=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"docker save {' '.join(self.images)}: {out.stderr.decode(errors='replace')}")
        return out.stdout

    def _boot(self, host: EngineHost, saved) -> None:
        self.start_engine(host)
        tar = saved.result()
        if tar:
            out = subprocess.run(
                ["docker", "-H", host.docker_host, "load", "-q"],
                input=tar,
                capture_output=True,
                timeout=120,
                env=_docker_env(),
            )
            if out.returncode != 0:
                raise RuntimeError(f"docker load on {host.name}: {out.stderr.decode(errors='replace')}")

    def __enter__(self) -> "EngineLan":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- processes in a host, and its engine's CLI --

    def command(self, host: EngineHost, argv: list[str]) -> list[str]:
        return self.net.command(host, argv)

    def run(self, host: EngineHost, argv: list[str], **popen_kwargs) -> subprocess.Popen:
        """Start `argv` inside `host` (see netns.Lan.run); close() stops it if the test did not."""
        return self.net.run(host, argv, **popen_kwargs)

    def exec(self, host: EngineHost, argv: list[str], timeout: float = 20) -> subprocess.CompletedProcess:
        return self.net.exec(host, argv, timeout=timeout)

    def docker(self, host: EngineHost, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """`docker ARGS` against `host`'s engine, to completion, with its text output."""
        return subprocess.run(
            ["docker", "-H", host.docker_host, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_docker_env(),
        )

    # -- engine faults --

    def _log(self, host: EngineHost, program: str) -> str:
        if self._log_dir is None:
            return f"{host.root}/{program}.log"
        return f"{self._log_dir}/{os.path.basename(self.root)}-h{host.index}-{program}.log"

    def _spawn(self, host: EngineHost, program: str, argv: list[str]) -> subprocess.Popen:
        # nsenter, not `ip netns exec`, which remounts /sys and hides the cgroup mounts dockerd needs (see
        # bench/engine.sh). Only the network namespace changes: mounts, pids and cgroups stay the machine's.
        # A session of its own, so a Ctrl-C meant for pytest reaches pytest, which then tears down in order.
        with open(self._log(host, program), "ab") as log:
            return subprocess.Popen(
                ["nsenter", f"--net={host.netns_path}", *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _start_containerd(self, host: EngineHost, deadline: float) -> None:
        # In the host's namespace too: a `--network host` container joins the namespace of its shim, which is
        # containerd's.
        proc = self._spawn(host, "containerd", ["containerd", "--config", f"{host.root}/containerd.toml"])
        self._containerd[host.index] = proc
        _await(
            proc,
            lambda: _accepts(host.containerd_sock),
            deadline,
            f"containerd of {host.name}",
            self._log(host, "containerd"),
        )

    def start_engine(self, host: EngineHost, timeout: float = START_TIMEOUT) -> None:
        """Start `host`'s dockerd on the data root it had: its containers are there again, stopped unless their
        restart policy (or live-restore) says otherwise. Returns once the engine answers."""
        if self._closed:
            raise RuntimeError("this EngineLan is closed")
        if self.engine_running(host):
            raise RuntimeError(f"the engine of {host.name} is already running")
        deadline = time.monotonic() + timeout
        containerd = self._containerd.get(host.index)
        if containerd is None or containerd.poll() is not None:
            self._start_containerd(host, deadline)
        sock = host.docker_host.removeprefix("unix://")
        argv = [
            "dockerd",
            "--config-file",
            f"{host.root}/daemon.json",
            "-H",
            host.docker_host,
            "--containerd",
            host.containerd_sock,
            "--data-root",
            f"{host.root}/data",
            "--exec-root",
            f"{host.root}/exec",
            "--pidfile",
            f"{host.root}/dockerd.pid",
            # Distinct per host, so container addresses never clash should routes between hosts come.
            "--bip",
            f"172.31.{host.index}.1/24",
            "--cgroup-parent",
            host.cgroup_parent,
            # cgroupfs always: 20.10 picks the systemd driver on cgroup v2 hosts run by systemd, which would want
            # a slice name for the parent.
            "--exec-opt",
            "native.cgroupdriver=cgroupfs",
        ]
        # Published ports need nothing more: dockerd sets ip_forward in its own namespace (/proc/sys/net is per
        # namespace) and DNATs in PREROUTING there, so another host reaches <host ip>:<port> through the kernel;
        # docker-proxy (the default userland proxy) only serves connections made from inside the host itself.
        if self.live_restore:
            argv.append("--live-restore")
        proc = self._spawn(host, "dockerd", argv)
        self._dockerd[host.index] = proc
        _await(proc, lambda: _engine_answers(sock), deadline, f"dockerd of {host.name}", self._log(host, "dockerd"))

    def engine_running(self, host: EngineHost) -> bool:
        """True while the dockerd we started for `host` runs (it may not answer yet, or any more)."""
        proc = self._dockerd.get(host.index)
        return proc is not None and proc.poll() is None

    def stop_engine(
        self, host: EngineHost, sig: int = signal.SIGTERM, wait: bool = True, timeout: float = START_TIMEOUT
    ) -> None:
        """Signal `host`'s dockerd. SIGTERM is `systemctl stop docker`: without live-restore dockerd first stops
        every container (each gets SIGTERM, then SIGKILL after its stop timeout, 10 s by default). containerd keeps
        running, as its own service does on a real node."""
        proc = self._dockerd.get(host.index)
        if proc is None or proc.poll() is not None:
            raise RuntimeError(f"the engine of {host.name} is not running")
        proc.send_signal(sig)
        if wait:
            proc.wait(timeout)

    def kill_engine(self, host: EngineHost) -> None:
        """SIGKILL `host`'s dockerd: containerd, the shims and the containers keep running, and so do published
        ports from other hosts (the DNAT rules stay), while the docker-proxies die with dockerd."""
        self.stop_engine(host, signal.SIGKILL)

    # -- network faults --

    def partition(self, host: EngineHost) -> None:
        """Cut `host` off the LAN, both ways, as a pulled cable: its bridge port goes down (and its eth0 loses
        carrier); its processes keep running and still reach each other."""
        netns._ip("-n", self.net.hub, "link", "set", f"v{host.index}", "down")

    def heal(self, host: EngineHost, timeout: float = 10.0) -> None:
        """Plug `host` back in; returns once its bridge port forwards and its eth0 has carrier again."""
        port = f"v{host.index}"
        netns._ip("-n", self.net.hub, "link", "set", port, "up")

        def forwarding():
            hub_side = json.loads(netns._ip("-n", self.net.hub, "-j", "-d", "link", "show", port).stdout)[0]
            host_side = json.loads(netns._ip("-n", host.name, "-j", "link", "show", "eth0").stdout)[0]
            return hub_side["linkinfo"]["info_slave_data"]["state"] == "forwarding" and "LOWER_UP" in host_side["flags"]

        _wait_until(forwarding, time.monotonic() + timeout, f"{host.name} did not come back on the LAN")
        # An address asked for during the cut stays unresolved until the kernel's next ARP retry (1 s apart), and a
        # packet sent meanwhile waits for it: forget those, so traffic flows as soon as heal returns.
        for each in self.hosts:
            netns._ip("-n", each.name, "neigh", "flush", "dev", "eth0", "nud", "incomplete", "nud", "failed")

    def forward(self, host: EngineHost, port: int, address: str | None = None) -> int:
        """A port on 127.0.0.1 of the test process relayed to `address:port` (default: the host's LAN address)
        as seen from inside `host`; closed with the EngineLan. It works while the host is partitioned: the test
        process is then a local client of that host."""
        if self._closed:
            raise RuntimeError("this EngineLan is closed")
        forwarder = _Forwarder(host.netns_path, (address or host.ip, port))
        self._forwarders.append(forwarder)
        return forwarder.port

    # -- teardown --

    def _teardown_host(self, host: EngineHost) -> None:
        try:
            dockerd = self._dockerd.get(host.index)
            if dockerd is not None and dockerd.poll() is None:
                self._remove_containers(host)
                _stop(dockerd, STOP_GRACE)
            containerd = self._containerd.get(host.index)
            if containerd is not None:
                _stop(containerd, STOP_GRACE)
        finally:
            sweep_host(host.root, host.cgroup_parent)

    def _remove_containers(self, host: EngineHost) -> None:
        """Remove every container first, so dockerd's shutdown has none to wait its stop timeout for. An engine
        that does not answer is not waited for: sweep_host kills what it leaves."""
        try:
            ids = self.docker(host, "ps", "-aq", timeout=10).stdout.split()
            if ids:
                self.docker(host, "rm", "-f", *ids, timeout=20)
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        """Stop every engine, then remove what it left (sweep_host), the namespaces and the run's directory. Every
        step runs even when one before it failed; the first failure is raised at the end."""
        if self._closed:
            return
        self._closed = True
        for forwarder in self._forwarders:
            forwarder.close()
        errors = []
        if self.hosts:
            with ThreadPoolExecutor(len(self.hosts)) as pool:
                for future in [pool.submit(self._teardown_host, h) for h in self.hosts]:
                    try:
                        future.result()
                    except Exception as e:  # noqa: BLE001 - the other hosts and the namespaces still go
                        errors.append(e)
        if self.net is not None:
            self.net.close()
        if self.root is not None and os.path.isdir(self.root):
            shutil.rmtree(self.root, ignore_errors=True)
        if errors:
            raise errors[0]


@pytest.fixture
def engine_lan(request, tmp_path):
    """A factory: `engine_lan(3)` is a started EngineLan with the test image loaded in every engine, closed after
    the test; engine logs stay in the test's tmp_path. Without root or dockerd the test skips, except in CI
    (CI=true), where it fails, as `busybox_image` does."""
    reason = available()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs Docker engines in network namespaces: {reason}")
        pytest.skip(reason)
    with ExitStack() as stack:

        def make(n_hosts: int, **kwargs) -> EngineLan:
            if "images" not in kwargs:
                kwargs["images"] = [request.getfixturevalue("busybox_image")]
            kwargs.setdefault("log_dir", tmp_path)
            return stack.enter_context(EngineLan(n_hosts, **kwargs))

        yield make
