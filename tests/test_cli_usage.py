"""The command line as a new user meets it, without Docker: every command's grammar and help checked from its
signature (no manager needed), then `main([...])` in-process against a real manager and workers on FakeRuntime over
HTTP, and `cube events --follow` as a process across a manager restart. Every failure must be one line on stderr,
with the right exit code (2: the command line does not fit the command; 1: the rest), and no traceback."""

import inspect
import json
import os
import re
import signal
import subprocess
import sys
import threading

import pytest
from conftest import cluster_client, free_port, wait_for

from cube.cli import args, run
from cube.cli.main import Commands, main
from cube.cluster.manager_service import start_dev
from cube.core.errors import BadRequest
from cube.worker.runtime import FakeRuntime

CUBE = [sys.executable, "-c", "import sys; from cube.cli.main import main; sys.exit(main())"]
COMMANDS = sorted(name for name in dir(Commands) if not name.startswith("_") and callable(getattr(Commands, name)))


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, err
    return code, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def spelled(fn) -> set[str]:
    """The flags of a command as a user types them: a flag that is on by default is turned off with --no-."""
    return {
        f"--no-{flag[2:]}" if args.kind(p) == "bool" and p.default is True else flag
        for flag, p in args.flags(fn).items()
    }


def arguments(fn) -> list[str]:
    """Good-looking values for a command's arguments (`cube scale web 1`)."""
    return ["1" if args.kind(p) == "int" else "worker" for p in args.positionals(fn)]


# ---- grammar and help, from the signatures (no manager) ---------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_help_describes_every_flag_the_command_accepts(command, capsys):
    fn = getattr(Commands, command)
    code, out, _ = cli(capsys, command, "--help")
    assert code == 0 and out.startswith(f"Usage: cube {command}")
    described = {}
    for line in out.splitlines():
        found = re.match(r"^  (?:-\w, )?(--[a-z-]+)\S*(?: \S+)?\s{2,}(\S.*)$", line)
        if found:
            described[found.group(1)] = found.group(2)
    assert set(described) == spelled(fn), "the help lists exactly the flags the command accepts"
    assert all(len(text) > 5 for text in described.values())


@pytest.mark.parametrize("command", COMMANDS)
def test_usage_line_names_the_arguments_first(command):
    fn = getattr(Commands, command)
    params = [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]
    required = [p.name for p in params if p.default is inspect.Parameter.empty]
    assert required == [p.name for p in args.positionals(fn)][: len(required)], "required parameters are arguments"
    if required:
        assert args.example(fn), f"cube {command} needs an `Example:` line, for the error that says what is missing"


NUMERIC = [
    (command, flag)
    for command in COMMANDS
    for flag, p in args.flags(getattr(Commands, command)).items()
    if args.kind(p) in ("int", "float")
]


@pytest.mark.parametrize(("command", "flag"), NUMERIC)
@pytest.mark.parametrize("bad", ["abc", "-5", "nan"])
def test_numeric_flags_refuse_what_is_not_a_number(command, flag, bad, capsys):
    fn = getattr(Commands, command)
    code, _, err = cli(capsys, command, *arguments(fn), flag, bad)
    assert code == 2
    line = one_line(err)
    assert line.startswith(f"cube {command}: {flag} takes a ") and "number, e.g. " + flag in line, line
    assert repr(bad) in line


