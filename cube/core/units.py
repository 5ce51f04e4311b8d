"""Units a person types and reads: durations (`1m30s`) and sizes shown (`1.5 GiB`). Nothing else, so that the
command line's every start can print a size without importing the specs (cube.core.spec: 20 ms of its start)."""

from __future__ import annotations

import re

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


def parse_duration(value) -> float | None:
    """`1m30s`, `10s`, `500ms`, `2h` (Go's and compose's form; a bare number is seconds) → seconds; None when
    `value` is no duration (the caller says what it wanted, in its own words)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) if value >= 0 else None
    text = str(value).strip()
    parts = list(_DURATION_PART.finditer(text))
    if not text or len(text) > 40 or "".join(p.group() for p in parts) != text:
        try:
            number = float(text)
        except ValueError:
            return None
        return number if number >= 0 else None
    return sum(float(p.group(1)) * _DURATION_UNITS[p.group(2)] for p in parts)


def format_size(n: int | float) -> str:
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" or n >= 100 else f"{n:.1f} {unit}".replace(".0 ", " ")
        n /= 1024
    return f"{n} B"
