"""The core of the `profiles` stage (stages/profiles.py): per-partition statistics of the validated
data, what `drift` compares.

    python -m stages.profile artifacts/validate artifacts/profile [--params params.yaml]

For every validated partition `<validated>/<table>/date=D.parquet` it writes
`<out>/<table>/date=D.json`: row count and, per column, non-null count, nulls and distinct
values; numbers add min, max, mean, std and the percentiles 0..100; strings and booleans their
most frequent values (`top`) and how many rows hold another one (`other`), and so do integers
(as text, "2"), which may be codes of a category (season 1-4) that drift compares as one; dates and
timestamps their range. A profile depends on its partition alone (`profile_partition` is pure),
so it is computed once per partition, and partitions' profiles combine into the profile of
a period (see `stages/drift.py`).

The stage runs incrementally (stages/lib/profile_store.py): only new or changed partitions.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.lib.dataset import NUMERIC_TYPES, TableSpec

PERCENTILES = np.linspace(0.0, 1.0, 101)

SIGNIFICANT = 10  # digits kept: profiles are compared, not re-added, and stay readable


@dataclass(frozen=True)
class ProfileConfig:
    # most frequent values kept per string column; the rest is counted as `other`
    top_k: int = 100
    # an events or rows table's row whose time is over this many days before its partition's
    # day is late (an outcome re-sent with its row): counted, not profiled; None: every row is
    late_after_days: int | None = 7

    @classmethod
    def from_params(cls, raw: Mapping[str, Any]) -> ProfileConfig:
        known = ["late_after_days", "top_k"]
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ValueError(f"params profile: unknown keys {unknown} (known: {known})")
        cfg = cls(**raw)
        if not isinstance(cfg.top_k, int) or cfg.top_k < 1:
            raise ValueError(f"params profile.top_k: expected a whole number >= 1, got {cfg.top_k}")
        late = cfg.late_after_days
        if late is not None and (not isinstance(late, int) or isinstance(late, bool) or late < 0):
            raise ValueError(
                f"params profile.late_after_days: expected a whole number >= 0 or null, got {late}"
            )
        return cfg


def _num(value: float) -> float | None:
    value = float(value)
    return float(f"{value:.{SIGNIFICANT}g}") if math.isfinite(value) else None


def _numeric(values: pd.Series) -> dict[str, Any]:
    x = np.sort(pd.to_numeric(values).to_numpy(dtype="float64", na_value=np.nan))
    x = x[~np.isnan(x)]
    if not len(x):
        return {"min": None, "max": None, "mean": None, "std": None, "percentiles": None}
    return {
        "min": _num(x[0]),
        "max": _num(x[-1]),
        "mean": _num(x.mean()),
        "std": _num(x.std()),
        "percentiles": [_num(q) for q in np.quantile(x, PERCENTILES)],
    }


def _categorical(values: pd.Series, top_k: int) -> dict[str, Any]:
    counts = values.dropna().astype(str).value_counts()
    # by count, then by value: ties never depend on the order rows came in
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    top = dict(ranked[:top_k])
    return {
        "top": {k: int(v) for k, v in top.items()},
        "other": int(counts.sum() - sum(top.values())),
    }


def _temporal(values: pd.Series) -> dict[str, Any]:
    x = pd.to_datetime(values.dropna())
    if not len(x):
        return {"min": None, "max": None}
    return {"min": x.min().isoformat(), "max": x.max().isoformat()}


def late_rows(
    frame: pd.DataFrame, table: TableSpec, day: str | None, late_after_days: int | None
) -> pd.Series:
    """Whether each row of an events or rows table's partition of `day` is late: its time's
    local day is over `late_after_days` before `day`. Outcomes re-sent with their rows (`lake
    land --arrived`) land 30-45 days after the row: profiled with the day's own rows, they
    were 2,639 of a fraud lake's 6,725 "current" rows, the input drift diluted by rows of two
    months before and the rows per day doubled."""
    none = pd.Series(False, index=frame.index)
    if day is None or late_after_days is None or table.role not in ("events", "rows"):
        return none
    if table.timestamp not in frame:
        return none
    times = pd.to_datetime(frame[table.timestamp], errors="coerce")
    if table.column(table.timestamp).type == "timestamp" and table.timezone != "UTC":
        times = times.dt.tz_localize("UTC").dt.tz_convert(table.timezone).dt.tz_localize(None)
    first = pd.Timestamp(day) - pd.Timedelta(days=late_after_days)
    return (times.dt.normalize() < first).fillna(False).astype(bool)


def profile_partition(
    frame: pd.DataFrame,
    table: TableSpec,
    *,
    top_k: int = ProfileConfig.top_k,
    day: str | None = None,
    late_after_days: int | None = None,
) -> dict:
    """Statistics of one validated partition of `table` (its declared columns), its late rows
    (`late_rows`, for the partition of `day`) left out and counted. Pure."""
    late = late_rows(frame, table, day, late_after_days)
    n_late = int(late.sum())
    if n_late:
        frame = frame[~late]
    columns = {}
    for spec in table.columns:
        values = frame[spec.name] if spec.name in frame else pd.Series([], dtype=object)
        count = int(values.notna().sum())
        stats: dict[str, Any] = {
            "type": spec.type,
            "count": count,
            "nulls": int(len(values) - count),
            "distinct": int(values.nunique(dropna=True)),
        }
        if spec.type in NUMERIC_TYPES:
            stats.update(_numeric(values))
            if spec.type == "int64":
                # Int64 first: a column a null made float would count "2.0", not "2"
                stats.update(_categorical(pd.to_numeric(values).astype("Int64"), top_k))
        elif spec.type in ("string", "bool"):
            stats.update(_categorical(values, top_k))
        else:
            stats.update(_temporal(values))
        columns[spec.name] = stats
    out: dict[str, Any] = {"table": table.name, "rows": len(frame)}
    if n_late:
        out["late_rows"] = n_late
    return {**out, "columns": columns}


def read_profiles(profile_dir: Path, table: str) -> dict[str, dict]:
    """The profiles `main` wrote for `table`, as {date: profile}, in date order."""
    folder = profile_dir / table
    out = {}
    for path in sorted(folder.glob("date=*.json")) if folder.is_dir() else []:
        out[path.name.removeprefix("date=").removesuffix(".json")] = json.loads(path.read_text())
    return out
