"""`cube doctor` on machines we do not have (a Raspberry Pi with the memory cgroup off, a clock in 1970, no LAN),
by replacing its probes; then once on this machine for real. Also the pyz's start-up rules (cube.ops.zipapp)."""

import json
import os
import platform
import subprocess
import sys

import pytest

from cube.core.errors import CubeError, Unavailable
from cube.ops import doctor, zipapp

GIB = 1024**3
ENGINE = {
    "version": "24.0.7",
    "api_version": "1.43",
    "arch": "aarch64",
    "cgroup_version": "2",
    "cgroup_driver": "systemd",
    "memory_limit": True,
    "root_dir": "/var/lib/docker",
    "warnings": [],
}


def pi(
    files=None,
    engine=ENGINE,
    interfaces=None,
    free=50 * GIB,
    now=1.8e9,
    ntp=True,
    python=(3, 11, 2),
    arch=("aarch64", "aarch64", "aarch64"),
):
    """Probes of a healthy Raspberry Pi 4 on Raspberry Pi OS bookworm (cgroup v2), changed by the arguments."""
    files = {
        "/sys/fs/cgroup/cgroup.controllers": "cpuset cpu io memory pids\n",
        "/boot/firmware/cmdline.txt": "console=tty1 root=PARTUUID=1 rootwait\n",
        **(files or {}),
    }
    probes = doctor.Probes()

    def docker():
        if isinstance(engine, Exception):
            raise engine
        return engine

    probes.docker = docker
    probes.read = lambda path: files.get(path)
    probes.exists = lambda path: files.get(path) is not None
    probes.interfaces = lambda: (
        interfaces
        if interfaces is not None
        else {
            "lo": doctor.IFF_UP | doctor.IFF_LOOPBACK | doctor.IFF_RUNNING,
            "eth0": doctor.IFF_UP | doctor.IFF_RUNNING | doctor.IFF_MULTICAST,
        }
    )
    probes.disk = lambda path: (path, free, 64 * GIB)
    probes.now = lambda: now
    probes.ntp_synchronized = lambda: ntp
    probes.python = lambda: (python, "/usr/bin/python3")
    probes.arch = lambda: arch
    probes.psutil = lambda: "7.0.0 (bundled)"
    probes.tls = lambda: "50.0.2 (cffi backend: bundled)"
    return probes


def by_name(checks) -> dict:
    return {check.name: check for check in checks}


def test_a_healthy_pi_passes():
    checks = doctor.run("worker", pi())
    assert [c.name for c in checks] == [
        "python",
        "arch",
        "tls",
        "psutil",
        "docker",
        "cgroup",
        "multicast",
        "disk",
        "clock",
    ]
    assert {c.status for c in checks} == {"ok"} and not doctor.failed(checks)


def test_memory_cgroup_off_on_a_pi_names_the_cmdline_file():
    checks = doctor.run("worker", pi(files={"/sys/fs/cgroup/cgroup.controllers": "cpuset cpu io pids\n"}))
    cgroup = by_name(checks)["cgroup"]
    assert cgroup.status == "fail" and doctor.failed(checks)
    assert "cgroup_enable=memory cgroup_memory=1" in cgroup.fix and "/boot/firmware/cmdline.txt" in cgroup.fix


def test_memory_cgroup_v1_disabled_on_an_older_pi():
    files = {
        "/sys/fs/cgroup/cgroup.controllers": None,
        "/boot/firmware/cmdline.txt": None,
        "/boot/cmdline.txt": "console=tty1\n",
        "/sys/fs/cgroup/memory": "",
        "/proc/cgroups": "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t2\t1\t1\nmemory\t0\t1\t0\n",
    }
    cgroup = by_name(doctor.run("worker", pi(files=files)))["cgroup"]
    assert cgroup.status == "fail" and "/boot/cmdline.txt" in cgroup.fix
    files["/proc/cgroups"] = files["/proc/cgroups"].replace("memory\t0\t1\t0", "memory\t5\t40\t1")
    assert by_name(doctor.run("worker", pi(files=files)))["cgroup"].status == "ok"


def test_docker_without_memory_limit_support_fails_the_cgroup_check():
    cgroup = by_name(doctor.run("worker", pi(engine={**ENGINE, "memory_limit": False})))["cgroup"]
    assert cgroup.status == "fail" and "Docker reports no memory limit support" in cgroup.detail


def test_no_docker_engine():
    checks = by_name(doctor.run("worker", pi(engine=Unavailable("the Docker engine does not answer"))))
    assert checks["docker"].status == "fail" and "systemctl enable --now docker" in checks["docker"].fix
    assert checks["cgroup"].status == "ok"  # still judged from the kernel's own files


def test_multicast_needs_a_lan_interface_up():
    only_virtual = {
        "lo": doctor.IFF_UP | doctor.IFF_LOOPBACK | doctor.IFF_RUNNING,
        "docker0": doctor.IFF_UP | doctor.IFF_RUNNING | doctor.IFF_MULTICAST,
        "veth12ab": doctor.IFF_UP | doctor.IFF_RUNNING | doctor.IFF_MULTICAST,
        "wlan0": doctor.IFF_UP | doctor.IFF_MULTICAST,
    }  # up but no carrier
    check = by_name(doctor.run("worker", pi(interfaces=only_virtual)))["multicast"]
    assert check.status == "warn" and "--manager" in check.fix
    assert by_name(doctor.run("worker", pi()))["multicast"].detail.endswith("eth0")


