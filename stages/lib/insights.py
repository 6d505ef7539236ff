"""The core of the `report` stage (stages/report.py): the business-insights page of the batch
predictions, in HTML and Markdown.

    python -m stages.report artifacts/predict/predictions.parquet \
        artifacts/features/predict.parquet models/model.onnx \
        artifacts/features/feature_schema.json metrics/monitor.json \
        metrics/monitor_history.csv reports [--params params.yaml]

Writes `<out>/report.html` (self-contained: styles inline, figures embedded as base64 data
URIs, no external URL, so it opens offline and can be mailed), `<out>/report.md` (the same
content, figures as PNG files in `<out>/figures/`). Sections:

- the risk distribution of the scored entities, with the decision threshold;
- expected revenue at risk by segment: the sum of score x value per segment value, where the
  segments and the value column are params (`report.segments`, `report.value_column`) with
  defaults taken from the dataset (its categorical entity features; its first numeric entity
  feature, else the trailing amount over the longest window);
- the top-N entities at risk with their main drivers: for each feature, the score minus the
  score with that feature set to the population's typical value (median, or most frequent
  category), through the ONNX model; the features that raise the score most are its drivers;
- the trend against previous runs (the predictions published to the lake) and the monitoring
  history and verdict (`metrics/monitor.json`, `metrics/monitor_history.csv`).

The sections follow the task's kind (`dataset.task.kind`): the above for `entity_churn`; for
`rows_classification` the same numbers about rows (score distribution, predicted positive rate
and value by segment, the top-N rows by score and their drivers); for `rows_regression` the
prediction distribution, the prediction by segment, the top-N predictions and their drivers,
and the residuals of the published predictions whose targets arrived (from monitoring), with
nothing about risk, thresholds or churn. Segments default to the task's categorical features.

Figures are drawn with matplotlib's Agg canvas (no pyplot state) and saved without the
software/date metadata, so the same inputs give byte-identical files.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from stages.contract.feature_schema import FeatureSchema
from stages.contract.onnx_predict import OnnxPredictor
from stages.lib.dataset import DatasetConfig
from stages.lib.io import write_bytes_atomic
from stages.lib.predictions import SNAPSHOT_COL

HTML_FILE, MD_FILE, FIGURES = "report.html", "report.md", "figures"
DPI = 100
# PNG text chunks matplotlib would add (its version); none: bytes depend on the data only
PNG_METADATA = {"Software": None}
TITLES = {
    "distribution": "{Label}-risk distribution",
    "revenue": "Expected revenue at risk by segment",
    "top": "Top {n} at risk and their main drivers",
    "trend": "Trend against previous runs",
    "monitoring": "Monitoring",
}
# a rows task's sections speak of rows and of the predicted class, not of risk
ROWS_TITLES = {
    **TITLES,
    "distribution": "Score distribution (predicted probability of {label} = 1)",
    "revenue": "Predicted {label} rate and value by segment",
    "top": "Top {n} rows by score and their main drivers",
}
REGRESSION_TITLES = {
    "distribution": "Prediction distribution ({label})",
    "segments": "Predicted {label} by segment",
    "top": "Top {n} predictions and their main drivers",
    "residuals": "Residuals of published predictions (targets arrived)",
    "trend": TITLES["trend"],
    "monitoring": TITLES["monitoring"],
}


@dataclass(frozen=True)
class ReportConfig:
    segments: tuple[str, ...]
    value_column: str | None
    top_n: int = 20
    drivers: int = 3
    score_bins: int = 20

    @classmethod
    def from_params(
        cls, raw: Mapping[str, Any], dataset: DatasetConfig, schema: FeatureSchema
    ) -> ReportConfig:
        """The `report` section, its nulls filled from the dataset."""
        known = {"segments", "value_column", "top_n", "drivers", "score_bins"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"params report: unknown keys {unknown} (known: {sorted(known)})")
        segments = raw.get("segments")
        # a rows task has no entity attributes: its segments are its categorical features
        default = schema.categorical if dataset.task.rows else dataset.entity_features.categorical
        segments = tuple(default if segments is None else segments)
        value = raw.get("value_column")
        if value is None and not dataset.task.rows:
            value = default_value_column(dataset, schema)
        cfg = cls(
            segments=segments,
            value_column=value,
            top_n=int(raw.get("top_n", 20)),
            drivers=int(raw.get("drivers", 3)),
            score_bins=int(raw.get("score_bins", 20)),
        )
        if cfg.top_n < 1 or cfg.drivers < 1 or cfg.score_bins < 2:
            raise ValueError("params report: top_n and drivers must be >= 1, score_bins >= 2")
        return cfg


def default_value_column(dataset: DatasetConfig, schema: FeatureSchema) -> str | None:
    """An entity's value when the config names none: its first numeric attribute (a price),
    else the amount of the first amount-carrying event type over the longest window."""
    for name in dataset.entity_features.numeric:
        if name in schema.numeric:
            return name
    amounts = [
        f
        for t in dataset.amount_types
        for f in schema.numeric
        if f.startswith(f"{dataset.event_features.get(t)}_amount_")
    ]
    return max(amounts, key=lambda f: int(f.rsplit("_", 1)[1].rstrip("d"))) if amounts else None


def check_columns(frame: pd.DataFrame, cfg: ReportConfig, source: str) -> None:
    wanted = [*cfg.segments, *([cfg.value_column] if cfg.value_column else [])]
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{source}: report.segments/value_column name column(s) {missing} that the "
            f"prediction set lacks (it has: {', '.join(map(str, frame.columns))})"
        )


# --- the numbers ----------------------------------------------------------------------------


def scored_frame(predictions: pd.DataFrame, features: pd.DataFrame, key: str) -> pd.DataFrame:
    """The prediction set's rows with their score and decision (a regression: prediction)."""
    outputs = ["prediction"] if "prediction" in predictions.columns else ["score", "decision"]
    cols = [key, *outputs]
    merged = features.merge(predictions[cols], on=key, how="inner", validate="one_to_one")
    if len(merged) != len(predictions):
        raise ValueError(
            f"predictions: {len(predictions)} rows but {len(merged)} match the prediction set "
            f"on '{key}' (built from other features?)"
        )
    return merged


