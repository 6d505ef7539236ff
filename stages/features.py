"""Stage `features`: the model's table, by task kind: labelled snapshots of the entities
(stages/lib/snapshots.py) or one row per table row (stages/lib/rows.py)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from stages.lib.dataset import dataset_from_params
from stages.lib.engine import EngineConfig
from stages.lib.params import section, stage_params
from stages.lib.rows import write_rows
from stages.lib.snapshots import FeaturesConfig, write_snapshots


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.features", description=__doc__)
    parser.add_argument("history_dir", type=Path, help="prepare's output")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)

    params = stage_params(args.params, "features")
    try:
        dataset = dataset_from_params(section(params, "dataset"))
        cfg = FeaturesConfig.from_params(section(params, "features"))
        engine = EngineConfig.from_params(params.get("engine"))
    except ValueError as exc:  # a DatasetConfigError names the file and key
        print(f"features: {exc}", file=sys.stderr)
        return 2
    if dataset.task.rows:
        try:
            return write_rows(args.history_dir, args.out_dir, dataset, cfg, engine)
        except (FileNotFoundError, ValueError) as exc:
            print(f"features: {exc}", file=sys.stderr)
            return 2
    try:
        return write_snapshots(args.history_dir, args.out_dir, dataset, cfg, engine)
    except FileNotFoundError as exc:
        print(f"features: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
