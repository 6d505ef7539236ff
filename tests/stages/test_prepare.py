from __future__ import annotations

import datetime as dt

import ibis
import pandas as pd
import pyarrow.parquet as pq

from stages.lib.merge import upsert
from stages.prepare import main
from stages.validate import main as validate_main
from tests.conftest import customers_frame, events_frame, write_params, write_partition


def _frame(rows):
    df = pd.DataFrame(rows, columns=["id", "value", "ts", "_partition", "_row"])
    df["ts"] = pd.to_datetime(df["ts"])
    df["_partition"] = pd.to_datetime(df["_partition"]).dt.date
    return ibis.memtable(df)


def _run(expr) -> list[tuple]:
    out = ibis.duckdb.connect().to_pyarrow(expr).to_pandas().sort_values("id")
    return list(out[["id", "value"]].itertuples(index=False, name=None))


def test_upsert_keeps_untouched_history_and_takes_latest_increment_rows():
    history = _frame(
        [(1, "a", "2026-01-01", "2026-01-01", 0), (2, "b", "2026-01-01", "2026-01-01", 1)]
    )
    increment = _frame(
        [
            (2, "b-old", "2026-01-02", "2026-01-02", 0),
            (2, "b-new", "2026-01-02", "2026-01-02", 1),  # same time, later row
            (3, "c", "2026-01-01", "2026-01-02", 2),
        ]
    )  # late-arriving row
    assert _run(upsert(history, increment, "id", "ts")) == [(1, "a"), (2, "b-new"), (3, "c")]


def test_upsert_later_partition_wins_over_later_timestamp():
    # a correction re-sent in a later partition replaces the row even if its timestamp is older
    increment = _frame(
        [
            (1, "first", "2026-01-05", "2026-01-01", 0),
            (1, "correction", "2026-01-04", "2026-01-02", 0),
        ]
    )
    assert _run(upsert(None, increment, "id", "ts")) == [(1, "correction")]


def test_upsert_over_partitions_equals_one_merge_of_all():
    days = [
        _frame([(i % 4, f"d{d}-{i}", f"2026-01-0{d}", f"2026-01-0{d}", i) for i in range(6)])
        for d in (1, 2, 3)
    ]
    stepwise = None
    for day in days:
        stepwise = upsert(stepwise, day, "id", "ts")
    all_at_once = upsert(None, days[0].union(days[1]).union(days[2]), "id", "ts")
    assert _run(stepwise) == _run(all_at_once)


def test_main_dedupes_events_and_keeps_latest_customer(tmp_path, shop_params):
    params = write_params(shop_params, tmp_path / "params.yaml")
    data = tmp_path / "data"
    write_partition(
        data,
        "events",
        "2026-01-01",
        events_frame(
            [
                (1, 10, "2026-01-01 10:00", "session", None),
                (2, 10, "2026-01-01 11:00", "order", 20.0),
            ]
        ),
    )
    write_partition(
        data,
        "events",
        "2026-01-02",
        events_frame(
            [
                (2, 10, "2026-01-01 11:00", "order", 20.0),  # re-sent duplicate
                (3, 11, "2026-01-02 09:00", "session", None),
            ]
        ),
    )
    write_partition(
        data,
        "customers",
        "2026-01-01",
        customers_frame(
            [
                (10, "2025-12-01", "DE", "basic", "ads", 9.0, "2026-01-01 00:00"),
                (11, "2025-12-02", "FR", "basic", "ads", 9.0, "2026-01-01 00:00"),
            ]
        ),
    )
    write_partition(
        data,
        "customers",
        "2026-01-02",
        customers_frame(
            [
                (10, "2025-12-01", "DE", "premium", "ads", 29.0, "2026-01-02 08:00"),
            ]
        ),
    )
    validated = tmp_path / "validated"
    assert (
        validate_main(
            [
                str(data / "landing"),
                str(validated),
                str(tmp_path / "m.json"),
                "--params",
                str(params),
            ]
        )
        == 0
    )
    assert main([str(validated), str(tmp_path / "history"), "--params", str(params)]) == 0

    events = pq.read_table(tmp_path / "history/events.parquet").to_pandas()
    assert events["event_id"].tolist() == [1, 2, 3]
    customers = pq.read_table(tmp_path / "history/customers.parquet").to_pandas()
    assert customers.set_index("customer_id").loc[10, "plan"] == "premium"
    assert customers["customer_id"].tolist() == [10, 11]
    assert customers["signup_date"].iloc[0] == dt.date(2025, 12, 1)
    versions = pq.read_table(tmp_path / "history/customers_versions.parquet").to_pandas()
    assert versions[versions.customer_id == 10]["plan"].tolist() == ["basic", "premium"]
