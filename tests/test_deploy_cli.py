"""`cube deploy --wait` and `cube rollback --wait` read a rollout from the job's answer (cube/cli/stacks.py): a task
that fits no node is a placement failure (exit 3), a failed or reverted rollout a deployment failure (exit 1)."""

import pytest

from cube.cli import stacks
from cube.core.errors import CubeError


def _job(tasks=(), version=2, **deployment):
    record = {"version": version, "status": "running", "policy": "update", "serving": 0, **deployment}
    return {"name": "web", "version": version, "count": 2, "tasks": list(tasks), "deployment": record}


def test_a_task_that_fits_no_node_is_a_placement_failure_exit_3():
    pending = {"name": "web-1", "state": "pending", "reason": "no node fits (2 × memory): n1: insufficient memory"}
    job = _job([pending])
    with pytest.raises(stacks.PlacementFailed) as caught:
        stacks._check(job, job["deployment"], 2)
    assert caught.value.exit_code == stacks.PLACEMENT_FAILED == 3 and "cannot be placed" in caught.value.message


def test_a_failed_or_reverted_rollout_is_a_deployment_failure_exit_1():
    failed = _job(status="failed", reason="task web-1 of version 2: not healthy within 300 s")
    with pytest.raises(CubeError) as caught:
        stacks._check(failed, failed["deployment"], 2)
    assert not isinstance(caught.value, stacks.PlacementFailed) and "failed" in caught.value.message
    reverted = _job(version=3, policy="rollback", reason="version 2 failed (...): reverted to version 1")
    with pytest.raises(CubeError) as caught:
        stacks._check(reverted, reverted["deployment"], 2)
    assert "failed and was reverted" in caught.value.message and getattr(caught.value, "exit_code", 1) == 1


def test_progress_lines_say_what_a_rollout_waits_for():
    waiting = {"name": "web-1", "state": "pending", "reason": "waiting for job shop-db to be healthy"}
    assert stacks._check(_job([waiting]), _job()["deployment"], 2) == "waiting for job shop-db to be healthy"
    assert stacks._check(_job(), _job(serving=1)["deployment"], 2) == "1 of 2 serving at version 2"
    done = _job(status="successful")
    assert stacks._check(done, done["deployment"], 2) == "healthy at version 2 (2 tasks)"