def risk_by_segment(frame: pd.DataFrame, cfg: ReportConfig) -> dict[str, pd.DataFrame]:
    """Per segment column: entities, at risk (decision), mean score and expected value at risk
    (sum of score x value), largest first."""
    value = (
        pd.to_numeric(frame[cfg.value_column]).fillna(0.0).to_numpy(dtype="float64")
        if cfg.value_column
        else np.ones(len(frame))
    )
    base = pd.DataFrame(
        {
            "entities": 1,
            "at_risk": frame["decision"].astype("int64"),
            "score": frame["score"],
            "value": value,
            "value_at_risk": frame["score"].to_numpy() * value,
        }
    )
    out = {}
    for col in cfg.segments:
        groups = base.groupby(frame[col].astype("string").fillna("(missing)"), sort=True)
        table = groups.agg(
            entities=("entities", "sum"),
            at_risk=("at_risk", "sum"),
            mean_score=("score", "mean"),
            value=("value", "sum"),
            value_at_risk=("value_at_risk", "sum"),
        )
        table["share_at_risk"] = table["value_at_risk"] / table["value"].where(table["value"] > 0)
        table.index.name = col
        out[col] = table.reset_index().sort_values(
            ["value_at_risk", col], ascending=[False, True], kind="stable"
        )
    return out


def prediction_by_segment(frame: pd.DataFrame, cfg: ReportConfig) -> dict[str, pd.DataFrame]:
    """A regression's predictions per segment column: rows, mean, total, min and max of the
    prediction, largest total first."""
    out = {}
    for col in cfg.segments:
        groups = frame["prediction"].groupby(
            frame[col].astype("string").fillna("(missing)"), sort=True
        )
        table = groups.agg(rows="size", mean_prediction="mean", total="sum", min="min", max="max")
        table.index.name = col
        out[col] = table.reset_index().sort_values(
            ["total", col], ascending=[False, True], kind="stable"
        )
    return out


def typical_row(population: pd.DataFrame, schema: FeatureSchema) -> dict[str, Any]:
    """The population's median of each numeric feature and most frequent category (ties:
    the smallest value)."""
    typical: dict[str, Any] = {}
    for col in schema.numeric:
        values = pd.to_numeric(population[col]).astype("float64")
        typical[col] = float(values.median()) if values.notna().any() else np.nan
    for col in schema.categorical:
        counts = population[col].dropna().astype(str).value_counts()
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        typical[col] = ranked[0][0] if ranked else None
    return typical


