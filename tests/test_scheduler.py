"""The scheduler through its public functions: clusters built with the factories, assertions on the placements
(which node, which reasons, which scores) and on the nodes' bookkeeping afterwards."""

import copy
import dataclasses
import json
import pathlib
import random
from collections import Counter

import pytest
from factories import (  # tests/ is on sys.path (pytest rootdir imports)
    imported_modules,
    make_cluster,
    make_node,
    make_spec,
)

from bench.scheduling import simulate
from cube import scheduler
from cube.core.errors import BadRequest
from cube.scheduler import (
    CHECKS,
    CONSTRAINT_NOT_MET,
    IMAGE_PLATFORM,
    INSUFFICIENT_CPU,
    INSUFFICIENT_DISK,
    INSUFFICIENT_MEMORY,
    KINDS,
    LIEB,
    MISSING_DEVICE,
    NODE_INELIGIBLE,
    NODE_NOT_READY,
    PORT_IN_USE,
    SCORERS,
    VOLUME_ELSEWHERE,
    Rejection,
    SchedulerState,
    feasible,
    place,
    place_many,
    rejection,
    release,
    reserve,
)
from cube.scheduler.feasibility import (
    check_constraints,
    check_cpu,
    check_devices,
    check_disk,
    check_memory,
    check_ports,
    check_state,
    checks_for,
    first_rejection,
)


def names(placements):
    return [p.node.name if p.node else None for p in placements]


# ------------------------------------------------------------------------------------------------ feasibility


def test_checks_are_a_pipeline_and_a_fresh_node_fits():
    assert len(CHECKS) == 7 and all(callable(check) for check in CHECKS)
    assert (
        feasible(
            make_spec(cpu=1, memory="1g", disk="1g", ports=["8080:80/host"], constraints=["arch=amd64"]), make_node()
        )
        is None
    )


@pytest.mark.parametrize(
    "node, spec, reason",
    [
        (make_node(state="down"), make_spec(), "node is down"),
        (make_node(state="draining"), make_spec(), "node is draining"),
        (make_node(cpu=4, allocated={"cpu": 3.5}), make_spec(cpu=2), "insufficient cpu (needs 2 cores, free 0.5)"),
        (make_node(cpu=4, allocated={"cpu": 3}), make_spec(cpu=1.5), "insufficient cpu (needs 1.5 cores, free 1)"),
        (
            make_node(memory="1g", allocated={"memory": "824m"}),
            make_spec(memory="512m"),
            "insufficient memory (needs 512 MiB, free 200 MiB)",
        ),
        (
            make_node(disk="10g", allocated={"disk": "9g"}),
            make_spec(disk="2g"),
            "insufficient disk (needs 2 GiB, free 1 GiB)",
        ),
        (make_node(), make_spec(constraints=["arch=aarch64"]), "constraint arch=aarch64 not met (node has x86_64)"),
        (make_node(used_ports=[(8080, "tcp")]), make_spec(ports=["8080:80/host"]), "host port 8080/tcp already used"),
    ],
)
def test_each_rejection_has_a_concrete_reason(node, spec, reason):
    assert feasible(spec, node) == reason
    placement = place(spec, [node])
    assert placement.node is None
    assert placement.reasons == {"node-a": reason}
    assert placement.explain() == f"node-a: {reason}"


def test_the_first_failing_check_is_the_reason_shown():
    # Wrong architecture and full: the user reads the reason that more capacity would not fix.
    node = make_node(state="ready", allocated={"cpu": 4})
    assert feasible(make_spec(cpu=1, constraints=["arch=arm64"]), node).startswith("constraint arch=arm64")
    assert feasible(make_spec(cpu=1), make_node(state="down", allocated={"cpu": 4})) == "node is down"


def test_a_spec_without_cpu_fits_a_node_whose_cpu_is_all_allocated():
    node = make_node(cpu=4, allocated={"cpu": 4})
    assert feasible(make_spec(cpu=0), node) is None
    assert feasible(make_spec(cpu=0.1), node) == "insufficient cpu (needs 0.1 cores, free 0)"


