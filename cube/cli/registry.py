"""`cube registry`: logging in to private registries through the manager. The password is read from standard input
or asked for on the terminal (never a flag: it would stay in the shell's history and in `ps`), sent once to the
manager, and never printed."""

from __future__ import annotations

import getpass
import sys

from cube.core.errors import CubeError


def registry_command(client, action, host, username, password_stdin: bool, as_json: bool):
    if action in (None, "ls", "list"):
        registries = client.get("/registries")
        if as_json:
            return registries
        if not registries:
            return "no registry credentials: `cube registry login HOST` adds some"
        from cube.cli.output import table

        return table(["HOST", "USERNAME"], [[r["host"], r["username"]] for r in registries])
    if action not in ("login", "logout"):
        raise CubeError(f"unknown action {action!r}: use `cube registry ls`, `login HOST` or `logout HOST`")
    if not host:
        raise CubeError(f"which registry? `cube registry {action} HOST[:PORT]`")
    if action == "logout":
        answer = client.delete(f"/registries/{host}")
        return answer if as_json else f"forgot the credentials of {answer['username']} for {answer['host']}"
    if not username:
        if password_stdin or not sys.stdin.isatty():
            raise CubeError("--username is needed with --password-stdin")
        username = input("Username: ").strip()
    if password_stdin:
        password = sys.stdin.read().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = getpass.getpass("Password: ")
    else:
        raise CubeError("no terminal to ask the password on: pipe it in with --password-stdin")
    if not password:
        raise CubeError("the password is empty")
    answer = client.post("/registries", {"host": host, "username": str(username), "password": password})
    return (
        answer if as_json else f"logged in to {answer['host']} as {answer['username']} (kept on the manager, encrypted)"
    )
