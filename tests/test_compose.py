"""cube.compose: compose files → a stack's job dicts, and the book's task files → task specs. Pure: files written
into tmp_path (and the stacks under tests/compose/, which the end-to-end tests deploy), no Docker, no network."""

import json
import pathlib
import textwrap

import pytest
from factories import imported_modules  # tests/ is on sys.path (pytest rootdir imports)

import cube.compose
from cube.compose import load_stack
from cube.compose.book import is_book_file, task_from_book
from cube.core.errors import InvalidSpec
from cube.core.spec import TaskSpec

STACKS = pathlib.Path(__file__).parent / "compose"
UPDATE = {
    "max_parallel": 1,
    "min_healthy_time": 5,
    "healthy_deadline": 300,
    "auto_revert": False,
    "order": "",
}


def job(name, stack, task, count=1, kind="service", depends_on=(), update=None):
    return {
        "name": f"{stack}-{name}",
        "stack": stack,
        "count": count,
        "type": kind,
        "task": task,
        "update": update or UPDATE,
        "rollback": UPDATE,
        "depends_on": list(depends_on),
    }


def write(directory: pathlib.Path, text: str, name: str = "compose.yaml") -> str:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def stack_of(tmp_path, text, **kwargs):
    return load_stack([write(tmp_path / "shop", text)], environ=kwargs.pop("environ", {}), **kwargs)


def error_of(tmp_path, text, **kwargs) -> str:
    with pytest.raises(InvalidSpec) as caught:
        stack_of(tmp_path, text, **kwargs)
    return caught.value.message


# ---- the stacks of tests/compose --------------------------------------------------------------------------------


def test_web_db_cache_with_a_named_volume_and_a_healthy_dependency():
    stack = load_stack([str(STACKS / "webapp" / "compose.yaml")], environ={})
    db = {
        "image": "cube-busybox:latest",
        "command": ["sh", "-c", "nc -ll -p 5432 -e cat"],
        "volumes": [{"type": "volume", "source": "webapp_dbdata", "target": "/var/lib/db", "read_only": False}],
        "restart": {"name": "always"},
        "health": {
            "command": ["CMD-SHELL", "echo ping | nc -w 1 127.0.0.1 5432"],
            "interval": 2,
            "timeout": 2,
            "retries": 10,
            "start_period": 1,
        },
    }
    cache = {"image": "cube-busybox:latest", "command": ["httpd", "-f", "-p", "6379"], "restart": {"name": "always"}}
    web = {
        "image": "cube-busybox:latest",
        "command": ["httpd", "-f", "-p", "80", "-h", "/www"],
        "env": {"DB_HOST": "db", "CACHE_HOST": "cache"},
        "ports": [{"container": 80, "host": 8080, "protocol": "tcp", "mode": "ingress"}],
        "restart": {"name": "always"},
        "health": {
            "command": ["CMD-SHELL", "wget -q -O- http://127.0.0.1/ || exit 1"],
            "interval": 5,
            "timeout": 3,
            "retries": 5,
            "start_period": 0,
        },
    }
    dependencies = [{"job": "webapp-db", "condition": "healthy"}, {"job": "webapp-cache", "condition": "started"}]
    assert stack.name == "webapp"
    assert stack.jobs == [
        job("db", "webapp", db),
        job("cache", "webapp", cache),
        job("web", "webapp", web, count=2, depends_on=dependencies),
    ]
    assert stack.files == {} and stack.warnings == []


def test_capabilities_sysctls_and_udp_ports_with_a_range():
    stack = load_stack([str(STACKS / "netadmin" / "compose.yaml")], environ={})
    udp = [{"container": p, "host": p, "protocol": "udp", "mode": "ingress"} for p in (9000, 9001)]
    assert stack.jobs == [
        job(
            "dns",
            "netadmin",
            {
                "image": "cube-busybox:latest",
                "command": ["sh", "-c", "httpd -f -p 80 -h /www"],
                "ports": [
                    {"container": 53, "host": 5353, "protocol": "udp", "mode": "ingress"},
                    {"container": 80, "host": 8053, "protocol": "tcp", "mode": "ingress"},
                    *udp,
                ],
                "restart": {"name": "always"},
                "sysctls": {"net.ipv4.ip_unprivileged_port_start": "0"},
                "cap_add": ["NET_ADMIN"],
            },
        )
    ]


