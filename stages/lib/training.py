"""The core of the `train` stage (stages/train.py): fit the whole predictor (preprocessing +
estimator) on the train split.

    python -m stages.train artifacts/split artifacts/features/feature_schema.json \
        models/model.skops metrics/train.json [--trials-out metrics/trials.csv] \
        [--params params.yaml]

Reads `train.parquet` and `valid.parquet` from the split folder, fits one sklearn Pipeline,
scores it on the validation split and writes the model (skops) and `metrics/train.json`.

The model family is config (`conf/model/<name>.yaml`: estimator, hyperparameters and a
search space); every family is the same Pipeline, `build_preprocessor` then the estimator, so
the stages after this one never need to know which family they hold. With `train.n_trials > 0`
a seeded Optuna search over the model's `search_space` picks the hyperparameters with the best
validation ROC AUC; every trial is a row of the trials table.

Then, with `train.refit` (the default), the chosen hyperparameters are fitted once more on
train + valid, and that is the model written: valid is the latest labelled data before the test
split, and a model that never learns it is one period staler than it needs to be (on data whose
relation moves, a tree trained weeks ago cannot follow it). The test split stays unseen, so
what evaluate, the gate and the monitor read of it is still out of sample; the valid metrics
written are the chosen model's before the refit (valid is in sample after it). A family that
stops early on valid (the MLP) is refitted for the epochs it chose (`best_epoch_`).

A regression (the feature schema's `task`, from a `rows_regression` dataset) fits the regressor
of the family instead (`REGRESSORS`: `ridge`, and the same hyperparameters of
`hist_gradient_boosting` and `random_forest`) on the numeric target, and tunes on valid R².
"""

from __future__ import annotations

import inspect
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
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import log_loss, mean_absolute_error, r2_score, roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from threadpoolctl import threadpool_limits

from stages.contract.feature_schema import FeatureSchema, category_text
from stages.lib.io import DIGITS, round_floats, write_bytes_atomic
from stages.lib.mlp import TabularMLPClassifier

ESTIMATORS: dict[str, type[BaseEstimator]] = {
    "logistic_regression": LogisticRegression,
    "hist_gradient_boosting": HistGradientBoostingClassifier,
    "random_forest": RandomForestClassifier,
    "torch_mlp": TabularMLPClassifier,
}
# a regression's estimator of each family: hgb and rf take the same hyperparameters for both
# kinds; logistic regression's twin is ridge regression with alpha = 1 / C (both are L2-penalised
# linear models, C the inverse of the penalty), so the default `model=logreg` serves every kind;
# `ridge` (conf/model/ridge.yaml) names alpha directly. The MLP has no regressor (yet).
REGRESSORS: dict[str, type[BaseEstimator]] = {
    "logistic_regression": Ridge,
    "ridge": Ridge,
    "hist_gradient_boosting": HistGradientBoostingRegressor,
    "random_forest": RandomForestRegressor,
}
SEARCH_TYPES = ("float", "int", "categorical")
# Missing categories become a category of their own, so "unknown" and "missing" stay apart.
MISSING_CATEGORY = "__missing__"
SPLITS = ("train", "valid")


