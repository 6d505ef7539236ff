"""The core of the `report` stage (stages/report.py): the business-insights page of the batch
predictions, in HTML and Markdown.

    python -m stages.report artifacts/predict/predictions.parquet \
        artifacts/features/predict.parquet models/model.onnx \
        artifacts/features/feature_schema.json metrics/monitor.json \
        metrics/monitor_history.csv reports [--params params.yaml] \
        [--train artifacts/split/train.parquet]

Writes `<out>/report.html` (self-contained: styles inline, figures embedded as base64 data
URIs, no external URL, so it opens offline and can be mailed), `<out>/report.md` (the same
content, figures as PNG files in `<out>/figures/`).

The page is a list of sections, each made by a section builder (a function of PageInputs that
returns a Page: its sections and their figures); `builders_for` lists a task's, and
`build_page` appends any others (EXTRA_SECTIONS) after them. The sections follow the task's
kind (`dataset.task.kind`), and so do the words (Words):

- `entity_churn`: the entities are named after the entity key (`customer_id`: customers, else
  `report.noun`). The risk distribution with the decision threshold; expected revenue at risk
  by segment: the sum of score x value per segment value, where the segments and the value
  column are params (`report.segments`, `report.value_column`) with defaults taken from the
  dataset (its categorical entity features; its first numeric entity feature, else the
  trailing amount over the longest window); the top-N entities at risk with their main drivers.
- `rows_classification`: the same numbers about rows (or `report.noun`) and the predicted
  class: score distribution, predicted positive rate and expected value by segment, the top-N
  rows by score; no churn, risk or customer anywhere.
- `rows_regression`: the prediction distribution with the target's range seen in training
  (predictions outside it are counted and flagged: a negative count, a value above any seen),
  the prediction by segment, the top-N predictions, and the residuals of the published
  predictions whose targets arrived (from monitoring); nothing about risk or thresholds.

Every kind ends with the trend against previous runs (the predictions published to the lake)
and the monitoring history and verdict. Drivers: for each feature, the score minus the score
with that feature set to the population's typical value (median, or most frequent category),
through the ONNX model; the features that raise the score most. A row is named by its time and
key (a rows task's time column; its surrogate key, a hash, only where times collide).

A segment column with more than `report.segment_values` values shows its largest values (by the
quantity displayed) plus one "other (k values)"; several segment columns are panels stacked one
per row; a figure with nothing to draw is left out and a sentence says why.

Figures are drawn with matplotlib's Agg canvas (no pyplot state) and saved without the
software/date metadata, so the same inputs give byte-identical files.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
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
BLUE, ORANGE, GREY, RED = "#3b7dd8", "#e8833a", "#9aa3b2", "#d62728"
MISSING = "(missing)"
# the label of the bar and row that lump a segment column's smaller values together
OTHER_RE = re.compile(r"^other \(\d+ values\)$")
# a bar's height in a segment panel (inches): 100 dpi makes it 28 px, room for 10 pt labels
BAR_INCHES, PANEL_INCHES = 0.28, 0.9
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
    "distribution": "Score distribution (predicted probability of {label} = {positive})",
    "revenue": "Predicted {label} rate and value by segment",
    "top": "Top {n} {items} by score and their main drivers",
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
    # a segment column's values shown one by one; the rest are lumped as "other"
    segment_values: int = 10
    # what the page calls one scored thing (None: from the task, see Words)
    noun: str | None = None

    @classmethod
    def from_params(
        cls, raw: Mapping[str, Any], dataset: DatasetConfig, schema: FeatureSchema
    ) -> ReportConfig:
        """The `report` section, its nulls filled from the dataset."""
        known = {
            "segments",
            "value_column",
            "top_n",
            "drivers",
            "score_bins",
            "segment_values",
            "noun",
        }
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
        noun = raw.get("noun")
        if noun is not None and (not isinstance(noun, str) or not noun.strip()):
            raise ValueError(f"params report.noun: expected a word (or null), got {noun!r}")
        cfg = cls(
            segments=segments,
            value_column=value,
            top_n=int(raw.get("top_n", 20)),
            drivers=int(raw.get("drivers", 3)),
            score_bins=int(raw.get("score_bins", 20)),
            segment_values=int(10 if raw.get("segment_values") is None else raw["segment_values"]),
            noun=noun.strip() if noun else None,
        )
        if cfg.top_n < 1 or cfg.drivers < 1 or cfg.score_bins < 2 or cfg.segment_values < 1:
            raise ValueError(
                "params report: top_n, drivers and segment_values must be >= 1, score_bins >= 2"
            )
        return cfg


# a numeric attribute whose name says money (monthly_price, mrr, balance): an entity's value;
# any other (birth_year, age, tenure) is not, and revenue at risk must never be weighed by it
MONEY = re.compile(
    r"(price|revenue|amount|value|spend|mrr|arr|arpu|fee|cost|salary|balance|income|ltv)",
    re.IGNORECASE,
)


def default_value_column(dataset: DatasetConfig, schema: FeatureSchema) -> str | None:
    """An entity's value when the config names none: its first numeric attribute whose name
    says money (a price), else the amount of the first amount-carrying event type over the
    longest window, else none (expected positives)."""
    for name in dataset.entity_features.numeric:
        if name in schema.numeric and MONEY.search(name):
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


# --- the words ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Words:
    """What the page calls the things it scores. Entity churn names its entities after the
    entity key (customer_id: customer) and speaks of risk and revenue; a rows task speaks of
    rows and of the predicted class or value, never of churn or customers."""

    kind: str  # dataset.task.kind
    one: str
    many: str
    # what a positive is called: "1", or a rows task's classes mapped to 1 ("TRUE", "yes")
    positive: str = "1"

    @property
    def churn(self) -> bool:
        return self.kind == "entity_churn"


def words_for(dataset: DatasetConfig, noun: str | None = None) -> Words:
    """The task's words; `noun` (report.noun) names one scored thing when given."""
    if noun:
        one = noun
    elif dataset.task.rows:
        one = "row"
    else:
        one = entity_noun(dataset.entity_key)
    labels = dataset.task.labels or {}
    positive = " or ".join(sorted(str(k) for k, v in labels.items() if int(v) == 1)) or "1"
    return Words(dataset.task.kind, one, plural(one), positive)


