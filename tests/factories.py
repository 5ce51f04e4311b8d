"""Factories for scheduler and manager tests (Nomad's mock.Node()/mock.Job()): plain nodes and specs with
sensible defaults, overridden per test, so a test states only what it is about."""

from __future__ import annotations

import ast
import pathlib

from cube.core.model import Node, Resources, TaskSpec, parse_size

IMAGE = "cube-busybox:latest"


def make_node(
    name: str = "node-a",
    cpu: float = 4,
    memory="8g",
    disk="100g",
    labels: dict | None = None,
    state: str = "ready",
    arch: str = "x86_64",
    allocated: dict | None = None,
    used_ports=(),
    tasks: int = 0,
    address: str = "",
    devices=(),
) -> Node:
    """A node with `arch` and `hostname` labels (as a worker reports them) plus `labels`. `allocated` takes
    cpu/memory/disk with the same size syntax as the capacity: `allocated={"cpu": 3.5, "memory": "7g"}`."""
    allocated = allocated or {}
    return Node(
        name=name,
        address=address or f"http://{name}:5556",
        capacity=Resources(float(cpu), parse_size(memory), parse_size(disk)),
        allocated=Resources(
            float(allocated.get("cpu", 0)), parse_size(allocated.get("memory", 0)), parse_size(allocated.get("disk", 0))
        ),
        labels={"arch": arch, "hostname": name, **(labels or {})},
        state=state,
        used_ports={tuple(port) for port in used_ports},
        tasks=tasks,
        devices=frozenset(devices),
    )


def make_cluster(count: int, prefix: str = "node", **overrides) -> list[Node]:
    """`count` identical nodes named node-000, node-001, ..."""
    width = max(3, len(str(count - 1)))
    return [make_node(f"{prefix}-{index:0{width}d}", **overrides) for index in range(count)]


def make_spec(**overrides) -> TaskSpec:
    """A validated spec (through `TaskSpec.from_dict`, so sizes like "512m" and ports like "8080:80" work)."""
    return TaskSpec.from_dict({"image": IMAGE, **overrides})


def imported_modules(package: pathlib.Path):
    """(file name, module) for every import in the package's modules: the architecture tests' input."""
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                yield from ((path.name, alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                yield path.name, node.module or ""