@dataclass(frozen=True)
class SearchParam:
    """One hyperparameter's range in `model.search_space`.

    `{type: float|int, low, high, log: false, step: null}` or `{type: categorical, choices}`;
    choices may be lists (e.g. hidden layer sizes), which Optuna sees as their JSON text.
    """

    name: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    @classmethod
    def from_params(cls, name: str, raw: Any) -> SearchParam:
        where = f"model.search_space.{name}"
        if not isinstance(raw, Mapping) or raw.get("type") not in SEARCH_TYPES:
            raise ValueError(f"params: {where} needs a `type` in {list(SEARCH_TYPES)}")
        unknown = sorted(set(raw) - {"type", "low", "high", "log", "step", "choices"})
        if unknown:
            raise ValueError(f"params: {where} has unknown keys {unknown}")
        if raw["type"] == "categorical":
            choices = raw.get("choices")
            if not isinstance(choices, Sequence) or isinstance(choices, str) or not choices:
                raise ValueError(f"params: {where}.choices must be a non-empty list")
            return cls(name=name, type="categorical", choices=tuple(_plain(c) for c in choices))
        if "low" not in raw or "high" not in raw:
            raise ValueError(f"params: {where} needs `low` and `high`")
        cast = int if raw["type"] == "int" else float
        low, high = cast(raw["low"]), cast(raw["high"])
        log = bool(raw.get("log", False))
        step = raw.get("step")
        if low > high:
            raise ValueError(f"params: {where}: low {low} > high {high}")
        if log and low <= 0:
            raise ValueError(f"params: {where}: a log range needs low > 0 (got {low})")
        if log and step is not None:
            raise ValueError(f"params: {where}: `step` and `log: true` do not combine")
        return cls(
            name=name,
            type=str(raw["type"]),
            low=low,
            high=high,
            log=log,
            step=None if step is None else cast(step),
        )

    @property
    def _as_json(self) -> bool:
        return any(isinstance(c, list | dict) for c in self.choices)

    def suggest(self, trial: Any) -> Any:
        """This parameter's value for an Optuna trial."""
        if self.type == "categorical":
            if self._as_json:
                picked = trial.suggest_categorical(self.name, [_json(c) for c in self.choices])
                return json.loads(picked)
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.type == "int":
            step = 1 if self.step is None else int(self.step)
            return trial.suggest_int(self.name, self.low, self.high, step=step, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def optuna_value(self, value: Any) -> Any:
        """`value` as Optuna records it (JSON text for list choices)."""
        return _json(value) if self.type == "categorical" and self._as_json else value

    def contains(self, value: Any) -> bool:
        """Whether `value` lies in this range (so a trial can start from it)."""
        if self.type == "categorical":
            return _plain(value) in self.choices
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        return self.low <= value <= self.high and (self.type == "float" or value == int(value))


def _plain(value: Any) -> Any:
    """YAML/OmegaConf containers as plain lists and dicts, so they compare and JSON-encode."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(v) for v in value]
    return value


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class ModelConfig:
    """The `model` params section: which estimator, its hyperparameters, its search space."""

    name: str
    estimator: str
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    search_space: tuple[SearchParam, ...] = ()

    @classmethod
    def from_params(cls, raw: Mapping[str, Any]) -> ModelConfig:
        missing = [k for k in ("name", "estimator") if k not in raw]
        if missing:
            raise KeyError(f"params: section 'model' lacks {missing}")
        hyperparameters = raw.get("hyperparameters") or {}
        if not isinstance(hyperparameters, Mapping):
            raise ValueError("params: model.hyperparameters must be a mapping")
        space = raw.get("search_space") or {}
        if not isinstance(space, Mapping):
            raise ValueError("params: model.search_space must be a mapping")
        return cls(
            name=str(raw["name"]),
            estimator=str(raw["estimator"]),
            hyperparameters={str(k): _plain(v) for k, v in hyperparameters.items()},
            # in name order: Optuna draws each trial's values in the order they are suggested,
            # and DVC compares params as mappings, so a search space whose keys were only
            # reordered is "unchanged" to `dvc repro` and must tune to the same model
            search_space=tuple(
                SearchParam.from_params(name, space[key])
                for name, key in sorted((str(k), k) for k in space)
            ),
        )


@dataclass(frozen=True)
class TrainConfig:
    """The `train` params section."""

    # Threads for BLAS/OpenMP during fit; None or -1 means no limit.
    n_jobs: int | None = 1
    # Optuna trials over model.search_space; 0 fits the config's hyperparameters only.
    n_trials: int = 5
    # the chosen hyperparameters fitted again on train + valid (the model written)
    refit: bool = True

    def __post_init__(self) -> None:
        if self.n_trials < 0:
            raise ValueError(f"train.n_trials: {self.n_trials} is not >= 0")
        if not isinstance(self.refit, bool):
            raise ValueError(f"train.refit: expected true or false, got {self.refit!r}")

    @classmethod
    def from_params(cls, raw: Mapping[str, Any]) -> TrainConfig:
        n_jobs = raw.get("n_jobs", 1)
        return cls(
            n_jobs=None if n_jobs is None else int(n_jobs),
            n_trials=int(raw.get("n_trials", 5)),
            refit=raw.get("refit", True),
        )


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
    features numeric, the label 0/1 without nulls and, when `both_classes`, holding both (a
    regression's target: finite numbers).
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
    if schema.regression:
        if not pd.api.types.is_numeric_dtype(y) or not np.isfinite(y.to_numpy(float)).all():
            raise ValueError(f"{source}: target '{schema.label}' must hold finite numbers")
        return
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
    is the one the imputer replaces, and an integer-coded one its codes' digits ("2"): one
    category per code, which the encoder treats like any text category (an unseen code encodes
    as all zeros); numerics become float64.
    """
    out = frame.loc[:, list(schema.features)].copy()
    for col in schema.numeric:
        out[col] = out[col].astype("float64")
    for col in schema.categorical:
        out[col] = category_text(out[col], schema.category_type(col))
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


def build_estimator(
    model_cfg: ModelConfig,
    seed: int,
    hyperparameters: Mapping[str, Any] | None = None,
    *,
    regression: bool = False,
) -> BaseEstimator:
    """The estimator named by `model_cfg.estimator` (its regressor for a `regression`),
    seeded with `seed`.

    `hyperparameters` replaces the config's own (a tuning trial's values).
    """
    table, kind = (REGRESSORS, "a regression") if regression else (ESTIMATORS, "a classification")
    if model_cfg.estimator not in table:
        raise ValueError(
            f"model.estimator: {model_cfg.estimator!r} is no estimator for {kind} "
            f"(allowed: {', '.join(table)}; choose one with model=<name>, conf/model/)"
        )
    cls = table[model_cfg.estimator]
    hyperparameters = dict(
        model_cfg.hyperparameters if hyperparameters is None else hyperparameters
    )
    if regression and model_cfg.estimator == "logistic_regression" and "C" in hyperparameters:
        hyperparameters["alpha"] = 1.0 / float(hyperparameters.pop("C"))
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
    valid: pd.DataFrame | None = None,
    hyperparameters: Mapping[str, Any] | None = None,
) -> Pipeline:
    """Fit preprocessing + estimator on `train`; returns the whole predictor.

    An estimator whose `fit` takes `eval_set` (the MLP) gets the preprocessed `valid` frame for
    early stopping. `hyperparameters` replaces the config's own.
    """
    check_frame(train, schema, source="train frame")
    preprocess = build_preprocessor(schema)
    estimator = build_estimator(model_cfg, seed, hyperparameters, regression=schema.regression)
    limit = None if n_jobs is None or n_jobs < 1 else n_jobs
    # a fixed thread count keeps floating-point reductions in the same order run to run
    with threadpool_limits(limits=limit):
        # fitted step by step, as Pipeline.fit does, so the valid split can be preprocessed
        x = preprocess.fit_transform(feature_frame(train, schema))
        fit_params: dict[str, Any] = {}
        if valid is not None and "eval_set" in inspect.signature(estimator.fit).parameters:
            check_frame(valid, schema, source="valid frame")
            fit_params["eval_set"] = (
                preprocess.transform(feature_frame(valid, schema)),
                target(valid, schema),
            )
        estimator.fit(x, target(train, schema), **fit_params)
    return Pipeline([("preprocess", preprocess), ("estimator", estimator)])