def entity_noun(key: str) -> str:
    """customer_id -> customer, accountKey -> account; a key that names nothing: entity."""
    stem = re.sub(r"(?i)[_\- ]?(id|key|no|number|code)$", "", key.strip())
    stem = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", stem).replace("_", " ").strip().lower()
    return stem if re.fullmatch(r"[a-z][a-z ]*", stem or "") else "entity"


def plural(word: str) -> str:
    if re.search(r"[^aeiou]y$", word):
        return word[:-1] + "ies"
    if re.search(r"(s|x|z|ch|sh)$", word):
        return word + "es"
    return word + "s"


def row_ids(dataset: DatasetConfig, schema: FeatureSchema, rows: pd.DataFrame) -> tuple[str, ...]:
    """The columns that name a row in the page's tables: an entity's key (its snapshot date is
    the page's); a rows task's time column and key, its surrogate key (a hash no one can read)
    only where the time alone does not tell `rows` apart."""
    key, time = schema.entity_key, dataset.task.time
    if not dataset.task.rows or not time or time not in rows.columns:
        return (key,)
    if time == key:
        return (time,)
    surrogate = dataset.task.surrogate_key or schema.surrogate_key
    if surrogate and not rows[time].duplicated().any():
        return (time,)
    return (time, key)


def local_times(rows: pd.DataFrame, dataset: DatasetConfig) -> pd.DataFrame:
    """A rows task's time column shown in its table's zone (validate stores naive UTC): a New
    York trip at 20:47 on the 24th is not "2016-07-25 00:47:37"; the page prints the zone's
    abbreviation with it. A UTC table's times are shown as they are."""
    time = dataset.task.time
    if not dataset.task.rows or not time or time not in rows.columns or not len(rows):
        return rows
    zone = dataset.table(dataset.task.table).timezone
    stamps = rows[time]
    if zone == "UTC" or not pd.api.types.is_datetime64_dtype(stamps):
        return rows
    return rows.assign(**{time: stamps.dt.tz_localize("UTC").dt.tz_convert(zone)})


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


