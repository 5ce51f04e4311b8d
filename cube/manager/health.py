"""Health checks: an HTTP GET on each running task's published port and path, with a timeout, every interval.
This module only probes and tells the manager (`Manager.health_failed`); what a failure leads to (restart on the
same node, reschedule, fail after the maximum restarts) is the manager's and the worker's decision. A task is first
checked one interval after its container started, so a slow-starting server is not restarted for being slow.
"""

from __future__ import annotations

import http.client
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

log = logging.getLogger("cube.health")


def probe(host: str, port: int, path: str, timeout: float) -> str | None:
    """None when healthy, else why not. 2xx and 3xx are healthy."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"User-Agent": "cube-health"})
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException) as error:
        return f"GET http://{host}:{port}{path}: {getattr(error, 'strerror', None) or error or 'timed out'}"
    finally:
        conn.close()
    if 200 <= status < 400:
        return None
    return f"GET http://{host}:{port}{path} answered HTTP {status}"


class HealthChecker:
    def __init__(self, manager, threads: int = 4, clock=time.monotonic):
        self.manager = manager
        self.clock = clock
        self._due: dict[tuple, float] = {}  # (task id, container id) -> next check
        self._busy: set[str] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cube-health")
        self._closed = threading.Event()

    def tick(self) -> None:
        now = self.clock()
        live = set()
        for target in self.manager.health_targets():
            key = (target["task_id"], target["container_id"], target["restarts"])
            live.add(key)
            due = self._due.setdefault(key, now + target["interval"])
            if due <= now and target["task_id"] not in self._busy:
                self._due[key] = now + target["interval"]
                with self._lock:
                    self._busy.add(target["task_id"])
                self._pool.submit(self._check, target)
        for key in set(self._due) - live:
            del self._due[key]

    def _check(self, target: dict) -> None:
        task_id = target["task_id"]
        try:
            host = urlsplit(target["address"]).hostname or "127.0.0.1"
            failure = probe(host, target["port"], target["path"], target["timeout"])
            if failure:
                log.info("task %s unhealthy: %s", task_id, failure)
                self.manager.health_failed(task_id, failure)
        except Exception:
            log.exception("health check of %s failed", task_id)
        finally:
            with self._lock:
                self._busy.discard(task_id)

    def run(self) -> None:
        while not self._closed.wait(0.2):
            self.tick()

    def start(self) -> None:
        threading.Thread(target=self.run, name="cube-health", daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
