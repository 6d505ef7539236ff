"""The example datasets' sample lakes (`evergreen lake simulate --dataset NAME`): deterministic,
appendable, shaped as their configs say (calendar, nulls, cancellations, drift), and valid
against their own `conf/dataset/<name>.yaml`. The retail lake then runs validate -> prepare ->
features, whose churn labels are checked against the history on calendar days."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stages import features, prepare, validate
from stages.cli.simulate import main as simulate_main
from stages.lib.params import compose_params

ROOT = Path(__file__).resolve().parents[2]


def _files(lake: Path) -> dict[str, bytes]:
    return {
        p.relative_to(lake).as_posix(): p.read_bytes()
        for p in sorted((lake / "landing").rglob("*.parquet"))
    }


def _simulate(name: str, lake: Path, *args: str) -> int:
    argv = ["--dataset", name, "--lake", str(lake), *args, "--seed", "7"]
    return simulate_main([*argv, "--params", str(ROOT / "params.yaml")])


def _table(lake: Path, table: str) -> pd.DataFrame:
    frames = []
    for path in sorted((lake / "landing" / table).glob("date=*/*.parquet")):
        frame = pd.read_parquet(path)
        frame["_date"] = path.parent.name.removeprefix("date=")
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize("name", ["retail", "bank", "bikes"])
def test_a_sample_lake_is_the_same_bytes_in_one_run_or_appended(tmp_path, name):
    one, two = tmp_path / "one", tmp_path / "two"
    assert _simulate(name, one, "--start", "2025-12-20", "--days", "12") == 0
    assert _simulate(name, two, "--start", "2025-12-20", "--days", "7") == 0
    assert _simulate(name, two, "--days", "5") == 0
    assert _files(one) and _files(one) == _files(two)
    meta = json.loads((two / "_simulator/meta.json").read_text())
    assert meta == {"dataset": name, "next_day": 12, "seed": 7, "start": "2025-12-20"}


def test_a_lake_of_another_dataset_or_seed_is_refused(tmp_path, capsys):
    lake = tmp_path / "lake"
    assert _simulate("bikes", lake, "--days", "2") == 0
    assert _simulate("bank", lake, "--days", "2") == 2
    assert "holds {'dataset': 'bikes'" in capsys.readouterr().err
    assert (
        simulate_main(["--dataset", "bikes", "--lake", str(lake), "--days", "1", "--seed", "8"])
        == 2
    )


def test_retail_has_a_real_shops_calendar_guests_and_cancellations(tmp_path):
    lake = tmp_path / "lake"
    assert _simulate("retail", lake) == 0
    lines = _table(lake, "invoices")
    days = pd.to_datetime(pd.Series(sorted(lines["_date"].unique())))
    assert not (days.dt.day_of_week == 5).any()  # closed on Saturdays
    assert not days.dt.strftime("%m-%d").isin(["12-24", "12-25", "12-31", "01-01"]).any()
    per_day = lines.groupby("_date").size()
    assert per_day.iloc[0] < per_day.median() / 3  # a small first partition
    assert (per_day < per_day.median() / 5).sum() >= 3  # days with very few rows
    assert 0.15 < lines["customer_id"].isna().mean() < 0.25
    cancelled = lines["invoice_no"].str.startswith("C")
    assert 0.02 < cancelled.mean() < 0.15
    assert (lines.loc[cancelled, "quantity"] < 0).all() and (
        lines.loc[~cancelled, "quantity"] > 0
    ).all()


def test_bank_calls_are_on_weekdays_and_drift_strongly_between_years(tmp_path):
    lake = tmp_path / "lake"
    assert _simulate("bank", lake) == 0
    calls = _table(lake, "calls")
    assert (pd.to_datetime(calls["_date"]).dt.day_of_week < 5).all()
    year = calls["call_time"].dt.year
    rate = (calls["y"] == "yes").groupby(year).mean()
    assert len(rate) == 2 and rate.iloc[1] > 1.5 * rate.iloc[0]
    assert calls.groupby(year)["euribor3m"].mean().diff().iloc[1] < -2


def test_bikes_count_every_hour_and_follow_the_commute(tmp_path):
    lake = tmp_path / "lake"
    assert _simulate("bikes", lake, "--days", "60") == 0
    rentals = _table(lake, "rentals")
    assert (rentals.groupby("_date").size() == 24).all() and rentals["hour_start"].is_unique
    working = rentals[rentals["workingday"] == 1].groupby("hour")["cnt"].mean()
    assert working[8] > 3 * working[3] and working[17] > 3 * working[3]


@pytest.mark.parametrize("name", ["retail", "bank", "bikes"])
def test_a_sample_lake_validates_against_its_own_config(tmp_path, name):
    lake = tmp_path / "lake"
    assert _simulate(name, lake, "--start", "2025-12-15", "--days", "40") == 0
    params = compose_params(ROOT / "conf", tmp_path / "params.yaml", [f"dataset={name}"])
    out, metrics = tmp_path / "validated", tmp_path / "validation.json"
    argv = [str(lake / "landing"), str(out), str(metrics), "--params", str(params)]
    assert validate.main(argv) == 0
    m = json.loads(metrics.read_text())  # one table: its totals are the metrics' totals
    assert len(json.loads((out / "report.json").read_text())) == 1
    assert m["missing_days"] == 0  # weekends and holidays are the calendar's
    # nothing quarantined but the lines without a customer (retail's guests)
    assert m["rows_quarantined"] == m["rows_null_key"]
    assert (m["rows_null_key"] > 0) == (name == "retail")


@pytest.fixture(scope="module")
def retail_features(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("retail")
    lake = base / "lake"
    # Dec 1 .. Feb 8: weekend gaps, the year-end break, a tiny first day
    assert _simulate("retail", lake, "--start", "2025-12-01", "--days", "70") == 0
    params = compose_params(ROOT / "conf", base / "params.yaml", ["dataset=retail"])
    p = ["--params", str(params)]
    assert validate.main([str(lake / "landing"), str(base / "v"), str(base / "m.json"), *p]) == 0
    assert prepare.main([str(base / "v"), str(base / "h"), *p]) == 0
    assert features.main([str(base / "h"), str(base / "f"), *p]) == 0
    return base / "h", base / "f"


def test_retail_churn_labels_count_calendar_days_across_gaps(retail_features):
    history_dir, features_dir = retail_features
    history = pd.read_parquet(history_dir / "invoices.parquet")
    snaps = pd.read_parquet(features_dir / "snapshots.parquet")
    dates = sorted(pd.to_datetime(snaps["snapshot_date"]).dt.date.unique())
    # the newest labelled snapshot is horizon_days calendar days before the last line
    last = history["invoice_date"].max().date()
    assert dates[-1] == last - dt.timedelta(days=28)
    assert any(d.month == 12 and d.day >= 24 for d in dates) or any(d.month == 1 for d in dates)
    purchases = history[~history["invoice_no"].str.startswith("C")]
    day = purchases["invoice_date"].dt.normalize()
    for snap in dates:
        s = pd.Timestamp(snap)
        rows = snaps[pd.to_datetime(snaps["snapshot_date"]) == s]
        later = purchases[(day > s) & (day <= s + pd.Timedelta(days=28))]
        retained = set(later["customer_id"].dropna().astype(int))
        expected = (~rows["customer_id"].isin(retained)).astype(int)
        assert rows["churn"].tolist() == expected.tolist(), snap
    assert snaps["churn"].nunique() == 2


def test_retail_cancellations_are_negative_amounts_of_their_own_type(retail_features):
    history_dir, features_dir = retail_features
    history = pd.read_parquet(history_dir / "invoices.parquet")
    snaps = pd.read_parquet(features_dir / "snapshots.parquet")
    assert {"lines_28d", "cancellations_28d", "cancellations_amount_28d"} <= set(snaps.columns)
    assert (snaps["cancellations_amount_28d"] <= 0).all() and (snaps["lines_amount_28d"] >= 0).all()
    row = snaps[snaps["cancellations_28d"] > 0].iloc[0]
    s = pd.Timestamp(row["snapshot_date"])
    day = history["invoice_date"].dt.normalize()
    mine = history[
        (history["customer_id"] == row["customer_id"])
        & (day <= s)
        & (day > s - pd.Timedelta(days=28))
    ]
    cancelled = mine["invoice_no"].str.startswith("C")
    assert row["cancellations_28d"] == cancelled.sum()
    assert row["lines_28d"] == (~cancelled).sum()
    assert np.isclose(row["cancellations_amount_28d"], mine.loc[cancelled, "amount"].sum())
    # the country is the one on the customer's latest line up to the snapshot
    assert row["country"] == mine.sort_values(["invoice_date", "line_key"]).iloc[-1]["country"]
