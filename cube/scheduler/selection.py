"""Selection: which node gets the task. `place` walks the nodes (all of them, or a seeded sample when given a
`limit`), keeps each rejected node's `Rejection` (`feasibility`), ranks the feasible ones (`ranking`) and picks the best
score; ties are broken by a hash of (seed, node name), so the same seed (the task id) replays the same placement
whatever the order of the node list. `place_many` picks for the copies of a job in one pass. The result is a
`Placement`: the node, every rejection, the scores, and a summary a user can read.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

from cube.core.errors import BadRequest
from cube.core.model import Node, TaskSpec
from cube.scheduler.bookkeeping import reserve
from cube.scheduler.feasibility import KINDS, Check, Rejection, checks_for, first_rejection
from cube.scheduler.ranking import DEFAULT_STRATEGY, SchedulerState, Scorer, scorer

_MASK = (1 << 64) - 1


@dataclass(slots=True)
class Placement:
    """The node picked (None: nothing fits), the rejection of each node looked at, and the scores of the feasible
    nodes looked at. `examined` nodes were looked at out of the `total` given: fewer only when a `limit` sampled
    them. When nothing fits every node was looked at, so every node has its rejection."""

    node: Node | None
    rejections: dict[str, Rejection] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    examined: int = 0
    total: int = 0

    @property
    def reasons(self) -> dict[str, str]:
        """Node name → the detail users read ("insufficient memory (needs 8 GiB, free 4 GiB)"): plain JSON."""
        return {name: rejection.detail for name, rejection in self.rejections.items()}

    def counts(self) -> Counter[str]:
        """How many nodes were rejected for each kind of reason (Nomad's filter counts)."""
        return Counter(rejection.kind for rejection in self.rejections.values())

    def tally(self) -> str:
        """The counts as text, most frequent first (ties in pipeline order): "2 insufficient memory, 1 node not
        ready"."""
        counts = self.counts()
        order = sorted(counts, key=lambda kind: (-counts[kind], _kind_order(kind)))
        return ", ".join(f"{counts[kind]} {kind}" for kind in order)

    def summary(self) -> str:
        """One line for a task's `reason`: "no node fits: 2 insufficient memory, 1 node not ready", or "placed on
        node-b (examined 19 of 200 nodes; 3 rejected: 3 insufficient cpu)"."""
        sampled = f"examined {self.examined} of {self.total} nodes" if self.examined < self.total else ""
        if self.node is None:
            if not self.rejections:
                return "no node fits: no nodes known"
            return f"no node fits: {self.tally()}" + (f" ({sampled})" if sampled else "")
        parts = [sampled] if sampled else []
        if self.rejections:
            parts.append(f"{len(self.rejections)} rejected: {self.tally()}")
        return f"placed on {self.node.name}" + (f" ({'; '.join(parts)})" if parts else "")

    def explain(self) -> str:
        """One line per rejected node: "node-a: insufficient memory (needs 512 MiB, free 200 MiB)"."""
        if not self.rejections:
            return "no nodes known" if self.node is None else ""
        return "\n".join(f"{name}: {rejection.detail}" for name, rejection in sorted(self.rejections.items()))


def _kind_order(kind: str) -> int:
    return KINDS.index(kind) if kind in KINDS else len(KINDS)


# ---------------------------------------------------------------------------------------------------------- place


def place(
    spec: TaskSpec,
    nodes: list[Node],
    strategy: str = DEFAULT_STRATEGY,
    seed: str | int = 0,
    state: SchedulerState | None = None,
    limit: int | None = None,
    homes: Mapping[str, tuple[str, str]] | None = None,
    lacking: Mapping[str, str] | None = None,
) -> Placement:
    """Pick a node for one copy of `spec`. The nodes are not changed: call `reserve(placement.node, spec)` once the
    placement is committed. `state.last` becomes the picked node (round-robin continues after it). `homes`: where
    named volumes already live (volume name -> (node, its state)): a task that mounts one goes only there.
    `lacking`: the platforms the spec's image is known to have no variant for (platform -> the node that found out).

    `limit`: look for at most this many feasible nodes, visiting the list in a seeded pseudo-random order
    (Nomad's bounded candidate set; 2 is "power of two choices"). The walk goes on past infeasible nodes, so a
    sampled placement fails only when no node at all fits; which nodes it looks at depends on the seed and on the
    list order, so pass the nodes in a stable order to replay it. None looks at every node (exact, O(nodes))."""
    _check_limit(limit)
    return _place(
        spec,
        nodes,
        scorer(strategy),
        _seed_hash(seed),
        state if state is not None else SchedulerState(),
        limit,
        checks_for(spec, homes, lacking),
    )


def _check_limit(limit: object) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise BadRequest(f"limit must be a whole number of at least 1 (or None for every node), not {limit!r}")


def _place(
    spec: TaskSpec,
    nodes: list[Node],
    rank: Scorer,
    seed_hash: int,
    state: SchedulerState,
    limit: int | None,
    checks: tuple[Check, ...] | None = None,
) -> Placement:
    checks = checks_for(spec) if checks is None else checks
    rejections: dict[str, Rejection] = {}
    candidates: list[Node] = []
    for node in _visit(nodes, seed_hash, limit):
        # `first_rejection` written out: this loop runs once per node per placement.
        for check in checks:
            rejection = check(spec, node)
            if rejection is not None:
                rejections[node.name] = rejection
                break
        else:
            candidates.append(node)
            if limit is not None and len(candidates) >= limit:
                break
    examined = len(rejections) + len(candidates)
    if not candidates:
        return Placement(None, rejections, {}, examined, len(nodes))
    best, scores = _best(spec, candidates, rank, seed_hash, state)
    state.last = best.name
    return Placement(best, rejections, scores, examined, len(nodes))


def _best(
    spec: TaskSpec, candidates: list[Node], rank: Scorer, seed_hash: int, state: SchedulerState
) -> tuple[Node, dict[str, float]]:
    """The best-scored candidate (ties to the lowest seeded hash) and every candidate's score."""
    score = rank.prepare(spec, candidates, state)
    scores: dict[str, float] = {}
    best, best_score, best_tie = candidates[0], -math.inf, -1
    for node in candidates:
        value = score(node)
        scores[node.name] = value
        if value > best_score:
            best, best_score, best_tie = node, value, -1
        elif value == best_score:  # ties are common (identical empty nodes): hash names only then
            if best_tie < 0:
                best_tie = _tiebreak(seed_hash, best.name)
            tie = _tiebreak(seed_hash, node.name)
            if tie < best_tie:
                best, best_tie = node, tie
    return best, scores


def _visit(nodes: list[Node], seed_hash: int, limit: int | None) -> Iterable[Node]:
    """All nodes in list order when there is no limit; otherwise every node once, from a seeded start with a seeded
    stride coprime to the count: a pseudo-random order in O(1) setup, no shuffled copy of the list."""
    count = len(nodes)
    if limit is None or limit >= count:
        return nodes
    start = seed_hash % count
    stride = 1 + (seed_hash >> 32) % (count - 1) if count > 1 else 1
    while math.gcd(stride, count) != 1:
        stride += 1
    return (nodes[(start + i * stride) % count] for i in range(count))


def _seed_hash(seed: object) -> int:
    return int.from_bytes(hashlib.blake2b(str(seed).encode(), digest_size=8).digest(), "big")


@lru_cache(maxsize=65536)
def _name_hash(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big")


def _tiebreak(seed_hash: int, name: str) -> int:
    # A per-seed shuffle of node names that depends on the name only (not on list order): xor is a bijection and
    # the odd multiplier spreads low-bit differences into the high bits that decide the order.
    return ((_name_hash(name) ^ seed_hash) * 0x9E3779B97F4A7C15) & _MASK


# ----------------------------------------------------------------------------------------------------- place_many


def place_many(
    spec: TaskSpec,
    count: int,
    nodes: list[Node],
    strategy: str = DEFAULT_STRATEGY,
    seed: str | int = 0,
    state: SchedulerState | None = None,
    limit: int | None = None,
) -> list[Placement]:
    """Place `count` copies of `spec` in one pass. Each pick is reserved on the given Node object at once
    (`reserve`), so the next pick sees it, and the manager persists the nodes afterwards; `release` undoes a copy
    the manager does not commit. The picks are those of `count` calls to `place` with the same seed, each followed
    by `reserve` (with a limit, copy i uses seed (seed, i) so the samples differ).

    To keep memory flat for large jobs, a successful Placement here carries only its own node's score and no
    rejections; a failed one carries every node's rejection. Without a limit the ranked strategies cost O(nodes)
    once and O(log nodes) per copy (a heap: a pick only changes the picked node's score)."""
    if count <= 0:
        return []
    rank = scorer(strategy)
    _check_limit(limit)
    state = state if state is not None else SchedulerState()
    seed_hash = _seed_hash(seed)
    if limit is not None and limit < len(nodes):
        return _place_sampled(spec, count, nodes, rank, seed_hash, state, limit)
    if not rank.node_local:
        return _place_ring(spec, count, nodes, state)
    return _place_heap(spec, count, nodes, rank, seed_hash, state)


def _place_sampled(
    spec: TaskSpec, count: int, nodes: list[Node], rank: Scorer, seed_hash: int, state: SchedulerState, limit: int
) -> list[Placement]:
    placements = []
    for copy in range(count):
        placement = _place(spec, nodes, rank, _seed_hash((seed_hash, copy)), state, limit)
        placements.append(_slim(placement))
        if placement.node is None:  # nothing fits now, and further copies only take more
            placements.extend([placement] * (count - copy - 1))
            break
        reserve(placement.node, spec)
    return placements


def _slim(placement: Placement) -> Placement:
    if placement.node is None:
        return placement
    name = placement.node.name
    return Placement(placement.node, {}, {name: placement.scores[name]}, placement.examined, placement.total)


def _place_heap(
    spec: TaskSpec, count: int, nodes: list[Node], rank: Scorer, seed_hash: int, state: SchedulerState
) -> list[Placement]:
    checks = checks_for(spec)
    score = rank.prepare(spec, nodes, state)
    total = len(nodes)
    rejections: dict[str, Rejection] = {}
    heap = []
    for index, node in enumerate(nodes):
        rejection = first_rejection(checks, spec, node)
        if rejection is not None:
            rejections[node.name] = rejection
        else:
            heap.append((-score(node), _tiebreak(seed_hash, node.name), index))
    heapq.heapify(heap)
    placements: list[Placement] = []
    while len(placements) < count and heap:
        negative, tie, index = heapq.heappop(heap)
        node = nodes[index]
        # Every node was ranked for this pick (the heap holds them all): as exact as `place`.
        placements.append(Placement(node, {}, {node.name: -negative}, total, total))
        reserve(node, spec)
        state.last = node.name
        rejection = first_rejection(checks, spec, node)
        if rejection is not None:
            rejections[node.name] = rejection
        else:
            heapq.heappush(heap, (-score(node), tie, index))
    if len(placements) < count:
        failed = Placement(None, rejections, {}, total, total)
        placements.extend([failed] * (count - len(placements)))
    return placements


def _place_ring(spec: TaskSpec, count: int, nodes: list[Node], state: SchedulerState) -> list[Placement]:
    """Round-robin copies: walk the nodes sorted by name from after `state.last`; only the picked node changes
    between copies, so the walk never needs to restart."""
    checks = checks_for(spec)
    ring = sorted(nodes, key=lambda node: node.name)
    size = len(ring)
    position = bisect_right([node.name for node in ring], state.last)
    placements: list[Placement] = []
    skipped = 0  # nodes rejected in a row: a whole turn of them means nothing fits
    while len(placements) < count and size and skipped < size:
        node = ring[position % size]
        position += 1
        if first_rejection(checks, spec, node) is not None:
            skipped += 1
            continue
        skipped = 0
        # The first feasible node after the last pick is what `place` would pick among all of them.
        placements.append(Placement(node, {}, {node.name: 0.0}, size, size))
        reserve(node, spec)
        state.last = node.name
    if len(placements) < count:
        failed = Placement(None, _rejections(checks, spec, ring), {}, size, size)
        placements.extend([failed] * (count - len(placements)))
    return placements


def _rejections(checks: tuple[Check, ...], spec: TaskSpec, nodes: list[Node]) -> dict[str, Rejection]:
    found = {}
    for node in nodes:
        rejection = first_rejection(checks, spec, node)
        if rejection is not None:
            found[node.name] = rejection
    return found
