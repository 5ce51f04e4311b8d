"""Where a task runs. For a task spec and the nodes the manager knows, the scheduler decides which node gets the
task, and why every other node did not. It is a pipeline over plain data (Nomad's feasible → rank → select):

1. `feasibility`: `CHECKS`, small functions `(spec, node) -> None | Rejection`, run in one fixed order; the first
   rejection wins and is kept per rejected node (a `kind` to count, a `detail` to show), so a failed placement can
   be explained node by node and summed up by kind;
2. `ranking`: a scorer from `SCORERS` gives every feasible node a score, higher is better;
3. `selection`: the best score wins; ties are broken by a hash of (seed, node name), so the same seed (the task id)
   replays the same placement whatever the order of the node list.

No I/O, no store and no clock live here. `place` only picks; `place_many` and `reserve`/`release` (`bookkeeping`)
change the `Node` objects they are given (allocated resources, used host ports, task count), which the manager then
persists.
"""

from cube.scheduler.bookkeeping import release, reserve
from cube.scheduler.feasibility import (
    CHECKS,
    CONSTRAINT_NOT_MET,
    IMAGE_PLATFORM,
    INSUFFICIENT_CPU,
    INSUFFICIENT_DISK,
    INSUFFICIENT_MEMORY,
    KINDS,
    MISSING_DEVICE,
    NODE_INELIGIBLE,
    NODE_NOT_READY,
    PIPELINE,
    PORT_IN_USE,
    VOLUME_ELSEWHERE,
    Rejection,
    feasible,
    rejection,
)
from cube.scheduler.ranking import DEFAULT_STRATEGY, LIEB, SCORERS, SchedulerState, Scorer, scorer
from cube.scheduler.selection import Placement, place, place_many

__all__ = [
    "CHECKS",
    "CONSTRAINT_NOT_MET",
    "DEFAULT_STRATEGY",
    "IMAGE_PLATFORM",
    "INSUFFICIENT_CPU",
    "INSUFFICIENT_DISK",
    "INSUFFICIENT_MEMORY",
    "KINDS",
    "LIEB",
    "MISSING_DEVICE",
    "NODE_INELIGIBLE",
    "NODE_NOT_READY",
    "PIPELINE",
    "PORT_IN_USE",
    "SCORERS",
    "Placement",
    "Rejection",
    "SchedulerState",
    "Scorer",
    "VOLUME_ELSEWHERE",
    "feasible",
    "place",
    "place_many",
    "rejection",
    "release",
    "reserve",
    "scorer",
]