def test_host_network_with_a_string_health_check_and_docker_defaults():
    stack = load_stack([str(STACKS / "hostnet" / "compose.yaml")], environ={})
    health = {
        "command": ["CMD-SHELL", "wget -q -O- http://127.0.0.1:18123/"],
        "interval": 5,
        "timeout": 30,
        "retries": 3,
    }
    task = {
        "image": "cube-busybox:latest",
        "command": ["httpd", "-f", "-p", "18123", "-h", "/www"],
        "restart": {"name": "always"},
        "health": {**health, "start_period": 0},
        "network": "host",
    }
    assert stack.jobs == [job("monitor", "hostnet", task)]


def test_secrets_and_configs_are_read_and_mounted():
    stack = load_stack([str(STACKS / "secrets" / "compose.yaml")], environ={})
    assert stack.files == {"secrets/db_password": b"s3cret\n", "configs/site": b"listen 80;\n"}
    db, app = stack.jobs
    assert db["task"]["files"] == [{"source": "secrets/db_password", "target": "/run/secrets/db_password", "mode": 292}]
    assert app["task"]["files"] == [
        {"source": "secrets/db_password", "target": "/run/secrets/app_db_password", "mode": 0o440},
        {"source": "configs/site", "target": "/etc/app/site.conf", "mode": 0o444},
    ]
    assert app["depends_on"] == [{"job": "secrets-db", "condition": "healthy"}]


def test_env_interpolation_and_two_files_merged():
    files = [str(STACKS / "override" / "compose.yaml"), str(STACKS / "override" / "compose.prod.yaml")]
    stack = load_stack(files, environ={"TAG": "latest"})
    command = 'mkdir -p /www && echo "$GREETING" > /www/index.html && httpd -f -h /www -p 80'
    task = {
        "image": "cube-busybox:latest",
        "command": ["sh", "-c", command],  # `$$` is a literal `$`
        "env": {"GREETING": "hello from .env", "MODE": "prod"},
        "ports": [{"container": 80, "host": 8082, "protocol": "tcp", "mode": "ingress"}],
        "labels": {"tier": "web", "env": "prod"},
    }
    update = {**UPDATE, "min_healthy_time": 10, "auto_revert": True, "order": "start-first"}
    assert stack.jobs == [job("web", "override", task, count=3, update=update)]
    assert stack.warnings == []
    # The process environment wins over .env; --name wins over the directory.
    stack = load_stack(files, name="prod", environ={"WEB_PORT": "9090", "GREETING": "hi"})
    assert stack.name == "prod" and stack.jobs[0]["name"] == "prod-web"
    assert stack.jobs[0]["task"]["ports"][0]["host"] == 9090 and stack.jobs[0]["task"]["env"]["GREETING"] == "hi"


def test_unsupported_fields_are_listed_by_service_and_field():
    stack = load_stack([str(STACKS / "unsupported" / "compose.yaml")], environ={})
    assert [j["name"] for j in stack.jobs] == ["unsupported-web", "unsupported-api"]
    fields = [line.split(":", 1)[0] for line in stack.warnings]
    assert fields == [
        "services.web.build",
        "services.web.container_name",
        "services.web.logging",
        "services.web.links",
        "services.api.deploy.placement.preferences",
        "services.api.deploy.mode",
        "version",
        "networks.front.driver",
        "networks.front.ipam",
        "services.api.networks.front.ipv4_address",
    ]


def test_every_stack_maps_to_task_specs_cube_accepts_today():
    """Less the keys the manager adds (health in exec form, files, a port's mode), each task is a valid spec."""
    for directory in sorted(p for p in STACKS.iterdir() if p.is_dir()):
        files = sorted(str(p) for p in directory.glob("compose*.yaml"))
        for item in load_stack(files, environ={}).jobs:
            task = {k: v for k, v in item["task"].items() if k not in ("health", "files")}
            task["ports"] = [{k: v for k, v in p.items() if k != "mode"} for p in task.get("ports", [])]
            TaskSpec.from_dict(task)
            json.dumps(item)  # plain JSON, as POST /stacks takes it


# ---- fields ---------------------------------------------------------------------------------------------------


