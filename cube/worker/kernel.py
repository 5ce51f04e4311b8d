"""The node's kernel as cube.worker.network sees it: its routes of protocol ROUTE_PROTO and its iptables chains, set
through `ip` and `iptables`/`iptables-restore` (SystemHost, as root, in the worker's network namespace), and a
kernel as dicts (MemoryHost) for tests and simulated clusters, which restores as iptables-restore does (a declared
chain is flushed, `-X` deletes one).
"""

from __future__ import annotations

import json
import subprocess
from typing import Protocol

from cube.core.errors import CubeError

ROUTE_PROTO = "210"  # the routes Cube installs carry this protocol number: `ip route show proto 210` lists ours only


class Host(Protocol):
    def routes(self) -> dict[str, str]:
        """The routes of protocol ROUTE_PROTO: destination -> via."""

    def replace_route(self, dest: str, via: str) -> None: ...
    def delete_route(self, dest: str) -> None: ...
    def chain(self, table: str, chain: str) -> list[str] | None:
        """The chain's rules as `iptables -S` prints them (without the -A CHAIN), None when it does not exist."""

    def restore(self, text: str) -> None: ...
    def names(self, table: str) -> list[str]:
        """The chains of a table whose names start with CUBE-."""

    def insert_jump(self, table: str, parent: str, chain: str) -> None: ...
    def delete_jump(self, table: str, parent: str, chain: str) -> None: ...
    def has_address(self, interface: str, address: str) -> bool: ...
    def sysctl(self, key: str, value: str) -> None: ...
    def parent(self, table: str, parent: str) -> list[str]:
        """A built-in (or Docker's) chain's rules as `-A PARENT ...` lines."""


def _run(argv: list[str], data: str | None = None) -> str:
    try:
        done = subprocess.run(argv, input=data, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise CubeError(f"{argv[0]}: {error}") from None
    if done.returncode != 0:
        raise CubeError(f"{' '.join(argv[:4])}: {done.stderr.strip() or f'exit {done.returncode}'}")
    return done.stdout


class SystemHost:
    """The node's own kernel, through `ip` and `iptables` (as root)."""

    def routes(self) -> dict[str, str]:
        found = json.loads(_run(["ip", "-4", "-j", "route", "show", "proto", ROUTE_PROTO]) or "[]")
        return {r["dst"] if "/" in r["dst"] else f"{r['dst']}/32": r.get("gateway", "") for r in found}

    def replace_route(self, dest: str, via: str) -> None:
        _run(["ip", "route", "replace", dest, "via", via, "proto", ROUTE_PROTO])

    def delete_route(self, dest: str) -> None:
        _run(["ip", "route", "del", dest, "proto", ROUTE_PROTO])

    def chain(self, table: str, chain: str) -> list[str] | None:
        try:
            out = _run(["iptables", "-w", "5", "-t", table, "-S", chain])
        except CubeError:
            return None
        prefix = f"-A {chain} "
        return [line[len(prefix) :] for line in out.splitlines() if line.startswith(prefix)]

    def restore(self, text: str) -> None:
        _run(["iptables-restore", "-w", "5", "--noflush"], text)

    def names(self, table: str) -> list[str]:
        out = _run(["iptables", "-w", "5", "-t", table, "-S"])
        return [line.split()[1] for line in out.splitlines() if line.startswith("-N CUBE-")]

    def insert_jump(self, table: str, parent: str, chain: str) -> None:
        _run(["iptables", "-w", "5", "-t", table, "-I", parent, "1", "-j", chain])

    def delete_jump(self, table: str, parent: str, chain: str) -> None:
        _run(["iptables", "-w", "5", "-t", table, "-D", parent, "-j", chain])

    def has_address(self, interface: str, address: str) -> bool:
        try:
            found = json.loads(_run(["ip", "-4", "-j", "addr", "show", "dev", interface]) or "[]")
        except CubeError:
            return False
        return any(a.get("local") == address for link in found for a in link.get("addr_info", ()))

    def sysctl(self, key: str, value: str) -> None:
        with open(f"/proc/sys/{key.replace('.', '/')}", "w") as handle:
            handle.write(value)

    def parent(self, table: str, parent: str) -> list[str]:
        return [f"-A {parent} {rule}" for rule in self.chain(table, parent) or []]


class MemoryHost:
    """A kernel as dicts, for tests and simulated clusters: routes, chains (restored as iptables-restore does:
    a declared chain is flushed), jumps, addresses and sysctls."""

    def __init__(self, addresses=(("docker0", "172.17.0.1"),)):
        self.route_table: dict[str, str] = {}
        self.chains: dict[tuple[str, str], list[str]] = {
            ("filter", "DOCKER-USER"): ["-j RETURN"],
            ("nat", "POSTROUTING"): [],
            ("nat", "PREROUTING"): [],
            ("nat", "OUTPUT"): [],
        }
        self.addresses = set(addresses)
        self.sysctls: dict[str, str] = {}
        self.restores = 0

    def routes(self) -> dict[str, str]:
        return dict(self.route_table)

    def replace_route(self, dest: str, via: str) -> None:
        self.route_table[dest] = via

    def delete_route(self, dest: str) -> None:
        self.route_table.pop(dest, None)

    def chain(self, table: str, chain: str) -> list[str] | None:
        found = self.chains.get((table, chain))
        return None if found is None else list(found)

    def restore(self, text: str) -> None:
        self.restores += 1
        table = ""
        for line in text.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith(":"):
                self.chains[(table, line[1:].split()[0])] = []
            elif line.startswith("-A "):
                chain, rule = line[3:].split(" ", 1)
                self.chains[(table, chain)].append(rule)
            elif line.startswith("-X "):
                del self.chains[(table, line[3:])]

    def names(self, table: str) -> list[str]:
        return [c for t, c in self.chains if t == table and c.startswith("CUBE-")]

    def insert_jump(self, table: str, parent: str, chain: str) -> None:
        self.chains.setdefault((table, parent), []).insert(0, f"-j {chain}")

    def delete_jump(self, table: str, parent: str, chain: str) -> None:
        rules = self.chains.get((table, parent), [])
        rules.remove(f"-j {chain}")

    def has_address(self, interface: str, address: str) -> bool:
        return (interface, address) in self.addresses

    def sysctl(self, key: str, value: str) -> None:
        self.sysctls[key] = value

    def parent(self, table: str, parent: str) -> list[str]:
        return [f"-A {parent} {rule}" for rule in self.chains.get((table, parent), [])]