def _segment_tables(
    frame: pd.DataFrame,
    base: pd.DataFrame,
    cfg: ReportConfig,
    summarise: Callable[[Any], pd.DataFrame],
    quantity: str,
) -> dict[str, pd.DataFrame]:
    """Per segment column: `summarise` of `base`'s rows grouped by the column's value, largest
    `quantity` first. Past `cfg.segment_values` values, the smaller ones are grouped again as
    one "other (k values)" row, last: 36 countries make 10 readable bars, not 36 slivers."""
    out = {}
    for col in cfg.segments:
        values = pd.Series(
            frame[col].astype("string").fillna(MISSING).to_numpy(dtype=object), index=base.index
        )
        table = summarise(base.groupby(values, sort=True))
        other = None
        if len(table) > cfg.segment_values:
            # the index is sorted: a stable sort breaks ties by the value's name
            ranked = table[quantity].sort_values(ascending=False, kind="stable").index
            kept = set(ranked[: cfg.segment_values])
            other = f"other ({len(table) - len(kept)} values)"
            values = values.where(values.isin(kept), other)
            table = summarise(base.groupby(values, sort=True))
        table.index.name = col
        table = table.reset_index()
        last = (table[col] == other).astype("int64")
        out[col] = (
            table.assign(_last=last)
            .sort_values(["_last", quantity, col], ascending=[True, False, True], kind="stable")
            .drop(columns="_last")
            .reset_index(drop=True)
        )
    return out


def risk_by_segment(frame: pd.DataFrame, cfg: ReportConfig) -> dict[str, pd.DataFrame]:
    """Per segment column: entities, at risk (decision), mean score and expected value at risk
    (sum of score x value), largest first."""
    value = (
        pd.to_numeric(frame[cfg.value_column]).fillna(0.0).to_numpy(dtype="float64")
        if cfg.value_column
        else np.ones(len(frame))
    )
    scores = frame["score"].to_numpy(dtype="float64")
    base = pd.DataFrame(
        {
            "entities": 1,
            "at_risk": frame["decision"].to_numpy().astype("int64"),
            "score": scores,
            "value": value,
            "value_at_risk": scores * value,
        },
        index=pd.RangeIndex(len(frame)),
    )

    def summarise(groups: Any) -> pd.DataFrame:
        table = groups.agg(
            entities=("entities", "sum"),
            at_risk=("at_risk", "sum"),
            mean_score=("score", "mean"),
            value=("value", "sum"),
            value_at_risk=("value_at_risk", "sum"),
        )
        table["share_at_risk"] = table["value_at_risk"] / table["value"].where(table["value"] > 0)
        return table

    return _segment_tables(frame, base, cfg, summarise, "value_at_risk")


def prediction_by_segment(frame: pd.DataFrame, cfg: ReportConfig) -> dict[str, pd.DataFrame]:
    """A regression's predictions per segment column: rows, mean, total, min and max of the
    prediction, largest total first."""
    base = pd.DataFrame(
        {"prediction": frame["prediction"].to_numpy(dtype="float64")},
        index=pd.RangeIndex(len(frame)),
    )

    def summarise(groups: Any) -> pd.DataFrame:
        return groups["prediction"].agg(
            rows="size", mean_prediction="mean", total="sum", min="min", max="max"
        )

    return _segment_tables(frame, base, cfg, summarise, "total")


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
    if top.empty:
        return []
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
    version (a regression: rows and mean prediction); published runs from the lake, and this
    run in place of what was published for its dates (a day scored again by a champion just
    promoted is published again: the earlier run's rows are replaced, not the day's story)."""
    current_dates = set(pd.to_datetime(current[SNAPSHOT_COL]).dt.date)
    frames = []
    if not published.empty:
        earlier = ~pd.to_datetime(published[SNAPSHOT_COL]).dt.date.isin(current_dates)
        frames.append(published[earlier])
    frames.append(current.assign(_this_run=True))
    frame = pd.concat([f for f in frames if not f.empty] or frames[-1:], ignore_index=True)
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


@dataclass(frozen=True)
class OutOfRange:
    """A regression's predictions against the target's range seen in training."""

    low: float
    high: float
    below: int
    above: int
    negative: int

    @property
    def outside(self) -> int:
        return self.below + self.above


def out_of_range(values: np.ndarray, observed: tuple[float, float]) -> OutOfRange:
    low, high = observed
    # a model that extrapolates past a non-negative target predicts what cannot happen
    negative = int((values < 0).sum()) if low >= 0 else 0
    return OutOfRange(low, high, int((values < low).sum()), int((values > high).sum()), negative)


def target_range(train: pd.DataFrame, label: str) -> tuple[float, float] | None:
    """The target's smallest and largest value in the training split (None: none known)."""
    values = pd.to_numeric(train[label], errors="coerce").dropna() if label in train else ()
    return (float(values.min()), float(values.max())) if len(values) else None