def test_every_mapped_field(tmp_path):
    (tmp_path / "shop" / "data").mkdir(parents=True)
    (tmp_path / "shop" / "app.env").write_text("# comment\nexport A=1\nB='two # words'\nC=${A}-x  # note\n")
    stack = stack_of(
        tmp_path,
        """
        name: shop
        services:
          app:
            image: registry.lan:5000/app:v2
            entrypoint: /bin/sh -c 'exec app'
            command: ["--port", "80"]
            env_file: app.env
            environment: [B=three, HOME_DIR, EMPTY=]
            ports:
              - 80
              - "0.0.0.0:8443:443"
              - target: 53
                published: "5300"
                protocol: udp
                mode: host
            volumes:
              - ./data:/data:ro
              - type: tmpfs
                target: /cache
                tmpfs: {size: 64m}
            tmpfs: /run:size=16m
            restart: on-failure:5
            cpus: 0.5
            mem_limit: 256m
            devices: [/dev/ttyUSB0]
            privileged: true
            cap_drop: [MKNOD]
            user: "1000"
            working_dir: /app
            hostname: app1
            labels: {team: shop}
            stop_grace_period: 1m30s
            stop_signal: SIGINT
            init: true
            shm_size: 128m
            read_only: true
            deploy:
              placement:
                constraints:
                  - node.labels.disk == ssd
                  - node.hostname != n2
                  - node.platform.arch == aarch64
                  - node.platform.os == linux
              restart_policy: {condition: on-failure, max_attempts: 4, window: 2m}
        """,
        environ={"HOME_DIR": "/home/u"},
    )
    (app,) = stack.jobs
    assert app["task"] == {
        "image": "registry.lan:5000/app:v2",
        "entrypoint": ["/bin/sh", "-c", "exec app"],
        "command": ["--port", "80"],
        "env": {"A": "1", "B": "three", "C": "1-x", "HOME_DIR": "/home/u", "EMPTY": ""},
        "ports": [
            {"container": 80, "host": None, "protocol": "tcp", "mode": "ingress"},
            {"container": 443, "host": 8443, "protocol": "tcp", "mode": "ingress"},
            {"container": 53, "host": 5300, "protocol": "udp", "mode": "host"},
        ],
        "volumes": [
            {"type": "bind", "source": str(tmp_path / "shop" / "data"), "target": "/data", "read_only": True},
            {"type": "tmpfs", "source": "", "target": "/cache", "size": 64 << 20},
            {"type": "tmpfs", "source": "", "target": "/run", "size": 16 << 20},
        ],
        "restart": {"name": "on-failure", "max_restarts": 4, "window": 120},
        "cpu": 0.5,
        "memory": 256 << 20,
        "constraints": ["disk=ssd", "hostname!=n2", "arch=aarch64"],
        "labels": {"team": "shop"},
        "devices": ["/dev/ttyUSB0"],
        "privileged": True,
        "cap_drop": ["MKNOD"],
        "hostname": "app1",
        "workdir": "/app",
        "stop_signal": "SIGINT",
        "init": True,
        "read_only": True,
        "user": "1000",
        "shm_size": 128 << 20,
        "stop_timeout": 90,
    }
    assert stack.warnings == []


def test_restart_forms_and_batch_jobs(tmp_path):
    stack = stack_of(
        tmp_path,
        """
        services:
          migrate: {image: busybox, restart: "no"}
          seed: {image: busybox, restart: on-failure}
          api:
            image: busybox
            restart: unless-stopped
            depends_on:
              migrate: {condition: service_started}
              seed: {condition: service_completed_successfully}
              cache: {condition: service_healthy, required: false}
        """,
    )
    kinds = {j["name"]: (j["type"], j["task"].get("restart")) for j in stack.jobs}
    assert kinds == {
        "shop-migrate": ("batch", {"name": "no"}),
        "shop-seed": ("batch", {"name": "on-failure"}),
        "shop-api": ("service", {"name": "always"}),
    }
    assert stack.jobs[-1]["depends_on"] == [
        {"job": "shop-migrate", "condition": "started"},
        {"job": "shop-seed", "condition": "completed"},
    ]
    assert stack.warnings == ["services.api.depends_on.cache: cache is not in the stack (required: false)"]


