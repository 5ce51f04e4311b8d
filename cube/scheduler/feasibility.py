"""Feasibility: can this node take this task at all? Each check is a small function `(spec, node) -> None |
Rejection`; the pipeline runs them in one fixed order (`PIPELINE`, below) and the first rejection wins. A rejection
is a value with a `kind` (one of `KINDS`, counted to explain a failed placement: "2 insufficient memory, 1 node not
ready") and a `detail` a user can read, with numbers ("insufficient memory (needs 512 MiB, free 200 MiB)"). Nothing
here ranks feasible nodes or picks one (`ranking`, `selection`), and nothing changes a node.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache

from cube.core.errors import BadRequest
from cube.core.images import platform
from cube.core.model import Node, TaskSpec, format_size

# The kinds of rejection, as Nomad names its filter reasons (`FilterConstraintDrivers = "missing drivers"`): short,
# stable texts that are counted per placement and read in a summary ("3 insufficient cpu, 1 node not ready").
NODE_NOT_READY = "node not ready"
NODE_INELIGIBLE = "node ineligible"  # drained or draining: `cube node eligible` takes it back
CONSTRAINT_NOT_MET = "constraint not met"
INSUFFICIENT_CPU = "insufficient cpu"
INSUFFICIENT_MEMORY = "insufficient memory"
INSUFFICIENT_DISK = "insufficient disk"
PORT_IN_USE = "host port in use"
VOLUME_ELSEWHERE = "volume on another node"
MISSING_DEVICE = "missing device"
IMAGE_PLATFORM = "image lacks platform"
KINDS = (
    NODE_NOT_READY,
    NODE_INELIGIBLE,
    VOLUME_ELSEWHERE,
    IMAGE_PLATFORM,
    CONSTRAINT_NOT_MET,
    MISSING_DEVICE,
    INSUFFICIENT_CPU,
    INSUFFICIENT_MEMORY,
    INSUFFICIENT_DISK,
    PORT_IN_USE,
)

READY = "ready"
EPSILON = 1e-9  # allocations are float sums: 0.1 + 0.2 must still fit in 0.3 free

# Architecture names as `uname -m` (the worker's label) and as Docker/Debian spell them.
ARCH_ALIASES = {
    "amd64": "x86_64",
    "x86_64": "x86_64",
    "arm64": "aarch64",
    "aarch64": "aarch64",
    "armhf": "armv7l",
    "armv7l": "armv7l",
}


@dataclass(frozen=True)
class Rejection:
    """Why one node cannot take one task: `kind` (one of `KINDS`) to count, `detail` to show."""

    kind: str
    detail: str

    def __str__(self) -> str:
        return self.detail


Check = Callable[[TaskSpec, Node], Rejection | None]


# -------------------------------------------------------------------------------------------------------- checks


def check_state(spec: TaskSpec, node: Node) -> Rejection | None:
    if node.state == READY:
        return None if node.eligible else _ineligible(node.eligibility, node.name)
    # `reason` says why a node is unhealthy (its engine does not answer, ...) or down.
    return _not_ready(node.state, node.reason)


def check_constraints(spec: TaskSpec, node: Node) -> Rejection | None:
    labels = node.labels
    for text in spec.constraints:
        key, equal, want = parse_constraint(text)
        have = labels.get(key)
        if have is None:
            # A node that does not know the key cannot promise equality, and is certainly not the excluded value.
            if equal:
                return _not_met(text, None)
            continue
        if (_normal(key, str(have)) == _normal(key, want)) != equal:
            return _not_met(text, str(have))
    return None


def check_cpu(spec: TaskSpec, node: Node) -> Rejection | None:
    if spec.cpu <= 0:  # no cpu asked, none reserved: fits even a node whose cpu is all allocated
        return None
    free = node.capacity.cpu - node.allocated.cpu
    if spec.cpu > free + EPSILON:
        return _short_of_cpu(spec.cpu, free)
    return None


def check_memory(spec: TaskSpec, node: Node) -> Rejection | None:
    if spec.memory <= 0:
        return None
    free = node.capacity.memory - node.allocated.memory
    if spec.memory > free:
        return _short_of(INSUFFICIENT_MEMORY, spec.memory, free)
    return None


def check_disk(spec: TaskSpec, node: Node) -> Rejection | None:
    if spec.disk <= 0:
        return None
    free = node.capacity.disk - node.allocated.disk
    if spec.disk > free:
        return _short_of(INSUFFICIENT_DISK, spec.disk, free)
    return None


def check_devices(spec: TaskSpec, node: Node) -> Rejection | None:
    """A device the task passes in must be one the node's worker found (its `devices`, from each report)."""
    for device in spec.devices:
        if device.host not in node.devices:
            return _no_device(device.host)
    return None


