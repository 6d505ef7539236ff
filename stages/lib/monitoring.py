"""monitor: should the model be retrained? Data drift, prediction drift, realised performance.

    python -m stages.monitor artifacts/profile models/model_card.json artifacts/predict \
        artifacts/prepare metrics/monitor.json metrics/monitor_history.csv [--params params.yaml]
    evergreen monitor [--dispatch [--repo OWNER/NAME] [--workflow retrain.yml] [--ref main]]

Three signals, each against thresholds in the `monitor` params section:

- data drift: the latest `last_days` partitions against the partitions the model was trained
  on (its card's train snapshot dates plus the label horizon), from the per-partition profiles,
  with the drift stage's code (PSI for numbers, Jensen-Shannon distance for categories);
- prediction drift: the PSI of this run's batch scores, and of the scores the server logged in
  its latest `served_days` days of prediction log (`serve.predictions_path`; absent logs are
  reported, not an error), against the model's scores on the test split;
- realised performance: the predictions published to the lake at a date T (`evergreen
  publish`), joined with the labels that matured at T + horizon, computed from prepare's
  history with the features stage's own label code: ROC AUC, Brier score and the calibration
  gap (observed churn rate minus mean score) per snapshot; the latest matured one is judged.

The task kind decides the rest. A rows kind (`rows_classification`, `rows_regression`) has one
table, the task's: its profiles are the data drift's, and a published row's label is its
target once it arrives in prepare's history of that table (joined by the row's key). A
regression's prediction drift is that of its `prediction`, and its realised performance is the
MAE and RMSE of the published predictions and the drift (PSI) of their residuals (target -
prediction) against the model's residuals on the test split: `residual_psi_threshold` and
`max_mae_increase` (live MAE over the test split's MAE, minus 1) judge it.

`metrics/monitor.json` holds `retrain_recommended` and its `reasons` (kind, column, metric,
value, threshold); `metrics/monitor_history.csv` one row per monitored date (a DVC plot),
upserted, so a rerun on the same data replaces its row.

The lake's predictions and the server's log are read where they are, not declared as DVC
dependencies (the lake may be s3:// and has nothing before the first publish). That loses
nothing: a published prediction can only gain a label when new data arrives, and new data
reruns this stage. `evergreen monitor` (stages/cli/monitor.py) runs this stage's command from
dvc.yaml now, so fresh
server logs are read at once, and with `--dispatch` starts the retrain workflow
(`stages/cli/dispatch.py`) when retraining is recommended.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import ibis
import numpy as np
import pandas as pd
from sklearn.metrics import brier_score_loss, roc_auc_score

from stages.contract.card import ModelCard
from stages.contract.prediction_log import read_logged
from stages.lib.dataset import DatasetConfig, dataset_from_params
from stages.lib.drift import DriftConfig, compute_drift, values_drift
from stages.lib.io import round_floats, write_bytes_atomic, write_metrics
from stages.lib.params import load_params, section
from stages.lib.predictions import PREDICTIONS, REFERENCE, SNAPSHOT_COL, read_published
from stages.lib.profiling import read_profiles
from stages.lib.rows import target_value
from stages.lib.snapshots import FeaturesConfig, build_features, read_history

DIGITS = 6
HISTORY_COLUMNS = (
    "date",
    "model_version",
    "retrain_recommended",
    "reasons",
    "psi_max",
    "js_max",
    "score_psi",
    "served_score_psi",
    "live_snapshot",
    "live_roc_auc",
    "calibration_gap",
)
# a regression's history has these too (its live_roc_auc and calibration_gap stay empty)
REGRESSION_HISTORY_COLUMNS = ("live_mae", "live_rmse", "residual_psi")


@dataclass(frozen=True)
class MonitorConfig:
    """The `monitor` params section; a threshold set to None turns its check off."""

    # data drift, measured as the drift stage measures it
    last_days: int = 14
    bins: int = 10
    psi_threshold: float | None = 0.25
    js_threshold: float | None = 0.1
    rows_threshold: float | None = 0.5
    min_count: int = 150
    # prediction drift
    score_psi_threshold: float | None = 0.2
    min_scores: int = 200
    served_days: int = 7
    # realised performance
    min_roc_auc: float | None = 0.7
    max_calibration_gap: float | None = 0.1
    min_labelled: int = 200
    # a regression's realised performance
    residual_psi_threshold: float | None = 0.2
    max_mae_increase: float | None = 0.5

    @classmethod
    def from_params(cls, raw: Mapping[str, Any]) -> MonitorConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"params monitor: unknown keys {unknown} (known: {sorted(known)})")
        cfg = cls(**raw)
        for name in ("last_days", "served_days", "bins"):
            if not isinstance(getattr(cfg, name), int) or getattr(cfg, name) < 1:
                raise ValueError(f"params monitor.{name}: expected a whole number >= 1")
        if cfg.bins < 2:
            raise ValueError("params monitor.bins: expected at least 2 bins")
        return cfg

    def data_drift(self) -> DriftConfig:
        off = float("inf")  # a check turned off never flags
        return DriftConfig(
            last_days=self.last_days,
            bins=self.bins,
            psi_threshold=off if self.psi_threshold is None else self.psi_threshold,
            js_threshold=off if self.js_threshold is None else self.js_threshold,
            rows_threshold=off if self.rows_threshold is None else self.rows_threshold,
            min_count=self.min_count,
        )

    def score_drift(self) -> DriftConfig:
        off = float("inf")
        threshold = off if self.score_psi_threshold is None else self.score_psi_threshold
        return DriftConfig(bins=self.bins, psi_threshold=threshold, min_count=self.min_scores)

    def residual_drift(self) -> DriftConfig:
        off = float("inf")
        threshold = off if self.residual_psi_threshold is None else self.residual_psi_threshold
        return DriftConfig(bins=self.bins, psi_threshold=threshold, min_count=self.min_labelled)


def _reason(kind: str, column: str, metric: str, value: float, threshold: float, **extra: Any):
    return {
        "kind": kind,
        "column": column,
        "metric": metric,
        "value": round(float(value), DIGITS),
        "threshold": threshold,
        **extra,
    }


def data_drift_reasons(drift: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A reason per drifted column and per table whose rows per partition changed."""
    reasons = []
    for table, report in drift["tables"].items():
        rows = report.get("rows") or {}
        if rows.get("drifted"):
            change = rows["change"] if rows["change"] is not None else float("inf")
            reasons.append(_reason("data_volume", table, "rows_change", change, rows["threshold"]))
        for column, m in (report.get("columns") or {}).items():
            if m["drifted"]:
                reasons.append(
                    _reason(
                        "data_drift", f"{table}.{column}", m["metric"], m["value"], m["threshold"]
                    )
                )
    return reasons


