"""Stage `profiles`: per-partition statistics of the validated data, what drift compares.

The work is stages/lib/profiling.py's (its docstring says how), run incrementally by
stages/lib/profile_store.py;
this module reads the paths dvc.yaml passes and the params section, and reports."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from stages.lib.dataset import dataset_from_params
from stages.lib.params import section, stage_params
from stages.lib.profile_store import profiles_fingerprint, run_profiles
from stages.lib.profiling import ProfileConfig


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.profiles", description=__doc__)
    parser.add_argument("validated_dir", type=Path, help="validate's output")
    parser.add_argument("out_dir", type=Path, help="one JSON profile per table and partition")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)

    params = stage_params(args.params, "profiles")
    try:
        dataset = dataset_from_params(section(params, "dataset"))
        cfg = ProfileConfig.from_params(section(params, "profile"))
    except ValueError as exc:  # a DatasetConfigError names the file and key
        print(f"profiles: {exc}", file=sys.stderr)
        return 2
    fp = profiles_fingerprint(section(params, "dataset.tables"), section(params, "profile"))
    run = run_profiles(args.validated_dir, args.out_dir, dataset, cfg, fp)
    if run.rebuilt:
        print(f"profiles: {run.rebuilt}")
    for table, (partitions, rows, profiled) in run.tables.items():
        print(f"profile {table}: {partitions} partitions, {rows} rows ({profiled} profiled now)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
