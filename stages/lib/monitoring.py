"""monitor: should the model be retrained? Data drift, prediction drift, realised performance.

    python -m stages.monitor artifacts/profile models/model_card.json artifacts/predict \
        artifacts/prepare metrics/monitor.json metrics/monitor_history.csv \
        artifacts/monitor/report.json [--params params.yaml]
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

The report (`artifacts/monitor/report.json`) holds `retrain_recommended` and its `reasons`
(kind, column, metric, value, threshold) with every measure behind them; `metrics/monitor.json`
its headline, the scalars a person compares across runs (`headline`: this run's history row
less its identifiers); `metrics/monitor_history.csv` one row per monitored date (a DVC plot),
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
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import ibis
import numpy as np
import pandas as pd
from scipy.special import ndtri  # norm.ppf, without importing scipy.stats (drift.py says why)

from stages.contract.card import ModelCard
from stages.contract.prediction_log import PREDICTION, SCORE, read_logged
from stages.lib.dataset import NUMERIC_TYPES, DatasetConfig, dataset_from_params, settings_for
from stages.lib.drift import (
    INPUT,
    SEASONAL,
    TARGET,
    Comparison,
    DriftConfig,
    coded,
    column_roles,
    compare_categorical,
    compare_numeric,
    compare_values,
    compared_role,
    rate_comparison,
    values_drift,
)
from stages.lib.history import DATASET, read_monitor_history
from stages.lib.io import round_floats, write_bytes_atomic, write_metrics
from stages.lib.params import load_params, section
from stages.lib.predictions import PREDICTIONS, REFERENCE, SNAPSHOT_COL, read_published
from stages.lib.profiling import read_profiles
from stages.lib.rows import matured_target, table_days, target_value
from stages.lib.shadow import DATE, ShadowConfig, live_sections, read_log
from stages.lib.shadow import headline as served_headline
from stages.lib.shadow import summary_lines as shadow_lines
from stages.lib.skew import summary_lines as skew_lines
from stages.lib.snapshots import FeaturesConfig, build_features, event_dates, read_history

DIGITS = 6
HISTORY_COLUMNS = (
    "date",
    # the dataset the row is about: a history copied from another project is not mixed in
    DATASET,
    "model_version",
    "retrain_recommended",
    "reasons",
    "psi_max",
    "js_max",
    "score_psi",
    "served_score_psi",
    "estimated_roc_auc",
    "live_snapshot",
    "live_roc_auc",
    "calibration_gap",
)
# a regression's history has these too (its live_roc_auc and calibration_gap stay empty)
REGRESSION_HISTORY_COLUMNS = ("live_mae", "live_rmse", "residual_psi")


@dataclass(frozen=True)
class MonitorConfig:
    """The `monitor` params section (conf/config.yaml; a dataset overrides any key under
    `monitor:` in its own config); a threshold set to None turns its check off."""

    # windows, in calendar days: the current window is the latest `last_days` days with data;
    # the reference, the `reference_days` days up to the end of the data the model was last
    # judged on (its test split's latest snapshot plus the label horizon; None: every day up to
    # it)
    last_days: int = 14
    reference_days: int | None = 28
    bins: int = 10
    # an input (or the score) drifts when its effect size passes its threshold AND a
    # chi-square test says the difference is more than this window's noise, at `confidence`
    # (Bonferroni-corrected over the inputs compared)
    confidence: float = 0.99
    psi_threshold: float | None = 0.25
    js_threshold: float | None = 0.1
    # fewer values than this in a window: compared and listed, never a reason
    min_count: int = 30
    # inputs that follow the calendar (month, season, hour, temperature...): compared and
    # listed as information, never a reason (a new month is not a drift)
    seasonal: tuple[str, ...] = ()
    # prior shift: the label rate's relative change (0.5: x1.5 or x0.5), when significant
    label_rate_change: float | None = 0.5
    # prediction drift: this run's scores, and the served ones (the server's log, its latest
    # `served_days` days, authenticated requests only), against the model's on the test split
    score_psi_threshold: float | None = 0.2
    served_days: int = 7
    # realised performance of published predictions once their labels matured (the latest
    # snapshot with at least min_labelled rows is judged), against the model's own on its test
    # split: the ROC AUC's drop, and the calibration gap's (observed rate - mean score) change.
    # Relative, as the regression's MAE rise: a model the gate blessed at ROC AUC 0.65, or
    # with scores under a label rate that moved inside its training window, would otherwise
    # be "retrain" the day after every training, and retraining would not change it.
    # `min_roc_auc`, an absolute floor, is a team's requirement; off by default
    max_roc_auc_drop: float | None = 0.05
    max_calibration_gap: float | None = 0.1
    min_roc_auc: float | None = None
    min_labelled: int = 200
    # label-free: ROC AUC expected from this run's scores if the model is as calibrated as on
    # its test split (CBPE); a reason when it falls this much below the test split's estimate
    max_estimated_auc_drop: float | None = 0.05
    # a regression's (rows_regression): PSI of the published predictions' residuals vs the
    # test split's, and the live MAE's rise over the test split's MAE
    residual_psi_threshold: float | None = 0.2
    max_mae_increase: float | None = 0.5

    @classmethod
    def from_params(cls, raw: Mapping[str, Any]) -> MonitorConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"params monitor: unknown keys {unknown} (known: {sorted(known)})")
        values = dict(raw)
        if "seasonal" in values:
            seasonal = values["seasonal"] or ()
            if isinstance(seasonal, str) or not all(isinstance(s, str) for s in seasonal):
                raise ValueError("params monitor.seasonal: expected a list of column names")
            values["seasonal"] = tuple(seasonal)
        cfg = cls(**values)
        for name in ("last_days", "served_days", "bins", "min_labelled"):
            if not isinstance(getattr(cfg, name), int) or getattr(cfg, name) < 1:
                raise ValueError(f"params monitor.{name}: expected a whole number >= 1")
        if cfg.reference_days is not None and (
            not isinstance(cfg.reference_days, int) or cfg.reference_days < 1
        ):
            raise ValueError("params monitor.reference_days: expected a whole number >= 1 or null")
        if cfg.bins < 2:
            raise ValueError("params monitor.bins: expected at least 2 bins")
        if not 0.5 <= cfg.confidence < 1:
            raise ValueError(f"params monitor.confidence: {cfg.confidence} is not in [0.5, 1)")
        if not isinstance(cfg.min_count, int) or cfg.min_count < 2:
            raise ValueError("params monitor.min_count: expected a whole number >= 2")
        return cfg

    def residual_drift(self) -> DriftConfig:
        off = float("inf")
        threshold = off if self.residual_psi_threshold is None else self.residual_psi_threshold
        return DriftConfig(bins=self.bins, psi_threshold=threshold, min_count=self.min_labelled)


def _reason(
    kind: str,
    column: str,
    statistic: str,
    value: float,
    threshold: float | None,
    n_reference: int | None,
    n_current: int | None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "kind": kind,
        "column": column,
        "statistic": statistic,
        "value": round(float(value), DIGITS),
        "threshold": threshold,
        "n_reference": n_reference,
        "n_current": n_current,
        **extra,
    }


def windows(
    dates: Sequence[str], cutoff: dt.date, cfg: MonitorConfig
) -> tuple[list[str], list[str]]:
    """(reference, current) partition dates, by calendar days: current, the `last_days` days
    up to the latest date that are after `cutoff` (the end of the data the model was judged
    on); reference, the `reference_days` days up to `cutoff`, less any current day.

    Days up to the cutoff are the model's own: it learnt or was judged on them, so their
    drift from the days before says nothing about it being stale. Compared anyway, a sensor
    that follows the temperature "drifted" between two halves of the data a model had just
    been trained on, and the monitor asked for a retraining at every step after each one."""
    if not dates:
        return [], []
    last = dt.date.fromisoformat(max(dates))
    current = [
        d
        for d in sorted(dates)
        if dt.date.fromisoformat(d) > max(last - dt.timedelta(cfg.last_days), cutoff)
    ]
    start = None if cfg.reference_days is None else cutoff - dt.timedelta(cfg.reference_days)
    reference = [
        d
        for d in sorted(dates)
        if d not in current
        and dt.date.fromisoformat(d) <= cutoff
        and (start is None or dt.date.fromisoformat(d) > start)
    ]
    return reference, current


def _input_windows(
    table: str, dates: Sequence[str], cutoff: dt.date, dataset: DatasetConfig, cfg: MonitorConfig
) -> tuple[list[str], list[str], int]:
    """(reference, current, days moved back) for a table's inputs. A rows task whose outcomes
    come `label_delay_days` after the row: a retraining today learns rows up to that many days
    ago, so its table's inputs are judged on the windows its label rate is (`_label_windows`,
    both moved back by the delay). Rows newer than that moved nothing a retraining could learn
    yet: judged on them, a new value (a device type) asked for a retraining, then for another
    two weeks later, each model as blind to it as the last."""
    if dataset.task.rows and table == dataset.task.table:
        # without a delay, `_label_windows` is `windows`
        return *_label_windows(dates, cutoff, dataset, cfg), dataset.task.label_delay_days or 0
    return *windows(dates, cutoff, cfg), 0


def _periods(
    by_date: Mapping[str, Mapping[str, Any]],
    reference: Sequence[str],
    current: Sequence[str],
    moved_back: int,
) -> dict[str, Any]:
    """Each window's days, first and last day and rows (and how far both were moved back)."""

    def period(days: Sequence[str]) -> dict[str, Any]:
        return {
            "days": len(days),
            "first": days[0] if days else None,
            "last": days[-1] if days else None,
            "rows": sum(by_date[d]["rows"] for d in days),
        }

    out: dict[str, Any] = {"reference": period(reference), "current": period(current)}
    if moved_back:
        out["moved_back_days"] = moved_back
    return out


