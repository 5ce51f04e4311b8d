"""The images of one node, as its worker handles them without a registry. It decides three things:

- what the node reports it has: the engine's tagged images (id and tags), listed every IMAGES_EVERY seconds and
  after each load, so the manager knows which node can give which image without asking (a poll answer carries the
  last list; listing costs one call to /images/json);
- what a push does on this node (`cube image push`, through the manager): `check` first — an image whose id the
  engine already has is only tagged, and nothing moves — then `load` of the stream;
- how a task's missing image is fetched from a peer: `fetch` asks the `source` (the manager, see
  cube.cluster.images) for a stream of the image from a node that has it, and loads it. Docker tags a loaded image
  only once all of it is in, so a stream cut short (a source gone, a worker killed) leaves nothing tagged, and the
  fetch asks again for another peer than those that broke off (up to FETCH_PEERS).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

from cube.core.errors import CubeError, NotFound

log = logging.getLogger(__name__)

IMAGES_EVERY = 30.0  # seconds between listings of the node's images (sooner after a load)

FETCH_PEERS = 3  # peers a fetch tries, one after the other, when a stream breaks off
# (image, this node's name, peers not to ask again) -> (the node the stream comes from, the stream)
Source = Callable[[str, str, tuple[str, ...]], tuple[str, Iterator[bytes]]]


def size_text(count: float) -> str:
    """Bytes as people read them: 1.9 MB, 104.9 MB, 812 B (decimal, as Docker prints image sizes)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{int(count)} B"


class Counted:
    """A stream that counts the bytes that went through it, and knows whether it broke off (rather than the engine
    it fed refusing them)."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks
        self.bytes = 0
        self.broke = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self._chunks:
                self.bytes += len(chunk)
                yield chunk
        except CubeError:
            self.broke = True
            raise


class NodeImages:
    def __init__(
        self,
        runtime,
        node: str,
        source: Source | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        changed: Callable[[], None] = lambda: None,
    ):
        """`source`: how a missing image is had from a peer (None: it is not). `changed`: called when the list of
        images changed (the worker wakes the manager's long poll)."""
        self.runtime, self.node, self.source, self.monotonic, self.changed = runtime, node, source, monotonic, changed
        self._lock = threading.Lock()
        self._listed: list[dict] = []
        self._due = float("-inf")
        self._fetches: dict[str, threading.Lock] = {}  # image -> held while it is fetched (one fetch per image)

    def listed(self) -> list[dict]:
        with self._lock:
            return [dict(i) for i in self._listed]

    def refresh(self, force: bool = False) -> None:
        """List the engine's images when due; a changed list is reported at once."""
        if not force and self.monotonic() < self._due:
            return
        self._due = self.monotonic() + IMAGES_EVERY
        try:
            found = sorted(self.runtime.images(), key=lambda i: i["id"])
        except CubeError as error:
            log.info("listing images: %s", error.message)
            return
        with self._lock:
            if found == self._listed:
                return
            self._listed = found
        self.changed()

    def check(self, image_id: str, tags) -> dict:
        """Whether the engine has the image `image_id`; if it has, the tags it lacks are added (a push of an
        image this node has under another name moves nothing)."""
        found = self.runtime.image(image_id)
        if found is None or found["id"] != image_id:
            return {"node": self.node, "present": False}
        missing = [t for t in tags if t not in found["tags"]]
        if missing:
            self.runtime.tag(image_id, missing)
            self.refresh(force=True)
        return {"node": self.node, "present": True, "tagged": missing}

    def load(self, chunks: Iterator[bytes]) -> dict:
        """Load a pushed image; what was loaded, how many bytes, how long it took."""
        began = self.monotonic()
        counted = Counted(chunks)
        loaded = self.runtime.load(iter(counted))
        self.refresh(force=True)
        return {"node": self.node, "loaded": loaded, "bytes": counted.bytes, "seconds": self.monotonic() - began}

    def export(self, ref: str) -> Iterator[bytes]:
        """The image `ref` as a tar stream (a peer fetches it through the manager)."""
        if self.runtime.image(ref) is None:
            raise NotFound(f"node {self.node} has no image {ref}")
        return self.runtime.save(ref)

    def fetch(self, image: str) -> str:
        """Get `image` from a peer node that has it; the sentence the task's events show. Raises a CubeError that
        says why not (no source, no peer has it, the stream broke off)."""
        if self.source is None:
            raise NotFound("this node does not fetch images from its peers")
        with self._lock:
            lock = self._fetches.setdefault(image, threading.Lock())
        with lock:  # two tasks of one image on one node: the second finds it loaded by the first
            if self.runtime.image(image) is not None:
                return f"image {image} was loaded meanwhile"
            began = self.monotonic()
            peer, loaded, broke = self._fetch_from_peers(image)
            seconds = self.monotonic() - began
        self.refresh(force=True)
        after = f" after {'; '.join(broke)}" if broke else ""
        return f"image {image} fetched from {peer} ({size_text(loaded)} in {seconds:.1f} s){after}"

    def _fetch_from_peers(self, image: str) -> tuple[str, int, list[str]]:
        """Load `image` from a peer, another one each time a stream breaks off; the peer, the bytes loaded, and
        what broke before. Raises the last failure when no other peer has it, or after FETCH_PEERS tries."""
        assert self.source is not None
        tried: list[str] = []
        broke: list[str] = []
        while True:
            try:
                peer, chunks = self.source(image, self.node, tuple(tried))
            except NotFound:
                if not broke:
                    raise
                raise CubeError(f"{broke[-1]}; no other peer has it") from None
            counted = Counted(chunks)
            try:
                self.runtime.load(iter(counted))
                return peer, counted.bytes, broke
            except CubeError as error:  # which peer, and how far it got
                broke.append(f"loading the image from {peer} failed after {size_text(counted.bytes)}: {error.message}")
                tried.append(peer)
                log.info("fetching %s: %s", image, broke[-1])
                if not counted.broke or len(tried) >= FETCH_PEERS:  # this engine refused it: no peer would do
                    raise type(error)(broke[-1]) from None