# --- figures --------------------------------------------------------------------------------


def png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata=PNG_METADATA)
    return buf.getvalue()


def distribution_figure(
    scores: np.ndarray, threshold: float, bins: int, label: str, counted: str = "entities"
) -> bytes | None:
    """The scores' histogram with the threshold; None: no score to draw."""
    if not len(scores):
        return None
    fig = Figure(figsize=(7, 3.2), layout="constrained")
    ax = fig.add_subplot()
    ax.hist(scores, bins=np.linspace(0, 1, bins + 1), color=BLUE, edgecolor="white")
    ax.axvline(threshold, color=RED, linestyle="--", label=f"threshold {threshold:g}")
    ax.set_xlabel(f"predicted {label} probability")
    ax.set_ylabel(counted)
    ax.legend(loc="upper right")
    return png(fig)


def prediction_figure(
    predictions: np.ndarray,
    bins: int,
    label: str,
    observed: tuple[float, float] | None = None,
) -> bytes | None:
    """A regression's histogram of predictions over their own range (no threshold), with the
    target's range seen in training; None: no prediction to draw."""
    values = predictions[np.isfinite(predictions)]
    if not len(values):
        return None
    fig = Figure(figsize=(7, 3.2), layout="constrained")
    ax = fig.add_subplot()
    ax.hist(values, bins=bins, color=BLUE, edgecolor="white")
    if observed is not None:
        for i, edge in enumerate(observed):
            ax.axvline(
                edge,
                color=RED,
                linestyle="--",
                label=f"{label} range in training ({observed[0]:g} to {observed[1]:g})"
                if i == 0
                else None,
            )
        ax.legend(loc="upper right")
    ax.set_xlabel(f"predicted {label}")
    ax.set_ylabel("rows")
    return png(fig)


def segments_figure(
    tables: Mapping[str, pd.DataFrame], value_label: str, column: str = "value_at_risk"
) -> bytes | None:
    """One panel per segment column, stacked one per row (side by side, nine columns make
    nine unreadable slivers), each as tall as its bars; "other" in grey. A column whose bars
    are all zero has nothing to draw: its table says it. None: no panel."""
    panels = [
        (col, t)
        for col, t in tables.items()
        if len(t) and np.nan_to_num(t[column].to_numpy(dtype="float64")).any()
    ]
    if not panels:
        return None
    heights = [BAR_INCHES * len(t) + PANEL_INCHES for _, t in panels]
    fig = Figure(figsize=(8, sum(heights)), layout="constrained")
    grid = fig.add_gridspec(len(panels), 1, height_ratios=heights)
    for i, (col, table) in enumerate(panels):
        ax = fig.add_subplot(grid[i])
        names = table[col].astype(str).tolist()[::-1]
        colors = [GREY if OTHER_RE.match(n) else ORANGE for n in names]
        ax.barh(names, table[column].to_numpy(dtype="float64")[::-1], color=colors)
        ax.set_title(col, loc="left", fontweight="bold")
        ax.set_xlabel(value_label)
        ax.tick_params(axis="y", labelsize=9)
    return png(fig)


def trend_figure(
    trend: pd.DataFrame, history: pd.DataFrame, positive: str = "share at risk"
) -> bytes | None:
    """The batch predictions per run and, when there is any, the monitoring history beside
    it (never an empty panel); None: no run to draw."""
    if trend.empty:
        return None
    regression = "mean_prediction" in trend.columns
    live = "residual_psi" if regression else "live_roc_auc"
    series = [
        (col, marker, pd.to_numeric(history[col], errors="coerce"))
        for col, marker in (("psi_max", "o"), ("score_psi", "s"), (live, "^"))
        if len(history) and col in history.columns and "date" in history.columns
    ]
    series = [s for s in series if s[2].notna().any()]
    fig = Figure(figsize=(9 if series else 7, 3.2), layout="constrained")
    left = fig.add_subplot(1, 2 if series else 1, 1)
    x = [str(d) for d in trend[SNAPSHOT_COL]]
    if regression:
        left.plot(x, trend["mean_prediction"], marker="o", label="mean prediction")
    else:
        left.plot(x, trend["mean_score"], marker="o", label="mean score")
        left.plot(x, trend["share_at_risk"], marker="s", label=positive)
        left.set_ylim(0, 1)
    left.set_title("batch predictions per run")
    left.legend(loc="upper left")
    left.tick_params(axis="x", labelrotation=45)
    if series:
        right = fig.add_subplot(1, 2, 2)
        right.set_title("monitoring history")
        hx = history["date"].astype(str).tolist()
        for col, marker, values in series:
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
    if value is None or value is pd.NaT or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, float | np.floating):
        return f"{float(value):,.{digits}f}"
    if isinstance(value, dt.datetime | np.datetime64):
        stamp = pd.Timestamp(value)
        text = stamp.strftime("%Y-%m-%d %H:%M:%S" if stamp.second else "%Y-%m-%d %H:%M")
        return f"{text} {stamp.tzname()}" if stamp.tzinfo else text
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