def check_ports(spec: TaskSpec, node: Node) -> Rejection | None:
    used = node.used_ports
    if not used:
        return None
    for port, protocol in spec.fixed_host_ports:  # with host networking, every port of the task
        if (port, protocol) in used:
            return _port_used(port, protocol)
    return None


def _always(spec: TaskSpec) -> bool:
    return True


def volume_check(homes: Mapping[str, tuple[str, str]]) -> Check:
    """The check of a task whose named volumes already live somewhere (`homes`: volume name -> (its node, that
    node's state: ready, unhealthy, down, or gone when the node was removed)). A named volume is a directory on one
    node's disk: the task runs there or waits for that node, never starts empty elsewhere. Its data is the
    manager's (which node made which volume), not the spec's or the node's, hence a check made per placement
    (Nomad's CSI volume checker is given the volumes the same way) and joined to the pipeline by `checks_for`."""

    def check_volumes(spec: TaskSpec, node: Node) -> Rejection | None:
        for name in spec.named_volumes:
            home = homes.get(name)
            if home is not None and home[0] != node.name:
                return _volume_elsewhere(name, *home)
        return None

    return check_volumes


def platform_check(lacking: Mapping[str, str]) -> Check:
    """The check of a task whose image is known to have no variant for some platforms (`lacking`: platform such as
    linux/arm64 -> the node whose pull found it out). A node of such a platform would fail the task at once, so it
    is not tried: the manager remembers it per image reference (cube.manager.platforms), from the reason a worker gave
    (cube.core.images.no_variant), and joins this check to the pipeline by `checks_for`."""

    def check_platform(spec: TaskSpec, node: Node) -> Rejection | None:
        arch = node.labels.get("arch")
        if arch is None:
            return None
        where = platform(str(arch))
        seen = lacking.get(where)
        return None if seen is None else _no_variant(spec.image, where, seen)

    return check_platform


# ------------------------------------------------------------------------------------------------------ pipeline

# The pipeline, written once: each check in the order it runs, with the test that tells whether it can reject
# anything for a given spec at all (checks that cannot are left out of the placement loop, see `checks_for`).
# The order is the order of the reasons users read, and it puts the cheap checks first.
PIPELINE: tuple[tuple[Check, Callable[[TaskSpec], bool]], ...] = (
    # What the node *is* comes before what it has: when a node is both down (or the wrong architecture) and full,
    # the user reads the reason that more capacity would not fix. One string compare per node.
    (check_state, _always),
    # Where the task's named volumes live (`volume_check`, added per placement when one does) comes right after:
    # it is also what the node *is* for this task, and a bigger node elsewhere would not fix it.
    # Also what the node is; free for the common spec, whose constraints are an empty tuple.
    (check_constraints, lambda spec: bool(spec.constraints)),
    # What the node has plugged in: a set lookup per device the task asks for (most ask for none).
    (check_devices, lambda spec: bool(spec.devices)),
    # The resources, by how often they run out on a LAN of small nodes: cpu, then memory, then disk. A subtraction
    # and a compare each; a rejection is only built (or found in its memo, below) for a node that is rejected.
    (check_cpu, lambda spec: spec.cpu > 0),
    (check_memory, lambda spec: spec.memory > 0),
    (check_disk, lambda spec: spec.disk > 0),
    # Last: only specs with fixed host ports (or host networking) can miss it, and it walks the spec's ports.
    (check_ports, lambda spec: bool(spec.fixed_host_ports)),
)
CHECKS: tuple[Check, ...] = tuple(check for check, _ in PIPELINE)


def checks_for(
    spec: TaskSpec, homes: Mapping[str, tuple[str, str]] | None = None, lacking: Mapping[str, str] | None = None
) -> tuple[Check, ...]:
    """The checks of `PIPELINE` that can reject `spec` (no cpu asked: no cpu check, ...), in pipeline order: the
    same answers as running all of `CHECKS`, with fewer calls per node in the placement loop. With `homes` (where
    the spec's named volumes live, see `volume_check`), their check follows the state check; with `lacking` (the
    platforms the spec's image has no variant for, see `platform_check`), its check follows those: both are what a
    node *is* for this task."""
    checks = tuple(check for check, applies in PIPELINE if applies(spec))
    if homes and any(name in homes for name in spec.named_volumes):
        checks = (checks[0], volume_check(homes), *checks[1:])
    if lacking:
        checks = (*checks[:1], platform_check(lacking), *checks[1:])
    return checks


