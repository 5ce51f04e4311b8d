#!/usr/bin/env bash
# Builds Cube. `./build.sh` makes a virtualenv (.venv) if needed, installs the project and its test/build extras,
# and builds dist/cube-<version>-<arch>.pyz for this machine's architecture, copied to dist/cube.pyz.
# `./build.sh all` (or --all) builds every architecture from this one machine: x86_64, aarch64, armv7l.
# `./build.sh test [pytest args]` builds, then runs the test suite (the README's test command).
# `./build.sh lint` runs ruff (lint and format check) and mypy, as CI does.
# `./build.sh dev [flags]` builds, then runs `cube dev` (a one-machine cluster) from dist/cube.pyz.
#
# What a pyz holds, and why one file runs on CPython 3.11 to 3.13:
# - pure-python packages, plus psutil's abi3 wheel for the target architecture (one binary for every CPython >= 3.6),
#   fetched with pip's --platform, so no compiler and no emulation is needed to build for a Raspberry Pi;
# - zeroconf and charset_normalizer ship accelerators compiled for one CPython version next to their .py sources:
#   they are removed, so every Python runs the same pure-python code; any other version-specific binary, or a
#   binary of the wrong architecture, stops the build;
# - cryptography (the cluster CA) as its abi3 wheel without cffi, which it does not need for certificates;
# - armv7l: PyPI has no psutil wheel for it, so that pyz carries none and uses the system's python3-psutil
#   (see cube/ops/zipapp.py, which also keeps the host's site-packages out of the pyz's way);
# - PyYAML without its libyaml binding (per CPython, and no armv7l wheel): the pure-Python loader, on every arch.
# Reproducible: same sources, same bytes (SOURCE_DATE_EPOCH, no bytecode, fixed umask and order, shiv --reproducible).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=.venv
ARCHES=(x86_64 aarch64 armv7l)
CFFI_PYTHONS="3.11 3.12 3.13"  # the CPython versions a pyz runs on (README)
DIST=${CUBE_DIST:-dist}  # where the pyz files go (tests build into temporary directories)
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}
export PIP_DISABLE_PIP_VERSION_CHECK=1
umask 022

venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
  fi
  # The project's own dependencies change rarely; reinstall only when pyproject.toml is newer than the stamp.
  if [ ! -f "$VENV/.stamp" ] || [ pyproject.toml -nt "$VENV/.stamp" ]; then
    "$VENV/bin/pip" install -q --upgrade pip >/dev/null
    "$VENV/bin/pip" install -q -e ".[test,build]"
    touch "$VENV/.stamp"
  fi
}

project() {  # project KEY: a field of pyproject.toml's [project] table (lists joined by spaces); version: cube's
  if [ "$1" = version ]; then  # written once, in cube/__init__.py (pyproject.toml reads it from there too)
    sed -n 's/^__version__ = "\(.*\)"/\1/p' cube/__init__.py
    return
  fi
  "$VENV/bin/python" -c 'import sys, tomllib
value = tomllib.load(open("pyproject.toml", "rb"))["project"][sys.argv[1]]
print(" ".join(value) if isinstance(value, list) else value)' "$1"
}

