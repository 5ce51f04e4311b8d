"""`cube image push` and `cube image ls`: what the user sees of images that move without a registry (the paths are
cube.cluster.images'). A push reads the image from the engine where the command runs — the one place the CLI loads
the docker SDK, through cube.worker.docker_runtime — asks the manager which nodes lack it, and sends it once;
progress goes to stderr (bytes sent, as the manager passes them on to every node at once), the outcome per node to
stdout.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator

from cube.core.errors import CubeError

PROGRESS_EVERY = 0.5  # seconds between progress lines


def size_text(count: float) -> str:
    from cube.worker.images import size_text as text

    return text(count)


def _progress(chunks: Iterator[bytes], total: int, targets: list[str], out) -> Iterator[bytes]:
    sent, shown, began = 0, 0.0, time.monotonic()
    where = ", ".join(targets)
    for chunk in chunks:
        sent += len(chunk)
        now = time.monotonic()
        if now - shown >= PROGRESS_EVERY:
            shown = now
            share = f" of ~{size_text(total)} ({min(99, sent * 100 // total)}%)" if total else ""
            out.write(f"\r  sent {size_text(sent)}{share} to {where}  ")
            out.flush()
        yield chunk
    out.write(f"\r  sent {size_text(sent)} to {where} in {time.monotonic() - began:.1f} s\n")
    out.flush()


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
            chunks = _progress(runtime.save(image), found.get("size") or 0, missing, out)
            response = client.open(
                "POST", "/images", params=[("node", n) for n in missing], chunks=chunks, timeout=120.0
            )
            try:
                answer = json.loads(response.read() or b"{}")
            finally:
                response.close()
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