def test_float_sums_do_not_lock_out_a_task_that_fits_exactly():
    node = make_node(cpu=0.6)
    for cpu in (0.1, 0.2):
        reserve(node, make_spec(cpu=cpu))
    assert feasible(make_spec(cpu=0.3), node) is None
    assert feasible(make_spec(cpu=0.31), node) is not None


@pytest.mark.parametrize(
    "arch, constraint, fits",
    [
        ("aarch64", "arch=arm64", True),
        ("arm64", "arch=aarch64", True),
        ("x86_64", "arch==amd64", True),
        ("amd64", "arch=x86_64", True),
        ("armv7l", "arch=armhf", True),
        ("armhf", "arch=armv7l", True),
        ("x86_64", "arch=aarch64", False),
        ("x86_64", "arch!=amd64", False),
        ("aarch64", "arch!=amd64", True),
        ("armv7l", "arch=aarch64", False),
    ],
)
def test_arch_constraints_know_the_aliases(arch, constraint, fits):
    reason = feasible(make_spec(constraints=[constraint]), make_node(arch=arch))
    assert (reason is None) == fits
    if not fits:
        assert reason == f"constraint {constraint} not met (node has {arch})"


def test_hostname_user_label_and_unknown_key_constraints():
    pi3, pi4 = make_node("pi-3", labels={"disk": "ssd"}), make_node("pi-4")
    assert (
        feasible(make_spec(constraints=["hostname!=pi-3"]), pi3) == "constraint hostname!=pi-3 not met (node has pi-3)"
    )
    assert feasible(make_spec(constraints=["hostname!=pi-3"]), pi4) is None
    assert feasible(make_spec(constraints=["disk=ssd"]), pi3) is None
    assert feasible(make_spec(constraints=["disk=hdd"]), pi3) == "constraint disk=hdd not met (node has ssd)"
    # A key the node does not have fails equality and passes inequality.
    assert feasible(make_spec(constraints=["disk=ssd"]), pi4) == "constraint disk=ssd not met (node has no disk label)"
    assert feasible(make_spec(constraints=["disk!=ssd"]), pi4) is None
    # Every constraint must hold.
    both = make_spec(constraints=["arch=amd64", "hostname=pi-4"])
    assert feasible(both, pi4) is None
    assert feasible(both, pi3) == "constraint hostname=pi-4 not met (node has pi-3)"


def test_constraints_steer_the_placement_to_the_matching_node():
    nodes = [make_node("srv-1"), make_node("pi-1", cpu=4, memory="4g", arch="aarch64"), make_node("srv-2")]
    placement = place(make_spec(constraints=["arch=arm64"]), nodes)
    assert placement.node.name == "pi-1"
    assert placement.reasons == {
        "srv-1": "constraint arch=arm64 not met (node has x86_64)",
        "srv-2": "constraint arch=arm64 not met (node has x86_64)",
    }


def test_host_port_conflicts():
    nodes = [make_node("a", used_ports=[(8080, "tcp"), (53, "udp")]), make_node("b")]
    placement = place(make_spec(ports=["8080:80/host"]), nodes)
    assert placement.node.name == "b"
    assert placement.reasons == {"a": "host port 8080/tcp already used"}
    # Another protocol, or no fixed host port, does not conflict.
    assert feasible(make_spec(ports=["8080:80/udp/host"]), nodes[0]) is None
    assert feasible(make_spec(ports=["53:53/tcp/host"]), nodes[0]) is None
    assert feasible(make_spec(ports=["8080"]), nodes[0]) is None
    assert feasible(make_spec(ports=["53:53/udp/host"]), nodes[0]) == "host port 53/udp already used"


