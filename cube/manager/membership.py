"""How the manager hears its nodes: it admits a worker by address (static `--workers`, a worker registering itself,
or mDNS) once the worker answers with the cluster token, then keeps one long poll open to it. Each answer is at
once the node's heartbeat and its report (tasks, events, engine health, metrics); a change on the worker answers
the poll at once, so the manager hears of it in milliseconds. This is the one liveness mechanism: mDNS only finds
addresses (a killed worker stays in mDNS caches for many minutes); the deadlines themselves are the manager's
(`Manager.check_deadlines`).

A poller delivers what the node's diff wants from that answer (`Manager.observe`) before it polls again: a worker
that waits for the manager's word after a restart releases its holds on the next poll, and by then any stop meant
for it has arrived. The transport (HTTP, token, TLS) is given as `request(address, method, path, body, params,
timeout)`, so this module has no client of its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from cube.core.errors import CubeError, StorageFailed, Unauthorized, Untrusted
from cube.core.model import Node, Resources, device_paths

log = logging.getLogger("cube.membership")
TICK = 0.25  # seconds between the manager's housekeeping rounds

Request = Callable[..., Any]  # (address, method, path, body=None, params=None, timeout=None) -> answer


class Membership:
    def __init__(self, manager, request: Request, store, poll_wait: float = 2.0, clock=time.time, url=None):
        self.manager = manager
        # A worker's address as a URL (the cluster's scheme when none is given).
        self.url = url or (lambda address: address.rstrip("/") if "://" in address else f"http://{address}")
        self.request = request
        self.store = store
        # A silent worker answers its long poll after `poll_wait`: that is its heartbeat, so it must come a few
        # times within the deadline, or a healthy idle node would be declared down.
        self.poll_wait = min(poll_wait, manager.node_timeout / 3)
        self.clock = clock
        self._pollers: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._open = 0  # long polls sent and not yet answered (GET /metrics)

    @property
    def closed(self) -> threading.Event:
        return self._closed

    @property
    def open_polls(self) -> int:
        """How many long polls to workers are held open now."""
        with self._lock:
            return self._open

    def add(self, address: str) -> Node:
        """Admit the worker at `address` (after it proves it belongs to the cluster) and start polling it."""
        address = self.url(address)
        try:
            stats = self.request(address, "GET", "/stats", timeout=5.0)
        except Untrusted:
            raise
        except Unauthorized:
            raise Unauthorized(
                f"worker at {address} refused us: join it to this cluster with the token `cube token` prints"
            ) from None
        node = node_from_stats(stats, address, self.clock())
        node.name = self._unique_name(node)
        self.manager.node_up(node)
        self._start_poller(node.name)
        return node

    def _unique_name(self, node: Node) -> str:
        """Nodes are known by name; two machines both called `raspberrypi` must both join. The same node (by its
        id, or by its address) keeps the name it has; another node with a taken name gets its id appended."""
        node_id = node.labels.get("node_id", "")
        known = [self.manager.node(name) for name in self.manager.node_names()]
        for other in known:
            if other and node_id and other.labels.get("node_id") == node_id:
                return other.name
        taken = self.manager.node(node.name)
        if taken is None or not node_id or not taken.labels.get("node_id"):
            return node.name
        if taken.address == node.address:
            # The same name at the same address is that machine with a new id (its data wiped, or an earlier run's
            # worker answering at first): it takes its name back instead of leaving a twin that never answers.
            return node.name
        return f"{node.name}-{node_id}"

    def resume(self) -> None:
        """After a manager restart: poll every node it knew (each has a full deadline to answer, see _load)."""
        for name in self.manager.node_names():
            self._start_poller(name)

    def _start_poller(self, name: str) -> None:
        with self._lock:
            if name in self._pollers and self._pollers[name].is_alive():
                return
            thread = threading.Thread(target=self._poll, args=(name,), name=f"cube-poll-{name}", daemon=True)
            self._pollers[name] = thread
        thread.start()

    def _poll(self, name: str) -> None:
        version = None
        cursor = int(self.store.get("cursors", name) or 0)
        while not self._closed.is_set():
            node = self.manager.node(name)
            if node is None:
                return
            started = self.manager.monotonic()
            with self._lock:
                self._open += 1
            try:
                answer = self.request(
                    node.address,
                    "GET",
                    "/state",
                    params={"version": version, "wait": self.poll_wait, "events_since": cursor},
                    timeout=self.poll_wait + 5,
                )
            except CubeError as error:
                log.debug("poll of %s failed: %s", name, error.message)
                answer = None
            finally:
                with self._lock:
                    self._open -= 1
            if answer is None:
                version = None
                self._closed.wait(0.5)
                continue
            version = answer["version"]
            self.manager.heard(name, answer.get("stats") or {})
            due = self.manager.observe(name, answer.get("tasks") or [], answer.get("events") or [], started)
            for item in due:
                self.manager.deliver(item)
            if answer["last_event"] != cursor:
                cursor = answer["last_event"]
                try:
                    self.store.put("cursors", name, cursor)
                except StorageFailed:
                    pass  # kept in memory; after a restart the node's events are read again, which is harmless

    def run(self) -> None:
        """The manager's housekeeping loop: `Manager.tick` a few times a second."""
        self.resume()
        while not self._closed.wait(TICK):
            try:
                self.manager.tick()
            except Exception:
                log.exception("housekeeping failed")

    def start(self) -> None:
        threading.Thread(target=self.run, name="cube-membership", daemon=True).start()

    def close(self) -> None:
        self._closed.set()


def node_from_stats(stats: dict, address: str, now: float) -> Node:
    capacity = Resources.from_dict(stats.get("capacity"))
    labels = dict(stats.get("labels") or {})
    labels.setdefault("arch", stats.get("arch", ""))
    labels.setdefault("hostname", stats.get("hostname", ""))
    labels["node_id"] = str(stats.get("id") or "")
    return Node(
        name=stats["name"],
        address=address,
        capacity=capacity,
        labels=labels,
        last_seen=now,
        disconnect_timeout=float(stats.get("disconnect_timeout") or 0),
        stop_timeout=float(stats.get("stop_timeout") or 10.0),
        devices=device_paths(stats.get("devices"), "the worker's devices"),
        version=str(stats.get("version") or ""),
    )
