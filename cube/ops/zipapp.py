"""How cube.pyz starts: shiv's bootstrap runs `start()` (the pyz's preamble, written by build.sh) after unpacking
the pyz's site-packages and before the command line. It decides which packages the process may import.

shiv puts the pyz's own site-packages ahead of the host's but leaves the host's on sys.path, so a module the pyz
lacks — an optional import such as simplejson, brotli or paramiko — would silently come from whatever that machine
happens to have installed, and cube would behave differently from node to node. `start()` drops every path that
the host's site machinery added after the pyz's own, so every node runs exactly what the pyz holds.

Deliberate exceptions: PyPI has no psutil or cffi wheel for armv7l, so the armv7l pyz carries neither and borrows
the system's python3-psutil and python3-cffi-backend (Debian and Raspberry Pi OS packages; cryptography loads
`_cffi_backend`) before the host paths are dropped. When one cannot be had — missing, or a pyz built for another
architecture — importing it raises a CubeError that says what to do, which the CLI prints as one line; commands
that do not need it (the client, `install`, `doctor`) still work.
"""

from __future__ import annotations

import importlib
import os
import sys

from cube.core.errors import CubeError

BUILD_ARCH: str | None = None  # the architecture the running pyz was built for; None when run from sources
ELF_MACHINES = {62: "x86_64", 183: "aarch64", 40: "armv7l"}


def start(site_packages, arch: str) -> None:
    """The preamble: remember the build's architecture, keep psutil importable if it can be, drop host paths."""
    global BUILD_ARCH
    BUILD_ARCH = arch
    own = str(site_packages)
    problem = psutil_problem(own, arch, interpreter_arch())
    missing = {}
    if problem is None and not os.path.isdir(os.path.join(own, "psutil")):
        problem = _borrow("psutil", "python3-psutil")
    if problem:
        missing["psutil"] = problem
    if not any(name.startswith("_cffi_backend.") for name in os.listdir(own)):
        cffi = _borrow("_cffi_backend", "python3-cffi-backend")
        if cffi:
            missing["_cffi_backend"] = cffi
    isolate(sys.path, own)
    for name, why in missing.items():
        sys.meta_path.insert(0, MissingModule(name, why))


def isolate(path: list[str], own: str) -> None:
    """Cut `path` (sys.path) after the last entry that belongs to the pyz: what follows is the host's
    site-packages, dist-packages, user site and the paths their .pth files added. PYTHONPATH and the standard
    library come before the pyz's entries and stay."""
    mine = [i for i, entry in enumerate(path) if entry == own or entry.startswith(own + os.sep)]
    if mine:
        del path[mine[-1] + 1 :]


def psutil_problem(own: str, arch: str, machine: str | None) -> str | None:
    """Why the pyz's psutil cannot work on this interpreter, or None."""
    if machine and machine != arch:
        return (
            f"this cube.pyz is built for {arch} but this Python runs on {machine}: "
            f"use the {machine} build (./build.sh all makes dist/cube-<version>-{machine}.pyz)"
        )
    return None


def _borrow(name: str, package: str) -> str | None:
    """Import the system's module `name` while the host's paths are still there; once imported it stays in
    sys.modules, and its submodules load from its own directory. Returns the problem, or None."""
    try:
        module = importlib.import_module(name)
        if getattr(module, "__file__", None) is None:  # an empty directory imports as a namespace package
            del sys.modules[name]
            raise ImportError(f"no module named {name!r}")
    except ImportError as error:
        return (
            f"this build of cube uses the system's {name} (PyPI has none for {BUILD_ARCH}), and it cannot "
            f"be imported ({error}): install it with `sudo apt install {package}`"
        )
    return None


def interpreter_arch(executable: str | None = None) -> str | None:
    """The architecture of the running interpreter's binary (read from its ELF header): a 32-bit Raspberry Pi OS
    on a 64-bit kernel reports `aarch64` in uname but runs armv7l programs, and only the latter matters here."""
    try:
        with open(executable or sys.executable, "rb") as handle:
            header = handle.read(20)
    except OSError:
        return None
    if header[:4] != b"\x7fELF":
        return None
    return ELF_MACHINES.get(int.from_bytes(header[18:20], "little" if header[5] == 1 else "big"))


class MissingModule:
    """A meta path finder that turns `import NAME` into a CubeError carrying the fix."""

    def __init__(self, name: str, message: str):
        self.name = name
        self.message = message

    def find_spec(self, fullname, path=None, target=None):
        if fullname == self.name or fullname.startswith(self.name + "."):
            raise CubeError(f"{self.name} is not available: {self.message}")
        return None
