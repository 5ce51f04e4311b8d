#!/usr/bin/env bash
# A private Docker engine for the benchmarks: `bench/engine.sh start` prints the DOCKER_HOST to export, `stop` ends
# it and removes everything it made. Same dockerd binary as the system's engine, in a network namespace of its own
# (its bridges, veths and Swarm's overlay stay inside; the socket is a file on the host), with its own data and exec
# roots. Why: Swarm on Docker 20.10 can deadlock the engine's network controller when `swarm leave --force` meets
# containers being removed (creates then hang for good, until dockerd restarts) — that must never hit the shared
# engine other work uses, and a private engine can be restarted. It also keeps other work's containers out of the
# figures.
set -euo pipefail
NS=cubebench
ROOT=/var/lib/cube-bench-docker
EXEC=/var/run/cube-bench-docker
SOCK=/var/run/cube-bench-docker.sock
PIDFILE=/var/run/cube-bench-docker.pid
LOG=/var/tmp/cube-bench-dockerd.log
HERE=$(cd "$(dirname "$0")" && pwd)

start() {
  if [ -S "$SOCK" ] && DOCKER_HOST=unix://$SOCK docker info >/dev/null 2>&1; then
    echo "export DOCKER_HOST=unix://$SOCK"; return
  fi
  ip netns list | grep -qw "$NS" || ip netns add "$NS"
  ip netns exec "$NS" ip link set lo up
  mkdir -p "$ROOT" "$EXEC"
  # nsenter, not `ip netns exec`, which remounts /sys and hides the cgroup mounts dockerd needs.
  # setsid: its own session, so this script's caller can end without taking dockerd along.
  setsid nsenter --net="/var/run/netns/$NS" dockerd --host "unix://$SOCK" --data-root "$ROOT" --exec-root "$EXEC" \
    --pidfile "$PIDFILE" --cgroup-parent /cube-bench >"$LOG" 2>&1 < /dev/null &
  for _ in $(seq 1 60); do
    DOCKER_HOST=unix://$SOCK docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  DOCKER_HOST=unix://$SOCK docker info >/dev/null 2>&1 || { tail -20 "$LOG" >&2; exit 1; }
  DOCKER_HOST=unix://$SOCK bash "$HERE/../tests/make_image.sh" cube-busybox:latest >&2
  echo "export DOCKER_HOST=unix://$SOCK"
}

stop() {
  if [ -f "$PIDFILE" ]; then
    pid=$(cat "$PIDFILE")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  # Its containerd and shims live under EXEC; whatever is left there is ours.
  for pidfile in $(find "$EXEC" -name '*.pid' 2>/dev/null); do kill -9 "$(cat "$pidfile")" 2>/dev/null || true; done
  grep " $ROOT\| $EXEC" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  ip netns list | grep -qw "$NS" && ip netns delete "$NS"
  rm -rf "$EXEC" "$SOCK"
  [ "${1:-}" = purge ] && rm -rf "$ROOT"
  echo "private engine stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop "${2:-}" ;;
  *) echo "usage: bench/engine.sh start|stop [purge]" >&2; exit 2 ;;
esac
