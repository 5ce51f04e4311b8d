"""Benchmark 7: footprint while idle — resident memory and cpu of a worker and a manager (pyz processes, 3 tasks
running on the real engine), and what they write to disk while nothing changes.

After the tasks run and a settling pause, one window (60 s by default) is measured for both processes at once, from
/proc: cpu = (utime + stime) over the window, RSS = VmRSS at its end, bytes written = `write_bytes` of /proc/PID/io
(what the process caused to be written to storage: store files and its log alike; the logs go to files on the same
disk). The floor beside the RSS is a bare interpreter (`python3 -c "import time; time.sleep(...)"`).
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid

from .common import IMAGE, Cluster, interpreter, wait_for
from .stats import Row

NAME = "footprint"
TITLE = "idle footprint: RSS, cpu and disk writes of a worker and a manager (3 tasks running)"
COMMAND = "python -m bench footprint [--duration 60]"
TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _written(pid: int) -> int:
    for line in open(f"/proc/{pid}/io"):
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def run(options) -> list[Row]:
    window = options.duration or (15.0 if options.quick else 60.0)
    settle = 5.0 if options.quick else 15.0
    floor = subprocess.Popen([interpreter(), "-c", "import time; time.sleep(3600)"])
    try:
        with Cluster(workers=1) as cluster:
            client = cluster.client
            ids = [
                client.post("/tasks", {"id": uuid.uuid4().hex[:12], "image": IMAGE, "command": ["sleep", "3600"]})["id"]
                for _ in range(3)
            ]
            wait_for(
                lambda: all(client.get(f"/tasks/{i}")["state"] == "running" for i in ids),
                timeout=60,
                interval=0.2,
                what="3 tasks running",
            )
            time.sleep(settle)
            pids = {"worker": cluster.pids()[next(iter(cluster.workers))], "manager": cluster.manager.pid}
            before = {role: (_cpu_seconds(pid), _written(pid)) for role, pid in pids.items()}
            time.sleep(window)
            after = {role: (_cpu_seconds(pid), _written(pid), _rss_mib(pid)) for role, pid in pids.items()}
            floor_rss = _rss_mib(floor.pid)
    finally:
        floor.kill()
        floor.wait()
    rows = []
    for role, limit in (("worker", 40), ("manager", 60)):
        cpu = (after[role][0] - before[role][0]) / window * 100
        written = (after[role][1] - before[role][1]) * 60 / window
        rss = after[role][2]
        rows += [
            Row(
                NAME,
                f"{role}: RSS, idle",
                "MiB",
                [rss],
                "bare interpreter",
                [floor_rss],
                f"≤ {limit} MB",
                rss * 1.048576 <= limit,
                COMMAND,
            ),
            Row(
                NAME,
                f"{role}: cpu, idle",
                "%",
                [cpu],
                target="< 1 %",
                met=cpu < 1,
                command=COMMAND,
                note=f"over {window:g} s",
            ),
            Row(
                NAME,
                f"{role}: bytes written per minute, idle",
                "B/min",
                [written],
                target="0",
                met=written == 0,
                command=COMMAND,
            ),
        ]
    return rows