def drift_maxima(drift: Mapping[str, Any]) -> dict[str, float | None]:
    """The largest PSI and JS distance over the columns with enough data."""
    out: dict[str, float | None] = {"psi": None, "js_distance": None}
    for report in drift["tables"].values():
        for m in (report.get("columns") or {}).values():
            if m["enough_data"]:
                current = out[m["metric"]]
                out[m["metric"]] = m["value"] if current is None else max(current, m["value"])
    return out


def drift_summary(drift: Mapping[str, Any]) -> dict[str, Any]:
    """What monitor.json keeps of a drift report (metrics/data_drift.json has it all): the
    periods, the largest PSI and JS distance, and each column's measure."""
    maxima = drift_maxima(drift)
    columns = {
        f"{table}.{column}": {
            k: m[k] for k in ("metric", "value", "threshold", "drifted", "enough_data")
        }
        for table, report in drift["tables"].items()
        for column, m in (report.get("columns") or {}).items()
    }
    periods = {
        table: {"reference": report.get("reference"), "current": report.get("current")}
        for table, report in drift["tables"].items()
    }
    return {
        "drifted": bool(drift.get("drifted")),
        "reference_until": drift.get("reference_until"),
        "periods": periods,
        "psi_max": maxima["psi"],
        "js_max": maxima["js_distance"],
        "columns": columns,
    }