@dataclass(frozen=True)
class Page:
    """Sections in page order and the figures they name."""

    sections: list[Section] = field(default_factory=list)
    figures: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class PageInputs:
    """Everything a section builder may read: the scored prediction set (`frame`: the
    features plus score and decision, or prediction), its top rows and their drivers, the
    trend, monitoring, and the words of the task."""

    frame: pd.DataFrame
    schema: FeatureSchema
    cfg: ReportConfig
    words: Words
    label: str
    top: pd.DataFrame
    top_drivers: list[list[tuple[str, float]]]
    trend: pd.DataFrame
    monitor: Mapping[str, Any]
    history: pd.DataFrame
    threshold: float = 0.5
    # the columns that name a row in tables (row_ids); empty: the entity key
    ids: tuple[str, ...] = ()
    # a regression target's smallest and largest value in training (None: unknown)
    observed: tuple[float, float] | None = None

    @property
    def snapshot(self) -> str:
        dates = pd.to_datetime(self.frame[self.schema.time]) if len(self.frame) else []
        return ", ".join(sorted({str(d.date()) for d in dates})) or "–"


SectionBuilder = Callable[[PageInputs], Page]


def _figure(name: str, data: bytes | None) -> tuple[str | None, dict[str, bytes]]:
    return (name, {name: data}) if data is not None else (None, {})


def distribution_section(inputs: PageInputs) -> Page:
    """A classification's score distribution with the decision threshold."""
    words, label, frame = inputs.words, inputs.label, inputs.frame
    titles = TITLES if words.churn else ROWS_TITLES
    scores = frame["score"].to_numpy(dtype="float64")
    positive = int(frame["decision"].sum())
    q = np.quantile(scores, [0.5, 0.9]) if len(scores) else [np.nan, np.nan]
    where = "at risk: " if words.churn else f"predicted {label} = {words.positive}: "
    text = (
        f"{len(frame)} {words.many} scored at {inputs.snapshot}; {where}{positive} "
        f"({positive / max(len(frame), 1):.1%}) at or above the decision threshold "
        f"{inputs.threshold:g}. Median score {_fmt(q[0])}, 90th percentile {_fmt(q[1])}."
        if len(frame)
        else f"No {words.many} to score: the prediction set is empty."
    )
    name, figures = _figure(
        "distribution.png",
        distribution_figure(scores, inputs.threshold, inputs.cfg.score_bins, label, words.many),
    )
    section = Section(
        "distribution",
        titles["distribution"].format(
            Label=label.capitalize(), label=label, positive=words.positive
        ),
        [text],
        figure=name,
    )
    return Page([section], figures)


def _no_segments(words: Words) -> str:
    return (
        f"No segment column: the {words.many} have no categorical input to group by "
        "(name columns of the prediction set in `report.segments`)."
    )


def _lumped(cfg: ReportConfig, tables: Mapping[str, pd.DataFrame]) -> list[str]:
    lumped = [c for c, t in tables.items() if any(OTHER_RE.match(str(v)) for v in t[c])]
    if not lumped:
        return []
    return [
        f"{', '.join(f'`{c}`' for c in lumped)}: the {cfg.segment_values} largest values, the "
        'rest summed as one "other" (`report.segment_values`).'
    ]


