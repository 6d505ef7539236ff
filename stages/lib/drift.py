"""The core of the `drift` stage (stages/drift.py): compare the latest partitions with the data the
model was trained on.

    python -m stages.drift artifacts/profile artifacts/split/summary.json \
        metrics/data_drift.json artifacts/drift/report.json [--params params.yaml]

The reference is every partition up to the last train snapshot plus the label horizon (what fed
the train split's features and labels); the current period is the latest `last_days`
partitions. Both are combined from the per-partition profiles (`stages/profiles.py`), so no
partition is read again. Per column: numbers get the population stability index (PSI) over
bins at the reference's deciles plus a null bin, strings and booleans the Jensen-Shannon
distance (base 2, in [0, 1]) of their value frequencies; per table the change in median rows
per partition (a median, so a bulk first load does not set the norm). Each is compared with
its threshold (params `drift`), giving per-column `drifted` flags and an overall one. The
report (every table and column) is report data; the metrics file holds its headline
(`drift_summary`).

We use effect sizes, not hypothesis tests: a KS or chi-squared p-value flags almost any
difference on samples of thousands of rows, so it would call every day drifted; a PSI or JS
distance measures how much the distribution moved, whatever the sample size.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

# scipy.special, not scipy.stats: the same functions (chi2.sf is chdtrc, norm.sf is ndtr(-x),
# bit for bit), without scipy.stats' 1 s import that every monitor and drift run paid
from scipy.special import chdtrc, ndtr

from stages.lib.dataset import NUMERIC_TYPES, DatasetConfig
from stages.lib.profiling import PERCENTILES

EPSILON = 1e-4  # floor of a bin's share, so an empty bin gives a large but finite PSI
DIGITS = 6
OTHER, NULL = "__other__", "__null__"


@dataclass(frozen=True)
class DriftConfig:
    last_days: int = 7  # the current period: this many latest partitions
    bins: int = 10  # numeric bins, at the reference's quantiles
    psi_threshold: float = 0.2  # PSI above this: drifted (0.1-0.25 is the usual "watch" band)
    js_threshold: float = 0.1  # Jensen-Shannon distance above this: drifted
    rows_threshold: float = 0.5  # relative change of median rows per partition above this
    # fewer values than this in either period: reported, never flagged, because sampling noise
    # alone moves PSI and JS that much (8 categories x 100 rows: JS distance ~0.1 by chance)
    min_count: int = 200

    @classmethod
    def from_params(cls, raw: Mapping[str, Any]) -> DriftConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"params drift: unknown keys {unknown} (known: {sorted(known)})")
        cfg = cls(**raw)
        if cfg.last_days < 1 or cfg.bins < 2 or cfg.min_count < 0:
            raise ValueError("params drift: last_days must be >= 1, bins >= 2, min_count >= 0")
        return cfg


def _cdf(x: np.ndarray, percentiles: np.ndarray) -> np.ndarray:
    """A partition's CDF at `x`, piecewise linear between its percentiles; right-continuous
    at ties, so a value shared by many rows holds all their mass."""
    k = np.searchsorted(percentiles, x, side="right")
    inside = (k > 0) & (k < len(percentiles))
    lo = np.clip(k - 1, 0, len(percentiles) - 1)
    hi = np.clip(k, 0, len(percentiles) - 1)
    span = percentiles[hi] - percentiles[lo]
    frac = np.divide(x - percentiles[lo], span, out=np.zeros_like(x), where=span > 0)
    inner = PERCENTILES[lo] + frac * (PERCENTILES[hi] - PERCENTILES[lo])
    return np.where(k == 0, 0.0, np.where(inside, inner, 1.0))


def _mixture(stats: Sequence[Mapping[str, Any]]) -> tuple[list[tuple[float, np.ndarray]], int]:
    """(count, percentiles) of each partition with values, and the total nulls."""
    parts = [
        (s["count"], np.asarray(s["percentiles"], dtype="float64")) for s in stats if s["count"]
    ]
    return parts, sum(int(s["nulls"]) for s in stats)


def _shares(parts: list[tuple[float, np.ndarray]], nulls: int, edges: np.ndarray) -> np.ndarray:
    """Share of rows in [null, (-inf, e1], (e1, e2], ..., (ek, inf)]."""
    count = sum(n for n, _ in parts)
    total = count + nulls
    if total == 0:
        return np.zeros(len(edges) + 2)
    cdf = sum(n * _cdf(edges, p) for n, p in parts) / count if count else np.zeros(len(edges))
    within = np.diff(np.concatenate([[0.0], cdf, [1.0]])) if count else np.zeros(len(edges) + 1)
    return np.concatenate([[nulls / total], within * count / total])


def _edges(parts: list[tuple[float, np.ndarray]], bins: int) -> np.ndarray:
    """Interior bin edges at the quantiles of the combined reference (its partitions'
    percentiles, each weighted by its rows)."""
    if not parts:
        return np.zeros(0)
    points = np.concatenate([p for _, p in parts])
    weights = np.concatenate([np.full(len(p), n / len(p)) for n, p in parts])
    order = np.argsort(points, kind="stable")
    cum = np.cumsum(weights[order]) / weights.sum()
    at = np.searchsorted(cum, np.arange(1, bins) / bins, side="left")
    return np.unique(points[order][np.clip(at, 0, len(points) - 1)])


def psi(reference: np.ndarray, current: np.ndarray) -> float:
    """Population stability index of two share vectors over the same bins."""
    r, c = np.maximum(reference, EPSILON), np.maximum(current, EPSILON)
    return float(np.sum((c - r) * np.log(c / r)))


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2): 0 for equal distributions, 1 for disjoint ones."""
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return float(np.sqrt(max(0.5 * kl(p) + 0.5 * kl(q), 0.0)))


