"""The core of the `evaluate` stage (stages/evaluate.py): score the model on the test split; write
metrics and DVC plots.

    python -m stages.evaluate models/model.skops artifacts/split/test.parquet \
        artifacts/features/feature_schema.json metrics/evaluate.json plots \
        [--slices-out artifacts/evaluate/slices.json] [--params params.yaml]

Plots (rendered by `dvc plots show`): `roc.json`, `pr.json`, `calibration.json`,
`confusion.csv` (one row per example, as DVC's confusion template expects) and `importance.json`
(permutation importance of each input feature, as the drop in test ROC AUC).

Slices (`evaluate.slices`): metrics per value of a column, or per right-open bin of a numeric
column, so a model that is better on average but worse for one country or plan shows it. The
gate reuses `score_metrics` and `slice_metrics` to score the champion the same way.

A regression (the feature schema's `task`) gets MAE, RMSE, R² and MAPE (`stages/lib/regression.py`),
per slice too, the residual plot `residuals.json` and the importance as the drop in test R²;
each kind writes the other kind's plot files empty, so the stage's outputs are the same files.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.inspection import permutation_importance
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    f1_score,
    log_loss,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)
from threadpoolctl import threadpool_limits

from stages.contract.feature_schema import FeatureSchema
from stages.lib.io import round_floats, write_bytes_atomic, write_metrics
from stages.lib.predictions import decision_threshold
from stages.lib.regression import regression_metrics, regression_slices, residual_table
from stages.lib.training import MISSING_CATEGORY, feature_frame, predictions, target

MAX_CURVE_POINTS = 200
# slice value of rows whose binned column falls outside every bin
OUT_OF_RANGE = "__out_of_range__"


@dataclass(frozen=True)
class SliceSpec:
    """One slicing of the test set: by the values of `column`, or by right-open `bins` of it."""

    name: str
    column: str
    bins: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.bins is None:
            return
        edges = self.bins
        if len(edges) < 2 or any(not lo < hi for lo, hi in pairwise(edges)):
            raise ValueError(
                f"evaluate.slices.{self.name}.bins: {list(edges)} must be >= 2 strictly "
                "increasing edges"
            )

    @classmethod
    def from_params(cls, raw: str | Mapping[str, Any]) -> SliceSpec:
        """A column name, or a mapping {name, column (default name), bins (optional)}."""
        if isinstance(raw, str):
            return cls(name=raw, column=raw)
        if not isinstance(raw, Mapping) or "name" not in raw:
            raise ValueError(
                f"evaluate.slices: {raw!r} is neither a column name nor a mapping with a 'name'"
            )
        unknown = sorted(set(raw) - {"name", "column", "bins"})
        if unknown:
            raise ValueError(f"evaluate.slices.{raw['name']}: unknown key(s) {unknown}")
        bins = raw.get("bins")
        return cls(
            name=str(raw["name"]),
            column=str(raw.get("column", raw["name"])),
            bins=None if bins is None else tuple(float(b) for b in bins),
        )


@dataclass(frozen=True)
class EvaluateConfig:
    """The `evaluate` params section."""

    # a score >= threshold predicts churn
    threshold: float = 0.5
    calibration_bins: int = 10
    slices: tuple[SliceSpec, ...] = ()
    # permutation-importance shuffles per feature: few, so the stage stays fast
    importance_repeats: int = 3

    def __post_init__(self) -> None:
        decision_threshold({"threshold": self.threshold})  # raises out of [0, 1]
        if self.calibration_bins < 1:
            raise ValueError(f"evaluate.calibration_bins: {self.calibration_bins} is not >= 1")
        if self.importance_repeats < 1:
            raise ValueError(f"evaluate.importance_repeats: {self.importance_repeats} is not >= 1")
        names = [s.name for s in self.slices]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"evaluate.slices: name(s) {repeated} used more than once")

    @classmethod
    def from_params(cls, raw: Mapping[str, Any]) -> EvaluateConfig:
        slices = raw.get("slices") or ()
        if isinstance(slices, str | Mapping):
            raise ValueError("evaluate.slices: expected a list of slices")
        return cls(
            threshold=decision_threshold(raw),
            calibration_bins=int(raw.get("calibration_bins", 10)),
            slices=tuple(SliceSpec.from_params(s) for s in slices),
            importance_repeats=int(raw.get("importance_repeats", 3)),
        )


@dataclass(frozen=True)
class PlotTables:
    """The tables behind each DVC plot, one frame per file."""

    roc: pd.DataFrame  # fpr, tpr, threshold
    pr: pd.DataFrame  # precision, recall, threshold
    calibration: pd.DataFrame  # bin, bin_lower, bin_upper, mean_predicted, observed_rate, count
    confusion: pd.DataFrame  # actual, predicted: one row per example


def threshold_warning(scores: np.ndarray, y: np.ndarray, threshold: float) -> str | None:
    """A decision threshold no test score reaches (or every one does): each decision is the
    same, and F1, precision and the server's yes/no say nothing (a 20 % no-show rate with
    scores under 0.5)."""
    above = int((scores >= threshold).sum())
    if 0 < above < len(scores) or not len(scores):
        return None
    side = "no" if above == 0 else "every"
    rate = float(np.mean(y))
    # a starting point a user can reason about: flag as many rows as there are positives (at a
    # 1.5 % chargeback rate, the top 1.5 % of scores); the cost of each error decides the rest
    matching = float(np.quantile(scores, 1 - rate, method="higher")) if 0 < rate < 1 else None
    hint = (
        f" (flagging as many test rows as are positive takes {matching:.3g})"
        if matching is not None
        else ""
    )
    return (
        f"{side} test row scores at or above evaluate.threshold {threshold} (scores "
        f"{float(scores.min()):.3f}..{float(scores.max()):.3f}, label rate "
        f"{rate:.3f}): every decision is the same; set evaluate.threshold{hint}"
    )


def evaluate_model(
    y_true: Sequence[int] | np.ndarray,
    y_score: Sequence[float] | np.ndarray,
    threshold: float,
    calibration_bins: int,
    *,
    max_curve_points: int = MAX_CURVE_POINTS,
) -> tuple[dict[str, float | int], PlotTables]:
    """Metrics and plot tables for binary labels `y_true` and probabilities `y_score`.

    Threshold metrics (f1, precision, recall, confusion) predict 1 where score >= threshold.
    Floats are rounded to 6 digits.
    """
    cfg = EvaluateConfig(threshold=threshold, calibration_bins=calibration_bins)
    metrics = score_metrics(y_true, y_score, cfg.threshold)
    y, p = _check_inputs(y_true, y_score)
    predicted = (p >= cfg.threshold).astype("int64")
    fpr, tpr, roc_thresholds = roc_curve(y, p)
    precision, recall, pr_thresholds = precision_recall_curve(y, p)
    # precision_recall_curve's last point (recall 0) has no threshold; sklearn puts roc's first
    # at +inf. Both mean "nothing predicted positive"; 1.0 says that in valid JSON.
    pr_thresholds = np.append(pr_thresholds, 1.0)
    tables = PlotTables(
        roc=_round_frame(
            thin(
                pd.DataFrame(
                    {"fpr": fpr, "tpr": tpr, "threshold": np.minimum(roc_thresholds, 1.0)}
                ),
                max_curve_points,
            )
        ),
        pr=_round_frame(
            thin(
                pd.DataFrame(
                    {"precision": precision, "recall": recall, "threshold": pr_thresholds}
                ),
                max_curve_points,
            )
        ),
        calibration=_round_frame(calibration_table(y, p, cfg.calibration_bins)),
        confusion=pd.DataFrame({"actual": y, "predicted": predicted}),
    )
    return metrics, tables


def score_metrics(
    y_true: Sequence[int] | np.ndarray, y_score: Sequence[float] | np.ndarray, threshold: float
) -> dict[str, float | int]:
    """The test metrics of `metrics/evaluate.json` (floats rounded to 6 digits)."""
    y, p = _check_inputs(y_true, y_score)
    predicted = (p >= threshold).astype("int64")
    metrics = {
        "roc_auc": float(roc_auc_score(y, p)),
        "pr_auc": float(average_precision_score(y, p)),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "brier": float(brier_score_loss(y, p)),
        "f1": float(f1_score(y, predicted, zero_division=0)),
        "precision": float(precision_score(y, predicted, zero_division=0)),
        "recall": float(recall_score(y, predicted, zero_division=0)),
        "n": len(y),
        "positives": int(y.sum()),
        "positive_rate": float(y.mean()),
    }
    return round_floats(metrics)


def slice_labels(frame: pd.DataFrame, spec: SliceSpec, *, source: str = "test frame") -> pd.Series:
    """The slice value of each row: the column's value as text, or its bin `[lo, hi)`.

    Missing values get their own slice (`__missing__`); with bins, values outside every bin
    go to `__out_of_range__`, so every row lands in exactly one slice.
    """
    if spec.column not in frame.columns:
        raise ValueError(
            f"{source}: slice '{spec.name}' needs column '{spec.column}', which is absent"
        )
    column = frame[spec.column]
    if spec.bins is None:
        return column.astype("str").fillna(MISSING_CATEGORY).reset_index(drop=True)
    if not pd.api.types.is_numeric_dtype(column):
        raise ValueError(
            f"{source}: slice '{spec.name}' bins column '{spec.column}', which is not numeric "
            f"({column.dtype})"
        )
    values = column.to_numpy(dtype="float64")
    edges = np.asarray(spec.bins, dtype="float64")
    index = np.searchsorted(edges, values, side="right") - 1
    names = [f"[{_edge(lo)}, {_edge(hi)})" for lo, hi in pairwise(edges)]
    labels = [
        MISSING_CATEGORY if np.isnan(v) else names[i] if 0 <= i < len(names) else OUT_OF_RANGE
        for v, i in zip(values, index, strict=True)
    ]
    return pd.Series(labels, dtype="str")


def _edge(value: float) -> str:
    if np.isinf(value):
        return "inf" if value > 0 else "-inf"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def slice_metrics(
    frame: pd.DataFrame,
    y_true: Sequence[int] | np.ndarray,
    y_score: Sequence[float] | np.ndarray,
    slices: Sequence[SliceSpec],
    threshold: float,
    *,
    source: str = "test frame",
) -> dict[str, dict[str, dict[str, float | int | None]]]:
    """{slice name: {slice value: {n, positives, roc_auc, pr_auc, f1}}} over the rows of `frame`.

    roc_auc is None where a slice holds one class; pr_auc is None where it holds no positive.
    """
    y, p = _check_inputs(y_true, y_score)
    if len(frame) != len(y):
        raise ValueError(f"{source}: {len(frame)} rows but {len(y)} labels/scores")
    out: dict[str, dict[str, dict[str, float | int | None]]] = {}
    for spec in slices:
        labels = slice_labels(frame, spec, source=source).to_numpy()
        out[spec.name] = {
            str(value): _group_metrics(y[labels == value], p[labels == value], threshold)
            for value in sorted(set(labels.tolist()))
        }
    return round_floats(out)


def _group_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, Any]:
    positives = int(y.sum())
    return {
        "n": len(y),
        "positives": positives,
        "roc_auc": float(roc_auc_score(y, p)) if 0 < positives < len(y) else None,
        "pr_auc": float(average_precision_score(y, p)) if positives else None,
        "f1": float(f1_score(y, (p >= threshold).astype("int64"), zero_division=0)),
    }


def _r2(model: Any, features: pd.DataFrame, y: np.ndarray) -> float:
    from sklearn.metrics import r2_score

    return float(r2_score(y, model.predict(features)))


def _positive_roc_auc(model: Any, features: pd.DataFrame, y: np.ndarray) -> float:
    # a scorer on predict_proba's column for label 1: works for any whole-predictor family,
    # classifier tags or not
    proba = model.predict_proba(features)
    return float(roc_auc_score(y, proba[:, list(model.classes_).index(1)]))


def feature_importance(
    model: Any, frame: pd.DataFrame, schema: FeatureSchema, *, repeats: int, seed: int
) -> pd.DataFrame:
    """Permutation importance of each input feature: the mean drop in ROC AUC (a regression's
    R²) when it is shuffled (`repeats` times, seeded), with its standard deviation; largest
    first."""
    features = feature_frame(frame, schema)
    y = target(frame, schema)
    # one thread: dozens of small predict calls, where OpenMP's thread start-up and, on a busy
    # machine, its spinning threads cost 10x more than the prediction itself
    with threadpool_limits(limits=1):
        result = permutation_importance(
            model,
            features,
            y,
            scoring=_r2 if schema.regression else _positive_roc_auc,
            n_repeats=repeats,
            random_state=seed,
            n_jobs=1,
        )
    table = _round_frame(
        pd.DataFrame(
            {
                "feature": list(features.columns),
                "importance": result.importances_mean,
                "std": result.importances_std,
            }
        )
    )
    return table.sort_values(
        ["importance", "feature"], ascending=[False, True], kind="mergesort"
    ).reset_index(drop=True)


def _check_inputs(
    y_true: Sequence[int] | np.ndarray, y_score: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    p = np.asarray(y_score, dtype="float64")
    if y.ndim != 1 or p.ndim != 1 or len(y) != len(p):
        raise ValueError(
            f"evaluate: y_true {y.shape} and y_score {p.shape} must be 1-D of equal length"
        )
    if len(y) == 0:
        raise ValueError("evaluate: no examples to evaluate")
    values = set(np.unique(y).tolist())
    if not values <= {0, 1}:
        raise ValueError(f"evaluate: labels must be 0/1, found {sorted(values)[:10]}")
    if len(values) < 2:
        raise ValueError(f"evaluate: labels hold a single class {sorted(values)} (need 0 and 1)")
    if not np.all(np.isfinite(p)) or p.min() < 0.0 or p.max() > 1.0:
        raise ValueError("evaluate: scores must be probabilities in [0, 1]")
    return y.astype("int64"), p


def thin(curve: pd.DataFrame, max_points: int) -> pd.DataFrame:
    """At most `max_points` rows of `curve`, evenly spaced by index, both ends kept."""
    if max_points < 2:
        raise ValueError(f"thin: max_points {max_points} must be >= 2")
    if len(curve) <= max_points:
        return curve.reset_index(drop=True)
    keep = np.unique(np.linspace(0, len(curve) - 1, num=max_points).round().astype("int64"))
    return curve.iloc[keep].reset_index(drop=True)


def calibration_table(y_true: np.ndarray, y_score: np.ndarray, bins: int) -> pd.DataFrame:
    """Equal-width bins over [0, 1]: mean predicted score vs observed positive rate per bin.

    Empty bins are left out (they have no mean); a score of exactly 1.0 falls in the last bin.
    """
    index = np.minimum((y_score * bins).astype("int64"), bins - 1)
    frame = pd.DataFrame({"bin": index, "score": y_score, "label": y_true})
    grouped = frame.groupby("bin", sort=True).agg(
        mean_predicted=("score", "mean"),
        observed_rate=("label", "mean"),
        count=("label", "size"),
    )
    grouped = grouped.reset_index()
    grouped.insert(1, "bin_lower", grouped["bin"] / bins)
    grouped.insert(2, "bin_upper", (grouped["bin"] + 1) / bins)
    return grouped.astype({"bin": "int64", "count": "int64"})


def _round_frame(frame: pd.DataFrame) -> pd.DataFrame:
    floats = frame.select_dtypes("float").columns
    return frame.assign(**{c: frame[c].round(6) + 0.0 for c in floats})


def write_importance(table: pd.DataFrame, plots_dir: str | Path) -> Path:
    """`importance.json` (feature, importance, std): a horizontal-bar DVC plot."""
    return write_metrics(
        Path(plots_dir) / "importance.json", {"importance": table.to_dict(orient="records")}
    )


def write_residuals(table: pd.DataFrame | None, plots_dir: str | Path) -> Path:
    """`residuals.json` (predicted, actual, residual): the residual scatter. For a
    classification, predicted is the probability and actual the 0/1 label. (An empty list here
    would make `dvc plots show` report an error for the file.)"""
    rows = [] if table is None else table.to_dict(orient="records")
    return write_metrics(Path(plots_dir) / "residuals.json", {"residuals": rows})


def regression_slice_metrics(
    frame: pd.DataFrame, y: np.ndarray, pred: np.ndarray, slices: Sequence[SliceSpec], source: str
) -> dict[str, Any]:
    """A regression's metrics per slice (the same slices as a classification's)."""
    labels = {s.name: slice_labels(frame, s, source=source).to_numpy() for s in slices}
    return regression_slices(labels, y, pred)


def write_plots(tables: PlotTables | None, plots_dir: str | Path) -> list[Path]:
    """Write the plot files DVC renders; returns their paths (None: a regression, whose
    classification plots are written empty)."""
    if tables is None:
        empty = pd.DataFrame({"actual": [], "predicted": []})
        tables = PlotTables(roc=empty, pr=empty, calibration=empty, confusion=empty)
    """Write the plot files DVC renders; returns their paths."""
    plots_dir = Path(plots_dir)
    written = [
        write_metrics(plots_dir / "roc.json", {"roc": tables.roc.to_dict(orient="records")}),
        write_metrics(plots_dir / "pr.json", {"pr": tables.pr.to_dict(orient="records")}),
        write_metrics(
            plots_dir / "calibration.json",
            {"calibration": tables.calibration.to_dict(orient="records")},
        ),
        write_bytes_atomic(
            tables.confusion.to_csv(index=False, lineterminator="\n").encode(),
            plots_dir / "confusion.csv",
        ),
    ]
    return written


def _evaluate_regression(
    model: Any,
    test: pd.DataFrame,
    schema: FeatureSchema,
    cfg: EvaluateConfig,
    seed: int,
    args: argparse.Namespace,
) -> int:
    pred = predictions(model, test, schema)
    y = target(test, schema)
    metrics = regression_metrics(y, pred)
    importance = feature_importance(model, test, schema, repeats=cfg.importance_repeats, seed=seed)
    write_metrics(args.metrics_out, metrics)
    if args.slices_out is not None:
        by_slice = regression_slice_metrics(test, y, pred, cfg.slices, str(args.test))
        write_metrics(args.slices_out, by_slice)
    write_plots(None, args.plots_dir)
    write_residuals(residual_table(y, pred), args.plots_dir)
    write_importance(importance, args.plots_dir)
    print(
        f"evaluate: {metrics['n']} rows, mae={metrics['mae']} rmse={metrics['rmse']} "
        f"r2={metrics['r2']} mape={metrics['mape']}"
    )
    return 0