def realised_performance(
    predictions: pd.DataFrame, labels: pd.DataFrame, key: str, label: str
) -> dict[str, dict[str, Any]]:
    """Per snapshot date: the published scores joined with the labels that matured since.

    `predictions` has key, snapshot_date, score (and model_version); `labels` key,
    snapshot_date and the label. Entities without a label (no longer in the population the
    label is defined on) are left out. ROC AUC is None when a snapshot has one class only.
    """
    if predictions.empty or labels.empty:
        return {}
    left = predictions.assign(**{SNAPSHOT_COL: pd.to_datetime(predictions[SNAPSHOT_COL])})
    right = labels[[key, SNAPSHOT_COL, label]].assign(
        **{SNAPSHOT_COL: pd.to_datetime(labels[SNAPSHOT_COL])}
    )
    joined = left.merge(right, on=[key, SNAPSHOT_COL], how="inner", validate="one_to_one")
    out = {}
    for date, part in joined.groupby(SNAPSHOT_COL, sort=True):
        y = part[label].to_numpy(dtype="int64")
        p = part["score"].to_numpy(dtype="float64")
        both = 0 < y.sum() < len(y)
        versions = (
            sorted(part["model_version"].astype(str).unique()) if "model_version" in part else []
        )
        out[pd.Timestamp(date).date().isoformat()] = round_floats(
            {
                "n": len(y),
                "positives": int(y.sum()),
                "roc_auc": float(roc_auc_score(y, p)) if both else None,
                "brier": float(brier_score_loss(y, p, labels=[0, 1])),
                "mean_score": float(p.mean()),
                "observed_rate": float(y.mean()),
                "calibration_gap": float(y.mean() - p.mean()),
                "model_versions": versions,
            }
        )
    return out


def realised_regression(
    predictions: pd.DataFrame,
    targets: pd.DataFrame,
    key: str,
    reference: pd.DataFrame,
    cfg: MonitorConfig,
) -> dict[str, dict[str, Any]]:
    """A regression's realised performance per published snapshot date: the published
    predictions joined by key with the targets known now (`targets`: key, target).

    `reference` (prediction, target on the test split) gives the residuals the live ones are
    compared with, and the MAE they are measured against (`mae_increase`)."""
    if predictions.empty or targets.empty:
        return {}
    joined = predictions.merge(targets, on=key, how="inner", validate="many_to_one")
    ref_residuals = (reference["target"] - reference["prediction"]).to_numpy(dtype="float64")
    ref_mae = float(np.abs(ref_residuals).mean()) if len(ref_residuals) else None
    out = {}
    for date, part in joined.groupby(SNAPSHOT_COL, sort=True):
        residuals = (part["target"] - part["prediction"]).to_numpy(dtype="float64")
        mae = float(np.abs(residuals).mean())
        drift = values_drift(ref_residuals, residuals, cfg.residual_drift())
        versions = (
            sorted(part["model_version"].astype(str).unique()) if "model_version" in part else []
        )
        out[pd.Timestamp(date).date().isoformat()] = round_floats(
            {
                "n": len(residuals),
                "mae": mae,
                "rmse": float(np.sqrt(np.mean(residuals**2))),
                "mean_residual": float(residuals.mean()),
                "mean_prediction": float(part["prediction"].mean()),
                "mean_target": float(part["target"].mean()),
                "reference_mae": ref_mae,
                "mae_increase": mae / ref_mae - 1 if ref_mae else None,
                "residual_psi": drift["value"],
                "residual_drifted": bool(drift["drifted"]),
                "model_versions": versions,
            }
        )
    return out


