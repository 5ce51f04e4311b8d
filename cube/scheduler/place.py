"""Where a task runs. The scheduler decides, for a task spec and the nodes the manager knows, which node gets the
task, and why every other node did not. It is a pipeline over plain data (Nomad's feasible → rank → select):

1. feasibility: `CHECKS`, small functions `(spec, node) -> None | reason`, run in a fixed order; the first reason
   wins and is kept per rejected node, so a failed placement can be explained node by node;
2. ranking: a scorer from `SCORERS` gives every feasible node a score, higher is better;
3. selection: the best score wins; ties are broken by a hash of (seed, node name), so the same seed (the task id)
   replays the same placement whatever the order of the node list.

No I/O, no store and no clock live here (bench/scheduling.py times it from outside). `place` only picks;
`place_many` and `reserve`/`release` change the `Node` objects they are given (allocated resources, used host
ports, task count), which the manager then persists.
"""
from __future__ import annotations

import hashlib
import heapq
import math
from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

from cube.core.errors import BadRequest
from cube.core.model import Node, TaskSpec, format_size

EPSILON = 1e-9  # allocations are float sums: 0.1 + 0.2 must still fit in 0.3 free

# ---------------------------------------------------------------------------------------------------- feasibility

# Architecture names as `uname -m` (the worker's label) and as Docker/Debian spell them.
ARCH_ALIASES = {"amd64": "x86_64", "x86_64": "x86_64", "arm64": "aarch64", "aarch64": "aarch64",
                "armhf": "armv7l", "armv7l": "armv7l"}


def check_state(spec: TaskSpec, node: Node) -> str | None:
    if node.state != "ready":
        return f"node is {node.state}"
    return None


def check_constraints(spec: TaskSpec, node: Node) -> str | None:
    labels = node.labels
    for text in spec.constraints:
        key, equal, want = parse_constraint(text)
        have = labels.get(key)
        if have is None:
            # A node that does not know the key cannot promise equality, and is certainly not the excluded value.
            if equal:
                return f"constraint {text} not met (node has no {key} label)"
            continue
        if (_normal(key, str(have)) == _normal(key, want)) != equal:
            return f"constraint {text} not met (node has {have})"
    return None


def check_cpu(spec: TaskSpec, node: Node) -> str | None:
    if spec.cpu <= 0:  # no cpu asked, none reserved: fits even a node whose cpu is all allocated
        return None
    free = node.capacity.cpu - node.allocated.cpu
    if spec.cpu > free + EPSILON:
        return f"insufficient cpu (needs {_cores(spec.cpu)}, free {_number(free)})"
    return None


def check_memory(spec: TaskSpec, node: Node) -> str | None:
    if spec.memory <= 0:
        return None
    free = node.capacity.memory - node.allocated.memory
    if spec.memory > free:
        return f"insufficient memory (needs {format_size(spec.memory)}, free {format_size(max(free, 0))})"
    return None


def check_disk(spec: TaskSpec, node: Node) -> str | None:
    if spec.disk <= 0:
        return None
    free = node.capacity.disk - node.allocated.disk
    if spec.disk > free:
        return f"insufficient disk (needs {format_size(spec.disk)}, free {format_size(max(free, 0))})"
    return None


def check_ports(spec: TaskSpec, node: Node) -> str | None:
    used = node.used_ports
    if not used:
        return None
    for port in spec.ports:
        if port.host and (port.host, port.protocol) in used:
            return f"host port {port.host}/{port.protocol} already used"
    return None


# The order is the order of the reasons users read. State and constraints come first: they are what the node *is*,
# so when a node is both the wrong architecture and full, the user reads the reason that more capacity would not
# fix. Both are also the cheapest for the common spec (one string compare; an empty tuple). Then the resources, by
# how often they run out (cpu, memory, disk), then host ports, which only specs with fixed host ports can miss.
CHECKS: tuple[Callable[[TaskSpec, Node], str | None], ...] = (
    check_state, check_constraints, check_cpu, check_memory, check_disk, check_ports)


