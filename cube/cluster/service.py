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


def stop_on_signal(stop: threading.Event) -> threading.Event:
    """SIGTERM and SIGINT set `stop` from now on (a worker may be waiting to join when they come)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def wait_for_signal(extra_stop: threading.Event | None = None) -> None:
    """Block until SIGTERM or SIGINT (or `extra_stop`)."""
    stop = stop_on_signal(extra_stop or threading.Event())
    while not stop.wait(1.0):  # a timed wait, so the main thread runs the signal handler promptly
        pass
