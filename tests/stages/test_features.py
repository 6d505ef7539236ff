from __future__ import annotations

import copy
import datetime as dt
import json
from dataclasses import replace

import ibis
import pandas as pd
import pytest

from stages.contract.feature_schema import load_schema
from stages.features import main
from stages.lib.dataset import dataset_from_params
from stages.lib.localtime import Span
from stages.lib.snapshots import (
    FeaturesConfig,
    build_features,
    event_dates,
    feature_names,
    schema_features,
    snapshot_dates,
)
from tests.conftest import customers_frame, events_frame, write_params

D = dt.date
UTC_DAYS = Span(None, None)  # the shop's tables are UTC: no offset to look up
CFG = FeaturesConfig(snapshot_every_days=2, max_snapshots=3, min_history_days=2, windows=(2, 4))
LABEL = {"name": "churn", "horizon_days": 3, "lookback_days": 4}


def _dataset(shop_params):
    return dataset_from_params({**shop_params["dataset"], "label": LABEL})


def test_snapshot_dates_keep_label_window_inside_the_data():
    dates = snapshot_dates(D(2026, 1, 1), D(2026, 1, 12), CFG, horizon_days=3)
    assert dates == [D(2026, 1, 5), D(2026, 1, 7), D(2026, 1, 9)]
    assert all(d + dt.timedelta(days=3) <= D(2026, 1, 12) for d in dates)
    assert snapshot_dates(D(2026, 1, 1), D(2026, 1, 4), CFG, horizon_days=3) == []


@pytest.fixture
def tiny_history():
    events = events_frame(
        [
            # customer 1: active before the snapshot, active after it -> retained
            (1, 1, "2026-01-04 10:00", "session", None),
            (2, 1, "2026-01-05 10:00", "order", 30.0),
            (3, 1, "2026-01-07 10:00", "session", None),
            # customer 2: active, a ticket and a refund, then silent -> churn
            (4, 2, "2026-01-02 10:00", "session", None),
            (5, 2, "2026-01-05 09:00", "support_ticket", None),
            (6, 2, "2026-01-05 11:00", "refund", 12.5),
            (7, 2, "2026-01-05 12:00", "session", None),
            # customer 3: only old activity -> not in the population at 01-05
            (8, 3, "2026-01-01 10:00", "session", None),
            # event after the snapshot must not leak into features
            (9, 2, "2026-01-09 10:00", "support_ticket", None),
        ]
    )
    customers = customers_frame(
        [
            (1, "2025-12-26", "DE", "basic", "ads", 9.0, "2026-01-01 00:00"),
            (2, "2025-12-31", "FR", "premium", "organic", 29.0, "2026-01-01 00:00"),
            (3, "2025-12-01", "GB", "basic", "ads", 9.0, "2026-01-01 00:00"),
            # a plan change after the 01-05 snapshot: features at 01-05 must still say "basic"
            (1, "2025-12-26", "DE", "premium", "ads", 29.0, "2026-01-06 08:00"),
        ]
    )
    return events, customers


def test_features_labels_and_population_at_a_snapshot(tiny_history, shop_params):
    dataset = _dataset(shop_params)
    events, customers = map(ibis.memtable, tiny_history)
    expr = build_features(
        events, customers, [D(2026, 1, 5)], dataset, CFG, labelled=True, span=UTC_DAYS
    )
    out = ibis.duckdb.connect().to_pyarrow(expr).to_pandas().set_index("customer_id")

    assert sorted(out.index) == [1, 2]  # 3 had no activity in the last 4 days
    assert out.loc[1, "churn"] == 0 and out.loc[2, "churn"] == 1
    assert out.loc[1, "sessions_2d"] == 1 and out.loc[1, "orders_2d"] == 1
    assert out.loc[1, "orders_amount_4d"] == 30.0
    assert out.loc[2, "sessions_4d"] == 2 and out.loc[2, "sessions_2d"] == 1
    assert out.loc[2, "tickets_4d"] == 1  # the 01-09 ticket is in the future: not counted
    assert out.loc[2, "refunds_amount_2d"] == 12.5
    assert out.loc[2, "days_since_last_activity"] == 0
    assert out.loc[1, "tenure_days"] == 10 and out.loc[2, "plan"] == "premium"
    assert out.loc[1, "plan"] == "basic" and out.loc[1, "monthly_price"] == 9.0


