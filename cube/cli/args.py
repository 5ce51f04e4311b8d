"""How a command line becomes a call of a `Commands` method (fire then makes the call: see `main._dispatch`). The
method's usage line (the first line of its docstring) names the command's arguments: they are its first parameters,
in order (`cube scale JOB N` -> job, count); every other parameter is a flag, and each flag's type comes from its
annotation (`bool`: `--x` / `--no-x`; `int`, `float`: a number, never negative; a tuple default: a flag that may be
repeated; anything else: a string, kept as typed — `--name 0x10` is the name "0x10"). Every mistake is a
`UsageError`: one line that names the flag or argument and the expected form (the CLI exits 2), never a traceback,
and never a value taken for something else.
"""

from __future__ import annotations

import inspect
import math
import re

from cube.core.errors import CubeError

SHORT = {"-f": "file", "-n": "count"}
TRUE, FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


class UsageError(CubeError):
    """A command line that does not fit the command (exit code 2)."""


# Flags of every command that talks to the manager: their help lines are added to the command's own.
COMMON = {
    "--manager": "--manager URL          the manager (default: CUBE_MANAGER, the manager on this machine, then mDNS)",
    "--token": "--token T              the cluster token (default: CUBE_TOKEN, then the local manager's)",
    "--json": "--json                 print JSON, for scripts",
}


def help_text(fn) -> str:
    """`cube COMMAND --help`: the docstring, with the help lines of the common flags it takes."""
    doc = inspect.getdoc(fn) or ""
    common = [line for flag, line in COMMON.items() if flag in flags(fn) and f"  {flag} " not in doc]
    if common:
        doc += ("\n" if "\nFlags:\n" in doc else "\n\nFlags:\n") + "\n".join("  " + line for line in common)
    return "Usage: " + doc


def help_line(fn, flag: str) -> tuple[str, str] | None:
    """A flag's help as (value's name, description): ("POLICY", "no, on-failure (default) or always")."""
    lines = help_text(fn).splitlines()
    for at, line in enumerate(lines):
        head, *text = re.split(r"\s{2,}", line.strip(), maxsplit=1)
        words = head.split(", ")[-1].split(" ")  # `-n, --count N`
        if words[0] == flag:
            for follow in lines[at + 1 :]:  # a description wrapped onto lines of its own
                if not follow.startswith(" " * 20):
                    break
                text.append(follow.strip())
            return " ".join(words[1:]), " ".join(text)
    return None


def usage(fn) -> str:
    """The command's usage line: the first line of its docstring (`cube stop ID_OR_NAME_OR_JOB [--detach]`)."""
    return (inspect.getdoc(fn) or "").splitlines()[0].strip()


def metavars(fn) -> list[str]:
    """The names the usage line gives the positional arguments: the words before its first flag."""
    words = usage(fn).split()[2:]
    names = []
    for word in words:
        if word.lstrip("[").startswith("-") or word == "[FLAGS]":
            break
        names.append(word.strip("[]"))
    return names


def example(fn) -> str | None:
    """The docstring's `Example: cube ...` line, if any."""
    for line in (inspect.getdoc(fn) or "").splitlines():
        if line.strip().startswith("Example: "):
            return line.strip()[len("Example: ") :]
    return None


def positionals(fn) -> list[inspect.Parameter]:
    """The parameters the usage line names as arguments: the first ones."""
    params = [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]
    return params[: len(metavars(fn))]


def flags(fn) -> dict[str, inspect.Parameter]:
    """`--flag-name` -> parameter, for every flag the command accepts: the parameters after its arguments."""
    params = [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]
    return {"--" + p.name.replace("_", "-"): p for p in params[len(metavars(fn)) :]}


def kind(param: inspect.Parameter) -> str:
    """bool, int, float, list or str (annotations are strings here: `from __future__ import annotations`)."""
    if isinstance(param.default, tuple):
        return "list"
    annotation = param.annotation if isinstance(param.annotation, str) else ""
    base = annotation.split("|")[0].strip()
    return base if base in ("bool", "int", "float") else "str"


