"""Compose files → a Cube stack (issue 12): `load_stack` reads one or more compose files with their `.env`,
interpolates, validates, merges them as `docker compose` does, and maps each service to a job dict that the
manager's `POST /stacks` takes. Pure: the only I/O is reading the files (compose, .env, env_file, secrets and
configs); nothing here talks to a manager. Modules: load (YAML, merge), interpolate (.env, ${VAR}), schema (what
Cube accepts), mapping (service → job), stack (what involves several services: order, dependencies, ports), book
(the book's task files).

Job `type`: `batch` for a service that another one waits for with `service_completed_successfully` (it is meant
to run to completion: a migration, a seed) and for a service whose restart policy is explicitly "no" (restart:
"no", or deploy.restart_policy.condition: none); every other service is a `service`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from cube.compose import load, schema, stack
from cube.compose.interpolate import interpolate_tree, parse_dotenv
from cube.compose.mapping import Context, job
from cube.core.errors import InvalidSpec

__all__ = ["Stack", "load_stack"]


@dataclass
class Stack:
    name: str
    jobs: list[dict] = field(default_factory=list)  # in the order of depends_on
    files: dict[str, bytes] = field(default_factory=dict)  # "secrets/NAME", "configs/NAME" → contents
    warnings: list[str] = field(default_factory=list)  # one line per service and unsupported field


def load_stack(
    files: list[str],
    name: str | None = None,
    env_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Stack:
    """The stack of compose `files` (merged in order). `name`: the stack's (`--name`), else the file's `name:`,
    else the first file's directory; `env_file` replaces the `.env` next to the first file; `environ` (default
    the process environment) wins over both. Raises InvalidSpec naming the file, the service and the field."""
    if not files:
        raise InvalidSpec("no compose file given: cube deploy -f compose.yaml")
    process = dict(os.environ if environ is None else environ)
    project_dir = os.path.dirname(os.path.abspath(files[0]))
    variables = _variables(env_file or os.path.join(project_dir, ".env"), env_file is not None, process)
    warnings: list[str] = []
    loaded = []
    for path in files:
        where = os.path.basename(path) if len(set(map(os.path.basename, files))) == len(files) else path
        data = load.parse_yaml(_read(path), where)
        data = interpolate_tree(data, where, variables, warnings)
        data = load.normalize(data)  # before the schema: list forms become the mappings it describes
        schema.validate(data, where)
        loaded.append((where, data))
    merged, origins = load.merge(loaded)
    for where, data in loaded:
        if data.get("include"):
            raise InvalidSpec(f"{where}: include: not supported: pass every file with -f")
    stack_name = stack.name_of(name, merged.get("name"), project_dir)
    ctx = Context(stack_name, project_dir, variables, merged, origins, warnings)
    services = stack.active_services(merged, variables, ctx)
    jobs = {service: job(service, data, ctx) for service, data in services.items()}
    ordered = stack.link(jobs, services, merged.get("services") or {}, ctx)
    stack.check_ports(ordered, ctx)
    stack.top_level_warnings(merged, ctx)
    return Stack(stack_name, ordered, ctx.files, ctx.warnings)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        raise InvalidSpec(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidSpec(f"{path}: cannot be read: {error}") from None


def _variables(path: str, required: bool, process: dict[str, str]) -> dict[str, str]:
    """The .env file's variables under the process environment, which wins."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        if required:
            raise InvalidSpec(f"{path}: no such env file") from None
        return process
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidSpec(f"{path}: cannot be read: {error}") from None
    return {**parse_dotenv(text, path, process.get), **process}