def test_a_change_exported_without_a_time_of_its_own_is_known_from_its_export(
    tiny_history, shop_params
):
    """A users export whose only time is the signup date: customer 1's plan change carries
    the same timestamp as the row before it, and only its partition (01-06) says when it was
    known. At 01-05 the plan is still "basic"; keyed on the timestamp alone, the two versions
    collapsed to the later one and "premium" leaked into every past snapshot."""
    from stages.lib.io import PARTITION_COL
    from stages.lib.merge import history_keys, upsert

    dataset = _dataset(shop_params)
    events, customers = tiny_history
    customers = customers.copy()
    customers["updated_at"] = pd.Timestamp("2025-12-26").as_unit("us")  # no time of its own
    customers[PARTITION_COL] = pd.to_datetime(
        ["2026-01-01", "2026-01-01", "2026-01-01", "2026-01-06"]
    ).as_unit("us")
    customers["_row"] = range(len(customers))
    table = dataset.table("customers")
    key = history_keys(table)["customers_versions"]
    versions = upsert(None, ibis.memtable(customers), key, table.timestamp)
    con = ibis.duckdb.connect()
    assert con.to_pyarrow(versions).num_rows == 4  # both versions of customer 1 are kept

    def plan_at(day: dt.date) -> str:
        expr = build_features(
            ibis.memtable(events), versions, [day], dataset, CFG, labelled=False, span=UTC_DAYS
        )
        out = con.to_pyarrow(expr).to_pandas().set_index("customer_id")
        return out.loc[1, "plan"]

    assert plan_at(D(2026, 1, 5)) == "basic"
    assert plan_at(D(2026, 1, 7)) == "premium"


def test_features_never_read_the_future(tiny_history, shop_params):
    dataset = _dataset(shop_params)
    events, customers = map(ibis.memtable, tiny_history)
    con = ibis.duckdb.connect()
    full = con.to_pyarrow(
        build_features(
            events, customers, [D(2026, 1, 5)], dataset, CFG, labelled=False, span=UTC_DAYS
        )
    ).to_pandas()
    cut = events.filter(events.event_time < pd.Timestamp("2026-01-06"))
    past_only = con.to_pyarrow(
        build_features(cut, customers, [D(2026, 1, 5)], dataset, CFG, labelled=False, span=UTC_DAYS)
    ).to_pandas()
    pd.testing.assert_frame_equal(full, past_only)


def test_days_are_the_tables_local_days(tiny_history, shop_params):
    """A New York lake: an evening session is on its local day, not on the next UTC day, and
    the latest day is the last local day (the lake's last partition), not a UTC day holding a
    few hours of data."""
    raw = copy.deepcopy({**shop_params["dataset"], "label": LABEL})
    for table in raw["tables"].values():
        table["timezone"] = "America/New_York"
    dataset = dataset_from_params(raw)
    events, customers = tiny_history
    # customer 1's order at 21:00 on 01-05 in New York is 02:00 UTC on 01-06
    events.loc[events.event_id == 2, "event_time"] = pd.Timestamp("2026-01-06 02:00")
    # the last event, a ticket at 22:00 on 01-09 in New York (03:00 UTC on 01-10)
    events.loc[events.event_id == 9, "event_time"] = pd.Timestamp("2026-01-10 03:00")
    con = ibis.duckdb.connect()
    ev, cu = ibis.memtable(events), ibis.memtable(customers)
    first, last, span = event_dates(con, ev, dataset)
    assert (first, last) == (D(2026, 1, 1), D(2026, 1, 9))
    expr = build_features(ev, cu, [D(2026, 1, 5)], dataset, CFG, labelled=True, span=span)
    out = con.to_pyarrow(expr).to_pandas().set_index("customer_id")
    assert out.loc[1, "orders_2d"] == 1 and out.loc[1, "orders_amount_4d"] == 30.0
    # on UTC days the order would be the 6th's, after the snapshot
    as_utc = _dataset(shop_params)
    utc = build_features(ev, cu, [D(2026, 1, 5)], as_utc, CFG, labelled=True, span=UTC_DAYS)
    assert con.to_pyarrow(utc).to_pandas().set_index("customer_id").loc[1, "orders_2d"] == 0


