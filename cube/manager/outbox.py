"""What the manager has to deliver to its nodes, and how each delivery goes. The node diff (`reconcile.node_diff`)
says what a node should be told; the outbox decides when to tell it (again):

- a request already on its way is not sent twice;
- a failed one waits RETRY_BASE seconds, doubling up to RETRY_MAX, then goes again if the diff still wants it;
- a delivered one is not resent until a report taken after its delivery still lacks it (the worker lost it);
- a request the diff no longer wants (the report shows it done, or the task moved on) is forgotten.

One record per (node, kind, task id, generation): kind is "send" (an assignment) or "stop". The manager calls it with
its lock held; the outbox itself keeps no lock and does no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

RETRY_BASE = 0.5  # seconds before a failed delivery is tried again; doubles up to RETRY_MAX
RETRY_MAX = 10.0

Key = tuple  # (kind, task id, generation)


@dataclass
class Attempt:
    in_flight: bool = False
    acked_at: float | None = None  # monotonic time the node acknowledged it
    failures: int = 0
    next_at: float = 0.0  # monotonic time before which it is not tried again


class Outbox:
    def __init__(self, monotonic: Callable[[], float]):
        self.monotonic = monotonic
        self._boxes: dict[str, dict[Key, Attempt]] = {}

    def due(self, node: str, wanted: set[Key], report_start: float, scope: set[str] | None = None) -> list[tuple]:
        """Of what the diff wants for `node`, what to send now, as (node, kind, task id, generation) items, each
        marked in flight. `report_start`: when the poll that brought the node's latest report began. `scope`: the
        task ids the diff looked at (None: all), so the requests of the others are kept as they are."""
        box = self._boxes.setdefault(node, {})
        for key in list(box):
            if key not in wanted and not box[key].in_flight and (scope is None or key[1] in scope):
                del box[key]
        now = self.monotonic()
        due = []
        for key in sorted(wanted):
            attempt = box.setdefault(key, Attempt())
            if attempt.in_flight or attempt.next_at > now:
                continue
            if attempt.acked_at is not None and report_start < attempt.acked_at:
                continue  # delivered; the latest report was taken before it arrived
            attempt.in_flight = True
            due.append((node, *key))
        return due

    def done(self, node: str, key: Key, ok: bool) -> None:
        """How a delivery went: acknowledged, or failed (tried again after the backoff, if still wanted)."""
        attempt = self._boxes.get(node, {}).get(key)
        if attempt is None:
            return
        attempt.in_flight = False
        if ok:
            attempt.acked_at, attempt.failures = self.monotonic(), 0
        else:
            attempt.failures += 1
            attempt.next_at = self.monotonic() + min(RETRY_BASE * 2 ** (attempt.failures - 1), RETRY_MAX)

    def waiting(self) -> dict[str, set[str]]:
        """Node -> the task ids of its requests not yet seen done: their diffs are computed again every round."""
        return {node: {key[1] for key in box} for node, box in self._boxes.items() if box}