def test_copies_with_a_fixed_host_port_take_one_node_each():
    nodes = [make_node("a"), make_node("b")]
    placements = place_many(make_spec(ports=["9000:80/host"]), 3, nodes, seed="job-1")
    assert sorted(names(placements)[:2]) == ["a", "b"]
    assert placements[2].node is None
    assert placements[2].reasons == {"a": "host port 9000/tcp already used", "b": "host port 9000/tcp already used"}


# ---------------------------------------------------------------------------------------------------- scoring


def test_roundrobin_rotates_in_name_order_and_skips_what_does_not_fit():
    nodes = [make_node("c"), make_node("a"), make_node("b", allocated={"cpu": 3})]
    state = SchedulerState()
    spec = make_spec(cpu=0.5)
    assert [place(spec, nodes, "roundrobin", state=state).node.name for _ in range(4)] == ["a", "b", "c", "a"]
    # Load does not matter to round-robin, feasibility does.
    assert place(make_spec(cpu=2), nodes, "roundrobin", state=state).node.name == "c"
    nodes[0].state = "down"
    assert [place(spec, nodes, "roundrobin", state=state).node.name for _ in range(3)] == ["a", "b", "a"]
    # A node that joins takes its turn in name order.
    nodes.append(make_node("a2"))
    assert place(spec, nodes, "roundrobin", state=state).node.name == "a2"
    assert state.last == "a2"


def test_roundrobin_place_many_continues_the_same_rotation():
    nodes = [make_node("c"), make_node("a"), make_node("b")]
    state = SchedulerState(last="a")
    assert names(place_many(make_spec(), 5, nodes, "roundrobin", state=state)) == ["b", "c", "a", "b", "c"]
    assert place(make_spec(), nodes, "roundrobin", state=state).node.name == "a"


def test_epvm_cost_is_the_books_formula():
    node = make_node(cpu=4, memory="8g")
    placement = place(make_spec(cpu=1, memory="2g"), [node])
    cost = 2 * (LIEB**0.25 - 1)
    assert placement.scores["node-a"] == pytest.approx(-cost / (2 * (LIEB - 1)))
    assert LIEB == pytest.approx(1.53960071783900203869)


def test_epvm_picks_the_emptier_node():
    nodes = [make_node("busy", allocated={"cpu": 2, "memory": "4g"}, tasks=4), make_node("idle")]
    placement = place(make_spec(cpu=0.5, memory="256m"), nodes)
    assert placement.node.name == "idle"
    assert placement.scores["idle"] > placement.scores["busy"]


def test_epvm_really_counts_cpu():
    # "cpu-full" has all its memory free but little cpu; "mem-half" the opposite. A task that asks for cpu must
    # go where the cpu is, although memory alone would say "cpu-full".
    nodes = [
        make_node("cpu-full", cpu=4, memory="8g", allocated={"cpu": 3.5}, tasks=7),
        make_node("mem-half", cpu=4, memory="8g", allocated={"memory": "4g"}, tasks=7),
    ]
    assert place(make_spec(cpu=0.5, memory="256m"), nodes).node.name == "mem-half"
    # The same nodes for a task that needs no cpu: now the free memory of "cpu-full" is what counts.
    assert place(make_spec(cpu=0, memory="256m"), nodes).node.name == "cpu-full"


def test_epvm_spreads_tasks_that_ask_for_nothing():
    nodes = make_cluster(3)
    placements = place_many(make_spec(), 9, nodes, "epvm", seed="job")
    assert sorted(Counter(names(placements)).values()) == [3, 3, 3]
    assert all(node.allocated.cpu == 0 and node.allocated.memory == 0 for node in nodes)  # nominal, not reserved


def test_binpack_fills_one_node_first():
    nodes = make_cluster(3, cpu=4, memory="8g")
    spec = make_spec(cpu=1, memory="1g")
    placements = place_many(spec, 5, nodes, "binpack", seed=7)
    first = placements[0].node
    assert [p.node for p in placements[:4]] == [first] * 4
    assert first.allocated.cpu == 4
    assert placements[4].node is not first
    # A single placement prefers the node already in use too.
    assert place(make_spec(cpu=0.5), nodes, "binpack").node is placements[4].node


