"""Stage `report`: the insights page of the batch predictions (HTML and Markdown).

The work is stages/lib/insights.py's (its docstring says how); this module reads the paths
dvc.yaml passes and the params section, and writes the outputs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from stages.contract.feature_schema import load_schema
from stages.contract.onnx_predict import OnnxPredictor
from stages.lib.dataset import dataset_from_params
from stages.lib.history import read_monitor_history
from stages.lib.insights import (
    EXTRA_SECTIONS,
    PageInputs,
    ReportConfig,
    build_page,
    check_columns,
    drivers,
    local_times,
    row_ids,
    scored_frame,
    target_range,
    trend_table,
    words_for,
    write_report,
)
from stages.lib.io import read_frame, read_json
from stages.lib.params import PARAMS_FILE, load_params, section
from stages.lib.predictions import decision_threshold, read_published
from stages.lib.shadow_page import served_section


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
    parser.add_argument(
        "--train",
        type=Path,
        help="the training split: a regression's predictions are checked against the range "
        "of its target there",
    )
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
        # this dataset's rows only: a history copied from another project is not drawn
        history, ignored = read_monitor_history(args.history, dataset.name)
        if ignored:
            print(f"report: {ignored}", file=sys.stderr)
        predictor = OnnxPredictor(args.model, schema)
        frame = scored_frame(predictions, features, schema.entity_key)
        output = "prediction" if schema.regression else "score"
        top = frame.nlargest(cfg.top_n, output, keep="first")
        top_drivers = drivers(top, frame, predictor, schema, cfg.drivers)
        published = read_published(str(section(params, "lake.path")))
        observed = (
            target_range(read_frame(args.train), schema.label)
            if schema.regression and args.train is not None
            else None
        )
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"report: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
        return 2
    trend = trend_table(published, predictions, threshold)
    label = dataset.label.name
    inputs = PageInputs(
        frame=frame,
        schema=schema,
        cfg=cfg,
        words=words_for(dataset, cfg.noun),
        label=label,
        top=local_times(top, dataset),
        top_drivers=top_drivers,
        trend=trend,
        monitor=monitor,
        history=history,
        threshold=threshold,
        ids=row_ids(dataset, schema, top),
        observed=observed,
    )
    page = build_page(inputs, (*EXTRA_SECTIONS, served_section))
    write_report(args.out_dir, f"{dataset.name}: {label} insights", page, len(frame))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
