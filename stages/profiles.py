"""Stage `profiles`: per-partition statistics of the validated data, what drift compares.

The work is stages/lib/profiling.py's (its docstring says how); this module reads the paths
dvc.yaml passes and the params section, and writes the outputs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pyarrow.parquet as pq

from stages.lib.dataset import dataset_from_params
from stages.lib.io import validated_partitions, write_json
from stages.lib.params import section, stage_params
from stages.lib.profiling import ProfileConfig, profile_partition


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
    for table in dataset.tables:
        partitions = validated_partitions(args.validated_dir, table.name)
        wanted = {f"date={d}.json" for d in partitions}
        for stale in sorted((args.out_dir / table.name).glob("date=*.json")):
            if stale.name not in wanted:  # a partition no longer validated
                stale.unlink()
        rows = 0
        for date, path in partitions.items():
            frame = pq.read_table(path).to_pandas()
            profile = profile_partition(frame, table, top_k=cfg.top_k)
            write_json(profile, args.out_dir / table.name / f"date={date}.json")
            rows += profile["rows"]
        print(f"profile {table.name}: {len(partitions)} partitions, {rows} rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
