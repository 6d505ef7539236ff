"""Stage `train`: fit the whole predictor (preprocessing + estimator), tuned on valid and
refitted on train + valid (`train.refit`).

The work is stages/lib/training.py's (its docstring says how); this module reads the paths
dvc.yaml passes and the params section, and writes the outputs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from stages.contract.feature_schema import load_schema
from stages.lib.io import read_frame, write_metrics
from stages.lib.model_io import save_model
from stages.lib.params import PARAMS_FILE, section, stage_params
from stages.lib.training import (
    SPLITS,
    ModelConfig,
    TrainConfig,
    build_estimator,
    check_frame,
    train_metrics,
    tune_model,
    write_trials,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stages.train",
        description="Fit the model on the train split, score it on the valid split.",
    )
    parser.add_argument("split_dir", type=Path, help="folder with train.parquet, valid.parquet")
    parser.add_argument("schema", type=Path, help="feature_schema.json")
    parser.add_argument("model_out", type=Path, help="model file to write (.skops)")
    parser.add_argument("metrics_out", type=Path, help="metrics JSON to write")
    parser.add_argument(
        "--trials-out", type=Path, help="tuning trials CSV to write (trial, score, params)"
    )
    parser.add_argument("--params", type=Path, default=Path(PARAMS_FILE), help="params.yaml")
    args = parser.parse_args(argv)

    params = stage_params(args.params, "train")
    seed = int(section(params, "seed"))
    model_cfg = ModelConfig.from_params(section(params, "model"))
    train_cfg = TrainConfig.from_params(section(params, "train"))
    schema = load_schema(args.schema)
    try:  # a family with no estimator for the task (ridge for a classification): one line
        build_estimator(model_cfg, seed, regression=schema.regression)
    except ValueError as exc:
        print(f"train: conf/model/{model_cfg.name}.yaml: {exc}", file=sys.stderr)
        return 2

    frames: dict[str, pd.DataFrame] = {}
    for split in SPLITS:
        path = args.split_dir / f"{split}.parquet"
        frames[split] = read_frame(path)
        check_frame(frames[split], schema, source=str(path))

    tuning = tune_model(
        frames["train"],
        frames["valid"],
        schema,
        model_cfg,
        seed,
        n_trials=train_cfg.n_trials,
        n_jobs=train_cfg.n_jobs,
        refit=train_cfg.refit,
    )
    # valid judges the model chosen on train; the one written also learnt valid (train.refit)
    metrics = train_metrics(tuning.selected, frames["train"], frames["valid"], schema, tuning)
    save_model(tuning.model, args.model_out)
    write_metrics(args.metrics_out, metrics)
    if args.trials_out is not None:
        write_trials(tuning.trials, args.trials_out)
    valid = metrics["valid"]
    scored = (
        f"r2={valid['r2']} rmse={valid['rmse']}"
        if schema.regression
        else f"roc_auc={valid['roc_auc']} log_loss={valid['log_loss']}"
    )
    refit = f"; refitted on train + valid, {tuning.refit_rows} rows" if tuning.refit_rows else ""
    # the class fitted: logistic_regression's regressor is a Ridge (stages/lib/training.py)
    fitted = type(_final_step(tuning.model)).__name__
    print(
        f"train: {model_cfg.name} ({model_cfg.estimator}: {fitted}) on "
        f"{metrics['train']['rows']} rows, "
        f"{tuning.n_trials} tuning trial(s), best #{tuning.best_trial}; valid {scored}{refit}"
    )
    return 0


def _final_step(model: object) -> object:
    """A pipeline's last step (the estimator), or the model itself."""
    steps = getattr(model, "steps", None)
    return steps[-1][1] if steps else model


if __name__ == "__main__":
    raise SystemExit(main())
