"""Shared fixtures for tests on a real Docker engine: the local test image and a per-test node name whose
containers are removed afterwards. Without an engine these tests skip, except in CI (CI=true), where they fail."""
import os
import pathlib
import subprocess
import uuid

import pytest

IMAGE = "cube-busybox:latest"
HERE = pathlib.Path(__file__).parent


def _docker_answers() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def busybox_image() -> str:
    """`cube-busybox:latest`, built by tests/make_image.sh when missing."""
    if not _docker_answers():
        if os.environ.get("CI") == "true":
            pytest.fail("CI needs a Docker engine and none answers (start dockerd)")
        pytest.skip("no Docker engine answers")
    subprocess.run(["bash", str(HERE / "make_image.sh"), IMAGE], check=True, timeout=120)
    return IMAGE


@pytest.fixture
def node_name(busybox_image) -> str:
    """A node name of this test only (`test-<hex>`); every container labelled with it is removed afterwards."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=cube.node={name}"], capture_output=True,
                         text=True, timeout=30).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", "-v", *ids], capture_output=True, timeout=60)
