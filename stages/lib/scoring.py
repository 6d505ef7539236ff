"""The core of the `predict` stage (stages/predict.py): score the prediction set with the exported
ONNX model (batch predictions).

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

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from stages.contract.card import ModelCard, file_md5
from stages.contract.feature_schema import FeatureSchema
from stages.contract.onnx_predict import OnnxPredictor
from stages.lib.predictions import META_COLUMNS, SNAPSHOT_COL


def model_identity(card: ModelCard, onnx_path: str | Path) -> dict[str, str]:
    """Name, version (md5 of the ONNX file) and data version of the model, refused when the
    card describes another ONNX file (as the server refuses it)."""
    onnx_md5 = file_md5(onnx_path)
    card.check_onnx(onnx_md5, onnx_path)
    if not card.data_version:
        raise ValueError(f"{card.source}: lacks data.landing_md5 (the data version)")
    return {
        "model_name": card.name or "model",
        "model_version": onnx_md5,
        "data_version": str(card.data_version),
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
