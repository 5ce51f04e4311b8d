"""Bookkeeping: what a placed copy of a task takes from its node. `reserve` counts a copy's cpu, memory, disk,
fixed host ports (every port, with host networking) and one more task on the `Node` object it is given, `release`
gives them back; the manager persists the node afterwards. This is the only part of the scheduler that changes a node.
"""

from __future__ import annotations

from cube.core.model import Node, TaskSpec


def reserve(node: Node, spec: TaskSpec) -> None:
    """Count one copy of `spec` on `node`: its cpu, memory and disk, its fixed host ports, one more task."""
    allocated = node.allocated
    allocated.cpu = round(allocated.cpu + spec.cpu, 9)  # rounding keeps float sums from drifting
    allocated.memory += spec.memory
    allocated.disk += spec.disk
    node.used_ports.update(spec.fixed_host_ports)  # with host networking, every port of the task
    node.tasks += 1


def release(node: Node, spec: TaskSpec) -> None:
    """Undo `reserve`: the copy stopped, moved away or was never committed. Never goes below zero."""
    allocated = node.allocated
    allocated.cpu = max(round(allocated.cpu - spec.cpu, 9), 0.0)
    allocated.memory = max(allocated.memory - spec.memory, 0)
    allocated.disk = max(allocated.disk - spec.disk, 0)
    node.used_ports.difference_update(spec.fixed_host_ports)
    node.tasks = max(node.tasks - 1, 0)