def test_numeric_arguments_refuse_what_is_not_a_number(capsys):
    code, _, err = cli(capsys, "scale", "web", "x")
    assert code == 2
    assert (
        one_line(err) == "cube scale: N takes a whole number, e.g. `cube scale web 3`, not 'x'; see `cube scale --help`"
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_an_extra_argument_is_refused_with_the_usage_line(command, capsys):
    fn = getattr(Commands, command)
    code, _, err = cli(capsys, command, *arguments(fn), "extra")
    assert code == 2
    assert one_line(err) == f"cube {command}: unexpected argument 'extra'; usage: {args.usage(fn)}"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["stop"], "cube stop: missing ID_OR_NAME_OR_JOB: e.g. `cube stop web`"),
        (["scale"], "cube scale: missing JOB: e.g. `cube scale web 3`"),
        (["scale", "web"], "cube scale: missing N: e.g. `cube scale web 3`"),
        (["logs"], "cube logs: missing ID_OR_NAME: e.g. `cube logs web-1`"),
        (["uninstall"], "cube uninstall: missing worker|manager: e.g. `sudo cube uninstall worker`"),
        (["run", "--restart"], "cube run: --restart needs a value (POLICY): no, on-failure (default) or always"),
        (["run", "--name", "--detach"], "cube run: --name needs a value (NAME): the task's name (the job's, with"),
        (["run", "--name", "a", "--name", "b"], "cube run: --name is given twice: give it once"),
        (["run", "-x"], "cube run: unknown flag -x for `cube run`: see `cube run --help`"),
        (["stop", "web", "--file", "x"], "cube stop: unknown flag --file for `cube stop`: see `cube stop --help`"),
        (["run", "--detach=maybe"], "cube run: --detach takes no value, or true/false, not 'maybe'"),
    ],
)
def test_command_lines_that_do_not_fit_say_what_is_missing(argv, expected, capsys):
    code, _, err = cli(capsys, *argv)
    assert code == 2
    assert one_line(err).startswith(expected)


def test_values_are_kept_as_typed_and_flags_typed_by_the_signature():
    got = args.parse(
        "run",
        Commands.run,
        ["--name", "0x10", "--cmd", "[1]", "--cpu", "0.5", "-n", "2", "--env", "A=1", "--env=B=2", "--no-detach"],
    )
    assert got == ([], {"name": "0x10", "cmd": "[1]", "cpu": 0.5, "count": 2, "env": ["A=1", "B=2"], "detach": False})
    assert args.parse("scale", Commands.scale, ["web", "3", "--json"]) == (["web", 3], {"json": True})
    assert args.parse("manager", Commands.manager, ["--workers", "a:1,b:2", "--no-mdns"])[1] == {
        "workers": ["a:1,b:2"],
        "mdns": False,
    }