def risk_segments_section(inputs: PageInputs) -> Page:
    """A classification's expected value by segment: revenue at risk (entity churn), expected
    positives or value (rows)."""
    cfg, words, label = inputs.cfg, inputs.words, inputs.label
    segments = risk_by_segment(inputs.frame, cfg)
    if words.churn:
        value_label = (
            f"expected {cfg.value_column} at risk"
            if cfg.value_column
            else f"expected {words.many} lost"
        )
        names = {"entities": words.many}
        if cfg.value_column:
            how = (
                f"Expected revenue at risk = predicted {label} probability × "
                f"`{cfg.value_column}` (the {words.one}'s value: "
                f"{value_source(cfg.value_column, inputs.schema)}), summed per segment value; "
                "`share` is that sum over the segment's total value."
            )
        else:
            how = (
                f"No value column: the expected number of {words.many} lost (the sum of the "
                "probabilities) per segment value."
            )
    else:
        value_label = f"expected {cfg.value_column}" if cfg.value_column else "expected positives"
        names = {
            "entities": words.many,
            "at_risk": "predicted_positive",
            "share_at_risk": "share",
        }
        how = (
            f"Per segment value: the {words.many}, those predicted {label} = {words.positive} "
            "(score at or "
            f"above {inputs.threshold:g}), the mean score, and the expected "
            + (
                f"`{cfg.value_column}` (score × value, summed)."
                if cfg.value_column
                else "number of positives (the sum of the scores)."
            )
        )
    if not cfg.value_column:
        # each counts 1: the value is the row count and the share the mean score, said already
        segments = {c: t.drop(columns=["value", "share_at_risk"]) for c, t in segments.items()}
    titles = TITLES if words.churn else ROWS_TITLES
    name, figures = _figure("segments.png", segments_figure(segments, value_label))
    section = Section(
        "revenue",
        titles["revenue"].format(label=label),
        [how, *_lumped(cfg, segments)] if segments else [_no_segments(words)],
        figure=name,
        tables=tuple(
            (col, frame_table(t.rename(columns={**names, "value_at_risk": value_label})))
            for col, t in segments.items()
        ),
    )
    return Page([section], figures)


def _top_table(inputs: PageInputs, output: str, change: str) -> Table:
    ids = list(inputs.ids or (inputs.schema.entity_key,))
    value = inputs.cfg.value_column if output == "score" else None
    shown = [c for c in inputs.cfg.segments if c not in ids]
    rows = [
        [
            *[_fmt(row[c]) for c in ids],
            _fmt(float(row[output])),
            *([_fmt(float(row[value]), 2)] if value else []),
            *[_fmt(row[s]) for s in shown],
            "; ".join(f"{f} = {_fmt(row[f], 2)} (+{d:.3f})" for f, d in drv) or "–",
        ]
        for (_, row), drv in zip(inputs.top.iterrows(), inputs.top_drivers, strict=True)
    ]
    return Table(
        [*ids, output, *([value] if value else []), *shown, f"main drivers ({change} change)"],
        rows,
    )


def top_section(inputs: PageInputs) -> Page:
    """The top-N rows by score (or prediction) and the features that raise it most."""
    words = inputs.words
    regression = inputs.schema.regression
    what = "prediction" if regression else "score"
    if regression:
        title = REGRESSION_TITLES["top"].format(n=len(inputs.top))
    else:
        titles = TITLES if words.churn else ROWS_TITLES
        title = titles["top"].format(n=len(inputs.top), items=words.many)
    text = (
        f"Drivers: for each feature, the {words.one}'s {what} minus its {what} with that "
        "feature set to the population's typical value (median, or most frequent category), "
        "through the served model; the features that raise it most."
    )
    return Page(
        [Section("top", title, [text], tables=(("", _top_table(inputs, what, what)),))],
        {},
    )


def prediction_section(inputs: PageInputs) -> Page:
    """A regression's prediction distribution, and the predictions outside the target's
    range seen in training, counted."""
    label, frame = inputs.label, inputs.frame
    values = frame["prediction"].to_numpy(dtype="float64")
    if not len(values):
        text = ["No rows to predict: the prediction set is empty."]
    else:
        q = np.quantile(values, [0.1, 0.5, 0.9])
        text = [
            f"{len(frame)} rows predicted at {inputs.snapshot}: mean {_fmt(values.mean())}, "
            f"10th percentile {_fmt(q[0])}, median {_fmt(q[1])}, 90th percentile {_fmt(q[2])}."
        ]
        if inputs.observed is not None:
            text.append(range_sentence(out_of_range(values, inputs.observed), label, len(values)))
    name, figures = _figure(
        "distribution.png",
        prediction_figure(values, inputs.cfg.score_bins, label, inputs.observed),
    )
    section = Section(
        "distribution", REGRESSION_TITLES["distribution"].format(label=label), text, figure=name
    )
    return Page([section], figures)