def drivers(
    top: pd.DataFrame,
    population: pd.DataFrame,
    predictor: OnnxPredictor,
    schema: FeatureSchema,
    k: int,
) -> list[list[tuple[str, float]]]:
    """For each row of `top`, up to `k` (feature, score change) pairs: how much the row's
    own value of the feature raises its score over the typical value. Positive changes only,
    largest first (ties by feature order). Deterministic: one batch through the model."""
    typical = typical_row(population, schema)
    features = list(schema.features)
    rows = top.reset_index(drop=True)
    # row i*F + j is row i with feature j set to its typical value
    perturbed = rows.loc[np.repeat(np.arange(len(rows)), len(features))].reset_index(drop=True)
    for j, col in enumerate(features):
        at = np.arange(len(rows)) * len(features) + j
        perturbed[col] = perturbed[col].astype(object)
        perturbed.loc[at, col] = typical[col]
    base = predictor.predict(rows)
    moved = predictor.predict(perturbed).reshape(len(rows), len(features))
    out = []
    for i in range(len(rows)):
        change = base[i] - moved[i]
        order = sorted(range(len(features)), key=lambda j: (-change[j], j))
        out.append([(features[j], float(change[j])) for j in order[:k] if change[j] > 1e-9])
    return out


def trend_table(published: pd.DataFrame, current: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Per snapshot date: entities, mean score, share at or above the threshold, the model
    version (a regression: rows and mean prediction); published runs from the lake, plus this
    run when it is not published yet."""
    frames = [published] if not published.empty else []
    dates = set(pd.to_datetime(published[SNAPSHOT_COL]).dt.date) if frames else set()
    current_dates = set(pd.to_datetime(current[SNAPSHOT_COL]).dt.date)
    if not current_dates <= dates:
        frames.append(current.assign(_this_run=True))
    frame = pd.concat(frames, ignore_index=True)
    frame[SNAPSHOT_COL] = pd.to_datetime(frame[SNAPSHOT_COL]).dt.date
    if "_this_run" not in frame:
        frame["_this_run"] = False
    if "prediction" in frame.columns:
        table = (
            frame.groupby(SNAPSHOT_COL, sort=True)
            .agg(
                rows=("prediction", "size"),
                mean_prediction=("prediction", "mean"),
                model_version=("model_version", "last"),
                this_run=("_this_run", "any"),
            )
            .reset_index()
        )
        table["model_version"] = table["model_version"].astype(str).str[:12]
        return table
    frame["_at_risk"] = frame["score"] >= threshold
    grouped = frame.groupby(SNAPSHOT_COL, sort=True)
    table = grouped.agg(
        entities=("score", "size"),
        mean_score=("score", "mean"),
        share_at_risk=("_at_risk", "mean"),
        model_version=("model_version", "last"),
        this_run=("_this_run", "any"),
    ).reset_index()
    table["model_version"] = table["model_version"].astype(str).str[:12]
    return table


# --- figures --------------------------------------------------------------------------------


def png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata=PNG_METADATA)
    return buf.getvalue()


def distribution_figure(scores: np.ndarray, threshold: float, bins: int, label: str) -> bytes:
    fig = Figure(figsize=(7, 3.2), layout="constrained")
    ax = fig.add_subplot()
    ax.hist(scores, bins=np.linspace(0, 1, bins + 1), color="#3b7dd8", edgecolor="white")
    ax.axvline(threshold, color="#d62728", linestyle="--", label=f"threshold {threshold:g}")
    ax.set_xlabel(f"predicted {label} probability")
    ax.set_ylabel("entities")
    ax.legend(loc="upper right")
    return png(fig)


def prediction_figure(predictions: np.ndarray, bins: int, label: str) -> bytes:
    """A regression's histogram of predictions over their own range (no threshold)."""
    fig = Figure(figsize=(7, 3.2), layout="constrained")
    ax = fig.add_subplot()
    ax.hist(predictions, bins=bins, color="#3b7dd8", edgecolor="white")
    ax.set_xlabel(f"predicted {label}")
    ax.set_ylabel("rows")
    return png(fig)


def segments_figure(
    tables: Mapping[str, pd.DataFrame], value_label: str, column: str = "value_at_risk"
) -> bytes:
    n = max(len(tables), 1)
    fig = Figure(figsize=(3.4 * n, 3.2), layout="constrained")
    for i, (col, table) in enumerate(tables.items()):
        ax = fig.add_subplot(1, n, i + 1)
        ax.barh(table[col].astype(str)[::-1], table[column][::-1], color="#e8833a")
        ax.set_title(col)
        ax.set_xlabel(value_label)
    return png(fig)


def trend_figure(trend: pd.DataFrame, history: pd.DataFrame) -> bytes:
    fig = Figure(figsize=(9, 3.2), layout="constrained")
    left = fig.add_subplot(1, 2, 1)
    x = [str(d) for d in trend[SNAPSHOT_COL]]
    regression = "mean_prediction" in trend.columns
    if regression:
        left.plot(x, trend["mean_prediction"], marker="o", label="mean prediction")
    else:
        left.plot(x, trend["mean_score"], marker="o", label="mean score")
        left.plot(x, trend["share_at_risk"], marker="s", label="share at risk")
        left.set_ylim(0, 1)
    left.set_title("batch predictions per run")
    left.legend(loc="upper left")
    left.tick_params(axis="x", labelrotation=45)
    right = fig.add_subplot(1, 2, 2)
    right.set_title("monitoring history")
    if len(history):
        hx = history["date"].astype(str).tolist()
        live = "residual_psi" if regression else "live_roc_auc"
        for col, marker in (("psi_max", "o"), ("score_psi", "s"), (live, "^")):
            values = pd.to_numeric(history[col], errors="coerce")
            if values.notna().any():
                right.plot(hx, values, marker=marker, label=col)
        right.legend(loc="upper left")
        right.tick_params(axis="x", labelrotation=45)
    return png(fig)


# --- the page -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    columns: list[str]
    rows: list[list[str]]


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, float | np.floating):
        return f"{float(value):,.{digits}f}"
    return str(value)