def feasible(spec: TaskSpec, node: Node) -> str | None:
    """None when `node` can take `spec`, otherwise the first reason it cannot."""
    for check in CHECKS:
        reason = check(spec, node)
        if reason:
            return reason
    return None


def _checks_for(spec: TaskSpec) -> tuple:
    """CHECKS without the checks that cannot fail for this spec (no cpu asked, no constraints, ...): the same
    answers as `feasible`, with fewer calls per node in the placement loop."""
    needed = {check_state: True, check_constraints: bool(spec.constraints), check_cpu: spec.cpu > 0,
              check_memory: spec.memory > 0, check_disk: spec.disk > 0,
              check_ports: any(p.host for p in spec.ports)}
    return tuple(check for check in CHECKS if needed.get(check, True))


@lru_cache(maxsize=4096)
def parse_constraint(text: str) -> tuple[str, bool, str]:
    """`key=value` / `key==value` → (key, True, value); `key!=value` → (key, False, value)."""
    for op in ("!=", "==", "="):  # "!=" and "==" before "=", which both contain
        if op in text:
            key, value = text.split(op, 1)
            return key.strip(), op != "!=", value.strip()
    raise BadRequest(f"constraint must look like key=value or key!=value, not {text!r}")


def _normal(key: str, value: str) -> str:
    if key == "arch":
        value = value.lower()
        return ARCH_ALIASES.get(value, value)
    return value


def _number(value: float) -> str:
    return f"{round(max(value, 0.0), 3):g}"


def _cores(value: float) -> str:
    return f"{_number(value)} core{'' if value == 1 else 's'}"


# -------------------------------------------------------------------------------------------------------- ranking

# E-PVM (Amir et al., "An opportunity cost approach for job assignment in a scalable computing cluster"): the cost
# of a resource at utilisation u is LIEB**u, so placing on a node costs the rise of that curve; the cheapest node
# wins. The constant is the book's.
LIEB = 1.53960071783900203869
# A task asking for no cpu or memory still uses some. Without a nominal demand, E-PVM would see no cost anywhere and
# pile every such task on one node. Every task therefore counts at least this much, both as a demand and in the
# node's load (max(allocated, nominal × tasks): exact when a node holds only such tasks, or none). Nominal demand
# ranks nodes; it is never reserved, so it never makes a node infeasible.
NOMINAL_CPU = 0.01
NOMINAL_MEMORY = 16 << 20

NodeScore = Callable[[Node], float]


@dataclass
class SchedulerState:
    """What the scheduler remembers between placements; the manager keeps one. Round-robin continues after `last`."""
    last: str = ""  # name of the last node picked


@dataclass(frozen=True)
class Scorer:
    """Ranks the feasible nodes for one spec. `prepare(spec, candidates, state)` runs once per placement (per-spec
    work stays out of the per-node loop) and returns the node → score function, higher is better, roughly in
    [-1, 1]. `node_local`: the score depends on the node and spec alone, not on the other picks, so `place_many`
    only has to re-score the node it just filled."""
    name: str
    prepare: Callable[[TaskSpec, list, SchedulerState], NodeScore]
    node_local: bool = True


def _loads(node: Node) -> tuple[float, float]:
    """Cpu and memory in use on the node, counting every task at least at its nominal demand."""
    tasks = node.tasks
    return (max(node.allocated.cpu, NOMINAL_CPU * tasks), max(node.allocated.memory, NOMINAL_MEMORY * tasks))


def _demand(spec: TaskSpec) -> tuple[float, float]:
    return max(spec.cpu, NOMINAL_CPU), max(spec.memory, NOMINAL_MEMORY)