def test_spread_evens_out():
    nodes = make_cluster(3, cpu=4, memory="8g")
    assert sorted(Counter(names(place_many(make_spec(cpu=0.5), 6, nodes, "spread"))).values()) == [2, 2, 2]
    assert sorted(Counter(names(place_many(make_spec(), 6, nodes, "spread"))).values()) == [2, 2, 2]
    assert {node.tasks for node in nodes} == {4}
    # Relative use decides on unequal nodes: the big node takes the task while the small one is as full.
    nodes = [
        make_node("small", cpu=2, memory="4g", allocated={"cpu": 1, "memory": "1g"}, tasks=1),
        make_node("big", cpu=16, memory="32g", allocated={"cpu": 4, "memory": "8g"}, tasks=4),
    ]
    assert place(make_spec(cpu=0.5, memory="512m"), nodes, "spread").node.name == "big"


def test_spread_does_not_let_an_idle_cpu_hide_a_full_memory():
    nodes = [
        make_node("mem-full", cpu=4, memory="8g", allocated={"memory": "7g"}, tasks=4),
        make_node("balanced", cpu=4, memory="8g", allocated={"cpu": 2, "memory": "4g"}, tasks=4),
    ]
    assert place(make_spec(cpu=0.5, memory="256m"), nodes, "spread").node.name == "balanced"


def test_unknown_strategy_and_bad_limit_are_bad_requests():
    with pytest.raises(BadRequest, match="unknown scheduling strategy 'fastest'.*epvm, roundrobin, binpack, spread"):
        place(make_spec(), make_cluster(2), "fastest")
    with pytest.raises(BadRequest, match="limit"):
        place(make_spec(), make_cluster(2), limit=0)
    with pytest.raises(BadRequest, match="limit"):
        place_many(make_spec(), 2, make_cluster(2), limit=-1)
    assert set(SCORERS) == {"epvm", "roundrobin", "binpack", "spread"}


# ---------------------------------------------------------------------------------------------- bookkeeping


def test_place_does_not_change_the_nodes():
    nodes = make_cluster(2)
    before = copy.deepcopy(nodes)
    placement = place(make_spec(cpu=1, memory="1g", ports=["8080:80/host"]), nodes)
    assert placement.node is not None
    assert nodes == before


def test_place_many_places_n_and_updates_the_given_nodes():
    nodes = make_cluster(2, cpu=4, memory="8g", disk="100g")
    spec = make_spec(cpu=1, memory="1g", disk="10g", ports=["9000:80/host", "9001:81/udp/host"])
    placements = place_many(spec, 2, nodes, "epvm", seed="job-1")
    assert {id(p.node) for p in placements} == {id(node) for node in nodes}  # the given objects, one copy each
    for node in nodes:
        assert (node.allocated.cpu, node.allocated.memory, node.allocated.disk) == (1, 1 << 30, 10 << 30)
        assert node.used_ports == {(9000, "tcp"), (9001, "udp")}
        assert node.tasks == 1
    for placement in placements:
        release(placement.node, spec)
    for node in nodes:
        assert (node.allocated.cpu, node.allocated.memory, node.allocated.disk, node.tasks) == (0, 0, 0, 0)
        assert node.used_ports == set()
    # Releasing more than was reserved never goes below zero.
    release(nodes[0], spec)
    assert (nodes[0].allocated.cpu, nodes[0].allocated.memory, nodes[0].tasks) == (0, 0, 0)