def test_update_rollback_health_disable_and_resources(tmp_path):
    stack = stack_of(
        tmp_path,
        """
        services:
          web:
            image: nginx
            healthcheck: {test: ["NONE"]}
            deploy:
              replicas: 0
              resources:
                limits: {cpus: "1.5", memory: 1g}
                reservations: {cpus: "0.5"}
              update_config: {parallelism: 0, failure_action: pause, delay: 5s}
              rollback_config: {parallelism: 2, order: start-first}
        """,
    )
    (web,) = stack.jobs
    assert web["count"] == 0 and web["task"] == {"image": "nginx", "cpu": 1.5, "memory": 1 << 30}
    assert web["update"] == {**UPDATE, "max_parallel": 10000}
    assert web["rollback"] == {**UPDATE, "max_parallel": 2, "order": "start-first"}
    assert stack.warnings == [
        "services.web.deploy.resources.reservations.cpus: Cube reserves what it limits: cpu 1.5 is both",
        "services.web.deploy.update_config.delay: not supported",
    ]


def test_interpolation_forms(tmp_path):
    stack = stack_of(
        tmp_path,
        """
        services:
          web:
            image: nginx
            environment:
              a: ${SET:-d}|${EMPTY:-d}|${EMPTY-d}|${UNSET-d}
              b: ${SET:+alt}|${EMPTY:+alt}|${EMPTY+alt}|${UNSET+alt}
              c: $SET/$${SET}/${UNSET:-${SET}x}/${NOPE}
              d: ${EMPTY?}|${SET:?never}
        """,
        environ={"SET": "v", "EMPTY": ""},
    )
    env = stack.jobs[0]["task"]["env"]
    assert env == {"a": "v|d||d", "b": "alt||alt|", "c": "v/${SET}/vx/", "d": "|v"}
    assert stack.warnings == [
        'compose.yaml: services.web.environment.c: the "NOPE" variable is not set, defaulting to a blank string'
    ]


def test_stack_name_from_the_directory_as_a_dns_label(tmp_path):
    path = write(tmp_path / "My_Shop.v2", "services: {web: {image: nginx}}\n")
    assert load_stack([path], environ={}).name == "my-shop-v2"


def test_named_volumes_with_a_name_or_external(tmp_path):
    stack = stack_of(
        tmp_path,
        """
        services:
          web:
            image: nginx
            volumes: [aa:/a, bb:/b, "cc:/c:ro", /anonymous]
        volumes:
          aa:
          bb: {name: shared-b}
          cc: {external: true}
        """,
    )
    assert [(m["source"], m["read_only"]) for m in stack.jobs[0]["task"]["volumes"]] == [
        ("shop_aa", False),
        ("shared-b", False),
        ("cc", True),
    ]
    assert stack.warnings[0].startswith("services.web.volumes[3]: anonymous volume /anonymous: not supported")


def test_profiles_leave_services_out_unless_active(tmp_path):
    text = """
        services:
          web: {image: nginx}
          debug: {image: busybox, profiles: [debug]}
        """
    assert [j["name"] for j in stack_of(tmp_path, text).jobs] == ["shop-web"]
    active = stack_of(tmp_path, text, environ={"COMPOSE_PROFILES": "debug"})
    assert [j["name"] for j in active.jobs] == ["shop-web", "shop-debug"]


def test_merge_rules_of_the_spec(tmp_path):
    base = write(
        tmp_path / "shop",
        """
        services:
          web:
            image: nginx
            command: [a, b]
            ports: ["8080:80", "9000:90"]
            volumes: ["a:/data"]
            cap_add: [NET_ADMIN]
            environment: [A=1, B=2]
        volumes: {a: {}, b: {}}
        """,
    )
    override = write(
        tmp_path / "shop",
        """
        services:
          web:
            command: [c]
            ports: ["8080:80", "9001:91"]
            volumes: ["b:/data"]
            cap_add: [SYS_TIME]
            environment: {B: 3}
        """,
        "override.yaml",
    )
    (web,) = load_stack([base, override], environ={}).jobs
    task = web["task"]
    assert task["command"] == ["c"]
    assert [(p["host"], p["container"]) for p in task["ports"]] == [(8080, 80), (9000, 90), (9001, 91)]
    assert [m["source"] for m in task["volumes"]] == ["shop_b"]
    assert task["cap_add"] == ["NET_ADMIN", "SYS_TIME"] and task["env"] == {"A": "1", "B": "3"}


# ---- errors ---------------------------------------------------------------------------------------------------

