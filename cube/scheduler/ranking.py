"""Ranking: how good is each feasible node for this task? A strategy (`SCORERS`: E-PVM, the default, binpack,
spread, round-robin) turns the feasible nodes of one placement into a node → score function, higher is better,
roughly in [-1, 1]. Nothing here decides whether a node can take the task (`feasibility`) or breaks ties (`selection`).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass

from cube.core.errors import BadRequest
from cube.core.model import Node, TaskSpec

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
    prepare: Callable[[TaskSpec, list[Node], SchedulerState], NodeScore]
    node_local: bool = True


def _loads(node: Node) -> tuple[float, float]:
    """Cpu and memory in use on the node, counting every task at least at its nominal demand."""
    tasks = node.tasks
    return (max(node.allocated.cpu, NOMINAL_CPU * tasks), max(node.allocated.memory, NOMINAL_MEMORY * tasks))


def _demand(spec: TaskSpec) -> tuple[float, float]:
    return max(spec.cpu, NOMINAL_CPU), max(spec.memory, NOMINAL_MEMORY)


def _epvm(spec: TaskSpec, candidates: list[Node], state: SchedulerState) -> NodeScore:
    cpu, memory = _demand(spec)
    worst = LIEB - 1.0  # marginal cost of a resource the node does not declare: as if it were taken whole
    span = 2 * (LIEB - 1.0)  # the cost of taking two resources from 0 to 100 %: normalises the score to [-1, 0]

    def score(node: Node) -> float:
        # This runs once per node per placement: `_loads` is written out inline, it is the hot loop (and the
        # conditional expressions stand for max(), which costs a call: ~100 ns against ~20 ns on CPython 3.11).
        tasks, allocated, capacity = node.tasks, node.allocated, node.capacity
        if capacity.cpu > 0:
            used = allocated.cpu if allocated.cpu > NOMINAL_CPU * tasks else NOMINAL_CPU * tasks  # noqa: FURB136
            cost = LIEB ** ((used + cpu) / capacity.cpu) - LIEB ** (used / capacity.cpu)
        else:
            cost = worst
        if capacity.memory > 0:
            used = (
                allocated.memory
                if allocated.memory > NOMINAL_MEMORY * tasks  # noqa: FURB136
                else NOMINAL_MEMORY * tasks
            )
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
    return (
        (used_cpu + cpu) / capacity.cpu if capacity.cpu > 0 else 1.0,
        (used_memory + memory) / capacity.memory if capacity.memory > 0 else 1.0,
    )


def _binpack(spec: TaskSpec, candidates: list[Node], state: SchedulerState) -> NodeScore:
    # Nomad's binpack fit: 10**free_cpu + 10**free_memory (free fractions clamped to [0, 1]) runs from 2 (full) to
    # 20 (empty); the exponent makes the freer resource dominate, so nodes fill evenly in both resources.
    cpu, memory = _demand(spec)

    def score(node: Node) -> float:
        cpu_after, memory_after = _after(cpu, memory, node)
        fit = 10.0 ** min(max(1.0 - cpu_after, 0.0), 1.0) + 10.0 ** min(max(1.0 - memory_after, 0.0), 1.0)
        return (20.0 - fit) / 18.0  # 1: the node is full after placing

    return score


def _spread(spec: TaskSpec, candidates: list[Node], state: SchedulerState) -> NodeScore:
    # Lowest utilisation after placing, judged on the fuller resource first (Nomad's inverted binpack fit would let
    # an idle cpu hide a full memory), with the mean to tell nodes of equal dominant use apart. Task count enters
    # through the nominal load, so tasks that reserve nothing still go to the node with the fewest tasks.
    cpu, memory = _demand(spec)

    def score(node: Node) -> float:
        cpu_after, memory_after = _after(cpu, memory, node)
        dominant = cpu_after if cpu_after > memory_after else memory_after  # noqa: FURB136 (hot loop, see _epvm)
        return 1.0 - (dominant + (cpu_after + memory_after) / 2) / 2  # 1: the node is empty after placing

    return score


def _roundrobin(spec: TaskSpec, candidates: list[Node], state: SchedulerState) -> NodeScore:
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
