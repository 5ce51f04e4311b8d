"""Where a task runs: feasibility, ranking and selection over plain data (see `place`)."""
from cube.scheduler.place import (CHECKS, DEFAULT_STRATEGY, LIEB, SCORERS, Placement, SchedulerState, feasible,
                                  place, place_many, release, reserve, scorer)

__all__ = ["CHECKS", "DEFAULT_STRATEGY", "LIEB", "SCORERS", "Placement", "SchedulerState", "feasible", "place",
           "place_many", "release", "reserve", "scorer"]