ERRORS = [
    ("services:\n  web:\n    image: [nginx\n", "compose.yaml: invalid YAML at line 4, column 1"),
    ("services:\n  web: {image: a}\n  web: {image: b}\n", "key 'web' appears twice"),
    (
        "services:\n  web: {image: nginx, depends_on: [db]}\n",
        "compose.yaml: services.web.depends_on: unknown service db",
    ),
    (
        "services:\n  a: {image: x, depends_on: [b]}\n  b: {image: x, depends_on: [c]}\n"
        "  c: {image: x, depends_on: [a]}\n",
        "compose.yaml: services.a.depends_on: a dependency cycle: a → b → c → a",
    ),
    (
        "services:\n  web: {image: 'nginx:${TAG:?set TAG first}'}\n",
        "compose.yaml: services.web.image: required variable TAG is missing a value: set TAG first",
    ),
    (
        "services:\n  a: {image: x, ports: ['8000-8010:8000-8010']}\n  b: {image: x, ports: ['8005:80']}\n",
        "compose.yaml: services.b.ports: host port 8005/tcp is also published by service a",
    ),
    (
        "services:\n  web: {image: x, secrets: [pw]}\nsecrets:\n  pw: {file: ./missing.txt}\n",
        "compose.yaml: secrets.pw.file: {dir}/missing.txt does not exist",
    ),
    (
        "services:\n  web: {image: x, secrets: [pw]}\nsecrets:\n  pw: {external: true}\n",
        "compose.yaml: secrets.pw: external secrets are not supported",
    ),
    (
        "services:\n  web: {image: x, env_file: [nope.env]}\n",
        "compose.yaml: services.web.env_file[0]: {dir}/nope.env does not exist",
    ),
    ("services:\n  web: {build: .}\n", "compose.yaml: services.web.image: required (Cube runs images"),
    ("services:\n  web: {image: x, imgae: y}\n", "compose.yaml: services.web: unknown field imgae"),
    (
        "services:\n  web: {image: x, ports: ['80', 'x:80']}\n",
        "compose.yaml: services.web.ports[1]: 'x' is not a port",
    ),
    (
        "services:\n  web: {image: x, ports: ['127.0.0.1:8080:80']}\n",
        "compose.yaml: services.web.ports[0]: host address 127.0.0.1 is not supported",
    ),
    (
        "services:\n  web: {image: x, ports: ['8000-8010:80']}\n",
        "compose.yaml: services.web.ports[0]: '8000-8010:80': the published range and the container range",
    ),
    (
        "services:\n  web: {image: x, deploy: {replicas: two}}\n",
        "compose.yaml: services.web.deploy.replicas: must be a whole number",
    ),
    (
        "services:\n  web: {image: x, volumes: ['data:/data']}\n",
        "compose.yaml: services.web.volumes[0]: volume 'data' is not declared under the top-level volumes",
    ),
    (
        "services:\n  web: {image: x, deploy: {placement: {constraints: ['node.role == manager']}}}\n",
        "compose.yaml: services.web.deploy.placement.constraints[0]: node.role cannot be mapped",
    ),
    ("services:\n  my_web: {image: x}\n", "compose.yaml: services.my_web: a service name becomes a job name"),
    ("services:\n  web: {image: x, network_mode: none}\n", "compose.yaml: services.web.network_mode: 'none'"),
    ("services:\n  web: {image: x, restart: sometimes}\n", "compose.yaml: services.web.restart: 'sometimes'"),
    ("services:\n  web: {image: x, healthcheck: {test: [curl, x]}}\n", "services.web.healthcheck.test: must start"),
    ("services:\n  web: {image: x, stop_grace_period: 1 minute}\n", "services.web.stop_grace_period: '1 minute'"),
    ("services:\n  web: {image: 'Nginx'}\n", "compose.yaml: services.web: image 'Nginx' is not a valid image"),
    ("services:\n  web: {image: x, cap_add: [FLY]}\n", "compose.yaml: services.web: cap_add: 'FLY' is not a Linux"),
    (
        "services:\n  a-service-name-long-enough-to-pass-the-limit-of-a-job: {image: x}\n",
        "the job name shop-a-service-name-long-enough-to-pass-the-limit-of-a-job is 58 characters long",
    ),
    (
        "services:\n  seed: {image: x, restart: always}\n  api: {image: x, depends_on: "
        "{seed: {condition: service_completed_successfully}}}\n",
        "compose.yaml: services.seed.restart: a service others wait for with service_completed_successfully",
    ),
]


