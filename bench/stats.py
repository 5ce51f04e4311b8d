"""How a benchmark's figures are summarised and shown: min/median/max of a list of samples, the ratio of two medians
(Cube's over its baseline's, taken in the same run), and one `Row` per measured figure, printed on the console and
rendered as a Markdown table for BENCHMARKS.md. A row says what was measured, against what, the target, whether it
was met, and the command that reproduces it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field


def summary(samples: list[float]) -> dict:
    """min, median, max and n of `samples` (NaNs for an empty list)."""
    if not samples:
        return {"n": 0, "min": math.nan, "median": math.nan, "max": math.nan}
    return {"n": len(samples), "min": min(samples), "median": statistics.median(samples), "max": max(samples)}


def percentile(samples: list[float], p: float) -> float:
    """The p-th percentile (0-100) by linear interpolation between closest ranks."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    k = (len(ordered) - 1) * p / 100
    low, high = math.floor(k), math.ceil(k)
    if low == high:
        return ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def ratio(samples: list[float], baseline: list[float]) -> float:
    """median(samples) / median(baseline): above 1, Cube is slower (or bigger) than the baseline."""
    if not samples or not baseline:
        return math.nan
    base = statistics.median(baseline)
    return statistics.median(samples) / base if base else math.inf


@dataclass
class Row:
    """One measured figure. `samples` and `baseline_samples` are in `unit`; a figure without a baseline leaves
    `baseline` empty. `target` is text (e.g. "≤ 1.3× baseline"); `met` is True/False, or None without a target.
    `value` overrides the median for figures that are not a list of samples (a rate, a percentile)."""

    bench: str
    what: str
    unit: str
    samples: list[float]
    baseline: str = ""
    baseline_samples: list[float] = field(default_factory=list)
    target: str = ""
    met: bool | None = None
    command: str = ""
    note: str = ""
    value: float | None = None

    @property
    def stats(self) -> dict:
        return summary(self.samples)

    @property
    def base_stats(self) -> dict:
        return summary(self.baseline_samples)

    @property
    def ratio(self) -> float:
        return ratio(self.samples, self.baseline_samples)

    def to_dict(self) -> dict:
        return {
            "bench": self.bench,
            "what": self.what,
            "unit": self.unit,
            "samples": self.samples,
            "baseline": self.baseline,
            "baseline_samples": self.baseline_samples,
            "target": self.target,
            "met": self.met,
            "command": self.command,
            "note": self.note,
            "value": self.value,
            "stats": self.stats,
            "baseline_stats": self.base_stats,
            "ratio": None if math.isnan(self.ratio) else self.ratio,
        }


def fmt(value: float, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    if value == 0:
        return f"0 {unit}".strip()
    if abs(value) >= 1000:
        text = f"{value:,.0f}"
    elif abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    elif abs(value) >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3f}"
    return f"{text} {unit}".strip()


def triple(stats: dict, unit: str) -> str:
    """ "min / median / max unit" (one figure when there is one sample)."""
    if not stats["n"]:
        return "-"
    if stats["n"] == 1:
        return fmt(stats["median"], unit)
    return f"{fmt(stats['min'])} / {fmt(stats['median'])} / {fmt(stats['max'])} {unit}".strip()


def _met(row: Row) -> str:
    return {True: "met", False: "NOT met", None: ""}[row.met]


def console(rows: list[Row]) -> str:
    lines = []
    for row in rows:
        measured = fmt(row.value, row.unit) if row.value is not None else triple(row.stats, row.unit)
        line = f"  {row.what}: {measured}"
        if row.value is None and row.stats["n"] > 1:
            line += f" (min/median/max of {row.stats['n']})"
        if row.baseline:
            line += f"\n      vs {row.baseline}: {triple(row.base_stats, row.unit)}"
            if not math.isnan(row.ratio):
                line += f" → ratio {row.ratio:.2f}×"
        if row.target:
            line += f"\n      target {row.target}: {_met(row)}"
        if row.note:
            line += f"\n      note: {row.note}"
        if row.command:
            line += f"\n      reproduce: {row.command}"
        lines.append(line)
    return "\n".join(lines)


def markdown(rows: list[Row]) -> str:
    """A table: figure, Cube (min/median/max), baseline (min/median/max), ratio, target, met; then the commands
    and notes as a list under it."""
    out = [
        "| figure | Cube: min / median / max | baseline: min / median / max | ratio | target | |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        measured = fmt(row.value, row.unit) if row.value is not None else triple(row.stats, row.unit)
        if row.value is None and row.stats["n"] > 1:
            measured += f" (n={row.stats['n']})"
        base = f"{row.baseline}: {triple(row.base_stats, row.unit)}" if row.baseline else "-"
        if row.baseline and row.base_stats["n"] > 1:
            base += f" (n={row.base_stats['n']})"
        ratio_text = f"{row.ratio:.2f}×" if row.baseline and not math.isnan(row.ratio) else "-"
        out.append(f"| {row.what} | {measured} | {base} | {ratio_text} | {row.target or '-'} | {_met(row)} |")
    commands = sorted({row.command for row in rows if row.command})
    notes = [f"{row.what}: {row.note}" for row in rows if row.note]
    if commands:
        out.append("")
        out += [f"Reproduce: `{command}`" for command in commands]
    if notes:
        out.append("")
        out += [f"- {note}" for note in notes]
    return "\n".join(out)
