"""Reading compose files: YAML (the only module that imports PyYAML, whose pure-Python loader runs on every
architecture the pyz does), and merging several `-f` files as the Compose Specification's merge rules have it:
mappings merged key by key; sequences appended (an item already there is not added twice); `command`,
`entrypoint` and `healthcheck.test` replaced; `ports`, `volumes`, `secrets` and `configs` merged by their unique
key (ports by address, published port, target and protocol; the others by target), a later entry replacing an
earlier one; `environment`, `labels`, `sysctls`, `depends_on` and `env_file`, which may be written as lists,
brought to one form first so that a list in one file and a mapping in the other merge by key.

`merge` also records which file last set each service field (`Origins`), so that an error found after the merge
still names the file it comes from."""

from __future__ import annotations

import re

import yaml

from cube.core.errors import InvalidSpec

REPLACED = {"command", "entrypoint"}
KEYED = {"ports", "volumes", "secrets", "configs"}
AS_MAPPING = {"environment", "labels", "sysctls", "depends_on", "extra_hosts", "annotations"}

Origins = dict[tuple[str, str, str], str]  # (section, name, field) → the file that last set it


class _Loader(yaml.SafeLoader):
    """YAML as `docker compose` (go-yaml v3, YAML 1.2) reads it: only true/false are booleans (`restart: no` is
    the string "no", `yes` is a string), and a key written twice in one mapping is an error, not a silent
    overwrite."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen and key != "<<":
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice in one mapping", mark)
            seen[key] = True
        return super().construct_mapping(node, deep=deep)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def parse_yaml(text: str, where: str):
    """One YAML document → plain data; invalid YAML raises InvalidSpec naming the line and column."""
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass: plain data only
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InvalidSpec(f"{where}: invalid YAML{at}: {error.problem or error.context}") from None
    except yaml.YAMLError as error:
        raise InvalidSpec(f"{where}: invalid YAML: {error}") from None
    if data is None:
        raise InvalidSpec(f"{where}: the file is empty: a compose file needs services")
    if not isinstance(data, dict):
        raise InvalidSpec(f"{where}: a compose file must be a mapping with services, not a {type(data).__name__}")
    return data


def normalize(data: dict) -> dict:
    """The forms that merge by key: list-or-mapping fields as mappings, `env_file` as a list. Values that are not
    of the expected shape are left for the schema to name."""
    for service in (data.get("services") or {}).values():
        if not isinstance(service, dict):
            continue
        for field in AS_MAPPING & set(service):
            service[field] = _as_mapping(service[field], field)
        if isinstance(service.get("env_file"), str):
            service["env_file"] = [service["env_file"]]
    return data


def _as_mapping(value, field: str):
    if not isinstance(value, list):
        return value
    if field == "depends_on":
        if all(isinstance(item, str) for item in value):
            return {item: {"condition": "service_started"} for item in value}
        return value
    out: dict = {}
    for item in value:
        if not isinstance(item, str):
            return value
        if field == "extra_hosts":
            key, sep, setting = item.partition("=") if "=" in item else item.partition(":")
        else:
            key, sep, setting = item.partition("=")
        out[key.strip()] = setting if sep else None
    return out


def merge(files: list[tuple[str, dict]]) -> tuple[dict, Origins]:
    """The files (name, normalized data), merged in order."""
    merged: dict = {}
    origins: Origins = {}
    for where, data in files:
        for section, entries in data.items():
            if section not in _SECTIONS or not isinstance(entries, dict):
                merged[section] = _merge_value(merged.get(section), entries, section)
                continue
            target = merged.setdefault(section, {})
            if not isinstance(target, dict):
                target = merged[section] = {}
            for name, value in entries.items():
                target[name] = _merge_entry(target[name], value) if target.get(name) is not None else value
                origins.setdefault((section, name, ""), where)
                for field in value if isinstance(value, dict) else ():
                    origins[(section, name, field)] = where
    return merged, origins


_SECTIONS = {"services", "volumes", "networks", "secrets", "configs"}


def _merge_entry(old, new):
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    out = dict(old)
    for field, value in new.items():
        if field not in out or value is None:
            out[field] = value
        elif field in REPLACED:
            out[field] = value
        elif field == "healthcheck" and isinstance(out[field], dict) and isinstance(value, dict):
            out[field] = {**out[field], **value}  # `test` replaced, as every other key of the mapping
        elif field in KEYED and isinstance(out[field], list) and isinstance(value, list):
            out[field] = _merge_keyed(out[field], value, field)
        else:
            out[field] = _merge_value(out[field], value, field)
    return out


def _merge_value(old, new, field: str):
    if isinstance(old, dict) and isinstance(new, dict):
        out = dict(old)
        for key, value in new.items():
            out[key] = _merge_value(out[key], value, key) if key in out else value
        return out
    if isinstance(old, list) and isinstance(new, list) and field not in REPLACED and field != "test":
        return old + [item for item in new if item not in old]
    return new


def _merge_keyed(old: list, new: list, field: str) -> list:
    out = {_unique_key(item, field): item for item in old}
    for item in new:
        key = _unique_key(item, field)
        out[key] = _merge_value(out[key], item, field) if key in out and isinstance(item, dict) else item
    return list(out.values())


def _unique_key(item, field: str):
    """The key an entry of `field` is unique by (the spec's table); an entry it cannot read is its own key."""
    if field == "ports":
        if isinstance(item, dict):
            return ("port", item.get("host_ip"), str(item.get("published")), str(item.get("target")),
                    item.get("protocol") or "tcp")  # fmt: skip
        text = str(item)
        protocol = text.split("/", 1)[1] if "/" in text else "tcp"
        parts = text.split("/", 1)[0].rsplit(":", 2)
        parts = [""] * (3 - len(parts)) + parts
        return ("port", parts[0] or None, parts[1] or "None", parts[2], protocol)
    if isinstance(item, dict):
        return ("target", item.get("target") or item.get("source"))
    if field == "volumes" and isinstance(item, str):
        parts = item.split(":")
        return ("target", parts[1] if len(parts) > 1 else parts[0])
    return ("target", item)