def _label_windows(
    dates: Sequence[str], cutoff: dt.date, dataset: DatasetConfig, cfg: MonitorConfig
) -> tuple[list[str], list[str]]:
    """`windows` for a rows task's target: with `label_delay_days`, both moved back by the
    delay, so that the label rate never reads an outcome that was not known yet (the lake may
    hold it: a historical export)."""
    delay = dataset.task.label_delay_days if dataset.task.rows else 0
    if not delay or not dates:
        return windows(dates, cutoff, cfg)
    known_until = dt.date.fromisoformat(max(dates)) - dt.timedelta(days=delay)
    known = [d for d in dates if dt.date.fromisoformat(d) <= known_until]
    return windows(known, cutoff - dt.timedelta(days=delay), cfg)


def _positives(
    stats: Sequence[Mapping[str, Any]], labels: Mapping[str, int] | None
) -> tuple[int, int]:
    """(positives, rows with a target) of a target column's profiles: string classes mapped by
    the task's `labels`, or a 0/1 number (its mean times its count)."""
    positives = known = 0
    for s in stats:
        if "top" in s:
            counts = {**s["top"]}
            if labels:
                positives += sum(n for v, n in counts.items() if labels.get(v) == 1)
                known += sum(n for v, n in counts.items() if v in labels)
            else:
                positives += sum(n for v, n in counts.items() if v in ("1", "true", "True"))
                known += s["count"]
        elif s.get("count"):
            positives += round(s["mean"] * s["count"])
            known += s["count"]
    return int(positives), int(known)


def label_days(history_dir: Path, dataset: DatasetConfig) -> dict[str, tuple[int, int]] | None:
    """A rows classification's (positives, rows whose target is known) per local day of its
    rows (ISO dates), from prepare's history of the task's table: one row per key, as its latest
    version arrived. None for another task, or without that history.

    An outcome re-sent days after its row (`lake land --arrived`) counts on its row's day. Read
    from the landed partitions instead, a window's own rows held no outcome yet and the outcomes
    that landed in it were another window's: the fraud lake's label rate read 1.6 % (rows of
    five weeks before) where its window's rows had 2.6 %."""
    task = dataset.task
    source = history_dir / f"{task.table}.parquet"
    if not task.rows or task.regression or not source.is_file():
        return None
    con = ibis.duckdb.connect()
    table = con.read_parquet(source)
    timed = table.filter(table[task.time].notnull())
    days = table_days(con, timed, dataset)
    timed = timed.mutate(_day=days.day_number(timed[task.time]), _t=target_value(timed, dataset))
    counted = timed.group_by("_day").aggregate(
        positives=timed._t.sum().coalesce(0), known=timed._t.count()
    )
    epoch = dt.date(1970, 1, 1)
    return {
        (epoch + dt.timedelta(days=int(r["_day"]))).isoformat(): (
            int(r["positives"]),
            int(r["known"]),
        )
        for r in counted.order_by("_day").to_pyarrow().to_pylist()
    }


def _label_rate(name: str, pr: int, nr: int, pc: int, nc: int, **extra: Any) -> dict[str, Any]:
    change, p = rate_comparison(pr, nr, pc, nc)
    return {
        "column": name, "reference_rate": pr / nr if nr else None,
        "current_rate": pc / nc if nc else None, "change": change, "p_value": p,
        "n_reference": nr, "n_current": nc, **extra,
    }  # fmt: skip


def _history_label_rate(
    by_day: Mapping[str, tuple[int, int]],
    cutoff: dt.date,
    dataset: DatasetConfig,
    cfg: MonitorConfig,
) -> dict[str, Any] | None:
    """The label rate over `label_days`' days, in the windows a profile-read rate would use."""
    reference, current = _label_windows(sorted(by_day), cutoff, dataset, cfg)
    if not reference or not current:
        return None
    (pr, nr), (pc, nc) = (
        [sum(by_day[d][i] for d in days) for i in (0, 1)] for days in (reference, current)
    )
    windows_read = {
        "reference": [reference[0], reference[-1]],
        "current": [current[0], current[-1]],
    }
    name = f"{dataset.task.table}.{dataset.task.target}"
    return _label_rate(name, pr, nr, pc, nc, read="history, by row day", days=windows_read)


