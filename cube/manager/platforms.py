"""What the manager has learnt about images: which platforms an image reference has no variant for. A worker that
pulls an image made for another platform fails its task at once with `cube.core.images.no_variant`'s reason; the
manager reads the platform back from it (`_note_platform`, when it folds the report in), keeps the fact in the
store's "image_platforms" kind, and gives it to the scheduler's platform check (`_lacking`), so the task's next
placement, and every later task of that image, avoids the nodes of that platform. A fact is kept FACT_TTL seconds:
a tag can gain the missing variant (a new push), and one failed pull then is the price of finding out. A mixin of
`Manager`, which owns the lock and the store batch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from cube.core.images import lacking_arch
from cube.core.model import State, Task, TaskSpec
from cube.store import Store

KIND = "image_platforms"
FACT_TTL = 24 * 3600.0


class ManagerPlatforms:
    # Owned and written by Manager (see manager.py).
    _lock: threading.RLock
    store: Store
    clock: Callable[[], float]
    _touch: Callable[[str, str], None]

    image_platforms: dict[str, dict[str, dict]]  # image -> platform -> {"node", "at"}: the store's, in memory

    def _load_platforms(self) -> None:
        self.image_platforms = {}
        for data in self.store.values(KIND):
            if isinstance(data, dict) and isinstance(data.get("image"), str) and isinstance(data.get("lacks"), dict):
                self.image_platforms[data["image"]] = data["lacks"]

    def _lacking(self, spec: TaskSpec) -> dict[str, str]:
        """The platforms the spec's image has no variant for (platform -> the node that found out), fresh ones."""
        known = self.image_platforms.get(spec.image)
        if not known:
            return {}
        now = self.clock()
        return {where: fact["node"] for where, fact in known.items() if now - fact.get("at", 0.0) < FACT_TTL}

    def _note_platform(self, task: Task) -> None:
        """A report just folded in (lock held, inside the fold's store batch): remember the platform the task's
        image lacks when its node said so."""
        observed = task.observed
        if observed is None or observed.state is not State.FAILED:
            return
        where = lacking_arch(observed.reason)
        if where is None:
            return
        lacks = dict(self.image_platforms.get(task.spec.image, {}))
        if where in lacks and self.clock() - lacks[where].get("at", 0.0) < FACT_TTL:
            return
        lacks[where] = {"node": observed.node, "at": self.clock()}
        self.image_platforms[task.spec.image] = lacks
        self._touch(KIND, task.spec.image)
        self.store.put(KIND, task.spec.image, {"image": task.spec.image, "lacks": lacks})

    def _restore_platforms(self, images: set[str]) -> None:
        """Memory back to what the store has for the images a refused batch touched (lock held)."""
        for image in images:
            data = self.store.get(KIND, image)
            if isinstance(data, dict) and isinstance(data.get("lacks"), dict):
                self.image_platforms[image] = data["lacks"]
            else:
                self.image_platforms.pop(image, None)