pyz() {  # pyz ARCH: build dist/cube-<version>-ARCH.pyz
  local arch=$1 version site tmp out crypto="" yaml="" deps=()
  version=$(project version)
  out=$DIST/cube-$version-$arch.pyz
  tmp=$(mktemp -d)
  site=$tmp/site-packages
  mkdir -p "$DIST" "$site"
  # setuptools reuses build/lib: a module deleted from cube/ would otherwise still ship.
  rm -rf build/lib build/bdist.*
  "$VENV/bin/pip" install -q --no-compile --no-deps --target "$site" . >/dev/null
  rm -rf "$site/bin"  # cube's console script: the pyz has its own entry point
  for dep in $(project dependencies); do
    # armv7l: no psutil wheel on PyPI; cube.zipapp borrows the system's python3-psutil instead.
    if [ "$arch" = armv7l ] && [[ $dep == psutil* ]]; then continue; fi
    if [[ $dep == cryptography* ]]; then crypto=$dep; continue; fi
    if [[ $dep == pyyaml* ]]; then yaml=$dep; continue; fi
    deps+=("$dep")
  done
  "$VENV/bin/pip" install -q --no-compile --target "$site" --only-binary=:all: --implementation cp \
      --python-version 3.11 --platform "manylinux2014_$arch" "${deps[@]}" >/dev/null
  # setuptools (800 KiB) comes only as pbr's declared dependency (etcd3gw -> pbr.version), which never imports it.
  rm -rf "$site"/setuptools "$site"/setuptools-*.dist-info "$site"/pkg_resources "$site"/_distutils_hack \
      "$site"/distutils-precedence.pth
  # PyYAML (compose files): its pure-Python loader, the same for every architecture and CPython. PyPI has no
  # armv7l wheel and each wheel's libyaml binding is built for one CPython, so the x86_64 wheel is taken and the
  # binding removed (yaml/__init__.py falls back to the pure loader, which cube.compose uses anyway).
  "$VENV/bin/pip" install -q --no-compile --no-deps --target "$site" --only-binary=:all: --implementation cp \
      --python-version 3.11 --platform manylinux2014_x86_64 "$yaml" >/dev/null
  rm -rf "$site"/yaml/_yaml.*.so "$site/_yaml"
  # cryptography: its abi3 wheel, and of cffi only the one module cryptography loads, _cffi_backend, built for
  # each CPython the pyz supports (they sit side by side; each Python loads its own). armv7l: PyPI has no cffi
  # wheel for it, so that pyz borrows the system's python3-cffi-backend, as it does psutil.
  "$VENV/bin/pip" install -q --no-compile --no-deps --target "$site" --only-binary=:all: --implementation cp \
      --python-version 3.11 --platform "manylinux2014_$arch" --platform "manylinux_2_28_$arch" \
      --platform "manylinux_2_31_$arch" "$crypto" >/dev/null
  if [ "$arch" != armv7l ]; then
    for pyver in $CFFI_PYTHONS; do
      "$VENV/bin/pip" download -q --no-deps --only-binary=:all: --implementation cp --python-version "$pyver" \
          --platform "manylinux2014_$arch" -d "$tmp/cffi-$pyver" "cffi>=1.17" >/dev/null
      "$VENV/bin/python" -c 'import sys, zipfile
wheel = zipfile.ZipFile(sys.argv[1])
for name in wheel.namelist():
    if name.startswith("_cffi_backend.") and name.endswith(".so"):
        wheel.extract(name, sys.argv[2])' "$tmp"/cffi-"$pyver"/*.whl "$site"
    done
  fi
  "$VENV/bin/python" - "$site" "$arch" <<'EOF'
"""Make the installed tree the same for every CPython and check that its binaries fit the target architecture."""
import pathlib, re, shutil, sys
site, arch = pathlib.Path(sys.argv[1]), sys.argv[2]
ELF_MACHINE = {"x86_64": 62, "aarch64": 183, "armv7l": 40}
for junk in sorted(site.rglob("__pycache__")) + [site / "bin"]:
    shutil.rmtree(junk, ignore_errors=True)
for info in site.glob("*.dist-info/direct_url.json"):
    info.unlink()  # names the build directory: not the same on another checkout
for declarations in sorted(site.rglob("*.pxd")):
    declarations.unlink()  # Cython declarations: they only served the removed accelerators
# Accelerators whose pure-Python twin has another name: wrapt (etcd3gw -> futurist -> debtcollector) falls back
# to wrappers.py when _wrappers cannot be imported.
TWINS = {"wrapt/_wrappers": "wrappers.py"}
for lib in sorted(site.rglob("*.so")):
    version_specific = re.match(r"(.+)\.cpython-3\d+-[^.]+\.so$", lib.name)
    twin = version_specific and TWINS.get(f"{lib.parent.name}/{version_specific.group(1)}")
    if version_specific and (lib.with_name(version_specific.group(1) + ".py").exists() or twin):
        lib.unlink()  # an optional accelerator: the .py next to it (or its twin) is the same module
        continue
    per_version = version_specific and lib.parent == site and version_specific.group(1) == "_cffi_backend"
    if not per_version and (version_specific or not lib.name.endswith(".abi3.so")):  # cffi: see above
        sys.exit(f"build.sh: {lib.relative_to(site)} works on one CPython version only and has no pure-python twin")
    header = lib.read_bytes()[:20]
    if int.from_bytes(header[18:20], "little") != ELF_MACHINE[arch]:
        sys.exit(f"build.sh: {lib.relative_to(site)} is not an {arch} binary")
EOF
  # Run by shiv's bootstrap before the entry point: see cube/ops/zipapp.py.
  printf 'from cube.ops import zipapp\nzipapp.start(site_packages, arch="%s")\n' "$arch" >"$tmp/cube_preamble.py"
  # --compile-pyc: the first start after extraction compiles every module (1.9 s once on x86), whatever
  # PYTHONDONTWRITEBYTECODE says (systemd services, CI runners): each later start reads bytecode instead of
  # compiling the ~150 modules it imports again (issue 14: warm `cube status` 90 ms quicker with the variable set).
  "$VENV/bin/shiv" --site-packages "$site" --reproducible --compressed --compile-pyc -p '/usr/bin/env python3' \
      --preamble "$tmp/cube_preamble.py" -e cube.cli.main:main -o "$out" >/dev/null
  rm -rf "$tmp"
  echo "built $out ($(du -k "$out" | cut -f1) KiB)"
}

host_arch() {
  local arch
  arch=$(uname -m)
  case "$arch" in
    x86_64|aarch64|armv7l) echo "$arch" ;;
    arm64) echo aarch64 ;;
    *) echo "build.sh: no build for this machine's architecture ($arch); try ./build.sh all" >&2; exit 2 ;;
  esac
}

build() {  # build [all]: the host's architecture (also as dist/cube.pyz), or every architecture
  local host arches
  host=$(host_arch)
  arches=("$host")
  if [ "${1:-}" = all ]; then arches=("${ARCHES[@]}"); fi
  for arch in "${arches[@]}"; do pyz "$arch"; done
  cp "$DIST/cube-$(project version)-$host.pyz" "$DIST/cube.pyz"
}

case "${1:-build}" in
  build) venv; build ;;
  all|--all) venv; build all ;;
  test) venv; build; shift; exec "$VENV/bin/python" -m pytest -q "$@" ;;
  lint) venv; "$VENV/bin/ruff" check .; "$VENV/bin/ruff" format --check .; "$VENV/bin/mypy" cube ;;
  bench) venv; build; shift; exec "$VENV/bin/python" -m bench "$@" ;;
  dev) venv; build; shift; exec "$DIST/cube.pyz" dev "$@" ;;
  *) echo "usage: ./build.sh [build|all|test [pytest args]|lint|bench [bench args]|dev [cube dev flags]]" >&2; exit 2 ;;
esac