def test_main_writes_snapshots_predict_set_and_schema(tmp_path, tiny_history, shop_params):
    params = dict(shop_params)
    params["features"] = {**CFG.__dict__, "windows": list(CFG.windows), "max_snapshots": 2}
    params["dataset"] = {**shop_params["dataset"], "label": LABEL}
    params_file = write_params(params, tmp_path / "params.yaml")
    events, customers = tiny_history
    hist = tmp_path / "history"
    hist.mkdir()
    events.to_parquet(hist / "events.parquet", index=False)
    customers.to_parquet(hist / "customers_versions.parquet", index=False)

    assert main([str(hist), str(tmp_path / "f"), "--params", str(params_file)]) == 0
    snaps = pd.read_parquet(tmp_path / "f/snapshots.parquet")
    assert sorted(snaps["snapshot_date"].astype(str).unique()) == ["2026-01-04", "2026-01-06"]
    predict = pd.read_parquet(tmp_path / "f/predict.parquet")
    assert "churn" not in predict and set(predict["snapshot_date"].astype(str)) == {"2026-01-09"}
    assert predict.set_index("customer_id").loc[1, "plan"] == "premium"  # latest version
    schema = load_schema(tmp_path / "f/feature_schema.json")
    assert set(schema.features) <= set(snaps.columns)
    assert schema.categories["plan"] == ("basic", "standard", "premium")
    summary = json.loads((tmp_path / "f/summary.json").read_text())
    assert summary["predict"]["rows"] == len(predict)


def test_main_with_too_little_history_says_why(tmp_path, tiny_history, shop_params):
    params_file = write_params(shop_params, tmp_path / "params.yaml")  # horizon 21 > 8 days
    events, customers = tiny_history
    hist = tmp_path / "history"
    hist.mkdir()
    events.to_parquet(hist / "events.parquet", index=False)
    customers.to_parquet(hist / "customers_versions.parquet", index=False)
    with pytest.raises(SystemExit, match="too short for a labelled snapshot"):
        main([str(hist), str(tmp_path / "f"), "--params", str(params_file)])


def test_exclude_narrows_the_schema_and_names_unknown_features(shop_params):
    dataset = _dataset(shop_params)
    numeric, categorical = feature_names(dataset, CFG)
    kept_numeric, kept_categorical = schema_features(
        dataset, replace(CFG, exclude=("plan", numeric[0]))
    )
    assert kept_numeric == numeric[1:]
    assert kept_categorical == [c for c in categorical if c != "plan"]
    assert schema_features(dataset, CFG) == (numeric, categorical)
    with pytest.raises(ValueError, match=r"features\.exclude: \['nope'\] are not computed"):
        schema_features(dataset, replace(CFG, exclude=("nope",)))
    with pytest.raises(ValueError, match=r"leaves no feature"):
        schema_features(dataset, replace(CFG, exclude=(*numeric, *categorical)))
    assert FeaturesConfig.from_params({"exclude": ["plan"]}).exclude == ("plan",)


def test_label_keys_left_the_features_section():
    with pytest.raises(ValueError, match=r"features\.horizon_days: moved .*dataset\.label"):
        FeaturesConfig.from_params({"horizon_days": 21, "windows": [7]})
    with pytest.raises(ValueError, match=r"dataset\.label\.lookback_days"):
        FeaturesConfig.from_params({"active_days": 28})


def test_entities_without_an_attributes_row_are_counted(tmp_path, shop_params):
    """A customers export that stopped while the events went on: the new customers have no
    attributes, every one null. Counted (and said), not scored silently."""
    from stages.lib.snapshots import entities_without_attributes

    dataset = _dataset(shop_params)
    attributes = [*dataset.entity_features.categorical, *dataset.entity_features.numeric]
    assert attributes and dataset.attribute_table.role == "entities"
    frame = pd.DataFrame({"customer_id": [1, 2, 3], "orders_7d": [1.0, 0.0, 2.0]})
    for name in attributes:
        frame[name] = pd.Series(["x", None, None], dtype="object")
    frame.loc[2, attributes[0]] = "y"  # one attribute known: the row exists
    frame.to_parquet(tmp_path / "predict.parquet")
    assert entities_without_attributes(tmp_path / "predict.parquet", dataset) == 1
