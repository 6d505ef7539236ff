"""Profiles (per-partition statistics) and drift (latest partitions vs the training reference)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stages.drift import main as drift_main
from stages.lib.dataset import dataset_from_params
from stages.lib.drift import (
    DriftConfig,
    column_roles,
    compare_categorical,
    compute_drift,
    drift_summary,
    js_distance,
    psi,
    split_periods,
)
from stages.lib.profiling import profile_partition
from stages.profiles import main as profile_main
from stages.validate import main as validate_main
from tests.conftest import customers_frame, events_frame, write_params, write_partition


@pytest.fixture
def dataset(shop_params):
    return dataset_from_params(shop_params["dataset"])


def _events(n: int, seed: int, *, amount_scale: float = 40.0, orders: float = 0.3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    kinds = rng.choice(["session", "order"], n, p=[1 - orders, orders])
    amount = np.where(kinds == "order", np.round(rng.exponential(amount_scale, n), 2), np.nan)
    rows = [
        (i, int(rng.integers(1, 50)), "2026-01-01 10:00", k, None if np.isnan(a) else float(a))
        for i, (k, a) in enumerate(zip(kinds, amount, strict=True))
    ]
    return events_frame(rows)


def test_profile_of_a_partition(dataset):
    frame = events_frame(
        [
            (1, 10, "2026-01-01 10:00", "session", None),
            (2, 10, "2026-01-01 12:00", "order", 10.0),
            (3, 11, "2026-01-01 13:00", "order", 30.0),
            (4, 12, "2026-01-01 14:00", "refund", 20.0),
        ]
    )
    p = profile_partition(frame, dataset.table("events"), top_k=2)
    assert p["rows"] == 4 and p["table"] == "events"
    amount = p["columns"]["amount"]
    assert (amount["count"], amount["nulls"], amount["distinct"]) == (3, 1, 3)
    assert (amount["min"], amount["max"], amount["mean"]) == (10.0, 30.0, 20.0)
    assert len(amount["percentiles"]) == 101 and amount["percentiles"][50] == 20.0
    kinds = p["columns"]["event_type"]
    assert kinds["top"] == {"order": 2, "refund": 1} and kinds["other"] == 1
    assert p["columns"]["event_time"] == {
        "type": "timestamp",
        "count": 4,
        "nulls": 0,
        "distinct": 4,
        "min": "2026-01-01T10:00:00",
        "max": "2026-01-01T14:00:00",
    }
    # pure: the same frame in another row order gives the same profile
    shuffled = frame.sample(frac=1.0, random_state=1).reset_index(drop=True)
    assert profile_partition(shuffled, dataset.table("events"), top_k=2) == p


def test_profile_of_an_empty_partition(dataset):
    p = profile_partition(events_frame([]), dataset.table("events"))
    assert p["rows"] == 0 and p["columns"]["amount"]["percentiles"] is None
    assert p["columns"]["event_type"]["top"] == {}


def test_psi_and_js_are_zero_for_equal_distributions_and_grow_with_the_shift():
    a = np.array([0.1, 0.4, 0.5])
    assert psi(a, a) == 0.0 and js_distance(a, a) == 0.0
    assert 0 < psi(a, np.array([0.2, 0.4, 0.4])) < psi(a, np.array([0.5, 0.4, 0.1]))
    assert js_distance(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)


def test_a_stable_many_valued_column_does_not_drift_by_truncation():
    """A country column of 60 values, the same shares every day, 200 rows a day: each day's
    profile keeps its top 20. Summed over days, a value ranked about 20th counted on the days
    it made the top and as `other` on the rest would "drift" between any two windows (a hotel
    lake's stationary country: JS 0.12, p 4e-06, right after a training); compared over the
    values every day kept, it does not."""
    rng = np.random.default_rng(3)
    shares = 1 / np.arange(1, 61) ** 0.7
    shares /= shares.sum()
    values = [f"C{i:02d}" for i in range(60)]

    def day() -> dict:
        frame = pd.Series(rng.choice(values, 200, p=shares))
        return {"top": {k: int(v) for k, v in frame.value_counts().head(20).items()},
                "other": int(200 - frame.value_counts().head(20).sum()), "nulls": 0,
                "count": 200}  # fmt: skip

    days = [day() for _ in range(42)]
    found = compare_categorical(days[:28], days[28:])
    assert found.p_value > 0.01 and found.value < 0.1, found
    # a real move is still seen: the top value's share halves in the current window
    moved = [dict(d, top=dict(d["top"])) for d in days[28:]]
    for d in moved:
        half = d["top"]["C00"] // 2
        d["top"]["C00"] -= half
        d["other"] += half
    assert compare_categorical(days[:28], moved).p_value < 1e-4


def test_a_new_code_in_a_sixty_code_column_is_seen_with_the_default_top_k():
    """Merchant codes, 60 of them, 400 rows a day; from the current window a new code takes
    3.6 % of the rows (a fraud pattern). Kept to each day's top 20, it is one of the values not
    every day kept, folded into `other` with the codes it displaced: no drift seen (JS ~0.03,
    p ~0.3, where the full counts give p ~1e-48). The default top_k keeps every code."""
    from stages.lib.profiling import ProfileConfig, _categorical

    rng = np.random.default_rng(15)
    shares = 1 / np.arange(1, 61) ** 0.8
    shares /= shares.sum()
    codes = np.array([f"{5000 + i}" for i in range(60)])

    def day(new: bool, top_k: int) -> dict:
        values = rng.choice(codes, 400, p=shares)
        if new:
            values[rng.random(400) < 0.036] = "6051"
        stats = _categorical(pd.Series(values), top_k)
        return {**stats, "nulls": 0, "count": 400}

    def p_value(top_k: int) -> float:
        days = [day(i >= 28, top_k) for i in range(42)]
        return compare_categorical(days[:28], days[28:]).p_value

    assert ProfileConfig().top_k >= 60
    assert p_value(ProfileConfig().top_k) < 1e-6
    assert p_value(20) > 1e-3  # why the default is not 20


def test_rows_re_sent_weeks_later_are_counted_late_not_profiled(dataset):
    """A partition of 2026-03-10 holds its day's 100 events and 50 re-sent from 40 days
    before (their outcomes arrived): the profile describes the day's own rows, and counts the
    others as late. The entities table's rows are versions, never late."""
    from stages.lib.profiling import ProfileConfig

    events = dataset.table("events")
    own = _events(100, seed=1, amount_scale=400.0).assign(
        event_time=pd.Timestamp("2026-03-10 10:00")
    )
    old = _events(50, seed=2).assign(event_time=pd.Timestamp("2026-01-29 23:30"))
    frame = pd.concat([own, old], ignore_index=True)
    late = ProfileConfig().late_after_days
    p = profile_partition(frame, events, day="2026-03-10", late_after_days=late)
    assert (p["rows"], p["late_rows"]) == (100, 50)
    assert p == profile_partition(own, events) | {"late_rows": 50}
    # a row a few days late is the day's data still; without a day, every row is profiled
    recent = own.assign(event_time=pd.Timestamp("2026-03-04 08:00"))
    assert "late_rows" not in profile_partition(recent, events, day="2026-03-10", late_after_days=7)
    assert profile_partition(frame, events)["rows"] == 150
    customers = dataset.table("customers")
    assert customers.role == "entities"
    with pytest.raises(ValueError, match="late_after_days"):
        ProfileConfig.from_params({"late_after_days": -1})


def test_split_periods_keeps_current_out_of_the_reference():
    dates = [f"2026-01-{d:02d}" for d in range(1, 11)]
    ref, cur = split_periods(dates, dt.date(2026, 1, 9), 3)
    assert cur == ["2026-01-08", "2026-01-09", "2026-01-10"]
    assert ref == [f"2026-01-{d:02d}" for d in range(1, 8)]


def _profiles(dataset, frames: dict[str, pd.DataFrame]) -> dict:
    spec = dataset.table("events")
    return {"events": {d: profile_partition(f, spec) for d, f in frames.items()}, "customers": {}}


def test_drift_flags_what_moved_and_nothing_else(dataset):
    days = [f"2026-01-{d:02d}" for d in range(1, 15)]
    steady = {d: _events(400, seed=i) for i, d in enumerate(days)}
    cfg = DriftConfig(last_days=4, min_count=100)
    train = ["2026-01-02"]  # reference: up to 2026-01-02 + horizon (21 days): all but current
    same = compute_drift(_profiles(dataset, steady), dataset, train, cfg)
    events = same["tables"]["events"]
    assert not same["drifted"] and events["reference"]["partitions"] == 10
    assert events["columns"]["amount"]["value"] < 0.05
    assert events["columns"]["event_type"]["value"] < 0.05
    assert set(events["columns"]) == {"event_type", "amount"}  # ids and time are not compared

    moved = dict(steady)
    for i, d in enumerate(days[-4:]):
        moved[d] = _events(400, seed=100 + i, amount_scale=120.0)  # prices tripled
    report = compute_drift(_profiles(dataset, moved), dataset, train, cfg)
    columns = report["tables"]["events"]["columns"]
    assert report["drifted"] and columns["amount"]["drifted"] and columns["amount"]["value"] > 0.3
    assert not columns["event_type"]["drifted"]

    mix = dict(steady)
    for i, d in enumerate(days[-4:]):
        mix[d] = _events(800, seed=200 + i, orders=0.8)  # many more orders, twice the rows
    report = compute_drift(_profiles(dataset, mix), dataset, train, cfg)
    events = report["tables"]["events"]
    assert events["columns"]["event_type"]["drifted"] and events["rows"]["drifted"]
    assert events["rows"]["change"] == pytest.approx(1.0)
    # amounts are nulls for sessions: the null share moved, so amount drifts too
    assert events["columns"]["amount"]["drifted"]


def test_with_the_monitors_roles_only_an_input_makes_a_table_drifted(dataset):
    days = [f"2026-01-{d:02d}" for d in range(1, 15)]
    moved = {d: _events(400, seed=i) for i, d in enumerate(days)}
    for i, d in enumerate(days[-4:]):
        moved[d] = _events(400, seed=100 + i, amount_scale=120.0)  # prices tripled
    cfg, train = DriftConfig(last_days=4, min_count=100), ["2026-01-02"]
    # the amount listed as seasonal (as a dataset would its month): measured, shown, not a flag
    roles = column_roles(dataset, ["plan"], seasonal=["amount"])
    assert roles["events"] == {"event_type": "input", "amount": "seasonal"}
    report = compute_drift(_profiles(dataset, moved), dataset, train, cfg, roles)
    columns = report["tables"]["events"]["columns"]
    assert columns["amount"]["drifted"] and columns["amount"]["role"] == "seasonal"
    assert not report["drifted"] and not report["tables"]["events"]["drifted"]
    assert drift_summary(report)["columns_drifted"] == 0
    # the same data with the amount an input (the monitor's default for it): drifted
    inputs = compute_drift(
        _profiles(dataset, moved), dataset, train, cfg, column_roles(dataset, ["plan"], ())
    )
    assert inputs["drifted"] and drift_summary(inputs)["columns_drifted"] == 1
    # a rows target is listed, never the verdict: its latest rows may await their values
    target = compute_drift(
        _profiles(dataset, moved), dataset, train, cfg,
        {"events": {"event_type": "input", "amount": "target"}},
    )  # fmt: skip
    assert target["tables"]["events"]["columns"]["amount"]["drifted"]
    assert not target["drifted"] and drift_summary(target)["columns_drifted"] == 0


def test_too_few_values_are_reported_but_never_flagged(dataset):
    days = [f"2026-01-{d:02d}" for d in range(1, 9)]
    frames = {d: _events(20, seed=i, amount_scale=40.0 + 100 * (i > 5)) for i, d in enumerate(days)}
    report = compute_drift(
        _profiles(dataset, frames), dataset, ["2026-01-01"], DriftConfig(last_days=2)
    )
    amount = report["tables"]["events"]["columns"]["amount"]
    assert amount["enough_data"] is False and amount["drifted"] is False
    # rows a day going 20 -> 4 on so few rows: listed, not a volume drift (an entities table's
    # handful of updates a day made a table "DRIFTED")
    fewer = {d: f.head(4) if d >= "2026-01-07" else f for d, f in frames.items()}
    rows = compute_drift(
        _profiles(dataset, fewer), dataset, ["2026-01-01"], DriftConfig(last_days=2)
    )["tables"]["events"]["rows"]
    assert rows["change"] == -0.8 and rows["enough_data"] is False and rows["drifted"] is False
    plenty = compute_drift(
        _profiles(dataset, fewer), dataset, ["2026-01-01"], DriftConfig(last_days=2, min_count=5)
    )["tables"]["events"]["rows"]
    assert plenty["drifted"] is True


def _land_day(data: Path, i: int, *, events: int, seed: int) -> None:
    """Day i (2026-01-<i+1>): `events` shop events and one customer, landed as partitions."""
    day = f"2026-01-{i + 1:02d}"
    frame = _events(events, seed=seed)
    frame["event_id"] += 1000 * i
    write_partition(data, "events", day, frame)
    write_partition(data, "customers", day, customers_frame(
        [(i + 1, "2025-12-01", "DE", "basic", "ads", 9.0, f"{day} 00:00")]))  # fmt: skip


def test_profile_and_drift_stages_on_validated_partitions(tmp_path, shop_params):
    params = write_params(shop_params, tmp_path / "params.yaml")
    for i in range(10):
        _land_day(tmp_path / "data", i, events=60, seed=i)
    validated, profiles = tmp_path / "validated", tmp_path / "profile"
    argv = [str(tmp_path / "data/landing"), str(validated), str(tmp_path / "v.json")]
    assert validate_main([*argv, "--params", str(params)]) == 0
    assert profile_main([str(validated), str(profiles), "--params", str(params)]) == 0
    written = sorted(p.name for p in (profiles / "events").iterdir())
    assert written == [f"date=2026-01-{i:02d}.json" for i in range(1, 11)]
    one = json.loads((profiles / "events/date=2026-01-03.json").read_text())
    assert one["rows"] == 60

    split = tmp_path / "summary.json"
    split.write_text(json.dumps({"train": {"snapshot_dates": ["2025-12-20"]}}))
    metrics, whole = tmp_path / "data_drift.json", tmp_path / "drift/report.json"
    argv = [str(profiles), str(split), str(metrics), str(whole), "--params", str(params)]
    assert drift_main(argv) == 0
    report = json.loads(whole.read_text())
    assert report["reference_until"] == "2026-01-10"
    assert report["tables"]["events"]["current"]["partitions"] == shop_params["drift"]["last_days"]
    # the metrics: the report's headline, no table (every column is the report's)
    columns = [c for t in report["tables"].values() for c in t["columns"].values()]
    assert json.loads(metrics.read_text()) == {
        "drifted": report["drifted"],
        "reference_until": "2026-01-10",
        "tables_drifted": sum(t["drifted"] for t in report["tables"].values()),
        "columns_drifted": sum(c["drifted"] for c in columns),
        "psi_max": max(c["value"] for c in columns if c["metric"] == "psi"),
        "js_max": max(c["value"] for c in columns if c["metric"] == "js_distance"),
    }
    before = metrics.read_bytes(), whole.read_bytes()
    assert drift_main(argv) == 0
    assert (metrics.read_bytes(), whole.read_bytes()) == before

    # a partition validate no longer writes loses its profile
    (validated / "events/date=2026-01-10.parquet").unlink()
    assert profile_main([str(validated), str(profiles), "--params", str(params)]) == 0
    assert not (profiles / "events/date=2026-01-10.json").exists()


def test_bad_drift_and_profile_params_exit_2(tmp_path, shop_params, capsys):
    bad = dict(shop_params, drift={**shop_params["drift"], "p_value": 0.05})
    params = write_params(bad, tmp_path / "params.yaml")
    split = tmp_path / "s.json"
    split.write_text(json.dumps({"train": {"snapshot_dates": ["2026-01-01"]}}))
    assert (
        drift_main(
            [
                str(tmp_path),
                str(split),
                str(tmp_path / "m.json"),
                str(tmp_path / "r.json"),
                "--params",
                str(params),
            ]
        )
        == 2
    )
    assert "unknown keys ['p_value']" in capsys.readouterr().err
    bad = dict(shop_params, profile={"top_k": 0})
    params = write_params(bad, tmp_path / "params.yaml")
    assert profile_main([str(tmp_path), str(tmp_path / "p"), "--params", str(params)]) == 2
    assert "profile.top_k" in capsys.readouterr().err


def _tree(folder):
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*.json"))
        if p.name != "manifest.json"
    }


