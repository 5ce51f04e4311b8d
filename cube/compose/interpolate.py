"""Variables of a compose file, as `docker compose` has them: a `.env` file (next to the first file, or
`--env-file`) under the process environment, which wins; then `${VAR}`, `$VAR`, `${VAR:-default}`,
`${VAR-default}`, `${VAR:?error}`, `${VAR?error}`, `${VAR:+alt}`, `${VAR+alt}` and `$$` (a literal `$`) in every
string value of a file (keys are left alone), defaults and alternatives themselves interpolated. An unset variable
without a default becomes "" and one warning line, as `docker compose` prints it. No clock; the only I/O is
`read_env_file`."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from cube.core.errors import InvalidSpec

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DOTENV_LINE = re.compile(r"(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*(?:[=:]\s*(.*))?")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


def parse_dotenv(text: str, where: str, lookup: Callable[[str], str | None] | None = None) -> dict[str, str]:
    """`KEY=VALUE` lines (`export ` allowed, `#` comments, 'single' quotes literal, "double" quotes with \\n
    escapes, a value without quotes ending at ` #`). Unquoted and double-quoted values are interpolated with the
    variables above them, then `lookup`. A line `KEY` alone takes its value from `lookup` (left out when unset)."""
    values: dict[str, str] = {}

    def find(name: str) -> str | None:
        if name in values:
            return values[name]
        return lookup(name) if lookup else None

    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index].strip()
        index += 1
        if not line or line.startswith("#"):
            continue
        match = _DOTENV_LINE.fullmatch(line)
        if not match:
            raise InvalidSpec(f"{where}: line {index}: expected KEY=VALUE, not {line[:60]!r}")
        key, raw = match.group(1), match.group(2)
        if raw is None:
            found = find(key)
            if found is not None:
                values[key] = found
            continue
        if raw[:1] in ("'", '"'):
            quote = raw[0]
            body = raw[1:]
            while not _closed(body, quote) and index < len(lines):  # a quoted value may span lines
                body += "\n" + lines[index]
                index += 1
            if not _closed(body, quote):
                raise InvalidSpec(f"{where}: line {index}: the value of {key} opens a {quote} quote it never closes")
            value = body[: _closing(body, quote)]
            if quote == "'":
                values[key] = value
                continue
            value = re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), "\\" + m.group(1)), value)
        else:
            value = re.split(r"\s+#", raw, maxsplit=1)[0].strip()
        values[key] = interpolate(value, f"{where}: {key}", find, [])
    return values


def _closing(body: str, quote: str) -> int:
    escaped = False
    for position, char in enumerate(body):
        if char == "\\" and quote == '"' and not escaped:
            escaped = True
            continue
        if char == quote and not escaped:
            return position
        escaped = False
    return -1


def _closed(body: str, quote: str) -> bool:
    return _closing(body, quote) >= 0


def interpolate(value: str, where: str, lookup: Callable[[str], str | None], warnings: list[str]) -> str:
    """`value` with its variables replaced; `where` names the field in errors (`compose.yaml: services.web.image`)."""
    if "$" not in value:
        return value
    return _expand(value, 0, where, lookup, warnings, inside=False)[0]


def _expand(
    text: str, position: int, where: str, lookup: Callable[[str], str | None], warnings: list[str], inside: bool
) -> tuple[str, int]:
    """The text from `position` up to the end (or, `inside` a `${...}`, its closing brace), expanded."""
    out: list[str] = []
    while position < len(text):
        char = text[position]
        if inside and char == "}":
            return "".join(out), position
        if char != "$":
            out.append(char)
            position += 1
            continue
        after = text[position + 1 : position + 2]
        if after == "$":
            out.append("$")
            position += 2
        elif after == "{":
            expanded, position = _braced(text, position + 2, where, lookup, warnings)
            out.append(expanded)
        else:
            name = _NAME.match(text, position + 1)
            if name is None:
                out.append("$")  # a lone `$` (e.g. `cost: 5$`) stays, as in docker compose
                position += 1
                continue
            out.append(_value(name.group(), where, lookup, warnings))
            position = name.end()
    if inside:
        raise InvalidSpec(f"{where}: invalid interpolation format: a '${{' is never closed in {text[:80]!r}")
    return "".join(out), position


def _braced(
    text: str, position: int, where: str, lookup: Callable[[str], str | None], warnings: list[str]
) -> tuple[str, int]:
    """`NAME}` or `NAME<op>word}` from `position` (after `${`); returns the value and the position after `}`."""
    name = _NAME.match(text, position)
    if name is None:
        raise InvalidSpec(f"{where}: invalid interpolation format in {text[:80]!r}: ${{ must be followed by a name")
    position = name.end()
    for operator in (":-", ":?", ":+", "-", "?", "+"):
        if text.startswith(operator, position):
            word, end = _expand(text, position + len(operator), where, lookup, warnings, inside=True)
            return _operate(name.group(), operator, word, where, lookup), end + 1
    if text[position : position + 1] != "}":
        raise InvalidSpec(
            f"{where}: invalid interpolation format in {text[:80]!r}: use ${{VAR}}, ${{VAR:-default}}, "
            f"${{VAR:?error}} or ${{VAR:+alternative}}"
        )
    return _value(name.group(), where, lookup, warnings), position + 1


def _operate(name: str, operator: str, word: str, where: str, lookup: Callable[[str], str | None]) -> str:
    found = lookup(name)
    unset = found is None or (operator.startswith(":") and found == "")
    if operator.endswith("-"):
        return word if unset else str(found)
    if operator.endswith("+"):
        return "" if unset else word
    if unset:  # `?`: required
        raise InvalidSpec(f"{where}: required variable {name} is missing a value: {word or 'it is not set'}")
    return str(found)


def _value(name: str, where: str, lookup: Callable[[str], str | None], warnings: list[str]) -> str:
    found = lookup(name)
    if found is None:
        line = f'{where}: the "{name}" variable is not set, defaulting to a blank string'
        if line not in warnings:
            warnings.append(line)
        return ""
    return found


def interpolate_tree(data, where: str, environ: Mapping[str, str], warnings: list[str]):
    """Every string value of a loaded file, interpolated; `where` is the file's name (paths are added to it)."""

    def walk(node, path: str):
        if isinstance(node, str):
            return interpolate(node, f"{where}: {path}", environ.get, warnings)
        if isinstance(node, dict):
            return {key: walk(value, f"{path}.{key}" if path else str(key)) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(item, f"{path}[{index}]") for index, item in enumerate(node)]
        return node

    return walk(data, "")
