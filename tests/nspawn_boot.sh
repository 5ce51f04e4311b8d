#!/usr/bin/env bash
# A real boot: a Debian 12 tree (debootstrap, cached under /var/cache/cube-ci) boots with systemd-nspawn -b, and
# inside it a oneshot unit does what a user does on a fresh node: `cube.pyz install manager`, `cube.pyz install
# worker --manager ... --token ...`, checks both services answer /health, runs a task through them on this
# machine's Docker engine (its socket is bound into the container), installs again (nothing may change or
# restart), and uninstalls with --purge. The container has a private network (only its own loopback), so no
# traffic reaches the host's interfaces. Prints the inside log; exit 0 only if every step passed.
#
# Usage: tests/nspawn_boot.sh [PYZ]   (default dist/cube.pyz). Cold (debootstrap) about 1.5 min, warm about 30 s.
set -euo pipefail
cd "$(dirname "$0")/.."
PYZ=$(realpath "${1:-dist/cube.pyz}")
CACHE=${CUBE_CI_CACHE:-/var/cache/cube-ci}
MIRROR=${CUBE_CI_MIRROR:-http://deb.debian.org/debian}
TREE=$CACHE/bookworm-amd64
NODE=cube-nspawn-boot  # the worker's node name: its containers carry the label cube.node=$NODE
export DEBIAN_FRONTEND=noninteractive
started=$(date +%s)

need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
if [ ${#need[@]} -gt 0 ]; then apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; fi
if [ ! -d "$TREE" ]; then
  echo "nspawn_boot: building the Debian tree in $TREE (once)"
  rm -rf "$TREE.tmp"
  mkdir -p "$CACHE"
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,python3 bookworm "$TREE.tmp" "$MIRROR" \
      >"$CACHE/bookworm-amd64.log" 2>&1 || { tail -20 "$CACHE/bookworm-amd64.log"; exit 1; }
  mv "$TREE.tmp" "$TREE"
fi
bash tests/make_image.sh

work=$(mktemp -d)
cleanup() {
  docker ps -aq --filter "label=cube.node=$NODE" | xargs -r docker rm -f >/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/out"
cp "$PYZ" "$work/cube.pyz"
# `cube upgrade`'s second pyz: the same code under another version (tests/repack.py; a second build takes minutes).
python3 tests/repack.py "$PYZ" "$work/cube-new.pyz" "$(python3 "$PYZ" version | cut -d' ' -f2)+nspawn"

cat >"$work/cube-boot-test.service" <<'EOF'
[Unit]
Description=Cube boot test: install, use and uninstall the services
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/bin/sh /cube-test/inside.sh
ExecStopPost=/bin/systemctl poweroff --no-block
EOF

cat >"$work/inside.sh" <<EOF
#!/bin/sh
# Runs inside the booted container, as a systemd service.
exec >/cube-test/out/log 2>&1
set -eu
NODE=$NODE
EOF
cat >>"$work/inside.sh" <<'EOF'
step() { echo; echo "== $*"; }
get() {  # get URL [TOKEN]: print the body, fail on anything but 200
  python3 - "$@" <<'PY'
import ssl, sys, urllib.request
request = urllib.request.Request(sys.argv[1])
if len(sys.argv) > 2:
    request.add_header("Authorization", "Bearer " + sys.argv[2])
context = ssl._create_unverified_context()  # /health only: it answers anyone, and no token is sent
print(urllib.request.urlopen(request, timeout=5, context=context).read().decode())
PY
}
wait_for() {  # wait_for SECONDS COMMAND...: retry until it succeeds
  limit=$1; shift
  i=0
  until "$@" >/tmp/wait.out 2>&1; do
    i=$((i + 1))
    if [ "$i" -ge $((limit * 5)) ]; then cat /tmp/wait.out; return 1; fi
    sleep 0.2
  done
  cat /tmp/wait.out
}
cube() { /usr/local/bin/cube "$@"; }

step "systemd $(systemctl --version | head -1 | cut -d' ' -f2), $(python3 -V), $(uname -m)"
step "install manager"
/cube-test/cube.pyz install manager --port 15555 --no-mdns
wait_for 20 get https://127.0.0.1:15555/health
TOKEN=$(/cube-test/cube.pyz token)

step "install worker"
/cube-test/cube.pyz install worker --manager https://127.0.0.1:15555 --token "$TOKEN" \
    --port 15556 --name "$NODE" --no-mdns --label boot=nspawn
wait_for 20 get https://127.0.0.1:15556/health
ls -l /usr/local/bin/cube /etc/cube/cube.env /etc/systemd/system/cube-*.service
grep -v '^#' /etc/cube/cube.env | grep .

step "the worker joins the manager"
export CUBE_MANAGER=https://127.0.0.1:15555 CUBE_TOKEN="$TOKEN"
wait_for 30 sh -c "cube nodes --json | grep -q '\"$NODE\"'"
cube nodes

step "a task through both services, on the host's Docker engine"
cube run --image cube-busybox:latest --cmd "sleep 300" --name boot-task --timeout 60
cube status
cube stop boot-task

step "install again: nothing changes, nothing restarts"
before=$(systemctl show -p MainPID --value cube-worker cube-manager | tr '\n' ' ')
/cube-test/cube.pyz install worker
after=$(systemctl show -p MainPID --value cube-worker cube-manager | tr '\n' ' ')
echo "main pids before: $before after: $after"
test "$before" = "$after"

step "cube upgrade to a second pyz: systemd restarts both services on it, the task's container keeps running"
NEW=$(/cube-test/cube-new.pyz version | cut -d' ' -f2)
cube run --image cube-busybox:latest --cmd "sleep 300" --name up-task --timeout 60 >/dev/null
container() { cube status up-task --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["container_id"])'; }
held=$(container)
before=$(systemctl show -p MainPID --value cube-worker cube-manager | tr '\n' ' ')
began=$(date +%s)
/cube-test/cube-new.pyz upgrade --pyz /cube-test/cube-new.pyz
echo "cube upgrade took $(( $(date +%s) - began )) s"
after=$(systemctl show -p MainPID --value cube-worker cube-manager | tr '\n' ' ')
echo "main pids before: $before after: $after"
test "$(echo $before | cut -d' ' -f1)" != "$(echo $after | cut -d' ' -f1)"
test "$(echo $before | cut -d' ' -f2)" != "$(echo $after | cut -d' ' -f2)"
systemctl show -p NRestarts -p Result cube-worker cube-manager | paste -sd' '
get https://127.0.0.1:15555/health | grep "\"version\": \"$NEW\""
cube nodes | tee /tmp/nodes.out
grep -q " $NEW\$" /tmp/nodes.out
ls -l /usr/local/bin/cube /usr/local/bin/cube.old
test "$(container)" = "$held"
echo "container $held kept running"
cube stop up-task

step "services and hardening"
systemctl --no-pager status cube-manager cube-worker | grep -E 'Active:|Main PID|cube\.service|─'
systemd-analyze security --no-pager cube-worker.service | tail -1
systemd-analyze security --no-pager cube-manager.service | tail -1

step "uninstall --purge"
cube uninstall worker --purge
cube uninstall manager --purge
for path in /usr/local/bin/cube /usr/local/bin/cube.old /etc/cube /var/lib/cube /etc/systemd/system/cube-worker.service \
    /etc/systemd/system/cube-manager.service; do
  if [ -e "$path" ]; then echo "still there: $path"; exit 1; fi
done
systemctl is-active cube-worker cube-manager || true

step PASS
touch /cube-test/out/PASS
EOF

# --volatile=overlay: the cached tree stays as debootstrap made it; what the test writes vanishes at power-off.
# --register=no --keep-unit: this host's PID 1 is not systemd, so there is no machined or bus to register with.
set +e
timeout 300 systemd-nspawn -q -b -D "$TREE" --register=no --keep-unit --private-network --volatile=overlay \
    --machine="$NODE" \
    --bind-ro="$work/cube-boot-test.service:/etc/systemd/system/cube-boot-test.service" \
    --bind-ro="$work/inside.sh:/cube-test/inside.sh" --bind-ro="$work/cube.pyz:/cube-test/cube.pyz" \
    --bind-ro="$work/cube-new.pyz:/cube-test/cube-new.pyz" \
    --bind="$work/out:/cube-test/out" --bind=/run/docker.sock:/run/docker.sock \
    systemd.wants=cube-boot-test.service >"$work/console.log" 2>&1
status=$?
set -e
cat "$work/out/log" 2>/dev/null || { echo "no log from inside; console:"; tail -40 "$work/console.log"; }
if [ $status -ne 0 ] || [ ! -e "$work/out/PASS" ]; then
  echo "nspawn_boot: FAILED (nspawn exit $status) after $(( $(date +%s) - started )) s; console tail:"
  tail -25 "$work/console.log"
  exit 1
fi
echo "nspawn_boot: passed in $(( $(date +%s) - started )) s"