@pytest.mark.parametrize("free, status", [(512 * 1024**2, "fail"), (3 * GIB, "warn"), (20 * GIB, "ok")])
def test_disk(free, status):
    assert by_name(doctor.run("worker", pi(free=free)))["disk"].status == status


def test_clock_in_1970_fails_and_no_ntp_warns():
    clock = by_name(doctor.run("worker", pi(now=0)))["clock"]
    assert clock.status == "fail" and "1970-01-01" in clock.detail and "timedatectl set-ntp true" in clock.fix
    assert by_name(doctor.run("worker", pi(ntp=False)))["clock"].status == "warn"
    assert by_name(doctor.run("worker", pi(ntp=None)))["clock"].status == "ok"  # no systemd to ask


def test_python_and_architecture():
    assert by_name(doctor.run("manager", pi(python=(3, 10, 12))))["python"].status == "fail"
    wrong = by_name(doctor.run("worker", pi(arch=("aarch64", "aarch64", "x86_64"))))["arch"]
    assert wrong.status == "fail" and "cube-<version>-aarch64.pyz" in wrong.fix
    # Raspberry Pi OS 32-bit on a 64-bit kernel runs the armv7l build
    armhf = by_name(doctor.run("worker", pi(arch=("aarch64", "armv7l", "armv7l"))))["arch"]
    assert armhf.status == "ok" and "armv7l userland on an aarch64 kernel" in armhf.detail


def test_missing_psutil_says_what_to_install():
    probes = pi()

    def psutil():
        raise CubeError("psutil is not available: ... `sudo apt install python3-psutil`")

    probes.psutil = psutil
    check = by_name(doctor.run("worker", probes))["psutil"]
    assert check.status == "fail" and check.fix == "sudo apt install python3-psutil"


def test_missing_cffi_backend_says_what_to_install():
    probes = pi()

    def tls():
        raise ImportError("No module named '_cffi_backend'")

    probes.tls = tls
    check = by_name(doctor.run("manager", probes))["tls"]
    assert check.status == "fail" and check.fix == "sudo apt install python3-cffi-backend"


def test_the_real_certificate_library_loads():
    assert doctor.Probes().tls().split(" ")[0].count(".") >= 1  # a version: the CA and the join can work here


def test_a_manager_needs_no_docker():
    checks = doctor.run("manager", pi(engine=Unavailable("no engine")))
    assert [c.name for c in checks] == ["python", "arch", "tls", "multicast", "disk", "clock"]
    with pytest.raises(CubeError, match="worker. or a .manager"):
        doctor.run("laptop", pi())


def test_render_lines_fixes_and_json():
    checks = doctor.run("worker", pi(now=0))
    text = doctor.render(checks)
    assert text.splitlines()[0].startswith("ok    python     Python 3.11.2")
    assert "fail  clock      the clock says 1970-01-01" in text and "fix: set the time" in text
    data = json.loads(doctor.render(checks, as_json=True))
    assert data["ok"] is False and data["checks"][-1]["status"] == "fail"


@pytest.mark.docker
def test_this_machine(busybox_image, pyz, tmp_path):
    """The real probes, through the pyz: this CI machine runs workers, so nothing may fail."""
    done = subprocess.run(
        [sys.executable, pyz, "doctor", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "CUBE_DATA": str(tmp_path)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
    assert checks["docker"]["status"] == "ok" and checks["cgroup"]["status"] == "ok"
    assert checks["arch"]["detail"].startswith(platform.machine())


# -- cube.ops.zipapp: what the pyz may import ------------------------------------------------------------------------


def test_isolate_drops_what_the_host_added_after_the_pyz():
    own = "/root/.shiv/cube_x/site-packages"
    path = [
        "/app.pyz",
        "/env/pythonpath",
        "/usr/lib/python311.zip",
        "/usr/lib/python3.11",
        own,
        own + "/extra",
        "/usr/local/lib/python3.11/dist-packages",
        "/usr/lib/python3/dist-packages",
        "/home/u/src/editable",
    ]
    zipapp.isolate(path, own)
    assert path == ["/app.pyz", "/env/pythonpath", "/usr/lib/python311.zip", "/usr/lib/python3.11", own, own + "/extra"]


def test_psutil_from_the_wrong_build_is_an_error_with_the_fix():
    assert zipapp.psutil_problem("/own", "x86_64", "x86_64") is None
    assert "use the aarch64 build" in zipapp.psutil_problem("/own", "x86_64", "aarch64")
    finder = zipapp.MissingModule("psutil", "install python3-psutil")
    with pytest.raises(CubeError, match="psutil is not available: install python3-psutil"):
        finder.find_spec("psutil._pslinux")
    assert finder.find_spec("psutilx") is None


def test_interpreter_arch_reads_the_elf_header(tmp_path):
    assert zipapp.interpreter_arch() == {"arm64": "aarch64"}.get(platform.machine(), platform.machine())
    (tmp_path / "script").write_text("#!/bin/sh\n")
    assert zipapp.interpreter_arch(str(tmp_path / "script")) is None
