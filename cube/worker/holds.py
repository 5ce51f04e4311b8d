"""When a worker may start again the tasks it held before something happened that the manager has to see first:
this worker restarted, its container engine came back, or it stopped a task on a disconnect. Meanwhile the manager
may have moved such a task elsewhere; starting it here before hearing so would run two copies.

The rule: a hold ends when a poll arrives after an answer given after the hold began. The manager polls again only
after it has acted on the previous answer (and delivered the stops it wanted, before polling: see membership.py),
so by then any stop meant for the task has arrived. With no manager around, a hold ends after HOLD_MAX seconds —
except a disconnect hold, which waits for a manager however long (that is the point of `on_disconnect: stop`).

No I/O and no lock: the worker calls it with its own lock held, and passes the clock.
"""

from __future__ import annotations

HOLD_MAX = 10.0  # seconds a hold waits for a manager before the worker acts alone
DISCONNECT = "disconnect"


class Holds:
    def __init__(self, started: float):
        self.started = started  # monotonic time the worker started
        self.last_polled = float("-inf")  # monotonic time of the last poll (a manager's GET /state)
        self._answers = 0  # answers given so far
        self._confirmed = -1  # answers given before the latest poll arrived: the manager has seen those
        self._held: dict[str, tuple[int, str, float]] = {}  # task id -> (answers at the hold, why, since)

    def hold(self, task_id: str, why: str, now: float) -> None:
        self._held[task_id] = (self._answers, why, now)

    def drop(self, task_id: str) -> None:
        """The manager's word on the task is fresh (a new assignment): nothing to wait for."""
        self._held.pop(task_id, None)

    def polled(self, now: float) -> bool:
        """A poll arrived. Returns whether holds ended."""
        self.last_polled = now
        self._confirmed = self._answers
        return self.release(now)

    def answered(self) -> None:
        self._answers += 1

    def release(self, now: float) -> bool:
        """End the holds that may end now. Returns whether any did."""
        alone = self.alone(now) >= HOLD_MAX
        done = [
            task_id
            for task_id, (seq, why, since) in self._held.items()
            if self._confirmed > seq or (why != DISCONNECT and alone and now - since >= HOLD_MAX)
        ]
        for task_id in done:
            del self._held[task_id]
        return bool(done)

    def renew(self, why: str, now: float) -> None:
        """The holds for `why` count from now (the engine is back: the manager must see that first)."""
        for task_id, (_, reason, _since) in list(self._held.items()):
            if reason == why:
                self.hold(task_id, why, now)

    def alone(self, now: float) -> float:
        """Seconds since the last poll (or since the start, when none came)."""
        return now - max(self.last_polled, self.started)

    def held(self) -> frozenset[str]:
        return frozenset(self._held)

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._held

    def __bool__(self) -> bool:
        return bool(self._held)