def frame_table(frame: pd.DataFrame, digits: Mapping[str, int] | None = None) -> Table:
    digits = digits or {}
    return Table(
        list(map(str, frame.columns)),
        [
            [_fmt(v, digits.get(c, 3)) for c, v in zip(frame.columns, row, strict=True)]
            for row in frame.itertuples(index=False)
        ],
    )


@dataclass(frozen=True)
class Section:
    key: str
    title: str
    text: list[str]
    figure: str | None = None  # figure name in FIGURES
    tables: tuple[tuple[str, Table], ...] = ()


def build_sections(
    *,
    frame: pd.DataFrame,
    schema: FeatureSchema,
    cfg: ReportConfig,
    threshold: float,
    label: str,
    top: pd.DataFrame,
    top_drivers: list[list[tuple[str, float]]],
    segments: Mapping[str, pd.DataFrame],
    trend: pd.DataFrame,
    monitor: Mapping[str, Any],
    history: pd.DataFrame,
    rows: bool = False,
) -> list[Section]:
    """The page's sections, as text, tables and figure names (rendered to HTML and Markdown).
    `rows`: a rows_classification's wording (rows and the predicted class, not risk)."""
    key = schema.entity_key
    titles, noun = (ROWS_TITLES, "rows") if rows else (TITLES, "entities")
    scores = frame["score"].to_numpy()
    date = ", ".join(sorted({str(d) for d in pd.to_datetime(frame[schema.time]).dt.date}))
    at_risk = int(frame["decision"].sum())
    quantiles = np.quantile(scores, [0.5, 0.9]) if len(scores) else [np.nan, np.nan]
    value_label = (
        f"expected {cfg.value_column} at risk" if cfg.value_column else "expected entities lost"
    )
    if rows:
        value_label = f"expected {cfg.value_column}" if cfg.value_column else "expected positives"
        how = (
            f"Per segment value: the rows, those predicted {label} = 1 (score at or above "
            f"{threshold:g}), the mean score, and the expected "
            + (f"`{cfg.value_column}` (score × value, summed)." if cfg.value_column else "")
            + ("" if cfg.value_column else "number of positives (the sum of the scores).")
        )
    elif cfg.value_column:
        how = (
            f"Expected revenue at risk = predicted {label} probability × `{cfg.value_column}` "
            f"(the customer value: {value_source(cfg.value_column, schema)}), summed per "
            "segment value; `share` is that sum over the segment's total value."
        )
    else:
        how = (
            "No value column: the expected number of entities lost (the sum of the "
            "probabilities) per segment value."
        )
    top_rows = [
        [
            str(row[key]),
            _fmt(float(row["score"])),
            _fmt(float(row[cfg.value_column]), 2) if cfg.value_column else "–",
            *[_fmt(row[s]) for s in cfg.segments],
            "; ".join(f"{f} = {_fmt(row[f], 2)} (+{d:.3f})" for f, d in drv) or "–",
        ]
        for (_, row), drv in zip(top.iterrows(), top_drivers, strict=True)
    ]
    top_table = Table(
        [key, "score", cfg.value_column or "value", *cfg.segments, "main drivers (score change)"],
        top_rows,
    )
    renamed = (
        {"entities": "rows", "at_risk": "predicted_positive", "share_at_risk": "share"}
        if rows
        else {}
    )
    return [
        Section(
            "distribution",
            titles["distribution"].format(Label=label.capitalize(), label=label),
            [
                f"{len(frame)} {noun} scored at {date or '–'}; {at_risk} "
                f"({at_risk / max(len(frame), 1):.1%}) at or above the decision threshold "
                f"{threshold:g}. Median score {_fmt(quantiles[0])}, 90th percentile "
                f"{_fmt(quantiles[1])}.",
            ],
            figure="distribution.png",
        ),
        Section(
            "revenue",
            titles["revenue"].format(label=label),
            [how],
            figure="segments.png",
            tables=tuple(
                (col, frame_table(t.rename(columns={**renamed, "value_at_risk": value_label})))
                for col, t in segments.items()
            ),
        ),
        Section(
            "top",
            titles["top"].format(n=len(top)),
            [
                f"Drivers: for each feature, the {noun[:-1] if rows else 'entity'}'s score minus "
                "its score with that "
                "feature set to the population's typical value (median, or most frequent "
                "category), through the served model; the features that raise it most."
            ],
            tables=(("", top_table),),
        ),
        *trend_and_monitoring(trend, monitor, history),
    ]


