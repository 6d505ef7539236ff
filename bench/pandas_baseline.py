"""The baseline `bench/scale.py` measures prepare + features against: the same merge and the
same features written the straightforward way in pandas (whole tables in memory, a dedupe of
everything, a loop over snapshot dates). Same inputs (validate's output) and outputs
(`<out>/<table>.parquet` histories, `snapshots.parquet`, `predict.parquet`).

    .venv/bin/python bench/pandas_baseline.py VALIDATED_DIR OUT_DIR --params params.yaml
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

from stages.lib.dataset import DatasetConfig, dataset_from_params
from stages.lib.incremental import PARTITION_COL, ROW_COL
from stages.lib.merge import history_keys
from stages.lib.params import load_params, section
from stages.lib.predictions import SNAPSHOT_COL
from stages.lib.snapshots import FeaturesConfig, feature_names, snapshot_dates


def merge(validated: Path, dataset: DatasetConfig) -> dict[str, pd.DataFrame]:
    """Every validated partition concatenated, one row per key: the last to land wins."""
    out = {}
    for table in dataset.tables:
        files = sorted((validated / table.name).glob("date=*.parquet"))
        frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
        landed = frame.sort_values([PARTITION_COL, table.timestamp, ROW_COL], kind="stable")
        for name, key in history_keys(table).items():
            latest = landed.drop_duplicates(key, keep="last")
            out[name] = latest.sort_values(key, kind="stable").reset_index(drop=True)
    return out


def _days(values: pd.Series) -> np.ndarray:
    return (pd.to_datetime(values).dt.floor("D") - pd.Timestamp("1970-01-01")).dt.days.to_numpy()


def snapshot(
    events: pd.DataFrame,
    versions: pd.DataFrame | None,
    day: dt.date,
    dataset: DatasetConfig,
    cfg: FeaturesConfig,
    *,
    labelled: bool,
) -> pd.DataFrame:
    """The features (and label) of every entity active in the lookback up to `day`."""
    key, snap = dataset.entity_key, (day - dt.date(1970, 1, 1)).days
    past = events[events["_day"] <= snap]
    age = snap - past["_day"]
    kind = past[dataset.event_type_column]
    activity = kind.isin(dataset.activity_types)
    cols = {}
    for event_type, prefix in dataset.event_features.items():
        for w in cfg.windows:
            hit = (kind == event_type) & (age < w)
            cols[f"{prefix}_{w}d"] = hit.astype("float64")
            if event_type in dataset.amount_types:
                amount = past[dataset.amount_column].where(hit, 0.0)
                cols[f"{prefix}_amount_{w}d"] = amount
    short, long = min(cfg.windows), max(cfg.windows)
    cols["_recent"] = (activity & (age < short)).astype("int64")
    cols["_base"] = (activity & (age < long)).astype("int64")
    cols["days_since_last_activity"] = age.where(activity).astype("float64")
    cols["_active"] = (activity & (age < dataset.label.lookback_days)).astype("int64")
    parts = pd.DataFrame(cols, index=past.index)
    parts[key] = past[key]
    aggs = {c: "sum" for c in cols if c != "days_since_last_activity"}
    aggs["days_since_last_activity"] = "min"
    table = parts.groupby(key).agg(aggs)
    table = table[table["_active"] > 0].reset_index()
    table["activity_trend"] = (table["_recent"] * long / short - table["_base"]) / (
        table["_base"] + 1
    )
    table[SNAPSHOT_COL] = pd.Timestamp(day)
    ef = dataset.entity_features
    if versions is not None:
        known = versions[versions["_day"] <= snap]
        latest = known.sort_values([key, "_ts"], kind="stable").drop_duplicates(key, keep="last")
        table = table.merge(latest[[key, *ef.attributes]], on=key, how="left")
        if ef.signup_date:
            table["tenure_days"] = (snap - _days(table[ef.signup_date])).astype("float64")
    if labelled:
        ahead = events[
            (events["_day"] > snap) & (events["_day"] <= snap + dataset.label.horizon_days)
        ]
        retained = ahead.loc[ahead[dataset.event_type_column].isin(dataset.activity_types), key]
        table[dataset.label.name] = (~table[key].isin(set(retained))).astype("int64")
    numeric, categorical = feature_names(dataset, cfg)
    label = [dataset.label.name] if labelled else []
    return table[[key, SNAPSHOT_COL, *numeric, *categorical, *label]]


def build(
    histories: dict[str, pd.DataFrame], dataset: DatasetConfig, cfg: FeaturesConfig
) -> tuple[pd.DataFrame, pd.DataFrame]:
    events = histories[dataset.events.name].copy()
    events["_day"] = _days(events[dataset.events.timestamp])
    source, versions = dataset.attribute_table, None
    if source is not None and source.role == "entities":
        versions = histories[f"{source.name}_versions"].copy()
        versions["_ts"] = versions[source.timestamp]
        versions["_day"] = _days(versions["_ts"])
    first = dt.date(1970, 1, 1) + dt.timedelta(days=int(events["_day"].min()))
    last = dt.date(1970, 1, 1) + dt.timedelta(days=int(events["_day"].max()))
    dates = snapshot_dates(first, last, cfg, horizon_days=dataset.label.horizon_days)
    labelled = [snapshot(events, versions, d, dataset, cfg, labelled=True) for d in dates]
    order = [SNAPSHOT_COL, dataset.entity_key]
    snapshots = pd.concat(labelled, ignore_index=True).sort_values(order, kind="stable")
    predict = snapshot(events, versions, last, dataset, cfg, labelled=False)
    return snapshots.reset_index(drop=True), predict.sort_values(order).reset_index(drop=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("validated_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    dataset = dataset_from_params(section(params, "dataset"))
    cfg = FeaturesConfig.from_params(section(params, "features"))
    histories = merge(args.validated_dir, dataset)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in histories.items():
        frame.to_parquet(args.out_dir / f"{name}.parquet", index=False)
    snapshots, predict = build(histories, dataset, cfg)
    snapshots.to_parquet(args.out_dir / "snapshots.parquet", index=False)
    predict.to_parquet(args.out_dir / "predict.parquet", index=False)
    print(f"pandas: {len(snapshots)} labelled rows, {len(predict)} to predict")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
