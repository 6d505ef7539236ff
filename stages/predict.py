"""Stage `predict`: score the prediction set with the exported ONNX model.

The work is stages/lib/scoring.py's (its docstring says how); this module reads the paths
dvc.yaml passes and the params section, and writes the outputs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from stages.contract.card import ModelCard
from stages.contract.feature_schema import load_schema
from stages.contract.onnx_predict import OnnxPredictor
from stages.lib.io import read_frame, write_frame
from stages.lib.params import PARAMS_FILE, load_params, section
from stages.lib.predictions import PREDICTIONS, REFERENCE, SNAPSHOT_COL, decision_threshold
from stages.lib.scoring import model_identity, reference_scores, score_frame


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.predict", description=__doc__)
    parser.add_argument("model", type=Path, help="the exported ONNX model")
    parser.add_argument("card", type=Path, help="its model card")
    parser.add_argument("schema", type=Path, help="feature_schema.json")
    parser.add_argument("predict_set", type=Path, help="features' predict.parquet")
    parser.add_argument("test", type=Path, help="the test split (reference scores)")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--params", type=Path, default=Path(PARAMS_FILE))
    args = parser.parse_args(argv)

    try:
        threshold = decision_threshold(section(load_params(args.params), "evaluate"))
        if not args.model.is_file():
            raise FileNotFoundError(f"{args.model}: ONNX model not found")
        schema = load_schema(args.schema)
        identity = model_identity(ModelCard.read(args.card), args.model)
        predictor = OnnxPredictor(args.model, schema)
        frame = read_frame(args.predict_set)
        predictions = score_frame(frame, predictor, schema, threshold, identity)
        reference = reference_scores(read_frame(args.test), predictor, schema)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"predict: {exc}", file=sys.stderr)
        return 2
    write_frame(predictions, args.out_dir / PREDICTIONS)
    write_frame(reference, args.out_dir / REFERENCE)
    dates = sorted({str(d) for d in predictions[SNAPSHOT_COL]})
    if schema.regression:
        what = f"mean prediction {predictions['prediction'].mean():.4g}"
    else:
        what = f"{int(predictions['decision'].sum())} at or above {threshold}"
    print(
        f"predict: {len(predictions)} rows scored at {', '.join(dates) or '-'}, {what} "
        f"(model {identity['model_version'][:12]}); reference: {len(reference)} test rows"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