def _epvm(spec: TaskSpec, candidates: list, state: SchedulerState) -> NodeScore:
    cpu, memory = _demand(spec)
    worst = LIEB - 1.0  # marginal cost of a resource the node does not declare: as if it were taken whole
    span = 2 * (LIEB - 1.0)  # the cost of taking two resources from 0 to 100 %: normalises the score to [-1, 0]

    def score(node: Node) -> float:
        # This runs once per node per placement: `_loads` is written out inline, it is the hot loop.
        tasks, allocated, capacity = node.tasks, node.allocated, node.capacity
        if capacity.cpu > 0:
            used = allocated.cpu if allocated.cpu > NOMINAL_CPU * tasks else NOMINAL_CPU * tasks
            cost = LIEB ** ((used + cpu) / capacity.cpu) - LIEB ** (used / capacity.cpu)
        else:
            cost = worst
        if capacity.memory > 0:
            used = allocated.memory if allocated.memory > NOMINAL_MEMORY * tasks else NOMINAL_MEMORY * tasks
            cost += LIEB ** ((used + memory) / capacity.memory) - LIEB ** (used / capacity.memory)
        else:
            cost += worst
        return -cost / span
    return score


def _after(cpu: float, memory: float, node: Node) -> tuple[float, float]:
    """Cpu and memory utilisation of the node after placing a demand of `cpu` cores and `memory` bytes (a resource
    the node does not declare counts as full)."""
    used_cpu, used_memory = _loads(node)
    capacity = node.capacity
    return ((used_cpu + cpu) / capacity.cpu if capacity.cpu > 0 else 1.0,
            (used_memory + memory) / capacity.memory if capacity.memory > 0 else 1.0)


def _binpack(spec: TaskSpec, candidates: list, state: SchedulerState) -> NodeScore:
    # Nomad's binpack fit: 10**free_cpu + 10**free_memory (free fractions clamped to [0, 1]) runs from 2 (full) to
    # 20 (empty); the exponent makes the freer resource dominate, so nodes fill evenly in both resources.
    cpu, memory = _demand(spec)

    def score(node: Node) -> float:
        cpu_after, memory_after = _after(cpu, memory, node)
        fit = 10.0 ** min(max(1.0 - cpu_after, 0.0), 1.0) + 10.0 ** min(max(1.0 - memory_after, 0.0), 1.0)
        return (20.0 - fit) / 18.0   # 1: the node is full after placing
    return score


def _spread(spec: TaskSpec, candidates: list, state: SchedulerState) -> NodeScore:
    # Lowest utilisation after placing, judged on the fuller resource first (Nomad's inverted binpack fit would let
    # an idle cpu hide a full memory), with the mean to tell nodes of equal dominant use apart. Task count enters
    # through the nominal load, so tasks that reserve nothing still go to the node with the fewest tasks.
    cpu, memory = _demand(spec)

    def score(node: Node) -> float:
        cpu_after, memory_after = _after(cpu, memory, node)
        dominant = cpu_after if cpu_after > memory_after else memory_after
        return 1.0 - (dominant + (cpu_after + memory_after) / 2) / 2   # 1: the node is empty after placing
    return score


def _roundrobin(spec: TaskSpec, candidates: list, state: SchedulerState) -> NodeScore:
    # The book's round-robin, over names rather than list positions, so nodes coming and going do not reshuffle
    # the turn: the first feasible name after the last pick scores 0, the one after it -1/n, ... wrapping around.
    names = sorted({node.name for node in candidates})
    start = bisect_right(names, state.last)
    count = len(names)
    rank = {name: -((index - start) % count) / count for index, name in enumerate(names)}
    return lambda node: rank[node.name]


SCORERS: dict[str, Scorer] = {
    "epvm": Scorer("epvm", _epvm),
    "roundrobin": Scorer("roundrobin", _roundrobin, node_local=False),
    "binpack": Scorer("binpack", _binpack),
    "spread": Scorer("spread", _spread),
}
DEFAULT_STRATEGY = "epvm"


def scorer(strategy: str) -> Scorer:
    try:
        return SCORERS[strategy]
    except (KeyError, TypeError):
        raise BadRequest(f"unknown scheduling strategy {strategy!r}: use one of {', '.join(SCORERS)}") from None


# ------------------------------------------------------------------------------------------------------ selection

_MASK = (1 << 64) - 1


def _seed_hash(seed) -> int:
    return int.from_bytes(hashlib.blake2b(str(seed).encode(), digest_size=8).digest(), "big")


