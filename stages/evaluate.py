"""Stage `evaluate`: score the model on the test split; metrics, slices and DVC plots.

The work is stages/lib/evaluation.py's (its docstring says how); this module reads the paths
dvc.yaml passes and the params section, and writes the outputs."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from stages.contract.feature_schema import load_schema
from stages.lib.evaluation import (
    EvaluateConfig,
    _evaluate_regression,
    evaluate_model,
    feature_importance,
    slice_metrics,
    threshold_warning,
    write_importance,
    write_plots,
    write_residuals,
)
from stages.lib.io import read_frame, write_metrics
from stages.lib.model_io import load_model
from stages.lib.params import PARAMS_FILE, section, stage_params
from stages.lib.regression import residual_table
from stages.lib.training import (
    check_frame,
    positive_proba,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stages.evaluate",
        description="Score the model on the test split; write metrics and DVC plot files.",
    )
    parser.add_argument("model", type=Path, help="model file (.skops)")
    parser.add_argument("test", type=Path, help="test split parquet")
    parser.add_argument("schema", type=Path, help="feature_schema.json")
    parser.add_argument("metrics_out", type=Path, help="metrics JSON to write")
    parser.add_argument("plots_dir", type=Path, help="folder for the plot files")
    parser.add_argument(
        "--slices-out", type=Path, help="metrics JSON to write with the per-slice metrics"
    )
    parser.add_argument("--params", type=Path, default=Path(PARAMS_FILE), help="params.yaml")
    args = parser.parse_args(argv)

    params = stage_params(args.params, "evaluate")
    cfg = EvaluateConfig.from_params(section(params, "evaluate"))
    seed = int(section(params, "seed"))
    schema = load_schema(args.schema)
    model = load_model(args.model)
    trained_on = [str(c) for c in getattr(model, "feature_names_in_", schema.features)]
    if trained_on != list(schema.features):
        raise ValueError(
            f"{args.model}: trained on features {trained_on}, but {args.schema} lists "
            f"{list(schema.features)}"
        )
    test = read_frame(args.test)
    check_frame(test, schema, source=str(args.test))
    if schema.regression:
        return _evaluate_regression(model, test, schema, cfg, seed, args)

    scores = positive_proba(model, test, schema)
    y = test[schema.label].to_numpy()
    metrics, tables = evaluate_model(y, scores, cfg.threshold, cfg.calibration_bins)
    by_slice = slice_metrics(test, y, scores, cfg.slices, cfg.threshold, source=str(args.test))
    importance = feature_importance(model, test, schema, repeats=cfg.importance_repeats, seed=seed)
    write_metrics(args.metrics_out, metrics)
    if args.slices_out is not None:
        write_metrics(args.slices_out, by_slice)
    write_plots(tables, args.plots_dir)
    write_residuals(residual_table(y, scores), args.plots_dir)
    write_importance(importance, args.plots_dir)
    print(
        f"evaluate: {metrics['n']} rows, roc_auc={metrics['roc_auc']} "
        f"pr_auc={metrics['pr_auc']} f1@{cfg.threshold}={metrics['f1']}"
    )
    warning = threshold_warning(scores, y, cfg.threshold)
    if warning:
        print(f"evaluate: warning: {warning}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
