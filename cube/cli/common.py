"""What the CLI's commands share: how a command finds the manager (`--manager`, CUBE_MANAGER, this machine's
manager, then mDNS) and reaches it (the token and the CA it trusts), and how it prints (a table, or JSON for
scripts) and reads list and key=value flags.
"""

from __future__ import annotations

import json
import os

from cube.core.errors import CubeError


def manager_client(manager: str | None, token: str | None):
    from cube.cluster.client import Client, manager_trust
    from cube.cluster.config import find_token
    from cube.cluster.trust import parse_token

    url = manager_url(manager)
    given = parse_token(find_token(token))
    trust = manager_trust(url, given, local_ca(url))
    return Client(url, given.secret if given else None, timeout=15.0, trust=trust)


def local_ca(url: str) -> str | None:
    """The CA of the manager on this machine, when `url` is that manager's (its `url` file says so)."""
    from cube.cluster.config import data_dir
    from cube.cluster.trust import member_files

    for role in ("manager", "dev"):
        directory = data_dir(role)
        try:
            with open(os.path.join(directory, "url")) as handle:
                if handle.read().strip() != url.rstrip("/"):
                    continue
            with open(member_files(directory)[0], encoding="ascii") as handle:
                return handle.read()
        except OSError:
            continue
    return None


def manager_url(given: str | None) -> str:
    """--manager, CUBE_MANAGER, the manager on this machine, then mDNS; else an error saying what was tried."""
    if given:
        return str(given)
    if os.environ.get("CUBE_MANAGER"):
        return os.environ["CUBE_MANAGER"]
    from cube.cluster.config import data_dir

    tried = []
    for role in ("manager", "dev"):
        path = os.path.join(data_dir(role), "url")
        if os.path.exists(path):
            with open(path) as handle:
                url = handle.read().strip()
            if answers(url):
                return url
            tried.append(url)
    if os.environ.get("CUBE_NO_MDNS") != "1":
        from cube.cluster.discovery import find_manager

        found = find_manager(timeout=2.0)
        if found is not None:
            return found.url
        tried.append("mDNS on the LAN")
    raise CubeError(
        f"no manager found (tried {', '.join(tried) or 'nothing'}): start one with `cube dev`, or pass "
        f"--manager URL / set CUBE_MANAGER"
    )


def answers(url: str) -> bool:
    from cube.cluster.client import Client
    from cube.cluster.trust import Trust

    try:  # /health sends nothing secret: the CA is not needed to see whether something answers
        Client(url, timeout=1.0, trust=Trust(insecure=url.startswith("http://"))).health(timeout=1.0)
        return True
    except CubeError:
        return False


def job_or_none(client, ref: str):
    from cube.core.errors import NotFound

    try:
        return client.get(f"/jobs/{ref}")
    except NotFound:
        return None


def stack_or_none(client, ref: str):
    from cube.core.errors import NotFound

    try:
        return client.get(f"/stacks/{ref}")
    except NotFound:
        return None


def show(value, as_json: bool) -> None:
    if value is None:
        return
    if as_json:
        print(json.dumps(value, indent=2, sort_keys=True))
    else:
        print(value)


def as_list(values) -> list[str]:
    """`a,b`, or several of them (a repeated flag) -> list of non-empty strings."""
    if isinstance(values, str):
        values = [values]
    return [part.strip() for value in values or () for part in str(value).split(",") if part.strip()]


def as_pairs(values, flag: str) -> dict:
    if isinstance(values, str):
        values = [values]
    out = {}
    for item in values or ():
        if not isinstance(item, str) or "=" not in item:
            raise CubeError(f"{flag} takes key=value, not {item!r}")
        key, value = item.split("=", 1)
        out[key] = value
    return out


def positive_seconds(value, flag: str) -> float:
    """A number of seconds that must be more than 0 (`--pull-timeout 0` would fail every pull)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise CubeError(f"{flag} must be a number of seconds above 0, not {value!r}")
    return float(value)