def exact_values(stats: Sequence[Mapping[str, Any]]) -> frozenset[str] | None:
    """The values whose count is known on every day of `stats` (None: every value's is).

    A day's profile keeps its `top_k` most frequent values and counts the rest as `other`. A
    value in one day's top and in another day's `other` has a known count only on the first:
    summed over the days, its share would move with how often it made the top, not with the
    data (a country ranked 18th to 25th each day "drifts" between any two windows). Compared
    over the values every truncated day kept, plus one `other` for the rest, every bin counts
    the same thing on every day. A day with no `other` lists all its values (an absent one is
    a true 0)."""
    truncated = [frozenset(s["top"]) for s in stats if int(s["other"]) > 0]
    return frozenset.intersection(*truncated) if truncated else None


def _counts(
    stats: Sequence[Mapping[str, Any]], exact: frozenset[str] | None = None
) -> dict[str, int]:
    """Each value's count over `stats`; a value outside `exact` (when given) counts as other."""
    out: dict[str, int] = {}
    for s in stats:
        for value, n in s["top"].items():
            key = value if exact is None or value in exact else OTHER
            out[key] = out.get(key, 0) + int(n)
        for key, n in ((OTHER, s["other"]), (NULL, s["nulls"])):
            out[key] = out.get(key, 0) + int(n)
    return out


def _flag(metric: str, value: float, threshold: float, ref: list, cur: list, cfg: DriftConfig):
    n_ref = sum(int(s["count"]) + int(s["nulls"]) for s in ref)
    n_cur = sum(int(s["count"]) + int(s["nulls"]) for s in cur)
    enough = min(n_ref, n_cur) >= cfg.min_count
    return {
        "metric": metric,
        "value": round(value, DIGITS),
        "threshold": threshold,
        "drifted": bool(enough and value > threshold),
        "values": {"reference": n_ref, "current": n_cur},
        "enough_data": enough,
    }


def _numeric_drift(ref: list[Mapping], cur: list[Mapping], cfg: DriftConfig) -> dict[str, Any]:
    ref_parts, ref_nulls = _mixture(ref)
    cur_parts, cur_nulls = _mixture(cur)
    edges = _edges(ref_parts, cfg.bins)
    value = psi(_shares(ref_parts, ref_nulls, edges), _shares(cur_parts, cur_nulls, edges))

    def mean(stats: list[Mapping]) -> float | None:
        n = sum(s["count"] for s in stats)
        if not n:
            return None
        return round(sum(s["count"] * s["mean"] for s in stats if s["count"]) / n, DIGITS)

    return {
        **_flag("psi", value, cfg.psi_threshold, ref, cur, cfg),
        "reference_mean": mean(ref),
        "current_mean": mean(cur),
    }


