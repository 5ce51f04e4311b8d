"""When a node restarts a task's container on its own, and how long it waits first (Docker's and Kubernetes'
habits, Nomad's attempts per interval):

- a task gets at most `max_restarts` restarts within any `window` seconds of its restart policy; past that a batch
  task fails and a service is handed back to the manager (failed), which reschedules it with a delay;
- the wait before a restart doubles from 0 s (the first restart is immediate) through 1, 2, 4 ... up to 30 s, and
  a run of BACKOFF_RESET seconds resets it (Docker resets after 10 s; a service crashing once a month never
  waits long);
- a container that ended because its engine stopped, or because this worker stopped it on a disconnect, was
  interrupted, not crashed: it is restarted without counting and without waiting.
Pure functions over numbers: the worker passes the clock.
"""

from __future__ import annotations

BACKOFF_BASE = 1.0  # seconds before the second restart in a row; doubles after, the first restart is immediate
BACKOFF_MAX = 30.0
BACKOFF_RESET = 10.0  # seconds of running that make the next crash a first one again


def backoff(streak: int) -> float:
    """Delay before a restart that follows `streak` quick restarts in a row: 0, then 1, 2, 4, ... BACKOFF_MAX."""
    if streak <= 0:
        return 0.0
    return min(BACKOFF_BASE * 2 ** (streak - 1), BACKOFF_MAX)


def recent(times: list[float], now: float, window: float) -> list[float]:
    """The restart times that still count against the policy at `now`."""
    return [t for t in times if now - t < window]


def ran_stable(started_at: float | None, finished_at: float | None) -> bool:
    """Whether a container ran long enough that its end starts a new backoff streak."""
    return started_at is not None and finished_at is not None and finished_at - started_at >= BACKOFF_RESET