def _judged(performance: Mapping[str, Mapping[str, Any]], cfg: MonitorConfig) -> str | None:
    """The latest snapshot with at least `min_labelled` rows (None: none yet)."""
    judged = [d for d, m in performance.items() if m["n"] >= cfg.min_labelled]
    return max(judged) if judged else None


def regression_reasons(
    performance: Mapping[str, Mapping[str, Any]], cfg: MonitorConfig
) -> list[dict[str, Any]]:
    """A regression's reasons from the latest snapshot with at least `min_labelled` rows."""
    date = _judged(performance, cfg)
    if date is None:
        return []
    m = performance[date]
    reasons = []
    if m["residual_drifted"]:
        reasons.append(
            _reason(
                "residual_drift",
                "residual",
                "psi",
                m["residual_psi"],
                cfg.residual_psi_threshold,
                snapshot=date,
            )
        )
    rise = m["mae_increase"]
    if cfg.max_mae_increase is not None and rise is not None and rise > cfg.max_mae_increase:
        reasons.append(
            _reason(
                "performance",
                "prediction",
                "mae_increase",
                rise,
                cfg.max_mae_increase,
                snapshot=date,
            )
        )
    return reasons


def performance_reasons(
    performance: Mapping[str, Mapping[str, Any]], cfg: MonitorConfig
) -> list[dict[str, Any]]:
    """Reasons from the latest matured snapshot with at least `min_labelled` rows."""
    date = _judged(performance, cfg)
    if date is None:
        return []
    m = performance[date]
    if "mae" in m:
        return regression_reasons(performance, cfg)
    reasons = []
    if cfg.min_roc_auc is not None and m["roc_auc"] is not None and m["roc_auc"] < cfg.min_roc_auc:
        reasons.append(
            _reason("performance", "score", "roc_auc", m["roc_auc"], cfg.min_roc_auc, snapshot=date)
        )
    gap = m["calibration_gap"]
    if cfg.max_calibration_gap is not None and abs(gap) > cfg.max_calibration_gap:
        reasons.append(
            _reason(
                "calibration",
                "score",
                "calibration_gap",
                gap,
                cfg.max_calibration_gap,
                snapshot=date,
            )
        )
    return reasons


def monitor(
    *,
    drift: Mapping[str, Any],
    reference_scores: np.ndarray,
    batch_scores: np.ndarray,
    served_scores: np.ndarray | None,
    performance: Mapping[str, Mapping[str, Any]],
    cfg: MonitorConfig,
    output: str = "score",
) -> dict[str, Any]:
    """The verdict: `retrain_recommended` and its `reasons`, with every measure behind them.
    `served_scores` is None when the server's prediction log is absent; `output` names what
    the scores are (a regression's: `prediction`)."""
    score_cfg = cfg.score_drift()
    batch = values_drift(reference_scores, batch_scores, score_cfg)
    served = (
        None if served_scores is None else values_drift(reference_scores, served_scores, score_cfg)
    )
    reasons = data_drift_reasons(drift)
    for column, measure in ((output, batch), (f"served_{output}", served)):
        if measure is not None and measure["drifted"]:
            reasons.append(
                _reason("prediction_drift", column, "psi", measure["value"], measure["threshold"])
            )
    reasons += performance_reasons(performance, cfg)
    return round_floats(
        {
            "retrain_recommended": bool(reasons),
            "reasons": reasons,
            "data_drift": drift_summary(drift),
            "prediction_drift": {"batch": batch, "served": served},
            "performance": {"snapshots": dict(performance)},
        }
    )


# --- reading --------------------------------------------------------------------------------


def matured_labels(
    history_dir: Path,
    dataset: DatasetConfig,
    features: FeaturesConfig,
    dates: Sequence[dt.date],
) -> pd.DataFrame:
    """Key, snapshot date and label of the population at each of `dates`, from prepare's
    history, with the features stage's label definition."""
    if not dates:
        return pd.DataFrame()
    events, entities = read_history(ibis.duckdb.connect(), history_dir, dataset)
    table = build_features(events, entities, dates, dataset, features, labelled=True)
    return table.select(dataset.entity_key, SNAPSHOT_COL, dataset.label.name).to_pandas()