def test_place_many_stops_when_the_cluster_is_full():
    nodes = make_cluster(2, cpu=2, memory="8g")
    placements = place_many(make_spec(cpu=1), 6, nodes, "spread", seed=1)
    assert names(placements).count(None) == 2
    assert [p.node is None for p in placements] == [False] * 4 + [True] * 2
    assert placements[-1].reasons == {
        "node-000": "insufficient cpu (needs 1 core, free 0)",
        "node-001": "insufficient cpu (needs 1 core, free 0)",
    }
    assert placements[-1].summary() == "no node fits: 2 insufficient cpu"
    assert place_many(make_spec(), 0, nodes) == []


def test_nothing_fits_explains_every_node():
    nodes = [
        make_node("a", state="down"),
        make_node("b", cpu=1),
        make_node("c", memory="256m"),
        make_node("d", arch="aarch64"),
        make_node("e", used_ports=[(80, "tcp")]),
    ]
    spec = make_spec(cpu=2, memory="512m", ports=["80:80/host"], constraints=["arch=amd64"])
    for limit in (None, 2):
        placement = place(spec, nodes, limit=limit, seed="t1")
        assert placement.node is None
        assert placement.explain().splitlines() == [
            "a: node is down",
            "b: insufficient cpu (needs 2 cores, free 1)",
            "c: insufficient memory (needs 512 MiB, free 256 MiB)",
            "d: constraint arch=amd64 not met (node has aarch64)",
            "e: host port 80/tcp already used",
        ]
    assert placement.counts()[NODE_NOT_READY] == 1  # counted by kind (was by the text before " (")
    assert placement.summary().startswith("no node fits: 1 ")
    assert place(spec, []).explain() == "no nodes known"
    assert place(spec, []).summary() == "no node fits: no nodes known"


# ------------------------------------------------------------------------------------------------ determinism


def test_same_seed_same_node_whatever_the_list_order():
    nodes = make_cluster(8)
    spec = make_spec(cpu=1)
    picks = {seed: place(spec, nodes, seed=seed).node.name for seed in range(40)}
    shuffled = nodes[:]
    random.Random(3).shuffle(shuffled)
    assert {seed: place(spec, shuffled, seed=seed).node.name for seed in range(40)} == picks
    assert place(spec, nodes, seed="task-abc").node is place(spec, nodes, seed="task-abc").node
    assert len(set(picks.values())) > 3  # the tie-break is random across seeds, not "first in the list"


@pytest.mark.parametrize("strategy", ["epvm", "roundrobin", "binpack", "spread"])
def test_place_many_picks_as_place_and_reserve_would(strategy):
    rng = random.Random(strategy)
    cluster = [
        make_node(
            f"n{i:02d}",
            cpu=rng.choice([1, 2, 4, 8]),
            memory=rng.choice(["2g", "4g", "16g"]),
            state=rng.choice(["ready"] * 5 + ["down"]),
            allocated={"cpu": rng.choice([0, 0.5, 1])},
            tasks=rng.randrange(3),
        )
        for i in range(30)
    ]
    for spec in (make_spec(cpu=0.5, memory="512m"), make_spec(), make_spec(cpu=1, ports=["7000:80/host"])):
        one, many = copy.deepcopy(cluster), copy.deepcopy(cluster)
        state_one, state_many = SchedulerState(), SchedulerState()
        expected = []
        for _ in range(60):
            placement = place(spec, one, strategy, seed="job", state=state_one)
            expected.append(placement.node.name if placement.node else None)
            if placement.node:
                reserve(placement.node, spec)
        assert names(place_many(spec, 60, many, strategy, seed="job", state=state_many)) == expected
        assert many == one and state_many == state_one


# --------------------------------------------------------------------------------------------------- sampling


def test_a_limit_looks_at_that_many_feasible_nodes_and_still_finds_the_only_one():
    nodes = make_cluster(100)
    placement = place(make_spec(), nodes, limit=4, seed="x")
    assert len(placement.scores) == 4 and placement.reasons == {}
    samples = {frozenset(place(make_spec(), nodes, limit=4, seed=seed).scores) for seed in range(10)}
    assert len(samples) == 10  # seeds look at different nodes, and the same seed at the same ones
    assert place(make_spec(), nodes, limit=4, seed=3).scores == place(make_spec(), nodes, limit=4, seed=3).scores
    for node in nodes[:-1]:
        node.state = "down"
    placement = place(make_spec(), nodes, limit=2, seed="x")
    assert placement.node is nodes[-1]
    assert len(placement.reasons) == 99


