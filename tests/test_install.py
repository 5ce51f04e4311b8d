"""`cube install` / `uninstall` into a temporary root: the real logic (files, modes, environment file edits,
`systemctl --root=DIR enable`), the systemctl sequence of a live install (recorded), the preconditions' errors,
and the units themselves (`systemd-analyze verify` must print nothing). A real boot is tests/nspawn_boot.sh."""

import json
import os
import pathlib
import shutil
import socket
import stat
import subprocess
import zipfile

import pytest

from cube.cli.main import main
from cube.core.errors import CubeError
from cube.ops import install

REPO = pathlib.Path(__file__).parent.parent


def fake_pyz(path: pathlib.Path, build_id: str = "b1", arch: str | None = None) -> str:
    """A zip that reads as a shiv pyz (install only copies it)."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("environment.json", json.dumps({"build_id": build_id}))
        if arch:
            archive.writestr("site-packages/bin/cube_preamble.py", f'zipapp.start(site_packages, arch="{arch}")\n')
    return str(path)


@pytest.fixture
def root(tmp_path):
    """A machine root with systemd running, Docker's socket and /usr/bin/python3."""
    base = tmp_path / "root"
    (base / "run/systemd/system").mkdir(parents=True)
    (base / "usr/bin").mkdir(parents=True)
    (base / "usr/bin/python3").write_text("")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(base / "run/docker.sock"))
    yield base
    sock.close()


@pytest.fixture
def host(root):
    return install.Host(str(root), euid=0)


@pytest.fixture
def pyz(tmp_path):
    return fake_pyz(tmp_path / "cube.pyz")


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def env_of(root) -> dict:
    return install.read_env((root / "etc/cube/cube.env").read_text())


# -- the units -------------------------------------------------------------------------------------------------


def test_repository_units_are_what_install_writes():
    for role in install.ROLES:
        assert (REPO / "systemd" / install.unit_name(role)).read_text() == install.unit_text(role)
    assert (REPO / "systemd/cube.env").read_text() == install.ENV_TEMPLATE


@pytest.mark.systemd
def test_systemd_analyze_verify_prints_nothing(tmp_path):
    if not shutil.which("systemd-analyze"):
        if os.environ.get("CI") == "true":
            pytest.fail("CI needs systemd-analyze (apt-get install systemd)")
        pytest.skip("no systemd-analyze")
    names = install.write_examples(str(tmp_path))
    units = [str(tmp_path / n) for n in names if n.endswith(".service")]
    done = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_units_run_the_installed_pyz_with_the_env_file_and_state_directory():
    worker, manager = install.unit_text("worker"), install.unit_text("manager")
    assert "ExecStart=/usr/bin/python3 -I /usr/local/bin/cube worker $CUBE_WORKER_ARGS" in worker
    assert "ExecStart=/usr/bin/python3 -I /usr/local/bin/cube manager $CUBE_MANAGER_ARGS" in manager
    for text in (worker, manager):
        assert "EnvironmentFile=-/etc/cube/cube.env" in text
        assert "SHIV_ROOT=%S/cube/.shiv" in text and "StateDirectory=cube" in text
        assert "Restart=on-failure" in text and "ProtectSystem=strict" in text
    assert "Wants=network-online.target docker.service" in worker
    assert "docker.service" not in manager and "InaccessiblePaths=-/run/docker.sock" in manager


# -- install ---------------------------------------------------------------------------------------------------


def test_install_worker_writes_pyz_unit_and_env_file_with_their_modes(root, host, pyz):
    done = install.install(
        "worker",
        pyz=pyz,
        token="tok-1",
        host=host,
        args=install.role_args("worker", manager="http://m:5555", labels=["room=attic"]),
    )
    assert (root / "usr/local/bin/cube").read_bytes() == pathlib.Path(pyz).read_bytes()
    assert mode(root / "usr/local/bin/cube") == 0o755
    unit = root / "etc/systemd/system/cube-worker.service"
    assert unit.read_text() == install.unit_text("worker") and mode(unit) == 0o644
    assert mode(root / "etc/cube/cube.env") == 0o600
    assert env_of(root) == {
        "CUBE_TOKEN": "tok-1",
        "CUBE_MANAGER_ARGS": "--port 5555",
        "CUBE_WORKER_ARGS": "--port 5556 --manager http://m:5555 --label room=attic",
    }
    # enabled by the real systemctl, offline, in that root
    wants = root / "etc/systemd/system/multi-user.target.wants/cube-worker.service"
    assert os.readlink(wants) == "/etc/systemd/system/cube-worker.service"
    assert "enabled cube-worker.service" in done