def arrived_targets(history_dir: Path, dataset: DatasetConfig, keys: pd.Series) -> pd.DataFrame:
    """A rows task's targets known now for the rows `keys` names: key and the target (0/1,
    or a regression's number), from prepare's history of the task's table. A row whose
    outcome has not arrived is left out."""
    task = dataset.task
    source = history_dir / f"{task.table}.parquet"
    if not source.is_file():
        raise FileNotFoundError(f"{source}: prepare's history of table '{task.table}' not found")
    table = ibis.duckdb.connect().read_parquet(source)
    target = target_value(table, dataset)
    known = table.filter(target.notnull()).select(task.key, _target=target).to_pandas()
    known = known[known[task.key].isin(keys)]
    # a published key may have been read back with another time zone or precision
    return known.rename(columns={"_target": "target"}).drop_duplicates(task.key, keep="last")


def live_performance(
    history_dir: Path,
    dataset: DatasetConfig,
    features: FeaturesConfig,
    published: pd.DataFrame,
    matured: Sequence[dt.date],
    reference: pd.DataFrame,
    cfg: MonitorConfig,
) -> dict[str, dict[str, Any]]:
    """Realised performance of the matured published predictions, by the task's kind: entity
    churn labels from the features stage's label code, a rows task's targets by key."""
    key = dataset.entity_key
    if not dataset.task.rows:
        labels = matured_labels(history_dir, dataset, features, matured)
        return realised_performance(published, labels, key, dataset.label.name)
    if published.empty:
        return {}
    targets = arrived_targets(history_dir, dataset, published[key])
    if dataset.task.regression:
        return realised_regression(published, targets, key, reference, cfg)
    labels = published[[key, SNAPSHOT_COL]].merge(targets, on=key, how="inner")
    return realised_performance(published, labels, key, "target")


def upsert_history(history: pd.DataFrame, row: Mapping[str, Any]) -> pd.DataFrame:
    """The history with `row` replacing any row of the same date, sorted by date."""
    kept = history[history["date"].astype(str) != str(row["date"])] if len(history) else history
    frame = pd.concat([kept, pd.DataFrame([row])], ignore_index=True)
    columns = [*HISTORY_COLUMNS, *(c for c in REGRESSION_HISTORY_COLUMNS if c in row)]
    return frame.reindex(columns=columns).sort_values("date", kind="stable")


def history_row(
    report: Mapping[str, Any], date: str, model_version: str, *, regression: bool = False
) -> dict[str, Any]:
    drift = report["data_drift"]
    snapshots = report["performance"]["snapshots"]
    live = max(snapshots) if snapshots else None
    served = report["prediction_drift"]["served"]
    row = {
        "date": date,
        "model_version": model_version,
        "retrain_recommended": int(report["retrain_recommended"]),
        "reasons": len(report["reasons"]),
        "psi_max": drift["psi_max"],
        "js_max": drift["js_max"],
        "score_psi": report["prediction_drift"]["batch"]["value"],
        "served_score_psi": None if served is None else served["value"],
        "live_snapshot": live,
    }
    if regression:
        m = snapshots[live] if live else {}
        return {
            **row,
            "live_roc_auc": None,
            "calibration_gap": None,
            **{c: m.get(c.removeprefix("live_")) for c in REGRESSION_HISTORY_COLUMNS},
        }
    return {
        **row,
        "live_roc_auc": snapshots[live]["roc_auc"] if live else None,
        "calibration_gap": snapshots[live]["calibration_gap"] if live else None,
    }


def read_history_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        return pd.DataFrame(columns=list(HISTORY_COLUMNS))
    return pd.read_csv(path, dtype={"date": str, "live_snapshot": str, "model_version": str})


