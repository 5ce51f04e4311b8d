"""`cube upgrade` on the manager: which node is replaced next, and when a rollout is over. One rollout at a time, kept
in the store (kind "upgrade"), so a manager that restarts — or that replaced itself last — resumes it where it was.

The plan (`plan`, a pure function of the rollout record, the nodes and the clock) goes one worker at a time, in name
order; nodes already at the version are done:
- a node sent the pyz is waited for: done when it reports the version and is ready again; a node that does not come
  back within `deadline` seconds of the send fails the rollout, with what it reports;
- a node that refused the pyz (wrong hash, wrong architecture, a worker that runs from sources) fails the rollout
  with its words, and the rollout stops there: the nodes after it keep their version;
- a node that is down when its turn comes is skipped and named in the result (`cube upgrade` again once it is back);
- once every worker is done, the manager replaces itself (when it runs from a pyz; else the result says to restart
  it by hand), and the rollout is successful once the manager runs the version.
The rollout's version may not be more than one API level from the manager's (`skew`): the manager keeps its version
while the workers move, and speaks to each of them through it.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cube import API_VERSION, __version__
from cube.core.errors import BadRequest, Conflict, CubeError, StorageFailed
from cube.core.spec import shown

log = logging.getLogger("cube.upgrade")
KIND, KEY = "upgrade", "rollout"
DEADLINE = 120.0  # seconds a node has to come back at the new version after it was sent the pyz
RUNNING, SUCCESSFUL, FAILED = "running", "successful", "failed"
MANAGER = "(manager)"  # the manager's own entry among the nodes of a rollout
_SHA256 = re.compile(r"[0-9a-f]{64}")
_ARCH = re.compile(r"[a-z0-9_]{1,16}")


@dataclass
class Step:
    action: str  # send: give `node` the pyz; wait; manager: replace the manager; done; fail
    node: str = ""
    reason: str = ""
    skipped: list[str] = field(default_factory=list)


def skew(new_api: int, new_version: str, api: int = API_VERSION, version: str = __version__) -> str | None:
    """Why a cluster whose manager speaks API level `api` cannot take cube `new_version` (level `new_api`), or None."""
    if abs(new_api - api) <= 1:
        return None
    between = api + 1 if new_api > api else api - 1
    return (
        f"cube {new_version} speaks API level {new_api} and this manager (cube {version}) level {api}: the manager "
        f"keeps its version while the workers move, so upgrade through a release of level {between} first"
    )


def plan(rollout: dict, nodes: list[dict], now: float, deadline: float = DEADLINE) -> Step:
    """The next step of `rollout` given the nodes (`GET /nodes` dicts: name, arch, version, state)."""
    target = rollout["version"]
    entries = rollout.get("nodes") or {}
    skipped = []
    for node in sorted(nodes, key=lambda n: n["name"]):
        name, entry = node["name"], entries.get(node["name"]) or {}
        if entry.get("error"):
            return Step("fail", name, f"node {name} refused the upgrade: {entry['error']}")
        back = node.get("version") == target and node.get("state") == "ready"
        if "sent" in entry and not back:
            if now - entry["sent"] > deadline:
                return Step(
                    "fail",
                    name,
                    f"node {name} did not come back at cube {target} within {deadline:g} s of its upgrade (it "
                    f"reports cube {node.get('version') or '?'}, {node.get('state')}): see its log "
                    f"(journalctl -u cube-worker); its old pyz is kept beside the new one as .old",
                )
            return Step("wait", name, f"waiting for node {name} to restart at cube {target}")
        if back or node.get("version") == target:
            continue
        if node.get("state") != "ready":
            skipped.append(name)
            continue
        if node.get("arch") not in rollout["sha256"]:
            return Step(
                "fail",
                name,
                f"node {name} runs {node.get('arch') or 'an unknown architecture'} and this rollout has no pyz for it",
            )
        return Step("send", name, f"upgrading node {name} to cube {target}")
    manager = entries.get(MANAGER) or {}
    if manager.get("error"):
        return Step("fail", MANAGER, f"the manager could not replace itself: {manager['error']}", skipped)
    if rollout.get("manager") and rollout.get("manager_version") != target:
        if "sent" not in manager:
            return Step("manager", MANAGER, f"the manager replaces itself with cube {target}", skipped)
        if now - manager["sent"] > deadline:
            return Step(
                "fail",
                MANAGER,
                f"the manager did not come back at cube {target} within {deadline:g} s of replacing itself (it "
                f"runs cube {rollout.get('manager_version')}): see journalctl -u cube-manager",
                skipped,
            )
        return Step("wait", MANAGER, f"waiting for the manager to restart at cube {target}", skipped)
    return Step("done", "", _done(rollout, skipped), skipped)


def _done(rollout: dict, skipped: list[str]) -> str:
    words = [f"every worker runs cube {rollout['version']}"]
    if skipped:
        words.append(f"not upgraded, being down: {', '.join(skipped)} (run cube upgrade again once they are back)")
    if rollout.get("manager_version") != rollout["version"]:
        words.append(
            f"the manager runs cube {rollout.get('manager_version')} "
            f"({rollout.get('manager') or 'not from a pyz'}): restart it on the new pyz "
            f"(sudo ./cube-{rollout['version']}-ARCH.pyz install manager keeps its settings)"
        )
    return "; ".join(words)


class Upgrades:
    """The rollout's record and the loop that moves it. `nodes()`: the manager's node dicts; `held()`: the pyz files
    the manager holds (arch -> {"version", "api", "sha256"}); `send(node, arch)`: give a worker the pyz of its
    architecture (raises its refusal as a CubeError); `replace_self(arch)`: the manager's own replacement, None when it
    runs from sources (`manager_pyz` then names its pyz, or is None); `store`: where the record lives."""

    def __init__(
        self,
        store,
        nodes: Callable[[], list[dict]],
        held: Callable[[], dict],
        send: Callable[[dict, str], object],
        replace_self: Callable[[str], object] | None = None,
        manager_pyz: str | None = None,
        manager_arch: str | None = None,
        clock: Callable[[], float] = time.time,
        deadline: float = DEADLINE,
    ):
        self.store, self.nodes, self.held, self.send = store, nodes, held, send
        self.replace_self, self.manager_pyz, self.manager_arch = replace_self, manager_pyz, manager_arch
        self.clock, self.deadline = clock, deadline
        self._lock = threading.Lock()
        self._closed = threading.Event()

    def current(self) -> dict | None:
        return self.store.get(KIND, KEY)

    def begin(self, body) -> dict:
        """`POST /upgrade`: check the request against the files held and the nodes, then record the rollout."""
        if not isinstance(body, dict):
            raise BadRequest('send {"version": "X.Y.Z", "sha256": {"ARCH": "HEX"}}')
        version, hashes = body.get("version"), body.get("sha256")
        if not isinstance(version, str) or not version or len(version) > 64:
            raise BadRequest(f"version must be the version of the uploaded pyz, not {shown(version)}")
        if not isinstance(hashes, dict) or not hashes:
            raise BadRequest('sha256 must be an object {"ARCH": "HEX"} of the uploaded pyz files')
        held = self.held()
        for arch, digest in hashes.items():
            if not _ARCH.fullmatch(arch):
                raise BadRequest(f"sha256: its keys are architectures (x86_64, aarch64, armv7l), not {shown(arch)}")
            if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
                raise BadRequest(f"sha256.{arch} must be 64 hex digits, not {shown(digest)}")
            have = held.get(arch)
            if have is None:
                raise BadRequest(f"sha256.{arch}: no pyz for {arch} was uploaded (PUT /upgrade/pyz/{arch})")
            if have["sha256"] != digest:
                raise BadRequest(
                    f"sha256.{arch}: the manager holds a pyz of hash {have['sha256']}, not {digest}: upload it again"
                )
            if have["version"] != version:
                raise BadRequest(f"version: the {arch} pyz is cube {have['version']}, not {version}")
            problem = skew(have["api"], version)
            if problem:
                raise Conflict(problem)
        nodes = self.nodes()
        wanted = {n.get("arch") for n in nodes if n.get("version") != version}
        if self.manager_pyz and __version__ != version:
            wanted.add(self.manager_arch)
        missing = sorted(str(a) for a in wanted - set(hashes))
        if missing:
            raise BadRequest(
                f"sha256: the cluster runs {', '.join(missing)} too and no pyz for it was given: add "
                f"--pyz cube-{version}-{missing[0]}.pyz (./build.sh all builds every architecture)"
            )
        with self._lock:
            running = self.current()
            if running and running["status"] == RUNNING:
                if running["version"] == version and running["sha256"] == hashes:
                    return self.status()
                raise Conflict(
                    f"an upgrade to cube {running['version']} is running: wait for it (cube upgrade --status)"
                )
            rollout = {
                "version": version,
                "sha256": dict(hashes),
                "started": self.clock(),
                "status": RUNNING,
                "reason": "",
                "nodes": {n["name"]: {"from": n.get("version", "")} for n in nodes if n.get("version") != version},
                "manager": self.manager_pyz,
                "manager_version": __version__,
            }
            self.store.put(KIND, KEY, rollout)
        log.info("upgrade to cube %s started", version)
        return self.status()

    def status(self) -> dict:
        """`GET /upgrade`: the rollout and each node's version and step."""
        rollout = self.current()
        if rollout is None:
            return {"status": "", "reason": "no upgrade has run", "nodes": []}
        entries = rollout.get("nodes") or {}
        rows = []
        for node in sorted(self.nodes(), key=lambda n: n["name"]):
            entry = entries.get(node["name"]) or {}
            rows.append(
                {
                    "name": node["name"],
                    "arch": node.get("arch", ""),
                    "version": node.get("version", ""),
                    "state": node.get("state", ""),
                    "from": entry.get("from", node.get("version", "")),
                    "step": _step(entry, node, rollout["version"]),
                }
            )
        return {**{k: v for k, v in rollout.items() if k != "nodes"}, "nodes": rows, "manager_now": __version__}

    def tick(self) -> None:
        """One step of the running rollout, if any (its own thread: a send uploads a pyz)."""
        with self._lock:
            rollout = self.current()
            if rollout is None or rollout["status"] != RUNNING:
                return
            if rollout.get("manager") and "sent" in (rollout["nodes"].get(MANAGER) or {}):
                rollout["manager_version"] = __version__  # back from its own replacement
            step = plan(rollout, self.nodes(), self.clock(), self.deadline)
            if step.action in ("send", "manager"):
                rollout["nodes"].setdefault(step.node, {})["sent"] = self.clock()
            elif step.action in ("done", "fail"):
                rollout["status"] = SUCCESSFUL if step.action == "done" else FAILED
                rollout["reason"] = step.reason
                rollout["finished"] = self.clock()
                log.log(logging.INFO if step.action == "done" else logging.ERROR, "upgrade: %s", step.reason)
            elif step.action == "wait" and rollout.get("reason") == step.reason:
                return
            rollout["reason"] = step.reason
            self.store.put(KIND, KEY, rollout)  # before the send: a manager restarted mid-send waits for the node
        if step.action == "send":
            node = next(n for n in self.nodes() if n["name"] == step.node)
            self._act(step.node, lambda: self.send(node, node["arch"]))
        elif step.action == "manager":
            replace = self.replace_self
            arch = self.manager_arch
            self._act(MANAGER, lambda: replace(arch) if replace and arch else None)

    def _act(self, name: str, action: Callable[[], object]) -> None:
        log.info("upgrade: replacing the pyz of %s", name)
        try:
            action()
        except CubeError as error:
            with self._lock:
                rollout = self.current()
                if rollout is not None:
                    rollout["nodes"].setdefault(name, {})["error"] = error.message
                    self.store.put(KIND, KEY, rollout)

    def run(self, every: float = 0.5) -> None:
        while not self._closed.wait(every):
            try:
                self.tick()
            except StorageFailed as error:
                log.warning("upgrade: the store refused the rollout's record: %s", error.message)
            except Exception:
                log.exception("upgrade round failed")

    def start(self) -> "Upgrades":
        threading.Thread(target=self.run, name="cube-upgrade", daemon=True).start()
        return self

    def close(self) -> None:
        self._closed.set()


def _step(entry: dict, node: dict, target: str) -> str:
    if entry.get("error"):
        return f"refused: {entry['error']}"
    if node.get("version") == target:
        return "upgraded" if entry else "at the version"
    if "sent" in entry:
        return "restarting"
    return "down: skipped" if node.get("state") != "ready" else "waiting its turn"
