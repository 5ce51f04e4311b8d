"""The shape of a compose file Cube reads, as a JSON schema written here (what Cube accepts, not the whole Compose
Specification): every field Cube maps, with its types, and every field of the specification that Cube does not
support, accepted so that it can be listed in the warning (`UNSUPPORTED`). A field in neither — a typo such as
`imgae` — is an error, as in `docker compose`. Values are checked further where they are mapped (mapping.py).
fastjsonschema (pure Python) is imported here only; the validator is compiled once, on first use."""

from __future__ import annotations

import ast
import re
from functools import cache

import fastjsonschema

from cube.core.errors import InvalidSpec

STRING = {"type": "string"}
NUMBER = {"type": "number"}
INTEGER = {"type": "integer"}
BOOLEAN = {"type": "boolean"}
STRING_OR_NUMBER = {"type": ["string", "number"]}
STRINGS = {"type": "array", "items": STRING}
STRING_OR_STRINGS = {"type": ["string", "array"], "items": STRING}
SCALAR = {"type": ["string", "number", "boolean", "null"]}
LIST_OR_MAPPING = {"type": ["object", "array"], "items": STRING, "additionalProperties": SCALAR}
ANYTHING: dict = {}


def _object(properties: dict, required: tuple[str, ...] = ()) -> dict:
    """A mapping of exactly these fields (and `x-` extensions)."""
    return {
        "type": "object",
        "properties": properties,
        "patternProperties": {"^x-": ANYTHING},
        "additionalProperties": False,
        **({"required": list(required)} if required else {}),
    }


def _nullable(schema: dict) -> dict:
    """`schema`, or null (not with anyOf: the error of the branch that fails would be lost)."""
    kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    return {**schema, "type": [*kinds, "null"]}


# What Cube does not support, by field, with the reason shown in the warning. Fields of a service:
UNSUPPORTED = {
    "build": "Cube runs images, it does not build them: build and push the image (cube image push)",
    "links": "every service of a stack reaches the others by name already",
    "external_links": "every service of a stack reaches the others by name already",
    "extends": "not supported: the service is used as written",
    "logging": "the node's Docker logging configuration applies",
    "container_name": "Cube names containers after the job and task",
    "platform": "Cube places a task on a node whose architecture has the image (use a constraint to choose)",
    "pull_policy": "Cube pulls an image a node lacks",
    "dns": "not supported",
    "dns_opt": "not supported",
    "dns_search": "not supported",
    "domainname": "not supported",
    "extra_hosts": "not supported",
    "ipc": "not supported",
    "pid": "not supported",
    "uts": "not supported",
    "userns_mode": "not supported",
    "cgroup": "not supported",
    "cgroup_parent": "not supported",
    "security_opt": "not supported",
    "ulimits": "not supported",
    "volumes_from": "not supported",
    "tty": "not supported",
    "stdin_open": "not supported",
    "mac_address": "not supported",
    "oom_kill_disable": "not supported",
    "oom_score_adj": "not supported",
    "pids_limit": "not supported",
    "cpu_shares": "not supported (use cpus)",
    "cpu_quota": "not supported (use cpus)",
    "cpu_period": "not supported (use cpus)",
    "cpu_count": "not supported (use cpus)",
    "cpu_percent": "not supported (use cpus)",
    "cpu_rt_runtime": "not supported",
    "cpu_rt_period": "not supported",
    "cpuset": "not supported",
    "blkio_config": "not supported",
    "storage_opt": "not supported",
    "runtime": "not supported",
    "isolation": "not supported",
    "group_add": "not supported",
    "credential_spec": "not supported",
    "develop": "not supported",
    "attach": "not supported",
    "annotations": "not supported",
    "gpus": "not supported",
    "memswap_limit": "not supported",
    "mem_swappiness": "not supported",
    "device_cgroup_rules": "not supported",
    "post_start": "not supported",
    "pre_stop": "not supported",
    "label_file": "not supported",
    "use_api_socket": "not supported",
    "provider": "not supported",
    "models": "not supported",
    "volume_driver": "not supported",
    "healthcheck.start_interval": "not supported",
    "deploy.endpoint_mode": "not supported",
    "deploy.labels": "not supported (use labels)",
    "deploy.mode": "global services are not supported: the service runs deploy.replicas tasks (default 1)",
    "deploy.placement.preferences": "not supported",
    "deploy.placement.max_replicas_per_node": "not supported",
    "deploy.resources.limits.pids": "not supported",
    "deploy.resources.reservations.devices": "not supported (use devices)",
    "deploy.resources.reservations.generic_resources": "not supported",
    "deploy.restart_policy.delay": "Cube's restart backoff applies (1 s doubling)",
    "deploy.update_config.delay": "not supported",
    "deploy.update_config.max_failure_ratio": "not supported",
    "deploy.rollback_config.delay": "not supported",
    "deploy.rollback_config.max_failure_ratio": "not supported",
}