def _label_shift(label_rate: dict[str, Any], cfg: MonitorConfig) -> list[dict[str, Any]]:
    """The label-shift reason, if the rate moved by over `label_rate_change` and significantly
    (marks `label_rate` drifted or not)."""
    threshold = cfg.label_rate_change
    shifted = (
        threshold is not None
        and min(label_rate["n_reference"], label_rate["n_current"]) >= cfg.min_count
        and abs(label_rate["change"]) > threshold
        and label_rate["p_value"] < 1 - cfg.confidence
    )
    label_rate["drifted"] = bool(shifted)
    if not shifted:
        return []
    return [
        _reason("label_shift", label_rate["column"], "rate_change", label_rate["change"],
                threshold, label_rate["n_reference"], label_rate["n_current"],
                p_value=float(f"{label_rate['p_value']:.3g}"),
                reference_rate=round(label_rate["reference_rate"], DIGITS),
                current_rate=round(label_rate["current_rate"], DIGITS))
    ]  # fmt: skip


def input_drift(
    profiles: Mapping[str, Mapping[str, Mapping]],
    dataset: DatasetConfig,
    inputs: Sequence[str],
    cutoff: dt.date,
    cfg: MonitorConfig,
    label_by_day: Mapping[str, tuple[int, int]] | None = None,
) -> dict[str, Any]:
    """Every compared column's measure, the periods, and the reasons: inputs that drifted
    (effect size over threshold and significant at `confidence`, Bonferroni over the inputs
    compared) and, for a classification whose target arrives with its rows, the label rate:
    from `label_by_day` (`label_days`) where given, else from the target's profiles."""
    roles = column_roles(dataset, inputs, cfg.seasonal)
    columns: dict[str, dict[str, Any]] = {}
    periods: dict[str, Any] = {}
    pending: list[tuple[str, Comparison, float]] = []
    seasonal: list[tuple[str, Comparison, float]] = []
    # from the history where given; else (or where its windows are empty) from the profiles
    label_rate = None
    if label_by_day is not None:
        label_rate = _history_label_rate(label_by_day, cutoff, dataset, cfg)
    for table, by_date in profiles.items():
        reference, current, moved_back = _input_windows(table, list(by_date), cutoff, dataset, cfg)
        periods[table] = _periods(by_date, reference, current, moved_back)
        if not reference or not current:
            continue
        for column, role in roles.get(table, {}).items():
            ref = [by_date[d]["columns"][column] for d in reference]
            cur = [by_date[d]["columns"][column] for d in current]
            name = f"{table}.{column}"
            if role == TARGET and not dataset.task.regression:
                # the target is the task table's: its windows are already `_label_windows`
                profiled = [_positives(days, dataset.task.labels) for days in (ref, cur)]
                label_rate = label_rate or _label_rate(name, *profiled[0], *profiled[1])
                continue
            numeric = ref[0]["type"] in NUMERIC_TYPES and not coded(column, ref + cur, dataset)
            role = compared_role(role, numeric, ref)
            measure = (
                compare_numeric(ref, cur, cfg.bins) if numeric else compare_categorical(ref, cur)
            )
            threshold = cfg.psi_threshold if numeric else cfg.js_threshold
            columns[name] = {"role": role, **measure.to_json(), "threshold": threshold}
            if role == INPUT:
                pending.append((name, measure, threshold))
            elif role == SEASONAL:
                seasonal.append((name, measure, threshold))
    reasons = []
    # a seasonal input that moved is no reason, but the scores it moves are no evidence either
    # (`monitor` lists their drift instead of counting it): judged with the inputs' test
    moved_alpha = (1 - cfg.confidence) / max(len(seasonal), 1)
    seasonal_moved = sorted(
        name for name, measure, threshold in seasonal
        if _drifted(measure, threshold, moved_alpha, cfg)
    )  # fmt: skip
    for name in seasonal_moved:
        columns[name]["moved"] = True
    alpha = (1 - cfg.confidence) / max(len(pending), 1)
    for name, measure, threshold in pending:
        drifted = _drifted(measure, threshold, alpha, cfg)
        columns[name]["drifted"] = bool(drifted)
        if drifted:
            reasons.append(
                _reason("input_drift", name, measure.statistic, measure.value, threshold,
                        measure.n_reference, measure.n_current,
                        p_value=columns[name]["p_value"], alpha=float(f"{alpha:.3g}"))
            )  # fmt: skip
    if label_rate is not None:
        reasons.extend(_label_shift(label_rate, cfg))
    return {
        "cutoff": cutoff.isoformat(),
        "periods": periods,
        "columns": columns,
        "label_rate": label_rate,
        "reasons": reasons,
        "seasonal_moved": seasonal_moved,
        "psi_max": _largest(columns, "psi"),
        "js_max": _largest(columns, "js_distance"),
    }


def _largest(columns: Mapping[str, Mapping[str, Any]], statistic: str) -> float | None:
    """The largest `statistic` over the model's inputs (the history's psi_max, js_max)."""
    values = [
        c["value"] for c in columns.values() if c["role"] == INPUT and c["statistic"] == statistic
    ]
    return max(values, default=None)


def _drifted(
    measure: Comparison, threshold: float | None, alpha: float, cfg: MonitorConfig
) -> bool:
    """Both: an effect size past the threshold, and a test saying it is more than noise."""
    enough = min(measure.n_reference, measure.n_current) >= cfg.min_count
    return bool(
        threshold is not None and enough and measure.value > threshold and measure.p_value < alpha
    )


