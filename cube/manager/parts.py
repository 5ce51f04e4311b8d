"""What the manager's mixins (deployments, stacks) may use of `Manager` (manager.py), which owns and writes all of
it: its lock, its records in memory, the store and its batches, and the steps of placing and stopping tasks. A
declaration only, so that each mixin reads as the code it is and type-checks on its own."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager

from cube.core.jobs import Job
from cube.core.model import Node, Task
from cube.store import Store


class ManagerParts:
    _lock: threading.RLock
    jobs: dict[str, Job]
    tasks: dict[str, Task]
    nodes: dict[str, Node]
    store: Store
    clock: Callable[[], float]
    _by_job: dict[str, set[str]]
    _saving: Callable[[], AbstractContextManager[None]]
    _touch: Callable[[str, str], None]
    _save_job: Callable[[Job], None]
    _flush: Callable[[], list[tuple]]
    _deliver_later: Callable[[list[tuple]], None]
