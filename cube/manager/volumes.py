"""Named volumes, as the manager keeps them: which node each one lives on. A named volume is a directory on one
node's disk, so the first placement of a task that mounts it decides its node (`_pin_volumes`, recorded in the
store's "volumes" kind with the placement, in the same batch) and from then on every task that mounts it is placed
only there (`_homes`, given to the scheduler's volume check): a task whose node is down waits for it, pending with
the reason, instead of starting empty elsewhere. Nothing here deletes a volume implicitly: only `remove_volume`
(`cube volume rm`) does, refused while a task desired to run mounts it, and done by the node's worker before the
record is forgotten. A mixin of `Manager`, which owns the lock, the store batch and the dispatcher.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

from cube.core.errors import Conflict, NotFound, Unavailable
from cube.core.model import Desired, Node, Task
from cube.core.spec import TaskSpec
from cube.store import Store


class ManagerVolumes:
    # Owned and written by Manager (see manager.py).
    _lock: threading.RLock
    tasks: dict[str, Task]
    nodes: dict[str, Node]
    store: Store
    clock: Callable[[], float]
    _dispatch: Callable | None
    _saving: Callable[[], AbstractContextManager[None]]
    _touch: Callable[[str, str], None]

    volumes: dict[str, dict]  # name -> {"name", "node", "created_at", "task"}: the store's "volumes", in memory
    _node_volumes: dict[str, dict[str, dict]]  # node -> name -> what its worker last reported of the volume

    def _load_volumes(self) -> None:
        self.volumes = {}
        self._node_volumes = {}
        for data in self.store.values("volumes"):
            if isinstance(data, dict) and isinstance(data.get("name"), str) and isinstance(data.get("node"), str):
                self.volumes[data["name"]] = data

    def _homes(self, spec: TaskSpec) -> dict[str, tuple[str, str]]:
        """Where the spec's named volumes live: name -> (node, its state, or "gone" when it was removed)."""
        homes = {}
        for name in spec.named_volumes:
            record = self.volumes.get(name)
            if record is not None:
                node = self.nodes.get(record["node"])
                homes[name] = (record["node"], node.state if node is not None else "gone")
        return homes

    def _pin_volumes(self, task: Task) -> None:
        """The task was just placed: its named volumes that live nowhere yet live on its node from now on (lock
        held, inside the placement's store batch: a refused batch forgets them too)."""
        for name in task.spec.named_volumes:
            if name not in self.volumes:
                record = {"name": name, "node": task.node, "created_at": self.clock(), "task": task.id}
                self._touch("volumes", name)
                self.store.put("volumes", name, record)
                self.volumes[name] = record

    def _restore_volumes(self, names: set[str]) -> None:
        """Memory back to what the store has for the volumes a refused batch touched (lock held)."""
        for name in names:
            data = self.store.get("volumes", name)
            if data is None:
                self.volumes.pop(name, None)
            else:
                self.volumes[name] = data

    def _heard_volumes(self, node_name: str, stats: dict) -> None:
        """Keep what a node says of its volumes (memory only: the worker says it again in every report)."""
        reported = stats.get("volumes")
        if isinstance(reported, list):
            self._node_volumes[node_name] = {
                v["name"]: v for v in reported if isinstance(v, dict) and isinstance(v.get("name"), str)
            }

    def _volume_users(self, name: str) -> Iterator[Task]:
        """Tasks desired to run that mount the volume `name` (lock held)."""
        return (t for t in self.tasks.values() if t.desired is Desired.RUN and name in t.spec.named_volumes)

    def list_volumes(self) -> list[dict]:
        """`GET /volumes`: each named volume with its node, that node's state, whether the node reports it (a
        volume is made by the first start, so a task still pending has none yet), its size when the node knows it,
        and the tasks desired to run that mount it."""
        with self._lock:
            out = []
            for name, record in sorted(self.volumes.items()):
                node = self.nodes.get(record["node"])
                reported = self._node_volumes.get(record["node"], {}).get(name)
                users = sorted(self._volume_users(name), key=lambda t: (t.created_at, t.id))
                out.append(
                    {
                        "name": name,
                        "node": record["node"],
                        "node_state": node.state if node is not None else "gone",
                        "created_at": record.get("created_at"),
                        "present": reported is not None,
                        "size": reported.get("size") if reported else None,
                        "tasks": [{"id": t.id, "name": t.name, "state": t.state.value} for t in users],
                    }
                )
            return out

    def remove_volume(self, name: str) -> dict:
        """`cube volume rm`: refused (409) while a task desired to run mounts it; with its node down, 503 and
        everything kept; otherwise the node's worker removes it, then the record is forgotten. A volume whose node
        was removed from the cluster is only forgotten (its data stays on that machine)."""
        with self._lock:
            record = self.volumes.get(name)
            if record is None:
                raise NotFound(f"no volume {name!r}: `cube volume ls` lists them")
            self._refuse_in_use(name)
            node = self.nodes.get(record["node"])
            if node is not None and node.state == "down":
                raise Unavailable(
                    f"volume {name} lives on {node.name}, which is down: it is kept, and its record; "
                    f"try again when the node answers (`cube nodes`)"
                )
            address = node.address if node is not None else None
        if address is not None and self._dispatch is not None:
            # Outside the lock: a slow node must not stall the manager. A task placed meanwhile is refused by the
            # worker itself (it will not remove a volume that a task held there to run mounts).
            self._dispatch(address, "DELETE", f"/volumes/{name}", None, None)
        with self._lock:
            with self._saving():
                self._touch("volumes", name)
                self.store.delete("volumes", name)
                self.volumes.pop(name, None)
            self._node_volumes.get(record["node"], {}).pop(name, None)
        note = "" if address is not None else f"; node {record['node']} was removed: its data stays on that machine"
        return {"removed": name, "node": record["node"], "note": note.lstrip("; ")}

    def _refuse_in_use(self, name: str) -> None:
        user = next(self._volume_users(name), None)
        if user is not None:
            raise Conflict(
                f"volume {name} is mounted by task {user.id} ({user.name or user.spec.image}), which is to run: "
                f"stop it first (`cube stop {user.job or user.id}`)"
            )
