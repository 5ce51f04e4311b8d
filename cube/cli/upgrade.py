"""`cube upgrade`: what the user sees of a rollout of a new pyz. The files are checked here first (a cube.pyz, one
per architecture, all of one version, within one API level of the manager's), so a mistake is one line before
anything is sent; then each is uploaded to the manager, the rollout started, and its progress printed one line per
node step until it ends (the manager moves it on its own: `--no-wait` leaves, `--status` looks again).
"""

from __future__ import annotations

import json
import time

from cube.core.errors import CubeError, Unavailable
from cube.manager.upgrade import RUNNING, skew
from cube.ops.upgrade import PyzInfo, describe, running_pyz, sha256_of

UPLOAD_TIMEOUT = 120.0
LOST_FOR = 60.0  # seconds the manager may not answer while following a rollout (it restarts itself last)


def read_files(paths: list[str]) -> dict[str, tuple[str, PyzInfo]]:
    """arch -> (path, what it is), checked: one file per architecture, one version."""
    if not paths:
        own = running_pyz()
        if own is None:
            raise CubeError("this cube runs from sources, not from a pyz: pass the new one with --pyz FILE")
        paths = [own]
    found: dict[str, tuple[str, PyzInfo]] = {}
    for path in paths:
        try:
            info = describe(path)
        except CubeError as error:
            raise CubeError(f"--pyz {path}: {error.message}") from None
        if info.arch in found:
            raise CubeError(f"--pyz {path} and {found[info.arch][0]} are both the {info.arch} build: give one")
        found[info.arch] = (path, info)
    versions = sorted({info.version for _, info in found.values()})
    if len(versions) > 1:
        raise CubeError(f"--pyz: the files are of different versions ({', '.join(versions)}): give one version")
    return found


def start(client, files: dict[str, tuple[str, PyzInfo]], dry_run: bool, say) -> dict | None:
    """Check against the manager, then upload and begin (not with `dry_run`, nor when every node already runs the
    version). Returns the rollout's status, or None when nothing was begun."""
    health = client.health(timeout=10.0)
    version = next(iter(files.values()))[1].version
    for _, info in files.values():
        problem = skew(info.api, info.version, int(health.get("api") or 1), str(health.get("version")))
        if problem:
            raise CubeError(problem)
    nodes = client.get("/nodes")
    moving = [n for n in nodes if n.get("version") != version]
    if not moving and health.get("version") == version:
        say(f"every node and the manager already run cube {version}: nothing to upgrade")
        return None
    missing = sorted({str(n.get("arch")) for n in moving} - set(files))
    if missing:
        raise CubeError(
            f"the cluster runs {', '.join(missing)} too: add --pyz cube-{version}-{missing[0]}.pyz "
            f"(./build.sh all builds every architecture)"
        )
    for arch, (path, info) in sorted(files.items()):
        say(f"cube {info.version} (API level {info.api}) for {arch}: {path}")
    names = ", ".join(f"{n['name']} ({n.get('version') or '?'})" for n in sorted(moving, key=lambda n: n["name"]))
    say(f"to upgrade, one at a time: {names or 'no worker'}; then the manager ({health.get('version')})")
    if dry_run:
        say("dry run: nothing sent")
        return None
    hashes = {}
    for arch, (path, _) in sorted(files.items()):
        hashes[arch] = sha256_of(path)
        with open(path, "rb") as handle:
            response = client.open(
                "PUT",
                f"/upgrade/pyz/{arch}",
                chunks=iter(lambda: handle.read(1 << 20), b""),
                timeout=UPLOAD_TIMEOUT,
            )
            try:
                held = json.loads(response.read())
            finally:
                response.close()
        if held.get("sha256") != hashes[arch]:
            raise CubeError(f"the manager received {arch} pyz of another hash ({held.get('sha256')}): try again")
        say(f"uploaded {arch}: {held['size'] >> 10} KiB, sha256 {hashes[arch]}")
    return client.post("/upgrade", {"version": version, "sha256": hashes})


def follow(client, status: dict, say, poll: float = 0.5) -> dict:
    """Print each node's steps until the rollout ends; returns the last status."""
    shown: dict[str, str] = {}
    lost_since = None
    while True:
        rows = [(row["name"], row["step"], row["version"]) for row in status.get("nodes") or []]
        if status.get("manager"):  # the manager's own turn, last
            ours = status.get("manager_now")
            moving = status["reason"].startswith(("the manager replaces", "waiting for the manager"))
            step = "upgraded" if ours == status["version"] else "restarting" if moving else ""
            rows.append(("(manager)", step, ours))
        for name, step, version in rows:
            if step and step != "waiting its turn" and shown.get(name) != step:
                shown[name] = step
                say(f"{name}: {step} ({version or '?'})")
        if status.get("status") != RUNNING:
            return status
        time.sleep(poll)
        try:
            status = client.get("/upgrade")
            lost_since = None
        except Unavailable as error:  # the manager restarting on its new pyz
            lost_since = lost_since or time.monotonic()
            if time.monotonic() - lost_since > LOST_FOR:
                raise CubeError(
                    f"lost the manager during the upgrade: {error.message} (cube upgrade --status)"
                ) from None


def render(status: dict) -> str:
    if not status.get("status"):
        return status.get("reason") or "no upgrade has run"
    lines = [f"upgrade to cube {status['version']}: {status['status']}: {status.get('reason') or ''}".rstrip(": ")]
    for row in status.get("nodes") or []:
        lines.append(f"  {row['name']:<20} {row['version'] or '?':<10} {row['step']}")
    lines.append(f"  {'(manager)':<20} {status.get('manager_now') or '?'}")
    return "\n".join(lines)
