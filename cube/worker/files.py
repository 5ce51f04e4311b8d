"""A task's files (a stack's secrets and configs) on the node: where they are kept and when they go.

The manager hands the contents over with the assignment (`files`: source → base64), over the cluster's mutual TLS;
the worker writes each into its own private directory (`DIR/<task id>/<source>`, the directory 0700 and root's,
each file with the mode the spec asks for) before it accepts the assignment, so they are there at every start of
the container, also after a restart of the worker or of the machine. The runtime binds each read-only at its
target. They are removed with the task's record, never logged, and never in a report.
"""

from __future__ import annotations

import base64
import binascii
import os
import shutil
import tempfile

from cube.core.errors import BadRequest
from cube.core.model import Assignment
from cube.core.spec import MAX_FILE_BYTES


class TaskFiles:
    def __init__(self, root: str | None):
        """`root`: the directory (made when first needed); None: a temporary one (tests, `cube dev`)."""
        self._root = root

    @property
    def root(self) -> str:
        if self._root is None:
            self._root = tempfile.mkdtemp(prefix="cube-files-")
        return self._root

    def path(self, task_id: str, source: str) -> str:
        kind, name = source.split("/", 1)  # validated by the spec: secrets/NAME or configs/NAME
        return os.path.join(self.root, task_id, kind, name)

    def write(self, task: Assignment, contents: object) -> None:
        """Write the files `task`'s spec mounts from `contents` (the assignment's `files`); each must be given."""
        if not task.spec.files:
            return
        if not isinstance(contents, dict):
            raise BadRequest("the assignment's files must be an object: source → base64 content")
        for mount in task.spec.files:
            data = _decoded(contents.get(mount.source), mount.source)
            path = self.path(task.id, mount.source)
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            os.chmod(self.root, 0o700)
            temporary = f"{path}.new"
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.chmod(temporary, mount.mode)
            os.replace(temporary, path)

    def mounts(self, task: Assignment) -> list[tuple[str, str]]:
        """(file on the node, target in the container) for each of the task's files."""
        if not task.spec.files:
            return []
        return [(self.path(task.id, f.source), f.target) for f in task.spec.files]

    def remove(self, task_id: str) -> None:
        if self._root is not None:
            shutil.rmtree(os.path.join(self.root, task_id), ignore_errors=True)


def _decoded(value: object, source: str) -> bytes:
    if not isinstance(value, str):
        raise BadRequest(f"the assignment lacks the content of {source}")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"the content of {source} is not base64") from None
    if len(data) > MAX_FILE_BYTES:
        raise BadRequest(f"{source} is {len(data):,} bytes: at most {MAX_FILE_BYTES:,} are accepted")
    return data
