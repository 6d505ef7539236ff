"""The `train` stage: fit the whole predictor (preprocessing + estimator) on the train split.

    python -m stages.train artifacts/split artifacts/features/feature_schema.json \
        models/model.skops metrics/train.json [--params params.yaml]

Reads `train.parquet` and `valid.parquet` from the split folder, fits one sklearn Pipeline,
scores it on the validation split and writes the model (skops) and `metrics/train.json`.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from threadpoolctl import threadpool_limits

from stages.feature_schema import FeatureSchema, load_schema
from stages.io import write_bytes_atomic
from stages.model_io import save_model
from stages.params import PARAMS_FILE, load_params, section

ESTIMATORS: dict[str, type[BaseEstimator]] = {
    "logistic_regression": LogisticRegression,
    "hist_gradient_boosting": HistGradientBoostingClassifier,
}
# Missing categories become a category of their own, so "unknown" and "missing" stay apart.
MISSING_CATEGORY = "__missing__"
SPLITS = ("train", "valid")
DIGITS = 6


@dataclass(frozen=True)
class ModelConfig:
    """The `model` params section: which estimator, and its hyperparameters."""

    name: str
    estimator: str
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_params(cls, raw: Mapping[str, Any]) -> ModelConfig:
        missing = [k for k in ("name", "estimator") if k not in raw]
        if missing:
            raise KeyError(f"params: section 'model' lacks {missing}")
        hyperparameters = raw.get("hyperparameters") or {}
        if not isinstance(hyperparameters, Mapping):
            raise ValueError("params: model.hyperparameters must be a mapping")
        return cls(
            name=str(raw["name"]),
            estimator=str(raw["estimator"]),
            hyperparameters=dict(hyperparameters),
        )


@dataclass(frozen=True)
class TrainConfig:
    """The `train` params section."""

    # Threads for BLAS/OpenMP during fit; None or -1 means no limit.
    n_jobs: int | None = 1

    @classmethod
    def from_params(cls, raw: Mapping[str, Any]) -> TrainConfig:
        n_jobs = raw.get("n_jobs", 1)
        return cls(n_jobs=None if n_jobs is None else int(n_jobs))


def check_frame(
    frame: pd.DataFrame,
    schema: FeatureSchema,
    *,
    source: str,
    label: bool = True,
    both_classes: bool = True,
) -> None:
    """Raise ValueError naming `source` if `frame` cannot be trained on or scored.

    Checks: not empty, every schema feature (and the label when `label`) present, numeric
    features numeric, the label 0/1 without nulls and, when `both_classes`, holding both.
    """
    if frame.empty:
        raise ValueError(f"{source}: no rows (expected at least one example)")
    needed = [*schema.features, schema.label] if label else list(schema.features)
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing} required by the feature schema")
    not_numeric = [c for c in schema.numeric if not pd.api.types.is_numeric_dtype(frame[c])]
    if not_numeric:
        raise ValueError(f"{source}: numeric feature(s) {not_numeric} have a non-numeric dtype")
    if not label:
        return
    y = frame[schema.label]
    if y.isna().any():
        raise ValueError(f"{source}: label '{schema.label}' has {int(y.isna().sum())} null(s)")
    values = sorted(pd.unique(y).tolist())
    if not set(values) <= {0, 1}:
        raise ValueError(f"{source}: label '{schema.label}' must be 0/1, found {values[:10]}")
    if both_classes and len(values) < 2:
        raise ValueError(
            f"{source}: label '{schema.label}' has a single class {values} in {len(y)} rows "
            "(expected both 0 and 1)"
        )


def feature_frame(frame: pd.DataFrame, schema: FeatureSchema) -> pd.DataFrame:
    """The model's input: the schema's features in schema order, with normalised dtypes.

    Categoricals become pandas `str` so every missing marker (None, pd.NA, NaN) is NaN, which
    is the one the imputer replaces; numerics become float64.
    """
    out = frame.loc[:, list(schema.features)].copy()
    for col in schema.numeric:
        out[col] = out[col].astype("float64")
    for col in schema.categorical:
        out[col] = out[col].astype("str")
    return out


def build_preprocessor(schema: FeatureSchema) -> ColumnTransformer:
    """Impute + scale numerics, impute + one-hot categoricals; unknown categories encode as 0s.

    Categoricals with allowed values in the schema get exactly those columns (plus one for
    missing), so the model's width does not depend on which values one split happened to hold.
    """
    transformers: list[tuple[str, Any, list[str]]] = []
    if schema.numeric:
        numeric = Pipeline(
            [("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]
        )
        transformers.append(("numeric", numeric, list(schema.numeric)))
    fixed = [c for c in schema.categorical if schema.categories.get(c)]
    learned = [c for c in schema.categorical if not schema.categories.get(c)]
    if fixed:
        categories = [_with_missing(schema.categories[c]) for c in fixed]
        transformers.append(("categorical_fixed", _categorical(categories), fixed))
    if learned:
        transformers.append(("categorical_learned", _categorical("auto"), learned))
    if not transformers:
        raise ValueError("feature schema: no numeric or categorical features to train on")
    # dense output: HistGradientBoosting does not take sparse input
    return ColumnTransformer(transformers, remainder="drop", sparse_threshold=0.0)


def _with_missing(values: Sequence[str]) -> list[str]:
    values = [str(v) for v in values]
    return values if MISSING_CATEGORY in values else [*values, MISSING_CATEGORY]


def _categorical(categories: str | list[list[str]]) -> Pipeline:
    return Pipeline(
        [
            ("impute", SimpleImputer(strategy="constant", fill_value=MISSING_CATEGORY)),
            (
                "onehot",
                OneHotEncoder(categories=categories, handle_unknown="ignore", sparse_output=False),
            ),
        ]
    )


def build_estimator(model_cfg: ModelConfig, seed: int) -> BaseEstimator:
    """The estimator named by `model_cfg.estimator`, seeded with `seed`."""
    if model_cfg.estimator not in ESTIMATORS:
        raise ValueError(
            f"model.estimator: unknown estimator {model_cfg.estimator!r} "
            f"(allowed: {', '.join(ESTIMATORS)})"
        )
    cls = ESTIMATORS[model_cfg.estimator]
    hyperparameters = dict(model_cfg.hyperparameters)
    if "random_state" in hyperparameters:
        raise ValueError(
            "model.hyperparameters.random_state: set the top-level `seed` param instead"
        )
    unknown = sorted(set(hyperparameters) - set(cls().get_params()))
    if unknown:
        raise ValueError(
            f"model.hyperparameters: {unknown} are not parameters of {cls.__name__} "
            f"(estimator {model_cfg.estimator!r})"
        )
    return cls(**hyperparameters, random_state=seed)


def train_model(
    train: pd.DataFrame,
    schema: FeatureSchema,
    model_cfg: ModelConfig,
    seed: int,
    *,
    n_jobs: int | None = 1,
) -> Pipeline:
    """Fit preprocessing + estimator on `train`; returns the whole predictor."""
    check_frame(train, schema, source="train frame")
    model = Pipeline(
        [
            ("preprocess", build_preprocessor(schema)),
            ("estimator", build_estimator(model_cfg, seed)),
        ]
    )
    limit = None if n_jobs is None or n_jobs < 1 else n_jobs
    # a fixed thread count keeps floating-point reductions in the same order run to run
    with threadpool_limits(limits=limit):
        model.fit(feature_frame(train, schema), train[schema.label].to_numpy(dtype="int64"))
    return model


def positive_scores(model: Any, frame: pd.DataFrame, schema: FeatureSchema) -> np.ndarray:
    """Predicted probability of label 1 for each row of `frame`."""
    classes = list(model.classes_)
    if 1 not in classes:
        raise ValueError(f"model: classes {classes} do not include the positive label 1")
    proba = model.predict_proba(feature_frame(frame, schema))
    return np.asarray(proba[:, classes.index(1)], dtype="float64")


def train_metrics(
    model: Any, train: pd.DataFrame, valid: pd.DataFrame, schema: FeatureSchema
) -> dict[str, Any]:
    """Split sizes and the validation split's ROC AUC and log loss."""
    y_valid = valid[schema.label].to_numpy(dtype="int64")
    scores = positive_scores(model, valid, schema)
    return round_floats(
        {
            "train": {
                "rows": len(train),
                "positives": int(train[schema.label].sum()),
            },
            "valid": {
                "rows": len(valid),
                "positives": int(y_valid.sum()),
                "roc_auc": float(roc_auc_score(y_valid, scores)),
                "log_loss": float(log_loss(y_valid, scores, labels=[0, 1])),
            },
        }
    )


