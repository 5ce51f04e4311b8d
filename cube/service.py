"""How a Cube process runs as a long-lived service: it builds a worker (or manager) from the command's options,
starts its HTTP server, announces it, and shuts everything down cleanly on SIGTERM/SIGINT (systemd stop, Ctrl-C).
The CLI parses flags; this module owns the process lifecycle.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading

from .config import data_dir, find_token
from .errors import CubeError

log = logging.getLogger("cube")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def wait_for_signal(extra_stop: threading.Event | None = None) -> None:
    """Block until SIGTERM or SIGINT (or `extra_stop`)."""
    stop = extra_stop or threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass


def build_worker(name: str | None, data: str | None, cpus=None, memory=None, disk=None, labels=None,
                 runtime=None, reconcile_interval: float = 5.0, threads: int = 4):
    """A Worker on the real Docker engine (or the given runtime) with its diskcache store."""
    from .metrics import Metrics
    from .store import DiskStore
    from .worker import Worker
    directory = data_dir("worker", data)
    os.makedirs(directory, exist_ok=True)
    if runtime is None:
        from .docker_runtime import DockerRuntime
        runtime = DockerRuntime()
    return Worker(name or socket.gethostname(), runtime, DiskStore(os.path.join(directory, "store")),
                  metrics=Metrics(directory, cpus, memory, disk), labels=labels,
                  reconcile_interval=reconcile_interval, threads=threads)


def run_worker(name=None, port=5556, host="0.0.0.0", data=None, token=None, token_file=None, cpus=None,
               memory=None, disk=None, labels=None, certfile=None, keyfile=None, manager=None, mdns=True,
               ready: threading.Event | None = None) -> None:
    """`cube worker`: serve the worker API until stopped."""
    from .api import Server, worker_app
    token = find_token(token, token_file)
    if not token:
        raise CubeError("the worker needs the cluster token: pass --token, set CUBE_TOKEN or --token-file "
                        "(print it on the manager with `cube token`)")
    worker = build_worker(name, data, cpus, memory, disk, labels)
    server = Server(worker_app(worker, token), host, port, certfile=certfile, keyfile=keyfile)
    worker.start()
    server.start()
    log.info("worker %s serving on %s:%s (data %s)", worker.name, host, server.port, data_dir("worker", data))
    extras = _announce_worker(worker, server.port, mdns, manager, token)
    if ready is not None:
        ready.set()
    try:
        wait_for_signal()
    finally:
        log.info("worker %s stopping", worker.name)
        for close in extras:
            close()
        server.stop()
        worker.close()
        worker.store.close()


def _announce_worker(worker, port: int, mdns: bool, manager: str | None, token: str) -> list:
    """mDNS advertisement and registration with a manager, when those are available. Returns closers."""
    closers = []
    try:
        from . import announce
    except ImportError:
        return closers
    closers.extend(announce.worker(worker, port, mdns=mdns, manager=manager, token=token))
    return closers
