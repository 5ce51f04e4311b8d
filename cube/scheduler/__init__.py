"""Where a task runs. For a task spec and the nodes the manager knows, the scheduler decides which node gets the
task, and why every other node did not. It is a pipeline over plain data (Nomad's feasible → rank → select):

1. `feasibility`: `CHECKS`, small functions `(spec, node) -> None | reason`, run in one fixed order; the first
   reason wins and is kept per rejected node, so a failed placement can be explained node by node;
2. `ranking`: a scorer from `SCORERS` gives every feasible node a score, higher is better;
3. `selection`: the best score wins; ties are broken by a hash of (seed, node name), so the same seed (the task
   id) replays the same placement whatever the order of the node list.

No I/O, no store and no clock live here. `place` only picks; `place_many` and `reserve`/`release` (`bookkeeping`)
change the `Node` objects they are given (allocated resources, used host ports, task count), which the manager then
persists.
"""
from cube.scheduler.bookkeeping import release, reserve
from cube.scheduler.feasibility import CHECKS, PIPELINE, feasible
from cube.scheduler.ranking import DEFAULT_STRATEGY, LIEB, SCORERS, SchedulerState, Scorer, scorer
from cube.scheduler.selection import Placement, place, place_many

__all__ = ["CHECKS", "DEFAULT_STRATEGY", "LIEB", "PIPELINE", "SCORERS", "Placement", "SchedulerState", "Scorer",
           "feasible", "place", "place_many", "release", "reserve", "scorer"]