def test_install_twice_changes_nothing(root, host, pyz):
    install.install("worker", pyz=pyz, token="t", host=host)
    files = [root / "usr/local/bin/cube", root / "etc/systemd/system/cube-worker.service", root / "etc/cube/cube.env"]
    before = [f.stat().st_mtime_ns for f in files]
    done = install.install("worker", pyz=pyz, host=host)
    assert [f.stat().st_mtime_ns for f in files] == before
    assert [line.split()[0] for line in done[:3]] == ["kept", "kept", "kept"]


def test_install_keeps_token_flags_and_edits_unless_told(root, host, pyz):
    install.install("worker", pyz=pyz, token="first", args="--port 6000 --label a=b", host=host)
    env = root / "etc/cube/cube.env"
    env.write_text(env.read_text() + "# mine\nDOCKER_HOST=unix:///run/docker.sock\n")
    install.install("worker", pyz=pyz, host=host)
    assert env_of(root)["CUBE_TOKEN"] == "first" and env_of(root)["CUBE_WORKER_ARGS"] == "--port 6000 --label a=b"
    install.install("worker", pyz=pyz, token="second", args="--port 6001", host=host)
    values = env_of(root)
    assert (values["CUBE_TOKEN"], values["CUBE_WORKER_ARGS"]) == ("second", "--port 6001")
    assert values["DOCKER_HOST"] == "unix:///run/docker.sock" and "# mine" in env.read_text()


def test_install_manager_keeps_its_token_in_its_data_directory(root, host, pyz):
    done = install.install("manager", pyz=pyz, token="sekrit", host=host)
    token = root / "var/lib/cube/manager/token"
    assert token.read_text() == "sekrit\n" and mode(token) == 0o600
    assert env_of(root)["CUBE_TOKEN"] == "sekrit"  # the manager prefers it to its token file
    assert any(line.startswith("workers join with:") and line.endswith("--token sekrit") for line in done)


def test_worker_needs_a_token_unless_the_manager_runs_here(root, host, pyz):
    with pytest.raises(CubeError, match="needs the join token"):
        install.install("worker", pyz=pyz, host=host)
    assert not (root / "usr/local/bin/cube").exists()  # refused before writing anything
    install.install("manager", pyz=pyz, token="local", host=host)
    install.install("worker", pyz=pyz, host=host)
    assert (root / "etc/systemd/system/cube-worker.service").exists()


def test_new_pyz_replaces_the_binary_and_prunes_old_extractions(root, host, tmp_path):
    shiv = root / "var/lib/cube/.shiv"
    for name in ("cube_older", "cube_old", "other_app_x"):  # what services unpacked from earlier versions
        (shiv / name / "site-packages").mkdir(parents=True)
    (shiv / ".cube_old_lock").write_text("")
    install.install("worker", pyz=fake_pyz(tmp_path / "a.pyz", "old"), token="t", host=host)
    assert sorted(os.listdir(shiv)) == [".cube_old_lock", "cube_old", "other_app_x"]
    (shiv / "cube_new").mkdir()
    install.install("worker", pyz=fake_pyz(tmp_path / "b.pyz", "new"), host=host)
    assert sorted(os.listdir(shiv)) == ["cube_new", "other_app_x"]
    assert install.build_id(str(root / "usr/local/bin/cube")) == "new"


def test_live_install_reloads_enables_starts_and_restarts_only_on_change(root, pyz, tmp_path):
    calls = []

    def run(command):
        calls.append(" ".join(command))
        return subprocess.CompletedProcess(command, 0, "ActiveState=active\nNRestarts=0\n", "")

    host = install.Host(str(root), euid=0, run=run, live=True, settle=0, wait=0)
    install.install("manager", pyz=pyz, token="t", host=host)
    assert calls[:3] == [
        "systemctl daemon-reload",
        "systemctl enable cube-manager.service",
        "systemctl restart cube-manager.service",
    ]
    calls.clear()
    install.install("worker", pyz=pyz, host=host)  # same pyz: the manager keeps running
    assert "systemctl restart cube-worker.service" in calls and not any("restart cube-manager" in c for c in calls)
    calls.clear()
    install.install("worker", pyz=pyz, host=host)
    assert "systemctl start cube-worker.service" in calls and not any("restart" in c for c in calls)
    calls.clear()
    install.install("worker", pyz=fake_pyz(tmp_path / "new.pyz", "b2"), host=host)  # an upgrade restarts both
    assert {"systemctl restart cube-worker.service", "systemctl restart cube-manager.service"} <= set(calls)


def test_live_install_reports_a_service_that_does_not_stay_up(root, pyz):
    def run(command):
        out = "ActiveState=activating\nNRestarts=2\n" if "show" in command else "no token, bye\n"
        return subprocess.CompletedProcess(command, 0, out, "")

    host = install.Host(str(root), euid=0, run=run, live=True, settle=0)
    with pytest.raises(CubeError, match="(?s)does not stay up.*no token, bye"):
        install.install("worker", pyz=pyz, token="t", host=host)


