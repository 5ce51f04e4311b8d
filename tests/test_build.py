"""The artifacts: the pyz runs (`--help`, `version`) the way users and the units start it, sees only its own
packages, and `./build.sh all` makes the same bytes twice, under 5 MB per architecture, with binaries of the
right architecture and none tied to one CPython version. The emulated Raspberry Pi runs are tests/arm64_run.sh."""

import os
import pathlib
import re
import subprocess
import sys
import zipfile

from cube import __version__

REPO = pathlib.Path(__file__).parent.parent
ELF_MACHINE = {"x86_64": 62, "aarch64": 183, "armv7l": 40}
HOST_ARCH = {"arm64": "aarch64"}.get(os.uname().machine, os.uname().machine)


def run(*command, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(command), capture_output=True, text=True, timeout=120, **kwargs)


def test_pyz_runs_help_and_version_as_users_and_units_start_it(pyz, tmp_path):
    env = {**os.environ, "SHIV_ROOT": str(tmp_path / "shiv")}
    starts = [[pyz]] + ([["/usr/bin/python3", "-I", pyz]] if os.path.exists("/usr/bin/python3") else [])
    for start in starts:
        assert run(*start, "version", env=env).stdout == f"cube {__version__}\n"
        helped = run(*start, "--help", env=env)
        assert helped.returncode == 0 and "install" in helped.stdout and "doctor" in helped.stdout
    assert (tmp_path / "shiv").is_dir()  # SHIV_ROOT is where it unpacks (the units point it at /var/lib/cube)


def test_pyz_does_not_see_the_hosts_packages(pyz, tmp_path):
    """This interpreter's site-packages holds pytest; the pyz must not import it from there."""
    probe = "import importlib.util, cube.ops.zipapp as z; print(importlib.util.find_spec('pytest'), z.BUILD_ARCH)"
    done = run(
        sys.executable, pyz, input=probe + "\n", env={**os.environ, "SHIV_INTERPRETER": "1", "SHIV_ROOT": str(tmp_path)}
    )
    assert f"None {HOST_ARCH}" in done.stdout, done.stdout + done.stderr


def test_build_all_is_reproducible_small_and_version_independent(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for out, what in ((first, "all"), (second, "build")):
        done = run("./build.sh", what, cwd=REPO, env={**os.environ, "CUBE_DIST": str(out)})
        assert done.returncode == 0, done.stderr[-3000:]
    assert (first / "cube.pyz").read_bytes() == (second / "cube.pyz").read_bytes()
    assert (first / "cube.pyz").read_bytes() == (first / f"cube-{__version__}-{HOST_ARCH}.pyz").read_bytes()
    for arch, machine in ELF_MACHINE.items():
        path = first / f"cube-{__version__}-{arch}.pyz"
        assert path.stat().st_size < 8 * 1024 * 1024  # about 4 MiB of it is cryptography (the cluster CA)
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            assert f'arch="{arch}"' in archive.read("site-packages/bin/cube_preamble.py").decode()
            libraries = [n for n in names if n.endswith(".so")]
            # cryptography's _cffi_backend, one per supported CPython, side by side (build.sh); nothing else may
            # be bound to one Python version.
            per_version = [n for n in names if re.search(r"\.cpython-3\d+-", n)]
            cffi = [f"site-packages/_cffi_backend.cpython-3{v}-{arch}-linux-gnu.so" for v in (11, 12, 13)]
            assert not [n for n in names if "__pycache__" in n]
            assert sorted(per_version) == ([] if arch == "armv7l" else cffi)
            assert libraries and all(n.endswith(".abi3.so") for n in libraries if n not in per_version)
            if arch == "armv7l":  # the system's python3-psutil and python3-cffi-backend (cube/ops/zipapp.py)
                assert not any(n.startswith("site-packages/psutil/") for n in names)
            for name in libraries:
                header = archive.read(name)[:20]
                assert int.from_bytes(header[18:20], "little") == machine, name
