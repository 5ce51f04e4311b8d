"""Which node has which image, as the manager knows it: each worker's poll answer carries the list of its engine's
tagged images (id and tags, see cube.worker.images), and this map keeps the last one per node, in memory only (a
restarted manager has it again after one poll of each node). It decides which peer a node fetches a missing image
from (`source`: a ready node that has it, other than the asker, the least busy one first) and what `cube image ls`
shows. Nothing here moves bytes: cube.cluster.images does, through the manager's links.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


def matches(ref: str, image_id: str, tags) -> bool:
    """Whether `ref` names the image: one of its tags (a name without a tag is `:latest`, as Docker reads it), its
    id, or the start of its id (12 hex digits or more)."""
    if ref in tags or ref == image_id:
        return True
    if ":" not in ref.split("/")[-1] and f"{ref}:latest" in tags:
        return True
    bare = image_id.split(":", 1)[-1]
    short = ref.split(":", 1)[-1] if ref.startswith("sha256:") else ref
    return len(short) >= 12 and bare.startswith(short)


class ImageMap:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_node: dict[str, list[dict]] = {}  # node -> [{"id", "tags"}], as its worker last reported

    def heard(self, node: str, images) -> None:
        """A poll answer of `node`; `images` None: a worker that does not report images (older version)."""
        if not isinstance(images, list):
            return
        clean = [
            {"id": str(i["id"]), "tags": [str(t) for t in i.get("tags") or ()]}
            for i in images
            if isinstance(i, dict) and isinstance(i.get("id"), str)
        ]
        with self._lock:
            self._by_node[node] = clean

    def forget(self, node: str) -> None:
        with self._lock:
            self._by_node.pop(node, None)

    def holders(self, ref: str) -> list[str]:
        """The nodes whose engine has the image `ref` (as last reported)."""
        with self._lock:
            return sorted(
                n for n, images in self._by_node.items() if any(matches(ref, i["id"], i["tags"]) for i in images)
            )

    def source(self, ref: str, asker: str, ready: Callable[[str], bool], load: Callable[[str], int]) -> str | None:
        """The node `asker` should fetch `ref` from: a ready holder other than itself, the one running the fewest
        tasks first (a Pi that serves an image serves its tasks less well meanwhile); None when none has it."""
        candidates = [n for n in self.holders(ref) if n != asker and ready(n)]
        return min(candidates, key=lambda n: (load(n), n)) if candidates else None

    def listing(self) -> list[dict]:
        """`cube image ls`: each image (by id) with its tags and the nodes that have it."""
        merged: dict[str, dict] = {}
        with self._lock:
            for node, images in sorted(self._by_node.items()):
                for image in images:
                    entry = merged.setdefault(image["id"], {"id": image["id"], "tags": set(), "nodes": []})
                    entry["tags"].update(image["tags"])
                    entry["nodes"].append(node)
        return [
            {"id": e["id"], "tags": sorted(e["tags"]), "nodes": e["nodes"]}
            for e in sorted(merged.values(), key=lambda e: (sorted(e["tags"]) or [""])[0])
        ]
