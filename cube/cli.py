"""The `cube` command line (fire is imported here only). It decides what users type and see: commands and flags,
human output by default and `--json` for scripts, exit code 0 on success and a one-line error with a next step
otherwise — never a traceback for a user's mistake. Imports are lazy: `cube status` must not load the docker SDK.
"""
from __future__ import annotations

import sys

from . import __version__
from .errors import CubeError

USAGE = f"""cube {__version__} — a small container orchestrator for your LAN

Usage: cube COMMAND [FLAGS]

Cluster processes:
  worker     run a worker on this node      cube worker --port 5556 --data DIR --name NAME --token T
             [--cpus N] [--memory 4g] [--disk 20g] [--label k=v]... [--manager URL] [--no-mdns]
  version    print the version

Run `cube COMMAND --help` for a command's flags.
"""


class Commands:
    """cube: a small container orchestrator for your LAN."""

    def worker(self, port: int = 5556, data: str | None = None, name: str | None = None, token: str | None = None,
               token_file: str | None = None, cpus: float | None = None, memory=None, disk=None, label=(),
               host: str = "0.0.0.0", manager: str | None = None, mdns: bool = True, certfile: str | None = None,
               keyfile: str | None = None, verbose: bool = False):
        """Run a worker: runs the tasks the manager assigns to this node as Docker containers."""
        from .model import parse_size
        from .service import run_worker, setup_logging
        setup_logging(verbose)
        run_worker(name=name, port=int(port), host=host, data=data, token=token, token_file=token_file,
                   cpus=float(cpus) if cpus else None, memory=parse_size(memory, "--memory") if memory else None,
                   disk=parse_size(disk, "--disk") if disk else None, labels=_pairs(label, "--label"),
                   certfile=certfile, keyfile=keyfile, manager=manager, mdns=mdns)

    def manager(self, port: int = 5555, data: str | None = None, token: str | None = None,
                scheduler: str = "epvm", workers=(), host: str = "0.0.0.0", node_timeout: float = 5.0,
                mdns: bool = True, certfile: str | None = None, keyfile: str | None = None, verbose: bool = False):
        """Run the manager: accepts work, schedules it onto workers, keeps it running."""
        from .service import run_manager, setup_logging
        setup_logging(verbose)
        run_manager(port=int(port), host=host, data=data, token=token, strategy=scheduler,
                    workers=_list(workers), node_timeout=float(node_timeout), certfile=certfile, keyfile=keyfile,
                    mdns=mdns)

    def dev(self, port: int = 5555, data: str | None = None, workers: int = 1, scheduler: str = "epvm",
            cpus: float | None = None, memory=None, verbose: bool = False):
        """A whole cluster in one process: a manager and N local workers on this machine's Docker engine."""
        from .model import parse_size
        from .service import run_dev, setup_logging
        setup_logging(verbose)
        run_dev(port=int(port), data=data, workers=int(workers), strategy=scheduler,
                cpus=float(cpus) if cpus else None, memory=parse_size(memory, "--memory") if memory else None)

    def version(self):
        """Print the version."""
        print(f"cube {__version__}")


def _list(values) -> list[str]:
    """`a,b` or a list (fire parses `a,b` as a tuple) -> list of non-empty strings."""
    if isinstance(values, str):
        values = values.split(",")
    return [str(v).strip() for v in values or () if str(v).strip()]


def _pairs(values, flag: str) -> dict:
    from .model import InvalidSpec
    if isinstance(values, str):
        values = [values]
    out = {}
    for item in values or ():
        if not isinstance(item, str) or "=" not in item:
            raise InvalidSpec(f"{flag} takes key=value, not {item!r}")
        key, value = item.split("=", 1)
        out[key] = value
    return out


REPEATABLE = ("--label", "--env", "--port", "--constraint")


def _gather_repeated(argv: list[str]) -> list[str]:
    """fire keeps only the last of a repeated flag; collect `--env A=1 --env B=2` into `--env '["A=1","B=2"]'`."""
    import json
    seen: dict[str, list[str]] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        flag, eq, value = arg.partition("=")
        if flag in REPEATABLE:
            if not eq:
                if i + 1 >= len(argv):
                    raise CubeError(f"{flag} needs a value")
                value = argv[i + 1]
                i += 1
            seen.setdefault(flag, []).append(value)
        else:
            rest.append(arg)
        i += 1
    for flag, values in seen.items():
        rest += [flag, json.dumps(values)]
    return rest


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if argv[0] in ("--version", "-V"):
        print(f"cube {__version__}")
        return 0
    from .model import InvalidSpec
    try:
        argv = _gather_repeated(argv)
        import fire
        fire.Fire(Commands, command=argv, name="cube")
    except (CubeError, InvalidSpec) as error:
        print(f"cube: {error}", file=sys.stderr)
        return 1
    except fire.core.FireExit as exit_:
        return int(exit_.code or 0)
    except KeyboardInterrupt:
        return 130
    return 0
