"""How the manager knows its nodes: it adds a worker by address (static `--workers`, a worker registering itself,
or mDNS), checks that the worker answers with the cluster token, then keeps one long poll open to it. Each answer is
at once the node's heartbeat and its report (tasks, events, metrics); a change on the worker answers the poll at
once, so the manager hears of it in milliseconds, not on a 15-second tick. A node whose last answer is older than
`node_timeout` is down, and the manager reschedules its tasks. This is the one liveness mechanism: mDNS only finds
addresses (a killed worker stays in mDNS caches for many minutes).
"""
from __future__ import annotations

import logging
import threading
import time

from cube.cluster.client import Client
from cube.core.errors import CubeError, Unauthorized
from cube.core.model import Node, Resources

log = logging.getLogger("cube.membership")


class Membership:
    def __init__(self, manager, token: str | None, node_timeout: float = 5.0, poll_wait: float = 2.0,
                 clock=time.time):
        self.manager = manager
        self.token = token
        self.node_timeout = node_timeout
        # A silent worker answers its long poll after `poll_wait`: that is its heartbeat, so it must come a few
        # times within the deadline, or a healthy idle node would be declared down.
        self.poll_wait = min(poll_wait, node_timeout / 3)
        self.clock = clock
        self._clients: dict[str, Client] = {}
        self._pollers: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        manager._send = self.send

    def client(self, node: Node) -> Client:
        with self._lock:
            client = self._clients.get(node.name)
            if client is None or client.base_url != node.address.rstrip("/"):
                client = Client(node.address, self.token, timeout=10.0)
                self._clients[node.name] = client
            return client

    def send(self, node: Node, method: str, path: str, body: dict | None = None):
        return self.client(node).request(method, path, body=body)

    def add(self, address: str) -> Node:
        """Admit the worker at `address` (after it proves it shares our token) and start polling it."""
        probe = Client(address, self.token, timeout=5.0)
        try:
            stats = probe.get("/stats")
        except Unauthorized:
            raise Unauthorized(f"worker at {address} refused our cluster token: start it with the token "
                               f"`cube token` prints") from None
        node = node_from_stats(stats, probe.base_url, self.clock())
        node.name = self._unique_name(node)
        self.manager.node_up(node)
        self._start_poller(node.name)
        return node

    def _unique_name(self, node: Node) -> str:
        """Nodes are known by name; two machines both called `raspberrypi` must both join. The same node (by its
        id) keeps the name it has; another node with a taken name gets its id appended."""
        node_id = node.labels.get("node_id", "")
        for known in self.manager.nodes.values():
            if node_id and known.labels.get("node_id") == node_id:
                return known.name
        taken = self.manager.nodes.get(node.name)
        if taken is None or not node_id or not taken.labels.get("node_id"):
            return node.name
        return f"{node.name}-{node_id}"

    def resume(self) -> None:
        """After a manager restart: poll every node it knew (they are judged by the same deadline)."""
        now = self.clock()
        for node in list(self.manager.nodes.values()):
            node.last_seen = now  # give each node a full deadline to answer the new manager
            self._start_poller(node.name)

    def _start_poller(self, name: str) -> None:
        with self._lock:
            if name in self._pollers and self._pollers[name].is_alive():
                return
            thread = threading.Thread(target=self._poll, args=(name,), name=f"cube-poll-{name}", daemon=True)
            self._pollers[name] = thread
        thread.start()

    def _poll(self, name: str) -> None:
        version = None
        cursor = int(self.manager.store.get("cursors", name) or 0)
        while not self._closed.is_set():
            node = self.manager.nodes.get(name)
            if node is None:
                return
            try:
                answer = self.client(node).request(
                    "GET", "/state", params={"version": version, "wait": self.poll_wait, "events_since": cursor},
                    timeout=self.poll_wait + 5)
            except CubeError as error:
                log.debug("poll of %s failed: %s", name, error.message)
                version = None
                self._closed.wait(0.5)
                continue
            version = answer["version"]
            self._heard(node, answer)
            if answer["last_event"] != cursor:
                cursor = answer["last_event"]
                self.manager.store.put("cursors", name, cursor)

    def _heard(self, node: Node, answer: dict) -> None:
        node.last_seen = self.clock()
        stats = answer.get("stats") or {}
        if node.state == "down" or _capacity_changed(node, stats):
            fresh = node_from_stats(stats, node.address, node.last_seen)
            fresh.name = node.name
            self.manager.node_up(fresh)
        self.manager.observe(node.name, answer.get("tasks") or [], answer.get("events") or [])

    def check_deadlines(self) -> None:
        now = self.clock()
        for node in list(self.manager.nodes.values()):
            silent = now - node.last_seen
            if node.state == "ready" and silent > self.node_timeout:
                self.manager.node_down(node.name, f"no answer for {silent:.1f} s")

    def run(self) -> None:
        """The manager's housekeeping loop: deadlines and pending placements, a few times a second."""
        self.resume()
        while not self._closed.wait(0.25):
            try:
                self.check_deadlines()
                self.manager.schedule_pending()
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
    return Node(name=stats["name"], address=address, capacity=capacity, labels=labels, last_seen=now)


def _capacity_changed(node: Node, stats: dict) -> bool:
    capacity = stats.get("capacity")
    return bool(capacity) and Resources.from_dict(capacity).to_dict() != node.capacity.to_dict()
