#!/usr/bin/env bash
# The Raspberry Pi builds on an emulated Pi: a Debian tree of the target architecture (debootstrap, cached under
# /var/cache/cube-ci) run with systemd-nspawn through qemu-user-static. Inside: `cube.pyz --help`, `version`,
# `doctor`, then a worker self-test — a manager and a worker of that architecture (psutil and all) run a task on
# this machine's Docker engine, whose socket is bound in. Private network: nothing reaches the host's interfaces.
#
# Usage: tests/arm64_run.sh [arm64|armhf|amd64] [bookworm|trixie]
#   arm64: the aarch64 pyz (default); armhf: the armv7l pyz, which uses the tree's python3-psutil and must explain
#   itself when that is missing; amd64: the x86_64 pyz, no emulation. bookworm has Python 3.11 (default), trixie 3.13.
# Needs dist/cube-<version>-<arch>.pyz (./build.sh all). Cold (debootstrap under emulation) about 3 min, warm 20 s.
set -euo pipefail
cd "$(dirname "$0")/.."
DEBARCH=${1:-arm64}
SUITE=${2:-bookworm}
case "$DEBARCH" in
  arm64) ARCH=aarch64 QEMU=qemu-aarch64 PACKAGES=python3 ;;
  armhf) ARCH=armv7l QEMU=qemu-arm PACKAGES=python3,python3-psutil,python3-cffi-backend ;;
  amd64) ARCH=x86_64 QEMU= PACKAGES=python3 ;;
  *) echo "usage: tests/arm64_run.sh [arm64|armhf|amd64] [bookworm|trixie]" >&2; exit 2 ;;
esac
[ "$(uname -m)" = "$ARCH" ] && QEMU=
VERSION=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' cube/__init__.py)
PYZ=$(realpath "dist/cube-$VERSION-$ARCH.pyz")
CACHE=${CUBE_CI_CACHE:-/var/cache/cube-ci}
MIRROR=${CUBE_CI_MIRROR:-http://deb.debian.org/debian}
TREE=$CACHE/$SUITE-$DEBARCH-$(echo "$PACKAGES" | md5sum | cut -c1-6)  # a new package list, a new tree
NODE=cube-tree-$SUITE-$DEBARCH
export DEBIAN_FRONTEND=noninteractive
started=$(date +%s)
[ -f "$PYZ" ] || { echo "arm64_run: no $PYZ: run ./build.sh all first" >&2; exit 1; }

need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
if [ -n "$QEMU" ]; then
  [ -x /usr/bin/$QEMU-static ] || need+=(qemu-user-static)
  command -v update-binfmts >/dev/null || need+=(binfmt-support)
fi
if [ ${#need[@]} -gt 0 ]; then apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; fi
if [ -n "$QEMU" ]; then
  [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  [ -e /proc/sys/fs/binfmt_misc/$QEMU ] || update-binfmts --enable $QEMU
fi
if [ ! -d "$TREE" ]; then
  echo "arm64_run: building the $SUITE $DEBARCH Debian tree in $TREE (once${QEMU:+, under emulation})"
  rm -rf "$TREE.tmp"
  mkdir -p "$CACHE"
  debootstrap --arch="$DEBARCH" --variant=minbase --include="$PACKAGES" "$SUITE" "$TREE.tmp" "$MIRROR" \
      >"$TREE.log" 2>&1 || { tail -20 "$TREE.log"; exit 1; }
  mv "$TREE.tmp" "$TREE"
fi
bash tests/make_image.sh

work=$(mktemp -d)
cleanup() {
  docker ps -aq --filter "label=cube.node=$NODE" | xargs -r docker rm -f >/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/inside.sh" <<EOF
#!/bin/sh
set -eu
NODE=$NODE
EOF
cat >>"$work/inside.sh" <<'EOF'
step() { echo; echo "== $*"; }
cube() { python3 /opt/cube.pyz "$@"; }
export SHIV_ROOT=/var/lib/cube/.shiv CUBE_DATA=/var/lib/cube

step "$(uname -m) kernel, $(python3 -c 'import platform; print(platform.architecture()[0])') $(python3 -V)"
step "cube --help"
cube --help | head -4
step "cube version"
cube version
step "cube doctor"
cube doctor
step "worker self-test: manager and worker on this architecture, a task on the Docker engine"
cube manager --port 15555 --no-mdns >/tmp/manager.log 2>&1 &
manager=$!
i=0
until [ -s /var/lib/cube/manager/token ]; do
  i=$((i + 1)); [ $i -lt 120 ] && kill -0 $manager || { cat /tmp/manager.log; exit 1; }; sleep 0.5
done
export CUBE_MANAGER=https://127.0.0.1:15555 CUBE_TOKEN=$(cube token)
cube worker --port 15556 --name "$NODE" --manager https://127.0.0.1:15555 --no-mdns >/tmp/worker.log 2>&1 &
worker=$!
i=0
until cube nodes 2>/dev/null | grep -q "$NODE.*ready"; do
  i=$((i + 1))
  [ $i -lt 60 ] && kill -0 $manager $worker || { tail /tmp/manager.log /tmp/worker.log; exit 1; }
  sleep 0.5
done
cube nodes
cube run --image cube-busybox:latest --cmd "sleep 300" --name qemu-task --timeout 90
cube stop qemu-task
kill $worker $manager
wait
echo PASS
EOF

run() {  # run [nspawn options...] -- command...: the tree, emulated, with a private network
  local options=()
  while [ "$1" != -- ]; do options+=("$1"); shift; done
  shift
  systemd-nspawn -q -D "$TREE" --register=no --keep-unit --private-network --volatile=overlay \
      --bind-ro="$PYZ:/opt/cube.pyz" --bind-ro="$work/inside.sh:/opt/inside.sh" "${options[@]}" "$@" \
      2> >(grep -v 'nspawn/propagate' >&2)
}

run --bind=/run/docker.sock:/run/docker.sock -- /bin/sh /opt/inside.sh
if [ "$DEBARCH" = armhf ]; then
  echo
  echo "== without python3-psutil and python3-cffi-backend: cube worker and cube manager say what to install"
  set +e
  out=$(run --tmpfs=/usr/lib/python3/dist-packages -- python3 /opt/cube.pyz worker --token x 2>&1)
  status=$?
  echo "$out (exit $status)"
  [ $status -eq 1 ] && grep -q "apt install python3-psutil" <<<"$out"
  out=$(run --tmpfs=/usr/lib/python3/dist-packages -- python3 /opt/cube.pyz manager --no-mdns 2>&1)
  status=$?
  set -e
  echo "$out (exit $status)"
  [ $status -eq 1 ] && grep -q "apt install python3-cffi-backend" <<<"$out"
fi
echo "arm64_run: $SUITE $DEBARCH ($ARCH pyz) passed in $(( $(date +%s) - started )) s"
