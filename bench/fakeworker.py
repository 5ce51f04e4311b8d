"""Simulated workers for the API benchmark: the real Worker and worker API on the fake runtime (containers are dicts)
and a memory store, several per process, so a real manager (the pyz) can hold 10,000 running tasks on a 2-core
machine with a realistic number of tasks per node. `python -m bench.fakeworker --ports P1,P2,... --name PREFIX`
serves one worker per port (named PREFIX-0, PREFIX-1, ...); stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import logging

from cube.cluster.api import Server, worker_app
from cube.cluster.service import wait_for_signal
from cube.store import MemoryStore
from cube.worker.metrics import Metrics
from cube.worker.runtime import FakeRuntime
from cube.worker.worker import Worker

from .common import TOKEN


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fakeworker")
    parser.add_argument("--ports", required=True, help="comma-separated: one worker per port")
    parser.add_argument("--name", required=True, help="worker names are NAME-0, NAME-1, ...")
    parser.add_argument("--token", default=TOKEN)
    options = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    runtime = FakeRuntime()
    running = []
    for index, port in enumerate(int(p) for p in options.ports.split(",")):
        worker = Worker(
            f"{options.name}-{index}", runtime, MemoryStore(), metrics=Metrics(cpus=64, memory=256 << 30, disk=1 << 40)
        )
        # Few server threads: the manager holds one long poll per worker and dispatches a handful at a time.
        server = Server(worker_app(worker, options.token), "127.0.0.1", port, threads=4).start()
        worker.start()
        running.append((worker, server))
    try:
        wait_for_signal()
    finally:
        for worker, server in running:
            worker.close()
            server.stop()


if __name__ == "__main__":
    main()