# --- a run over the stage's files ---------------------------------------------------------


@dataclass(frozen=True)
class MonitorPaths:
    """The monitor's inputs and outputs, as dvc.yaml's monitor stage gives them."""

    profile_dir: Path
    card: Path
    predict_dir: Path
    history_dir: Path
    out: Path
    history_out: Path
    params: Path


def run_monitor(args: MonitorPaths) -> dict[str, Any]:
    """Judge the latest data and predictions; write monitor.json and upsert the history CSV."""
    params = load_params(args.params)
    dataset = dataset_from_params(section(params, "dataset"))
    features = FeaturesConfig.from_params(section(params, "features"))
    cfg = MonitorConfig.from_params(section(params, "monitor"))
    train_dates = ModelCard.read(args.card).train_snapshot_dates
    if not train_dates:
        raise ValueError(f"{args.card}: lacks data.train_snapshot_dates (the training reference)")
    profiles = {t.name: read_profiles(args.profile_dir, t.name) for t in dataset.tables}
    # the table whose latest partition dates the run: the events, or a rows task's table
    main_table = dataset.task.table if dataset.task.rows else dataset.events.name
    if not profiles[main_table]:
        raise FileNotFoundError(f"{args.profile_dir}/{main_table}: no profiles")
    drift = compute_drift(profiles, dataset, train_dates, cfg.data_drift())
    output = "prediction" if dataset.task.regression else "score"

    for name in (PREDICTIONS, REFERENCE):
        if not (args.predict_dir / name).is_file():
            raise FileNotFoundError(f"{args.predict_dir / name}: not found (the predict stage)")
    batch = pd.read_parquet(args.predict_dir / PREDICTIONS)
    reference = pd.read_parquet(args.predict_dir / REFERENCE)
    serve = params.get("serve") or {}
    served, served_info = read_logged(serve.get("predictions_path"), cfg.served_days, output)

    lake = str(section(params, "lake.path"))
    published = read_published(lake)
    last_day = dt.date.fromisoformat(max(profiles[main_table]))
    horizon = dt.timedelta(days=dataset.label.horizon_days)
    matured: list[dt.date] = []
    if not published.empty:
        dates = sorted({pd.Timestamp(d).date() for d in published[SNAPSHOT_COL]})
        matured = [d for d in dates if d + horizon <= last_day]
    published = (
        published[pd.to_datetime(published.get(SNAPSHOT_COL, [])).dt.date.isin(matured)]
        if matured
        else published.iloc[0:0]
    )
    performance = live_performance(
        args.history_dir, dataset, features, published, matured, reference, cfg
    )
    report = monitor(
        drift=drift,
        reference_scores=reference[output].to_numpy(),
        batch_scores=batch[output].to_numpy(),
        served_scores=served,
        performance=performance,
        cfg=cfg,
        output=output,
    )
    model_version = str(batch["model_version"].iloc[0]) if len(batch) else ""
    report.update(
        date=last_day.isoformat(),
        model_version=model_version,
        served=served_info,
        published={
            "lake": lake,
            "snapshots": len(set(published.get(SNAPSHOT_COL, []))),
            "matured": [d.isoformat() for d in matured],
        },
    )
    write_metrics(args.out, report)
    history = upsert_history(
        read_history_csv(args.history_out),
        history_row(
            report, last_day.isoformat(), model_version, regression=dataset.task.regression
        ),
    )
    write_bytes_atomic(history.to_csv(index=False, lineterminator="\n").encode(), args.history_out)
    return report


def print_verdict(report: Mapping[str, Any]) -> None:
    verdict = "RETRAIN recommended" if report["retrain_recommended"] else "no retraining needed"
    print(f"monitor {report['date']}: {verdict}")
    for r in report["reasons"]:
        print(
            f"  {r['kind']}: {r['column']} {r['metric']}={r['value']} (threshold {r['threshold']})"
        )
