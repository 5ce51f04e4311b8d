"""`cube image push` and `cube image ls`: what the user sees of images that move without a registry (the paths are
cube.cluster.images'). A push reads the image from the engine where the command runs — the one place the CLI loads
the docker SDK, through cube.worker.docker_runtime — asks the manager which nodes lack it, and sends it once;
progress goes to stderr (bytes sent, as the manager passes them on to every node at once), the outcome per node to
stdout. A manager that goes away mid-push is one line with the next step: each node's engine tags an image only
once all of it is in, so no node keeps a part of it, and pushing again is safe.
"""

from __future__ import annotations

import http.client
import json
import sys
import time
from collections.abc import Iterator

from cube.core.errors import CubeError, Unavailable

PROGRESS_EVERY = 0.5  # seconds between progress lines


def size_text(count: float) -> str:
    from cube.worker.images import size_text as text

    return text(count)


class _Progress:
    """The image's stream on its way to the manager, with a progress line on `out`; whether the stream itself (the
    local engine) failed, and the line ended when the push breaks off."""

    def __init__(self, chunks: Iterator[bytes], total: int, targets: list[str], out):
        self._chunks, self._total, self._where, self._out = chunks, total, ", ".join(targets), out
        self.failed = False  # the local engine's stream broke, not the way to the manager
        self._open = False  # a progress line is on the screen without its newline

    def __iter__(self) -> Iterator[bytes]:
        sent, shown, began = 0, 0.0, time.monotonic()
        try:
            for chunk in self._chunks:
                sent += len(chunk)
                now = time.monotonic()
                if now - shown >= PROGRESS_EVERY:
                    shown = now
                    total = self._total
                    share = f" of ~{size_text(total)} ({min(99, sent * 100 // total)}%)" if total else ""
                    self._show(f"\r  sent {size_text(sent)}{share} to {self._where}  ")
                yield chunk
        except CubeError:
            self.failed = True
            raise
        self._show(f"\r  sent {size_text(sent)} to {self._where} in {time.monotonic() - began:.1f} s\n")

    def _show(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()
        self._open = not text.endswith("\n")

    def broke(self) -> None:
        if self._open:
            self._show("\n")


def _upload(client, missing: list[str], progress: _Progress) -> dict:
    """The stream sent once to the manager, which tees it to the nodes in `missing`; its answer (bytes sent, each
    node's outcome). The manager gone mid-way is one error with what to do next."""
    try:
        response = client.open(
            "POST", "/images", params=[("node", n) for n in missing], chunks=iter(progress), timeout=120.0
        )
        try:
            return json.loads(response.read() or b"{}")
        finally:
            response.close()
    except (OSError, http.client.HTTPException, ValueError) as error:  # the answer broke off, or is not JSON
        progress.broke()
        raise _broke_off(f"{client.base_url} broke off its answer: {error}") from None
    except Unavailable as error:
        progress.broke()
        if progress.failed:
            raise
        raise _broke_off(error.message) from None
    except CubeError:
        progress.broke()
        raise


def _broke_off(why: str) -> Unavailable:
    return Unavailable(
        f"the push broke off ({why}); no node keeps a part of the image (an engine tags one only once all of it "
        f"is in): push again once `cube nodes` answers"
    )


def push(client, image: str, nodes: list[str], out=sys.stderr, runtime=None) -> dict:
    """Push `image` from the local engine (or `runtime`) to `nodes` (all ready nodes when empty). Returns what to
    print."""
    if runtime is None:
        from cube.worker.docker_runtime import DockerRuntime

        runtime = DockerRuntime()
    try:
        found = runtime.image(image)
        if found is None:
            raise CubeError(f"no image {image} in the Docker engine here: build or pull it first (`docker images`)")
        tags = found["tags"] or []
        plan = client.post("/images/push", {"id": found["id"], "tags": tags, "nodes": nodes})
        result: dict = {"image": image, "id": found["id"], "nodes": {}}
        for name in plan["present"]:
            result["nodes"][name] = {"present": True}
        for name, error in plan["unreachable"].items():
            result["nodes"][name] = {"error": error}
        missing = plan["missing"]
        if missing:
            began = time.monotonic()
            answer = _upload(client, missing, _Progress(runtime.save(image), found.get("size") or 0, missing, out))
            result["bytes"] = answer.get("bytes", 0)
            result["seconds"] = time.monotonic() - began
            for name, outcome in (answer.get("nodes") or {}).items():
                result["nodes"][name] = outcome
        return result
    finally:
        runtime.close()


def push_text(result: dict) -> str:
    lines = []
    for name, outcome in sorted(result["nodes"].items()):
        if outcome.get("present"):
            lines.append(f"{name}: has {result['image']} already (nothing sent)")
        elif outcome.get("error"):
            lines.append(f"{name}: failed: {outcome['error']}")
        else:
            lines.append(
                f"{name}: loaded {', '.join(outcome.get('loaded') or [result['image']])} "
                f"({size_text(outcome.get('bytes', 0))} in {outcome.get('seconds', 0):.1f} s)"
            )
    return "\n".join(lines)


def listing_text(images: list[dict]) -> str:
    from cube.cli.output import table

    if not images:
        return "no images reported yet: each worker reports its engine's images within 30 s"
    rows = [[", ".join(i["tags"]) or "-", i["id"].split(":", 1)[-1][:12], ",".join(i["nodes"])] for i in images]
    return table(["IMAGE", "ID", "NODES"], rows)
