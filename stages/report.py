"""Stage `report`: the insights page of the batch predictions (HTML and Markdown).

The work is stages/lib/insights.py's (its docstring says how); this module reads the paths
dvc.yaml passes and the params section, and writes the outputs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from stages.contract.feature_schema import load_schema
from stages.contract.onnx_predict import OnnxPredictor
from stages.lib.dataset import dataset_from_params
from stages.lib.insights import (
    ReportConfig,
    check_columns,
    classification_report,
    drivers,
    regression_report,
    scored_frame,
    trend_table,
    write_report,
)
from stages.lib.io import read_frame, read_json
from stages.lib.params import PARAMS_FILE, load_params, section
from stages.lib.predictions import decision_threshold, read_published


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.report", description=__doc__)
    parser.add_argument("predictions", type=Path, help="predict's predictions.parquet")
    parser.add_argument("predict_set", type=Path, help="features' predict.parquet")
    parser.add_argument("model", type=Path, help="the exported ONNX model")
    parser.add_argument("schema", type=Path, help="feature_schema.json")
    parser.add_argument("monitor", type=Path, help="monitor's metrics JSON")
    parser.add_argument("history", type=Path, help="monitor's history CSV")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--params", type=Path, default=Path(PARAMS_FILE))
    args = parser.parse_args(argv)

    try:
        params = load_params(args.params)
        dataset = dataset_from_params(section(params, "dataset"))
        schema = load_schema(args.schema)
        cfg = ReportConfig.from_params(section(params, "report"), dataset, schema)
        threshold = decision_threshold(section(params, "evaluate"))
        predictions = read_frame(args.predictions)
        features = read_frame(args.predict_set)
        check_columns(features, cfg, str(args.predict_set))
        monitor = read_json(args.monitor, "monitor report")
        history = pd.read_csv(args.history) if args.history.is_file() else pd.DataFrame()
        predictor = OnnxPredictor(args.model, schema)
        frame = scored_frame(predictions, features, schema.entity_key)
        output = "prediction" if schema.regression else "score"
        top = frame.nlargest(cfg.top_n, output, keep="first")
        top_drivers = drivers(top, frame, predictor, schema, cfg.drivers)
        published = read_published(str(section(params, "lake.path")))
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"report: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
        return 2
    trend = trend_table(published, predictions, threshold)
    label = dataset.label.name
    title = f"{dataset.name}: {label} insights"
    if schema.regression:
        write_report(
            args.out_dir,
            title,
            regression_report(frame, schema, cfg, label, top, top_drivers, trend, monitor, history),
            len(frame),
        )
        return 0
    report = classification_report(
        frame, schema, cfg, label, top, top_drivers, trend, monitor, history,
        threshold=threshold, rows=dataset.task.rows,
    )  # fmt: skip
    write_report(args.out_dir, title, report, len(frame))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