def score_drift(
    reference: np.ndarray, current: np.ndarray | None, cfg: MonitorConfig, column: str
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """PSI and chi-square test of scores against the test split's; a reason when both say so."""
    if current is None or not len(current):
        return None, []
    measure = compare_values(reference, current, cfg.bins)
    threshold = cfg.score_psi_threshold
    enough = min(measure.n_reference, measure.n_current) >= cfg.min_count
    alpha = 1 - cfg.confidence
    drifted = (
        threshold is not None and enough and measure.value > threshold and measure.p_value < alpha
    )
    out = {**measure.to_json(), "threshold": threshold, "drifted": bool(drifted)}
    reasons = []
    if drifted:
        reasons.append(
            _reason("prediction_drift", column, "psi", measure.value, threshold,
                    measure.n_reference, measure.n_current, p_value=out["p_value"])
        )  # fmt: skip
    return out, reasons


def expected_roc_auc(scores: np.ndarray, calibrated: np.ndarray) -> float | None:
    """The ROC AUC these scores would have if each row's label were drawn with probability
    `calibrated` (CBPE): P(score_i > score_j | i positive, j negative), ties counted half."""
    order = np.argsort(scores, kind="stable")
    s, c = scores[order], calibrated[order]
    neg = 1.0 - c
    # negatives strictly below each score, and tied with it (minus the row itself)
    cum_neg = np.concatenate([[0.0], np.cumsum(neg)])
    lo = np.searchsorted(s, s, side="left")
    hi = np.searchsorted(s, s, side="right")
    below = cum_neg[lo]
    tied = cum_neg[hi] - cum_neg[lo] - neg
    numerator = float(np.sum(c * (below + 0.5 * tied)))
    denominator = float(c.sum() * neg.sum() - np.sum(c * neg))
    return numerator / denominator if denominator > 0 else None


def estimated_performance(
    reference: pd.DataFrame, batch_scores: np.ndarray, cfg: MonitorConfig
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Label-free: the ROC AUC expected from this run's scores, with the model calibrated as on
    its test split (isotonic fit of the test labels on the test scores), against the same
    estimate on the test split itself."""
    if "label" not in reference or len(reference) < cfg.min_count or not len(batch_scores):
        return None, []
    from sklearn.isotonic import IsotonicRegression

    ref_scores = reference["score"].to_numpy(dtype="float64")
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
    iso.fit(ref_scores, reference["label"].to_numpy(dtype="float64"))
    at_test = expected_roc_auc(ref_scores, iso.predict(ref_scores))
    now = expected_roc_auc(batch_scores, iso.predict(batch_scores))
    if at_test is None or now is None:
        return None, []
    drop = at_test - now
    out = {
        "estimated_roc_auc": round(now, DIGITS),
        "test_estimated_roc_auc": round(at_test, DIGITS),
        "drop": round(drop, DIGITS),
        "threshold": cfg.max_estimated_auc_drop,
        "n_reference": len(ref_scores),
        "n_current": len(batch_scores),
    }
    reasons = []
    if cfg.max_estimated_auc_drop is not None and drop > cfg.max_estimated_auc_drop:
        reasons.append(
            _reason("estimated_performance", "score", "estimated_roc_auc_drop", drop,
                    cfg.max_estimated_auc_drop, len(ref_scores), len(batch_scores),
                    estimated_roc_auc=round(now, DIGITS))
        )  # fmt: skip
    return out, reasons


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
    # here, not at the top: scikit-learn imports scipy.stats (~1.5 s together), which the daily
    # monitor run needs only once labels have matured
    from sklearn.metrics import brier_score_loss, roc_auc_score

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
    ref_mae, ref_se = _mae_and_se(ref_residuals)
    out = {}
    for date, part in joined.groupby(SNAPSHOT_COL, sort=True):
        residuals = (part["target"] - part["prediction"]).to_numpy(dtype="float64")
        mae, se = _mae_and_se(residuals)
        rise = mae / ref_mae - 1 if ref_mae else None
        low = None
        if rise is not None and mae > 0:
            # the ratio of two independent means' standard error (delta method): the rise's
            # lower bound, what the check compares with max_mae_increase (a week of a few
            # hundred rows has a MAE known to +-10 % or so)
            ratio_se = (mae / ref_mae) * float(np.hypot(se / mae, ref_se / ref_mae))
            low = rise - _z(cfg) * ratio_se
        drift = values_drift(ref_residuals, residuals, cfg.residual_drift())
        versions = (
            sorted(part["model_version"].astype(str).unique()) if "model_version" in part else []
        )
        out[pd.Timestamp(date).date().isoformat()] = round_floats(
            {
                **_residual_measures(residuals),
                "mean_prediction": float(part["prediction"].mean()),
                "mean_target": float(part["target"].mean()),
                "reference_mae": ref_mae,
                "mae_increase": rise,
                "mae_increase_ci_low": low,
                "residual_psi": drift["value"],
                "residual_drifted": bool(drift["drifted"]),
                "model_versions": versions,
            }
        )
    return out


def _mae_and_se(residuals: np.ndarray) -> tuple[float | None, float]:
    """The mean absolute residual and its standard error (None, 0 with no residual)."""
    if not len(residuals):
        return None, 0.0
    errors = np.abs(residuals)
    se = float(errors.std(ddof=1) / np.sqrt(len(errors))) if len(errors) > 1 else 0.0
    return float(errors.mean()), se


def _judged(performance: Mapping[str, Mapping[str, Any]], cfg: MonitorConfig) -> str | None:
    """The latest snapshot with at least `min_labelled` rows (None: none yet)."""
    judged = [d for d, m in performance.items() if m["n"] >= cfg.min_labelled]
    return max(judged) if judged else None


def _z(cfg: MonitorConfig) -> float:
    return float(ndtri(1 - (1 - cfg.confidence) / 2))


def auc_standard_error(auc: float, positives: int, negatives: int) -> float:
    """Hanley & McNeil's standard error of a ROC AUC on this many positives and negatives."""
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = (
        auc * (1 - auc) + (positives - 1) * (q1 - auc**2) + (negatives - 1) * (q2 - auc**2)
    ) / max(positives * negatives, 1)
    return float(np.sqrt(max(var, 0.0)))


def regression_reasons(
    performance: Mapping[str, Mapping[str, Any]], cfg: MonitorConfig, n_test: int
) -> list[dict[str, Any]]:
    """A regression's reasons from the latest snapshot with at least `min_labelled` rows."""
    date = _judged(performance, cfg)
    if date is None:
        return []
    m = performance[date]
    reasons = []
    rise, low = m["mae_increase"], m.get("mae_increase_ci_low")
    # residuals whose distribution moved while the errors shrank (a model better on this week
    # than on its test split) are listed, not a reason: retraining cannot be asked to undo it
    if m["residual_drifted"] and rise is not None and rise > 0:
        reasons.append(
            _reason("residual_drift", "residual", "psi", m["residual_psi"],
                    cfg.residual_psi_threshold, n_test, m["n"], snapshot=date)
        )  # fmt: skip
    # a reason only when the rise's confidence interval lies beyond the threshold, as every
    # performance check: a point estimate over it may be a week's noise on a few hundred rows
    if cfg.max_mae_increase is not None and low is not None and low > cfg.max_mae_increase:
        reasons.append(
            _reason("performance", "prediction", "mae_increase", rise, cfg.max_mae_increase,
                    n_test, m["n"], snapshot=date, ci_low=round(low, DIGITS))
        )  # fmt: skip
    return reasons


def reference_performance(reference: pd.DataFrame) -> dict[str, Any] | None:
    """The model's scores on its test split, measured as `realised_performance` measures a
    snapshot (n, positives, ROC AUC, observed rate, calibration gap): what a live snapshot is
    compared with. None without labels (a regression's reference has its own measures)."""
    if "label" not in reference or not len(reference):
        return None
    y = reference["label"].to_numpy(dtype="float64")
    p = reference["score"].to_numpy(dtype="float64")
    positives = int(y.sum())
    # the exact ROC AUC: the expected one with each label known for certain (no scikit-learn
    # import on a day no label has matured)
    auc = expected_roc_auc(p, y) if 0 < positives < len(y) else None
    rate = float(y.mean())
    measures = {"n": len(y), "positives": positives, "roc_auc": auc, "observed_rate": rate,
                "calibration_gap": rate - float(p.mean())}  # fmt: skip
    return round_floats(measures)


def regression_reference(reference: pd.DataFrame) -> dict[str, Any] | None:
    """A regression's measures on its test split (n, MAE, RMSE, mean residual), the ones
    each live snapshot's `mae_increase` and residual drift are measured against."""
    if not {"target", "prediction"} <= set(reference) or not len(reference):
        return None
    residuals = (reference["target"] - reference["prediction"]).to_numpy(dtype="float64")
    return round_floats(_residual_measures(residuals))


def _residual_measures(residuals: np.ndarray) -> dict[str, Any]:
    """n, MAE, RMSE and mean residual: a live snapshot's and the test split's alike."""
    return {
        "n": len(residuals),
        "mae": _mae_and_se(residuals)[0],
        "rmse": float(np.sqrt(np.mean(residuals**2))),
        "mean_residual": float(residuals.mean()),
    }


def _rate_variance(rate: float, n: int) -> float:
    return max(rate * (1 - rate), 0.0) / max(n, 1)


def performance_reasons(
    performance: Mapping[str, Mapping[str, Any]],
    cfg: MonitorConfig,
    n_test: int,
    test: Mapping[str, Any] | None = None,
    *,
    label_shift: bool = False,
) -> list[dict[str, Any]]:
    """Reasons from the latest matured snapshot with at least `min_labelled` rows, against the
    model's own performance on its test split (`test`: `reference_performance`), each only when its
    confidence interval lies beyond the threshold (a snapshot of a few hundred rows has a wide
    one): the ROC AUC's drop, the calibration gap's change and, with `label_shift`, the
    observed label rate's (the label rate of an entity-churn task is known only then). The
    live and the test rows are independent samples: each difference's variance is the sum."""
    date = _judged(performance, cfg)
    if date is None:
        return []
    m = performance[date]
    if "mae" in m:
        return regression_reasons(performance, cfg, n_test)
    reasons = []
    z = _z(cfg)
    auc, rate = m["roc_auc"], m["observed_rate"]
    se = 0.0 if auc is None else auc_standard_error(auc, m["positives"], m["n"] - m["positives"])
    test_auc = test.get("roc_auc") if test else None
    if cfg.max_roc_auc_drop is not None and auc is not None and test_auc is not None:
        negatives = test["n"] - test["positives"]
        se_drop = float(np.hypot(se, auc_standard_error(test_auc, test["positives"], negatives)))
        drop = test_auc - auc
        if drop - z * se_drop > cfg.max_roc_auc_drop:
            reasons.append(
                _reason("performance", "score", "roc_auc_drop", drop, cfg.max_roc_auc_drop,
                        n_test, m["n"], snapshot=date, roc_auc=auc, test_roc_auc=test_auc,
                        ci_low=round(drop - z * se_drop, DIGITS))
            )  # fmt: skip
    if cfg.min_roc_auc is not None and auc is not None and auc + z * se < cfg.min_roc_auc:
        reasons.append(
            _reason("performance", "score", "roc_auc", auc, cfg.min_roc_auc, n_test, m["n"],
                    snapshot=date, ci_high=round(auc + z * se, DIGITS))
        )  # fmt: skip
    if cfg.max_calibration_gap is not None and test:
        # the gap's change from the test split's: a gap the model had when the gate blessed it
        # (scores under a label rate that moved inside its training window) is the model, and
        # retraining the same way would give it again; a gap that opened since is its ageing
        change = m["calibration_gap"] - test["calibration_gap"]
        se_change = float(
            np.sqrt(_rate_variance(rate, m["n"]) + _rate_variance(test["observed_rate"], test["n"]))
        )
        if abs(change) - z * se_change > cfg.max_calibration_gap:
            reasons.append(
                _reason("calibration", "score", "calibration_gap_change", change,
                        cfg.max_calibration_gap, n_test, m["n"], snapshot=date,
                        calibration_gap=m["calibration_gap"],
                        test_calibration_gap=test["calibration_gap"])
            )  # fmt: skip
    if label_shift and test and cfg.label_rate_change is not None:
        test_rate = test["observed_rate"]
        change, p = rate_comparison(round(test_rate * n_test), n_test, m["positives"], m["n"])
        if abs(change) > cfg.label_rate_change and p < 1 - cfg.confidence:
            reasons.append(
                _reason("label_shift", "label", "rate_change", change, cfg.label_rate_change,
                        n_test, m["n"], snapshot=date, p_value=float(f"{p:.3g}"),
                        reference_rate=round(test_rate, DIGITS), current_rate=rate)
            )  # fmt: skip
    return reasons


def monitor(
    *,
    inputs: Mapping[str, Any],
    reference: pd.DataFrame,
    batch_scores: np.ndarray,
    served_scores: np.ndarray | None,
    performance: Mapping[str, Mapping[str, Any]],
    cfg: MonitorConfig,
    output: str = "score",
    label_shift: bool = False,
) -> dict[str, Any]:
    """The verdict: `retrain_recommended` and its `reasons`, with every measure behind them.

    `inputs` is `input_drift`'s report; `reference` the model's scores (and labels) on its test
    split; `served_scores` None when the server's log is absent or holds no authenticated
    request; `output` names what the scores are (a regression's: `prediction`)."""
    ref_scores = reference[output].to_numpy(dtype="float64")
    batch, batch_reasons = score_drift(ref_scores, batch_scores, cfg, output)
    served, served_reasons = score_drift(ref_scores, served_scores, cfg, f"served_{output}")
    moved = list(inputs.get("seasonal_moved") or [])
    if moved:
        # the scores follow the calendar's inputs (a week before Christmas scores higher): their
        # drift is listed with what explains it, never a reason; realised performance, once the
        # labels are in, says whether the model still holds
        for drift in (batch, served):
            if drift is not None and drift["drifted"]:
                drift["explained_by_seasonal"] = moved
        batch_reasons, served_reasons = [], []
    estimated, estimated_reasons = (None, [])
    if output == "score":
        estimated, estimated_reasons = estimated_performance(reference, batch_scores, cfg)
    test = (
        reference_performance(reference) if output == "score" else regression_reference(reference)
    )
    reasons = [
        *inputs["reasons"],
        *batch_reasons,
        *served_reasons,
        *estimated_reasons,
        *performance_reasons(performance, cfg, len(reference), test, label_shift=label_shift),
    ]
    return round_floats(
        {
            "retrain_recommended": bool(reasons),
            "reasons": reasons,
            "inputs": {k: v for k, v in inputs.items() if k != "reasons"},
            "prediction_drift": {"batch": batch, "served": served},
            "estimated_performance": estimated,
            "performance": {
                "test": test,
                "snapshots": dict(performance),
                # the snapshot the reasons judged (None: none holds min_labelled rows yet,
                # so no realised measure is a reason, however far it moved)
                "judged": _judged(performance, cfg),
                "min_labelled": cfg.min_labelled,
            },
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
    con = ibis.duckdb.connect()
    events, entities = read_history(con, history_dir, dataset)
    span = event_dates(con, events, dataset)[2]
    table = build_features(events, entities, dates, dataset, features, labelled=True, span=span)
    return table.select(dataset.entity_key, SNAPSHOT_COL, dataset.label.name).to_pandas()


def arrived_targets(history_dir: Path, dataset: DatasetConfig, keys: pd.Series) -> pd.DataFrame:
    """A rows task's targets known now for the rows `keys` names: key and the target (0/1,
    or a regression's number), from prepare's history of the task's table. A row whose
    outcome has not arrived is left out, as is one of a row newer than the task's
    `label_delay_days` (its outcome is not known yet, whatever the lake holds)."""
    task = dataset.task
    source = history_dir / f"{task.table}.parquet"
    if not source.is_file():
        raise FileNotFoundError(f"{source}: prepare's history of table '{task.table}' not found")
    con = ibis.duckdb.connect()
    table = con.read_parquet(source)
    target = target_value(table, dataset)
    matured = target.notnull()
    if task.label_delay_days:  # the zone's days are read only where they matter
        day = table_days(con, table, dataset).day_number(table[task.time])
        matured = matured_target(target, day, day.max().as_scalar(), task)
    known = table.filter(matured).select(task.key, _target=target).to_pandas()
    zone = dataset.table(task.table).timezone
    kind = known[task.key].dtype
    known["_match"] = comparable_keys(known[task.key], kind, zone)
    known = known.drop_duplicates("_match", keep="last")
    wanted = pd.DataFrame({"_key": keys.to_numpy()}).drop_duplicates("_key")
    wanted["_match"] = comparable_keys(wanted["_key"], kind, zone)
    found = wanted.merge(known[["_match", "_target"]], on="_match", how="inner")
    # keyed as the caller gave them: a served key stays the text the client sent
    return pd.DataFrame({task.key: found["_key"].to_numpy(), "target": found["_target"].to_numpy()})


def comparable_keys(values: pd.Series, kind: Any, zone: str) -> pd.Series:
    """Keys as the history's key column `kind` compares them: numbers as float64 (an int64
    key the history stores as a float, a served id sent as text), times as naive UTC, the
    rest as text. A time sent as text without an offset is a wall clock in the table's `zone`
    (as validate reads the column); with one, exact. A served `"2024-11-03T07:00:00"` never
    matched the history's UTC timestamp, nor `"123"` its integer: served requests of a rows
    task keyed so were never labelled."""
    if pd.api.types.is_datetime64_any_dtype(kind):
        if pd.api.types.is_datetime64_any_dtype(values.dtype):
            # the history's and the published keys: naive UTC already, compared as they are
            # (one by one, `_utc_instant` reads a monitor's whole history in Python)
            if isinstance(values.dtype, pd.DatetimeTZDtype):
                values = values.dt.tz_convert("UTC").dt.tz_localize(None)
            return values.astype("datetime64[us]")
        return values.map(lambda v: _utc_instant(v, zone)).astype("datetime64[us]")
    if pd.api.types.is_numeric_dtype(kind):
        return pd.to_numeric(values, errors="coerce").astype("float64")
    return values.astype(str)


def _utc_instant(value: Any, zone: str) -> pd.Timestamp:
    """A key time as naive UTC: text read as a wall clock in `zone` unless it has an offset;
    a timestamp as it is (the history's and the published keys are naive UTC already)."""
    try:
        moment = pd.Timestamp(value)
    except (ValueError, TypeError):
        return pd.NaT
    if moment is pd.NaT:
        return pd.NaT
    if moment.tzinfo is None:
        if not isinstance(value, str):
            return moment
        moment = moment.tz_localize(zone, ambiguous=True, nonexistent="shift_forward")
    return moment.tz_convert("UTC").tz_localize(None)


def performance_by_kind(
    dataset: DatasetConfig,
    published: pd.DataFrame,
    labels: pd.DataFrame,
    reference: pd.DataFrame,
    cfg: MonitorConfig,
) -> dict[str, dict[str, Any]]:
    """Realised performance of the matured published predictions by the task's kind, given
    what is known of their outcomes: `labels` holds an entity churn's matured labels (key,
    snapshot date, label), or a rows task's targets by key (key, target). The monitor stage
    reads them from prepare's history (`live_performance`), the backtest from memory."""
    key = dataset.entity_key
    if not dataset.task.rows:
        return realised_performance(published, labels, key, dataset.label.name)
    if published.empty or labels.empty:
        return {}
    published, first = pool_latest(published, published[key].isin(labels[key]), key, cfg)
    if dataset.task.regression:
        out = realised_regression(published, labels, key, reference, cfg)
    else:
        joined = published[[key, SNAPSHOT_COL]].merge(labels, on=key, how="inner")
        out = realised_performance(published, joined, key, "target")
    if first is not None and out:
        out[max(out)]["pooled_from"] = first
    return out


def pool_latest(
    published: pd.DataFrame, labelled: pd.Series, key: str, cfg: MonitorConfig
) -> tuple[pd.DataFrame, str | None]:
    """A rows task's latest snapshots pooled into the latest one until it holds `min_labelled`
    labelled rows, within the current window (`last_days` days): a daily run on a clinic's
    110 appointments a day publishes each day's new rows as its own snapshot, none of which
    would ever reach 200 and be judged; a week of them is. Dense snapshots are judged alone,
    as before. A row published in several of the pooled snapshots counts once, with its first
    prediction. Returns the predictions (the pooled ones dated as the latest) and the first
    pooled date (None: nothing pooled)."""
    if published.empty:
        return published, None
    published, labelled = published.reset_index(drop=True), labelled.reset_index(drop=True)
    dates = pd.to_datetime(published[SNAPSHOT_COL]).dt.date
    counts = labelled.groupby(dates).sum()
    latest = max(counts.index)
    pooled, n = [], 0
    for day in sorted(counts.index, reverse=True):
        if n >= cfg.min_labelled or (latest - day).days >= cfg.last_days:
            break
        pooled.append(day)
        n += int(counts[day])
    if len(pooled) < 2:
        return published, None
    moved = dates.isin(pooled)
    order = dates.sort_values(kind="stable").index
    pool = published.loc[order][moved.loc[order]].drop_duplicates(key, keep="first")
    pool = pool.assign(**{SNAPSHOT_COL: published.loc[dates == latest, SNAPSHOT_COL].iloc[0]})
    out = pd.concat([published[~moved], pool], ignore_index=True)
    return out, min(pooled).isoformat()


def live_performance(
    history_dir: Path,
    dataset: DatasetConfig,
    features: FeaturesConfig,
    published: pd.DataFrame,
    matured: Sequence[dt.date],
    reference: pd.DataFrame,
    cfg: MonitorConfig,
) -> dict[str, dict[str, Any]]:
    """`performance_by_kind` with the outcomes from prepare's history: entity churn labels
    from the features stage's label code, a rows task's targets by key."""
    if not dataset.task.rows:
        labels = matured_labels(history_dir, dataset, features, matured)
    elif published.empty:
        return {}  # no key to look up: the history is not read
    else:
        labels = arrived_targets(history_dir, dataset, published[dataset.entity_key])
    return performance_by_kind(dataset, published, labels, reference, cfg)


def upsert_history(history: pd.DataFrame, row: Mapping[str, Any]) -> pd.DataFrame:
    """The history with `row` replacing any row of the same date, sorted by date (`history`
    holds one dataset's rows: `read_history`)."""
    kept = history[history["date"].astype(str) != str(row["date"])] if len(history) else history
    frame = pd.concat([kept, pd.DataFrame([row])], ignore_index=True)
    columns = [*HISTORY_COLUMNS, *(c for c in REGRESSION_HISTORY_COLUMNS if c in row)]
    return frame.reindex(columns=columns).sort_values("date", kind="stable")


def history_row(
    report: Mapping[str, Any],
    date: str,
    model_version: str,
    *,
    regression: bool = False,
    dataset: str | None = None,
) -> dict[str, Any]:
    inputs = report["inputs"]
    snapshots = report["performance"]["snapshots"]
    live = max(snapshots) if snapshots else None
    batch, served = report["prediction_drift"]["batch"], report["prediction_drift"]["served"]
    estimated = report.get("estimated_performance")
    row = {
        "date": date,
        DATASET: dataset,
        "model_version": model_version,
        "retrain_recommended": int(report["retrain_recommended"]),
        "reasons": len(report["reasons"]),
        "psi_max": inputs["psi_max"],
        "js_max": inputs["js_max"],
        "score_psi": None if batch is None else batch["value"],
        "served_score_psi": None if served is None else served["value"],
        "estimated_roc_auc": None if estimated is None else estimated["estimated_roc_auc"],
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


# the history row's identifiers: in the report and the history, not compared as metrics
NOT_HEADLINE = ("model_version", "live_snapshot")


def headline(row: Mapping[str, Any], *, regression: bool = False) -> dict[str, Any]:
    """metrics/monitor.json: a history row's scalars (`history_row`), the verdict a boolean; a
    regression leaves out the classification's columns it never fills."""
    unused = ("live_roc_auc", "calibration_gap", "estimated_roc_auc") if regression else ()
    out = {k: v for k, v in row.items() if k not in (*NOT_HEADLINE, *unused)}
    out["retrain_recommended"] = bool(row["retrain_recommended"])
    return out


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
    # the whole report (every input, window and snapshot); None: the headline only
    report: Path | None = None
    # the train split: the served inputs' reference (training-serving skew); None: not judged
    train: Path | None = None


def judged_predictions(
    published: pd.DataFrame,
    batch: pd.DataFrame,
    evaluated: dt.date,
    last_day: dt.date,
    dataset: DatasetConfig,
    reference: pd.DataFrame,
) -> tuple[pd.DataFrame, list[dt.date]]:
    """The predictions the monitor judges the model on, and their snapshot dates: only those
    it made on rows it never saw, with their labels (snapshots after `evaluated`, the latest
    one it was evaluated on, whose labels have matured by `last_day`). The monitor stage and
    the backtest both read them so.

    A rows task's snapshot is the end of a period counted back from the latest day, so a day
    later the latest period still holds six days of the test split: its rows (`reference`,
    by key) are left out, since the model was judged on them, whatever their period."""
    horizon = dt.timedelta(days=dataset.label.horizon_days)
    matured: list[dt.date] = []
    if not published.empty:
        dates = sorted({pd.Timestamp(d).date() for d in published[SNAPSHOT_COL]})
        matured = [d for d in dates if d > evaluated and d + horizon <= last_day]
    published = (
        published[pd.to_datetime(published[SNAPSHOT_COL]).dt.date.isin(matured)]
        if matured
        else published.iloc[0:0]
    )
    if dataset.task.rows:
        seen = set(reference[dataset.entity_key]) if len(reference) else set()
        if seen and len(published):
            published = published[~published[dataset.entity_key].isin(seen)]
            matured = sorted({pd.Timestamp(d).date() for d in published[SNAPSHOT_COL]})
        if seen and len(batch):
            batch = batch[~batch[dataset.entity_key].isin(seen)]
    if dataset.task.rows and not horizon and len(batch):
        # prequential: a rows task whose targets arrive with their rows has this run's batch
        # scored by the model before it ever saw those rows; where they are newer than what it
        # was judged on, their targets judge it now (a row published earlier keeps its first
        # prediction)
        fresh = batch[pd.to_datetime(batch[SNAPSHOT_COL]).dt.date > evaluated]
        if len(fresh):
            published = pd.concat([published, fresh], ignore_index=True).drop_duplicates(
                dataset.entity_key, keep="first"
            )
            matured = sorted({*matured, *pd.to_datetime(fresh[SNAPSHOT_COL]).dt.date})
    return published, matured


def run_monitor(args: MonitorPaths) -> dict[str, Any]:
    """Judge the latest data and predictions; write monitor.json and upsert the history CSV."""
    params = load_params(args.params)
    dataset = dataset_from_params(section(params, "dataset"))
    features = FeaturesConfig.from_params(section(params, "features"))
    cfg = MonitorConfig.from_params(settings_for(params, "monitor"))
    card = ModelCard.read(args.card)
    train_dates = card.train_snapshot_dates
    if not train_dates:
        raise ValueError(f"{args.card}: lacks data.train_snapshot_dates (the training reference)")
    features_of_card = card.features or {}
    model_inputs = [
        f["name"]
        for kind in ("numeric", "categorical")
        for f in features_of_card.get(kind) or ()
        if isinstance(f, Mapping) and "name" in f
    ]
    profiles = {t.name: read_profiles(args.profile_dir, t.name) for t in dataset.tables}
    # the table whose latest partition dates the run: the events, or a rows task's table
    main_table = dataset.task.table if dataset.task.rows else dataset.events.name
    if not profiles[main_table]:
        raise FileNotFoundError(f"{args.profile_dir}/{main_table}: no profiles")
    for name in (PREDICTIONS, REFERENCE):
        if not (args.predict_dir / name).is_file():
            raise FileNotFoundError(f"{args.predict_dir / name}: not found (the predict stage)")
    batch = pd.read_parquet(args.predict_dir / PREDICTIONS)
    reference = pd.read_parquet(args.predict_dir / REFERENCE)
    horizon = dt.timedelta(days=dataset.label.horizon_days)
    # the latest snapshot the model was judged on (its test split), and the last day of data
    # that judgement read (its labels look `horizon` days ahead): the reference window ends
    # there, so "now" is compared with the data the model was last shown to be good on
    evaluated = (
        pd.Timestamp(reference[SNAPSHOT_COL].max()).date()
        if SNAPSHOT_COL in reference and len(reference)
        else dt.date.fromisoformat(str(max(train_dates))[:10])
    )
    cutoff = evaluated + horizon
    labels_by_day = label_days(args.history_dir, dataset)
    inputs = input_drift(profiles, dataset, model_inputs, cutoff, cfg, labels_by_day)
    output = PREDICTION if dataset.task.regression else SCORE
    serve = params.get("serve") or {}
    # only requests that carried the API key: anyone can send the others, and 400 extreme
    # requests would otherwise move the served-score drift (the info says how many there were)
    served, served_info = read_logged(
        serve.get("predictions_path"), cfg.served_days, output, authenticated_only=True
    )

    lake = str(section(params, "lake.path"))
    published = read_published(lake)
    last_day = dt.date.fromisoformat(max(profiles[main_table]))
    published, matured = judged_predictions(
        published, batch, evaluated, last_day, dataset, reference
    )
    performance = live_performance(
        args.history_dir, dataset, features, published, matured, reference, cfg
    )
    report = monitor(
        inputs=inputs,
        reference=reference,
        batch_scores=batch[output].to_numpy(dtype="float64"),
        served_scores=served,
        performance=performance,
        cfg=cfg,
        output=output,
        label_shift=not dataset.task.rows,
    )
    model_version = str(batch["model_version"].iloc[0]) if len(batch) else ""
    report.update(
        date=last_day.isoformat(),
        model_version=model_version,
        served=served_info,
        published={
            "lake": lake,
            "evaluated_until": evaluated.isoformat(),
            "snapshots": len(set(published.get(SNAPSHOT_COL, []))),
            "matured": [d.isoformat() for d in matured],
        },
    )
    report.update(served_sections(params, card, args.history_dir, args.train, last_day))
    row = history_row(
        report,
        last_day.isoformat(),
        model_version,
        regression=dataset.task.regression,
        dataset=dataset.name,
    )
    if args.report is not None:
        write_metrics(args.report, report)
    write_metrics(
        args.out, {**headline(row, regression=dataset.task.regression), **served_headline(report)}
    )
    history, ignored = read_monitor_history(args.history_out, dataset.name, HISTORY_COLUMNS)
    if ignored:
        # rows of another dataset are dropped from the file: the history is this project's
        print(f"monitor: {ignored}; the history keeps this dataset's rows only", file=sys.stderr)
    history = upsert_history(history, row)
    write_bytes_atomic(history.to_csv(index=False, lineterminator="\n").encode(), args.history_out)
    return report


# --- the served requests: the shadow's record and the serving skew (stages/lib/shadow.py) ----


def request_labels(
    log: pd.DataFrame | None,
    history_dir: Path,
    dataset: DatasetConfig,
    features: FeaturesConfig,
    last_day: dt.date,
) -> pd.DataFrame:
    """The labels known now for the logged requests: key (text), request_date, label. Entity
    churn: a request's day is its snapshot date, its label matured once the horizon has passed
    by `last_day`, computed with the features stage's label code; a rows task: the row's
    target once it arrived, by key."""
    key = dataset.entity_key
    empty = pd.DataFrame(columns=[key, DATE, "label"])
    if log is None or log.empty or key not in log:
        return empty
    if dataset.task.rows:
        targets = arrived_targets(history_dir, dataset, log[key].astype(str))
        if targets.empty:
            return empty
        return pd.DataFrame(
            {key: targets[dataset.task.key].astype(str), "label": targets["target"]}
        )
    horizon = dt.timedelta(days=dataset.label.horizon_days)
    dates = sorted({d for d in log[DATE] if d + horizon <= last_day})
    if not dates:
        return empty
    labels = matured_labels(history_dir, dataset, features, dates)
    return pd.DataFrame(
        {
            key: labels[key].astype(str),
            DATE: pd.to_datetime(labels[SNAPSHOT_COL]).dt.date,
            "label": labels[dataset.label.name].astype("float64"),
        }
    )


def served_sections(
    params: Mapping[str, Any],
    card: ModelCard,
    history_dir: Path,
    train_path: Path | None,
    last_day: dt.date,
    *,
    authenticated_only: bool = True,
) -> dict[str, Any]:
    """`shadow` (its record and verdict) and `serving_skew` (the logged inputs against the
    train split) from the server's log of its latest `monitor.served_days` days."""
    from stages.lib.predictions import decision_threshold

    dataset = dataset_from_params(section(params, "dataset"))
    features = FeaturesConfig.from_params(section(params, "features"))
    cfg = MonitorConfig.from_params(settings_for(params, "monitor"))
    gate = params.get("gate") or {}
    shadow_cfg = ShadowConfig(
        threshold=decision_threshold(params.get("evaluate") or {}),
        bins=cfg.bins,
        min_labelled=cfg.min_labelled,
        confidence=float(gate.get("confidence", 0.95)),
        resamples=int(gate.get("bootstrap", 1000)),
        seed=int(params.get("seed", 0)),
    )
    serve = params.get("serve") or {}
    log, info = read_log(
        serve.get("predictions_path"), cfg.served_days, authenticated_only=authenticated_only
    )
    train, groups = None, None
    if log is not None and train_path is not None:
        if not train_path.is_file():
            raise FileNotFoundError(f"{train_path}: the train split not found (the split stage)")
        train = pd.read_parquet(train_path)
        groups = train[SNAPSHOT_COL].astype(str) if SNAPSHOT_COL in train else None
    labels = request_labels(log, history_dir, dataset, features, last_day)
    return live_sections(
        log,
        info,
        labels,
        train,
        card.features or {},
        key=dataset.entity_key,
        regression=dataset.task.regression,
        cfg=shadow_cfg,
        skew={
            "bins": cfg.bins,
            "psi_threshold": cfg.psi_threshold,
            "js_threshold": cfg.js_threshold,
            "confidence": cfg.confidence,
            "min_count": cfg.min_count,
        },
        train_groups=groups,
    )


def print_verdict(report: Mapping[str, Any]) -> None:
    verdict = "RETRAIN recommended" if report["retrain_recommended"] else "no retraining needed"
    print(f"monitor {report['date']}: {verdict}")
    for r in report["reasons"]:
        print(
            f"  {r['kind']}: {r['column']} {r['statistic']}={r['value']} "
            f"(threshold {r['threshold']}; n {r['n_reference']} vs {r['n_current']})"
        )
    for line in (
        *(shadow_lines(report["shadow"]) if "shadow" in report else ()),
        *(skew_lines(report["serving_skew"]) if "serving_skew" in report else ()),
    ):
        print(line)
