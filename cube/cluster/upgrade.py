"""How a new pyz travels in `cube upgrade`: the CLI uploads one per architecture to the manager (`PUT
/upgrade/pyz/ARCH`), which keeps it on its shelf (`Shelf`: the manager's data directory, `upgrade/ARCH.pyz` with
its facts beside it in `ARCH.json`); the manager then pushes it to each worker in turn (`push`: a chunked `POST
/upgrade` carrying the hash and the version), over the mutually authenticated link it already holds to that worker.

The manager pushes rather than the worker fetching: a worker may not know its manager's URL (static `--workers`, no
mDNS), while the manager always knows each worker; and the worker's API already accepts the manager alone, so no
route opens to a worker's certificate. The worker checks the hash, the architecture and the version before it puts
the file in place (cube.ops.upgrade.SelfUpgrade).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

from cube.core.errors import BadRequest, Conflict, CubeError
from cube.core.spec import shown
from cube.ops.upgrade import ARCHES, SelfUpgrade, describe, receive

PUSH_TIMEOUT = 120.0  # seconds one read or write of a push may take (a Pi's SD card writing 7 MiB)


class Shelf:
    """The pyz files the manager holds for a rollout, one per architecture."""

    def __init__(self, data_dir: str):
        self.directory = os.path.join(data_dir, "upgrade")
        os.makedirs(self.directory, mode=0o700, exist_ok=True)

    def path(self, arch: str) -> str:
        return os.path.join(self.directory, f"{arch}.pyz")

    def put(self, arch: str, read: Callable[[int], bytes], keep: str | None = None) -> dict:
        """Take the pyz streamed by `read` as the `arch` build. `keep`: the hash a running rollout needs for this
        architecture, which another file may not replace."""
        tmp, sha256, size = receive(read, self.directory)  # read whole first: a refusal mid-body breaks the pipe
        try:
            if arch not in ARCHES:
                raise BadRequest(f"arch must be one of {', '.join(ARCHES)}, not {shown(arch)}")
            info = describe(tmp)
            if info.arch != arch:
                raise BadRequest(f"arch: the file is the {info.arch} build, not the {arch} one")
            if keep and keep != sha256:
                raise Conflict(
                    f"an upgrade with another {arch} pyz is running: wait for it to end (cube upgrade --status)"
                )
            facts = {**info.to_dict(), "sha256": sha256, "size": size}
            os.replace(tmp, self.path(arch))
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        with open(os.path.join(self.directory, f"{arch}.json"), "w") as handle:
            json.dump(facts, handle)
        return facts

    def held(self) -> dict:
        """arch -> {"version", "api", "arch", "sha256", "size"} of each pyz held."""
        found = {}
        for arch in ARCHES:
            try:
                with open(os.path.join(self.directory, f"{arch}.json")) as handle:
                    facts = json.load(handle)
            except (OSError, ValueError):
                continue
            if os.path.exists(self.path(arch)):
                found[arch] = facts
        return found

    def chunks(self, arch: str):
        with open(self.path(arch), "rb") as handle:
            while chunk := handle.read(1 << 20):
                yield chunk


def push(links, shelf: Shelf, node: dict, arch: str) -> dict:
    """Give the worker `node` (a node dict) the pyz of `arch`; raises its refusal."""
    facts = shelf.held().get(arch)
    if facts is None:
        raise CubeError(f"the manager holds no {arch} pyz any more: run cube upgrade again")
    client = links.client(node["address"])
    params = {"sha256": facts["sha256"], "version": facts["version"]}
    response = client.open("POST", "/upgrade", params=params, chunks=shelf.chunks(arch), timeout=PUSH_TIMEOUT)
    try:
        return json.loads(response.read() or b"{}")
    finally:
        response.close()


def replace_self(shelf: Shelf, upgrader: SelfUpgrade, arch: str) -> dict:
    """The manager's own turn: the same checks and replacement as a worker's, from its shelf."""
    facts = shelf.held().get(arch)
    if facts is None:
        raise CubeError(f"the manager holds no {arch} pyz any more: run cube upgrade again")
    chunks = shelf.chunks(arch)
    return upgrader.apply(lambda _size: next(chunks, b""), facts["sha256"], facts["version"])
