"""Cube's benchmarks, run on demand (never by the test suite): `python -m bench [names...]` runs all of them or the
ones named, each against its baseline measured in the same run, and prints min/median/max, the baseline beside it,
the ratio and the command that reproduces it. `--write` puts the tables into BENCHMARKS.md.

One module per benchmark, each with `NAME`, `TITLE` and `run(options) -> list[stats.Row]`; `bench.stats` summarises,
`bench.common` starts and always cleans up Cube processes, `bench.engine` holds the raw Docker and Swarm baselines.
"""

BENCHMARKS = (
    "one_task",
    "job100",
    "kill",
    "worker_kill",
    "scheduling",
    "api",
    "footprint",
    "cli",
    "image_push",
    "mesh",
    "finished",
    "metrics",
    "etcd_store",
)
