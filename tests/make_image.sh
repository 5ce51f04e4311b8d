#!/usr/bin/env bash
# Builds the local test image `cube-busybox:latest` with `docker import` (no registry is reachable here):
# /bin/busybox from Debian's busybox-static plus links for the applets the tests use.
set -euo pipefail
IMAGE=${1:-cube-busybox:latest}
if docker image inspect "$IMAGE" >/dev/null 2>&1; then exit 0; fi
BUSYBOX=$(command -v busybox || echo /bin/busybox)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/tmp" "$root/www" "$root/etc"
cp "$BUSYBOX" "$root/bin/busybox"
for applet in sh sleep httpd echo cat ls true false kill ps env wget nc date printf touch rm mkdir; do
  ln -s busybox "$root/bin/$applet"
done
echo 'cube ok' > "$root/www/index.html"
echo 'root:x:0:0:root:/:/bin/sh' > "$root/etc/passwd"
tar -C "$root" -c . | docker import -c 'ENV PATH=/bin' -c 'CMD ["/bin/sh"]' - "$IMAGE" >/dev/null
echo "built $IMAGE"