def values_drift(
    reference: Sequence[float] | np.ndarray, current: Sequence[float] | np.ndarray, cfg: DriftConfig
) -> dict[str, Any]:
    """PSI of two samples of one number (NaN = null), binned as a profiled column is: at the
    reference's quantiles, from the same percentiles a profile keeps, plus a null bin."""
    return _numeric_drift([sample_stats(reference)], [sample_stats(current)], cfg)


def sample_stats(values: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """A sample of one number (NaN = null) summarised as a profile summarises a column."""
    x = np.asarray(values, dtype="float64")
    present = x[~np.isnan(x)]
    return {
        "count": len(present),
        "nulls": int(len(x) - len(present)),
        "mean": float(present.mean()) if len(present) else None,
        "percentiles": np.quantile(present, PERCENTILES) if len(present) else None,
    }


def _category_counts(
    reference: Sequence[Mapping[str, Any]], current: Sequence[Mapping[str, Any]]
) -> tuple[np.ndarray, np.ndarray, frozenset[str] | None, float]:
    """Both windows' counts over the same bins (the values known on every day, `other`, and
    nulls: `exact_values`), the values compared, and their Jensen-Shannon distance."""
    exact = exact_values([*reference, *current])
    r, c = _counts(reference, exact), _counts(current, exact)
    keys = sorted(set(r) | set(c))
    p = np.array([r.get(k, 0) for k in keys], dtype="float64")
    q = np.array([c.get(k, 0) for k in keys], dtype="float64")
    return p, q, exact, js_distance(p, q) if p.sum() and q.sum() else 0.0


def _categorical_drift(ref: list[Mapping], cur: list[Mapping], cfg: DriftConfig) -> dict[str, Any]:
    value = _category_counts(ref, cur)[3]
    return _flag("js_distance", value, cfg.js_threshold, ref, cur, cfg)


def coded(column: str, stats: Sequence[Mapping[str, Any]], dataset: DatasetConfig) -> bool:
    """An integer column the config declares a categorical input (season 1-4), whose profiles
    count its codes (`top`): compared as a category, not as a number."""
    return column in dataset.categorical_inputs and all("top" in s for s in stats)


# --- which columns can be reasons --------------------------------------------------------------

INPUT, TARGET, SEASONAL, IDENTIFIER, NOT_INPUT = (
    "input",
    "target",
    "seasonal",
    "identifier",
    "not_input",
)
# a string column with more distinct values than this share of its rows, in its reference
# partitions, is an identifier or free text: its values are new every day by construction
IDENTIFIER_SHARE = 0.5


def column_roles(
    dataset: DatasetConfig, inputs: Sequence[str], seasonal: Sequence[str]
) -> dict[str, dict[str, str]]:
    """table -> column -> role, for the columns worth comparing (keys, times and dates are
    left out: they change by construction). Only INPUT (and a classification's TARGET: the
    label rate) can be reasons; the rest are listed as information. The inputs are the model's
    features, the event columns every event feature is computed from (entity churn), and the
    columns a derived input is computed from."""
    inputs, seasonal = set(inputs), set(seasonal)
    # entity churn: the event table's type and amount columns feed every event feature
    sources = set()
    if not dataset.task.rows:
        sources = {c for c in (dataset.event_type_column, dataset.amount_column) if c}
    roles: dict[str, dict[str, str]] = {}
    for table in dataset.tables:
        skip = {table.key, table.timestamp, dataset.entity_key, table.entity_key}
        names = {c.name for c in table.columns}
        # a derived input (retail's amount = quantity * unit_price) reads its source columns
        used = inputs | (sources if table.role == "events" else set())
        for col in table.columns:
            if col.expr and col.name in used:
                used |= set(re.findall(r"[A-Za-z_]\w*", col.expr)) & names
        out = {}
        for col in table.columns:
            if col.name in skip or col.type in ("date", "timestamp") or col.surrogate:
                continue
            if dataset.task.rows and col.name == dataset.task.target:
                out[col.name] = TARGET
            elif col.name in seasonal:
                out[col.name] = SEASONAL
            elif col.name in used:
                out[col.name] = INPUT
            else:
                out[col.name] = NOT_INPUT
        roles[table.name] = out
    return roles


def identifier_like(stats: Sequence[Mapping[str, Any]]) -> bool:
    """A string (or coded) column whose partitions hold mostly distinct values that do not
    come back in other partitions: ids, free text. Panel data (one row per store a day) also
    holds distinct values in each partition, but the same ones every day: an input, whose mix
    can drift (a store closing). Judged on each partition's most frequent values (`top`, ties
    by value, so a panel's top values are the same stores every day)."""
    counted = [s for s in stats if s.get("count", 0) >= 20]
    shares = [s["distinct"] / s["count"] for s in counted]
    if not shares or float(np.mean(shares)) <= IDENTIFIER_SHARE:
        return False
    tops = [set(s.get("top") or ()) for s in counted]
    listed = sum(len(t) for t in tops)
    if len(tops) < 2 or not listed:
        return True
    seen = Counter(value for top in tops for value in top)
    recurring = sum(1 for top in tops for value in top if seen[value] > 1)
    return recurring / listed <= IDENTIFIER_SHARE


def compared_role(role: str, numeric: bool, reference: Sequence[Mapping[str, Any]]) -> str:
    """A column's role as the monitor and the drift report show it: `role` (`column_roles`),
    or IDENTIFIER for a text or coded column whose reference partitions look like ids or free
    text (`identifier_like`), whatever role the config gave it."""
    return IDENTIFIER if not numeric and identifier_like(reference) else role


def split_periods(
    dates: Sequence[str], train_until: dt.date, last_days: int
) -> tuple[list[str], list[str]]:
    """(reference, current) partition dates: current are the `last_days` latest; reference
    the ones up to `train_until` that are not current."""
    current = sorted(dates)[-last_days:]
    reference = [d for d in sorted(dates) if d <= train_until.isoformat() and d not in current]
    return reference, current


def table_drift(
    profiles: Mapping[str, Mapping],
    dataset: DatasetConfig,
    table: str,
    train_until: dt.date,
    cfg: DriftConfig,
    roles: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Drift of one table between its reference and current partitions. With `roles` (the
    monitor's `column_roles` for this table), every column is measured and listed with its
    role, but only an input's drift makes the table drifted: free text, ids, seasonal columns
    and columns the model does not read move by construction, and a rows target's latest rows
    may await their values."""
    spec = dataset.table(table)
    reference, current = split_periods(list(profiles), train_until, cfg.last_days)
    out: dict[str, Any] = {
        "reference": {
            "partitions": len(reference),
            "first": reference[0] if reference else None,
            "last": reference[-1] if reference else None,
        },
        "current": {
            "partitions": len(current),
            "first": current[0] if current else None,
            "last": current[-1] if current else None,
        },
    }
    if not reference or not current:
        return {**out, "drifted": False, "note": "no reference or no current partitions"}
    ref_rows = float(np.median([profiles[d]["rows"] for d in reference]))
    cur_rows = float(np.median([profiles[d]["rows"] for d in current]))
    change = cur_rows / ref_rows - 1 if ref_rows else (0.0 if not cur_rows else float("inf"))
    # a few rows a day (an entities table's updates: a median of 4, then 1) are no evidence of
    # a volume change, as a column with fewer than min_count values is none of drift
    totals = (
        sum(profiles[d]["rows"] for d in reference),
        sum(profiles[d]["rows"] for d in current),
    )
    enough = min(totals) >= cfg.min_count
    rows = {
        "reference_median": round(ref_rows, DIGITS),
        "current_median": round(cur_rows, DIGITS),
        "change": round(change, DIGITS) if np.isfinite(change) else None,
        "threshold": cfg.rows_threshold,
        "enough_data": enough,
        "drifted": bool(enough and abs(change) > cfg.rows_threshold),
    }
    # keys and ids change by construction (new events get new ids): their drift means nothing
    skip = {spec.key, spec.timestamp, dataset.entity_key}
    columns = {}
    for col in spec.columns:
        if col.name in skip or col.type in ("date", "timestamp"):
            continue
        ref = [profiles[d]["columns"][col.name] for d in reference]
        cur = [profiles[d]["columns"][col.name] for d in current]
        numeric = col.type in NUMERIC_TYPES and not coded(col.name, ref + cur, dataset)
        measure = _numeric_drift if numeric else _categorical_drift
        columns[col.name] = measure(ref, cur, cfg)
        if roles is not None:
            columns[col.name]["role"] = compared_role(roles.get(col.name, NOT_INPUT), numeric, ref)
    # a rows target is listed, not judged: its latest rows may still await their values (a
    # null share of 100 % is no drift), and the monitor tests the label rate on known ones
    judged = [c for c in columns.values() if c.get("role", INPUT) == INPUT]
    drifted = rows["drifted"] or any(c["drifted"] for c in judged)
    return {**out, "drifted": drifted, "rows": rows, "columns": columns}


def compute_drift(
    profiles: Mapping[str, Mapping[str, Mapping]],
    dataset: DatasetConfig,
    train_snapshots: Sequence[str],
    cfg: DriftConfig,
    roles: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, Any]:
    """Drift of every table; `profiles` is table -> date -> profile, `train_snapshots` the
    train split's snapshot dates, `roles` table -> column -> role (`column_roles`)."""
    if not train_snapshots:
        raise ValueError("drift: the train split has no snapshot dates")
    last = dt.date.fromisoformat(str(max(train_snapshots))[:10])
    train_until = last + dt.timedelta(days=dataset.label.horizon_days)
    tables = {
        t.name: table_drift(
            profiles[t.name],
            dataset,
            t.name,
            train_until,
            cfg,
            None if roles is None else roles.get(t.name, {}),
        )
        for t in dataset.tables
    }
    return {
        "drifted": any(t["drifted"] for t in tables.values()),
        "reference_until": train_until.isoformat(),
        "tables": tables,
    }


def drift_summary(report: Mapping[str, Any]) -> dict[str, Any]:
    """The scalars of `compute_drift`'s report a person compares across runs: the overall flag,
    how many columns and tables drifted, and the largest PSI and JS distance (None: no column
    of that kind)."""
    tables = report["tables"].values()
    # the columns that can make a table drifted: inputs, or every column of a report without
    # roles
    columns = [
        c
        for t in tables
        for c in (t.get("columns") or {}).values()
        if c.get("role", INPUT) == INPUT
    ]

    def largest(metric: str) -> float | None:
        values = [c["value"] for c in columns if c.get("metric") == metric]
        return max(values) if values else None

    return {
        "drifted": report["drifted"],
        "reference_until": report["reference_until"],
        "tables_drifted": sum(bool(t["drifted"]) for t in tables),
        "columns_drifted": sum(bool(c["drifted"]) for c in columns),
        "psi_max": largest("psi"),
        "js_max": largest("js_distance"),
    }


# --- comparisons that know their sample size (the monitor's) ----------------------------------


@dataclass(frozen=True)
class Comparison:
    """One column's reference and current windows compared: an effect size (`statistic`:
    PSI for numbers, Jensen-Shannon distance for categories) and the p-value of a chi-square
    test of homogeneity on the same bins, with both sample sizes. The effect size says how
    much the distribution moved; the test says whether that is more than the noise a window of
    this size makes (a small window's PSI is large by chance, a large window's test flags
    any difference at all: a drift needs both)."""

    statistic: str
    value: float
    p_value: float
    n_reference: int
    n_current: int
    # how much less a row says than an independent one (rows of one day share its weather,
    # lines of one invoice its customer): the test counts n / design_effect rows
    design_effect: float = 1.0

    def to_json(self) -> dict[str, Any]:
        return {
            "statistic": self.statistic,
            "value": round(self.value, DIGITS),
            "p_value": float(f"{self.p_value:.3g}"),
            "n_reference": self.n_reference,
            "n_current": self.n_current,
            "design_effect": round(self.design_effect, 3),
        }


def homogeneity_p_value(reference: np.ndarray, current: np.ndarray) -> float:
    """p-value of the chi-square test that two samples, given as counts per bin (counts may be
    fractional: shares times the sample size), come from one distribution."""
    table = np.vstack([reference, current]).astype("float64")
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) <= 0).any():
        return 1.0
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    stat = float(((table - expected) ** 2 / expected).sum())
    return float(chdtrc(table.shape[1] - 1, stat))


def _rows(stats: Sequence[Mapping[str, Any]]) -> int:
    return sum(int(s["count"]) + int(s["nulls"]) for s in stats)


def _design_effect(between: float, within: float, rows_per_day: float) -> float:
    """1 + (m - 1) ICC, the intra-day correlation estimated by one-way ANOVA: the variance of
    the daily means (or shares) beyond what `within` variance alone gives days of m rows."""
    if rows_per_day <= 1 or within <= 0:
        return 1.0
    excess = between - within / rows_per_day
    if excess <= 0:
        return 1.0
    icc = excess / (excess + within)
    return float(1.0 + (rows_per_day - 1.0) * icc)


def numeric_design_effect(stats: Sequence[Mapping[str, Any]]) -> float:
    """A numeric column's design effect, from its partitions' counts, means and stds (1 with
    fewer than 3 partitions of 2+ values: too little to tell)."""
    days = [s for s in stats if s.get("count", 0) >= 2 and s.get("std") is not None]
    if len(days) < 3:
        return 1.0
    n = np.array([s["count"] for s in days], dtype="float64")
    means = np.array([s["mean"] for s in days], dtype="float64")
    stds = np.array([s["std"] for s in days], dtype="float64")
    within = float(np.sum(n * stds**2) / np.sum(n - 1))
    between = float(np.average((means - np.average(means, weights=n)) ** 2, weights=n))
    return _design_effect(between, within, float(n.mean()))


def categorical_design_effect(
    stats: Sequence[Mapping[str, Any]], exact: frozenset[str] | None = None
) -> float:
    """A categorical column's design effect: its daily shares of each value vary beyond the
    binomial variance of days of that many rows (weighted over the values); `exact` as in
    `_counts` (a value counted some days and folded into other on the rest would vary by
    truncation, not by the data)."""
    days = [(_counts([s], exact), int(s["count"]) + int(s["nulls"])) for s in stats]
    days = [(c, n) for c, n in days if n >= 2]
    if len(days) < 3:
        return 1.0
    n = np.array([t for _, t in days], dtype="float64")
    keys = sorted({k for c, _ in days for k in c})
    shares = np.array([[c.get(k, 0) / t for k in keys] for c, t in days])
    overall = np.average(shares, axis=0, weights=n)
    between = np.average((shares - overall) ** 2, axis=0, weights=n)
    within = overall * (1 - overall)
    effects = [_design_effect(b, w, float(n.mean())) for b, w in zip(between, within, strict=True)]
    return float(np.average(effects, weights=within)) if within.sum() > 0 else 1.0


def compare_numeric(
    reference: Sequence[Mapping[str, Any]], current: Sequence[Mapping[str, Any]], bins: int
) -> Comparison:
    """PSI and the chi-square test of a numeric column's profiles, binned at the reference's
    quantiles (plus a null bin)."""
    ref_parts, ref_nulls = _mixture(reference)
    cur_parts, cur_nulls = _mixture(current)
    edges = _edges(ref_parts, bins)
    r, c = _shares(ref_parts, ref_nulls, edges), _shares(cur_parts, cur_nulls, edges)
    n_ref, n_cur = _rows(reference), _rows(current)
    deff = numeric_design_effect(reference)
    p_value = homogeneity_p_value(r * n_ref / deff, c * n_cur / deff)
    return Comparison("psi", psi(r, c), p_value, n_ref, n_cur, deff)


def compare_categorical(
    reference: Sequence[Mapping[str, Any]], current: Sequence[Mapping[str, Any]]
) -> Comparison:
    """Jensen-Shannon distance and the chi-square test of a categorical column's counts (its
    top values known on every day, the rest as one `other` bin, and nulls: `exact_values`)."""
    p, q, exact, value = _category_counts(reference, current)
    deff = categorical_design_effect(reference, exact)
    p_value = homogeneity_p_value(p / deff, q / deff)
    return Comparison("js_distance", value, p_value, int(p.sum()), int(q.sum()), deff)


def compare_values(
    reference: Sequence[float] | np.ndarray, current: Sequence[float] | np.ndarray, bins: int
) -> Comparison:
    """PSI and the chi-square test of two samples of one number (scores, residuals)."""
    return compare_numeric([sample_stats(reference)], [sample_stats(current)], bins)


def rate_comparison(
    positives_reference: int, n_reference: int, positives_current: int, n_current: int
) -> tuple[float, float]:
    """(relative change of a rate, two-sided p-value of the two-proportion z-test)."""
    if not n_reference or not n_current:
        return 0.0, 1.0
    p0, p1 = positives_reference / n_reference, positives_current / n_current
    pooled = (positives_reference + positives_current) / (n_reference + n_current)
    se = np.sqrt(pooled * (1 - pooled) * (1 / n_reference + 1 / n_current))
    p_value = 1.0 if se == 0 else float(2 * ndtr(-abs(p1 - p0) / se))
    change = (p1 / p0 - 1) if p0 > 0 else (0.0 if p1 == 0 else float("inf"))
    return float(change), p_value
