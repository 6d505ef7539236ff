"""Stage `predict_set`: the rows the prediction run scores, as of the latest day, with the
champion's features (stages/lib/snapshots.py for entity churn, stages/lib/rows.py for the rows
kinds). It reads the champion's feature schema, never a training output, so the daily run
never reaches the training stages."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from stages.contract.feature_schema import load_schema
from stages.lib.dataset import dataset_from_params
from stages.lib.engine import EngineConfig
from stages.lib.params import section, stage_params
from stages.lib.rows import write_rows_predict_set
from stages.lib.snapshots import FeaturesConfig, write_predict_set


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.predict_set", description=__doc__)
    parser.add_argument("history_dir", type=Path, help="prepare's output")
    parser.add_argument("schema", type=Path, help="the champion's feature_schema.json")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)

    params = stage_params(args.params, "predict_set")
    try:
        dataset = dataset_from_params(section(params, "dataset"))
        cfg = FeaturesConfig.from_params(section(params, "features"))
        engine = EngineConfig.from_params(params.get("engine"))
        champion = (load_schema(args.schema), args.schema)
        write = write_rows_predict_set if dataset.task.rows else write_predict_set
        return write(args.history_dir, args.out_dir, dataset, cfg, engine, champion)
    except (FileNotFoundError, ValueError) as exc:
        print(f"predict_set: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