def round_floats(obj: Any, digits: int = DIGITS) -> Any:
    """Round every float in a nested structure; numpy scalars become Python numbers.

    Rounding keeps last-bit differences between BLAS builds out of the metrics files.
    """
    if isinstance(obj, Mapping):
        return {str(k): round_floats(v, digits) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [round_floats(v, digits) for v in obj]
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        value = float(obj)
        if not math.isfinite(value):
            raise ValueError(f"metrics: non-finite value {value}")
        return round(value, digits) + 0.0  # + 0.0 turns -0.0 into 0.0
    return obj


def write_metrics(path: str | Path, payload: Any) -> Path:
    """Deterministic JSON, atomically: floats rounded, keys sorted, no NaN, trailing newline."""
    text = json.dumps(round_floats(payload), indent=2, sort_keys=True, allow_nan=False)
    return write_bytes_atomic((text + "\n").encode(), path)


def read_frame(path: str | Path) -> pd.DataFrame:
    """Read one parquet file, naming it if it is absent."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: parquet file not found")
    return pd.read_parquet(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stages.train",
        description="Fit the model on the train split, score it on the valid split.",
    )
    parser.add_argument("split_dir", type=Path, help="folder with train.parquet, valid.parquet")
    parser.add_argument("schema", type=Path, help="feature_schema.json")
    parser.add_argument("model_out", type=Path, help="model file to write (.skops)")
    parser.add_argument("metrics_out", type=Path, help="metrics JSON to write")
    parser.add_argument("--params", type=Path, default=Path(PARAMS_FILE), help="params.yaml")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    seed = int(section(params, "seed"))
    model_cfg = ModelConfig.from_params(section(params, "model"))
    train_cfg = TrainConfig.from_params(section(params, "train"))
    schema = load_schema(args.schema)

    frames: dict[str, pd.DataFrame] = {}
    for split in SPLITS:
        path = args.split_dir / f"{split}.parquet"
        frames[split] = read_frame(path)
        check_frame(frames[split], schema, source=str(path))

    model = train_model(frames["train"], schema, model_cfg, seed, n_jobs=train_cfg.n_jobs)
    metrics = train_metrics(model, frames["train"], frames["valid"], schema)
    save_model(model, args.model_out)
    write_metrics(args.metrics_out, metrics)
    print(
        f"train: {model_cfg.name} ({model_cfg.estimator}) on {metrics['train']['rows']} rows; "
        f"valid roc_auc={metrics['valid']['roc_auc']} log_loss={metrics['valid']['log_loss']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
