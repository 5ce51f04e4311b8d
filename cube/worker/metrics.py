"""What a node reports about its machine (psutil is imported here only): cpu count and current usage as a rate
since the previous reading (not the cumulative figure since boot that the book reports), memory, disk, load, and the
capacity the node offers to the scheduler — the machine's own, or what `--cpus/--memory/--disk` say so that several
workers can share one test machine."""

from __future__ import annotations

import os
import platform
import socket

import psutil

from cube.core.model import Resources


def machine_arch() -> str:
    return platform.machine() or "unknown"


class Metrics:
    def __init__(
        self, data_dir: str | None = None, cpus: float | None = None, memory: int | None = None, disk: int | None = None
    ):
        self.data_dir = data_dir or "/"
        self._override = (cpus, memory, disk)
        psutil.cpu_percent(interval=None)  # the first reading only sets the baseline for the rate

    def capacity(self) -> Resources:
        cpus, memory, disk = self._override
        return Resources(
            cpu=float(cpus) if cpus else float(psutil.cpu_count() or 1),
            memory=int(memory) if memory else int(psutil.virtual_memory().total),
            disk=int(disk) if disk else int(self._disk().total),
        )

    def _disk(self):
        path = self.data_dir if os.path.exists(self.data_dir) else "/"
        return psutil.disk_usage(path)

    def snapshot(self) -> dict:
        mem = psutil.virtual_memory()
        disk = self._disk()
        try:
            load = list(os.getloadavg())
        except OSError:
            load = [0.0, 0.0, 0.0]
        return {
            "cpu": {"count": psutil.cpu_count() or 1, "percent": psutil.cpu_percent(interval=None)},
            "memory": {"total": mem.total, "available": mem.available},
            "disk": {"total": disk.total, "free": disk.free},
            "load": load,
            "capacity": self.capacity().to_dict(),
            "arch": machine_arch(),
            "hostname": socket.gethostname(),
        }
