"""Stage `prepare`: merge the validated partitions into each table's history, incrementally.

The work is stages/lib/merge.py's (its docstring says how); this module reads the paths
dvc.yaml passes and the params section, and writes the outputs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from stages.lib.dataset import DatasetConfigError, dataset_from_params
from stages.lib.engine import EngineConfig
from stages.lib.merge import prepare_fingerprint, run_prepare
from stages.lib.params import section, stage_params


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.prepare", description=__doc__)
    parser.add_argument("validated_dir", type=Path, help="validate's output")
    parser.add_argument("out_dir", type=Path, help="histories, counts and manifest")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)

    params = stage_params(args.params, "prepare")
    try:
        dataset = dataset_from_params(section(params, "dataset"))
    except DatasetConfigError as exc:  # one line naming the file and key, not a traceback
        print(f"prepare: {exc}", file=sys.stderr)
        return 2
    fp = prepare_fingerprint(section(params, "dataset.tables"), dataset)
    try:
        engine = EngineConfig.from_params(params.get("engine"))
    except ValueError as exc:
        print(f"prepare: {exc}", file=sys.stderr)
        return 2
    try:
        run = run_prepare(args.validated_dir, args.out_dir, dataset, fp, engine)
    except FileNotFoundError as exc:
        print(f"prepare: {exc} in {args.validated_dir} (run the validate stage)", file=sys.stderr)
        return 1
    if run.rebuilt:
        print(f"prepare: {run.rebuilt}")
    for name, entry in run.tables.items():
        plan = run.plans[name]
        did = {
            "keep": "unchanged",
            "append": f"{len(plan.partitions)} new partition(s) upserted",
            "rebuild": f"rebuilt from {len(plan.partitions)} partitions ({plan.reason})",
        }[plan.mode]
        rows = ", ".join(f"{n} {r} rows" for n, r in entry["rows"].items())
        print(f"prepare {name}: {did}; history: {rows}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
