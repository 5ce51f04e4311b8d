"""`python -m bench [names...] [--quick] [--duration S] [--repeat N] [--json FILE] [--write]`: runs the benchmarks
(all, or the ones named, in the order given), prints each one's figures as it finishes, and optionally writes them to
a JSON file and into BENCHMARKS.md (each benchmark's table replaces the text between its markers, so a partial run
updates only its own tables). A benchmark that fails is reported and the others still run; every benchmark cleans
up its containers, processes and swarm on the way out.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pathlib
import re
import sys
import time
import traceback

from . import BENCHMARKS
from .common import PYZ, ROOT, machine
from .stats import console, markdown

DOC = ROOT / "BENCHMARKS.md"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="few samples and short runs: a smoke test, not figures")
    parser.add_argument("--duration", type=float, default=None, help="seconds of load for `api` (default 60)")
    parser.add_argument("--repeat", type=int, default=None, help="samples per figure (each benchmark has a default)")
    parser.add_argument("--json", type=pathlib.Path, default=None, help="also write every figure to this file")
    parser.add_argument("--write", action="store_true", help="put the tables into BENCHMARKS.md")
    options = parser.parse_args(argv)
    unknown = [name for name in options.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}: choose from {', '.join(BENCHMARKS)}")
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse(sys.argv[1:] if argv is None else argv)
    if not PYZ.exists():
        print(f"{PYZ} is missing: run ./build.sh first", file=sys.stderr)
        return 2
    names = options.names or list(BENCHMARKS)
    if any(name not in ("scheduling", "finished", "metrics", "etcd_store") for name in names):  # these run no container
        from . import engine

        problem = engine.healthy()
        if problem:
            print(f"cannot benchmark: {problem}. A private engine: `eval $(bench/engine.sh start)`", file=sys.stderr)
            return 2
    info = machine()
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, {info['memory_mib']} MiB, {info['os']}, kernel "
        f"{info['kernel']}, Docker {info['docker']}, {info['python']}; load {info['load_before']:.2f}; "
        f"{info['date']}",
        flush=True,
    )
    results, failed = {}, []
    began = time.monotonic()
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        print(f"\n== {name}: {module.TITLE}", flush=True)
        started = time.monotonic()
        try:
            rows = module.run(options)
        except Exception:
            traceback.print_exc()
            failed.append(name)
            continue
        elapsed = time.monotonic() - started
        print(console(rows), flush=True)
        print(f"  ({elapsed:.0f} s)", flush=True)
        results[name] = {"title": module.TITLE, "seconds": round(elapsed, 1), "rows": rows}
    print(f"\nall done in {time.monotonic() - began:.0f} s" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    if options.json:
        options.json.write_text(
            json.dumps(
                {
                    "machine": info,
                    "quick": options.quick,
                    "results": {
                        name: {**r, "rows": [row.to_dict() for row in r["rows"]]} for name, r in results.items()
                    },
                },
                indent=1,
            )
        )
    if options.write and results:
        write_doc(results, info, options)
    return 1 if failed else 0


def write_doc(results: dict, info: dict, options) -> None:
    """Replace each benchmark's section of BENCHMARKS.md (between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`),
    and the machine line of the last run."""
    text = DOC.read_text() if DOC.exists() else ""
    for name, result in results.items():
        body = (
            f"<!-- bench:{name} -->\n_Measured {info['date']}{' (--quick)' if options.quick else ''}, "
            f"{result['seconds']:.0f} s._\n\n{markdown(result['rows'])}\n<!-- /bench:{name} -->"
        )
        pattern = re.compile(rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->", re.S)
        if pattern.search(text):
            text = pattern.sub(lambda _: body, text)
        else:
            text += f"\n\n{body}\n"
    machine_line = (
        f"<!-- machine -->{info['cpu']}, {info['cores']} cores, {info['memory_mib']:,} MiB RAM, "
        f"{info['os']}, kernel {info['kernel']}, Docker engine {info['docker']}, {info['python']}"
        f"<!-- /machine -->"
    )
    text = re.sub(r"<!-- machine -->.*?<!-- /machine -->", lambda _: machine_line, text, flags=re.S)
    DOC.write_text(text)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    sys.exit(main())