def test_output_into_a_closed_pipe_is_no_traceback():
    proc = subprocess.Popen(
        CUBE + ["run", "--help"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # before the interpreter has even started: `cube run --help | head -1` at its worst
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=30) == 0
    assert err == ""


# ---- against a manager and workers on FakeRuntime ----------------------------------------------------------------


class ExitingRuntime(FakeRuntime):
    """A fake engine whose containers of image `exit-N` exit with code N 0.2 s after each start."""

    def start(self, task, node, *args, **kwargs):
        return self._exit_soon(super().start(task, node, *args, **kwargs))

    def restart(self, container_id):
        return self._exit_soon(super().restart(container_id))

    def _exit_soon(self, info):
        if info.image.startswith("exit-"):
            timer = threading.Timer(0.2, self._exit, (info.id, int(info.image[len("exit-") :])))
            timer.daemon = True
            timer.start()
        return info

    def _exit(self, container_id, code):
        if container_id in self.containers and self.containers[container_id].running:
            self.kill(container_id, code)


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    service = start_dev(port=0, data=str(tmp_path / "dev"), workers=1, runtime=ExitingRuntime(), cpus=2)
    for name, value in {"CUBE_MANAGER": service.url, "CUBE_TOKEN": service.join_token, "CUBE_NO_MDNS": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CUBE_DATA", str(tmp_path / "nothing-here"))
    yield service
    service.close()


def test_run_reports_a_container_that_exits_at_once(cluster, capsys):
    code, out, err = cli(capsys, "run", "--image", "exit-3", "--name", "crash")
    assert code == 1 and out == ""
    line = one_line(err)
    assert "(crash) stopped running: container exited with code 3; restarting (1 of 3" in line, line
    assert "`cube logs " in line and "`cube stop " in line


def test_run_reports_the_exit_code_of_a_task_that_may_not_restart(cluster, capsys):
    code, _, err = cli(capsys, "run", "--image", "exit-3", "--restart", "no")
    assert code == 1
    assert "failed: container exited with code 3; restart policy is 'no'" in one_line(err)


def test_run_reports_the_first_exit_in_a_job(cluster, capsys):
    code, _, err = cli(capsys, "run", "--image", "exit-2", "--count", "2", "--name", "pair")
    assert code == 1
    line = one_line(err)
    assert "stopped running: container exited with code 2" in line and "`cube stop pair` gives up" in line


def test_run_says_running_once_the_task_has_kept_running(cluster, capsys, monkeypatch):
    monkeypatch.setattr(run, "STABLE_FOR", 0.5)
    code, out, err = cli(capsys, "run", "--image", "busybox", "--name", "steady", "--json")
    assert code == 0, err
    task = json.loads(out)
    assert task["state"] == "running" and task["name"] == "steady" and task["restarts"] == 0


def test_a_name_is_kept_as_typed(cluster, capsys):
    code, out, err = cli(capsys, "run", "--image", "busybox", "--name", "0x10", "--detach", "--json")
    assert code == 0, err
    assert json.loads(out)["name"] == "0x10"


def test_the_managers_400_is_printed_as_it_is(cluster, capsys):
    with pytest.raises(BadRequest) as refused:
        cluster.client().post("/tasks", {"image": "Bad Image!!"})
    code, _, err = cli(capsys, "run", "--image", "Bad Image!!")
    assert code == 1
    assert one_line(err) == f"cube run: {refused.value.message}"


def test_a_wrong_token_says_how_a_cli_user_gives_one(cluster, capsys):
    prefix, pin, _ = cluster.join_token.split("-", 2)
    code, _, err = cli(capsys, "status", "--token", f"{prefix}-{pin}-wrong")
    assert code == 1
    assert one_line(err) == (
        "cube status: the manager refused the cluster token (missing or wrong): set CUBE_TOKEN or pass --token; "
        "`cube token` on the manager prints it"
    )


def test_a_manager_the_token_does_not_pin_is_named_as_the_client_found_it(cluster, capsys):
    code, _, err = cli(capsys, "status", "--token", "CUBE1-" + "0" * 64 + "-secret")
    assert code == 1
    assert "is not the manager this token belongs to" in one_line(err)


# A manager on FakeRuntime in a process of its own, so that the test can kill it as a crash would.
MANAGER = """import sys, time
from cube.cluster.manager_service import start_dev
from cube.worker.runtime import FakeRuntime
service = start_dev(port=int(sys.argv[1]), data=sys.argv[2], workers=1, runtime=FakeRuntime())
print(service.join_token, flush=True)
time.sleep(600)
"""


def test_events_follow_waits_for_a_restarted_manager_and_goes_on(tmp_path):
    port, data = free_port(), str(tmp_path / "dev")
    url = f"https://127.0.0.1:{port}"
    started = []

    def manager():
        proc = subprocess.Popen([sys.executable, "-c", MANAGER, str(port), data], stdout=subprocess.PIPE, text=True)
        started.append(proc)
        token = proc.stdout.readline().strip()
        return token, cluster_client(url, token)

    token, client = manager()
    env = {**os.environ, "CUBE_MANAGER": url, "CUBE_TOKEN": token, "CUBE_NO_MDNS": "1"}
    proc = subprocess.Popen(
        CUBE + ["events", "--follow", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    printed: list[dict] = []
    said: list[str] = []
    readers = [
        threading.Thread(target=lambda: printed.extend(json.loads(line) for line in proc.stdout), daemon=True),
        threading.Thread(target=lambda: said.extend(proc.stderr), daemon=True),
    ]
    for reader in readers:
        reader.start()

    def shown_running(task_id: str) -> bool:
        return any(e["task_id"] == task_id and e["state"] == "running" for e in printed)

    try:
        first = client.post("/tasks", {"image": "busybox"})
        wait_for(lambda: shown_running(first["id"]), timeout=20)
        started[0].kill()
        started[0].wait()
        wait_for(lambda: said, timeout=20)
        token, client = manager()
        second = client.post("/tasks", {"image": "busybox"})
        wait_for(lambda: shown_running(second["id"]), timeout=20)
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=20)
        for manager_proc in started:
            manager_proc.kill()
            manager_proc.wait()
    for reader in readers:
        reader.join(timeout=10)
    assert code == 130
    assert said == ["cube events: manager unreachable, retrying (Ctrl-C stops)\n"], said
    ids = [e["id"] for e in printed]
    assert ids == sorted(set(ids)), "went on from the last event printed: none twice, none out of order"