@dataclass(frozen=True)
class TuneResult:
    """The model to write, how it was chosen, and every trial (columns: trial, score, params).
    `selected` is the best trial's model, fitted on train alone: what the valid metrics judge;
    `model` is it refitted on train + valid (`refit_rows` rows), or the same object."""

    model: Pipeline
    hyperparameters: dict[str, Any]
    best_trial: int
    best_score: float
    n_trials: int
    trials: pd.DataFrame
    selected: Pipeline
    refit_rows: int | None = None


def tune_model(
    train: pd.DataFrame,
    valid: pd.DataFrame,
    schema: FeatureSchema,
    model_cfg: ModelConfig,
    seed: int,
    *,
    n_trials: int,
    n_jobs: int | None = 1,
    refit: bool = False,
) -> TuneResult:
    """Pick hyperparameters by the validation score (ROC AUC, or R² for a regression: see
    `validation_score`) with a seeded, sequential Optuna search; with `refit`, fit them again
    on train + valid (`refit_model`).

    Trial 0 is the config's own hyperparameters (when they lie in the search space), so the
    result is never worse on valid than the hand-set model; the rest are TPE suggestions over
    `model_cfg.search_space`. With `n_trials == 0` or no search space, the config's
    hyperparameters are fitted once (the table's single row). Every trial uses `seed`, so the
    kept model of the best trial is exactly what a refit with its parameters gives.
    """
    check_frame(valid, schema, source="valid frame")
    base = dict(model_cfg.hyperparameters)
    space = model_cfg.search_space
    best: dict[str, Any] = {"score": -math.inf}
    rows: list[dict[str, Any]] = []

    def fit_and_score(number: int, hyperparameters: dict[str, Any]) -> float:
        model = train_model(
            train,
            schema,
            model_cfg,
            seed,
            n_jobs=n_jobs,
            valid=valid,
            hyperparameters=hyperparameters,
        )
        score = validation_score(model, valid, schema)
        rows.append(
            {
                "trial": number,
                "score": round(score, DIGITS),
                **{p.name: _table_value(hyperparameters.get(p.name)) for p in space},
            }
        )
        # strictly better: on a tie the earlier trial (the config's, first) stays
        if score > best["score"]:
            best.update(score=score, model=model, trial=number, params=hyperparameters)
        return score

    if n_trials == 0 or not space:
        fit_and_score(0, base)
        ran = 0
    else:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(
            direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed)
        )
        if all(p.name in base and p.contains(base[p.name]) for p in space):
            study.enqueue_trial({p.name: p.optuna_value(base[p.name]) for p in space})

        def objective(trial: Any) -> float:
            suggested = {p.name: p.suggest(trial) for p in space}
            return fit_and_score(trial.number, {**base, **suggested})

        study.optimize(objective, n_trials=n_trials, n_jobs=1)
        ran = n_trials
    columns = ["trial", "score", *(p.name for p in space)]
    selected = best["model"]
    model, refit_rows = selected, None
    if refit:
        both = pd.concat([train, valid], ignore_index=True)
        model = refit_model(selected, both, schema, model_cfg, seed, best["params"], n_jobs)
        refit_rows = len(both)
    return TuneResult(
        model=model,
        hyperparameters=dict(best["params"]),
        best_trial=int(best["trial"]),
        best_score=float(best["score"]),
        n_trials=ran,
        trials=pd.DataFrame(rows, columns=columns),
        selected=selected,
        refit_rows=refit_rows,
    )


