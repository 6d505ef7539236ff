"""A regression's test metrics, per-slice metrics and residual plot (`rows_regression`).

evaluate writes them for a model whose feature schema says `regression`; the gate scores the
champion with the same functions. MAPE is taken over the rows whose target is not zero (a count
of 0 rentals has no percentage error) and is None when every target is zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import mean_absolute_error, r2_score

from stages.lib.io import round_floats

MAX_RESIDUAL_POINTS = 500


def _check(y_true: Sequence[float] | np.ndarray, y_pred: Sequence[float] | np.ndarray):
    y = np.asarray(y_true, dtype="float64")
    p = np.asarray(y_pred, dtype="float64")
    if y.ndim != 1 or y.shape != p.shape:
        raise ValueError(
            f"evaluate: targets {y.shape} and predictions {p.shape} must be 1-D of equal length"
        )
    if len(y) == 0:
        raise ValueError("evaluate: no examples to evaluate")
    if not (np.isfinite(y).all() and np.isfinite(p).all()):
        raise ValueError("evaluate: targets and predictions must be finite numbers")
    return y, p


def _group(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    nonzero = y != 0
    return {
        "n": len(y),
        "mae": float(mean_absolute_error(y, p)),
        "rmse": float(np.sqrt(np.mean((y - p) ** 2))),
        # R² needs some spread in the targets to compare with
        "r2": float(r2_score(y, p)) if len(y) > 1 and np.ptp(y) > 0 else None,
        "mape": float(np.mean(np.abs((y[nonzero] - p[nonzero]) / y[nonzero])))
        if nonzero.any()
        else None,
    }


def regression_metrics(
    y_true: Sequence[float] | np.ndarray, y_pred: Sequence[float] | np.ndarray
) -> dict[str, Any]:
    """The test metrics of `metrics/evaluate.json` for a regression (floats rounded)."""
    y, p = _check(y_true, y_pred)
    metrics = _group(y, p)
    metrics.update(
        target_mean=float(y.mean()),
        prediction_mean=float(p.mean()),
        mape_rows=int((y != 0).sum()),
    )
    return round_floats(metrics)


def regression_slices(
    labels_by_slice: dict[str, np.ndarray],
    y_true: Sequence[float] | np.ndarray,
    y_pred: Sequence[float] | np.ndarray,
) -> dict[str, dict[str, dict[str, Any]]]:
    """{slice name: {value: {n, mae, rmse, r2, mape}}} for the slice labels of each row."""
    y, p = _check(y_true, y_pred)
    out = {}
    for name, labels in labels_by_slice.items():
        out[name] = {
            str(v): _group(y[labels == v], p[labels == v]) for v in sorted(set(labels.tolist()))
        }
    return round_floats(out)


def residual_table(
    y_true: Sequence[float] | np.ndarray,
    y_pred: Sequence[float] | np.ndarray,
    *,
    max_points: int = MAX_RESIDUAL_POINTS,
) -> pd.DataFrame:
    """predicted, actual, residual (actual - predicted) per row, ordered by prediction and
    thinned evenly to `max_points` rows: the residual scatter (DVC plot `residuals.json`)."""
    y, p = _check(y_true, y_pred)
    order = np.argsort(p, kind="stable")
    if len(order) > max_points:
        order = order[np.unique(np.linspace(0, len(order) - 1, max_points).round().astype(int))]
    frame = pd.DataFrame(
        {"predicted": p[order], "actual": y[order], "residual": y[order] - p[order]}
    )
    return frame.round(6) + 0.0
