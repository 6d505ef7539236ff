"""features: per-entity snapshot features with a fully observed label, plus the prediction set.

For each snapshot date s (several past dates whose label window (s, s + horizon] is fully in the
data, and the latest date for prediction), the population is the entities with activity in
(s - active_days, s]. Features use only events up to s; the label is "no activity in
(s, s + horizon]". Written as Ibis expressions, run on DuckDB.
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import ibis
import ibis.expr.types as ir
import pandas as pd

from stages.dataset import DatasetConfig, dataset_from_params
from stages.feature_schema import FeatureSchema, save_schema
from stages.io import write_frame, write_json
from stages.params import load_params, section

SNAPSHOT_COL = "snapshot_date"
EPOCH = dt.date(1970, 1, 1)


@dataclass(frozen=True)
class FeaturesConfig:
    horizon_days: int = 21
    snapshot_every_days: int = 7
    max_snapshots: int = 8
    min_history_days: int = 21
    active_days: int = 28
    windows: tuple[int, ...] = (7, 14, 28)

    @classmethod
    def from_params(cls, raw: dict) -> FeaturesConfig:
        return cls(**{**raw, "windows": tuple(raw.get("windows", cls.windows))})


def snapshot_dates(first: dt.date, last: dt.date, cfg: FeaturesConfig) -> list[dt.date]:
    """Labelled snapshot dates, oldest first: every `snapshot_every_days` back from the last
    date whose label window is complete, keeping at least `min_history_days` of history."""
    newest = last - dt.timedelta(days=cfg.horizon_days)
    earliest = first + dt.timedelta(days=cfg.min_history_days)
    dates = []
    for k in range(cfg.max_snapshots):
        s = newest - dt.timedelta(days=k * cfg.snapshot_every_days)
        if s < earliest:
            break
        dates.append(s)
    return sorted(dates)


def feature_names(dataset: DatasetConfig, cfg: FeaturesConfig) -> tuple[list[str], list[str]]:
    numeric = [f"{prefix}_{w}d" for prefix in dataset.event_features.values() for w in cfg.windows]
    numeric += [
        f"{dataset.event_features[t]}_amount_{w}d"
        for t in dataset.amount_types
        for w in cfg.windows
    ]
    numeric += ["days_since_last_activity", "activity_trend"]
    if dataset.entity_features.signup_date:
        numeric.append("tenure_days")
    numeric += list(dataset.entity_features.numeric)
    return numeric, list(dataset.entity_features.categorical)


def _day_number(value: ir.Value) -> ir.IntegerValue:
    return value.cast("date").epoch_days()


def _event_aggregates(
    events: ir.Table, snaps: ir.Table, dataset: DatasetConfig, cfg: FeaturesConfig
) -> ir.Table:
    """Per (entity, snapshot): counts and amounts per window, recency, activity trend."""
    timestamp = dataset.table_by_role("events").timestamp
    ev = events.mutate(_day=_day_number(events[timestamp]))
    joined = ev.cross_join(snaps).filter(ev._day <= snaps._snap_day)
    age = joined._snap_day - joined._day  # 0 on the snapshot day itself
    is_activity = joined.event_type.isin(list(dataset.activity_types))
    aggs = {}
    for event_type, prefix in dataset.event_features.items():
        for w in cfg.windows:
            in_window = (joined.event_type == event_type) & (age < w)
            aggs[f"{prefix}_{w}d"] = in_window.cast("int64").sum().cast("float64")
            if event_type in dataset.amount_types:
                # decimal sums are exact, so the result does not depend on summation order
                amount = ibis.ifelse(in_window, joined.amount, 0).cast("decimal(18, 2)")
                aggs[f"{prefix}_amount_{w}d"] = amount.sum().cast("float64")
    short, long = min(cfg.windows), max(cfg.windows)
    recent = (is_activity & (age < short)).cast("int64").sum()
    base = (is_activity & (age < long)).cast("int64").sum()
    aggs["activity_trend"] = (recent * long / short - base).cast("float64") / (base + 1)
    aggs["days_since_last_activity"] = (
        ibis.ifelse(is_activity, age, ibis.null()).min().cast("float64")
    )
    aggs["_active"] = (is_activity & (age < cfg.active_days)).cast("int64").sum()
    grouped = joined.group_by([dataset.entity_key, SNAPSHOT_COL, "_snap_day"]).aggregate(**aggs)
    return grouped.filter(grouped._active > 0).drop("_active")


def _labels(
    events: ir.Table, snaps: ir.Table, dataset: DatasetConfig, cfg: FeaturesConfig
) -> ir.Table:
    """(entity, snapshot) pairs with activity in (s, s + horizon]: the ones that did not churn."""
    timestamp = dataset.table_by_role("events").timestamp
    ev = events.filter(events.event_type.isin(list(dataset.activity_types)))
    ev = ev.mutate(_day=_day_number(ev[timestamp]))
    joined = ev.cross_join(snaps).filter(
        (ev._day > snaps._snap_day) & (ev._day <= snaps._snap_day + cfg.horizon_days)
    )
    return joined.select(dataset.entity_key, SNAPSHOT_COL).distinct().mutate(_retained=1)


def _with_entity_attributes(
    table: ir.Table, versions: ir.Table, dataset: DatasetConfig
) -> ir.Table:
    """Join each (entity, snapshot) with the entity's latest version updated up to the snapshot:
    reading the current state instead would leak changes made after it (a plan change implies
    the customer was still active)."""
    key, ef = dataset.entity_key, dataset.entity_features
    timestamp = dataset.table_by_role("entities").timestamp
    attrs = [*ef.categorical, *ef.numeric] + ([ef.signup_date] if ef.signup_date else [])
    pairs = table.select(key, SNAPSHOT_COL, "_snap_day")
    ents = versions.select(key, *attrs, _ts=versions[timestamp])
    joined = pairs.inner_join(ents, key)
    joined = joined.filter(_day_number(joined._ts) <= joined._snap_day)
    ranked = joined.mutate(
        _rank=ibis.row_number().over(group_by=[key, SNAPSHOT_COL], order_by=ibis.desc("_ts"))
    )
    as_of = ranked.filter(ranked._rank == 0).select(key, SNAPSHOT_COL, *attrs)
    table = table.left_join(as_of, [key, SNAPSHOT_COL]).drop(
        f"{key}_right", f"{SNAPSHOT_COL}_right"
    )
    if ef.signup_date:
        tenure = table._snap_day - _day_number(table[ef.signup_date])
        table = table.mutate(tenure_days=tenure.cast("float64")).drop(ef.signup_date)
    return table


def build_features(
    events: ir.Table,
    entities: ir.Table | None,
    dates: Sequence[dt.date],
    dataset: DatasetConfig,
    cfg: FeaturesConfig,
    *,
    labelled: bool,
) -> ir.Table:
    """Snapshot features for `dates`; with `labelled`, the label column too. `entities` holds
    every version of each entity (prepare's `<table>_versions`)."""
    snaps = ibis.memtable(
        {SNAPSHOT_COL: list(dates), "_snap_day": [(d - EPOCH).days for d in dates]}
    ).cast({SNAPSHOT_COL: "date", "_snap_day": "int64"})
    key = dataset.entity_key
    table = _event_aggregates(events, snaps, dataset, cfg)
    if entities is not None:
        table = _with_entity_attributes(table, entities, dataset)
    if labelled:
        labels = _labels(events, snaps, dataset, cfg)
        table = table.left_join(labels, [key, SNAPSHOT_COL]).drop(
            f"{key}_right", f"{SNAPSHOT_COL}_right"
        )
        table = table.mutate(**{dataset.label: table._retained.isnull().cast("int64")}).drop(
            "_retained"
        )
    numeric, categorical = feature_names(dataset, cfg)
    label = [dataset.label] if labelled else []
    return table.select(key, SNAPSHOT_COL, *numeric, *categorical, *label).order_by(
        [SNAPSHOT_COL, key]
    )


def _date_range(events: ir.Table, timestamp: str) -> tuple[dt.date, dt.date]:
    bounds = events.aggregate(
        first=events[timestamp].cast("date").min(), last=events[timestamp].cast("date").max()
    ).to_pandas()
    first, last = bounds["first"].iloc[0], bounds["last"].iloc[0]
    if pd.isna(first):
        raise ValueError("features: the events history is empty")
    return pd.Timestamp(first).date(), pd.Timestamp(last).date()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.features", description=__doc__)
    parser.add_argument("history_dir", type=Path, help="prepare's output")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    dataset = dataset_from_params(section(params, "dataset"))
    cfg = FeaturesConfig.from_params(section(params, "features"))
    con = ibis.duckdb.connect()
    events_spec = dataset.table_by_role("events")
    entity_spec = dataset.table_by_role("entities")
    events = con.read_parquet(str(args.history_dir / f"{events_spec.name}.parquet"))
    entities = (
        con.read_parquet(str(args.history_dir / f"{entity_spec.name}_versions.parquet"))
        if entity_spec
        else None
    )
    first, last = _date_range(events, events_spec.timestamp)
    dates = snapshot_dates(first, last, cfg)
    if not dates:
        raise SystemExit(
            f"features: history {first}..{last} is too short for a labelled snapshot "
            f"(needs min_history_days={cfg.min_history_days} + horizon_days={cfg.horizon_days})"
        )
    snapshots = build_features(events, entities, dates, dataset, cfg, labelled=True).to_pandas()
    predict = build_features(events, entities, [last], dataset, cfg, labelled=False).to_pandas()
    write_frame(snapshots, args.out_dir / "snapshots.parquet")
    write_frame(predict, args.out_dir / "predict.parquet")

    numeric, categorical = feature_names(dataset, cfg)
    categories = {}
    if entity_spec:
        for name in categorical:
            allowed = entity_spec.column(name).allowed
            if allowed:
                categories[name] = tuple(allowed)
    schema = FeatureSchema(
        dataset.entity_key,
        SNAPSHOT_COL,
        dataset.label,
        tuple(numeric),
        tuple(categorical),
        categories,
    )
    save_schema(schema, args.out_dir / "feature_schema.json")
    by_date = snapshots.groupby(SNAPSHOT_COL)[dataset.label].agg(["size", "mean"])
    summary = {
        "snapshots": {
            str(d): {"rows": int(r["size"]), "label_rate": round(float(r["mean"]), 6)}
            for d, r in by_date.iterrows()
        },
        "predict": {"date": str(last), "rows": len(predict)},
    }
    write_json(summary, args.out_dir / "summary.json")
    print(
        f"features: {len(snapshots)} labelled rows over {len(dates)} snapshots "
        f"({dates[0]}..{dates[-1]}), {len(predict)} to predict at {last}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