def refit_model(
    selected: Pipeline,
    frame: pd.DataFrame,
    schema: FeatureSchema,
    model_cfg: ModelConfig,
    seed: int,
    hyperparameters: Mapping[str, Any],
    n_jobs: int | None = 1,
) -> Pipeline:
    """The chosen hyperparameters fitted on `frame` (train + valid), with nothing left to stop
    early on: an estimator that stopped early on valid is fitted for the epochs it kept
    (`best_epoch_`), the length the valid split chose."""
    chosen = dict(hyperparameters)
    best_epoch = getattr(selected.named_steps["estimator"], "best_epoch_", None)
    if best_epoch is not None:
        chosen["epochs"] = int(best_epoch)
    return train_model(
        frame, schema, model_cfg, seed, n_jobs=n_jobs, valid=None, hyperparameters=chosen
    )


def _table_value(value: Any) -> Any:
    return _json(value) if isinstance(value, list | dict) else value


def target(frame: pd.DataFrame, schema: FeatureSchema) -> np.ndarray:
    """The label as the estimator fits it: 0/1 int64, or a regression's float64 target."""
    return frame[schema.label].to_numpy(dtype="float64" if schema.regression else "int64")


def predictions(model: Any, frame: pd.DataFrame, schema: FeatureSchema) -> np.ndarray:
    """What the model outputs per row: the probability of label 1, or a regression's number."""
    if schema.regression:
        return np.asarray(model.predict(feature_frame(frame, schema)), dtype="float64")
    return positive_proba(model, frame, schema)