def parse(command: str, fn, argv: list[str]) -> tuple[list, dict]:
    """(positional arguments, keyword arguments) for `fn`, from `argv` (the words after the command's name)."""
    known = flags(fn)
    wanted = positionals(fn)
    names = metavars(fn)
    args: list = []
    kwargs: dict = {}
    i = 0
    while i < len(argv):
        word = argv[i]
        i += 1
        if not word.startswith("-") or _is_number(word):
            if len(args) >= len(wanted):
                raise UsageError(f"unexpected argument {word!r}; usage: {usage(fn)}")
            args.append(_convert(fn, wanted[len(args)], word, names[len(args)], command))
            continue
        given, eq, value = word.partition("=")
        if given in SHORT:
            name = "--" + SHORT[given]
        elif given.startswith("--"):
            name = "--" + given[2:].replace("_", "-")
        else:
            name = ""  # no other single-dash flags
        param = known.get(name)
        negated = param is None and name.startswith("--no-") and known.get("--" + name[5:])
        if negated and kind(negated) == "bool" and not eq:
            kwargs[negated.name] = False
            continue
        if param is None:
            raise UsageError(f"unknown flag {given} for `cube {command}`: see `cube {command} --help`")
        if kind(param) == "bool":
            kwargs[param.name] = _boolean(name, value) if eq else True
            continue
        if not eq:
            if i >= len(argv) or argv[i].partition("=")[0] in known:  # `--name --detach`: the value was left out
                value_name, text = help_line(fn, name) or ("", _form(fn, param, name))
                raise UsageError(f"{name} needs a value{f' ({value_name})' if value_name else ''}: {text}")
            value = argv[i]
            i += 1
        if kind(param) == "list":
            kwargs.setdefault(param.name, []).append(value)
        elif param.name in kwargs:
            raise UsageError(f"{name} is given twice: give it once")
        else:
            kwargs[param.name] = _convert(fn, param, value, name, command)
    if any(p.default is inspect.Parameter.empty for p in wanted[len(args) :]):
        shown = example(fn)
        raise UsageError(f"missing {names[len(args)]}: " + (f"e.g. `{shown}`" if shown else f"usage: {usage(fn)}"))
    for flag, param in known.items():
        if param.default is inspect.Parameter.empty and param.name not in kwargs:
            raise UsageError(f"missing {flag}: usage: {usage(fn)}")
    return args, kwargs


def _is_number(word: str) -> bool:
    return bool(re.fullmatch(r"-\d[\d_.]*", word))


def _boolean(name: str, value: str) -> bool:
    if value.lower() in TRUE:
        return True
    if value.lower() in FALSE:
        return False
    raise UsageError(f"{name} takes no value, or true/false, not {value!r}")


def _form(fn, param: inspect.Parameter, label: str) -> str:
    """What a value should look like, with an example: the flag's default when it is one, the command's example
    for an argument."""
    whole = kind(param) == "int"
    if kind(param) not in ("int", "float"):
        return "see the command's --help"
    what = "a whole number" if whole else "a number"
    if not label.startswith("-"):
        shown = example(fn)
        return f"{what}, e.g. `{shown}`" if shown else what
    default = param.default
    good = isinstance(default, (int, float)) and not isinstance(default, bool) and default > 0
    return f"{what}, e.g. {label} {default if good else 10 if whole else 1.5:g}"


def _convert(fn, param: inspect.Parameter, value: str, label: str, command: str):
    of = kind(param)
    if of not in ("int", "float"):
        return value
    try:
        number: float = int(value, 10) if of == "int" else float(value)
    except ValueError:
        number = -1.0  # refused below, with the same words as a negative number
    if not math.isfinite(number) or number < 0:
        raise UsageError(f"{label} takes {_form(fn, param, label)}, not {value!r}; see `cube {command} --help`")
    return number