def test_sampled_place_many_fills_what_fits_and_varies_its_samples():
    nodes = make_cluster(20, cpu=2)
    placements = place_many(make_spec(cpu=1), 45, nodes, "epvm", seed="job", limit=2)
    assert names(placements).count(None) == 5
    assert all(node.tasks == 2 and node.allocated.cpu == 2 for node in nodes)


def test_simulate_measures_speed_and_spread_without_touching_the_nodes():
    nodes = make_cluster(50, cpu=4, memory="8g")
    specs = [make_spec(cpu=c, memory=m) for c, m in [(0.5, "256m"), (0.25, "1g"), (1, "512m"), (0, "0")]] * 80
    results = {strategy: simulate(nodes, specs, strategy) for strategy in SCORERS}
    assert all(node.tasks == 0 and node.allocated.cpu == 0 for node in nodes)
    for result in results.values():
        assert result["placed"] == 320 and result["unplaced"] == 0 and result["placements_per_s"] > 0
        assert result["cpu_mean"] == pytest.approx(140 / 200, abs=1e-3)
    assert results["epvm"]["cpu_std"] < results["binpack"]["cpu_std"]
    assert results["spread"]["cpu_std"] < results["binpack"]["cpu_std"]
    assert results["binpack"]["nodes_used"] < results["spread"]["nodes_used"] == 50
    batch = simulate(nodes, [specs[0]] * 100, "epvm", batch=True)
    assert batch["placed"] == 100 and batch["nodes_used"] == 50 and batch["tasks_max"] == 2


def test_a_thousand_nodes_fill_evenly():
    # Speed is measured in bench/scheduling.py (BENCHMARKS.md), not asserted here; this checks the result.
    nodes = make_cluster(1000, cpu=8, memory="16g")
    placements = place_many(make_spec(cpu=0.25, memory="256m"), 10_000, nodes, "epvm", seed="big")
    assert all(p.node for p in placements) and {node.tasks for node in nodes} == {10}
    specs = [make_spec(cpu=c) for c in (0, 0.1, 0.25, 0.5)] * 500
    assert simulate(nodes, specs, "epvm", limit=16)["unplaced"] == 0


# ------------------------------------------------------------------------------------------------- rejections

# One node and spec per check that the check rejects, and the kind it must say. A check added to the pipeline
# without a case here fails `test_every_check_returns_rejections_of_a_known_kind`.
REJECTED_BY = {
    check_state: (make_node(state="down"), make_spec(), NODE_NOT_READY),
    check_constraints: (make_node(), make_spec(constraints=["arch=aarch64"]), CONSTRAINT_NOT_MET),
    check_devices: (make_node(devices=["/dev/ttyACM0"]), make_spec(devices=["/dev/ttyUSB0"]), MISSING_DEVICE),
    check_cpu: (make_node(cpu=1), make_spec(cpu=2), INSUFFICIENT_CPU),
    check_memory: (make_node(memory="1g"), make_spec(memory="2g"), INSUFFICIENT_MEMORY),
    check_disk: (make_node(disk="1g"), make_spec(disk="2g"), INSUFFICIENT_DISK),
    check_ports: (make_node(used_ports=[(8080, "tcp")]), make_spec(ports=["8080:80/host"]), PORT_IN_USE),
}