def validation_score(model: Any, valid: pd.DataFrame, schema: FeatureSchema) -> float:
    """What tuning maximises: valid ROC AUC, or a regression's valid R² (the same order as
    its RMSE, reversed)."""
    scores = predictions(model, valid, schema)
    if schema.regression:
        return float(r2_score(target(valid, schema), scores))
    return float(roc_auc_score(target(valid, schema), scores))


def positive_proba(model: Any, frame: pd.DataFrame, schema: FeatureSchema) -> np.ndarray:
    """Predicted probability of label 1 for each row of `frame`."""
    classes = list(model.classes_)
    if 1 not in classes:
        raise ValueError(f"model: classes {classes} do not include the positive label 1")
    proba = model.predict_proba(feature_frame(frame, schema))
    return np.asarray(proba[:, classes.index(1)], dtype="float64")


def train_metrics(
    model: Any,
    train: pd.DataFrame,
    valid: pd.DataFrame,
    schema: FeatureSchema,
    tuning: TuneResult | None = None,
) -> dict[str, Any]:
    """Split sizes and the validation split's ROC AUC and log loss (a regression's MAE, RMSE
    and R²) of `model`; with `tuning`, the hyperparameters kept, the best trial and its score,
    and the rows of the refit (`refit_rows`: train + valid; null when the model is the one
    fitted on train). Pass the model fitted on train (`TuneResult.selected`): valid is in
    sample for a refitted one."""
    y_valid = target(valid, schema)
    scores = predictions(model, valid, schema)
    if schema.regression:
        metrics: dict[str, Any] = {
            "train": {"rows": len(train), "target_mean": float(target(train, schema).mean())},
            "valid": {
                "rows": len(valid),
                "target_mean": float(y_valid.mean()),
                "mae": float(mean_absolute_error(y_valid, scores)),
                "rmse": float(np.sqrt(np.mean((y_valid - scores) ** 2))),
                "r2": float(r2_score(y_valid, scores)),
            },
        }
        return round_floats(_with_tuning(metrics, tuning))
    metrics = {
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
    return round_floats(_with_tuning(metrics, tuning))


def _with_tuning(metrics: dict[str, Any], tuning: TuneResult | None) -> dict[str, Any]:
    if tuning is not None:
        metrics["hyperparameters"] = tuning.hyperparameters
        metrics["tuning"] = {
            "n_trials": tuning.n_trials,
            "best_trial": tuning.best_trial,
            "best_score": tuning.best_score,
        }
        metrics["refit_rows"] = tuning.refit_rows
    return metrics


def write_trials(trials: pd.DataFrame, path: str | Path) -> Path:
    """The trials table as CSV (a DVC plot: score by trial), atomically, same bytes each run."""
    text = trials.to_csv(index=False, lineterminator="\n", float_format="%.10g")
    return write_bytes_atomic(text.encode(), path)