# -- refusals --------------------------------------------------------------------------------------------------


def test_not_root(root, pyz):
    with pytest.raises(CubeError, match="needs root: run it with sudo"):
        install.install("worker", pyz=pyz, token="t", host=install.Host(str(root), euid=1000))


def test_no_systemd(root, host, pyz):
    shutil.rmtree(root / "run/systemd")
    with pytest.raises(CubeError, match=r"systemd is not running .*no /run/systemd/system"):
        install.install("manager", pyz=pyz, host=host)


def test_no_docker_for_a_worker_but_fine_for_a_manager(root, host, pyz):
    (root / "run/docker.sock").unlink()
    with pytest.raises(CubeError, match="Docker is not installed or not running"):
        install.install("worker", pyz=pyz, token="t", host=host)
    install.install("manager", pyz=pyz, host=host)


def test_wrong_architecture_and_not_a_pyz(root, host, tmp_path):
    shutil.copy("/bin/true", root / "usr/bin/python3")  # an ELF of this machine's architecture
    other = "aarch64" if install.interpreter_arch("/bin/true") != "aarch64" else "x86_64"
    with pytest.raises(CubeError, match=f"is the {other} build"):
        install.install("manager", pyz=fake_pyz(tmp_path / "x.pyz", arch=other), host=host)
    (tmp_path / "plain").write_text("#!/bin/sh\n")
    with pytest.raises(CubeError, match="is not a cube.pyz"):
        install.install("manager", pyz=str(tmp_path / "plain"), host=host)


def test_flags_that_systemd_would_split_are_refused():
    assert install.role_args("worker") is None  # nothing given: keep what is there
    assert install.role_args("manager", workers=["a:1", "b:2"], mdns=False) == "--port 5555 --workers a:1,b:2 --no-mdns"
    with pytest.raises(CubeError, match="cannot hold spaces"):
        install.role_args("worker", labels=["room=the attic"])
    with pytest.raises(CubeError, match="key=value"):
        install.role_args("worker", labels=["attic"])


# -- uninstall -------------------------------------------------------------------------------------------------


def test_uninstall_keeps_data_and_settings_and_the_last_role_takes_the_pyz(root, host, pyz):
    install.install("manager", pyz=pyz, token="t", host=host)
    install.install("worker", pyz=pyz, host=host)
    (root / "var/lib/cube/worker").mkdir(parents=True)
    install.uninstall("worker", host=host)
    assert not (root / "etc/systemd/system/cube-worker.service").exists()
    assert not (root / "etc/systemd/system/multi-user.target.wants/cube-worker.service").is_symlink()
    assert (root / "usr/local/bin/cube").exists() and (root / "var/lib/cube/worker").exists()
    install.uninstall("manager", host=host)
    assert not (root / "usr/local/bin/cube").exists()
    assert (root / "etc/cube/cube.env").exists() and (root / "var/lib/cube/manager/token").exists()
    assert install.uninstall("manager", host=host)[0] == "cube-manager.service is not installed"


def test_uninstall_purge_removes_everything(root, host, pyz):
    install.install("manager", pyz=pyz, token="t", host=host)
    (root / "var/lib/cube/.shiv/cube_b1").mkdir(parents=True)
    install.uninstall("manager", purge=True, host=host)
    for path in ("usr/local/bin/cube", "etc/cube", "var/lib/cube", "etc/systemd/system/cube-manager.service"):
        assert not (root / path).exists(), path


# -- through the command line ----------------------------------------------------------------------------------


def test_cli_install_and_uninstall(root, pyz, capsys):
    assert (
        main(
            [
                "install",
                "worker",
                "--root",
                str(root),
                "--pyz",
                pyz,
                "--token",
                "12345",
                "--label",
                "a=b",
                "--label",
                "c=d",
                "--no-mdns",
            ]
        )
        == 0
    )
    assert env_of(root)["CUBE_TOKEN"] == "12345"
    assert env_of(root)["CUBE_WORKER_ARGS"] == "--port 5556 --label a=b --label c=d --no-mdns"
    assert main(["uninstall", "worker", "--root", str(root), "--purge"]) == 0
    assert not (root / "etc/cube").exists()
    assert main(["install", "worker", "--root", str(root), "--pyz", pyz]) == 1
    assert capsys.readouterr().err.startswith("cube install: the worker needs the join token")


def test_cli_install_from_sources_says_how_to_get_a_pyz(root, capsys):
    assert main(["install", "manager", "--root", str(root)]) == 1
    assert "does not run from one" in capsys.readouterr().err