def first_rejection(checks: tuple[Check, ...], spec: TaskSpec, node: Node) -> Rejection | None:
    """The first of `checks` that rejects `node` for `spec`, or None when the node passes them all."""
    for check in checks:
        rejection = check(spec, node)
        if rejection is not None:
            return rejection
    return None


def rejection(spec: TaskSpec, node: Node) -> Rejection | None:
    """None when `node` can take `spec`, otherwise the first rejection of the pipeline."""
    return first_rejection(CHECKS, spec, node)


def feasible(spec: TaskSpec, node: Node) -> str | None:
    """None when `node` can take `spec`, otherwise the detail of the first rejection (the text users read)."""
    found = rejection(spec, node)
    return None if found is None else found.detail


# -------------------------------------------------------------------------------------------------- rejections

# A rejection is a pure function of a few values that repeat across a cluster (nodes of one size, copies of one
# spec, one down node seen by every placement), and rejected nodes are common on a busy cluster: 400 per placement
# for exact binpack in bench/scheduling.py, 18 for sampled binpack. Formatting the text cost ~1.5 µs per rejected
# node (check_cpu, CPython 3.11) and building the frozen value ~0.4 µs more; memoised, `check_cpu` rejects in
# ~0.3 µs. Rejections are immutable, so nodes share them safely; the caches are bounded.


@lru_cache(maxsize=1024)
@lru_cache(maxsize=1024)
def _ineligible(eligibility: str, name: str) -> Rejection:
    return Rejection(NODE_INELIGIBLE, f"node is {eligibility} (`cube node eligible {name}` lets it take tasks again)")


def _not_ready(state: str, reason: str) -> Rejection:
    return Rejection(NODE_NOT_READY, f"node is {state}: {reason}" if reason else f"node is {state}")


@lru_cache(maxsize=1024)
def _volume_elsewhere(name: str, home: str, state: str) -> Rejection:
    """ "volume pgdata lives on n2", with ", which is down" (unhealthy, removed) when its node cannot take it now."""
    if state == "gone":
        return Rejection(
            VOLUME_ELSEWHERE,
            f"volume {name} lives on {home}, which was removed from the cluster (`cube volume rm {name}` forgets it)",
        )
    which = f", which is {state}" if state != READY else ""
    return Rejection(VOLUME_ELSEWHERE, f"volume {name} lives on {home}{which}")


@lru_cache(maxsize=1024)
def _no_variant(image: str, where: str, seen: str) -> Rejection:
    return Rejection(IMAGE_PLATFORM, f"image {image} has no {where} variant (found on {seen})")


@lru_cache(maxsize=1024)
def _not_met(text: str, have: str | None) -> Rejection:
    """`have`: the node's value for the constraint's key, None when the node has no such label."""
    what = have if have is not None else f"no {parse_constraint(text)[0]} label"
    return Rejection(CONSTRAINT_NOT_MET, f"constraint {text} not met (node has {what})")


@lru_cache(maxsize=4096)
def _short_of_cpu(needs: float, free: float) -> Rejection:
    return Rejection(INSUFFICIENT_CPU, f"insufficient cpu (needs {_cores(needs)}, free {_number(free)})")


@lru_cache(maxsize=4096)
def _short_of(kind: str, needs: int, free: int) -> Rejection:
    """Memory or disk: "insufficient memory (needs 512 MiB, free 200 MiB)"; an over-allocated node shows 0 free."""
    return Rejection(kind, f"{kind} (needs {format_size(needs)}, free {format_size(max(free, 0))})")


@lru_cache(maxsize=1024)
def _no_device(path: str) -> Rejection:
    return Rejection(MISSING_DEVICE, f"no device {path}")


@lru_cache(maxsize=1024)
def _port_used(host: int, protocol: str) -> Rejection:
    return Rejection(PORT_IN_USE, f"host port {host}/{protocol} already used")


# ----------------------------------------------------------------------------------------------------- helpers


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