def range_sentence(found: OutOfRange, label: str, n: int) -> str:
    span = f"{_fmt(found.low, 2)} to {_fmt(found.high, 2)}"
    if not found.outside:
        return f"Every prediction lies within the range of `{label}` seen in training ({span})."
    parts = []
    if found.below:
        negative = f", {found.negative} of them negative" if found.negative else ""
        parts.append(f"{found.below} below its minimum{negative}")
    if found.above:
        parts.append(f"{found.above} above its maximum")
    return (
        f"**{found.outside} prediction(s) ({found.outside / max(n, 1):.1%}) fall outside the "
        f"range of `{label}` seen in training ({span})**: {' and '.join(parts)}. The model "
        "extrapolates there"
        + (f" (a negative `{label}` cannot happen)" if found.negative else "")
        + ": read those values with care."
    )


def prediction_segments_section(inputs: PageInputs) -> Page:
    label = inputs.label
    segments = prediction_by_segment(inputs.frame, inputs.cfg)
    name, figures = _figure(
        "segments.png", segments_figure(segments, f"total predicted {label}", "total")
    )
    text = (
        [
            f"Per segment value: the rows and their predicted `{label}` (mean, total, range).",
            *_lumped(inputs.cfg, segments),
        ]
        if segments
        else [_no_segments(inputs.words)]
    )
    section = Section(
        "segments",
        REGRESSION_TITLES["segments"].format(label=label),
        text,
        figure=name,
        tables=tuple((col, frame_table(t)) for col, t in segments.items()),
    )
    return Page([section], figures)


def _performance(inputs: PageInputs) -> tuple[dict[str, Any], Table]:
    perf = (inputs.monitor.get("performance") or {}).get("snapshots") or {}
    cols = (
        ("n", "mae", "rmse", "mean_residual", "mae_increase", "residual_psi")
        if inputs.schema.regression
        else ("n", "positives", "roc_auc", "brier", "mean_score", "observed_rate")
    )
    return perf, Table(
        ["snapshot", *cols],
        [[d, *[_fmt(m.get(k)) for k in cols]] for d, m in sorted(perf.items())],
    )


def _inputs_line(inputs: Mapping[str, Any]) -> str | None:
    """Which days the input drift compared, or that no day after the model's data came yet."""
    periods = inputs.get("periods") or {}
    if not periods:
        return None
    current = [p["current"] for p in periods.values() if (p.get("current") or {}).get("days")]
    if not current:
        return (
            f"Input drift: no day after {inputs.get('cutoff', '–')} (the end of the data the "
            "model was judged on) yet: nothing compared, the model's own days never are."
        )
    first = min(c["first"] for c in current)
    last = max(c["last"] for c in current)
    return f"Input drift: {first}..{last} compared with the days up to {inputs.get('cutoff')}."


def _judged_line(performance: Mapping[str, Any]) -> str:
    """Which matured snapshot the monitor judged, or that none could be yet."""
    snapshots = performance.get("snapshots") or {}
    if not snapshots:
        return "No published prediction has matured yet: nothing is judged on its outcomes."
    judged, least = performance.get("judged"), performance.get("min_labelled")
    if judged is None:
        return (
            f"Realised performance: no snapshot holds {least} labelled rows yet "
            "(`monitor.min_labelled`): measured below, never a reason."
        )
    pooled = snapshots.get(judged, {}).get("pooled_from")
    span = f"{pooled}..{judged}" if pooled else judged
    return f"Realised performance judged on {span} ({snapshots[judged]['n']} rows)."


def residuals_section(inputs: PageInputs) -> Page:
    """A regression's realised errors once the targets of published predictions arrived."""
    perf, table = _performance(inputs)
    section = Section(
        "residuals",
        REGRESSION_TITLES["residuals"],
        [
            "Published predictions joined by key with the targets that arrived since (from "
            "monitoring): residual = target - prediction; `mae_increase` is the MAE over the "
            "test split's minus 1, `residual_psi` the residuals' drift against the test split's."
            if perf
            else "No prediction this model published after its test split has its target yet "
            "(`evergreen publish` after a run; the next data brings the targets; a model just "
            "promoted starts with none, the monitoring history keeps the earlier model's).",
        ],
        tables=(("", table),) if perf else (),
    )
    return Page([section], {})