def build_regression_sections(
    *,
    frame: pd.DataFrame,
    schema: FeatureSchema,
    cfg: ReportConfig,
    label: str,
    top: pd.DataFrame,
    top_drivers: list[list[tuple[str, float]]],
    segments: Mapping[str, pd.DataFrame],
    trend: pd.DataFrame,
    monitor: Mapping[str, Any],
    history: pd.DataFrame,
) -> list[Section]:
    """A regression's sections: its predictions, by segment, the largest with their drivers,
    the residuals once targets arrived, the trend and monitoring."""
    key = schema.entity_key
    values = frame["prediction"].to_numpy(dtype="float64")
    date = ", ".join(sorted({str(d) for d in pd.to_datetime(frame[schema.time]).dt.date}))
    q = np.quantile(values, [0.1, 0.5, 0.9]) if len(values) else [np.nan] * 3
    top_table = Table(
        [key, "prediction", *cfg.segments, "main drivers (prediction change)"],
        [
            [
                str(row[key]),
                _fmt(float(row["prediction"])),
                *[_fmt(row[c]) for c in cfg.segments],
                "; ".join(f"{f} = {_fmt(row[f], 2)} (+{d:.3f})" for f, d in drv) or "–",
            ]
            for (_, row), drv in zip(top.iterrows(), top_drivers, strict=True)
        ],
    )
    return [
        Section(
            "distribution",
            REGRESSION_TITLES["distribution"].format(label=label),
            [
                f"{len(frame)} rows predicted at {date or '–'}: mean {_fmt(values.mean())}, "
                f"10th percentile {_fmt(q[0])}, median {_fmt(q[1])}, 90th percentile "
                f"{_fmt(q[2])}."
                if len(values)
                else "No rows to predict."
            ],
            figure="distribution.png",
        ),
        Section(
            "segments",
            REGRESSION_TITLES["segments"].format(label=label),
            [f"Per segment value: the rows and their predicted `{label}` (mean, total, range)."],
            figure="segments.png",
            tables=tuple((col, frame_table(t)) for col, t in segments.items()),
        ),
        Section(
            "top",
            REGRESSION_TITLES["top"].format(n=len(top)),
            [
                "Drivers: for each feature, the row's prediction minus its prediction with that "
                "feature set to the population's typical value (median, or most frequent "
                "category), through the served model; the features that raise it most."
            ],
            tables=(("", top_table),),
        ),
        *trend_and_monitoring(trend, monitor, history, regression=True),
    ]


