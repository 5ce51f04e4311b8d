#!/usr/bin/env bash
# Builds Cube. `./build.sh` makes a virtualenv (.venv) if needed, installs the project and its test/build extras,
# and builds dist/cube.pyz with shiv (reproducible: same sources, same bytes).
# `./build.sh test` builds, then runs the test suite (the README's test command).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=.venv
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}
export PIP_DISABLE_PIP_VERSION_CHECK=1

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

pyz() {
  mkdir -p dist
  local site
  site=$(mktemp -d)
  # Install the project (not editable) into a clean folder, then zip it: the pyz holds exactly these packages.
  "$VENV/bin/pip" install -q --no-compile --no-deps --target "$site" . >/dev/null
  "$VENV/bin/pip" install -q --no-compile --target "$site" \
      $("$VENV/bin/python" -c 'import tomllib;print(" ".join(tomllib.load(open("pyproject.toml","rb"))["project"]["dependencies"]))') >/dev/null
  find "$site" -name '__pycache__' -prune -exec rm -rf {} +
  rm -rf "$site"/bin
  "$VENV/bin/shiv" --site-packages "$site" --reproducible --compressed -p '/usr/bin/env python3' \
      -e cube.cli:main -o dist/cube.pyz >/dev/null
  rm -rf "$site"
  echo "built dist/cube.pyz ($(du -k dist/cube.pyz | cut -f1) KiB)"
}

case "${1:-build}" in
  build) venv; pyz ;;
  test) venv; pyz; shift; exec "$VENV/bin/python" -m pytest -q "$@" ;;
  *) echo "usage: ./build.sh [build|test [pytest args]]" >&2; exit 2 ;;
esac