@lru_cache(maxsize=65536)
def _name_hash(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big")


def _tiebreak(seed_hash: int, name: str) -> int:
    # A per-seed shuffle of node names that depends on the name only (not on list order): xor is a bijection and
    # the odd multiplier spreads low-bit differences into the high bits that decide the order.
    return ((_name_hash(name) ^ seed_hash) * 0x9E3779B97F4A7C15) & _MASK


@dataclass
class Placement:
    """The node picked (None: nothing fits), the reason each node looked at was rejected, and the scores of the
    feasible nodes looked at. When nothing fits every node was looked at, so every node has its reason."""
    node: Node | None
    reasons: dict[str, str] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)

    def counts(self) -> Counter:
        """How many nodes were rejected for each kind of reason (Nomad's filter counts)."""
        return Counter(reason.split(" (")[0] for reason in self.reasons.values())

    def summary(self) -> str:
        """One line for a task's `reason`: "no node fits: 2 insufficient memory, 1 node is down"."""
        if self.node is not None:
            return f"placed on {self.node.name}"
        if not self.reasons:
            return "no node fits: no nodes known"
        parts = ", ".join(f"{count} {kind}" for kind, count in sorted(self.counts().items(), key=lambda kv: -kv[1]))
        return f"no node fits: {parts}"

    def explain(self) -> str:
        """One line per rejected node: "node-a: insufficient memory (needs 512 MiB, free 200 MiB)"."""
        if not self.reasons:
            return "no nodes known" if self.node is None else ""
        return "\n".join(f"{name}: {reason}" for name, reason in sorted(self.reasons.items()))


def place(spec: TaskSpec, nodes: list[Node], strategy: str = DEFAULT_STRATEGY, seed: str | int = 0,
          state: SchedulerState | None = None, limit: int | None = None) -> Placement:
    """Pick a node for one copy of `spec`. The nodes are not changed: call `reserve(placement.node, spec)` once the
    placement is committed. `state.last` becomes the picked node (round-robin continues after it).

    `limit`: look for at most this many feasible nodes, visiting the list in a seeded pseudo-random order
    (Nomad's bounded candidate set; 2 is "power of two choices"). The walk goes on past infeasible nodes, so a
    sampled placement fails only when no node at all fits; which nodes it looks at depends on the seed and on the
    list order, so pass the nodes in a stable order to replay it. None looks at every node (exact, O(nodes))."""
    _check_limit(limit)
    return _place(spec, nodes, scorer(strategy), _seed_hash(seed), state if state is not None else SchedulerState(),
                  limit)


def _check_limit(limit) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise BadRequest(f"limit must be a whole number of at least 1 (or None for every node), not {limit!r}")


def _place(spec, nodes, rank: Scorer, seed_hash: int, state: SchedulerState, limit: int | None) -> Placement:
    checks = _checks_for(spec)
    reasons: dict[str, str] = {}
    candidates: list[Node] = []
    for node in _visit(nodes, seed_hash, limit):
        for check in checks:
            reason = check(spec, node)
            if reason:
                reasons[node.name] = reason
                break
        else:
            candidates.append(node)
            if limit is not None and len(candidates) >= limit:
                break
    if not candidates:
        return Placement(None, reasons, {})
    score = rank.prepare(spec, candidates, state)
    scores: dict[str, float] = {}
    best, best_score, best_tie = None, -math.inf, None
    for node in candidates:
        value = score(node)
        scores[node.name] = value
        if value > best_score:
            best, best_score, best_tie = node, value, None
        elif value == best_score:  # ties are common (identical empty nodes): hash names only then
            if best_tie is None:
                best_tie = _tiebreak(seed_hash, best.name)
            tie = _tiebreak(seed_hash, node.name)
            if tie < best_tie:
                best, best_tie = node, tie
    state.last = best.name
    return Placement(best, reasons, scores)


def _visit(nodes: list[Node], seed_hash: int, limit: int | None):
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