def test_every_check_returns_rejections_of_a_known_kind():
    assert set(REJECTED_BY) == set(CHECKS)
    for check in CHECKS:
        node, spec, kind = REJECTED_BY[check]
        found = check(spec, node)
        assert isinstance(found, Rejection), check.__name__
        assert found.kind == kind and found.kind in KINDS
        assert found.detail and str(found) == found.detail == feasible(spec, node)
        assert check(make_spec(), make_node()) is None  # a spec that asks for nothing passes every check
    # Every kind is some check's, once; the volume check is made per placement (tests/test_volumes.py); the
    # state check also says when a ready node takes no new tasks (drained: below).
    assert {kind for _, _, kind in REJECTED_BY.values()} == set(KINDS) - {
        VOLUME_ELSEWHERE,
        IMAGE_PLATFORM,
        NODE_INELIGIBLE,
    }
    assert len(set(KINDS)) == len(KINDS)
    drained = make_node()
    drained.eligible = False
    found = check_state(make_spec(), drained)
    assert found is not None and found.kind == NODE_INELIGIBLE
    assert found.detail == f"node is ineligible (`cube node eligible {drained.name}` lets it take tasks again)"


def test_skipping_the_checks_a_spec_cannot_fail_changes_no_answer():
    rng = random.Random(5)
    nodes = [
        make_node(
            f"n{i}",
            cpu=rng.choice([1, 4]),
            memory=rng.choice(["1g", "8g"]),
            disk=rng.choice(["1g", "9g"]),
            state=rng.choice(["ready", "ready", "down"]),
            arch=rng.choice(["x86_64", "aarch64"]),
            used_ports=rng.choice([(), [(80, "tcp")]]),
        )
        for i in range(40)
    ]
    specs = [
        make_spec(),
        make_spec(cpu=2),
        make_spec(memory="2g", disk="2g"),
        make_spec(ports=["80:80/host"]),
        make_spec(constraints=["arch=arm64"], cpu=0.5),
        make_spec(ports=["8080"], disk="5g"),
    ]
    for spec in specs:
        for node in nodes:
            assert first_rejection(checks_for(spec), spec, node) == rejection(spec, node)
    assert checks_for(make_spec()) == (check_state,)
    assert checks_for(make_spec(cpu=1, ports=["80:80/host"])) == (check_state, check_cpu, check_ports)


def test_a_rejection_is_a_frozen_value():
    found = rejection(make_spec(cpu=2), make_node(cpu=1))
    assert found == Rejection(INSUFFICIENT_CPU, "insufficient cpu (needs 2 cores, free 1)")
    with pytest.raises(dataclasses.FrozenInstanceError):
        found.kind = INSUFFICIENT_MEMORY  # type: ignore[misc]
    assert rejection(make_spec(), make_node()) is None


@pytest.mark.parametrize(
    "state, reason, detail",
    [
        ("unhealthy", "the Docker engine does not answer", "node is unhealthy: the Docker engine does not answer"),
        ("unhealthy", "", "node is unhealthy"),
        ("down", "", "node is down"),
    ],
)
def test_a_node_that_is_not_ready_says_why(state, reason, detail):
    node = make_node(state=state)
    if reason:
        node.reason = reason  # type: ignore[attr-defined]  # the model may not have the field yet
    assert check_state(make_spec(), node) == Rejection(NODE_NOT_READY, detail)
    placement = place(make_spec(), [node])
    assert placement.reasons == {"node-a": detail}
    assert placement.counts() == Counter({NODE_NOT_READY: 1})


def test_placement_keeps_rejections_as_values_and_reasons_as_json_text():
    nodes = [make_node("a", memory="4g"), make_node("b", state="down"), make_node("c", memory="6g")]
    placement = place(make_spec(memory="8g"), nodes)
    assert placement.node is None
    assert placement.rejections == {
        "a": Rejection(INSUFFICIENT_MEMORY, "insufficient memory (needs 8 GiB, free 4 GiB)"),
        "b": Rejection(NODE_NOT_READY, "node is down"),
        "c": Rejection(INSUFFICIENT_MEMORY, "insufficient memory (needs 8 GiB, free 6 GiB)"),
    }
    # What the manager stores and users read: plain text per node, through JSON and back unchanged.
    assert json.loads(json.dumps(placement.reasons)) == {
        "a": "insufficient memory (needs 8 GiB, free 4 GiB)",
        "b": "node is down",
        "c": "insufficient memory (needs 8 GiB, free 6 GiB)",
    }


