"""predict: score the prediction set with the exported ONNX model (batch predictions).

    python -m stages.predict models/model.onnx models/model_card.json \
        artifacts/features/feature_schema.json artifacts/features/predict.parquet \
        artifacts/split/test.parquet artifacts/predict [--params params.yaml]

Writes `<out>/predictions.parquet`: one row per entity active at the latest date (the entity
key, `snapshot_date`, `score`, `decision` = score >= `evaluate.threshold`, the threshold, and
the model's name, version and data version), what `evergreen publish` copies to the lake. The
model is the ONNX graph the server loads, scored with the same code (`OnnxPredictor`), so a
batch score equals the score the server would answer; the version is the md5 of the ONNX file,
as in the server's prediction log, and the data version is the card's.

A regression (the feature schema's `task`) has no probability and no decision: its rows carry
the model's number in `prediction` instead of `score`, `decision` and `threshold`.

It also writes `<out>/reference_scores.parquet`: the same model's scores on the test split with
its labels (a regression: `prediction` and the true `target`), the distribution monitoring
compares later predictions (and a regression's residuals) with. The test split rather
than the train split: train scores are in-sample (a flexible model is surer there than it will
ever be on new rows), the test split is the latest labelled snapshot, scored out of time.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from stages.card import file_md5
from stages.evaluate import EvaluateConfig
from stages.feature_schema import FeatureSchema, load_schema
from stages.features import SNAPSHOT_COL
from stages.io import read_frame, write_frame
from stages.onnx_predict import OnnxPredictor
from stages.params import PARAMS_FILE, load_params, section

PREDICTIONS = "predictions.parquet"
REFERENCE = "reference_scores.parquet"
META_COLUMNS = ("model_name", "model_version", "data_version")


def model_identity(card: Mapping[str, Any], onnx_md5: str, *, card_path: str) -> dict[str, str]:
    """Name, version (md5 of the ONNX file) and data version of the model, refused when the
    card describes another ONNX file (as the server refuses it)."""
    described = (card.get("onnx") or {}).get("md5")
    if described is not None and described != onnx_md5:
        raise ValueError(
            f"{card_path}: describes ONNX model {described}, but the file's md5 is {onnx_md5} "
            "(rerun `dvc repro` so the card and the model match)"
        )
    data_version = (card.get("data") or {}).get("landing_md5")
    if not data_version:
        raise ValueError(f"{card_path}: lacks data.landing_md5 (the data version)")
    return {
        "model_name": str((card.get("model") or {}).get("name") or "model"),
        "model_version": onnx_md5,
        "data_version": str(data_version),
    }


def score_frame(
    frame: pd.DataFrame,
    predictor: OnnxPredictor,
    schema: FeatureSchema,
    threshold: float,
    identity: Mapping[str, str],
) -> pd.DataFrame:
    """Batch predictions for `frame` (one row per entity and snapshot), sorted by snapshot and
    key: score, decision and threshold, or a regression's prediction. Pure apart from the ONNX
    session."""
    for col in (schema.entity_key, schema.time):
        if col not in frame.columns:
            raise ValueError(f"prediction set: missing column '{col}'")
    if schema.regression:
        outputs = {"prediction": predictor.predict(frame)}
    else:
        scores = predictor.predict_proba(frame)
        outputs = {"score": scores, "decision": scores >= threshold, "threshold": float(threshold)}
    out = pd.DataFrame(
        {
            schema.entity_key: frame[schema.entity_key].to_numpy(),
            SNAPSHOT_COL: pd.to_datetime(frame[schema.time]).dt.date.to_numpy(),
            **outputs,
            **{k: identity[k] for k in META_COLUMNS},
        }
    )
    return out.sort_values([SNAPSHOT_COL, schema.entity_key], kind="stable").reset_index(drop=True)


def reference_scores(
    test: pd.DataFrame, predictor: OnnxPredictor, schema: FeatureSchema
) -> pd.DataFrame:
    """The model's scores on the test split, with the labels: what later predictions are
    compared with."""
    if schema.label not in test.columns:
        raise ValueError(f"test split: missing label column '{schema.label}'")
    if schema.regression:
        outputs = {
            "prediction": predictor.predict(test),
            "target": test[schema.label].astype("float64").to_numpy(),
        }
    else:
        outputs = {
            "score": predictor.predict_proba(test),
            "label": test[schema.label].astype("int64").to_numpy(),
        }
    return pd.DataFrame(
        {
            schema.entity_key: test[schema.entity_key].to_numpy(),
            SNAPSHOT_COL: pd.to_datetime(test[schema.time]).dt.date.to_numpy(),
            **outputs,
        }
    )


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
        evaluate_cfg = EvaluateConfig.from_params(section(load_params(args.params), "evaluate"))
        for path, what in ((args.model, "ONNX model"), (args.card, "model card")):
            if not path.is_file():
                raise FileNotFoundError(f"{path}: {what} not found")
        schema = load_schema(args.schema)
        card = json.loads(args.card.read_text())
        identity = model_identity(card, file_md5(args.model), card_path=str(args.card))
        predictor = OnnxPredictor(args.model, schema)
        frame = read_frame(args.predict_set)
        predictions = score_frame(frame, predictor, schema, evaluate_cfg.threshold, identity)
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
        what = f"{int(predictions['decision'].sum())} at or above {evaluate_cfg.threshold}"
    print(
        f"predict: {len(predictions)} entities scored at {', '.join(dates) or '-'}, {what} "
        f"(model {identity['model_version'][:12]}); reference: {len(reference)} test rows"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