def test_profiles_stage_is_incremental_and_equals_a_full_run(tmp_path, shop_params, capsys):
    """A run profiles only new or changed partitions (and a profile someone altered); the
    files are byte-identical to a run from nothing; a params change profiles everything."""
    params = write_params(shop_params, tmp_path / "params.yaml")
    validated, profiles = tmp_path / "validated", tmp_path / "profile"

    def land(i, seed):
        _land_day(tmp_path / "data", i, events=40, seed=seed)

    def run(out=profiles):
        argv = [str(tmp_path / "data/landing"), str(validated), str(tmp_path / "v.json")]
        assert validate_main([*argv, "--params", str(params)]) == 0
        capsys.readouterr()
        assert profile_main([str(validated), str(out), "--params", str(params)]) == 0
        return capsys.readouterr().out

    for i in range(5):
        land(i, seed=i)
    assert "events: 5 partitions, 200 rows (5 profiled now)" in run()
    land(5, seed=5)
    assert "events: 6 partitions, 240 rows (1 profiled now)" in run()
    land(2, seed=99)  # a replaced partition: new bytes under the same date
    assert "events: 6 partitions, 240 rows (1 profiled now)" in run()
    altered = profiles / "events/date=2026-01-01.json"
    altered.write_text(altered.read_text().replace('"rows": 40', '"rows": 41'))
    assert "events: 6 partitions, 240 rows (1 profiled now)" in run()
    assert json.loads(altered.read_text())["rows"] == 40
    assert "events: 6 partitions, 240 rows (0 profiled now)" in run()

    full = tmp_path / "full"
    run(full)
    assert _tree(profiles) == _tree(full)
    assert (profiles / "manifest.json").read_bytes() == (full / "manifest.json").read_bytes()

    # another `profile` setting is another fingerprint: every partition again
    params = write_params(dict(shop_params, profile={"top_k": 3}), tmp_path / "params.yaml")
    out = run()
    assert "events: 6 partitions, 240 rows (6 profiled now)" in out
    assert "code, params or library versions changed" in out
