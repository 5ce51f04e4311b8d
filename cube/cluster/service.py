"""What every long-lived Cube process shares: its log format and how it waits for SIGTERM/SIGINT (systemd stop,
Ctrl-C). The worker's and the manager's services are `worker_service.py` and `manager_service.py`; the CLI parses
flags, these modules own the process lifecycle.
"""

from __future__ import annotations

import logging
import signal
import threading


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def wait_for_signal(extra_stop: threading.Event | None = None) -> None:
    """Block until SIGTERM or SIGINT (or `extra_stop`)."""
    stop = extra_stop or threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
