"""Stage `export`: the whole predictor as one ONNX graph, checked against the native model.

The work is stages/lib/onnx_export.py's (its docstring says how); this module reads the paths
dvc.yaml passes and the params section, and writes the outputs."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from sklearn.pipeline import Pipeline

from stages.contract.feature_schema import load_schema
from stages.lib.io import read_frame, write_bytes_atomic
from stages.lib.model_io import load_model
from stages.lib.onnx_export import (
    ExportConfig,
    ParityError,
    export_metrics,
    export_onnx,
    verify_parity,
)
from stages.lib.params import PARAMS_FILE, load_params
from stages.lib.training import check_frame

# what a person compares across runs (`dvc metrics show`): the parity figures and the graph's
# size; the estimator, the limits and the rows checked are the report's
HEADLINE = ("decision_agreement", "max_abs_diff", "onnx_bytes")


def headline(report: dict) -> dict:
    """The parity report's scalars for the metrics file, its edge cases' parity nested."""
    edges = report.get("edge_cases") or {}
    return {
        **{k: report.get(k) for k in HEADLINE},
        "edge_cases": {k: edges.get(k) for k in HEADLINE[:2]},
    }


def _json(payload: dict) -> bytes:
    return (json.dumps(payload, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stages.export",
        description="Export the model as one ONNX graph; check its parity on the test split.",
    )
    parser.add_argument("model", type=Path, help="model file (.skops)")
    parser.add_argument("test", type=Path, help="test split parquet")
    parser.add_argument("schema", type=Path, help="feature_schema.json")
    parser.add_argument("onnx_out", type=Path, help="ONNX file to write")
    parser.add_argument("metrics_out", type=Path, help="parity metrics JSON (the headline)")
    parser.add_argument(
        "--report-out", type=Path, help="the whole parity report JSON (estimator, limits, rows)"
    )
    parser.add_argument("--params", type=Path, default=Path(PARAMS_FILE), help="params.yaml")
    args = parser.parse_args(argv)

    try:
        cfg = ExportConfig.from_params(load_params(args.params))
        schema = load_schema(args.schema)
        model = load_model(args.model)
        if not isinstance(model, Pipeline):
            raise ValueError(f"{args.model}: expected a Pipeline, found {type(model).__name__}")
        test = read_frame(args.test)
        check_frame(test, schema, source=str(args.test), label=False)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"export: {exc}", file=sys.stderr)
        return 1
    name = type(model[-1]).__name__
    try:
        graph = export_onnx(model, schema).SerializeToString()
    except Exception as exc:  # skl2onnx and onnx raise many types; name the model, not a trace
        print(f"export: {args.model}: cannot convert {name} to ONNX: {exc}", file=sys.stderr)
        return 1
    try:
        results = verify_parity(model, graph, test, schema, cfg)
    except ParityError as exc:
        print(f"export: {args.model}: {exc}", file=sys.stderr)
        return 1
    write_bytes_atomic(graph, args.onnx_out)
    metrics = export_metrics(model, graph, results, cfg)
    if args.report_out is not None:
        write_bytes_atomic(_json(metrics), args.report_out)
    write_bytes_atomic(_json(headline(metrics)), args.metrics_out)
    agreement = metrics["decision_agreement"]
    checked = (
        f"max relative |Δy| = {metrics['max_abs_diff']:.2g}"
        if agreement is None
        else f"max |Δp| = {metrics['max_abs_diff']:.2g}, same decision at {cfg.threshold:g} for "
        f"{agreement:.4%}"
    )
    written = f"{args.onnx_out} ({len(graph)} bytes)"
    print(f"export: {name} -> {written}; test rows {metrics['rows']}: {checked}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