def test_kinds_are_counted_and_summed_up_in_one_line():
    nodes = [
        make_node("a", memory="1g"),
        make_node("b", state="down"),
        make_node("c", memory="1g"),
        make_node("d", cpu=1),
        make_node("e", state="unhealthy"),
        make_node("f", memory="1g"),
    ]
    spec = make_spec(cpu=2, memory="2g")
    placement = place(spec, nodes)
    assert placement.counts() == Counter({INSUFFICIENT_MEMORY: 3, NODE_NOT_READY: 2, INSUFFICIENT_CPU: 1})
    assert placement.summary() == "no node fits: 3 insufficient memory, 2 node not ready, 1 insufficient cpu"
    # Equal counts read in pipeline order, whatever the order of the nodes.
    even = [make_node("m", memory="1g"), make_node("n", state="down")]
    assert (
        place(spec, even).summary()
        == place(spec, even[::-1]).summary()
        == "no node fits: 1 node not ready, 1 insufficient memory"
    )
    # A placement that succeeds says what it passed over.
    nodes.append(make_node("g"))
    placed = place(spec, nodes)
    assert placed.node is nodes[-1]
    assert placed.summary() == "placed on g (6 rejected: 3 insufficient memory, 2 node not ready, 1 insufficient cpu)"
    assert place(spec, [make_node("g")]).summary() == "placed on g"


def test_a_sampled_summary_says_how_many_nodes_were_examined():
    nodes = make_cluster(100)
    for node in nodes[::2]:
        node.state = "down"
    placement = place(make_spec(), nodes, limit=4, seed="s")
    rejected = len(placement.rejections)
    assert len(placement.scores) == 4 and rejected > 0 and placement.counts() == Counter({NODE_NOT_READY: rejected})
    assert (placement.examined, placement.total) == (4 + rejected, 100)
    assert placement.summary() == (
        f"placed on {placement.node.name} (examined {4 + rejected} of 100 nodes; "
        f"{rejected} rejected: {rejected} node not ready)"
    )
    # Nothing fits: the walk went through every node, so the summary has no sample to mention.
    for node in nodes:
        node.state = "down"
    failed = place(make_spec(), nodes, limit=4, seed="s")
    assert (failed.examined, failed.total) == (100, 100)
    assert failed.summary() == "no node fits: 100 node not ready"


def test_place_many_counts_the_kinds_of_its_failed_copies():
    nodes = [make_node("a", cpu=2), make_node("b", cpu=1), make_node("c", state="down")]
    placements = place_many(make_spec(cpu=1), 4, nodes, seed="job")
    assert names(placements).count(None) == 1
    assert placements[-1].counts() == Counter({INSUFFICIENT_CPU: 2, NODE_NOT_READY: 1})
    assert placements[0].rejections == {} and placements[0].summary().startswith("placed on ")


# ------------------------------------------------------------------------------------------------ architecture

# A clock would make placements depend on when they run, I/O and stores would tie the scheduler to the manager's
# internals, and unseeded randomness would make a placement impossible to replay.
FORBIDDEN = {"time", "datetime", "os", "io", "socket", "pathlib", "random", "threading", "asyncio", "subprocess"}


def test_the_scheduler_has_no_clock_no_io_and_depends_only_on_core():
    for name, module in imported_modules(pathlib.Path(scheduler.__file__).parent):
        assert module.split(".")[0] not in FORBIDDEN, f"{name} imports {module}"
        if module.startswith("cube"):
            assert module.startswith(("cube.core.", "cube.scheduler.")), f"{name} imports {module}"