_PORT = {
    **_object(
        {
            "name": STRING,
            "target": STRING_OR_NUMBER,
            "published": STRING_OR_NUMBER,
            "host_ip": STRING,
            "protocol": STRING,
            "mode": {"enum": ["host", "ingress"]},
            "app_protocol": STRING,
        },
        ("target",),
    ),
    "type": ["string", "integer", "object"],
}

_VOLUME = {
    **_object(
        {
            "type": STRING,
            "source": STRING,
            "target": STRING,
            "read_only": BOOLEAN,
            "consistency": STRING,
            "bind": {"type": "object"},
            "volume": {"type": "object"},
            "tmpfs": _object({"size": STRING_OR_NUMBER, "mode": STRING_OR_NUMBER}),
            "image": {"type": "object"},
        },
        ("type",),
    ),
    "type": ["string", "object"],
}
_FILE_REFERENCE = {  # a service's secrets and configs entries
    **_object({"source": STRING, "target": STRING, "uid": STRING, "gid": STRING, "mode": STRING_OR_NUMBER}),
    "type": ["string", "object"],
}
_UPDATE = _object(
    {
        "parallelism": INTEGER,
        "delay": STRING_OR_NUMBER,
        "failure_action": {"enum": ["continue", "rollback", "pause"]},
        "monitor": STRING_OR_NUMBER,
        "max_failure_ratio": NUMBER,
        "order": {"enum": ["start-first", "stop-first"]},
    }
)
_RESOURCES = _object({"cpus": STRING_OR_NUMBER, "memory": STRING_OR_NUMBER, "pids": INTEGER})
_DEPLOY = _object(
    {
        "mode": STRING,
        "replicas": INTEGER,
        "endpoint_mode": STRING,
        "labels": LIST_OR_MAPPING,
        "resources": _object(
            {
                "limits": _RESOURCES,
                "reservations": {
                    **_RESOURCES,
                    "properties": {
                        **_RESOURCES["properties"],
                        "devices": {"type": "array"},
                        "generic_resources": {"type": "array"},
                    },
                },
            }
        ),
        "placement": _object(
            {"constraints": STRINGS, "preferences": {"type": "array"}, "max_replicas_per_node": INTEGER}
        ),
        "update_config": _UPDATE,
        "rollback_config": _UPDATE,
        "restart_policy": _object(
            {
                "condition": {"enum": ["none", "on-failure", "any"]},
                "delay": STRING_OR_NUMBER,
                "max_attempts": INTEGER,
                "window": STRING_OR_NUMBER,
            }
        ),
    }
)
_HEALTHCHECK = _object(
    {
        "test": STRING_OR_STRINGS,
        "interval": STRING_OR_NUMBER,
        "timeout": STRING_OR_NUMBER,
        "retries": INTEGER,
        "start_period": STRING_OR_NUMBER,
        "start_interval": STRING_OR_NUMBER,
        "disable": BOOLEAN,
    }
)
_DEPENDS_ON = {
    "type": "object",
    "additionalProperties": _object(
        {
            "condition": {"enum": ["service_started", "service_healthy", "service_completed_successfully"]},
            "required": BOOLEAN,
            "restart": BOOLEAN,
        }
    ),
}
_SERVICE = _object(
    {
        **dict.fromkeys(("image", "restart", "network_mode", "working_dir", "hostname"), STRING),
        **dict.fromkeys(("command", "entrypoint", "tmpfs"), _nullable(STRING_OR_STRINGS)),
        **dict.fromkeys(("environment", "labels", "sysctls"), LIST_OR_MAPPING),
        **dict.fromkeys(("cpus", "mem_limit", "mem_reservation", "shm_size", "user"), STRING_OR_NUMBER),
        **dict.fromkeys(("stop_grace_period", "stop_signal"), STRING_OR_NUMBER),
        **dict.fromkeys(("privileged", "init", "read_only"), BOOLEAN),
        **dict.fromkeys(("cap_add", "cap_drop", "profiles"), STRINGS),
        **dict.fromkeys(("secrets", "configs"), {"type": "array", "items": _FILE_REFERENCE}),
        "env_file": {
            "type": ["string", "array"],
            "items": {
                **_object({"path": STRING, "required": BOOLEAN, "format": STRING}, ("path",)),
                "type": ["string", "object"],
            },
        },
        "ports": {"type": "array", "items": _PORT},
        "expose": {"type": "array", "items": STRING_OR_NUMBER},
        "volumes": {"type": "array", "items": _VOLUME},
        "healthcheck": _HEALTHCHECK,
        "depends_on": _DEPENDS_ON,
        "deploy": _nullable(_DEPLOY),
        "scale": INTEGER,
        "devices": {"type": "array", "items": {"type": ["string", "object"]}},
        "networks": {"type": ["array", "object"], "items": STRING},
        **{field: ANYTHING for field in UNSUPPORTED if "." not in field},
    }
)
_NAMES = "^[a-zA-Z0-9._-]+$"
_FILE = _object(
    {
        "name": STRING,
        "file": STRING,
        "environment": STRING,
        "content": STRING,
        "external": {"type": ["boolean", "object"]},
        "labels": LIST_OR_MAPPING,
        "driver": STRING,
        "driver_opts": {"type": "object"},
        "template_driver": STRING,
    }
)
SCHEMA = _object(
    {
        "version": STRING_OR_NUMBER,
        "name": STRING,
        "include": ANYTHING,
        "services": {
            "type": "object",
            "patternProperties": {_NAMES: _nullable(_SERVICE)},
            "additionalProperties": False,
        },
        "volumes": {"type": "object", "additionalProperties": _nullable({"type": "object"})},
        "networks": {"type": "object", "additionalProperties": _nullable({"type": "object"})},
        "secrets": {"type": "object", "additionalProperties": _FILE},
        "configs": {"type": "object", "additionalProperties": _FILE},
    }
)


@cache
def _validator():
    return fastjsonschema.compile(SCHEMA)


def validate(data: dict, where: str) -> None:
    """Raise InvalidSpec naming the file and the field (`compose.yaml: services.web.ports[1]: must be ...`)."""
    try:
        _validator()(data)
    except fastjsonschema.JsonSchemaValueException as error:
        raise InvalidSpec(f"{where}: {_explain(error)}") from None


def _explain(error) -> str:
    name = error.name[len("data") :].lstrip(".") if error.name.startswith("data") else error.name
    where = name or "the top level"
    extra = re.search(r"must not contain (\{.*\}) properties", error.message)
    if error.rule == "additionalProperties" and extra:
        unknown = sorted(str(key) for key in ast.literal_eval(extra.group(1)))  # the message names only the extra
        if error.path[1:2] == ["services"] and len(error.path) == 2:
            return f"services: {', '.join(unknown)}: a service name is letters, digits and . _ -"
        return f"{where}: unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}"
    if error.rule == "required":
        return f"{where}: needs {', '.join(map(str, error.rule_definition))}"
    text = error.message
    if text.startswith(error.name):
        text = text[len(error.name) :].strip()
    return f"{where}: {text.replace('integer', 'a whole number').replace('object', 'a mapping')}"