def trend_and_monitoring(
    trend: pd.DataFrame,
    monitor: Mapping[str, Any],
    history: pd.DataFrame,
    *,
    regression: bool = False,
) -> list[Section]:
    """The trend of batch predictions and the monitoring verdict (every kind has them; a
    regression's realised performance has its own columns)."""
    reasons = monitor.get("reasons") or []
    verdict = (
        "**retraining recommended**"
        if monitor.get("retrain_recommended")
        else ("no retraining needed")
    )
    reason_keys = ("kind", "column", "statistic", "value", "threshold", "n_reference", "n_current")
    reason_table = Table(
        list(reason_keys), [[str(r.get(k, "")) for k in reason_keys] for r in reasons]
    )
    served = monitor.get("served") or {}
    perf = (monitor.get("performance") or {}).get("snapshots") or {}
    perf_cols = (
        ("n", "mae", "rmse", "mean_residual", "mae_increase", "residual_psi")
        if regression
        else ("n", "positives", "roc_auc", "brier", "mean_score", "observed_rate")
    )
    perf_table = Table(
        ["snapshot", *perf_cols],
        [[d, *[_fmt(m.get(k)) for k in perf_cols]] for d, m in sorted(perf.items())],
    )
    live = ("live_mae", "residual_psi") if regression else ("live_roc_auc",)
    hist_cols = [
        c
        for c in (
            "date",
            "retrain_recommended",
            "psi_max",
            "score_psi",
            "served_score_psi",
            *live,
        )
        if c in history.columns
    ]
    residuals = Section(
        "residuals",
        REGRESSION_TITLES["residuals"],
        [
            "Published predictions joined by key with the targets that arrived since (from "
            "monitoring): residual = target - prediction; `mae_increase` is the MAE over the "
            "test split's minus 1, `residual_psi` the residuals' drift against the test split's."
            if perf
            else "No published prediction has its target yet (`evergreen publish` after a run; "
            "the next data brings the targets).",
        ],
        tables=(("", perf_table),) if perf else (),
    )
    return [
        *([residuals] if regression else []),
        Section(
            "trend",
            TITLES["trend"],
            [
                f"Batch predictions per run: the {max(len(trend) - 1, 0)} earlier run(s) "
                "published to the lake and this one."
            ],
            figure="trend.png",
            tables=(("", frame_table(trend)),),
        ),
        Section(
            "monitoring",
            TITLES["monitoring"],
            [
                f"Verdict for {monitor.get('date', '–')}: {verdict}"
                + (f" ({len(reasons)} reason(s))." if reasons else "."),
                f"Served predictions: {served.get('status', '–')}"
                + (f" ({served.get('detail')})" if served.get("detail") else "")
                + (f", {served.get('rows')} rows" if served.get("rows") else "")
                + ".",
            ],
            tables=tuple(
                (title, t)
                for title, t in (
                    ("Reasons", reason_table),
                    # a regression's is its residuals section
                    (
                        "Realised performance (published predictions, matured labels)",
                        Table([], []) if regression else perf_table,
                    ),
                    ("History", frame_table(history[hist_cols]) if hist_cols else Table([], [])),
                )
                if t.rows
            ),
        ),
    ]


