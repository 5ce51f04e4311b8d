"""Where Cube keeps things and how it finds its cluster token: default ports, default data directories (the system
service's state directory for root, the user's data directory otherwise, `CUBE_DATA` to move them), and the token
rules — `--token`, then `CUBE_TOKEN`, then a token file (`--token-file`, `CUBE_TOKEN_FILE`), then the local manager's
own token file. The manager creates its token at first start, random, mode 0600; the token is never logged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat

from cube.cluster.trust import join_token, member_files, new_secret
from cube.core.errors import CubeError

MANAGER_PORT = 5555
WORKER_PORT = 5556
TOKEN_FILE = "token"


def data_root() -> str:
    if os.environ.get("CUBE_DATA"):
        return os.environ["CUBE_DATA"]
    if os.geteuid() == 0:
        return "/var/lib/cube"
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "cube")


def data_dir(role: str, given: str | None = None) -> str:
    """The data directory of a role (manager, worker, dev): `given`, or one under data_root()."""
    return os.path.abspath(os.path.expanduser(given)) if given else os.path.join(data_root(), role)


def read_token_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.read().strip()
    except OSError as error:
        raise CubeError(f"cannot read token file {path}: {error.strerror}") from None
    if not token:
        raise CubeError(f"token file {path} is empty")
    return token


def find_token(token: str | None = None, token_file: str | None = None, manager_data: str | None = None) -> str | None:
    """The token by the rules above, or None when there is none anywhere."""
    if token:
        return str(token)
    if os.environ.get("CUBE_TOKEN"):
        return os.environ["CUBE_TOKEN"].strip()
    path = token_file or os.environ.get("CUBE_TOKEN_FILE")
    if path:
        return read_token_file(path)
    for role in ("manager", "dev"):
        local = os.path.join(manager_data or data_dir(role), TOKEN_FILE)
        if os.path.exists(local):
            try:
                return read_token_file(local)
            except CubeError:
                return None
        if manager_data:
            break
    return None


def local_join_token(directory: str) -> str | None:
    """The join token of the manager whose data directory is `directory`, from its secret and CA files (the bare
    secret while it has no CA: --insecure, or not made yet); None without a secret there."""
    path = os.path.join(directory, TOKEN_FILE)
    if not os.path.exists(path):
        return None
    ca_path = member_files(directory)[0]
    ca = None
    if os.path.exists(ca_path):
        with open(ca_path, encoding="ascii") as handle:
            ca = handle.read()
    return join_token(read_token_file(path), ca)


def ensure_token(directory: str, token: str | None = None) -> str:
    """The manager's token: the given one (kept for next time), the one kept in `directory`, or a new random one."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, TOKEN_FILE)
    if os.path.exists(path):
        kept = read_token_file(path)
        if not token or token == kept:  # nothing to write: a manager must start on a full disk
            return kept
    token = token or new_secret()
    write_private(path, (token + "\n").encode())
    return token


def write_private(path: str, data: bytes) -> None:
    """Write a file readable by its owner only (0600), atomically; its directory made 0700 if new."""
    tmp = f"{path}.tmp"
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise CubeError(f"cannot write {path}: {error.strerror or error}") from None


def private_dir(path: str) -> str:
    """`path` as a data directory only its owner reads, whatever the umask: made 0700 when missing, tightened
    (directories 0700, files 0600) when an older Cube or a hand-made one left it readable, and this process's files
    made private from here on (umask 077: the store holds env values). Raises a one-line CubeError when it cannot
    be a directory; a read-only one is used as it is (the store then serves reads only)."""
    os.umask(0o077)
    if os.path.exists(path) and not os.path.isdir(path):
        raise CubeError(f"cannot use {path} as a data directory: it is a file, not a directory")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as error:
        raise CubeError(f"cannot create the data directory {path}: {error.strerror}") from None
    for root, _, files in os.walk(path):
        for name in [root] + [os.path.join(root, f) for f in files]:
            mode = os.lstat(name).st_mode
            if stat.S_ISLNK(mode) or not mode & 0o077:
                continue
            try:
                os.chmod(name, mode & 0o700)
            except OSError as error:
                logging.getLogger("cube").warning("cannot make %s private: %s", name, error.strerror)
                return path
    return path