def trend_section(inputs: PageInputs) -> Page:
    words, trend = inputs.words, inputs.trend
    positive = (
        "share at risk" if words.churn else f"share predicted {inputs.label} = {words.positive}"
    )
    names = (
        {"entities": words.many}
        if words.churn
        else {"entities": words.many, "share_at_risk": "positive_rate"}
    )
    name, figures = _figure("trend.png", trend_figure(trend, inputs.history, positive))
    section = Section(
        "trend",
        TITLES["trend"],
        [
            f"Batch predictions per run: the {max(len(trend) - 1, 0)} earlier run(s) "
            "published to the lake and this one."
        ],
        figure=name,
        tables=(("", frame_table(trend.rename(columns=names))),),
    )
    return Page([section], figures)


def monitoring_section(inputs: PageInputs) -> Page:
    """The monitoring verdict, its reasons, realised performance (a classification's; a
    regression's is its residuals section) and history."""
    monitor, history = inputs.monitor, inputs.history
    regression = inputs.schema.regression
    reasons = monitor.get("reasons") or []
    verdict = "no retraining needed"
    if monitor.get("retrain_recommended"):
        verdict = "**retraining recommended**"
    reason_keys = ("kind", "column", "statistic", "value", "threshold", "n_reference", "n_current")
    reason_table = Table(
        list(reason_keys), [[str(r.get(k, "")) for k in reason_keys] for r in reasons]
    )
    served = monitor.get("served") or {}
    _, perf_table = _performance(inputs)
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
    section = Section(
        "monitoring",
        TITLES["monitoring"],
        [
            f"Verdict for {monitor.get('date', '–')}: {verdict}"
            + (f" ({len(reasons)} reason(s))." if reasons else "."),
            *filter(None, [_inputs_line(monitor.get("inputs") or {})]),
            _judged_line(monitor.get("performance") or {}),
            f"Served predictions: {served.get('status', '–')}"
            + (f" ({served.get('detail')})" if served.get("detail") else "")
            + (f", {served.get('rows')} rows" if served.get("rows") else "")
            + ".",
        ],
        tables=tuple(
            (title, t)
            for title, t in (
                ("Reasons", reason_table),
                (
                    "Realised performance (published predictions, matured labels)",
                    Table([], []) if regression else perf_table,
                ),
                ("History", frame_table(history[hist_cols]) if hist_cols else Table([], [])),
            )
            if t.rows
        ),
    )
    return Page([section], {})


CLASSIFICATION_SECTIONS: tuple[SectionBuilder, ...] = (
    distribution_section,
    risk_segments_section,
    top_section,
    trend_section,
    monitoring_section,
)
REGRESSION_SECTIONS: tuple[SectionBuilder, ...] = (
    prediction_section,
    prediction_segments_section,
    top_section,
    residuals_section,
    trend_section,
    monitoring_section,
)
# sections other modules add to every page, after the task's own (a builder each)
EXTRA_SECTIONS: tuple[SectionBuilder, ...] = ()


def builders_for(schema: FeatureSchema) -> tuple[SectionBuilder, ...]:
    return REGRESSION_SECTIONS if schema.regression else CLASSIFICATION_SECTIONS


def build_page(inputs: PageInputs, extra: Sequence[SectionBuilder] = EXTRA_SECTIONS) -> Page:
    """The task's sections, then `extra`'s, with every figure they name."""
    page = Page()
    for builder in (*builders_for(inputs.schema), *extra):
        part = builder(inputs)
        page.sections.extend(part.sections)
        page.figures.update(part.figures)
    return page


def value_source(column: str, schema: FeatureSchema) -> str:
    return (
        "an amount over a trailing window"
        if "_amount_" in column
        else "an attribute as of the snapshot date"
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


def write_report(out_dir: Path, title: str, page: Page, rows: int) -> None:
    for name, data in page.figures.items():
        write_bytes_atomic(data, out_dir / FIGURES / name)
    html_page = render_html(title, page.sections, page.figures)
    write_bytes_atomic(html_page.encode(), out_dir / HTML_FILE)
    write_bytes_atomic(render_markdown(title, page.sections).encode(), out_dir / MD_FILE)
    print(f"report: {out_dir / HTML_FILE} and {out_dir / MD_FILE} ({rows} rows)")