def value_source(column: str, schema: FeatureSchema) -> str:
    return (
        "an amount over a trailing window"
        if "_amount_" in column
        else "an entity attribute as of the snapshot date"
    ) + (" (a model feature)" if column in schema.features else "")


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem auto;max-width:1100px;
color:#1d2330;padding:0 1rem}
h1{border-bottom:3px solid #3b7dd8;padding-bottom:.3rem}
section{margin:2rem 0}
table{border-collapse:collapse;margin:.6rem 0;font-size:.85rem}
th,td{border:1px solid #d0d5dd;padding:.25rem .5rem;text-align:left}
th{background:#eef2f8}
img{max-width:100%;border:1px solid #e5e7eb}
"""


def _md_inline(text: str) -> str:
    return text


def _html_inline(text: str) -> str:
    out = html.escape(text)
    parts = out.split("**")
    out = "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))
    parts = out.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def render_html(title: str, sections: Sequence[Section], figures: Mapping[str, bytes]) -> str:
    body = [f"<h1>{html.escape(title)}</h1>"]
    for s in sections:
        body.append(f'<section id="{s.key}">')
        body.append(f"<h2>{html.escape(s.title)}</h2>")
        body += [f"<p>{_html_inline(t)}</p>" for t in s.text]
        if s.figure:
            data = base64.b64encode(figures[s.figure]).decode()
            body.append(f'<img alt="{html.escape(s.title)}" src="data:image/png;base64,{data}">')
        for name, table in s.tables:
            if name:
                body.append(f"<h3>{html.escape(name)}</h3>")
            head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
            rows = "".join(
                "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>"
                for row in table.rows
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        body.append("</section>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def render_markdown(title: str, sections: Sequence[Section]) -> str:
    lines = [f"# {title}", ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        for t in s.text:
            lines += [_md_inline(t), ""]
        if s.figure:
            lines += [f"![{s.title}]({FIGURES}/{s.figure})", ""]
        for name, table in s.tables:
            if name:
                lines += [f"### {name}", ""]
            cells = [[c.replace("|", "\\|") for c in row] for row in table.rows]
            lines.append("| " + " | ".join(table.columns) + " |")
            lines.append("|" + "---|" * len(table.columns))
            lines += ["| " + " | ".join(row) + " |" for row in cells]
            lines.append("")
    return "\n".join(lines)


# --- the stage --------------------------------------------------------------------------------


def classification_report(
    frame: pd.DataFrame,
    schema: FeatureSchema,
    cfg: ReportConfig,
    label: str,
    top: pd.DataFrame,
    top_drivers: list[list[tuple[str, float]]],
    trend: pd.DataFrame,
    monitor: Mapping[str, Any],
    history: pd.DataFrame,
    *,
    threshold: float,
    rows: bool,
) -> tuple[list[Section], dict[str, bytes]]:
    """A classification's sections and figures (entities at risk, or a rows task's expected
    positives)."""
    segments = risk_by_segment(frame, cfg)
    value_label = f"{cfg.value_column} at risk" if cfg.value_column else "entities lost"
    if rows:
        value_label = f"expected {cfg.value_column}" if cfg.value_column else "expected positives"
    figures = {
        "distribution.png": distribution_figure(
            frame["score"].to_numpy(), threshold, cfg.score_bins, label
        ),
        "segments.png": segments_figure(segments, value_label),
        "trend.png": trend_figure(trend, history),
    }
    sections = build_sections(
        frame=frame,
        schema=schema,
        cfg=cfg,
        threshold=threshold,
        label=label,
        top=top,
        top_drivers=top_drivers,
        segments=segments,
        trend=trend,
        monitor=monitor,
        history=history,
        rows=rows,
    )
    return sections, figures


def regression_report(
    frame: pd.DataFrame,
    schema: FeatureSchema,
    cfg: ReportConfig,
    label: str,
    top: pd.DataFrame,
    top_drivers: list[list[tuple[str, float]]],
    trend: pd.DataFrame,
    monitor: Mapping[str, Any],
    history: pd.DataFrame,
) -> tuple[list[Section], dict[str, bytes]]:
    """A regression's sections and figures."""
    segments = prediction_by_segment(frame, cfg)
    figures = {
        "distribution.png": prediction_figure(
            frame["prediction"].to_numpy(dtype="float64"), cfg.score_bins, label
        ),
        "segments.png": segments_figure(segments, f"total predicted {label}", "total"),
        "trend.png": trend_figure(trend, history),
    }
    sections = build_regression_sections(
        frame=frame,
        schema=schema,
        cfg=cfg,
        label=label,
        top=top,
        top_drivers=top_drivers,
        segments=segments,
        trend=trend,
        monitor=monitor,
        history=history,
    )
    return sections, figures


def write_report(
    out_dir: Path, title: str, page: tuple[Sequence[Section], Mapping[str, bytes]], rows: int
) -> None:
    sections, figures = page
    for name, data in figures.items():
        write_bytes_atomic(data, out_dir / FIGURES / name)
    write_bytes_atomic(render_html(title, sections, figures).encode(), out_dir / HTML_FILE)
    write_bytes_atomic(render_markdown(title, sections).encode(), out_dir / MD_FILE)
    print(f"report: {out_dir / HTML_FILE} and {out_dir / MD_FILE} ({rows} rows)")