def place_many(spec: TaskSpec, count: int, nodes: list[Node], strategy: str = DEFAULT_STRATEGY,
               seed: str | int = 0, state: SchedulerState | None = None,
               limit: int | None = None) -> list[Placement]:
    """Place `count` copies of `spec` in one pass. Each pick is reserved on the given Node object at once
    (`reserve`), so the next pick sees it, and the manager persists the nodes afterwards; `release` undoes a copy
    the manager does not commit. The picks are those of `count` calls to `place` with the same seed, each followed
    by `reserve` (with a limit, copy i uses seed (seed, i) so the samples differ).

    To keep memory flat for large jobs, a successful Placement here carries only its own node's score and no
    reasons; a failed one carries every node's reason. Without a limit the ranked strategies cost O(nodes) once
    and O(log nodes) per copy (a heap: a pick only changes the picked node's score)."""
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


def _place_sampled(spec, count, nodes, rank, seed_hash, state, limit) -> list[Placement]:
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
    return Placement(placement.node, {}, {placement.node.name: placement.scores[placement.node.name]})


def _place_heap(spec, count, nodes, rank, seed_hash, state) -> list[Placement]:
    checks = _checks_for(spec)
    score = rank.prepare(spec, nodes, state)
    reasons: dict[str, str] = {}
    heap = []
    for index, node in enumerate(nodes):
        reason = _first(checks, spec, node)
        if reason:
            reasons[node.name] = reason
        else:
            heap.append((-score(node), _tiebreak(seed_hash, node.name), index))
    heapq.heapify(heap)
    placements = []
    while len(placements) < count and heap:
        negative, tie, index = heapq.heappop(heap)
        node = nodes[index]
        placements.append(Placement(node, {}, {node.name: -negative}))
        reserve(node, spec)
        state.last = node.name
        reason = _first(checks, spec, node)
        if reason:
            reasons[node.name] = reason
        else:
            heapq.heappush(heap, (-score(node), tie, index))
    if len(placements) < count:
        failed = Placement(None, reasons, {})
        placements.extend([failed] * (count - len(placements)))
    return placements


def _place_ring(spec, count, nodes, state) -> list[Placement]:
    """Round-robin copies: walk the nodes sorted by name from after `state.last`; only the picked node changes
    between copies, so the walk never needs to restart."""
    checks = _checks_for(spec)
    ring = sorted(nodes, key=lambda node: node.name)
    size = len(ring)
    position = bisect_right([node.name for node in ring], state.last)
    placements = []
    skipped = 0  # nodes rejected in a row: a whole turn of them means nothing fits
    while len(placements) < count and size and skipped < size:
        node = ring[position % size]
        position += 1
        reason = _first(checks, spec, node)
        if reason:
            skipped += 1
            continue
        skipped = 0
        placements.append(Placement(node, {}, {node.name: 0.0}))
        reserve(node, spec)
        state.last = node.name
    if len(placements) < count:
        failed = Placement(None, {node.name: _first(checks, spec, node) for node in ring}, {})
        placements.extend([failed] * (count - len(placements)))
    return placements


def _first(checks, spec, node) -> str | None:
    for check in checks:
        reason = check(spec, node)
        if reason:
            return reason
    return None


# ---------------------------------------------------------------------------------------------------- bookkeeping

def reserve(node: Node, spec: TaskSpec) -> None:
    """Count one copy of `spec` on `node`: its cpu, memory and disk, its fixed host ports, one more task."""
    allocated = node.allocated
    allocated.cpu = round(allocated.cpu + spec.cpu, 9)  # rounding keeps float sums from drifting
    allocated.memory += spec.memory
    allocated.disk += spec.disk
    for port in spec.ports:
        if port.host:
            node.used_ports.add((port.host, port.protocol))
    node.tasks += 1


def release(node: Node, spec: TaskSpec) -> None:
    """Undo `reserve`: the copy stopped, moved away or was never committed. Never goes below zero."""
    allocated = node.allocated
    allocated.cpu = max(round(allocated.cpu - spec.cpu, 9), 0.0)
    allocated.memory = max(allocated.memory - spec.memory, 0)
    allocated.disk = max(allocated.disk - spec.disk, 0)
    for port in spec.ports:
        if port.host:
            node.used_ports.discard((port.host, port.protocol))
    node.tasks = max(node.tasks - 1, 0)
