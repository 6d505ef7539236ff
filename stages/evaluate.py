"""The `evaluate` stage: score the model on the test split; write metrics and DVC plots.

    python -m stages.evaluate models/model.skops artifacts/split/test.parquet \
        artifacts/features/feature_schema.json metrics/evaluate.json plots [--params params.yaml]

Plots (rendered by `dvc plots show`): `roc.json`, `pr.json`, `calibration.json` and
`confusion.csv` (one row per example, as DVC's confusion template expects).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
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

from stages.feature_schema import load_schema
from stages.io import write_bytes_atomic
from stages.model_io import load_model
from stages.params import PARAMS_FILE, load_params, section
from stages.train import (
    check_frame,
    positive_scores,
    read_frame,
    round_floats,
    write_metrics,
)

MAX_CURVE_POINTS = 200


@dataclass(frozen=True)
class EvaluateConfig:
    """The `evaluate` params section."""

    # a score >= threshold predicts churn
    threshold: float = 0.5
    calibration_bins: int = 10

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"evaluate.threshold: {self.threshold} is not in [0, 1]")
        if self.calibration_bins < 1:
            raise ValueError(f"evaluate.calibration_bins: {self.calibration_bins} is not >= 1")

    @classmethod
    def from_params(cls, raw: Mapping[str, Any]) -> EvaluateConfig:
        return cls(
            threshold=float(raw.get("threshold", 0.5)),
            calibration_bins=int(raw.get("calibration_bins", 10)),
        )


@dataclass(frozen=True)
class PlotTables:
    """The tables behind each DVC plot, one frame per file."""

    roc: pd.DataFrame  # fpr, tpr, threshold
    pr: pd.DataFrame  # precision, recall, threshold
    calibration: pd.DataFrame  # bin, bin_lower, bin_upper, mean_predicted, observed_rate, count
    confusion: pd.DataFrame  # actual, predicted: one row per example


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
    y, p = _check_inputs(y_true, y_score)
    predicted = (p >= cfg.threshold).astype("int64")
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
    return round_floats(metrics), tables


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


def write_plots(tables: PlotTables, plots_dir: str | Path) -> list[Path]:
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stages.evaluate",
        description="Score the model on the test split; write metrics and DVC plot files.",
    )
    parser.add_argument("model", type=Path, help="model file (.skops)")
    parser.add_argument("test", type=Path, help="test split parquet")
    parser.add_argument("schema", type=Path, help="feature_schema.json")
    parser.add_argument("metrics_out", type=Path, help="metrics JSON to write")
    parser.add_argument("plots_dir", type=Path, help="folder for the plot files")
    parser.add_argument("--params", type=Path, default=Path(PARAMS_FILE), help="params.yaml")
    args = parser.parse_args(argv)

    cfg = EvaluateConfig.from_params(section(load_params(args.params), "evaluate"))
    schema = load_schema(args.schema)
    model = load_model(args.model)
    trained_on = [str(c) for c in getattr(model, "feature_names_in_", schema.features)]
    if trained_on != list(schema.features):
        raise ValueError(
            f"{args.model}: trained on features {trained_on}, but {args.schema} lists "
            f"{list(schema.features)}"
        )
    test = read_frame(args.test)
    check_frame(test, schema, source=str(args.test))

    scores = positive_scores(model, test, schema)
    metrics, tables = evaluate_model(
        test[schema.label].to_numpy(), scores, cfg.threshold, cfg.calibration_bins
    )
    write_metrics(args.metrics_out, metrics)
    write_plots(tables, args.plots_dir)
    print(
        f"evaluate: {metrics['n']} rows, roc_auc={metrics['roc_auc']} "
        f"pr_auc={metrics['pr_auc']} f1@{cfg.threshold}={metrics['f1']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