@pytest.mark.parametrize("text, message", ERRORS, ids=[m[:40] for _, m in ERRORS])
def test_errors_name_the_file_the_service_and_the_field(tmp_path, text, message):
    got = error_of(tmp_path, text)
    assert message.format(dir=tmp_path / "shop") in got


def test_an_error_of_an_override_file_names_that_file(tmp_path):
    base = write(tmp_path / "shop", "services:\n  web: {image: x}\n")
    override = write(tmp_path / "shop", "services:\n  web: {ports: ['x']}\n", "prod.yaml")
    with pytest.raises(InvalidSpec, match=r"^prod.yaml: services.web.ports\[0\]: 'x' is not a port"):
        load_stack([base, override], environ={})


def test_a_missing_env_file_given_explicitly_is_an_error(tmp_path):
    with pytest.raises(InvalidSpec, match="no such env file"):
        stack_of(tmp_path, "services: {web: {image: x}}\n", env_file=str(tmp_path / "nope.env"))


def test_invalid_stack_names_are_refused(tmp_path):
    assert "a stack name must be lowercase" in error_of(tmp_path, "services: {web: {image: x}}\n", name="Shop_1")
    assert "name 'My Shop'" in error_of(tmp_path, "name: My Shop\nservices: {web: {image: x}}\n")


# ---- the book's task files ----------------------------------------------------------------------------------

TASK1 = {  # Build an Orchestrator in Go, listing 9.13 (task1.json)
    "ID": "a7aa1d44-08f6-443e-9378-f5884311019e",
    "State": 2,
    "Task": {
        "State": 1,
        "ID": "bb1d59ef-9fc1-4e4b-a44d-db571eeed203",
        "Name": "test-chapter-9.1",
        "Image": "timboring/echo-server:latest",
        "ExposedPorts": {"7777/tcp": {}},
        "PortBindings": {"7777/tcp": "7777"},
        "HealthCheck": "/health",
    },
}


def test_the_books_task1_json():
    notes: list[str] = []
    task = task_from_book(TASK1, notes)
    assert is_book_file(TASK1) and is_book_file(TASK1["Task"]) and not is_book_file({"image": "nginx"})
    assert task == {
        "image": "timboring/echo-server:latest",
        "name": "test-chapter-9-1",
        "id": "bb1d59ef9fc14e4ba44ddb571eeed203",
        "ports": [{"container": 7777, "host": 7777, "protocol": "tcp"}],
        "health": {"path": "/health"},
    }
    assert notes == ["Name test-chapter-9.1: the task is named test-chapter-9-1 (a DNS label)"]
    TaskSpec.from_dict({k: v for k, v in task.items() if k != "id"})


def test_a_bare_book_task_with_restart_resources_and_lowercase_keys():
    notes: list[str] = []
    task = task_from_book(
        {
            "id": "not-a-uuid!",
            "image": "nginx",
            "exposedPorts": {"80/tcp": {}},
            "RestartPolicy": "always",
            "Cpu": 0.5,
            "Memory": 64 << 20,
            "ContainerID": "abc",
            "RestartCount": 2,
        },  # fmt: skip
        notes,
    )
    assert task == {
        "image": "nginx",
        "ports": [{"container": 80, "host": None, "protocol": "tcp"}],
        "restart": "always",
        "cpu": 0.5,
        "memory": 64 << 20,
    }
    assert notes == ["ID not-a-uuid!: left out (a Cube task id is 1-32 letters and digits); Cube gives the task one"]


def test_book_errors():
    with pytest.raises(InvalidSpec, match="Task.Image is required"):
        task_from_book({"Task": {"Name": "x"}})
    with pytest.raises(InvalidSpec, match="asks to stop a task"):
        task_from_book({**TASK1, "State": 3})
    with pytest.raises(InvalidSpec, match="Task.PortBindings 7777/tcp: host port must be"):
        task_from_book({"Task": {"Image": "x", "PortBindings": {"7777/tcp": "port"}}})


def test_compose_depends_only_on_core_and_its_two_libraries():
    for name, module in imported_modules(pathlib.Path(cube.compose.__file__).parent):
        if module.startswith("cube"):
            assert module.startswith(("cube.core", "cube.compose")), f"{name} imports {module}"
        assert module != "yaml" or name == "load.py", f"{name} imports yaml"
        assert module != "fastjsonschema" or name == "schema.py", f"{name} imports fastjsonschema"
