"""Tests of the lake simulator: files, types, determinism, appending, signal and drift."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from stages.cli.simulate import main as simulate_main
from stages.sim import shop as sim

START = "2026-01-01"
KNOBS = {
    "initial_customers": 200,
    "signups_per_day": 4,
    "drift_day": 10,
    "duplicate_rate": 0.05,
    "late_rate": 0.05,
}


def _params(tmp_path: Path, **knobs: float) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"seed": 7, "simulate": {**KNOBS, **knobs}}))
    return path


def _run(lake: Path | str, params: Path, *args: str) -> int:
    return simulate_main(["--lake", str(lake), "--params", str(params), *args])


def _files(lake: Path) -> dict[str, bytes]:
    files = sorted((lake / "landing").rglob("*.parquet"))
    return {str(p.relative_to(lake)): p.read_bytes() for p in files}


def _read(lake: Path, table: str) -> pd.DataFrame:
    frames = []
    for part in sorted((lake / "landing" / table).glob("date=*/part-0000.parquet")):
        frame = pq.read_table(part).to_pandas()
        frame["partition"] = pd.Timestamp(part.parent.name.removeprefix("date="))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("sim")
    assert _run(tmp / "lake", _params(tmp), "--start", START, "--days", "20") == 0
    return tmp / "lake"


def test_partitions_and_column_types(lake: Path) -> None:
    days = [f"date={dt.date(2026, 1, 1) + dt.timedelta(days=d)}" for d in range(20)]
    for table, schema in (("events", sim.EVENTS_SCHEMA), ("customers", sim.CUSTOMERS_SCHEMA)):
        parts = sorted(p.name for p in (lake / "landing" / table).iterdir())
        assert parts == days, table
        for day in days:
            written = pq.read_schema(lake / "landing" / table / day / "part-0000.parquet")
            assert written.remove_metadata().equals(schema), f"{table}/{day}: {written}"
    assert pq.read_schema(next((lake / "landing/events").rglob("*.parquet"))).types == [
        pa.int64(),
        pa.int64(),
        pa.timestamp("us"),
        pa.string(),
        pa.float64(),
    ]


def test_event_values(lake: Path) -> None:
    ev = _read(lake, "events")
    assert set(ev.event_type) == set(sim.EVENT_TYPES)
    priced = ev.event_type.isin(["order", "refund"])
    assert ev.loc[~priced, "amount"].isna().all()
    amounts = ev.loc[priced, "amount"]
    assert amounts.notna().all() and (amounts > 0).all() and (amounts <= 10_000).all()
    assert np.allclose(amounts * 100, np.round(amounts * 100))
    for _, part in ev.groupby("partition"):
        keys = list(zip(part.event_time, part.event_id, strict=True))
        assert keys == sorted(keys), "events must be sorted by event_time, event_id"


def test_late_arrivals_and_duplicates(lake: Path) -> None:
    ev = _read(lake, "events")
    lag = (ev.partition - ev.event_time.dt.floor("D")).dt.days
    assert (lag >= 0).all()
    firsts = ~ev.duplicated("event_id")
    late = lag[firsts]
    assert set(late.unique()) == {0, 1, 2, 3}
    assert 0.01 < (late > 0).mean() < 0.1
    dups = ev[ev.duplicated("event_id", keep=False)]
    assert len(dups) > 0
    # A re-send repeats the event exactly, in the same or a later partition.
    content = ["event_id", "customer_id", "event_time", "event_type", "amount"]
    assert dups.drop_duplicates(content).event_id.is_unique
    assert 0.01 < ev.duplicated("event_id").mean() < 0.1


def test_customer_rows(lake: Path) -> None:
    cu = _read(lake, "customers")
    assert set(cu.country) <= set(sim.COUNTRIES)
    assert set(cu.plan) == set(sim.PLANS)
    assert set(cu.channel) <= set(sim.CHANNELS)
    assert (cu.updated_at.dt.floor("D") == cu.partition).all()
    assert not cu.duplicated(["partition", "customer_id"]).any()
    for _, part in cu.groupby("partition"):
        assert part.customer_id.is_monotonic_increasing
    day0 = cu[cu.partition == pd.Timestamp(START)]
    assert len(day0) >= KNOBS["initial_customers"]
    signup = pd.to_datetime(day0.signup_date)
    assert (
        signup.min() >= pd.Timestamp("2025-01-01") and (signup < pd.Timestamp(START)).sum() == 200
    )
    later = cu[cu.partition > pd.Timestamp(START)]
    new = later[pd.to_datetime(later.signup_date) == later.partition]
    assert len(new) > 0 and new.customer_id.min() > 200
    # Every event belongs to a customer the lake has announced on or before its day.
    ev = _read(lake, "events")
    first_seen = cu.groupby("customer_id").partition.min()
    assert (ev.partition.values >= first_seen.reindex(ev.customer_id).values).all()


def test_drift_raises_a_price_and_opens_partner_channel(lake: Path) -> None:
    cu = _read(lake, "customers")
    drift = pd.Timestamp(START) + pd.Timedelta(days=KNOBS["drift_day"])
    before, at, after = (
        cu[cu.partition < drift],
        cu[cu.partition == drift],
        cu[cu.partition > drift],
    )
    assert not (before.channel == "partner").any()
    assert (after.channel == "partner").any()
    known = before.sort_values("updated_at").drop_duplicates("customer_id", keep="last")
    standard_before = set(known.loc[known.plan == "standard", "customer_id"])
    raised = at[at.plan == "standard"]
    # Every standard customer known before the drift is re-emitted (at the new price, unless
    # the raise made them downgrade the same day).
    assert standard_before <= set(at.customer_id)
    assert len(raised) > 0.9 * len(standard_before)
    assert set(raised.monthly_price) <= {
        sim.RAISED_PRICE,
        round(sim.RAISED_PRICE * sim.PARTNER_DISCOUNT, 2),
    }
    assert sim.RAISED_PRICE not in set(before.monthly_price)
    latest = cu.sort_values("updated_at").drop_duplicates("customer_id", keep="last")
    assert not latest.monthly_price.eq(19.99).any()


def test_two_runs_are_byte_identical(lake: Path, tmp_path: Path) -> None:
    assert _run(tmp_path / "again", _params(tmp_path), "--start", START, "--days", "20") == 0
    assert _files(tmp_path / "again") == _files(lake)
    other = tmp_path / "other_seed"
    assert _run(other, _params(tmp_path), "--start", START, "--days", "20", "--seed", "8") == 0
    assert _files(other).keys() == _files(lake).keys()
    assert _files(other) != _files(lake)


def test_append_equals_one_run(lake: Path, tmp_path: Path) -> None:
    params = _params(tmp_path)
    step = tmp_path / "step"
    assert _run(step, params, "--start", START, "--days", "12") == 0
    assert _run(step, params, "--days", "7", "--seed", "7") == 0
    assert _run(step, params, "--days", "1") == 0
    assert _files(step) == _files(lake)
    meta = json.loads((step / "_simulator/meta.json").read_text())
    assert meta["next_day"] == 20 and meta["seed"] == 7 and meta["start"] == START


def test_rerun_is_a_no_op(lake: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = _params(tmp_path)
    copy = tmp_path / "copy"
    assert _run(copy, params, "--start", START, "--days", "5") == 0
    before = {p: p.stat().st_mtime_ns for p in copy.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert _run(copy, params, "--start", START, "--days", "5") == 0
    assert _run(copy, params, "--start", START, "--days", "3") == 0
    out = capsys.readouterr().out
    assert out.count("nothing written") == 2
    assert {p: p.stat().st_mtime_ns for p in copy.rglob("*") if p.is_file()} == before
    # With --start the range is absolute: days 5..6 are missing, so only those are written.
    assert _run(copy, params, "--start", START, "--days", "7") == 0
    assert "wrote 2 days (2026-01-06..2026-01-07)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "knobs", "message"),
    [
        (["--days", "1", "--seed", "8"], {}, "seed 7, not --seed 8"),
        (["--days", "1", "--start", "2026-02-01"], {}, "starts on 2026-01-01"),
        (["--days", "1"], {"late_rate": 0.2}, "late_rate: lake 0.05 vs params 0.2"),
    ],
)
def test_append_mismatch_exits_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    knobs: dict[str, float],
    message: str,
) -> None:
    lake = tmp_path / "lake"
    assert _run(lake, _params(tmp_path), "--start", START, "--days", "2") == 0
    before = _files(lake)
    assert _run(lake, _params(tmp_path, **knobs), *args) == 2
    err = capsys.readouterr().err
    assert message in err and "meta.json" in err
    assert _files(lake) == before


def test_new_lake_needs_start_and_foreign_lake_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params = _params(tmp_path)
    assert _run(tmp_path / "new", params, "--days", "2") == 2
    assert "--start is needed" in capsys.readouterr().err
    foreign = tmp_path / "foreign"
    (foreign / "landing/events").mkdir(parents=True)
    assert _run(foreign, params, "--start", START, "--days", "2") == 2
    assert "not a simulator lake" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _run(tmp_path / "new", params, "--start", START, "--days", "0")


def test_churn_signal_in_written_files(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    params = _params(tmp_path, initial_customers=1500, drift_day=0)
    assert _run(lake, params, "--start", START, "--days", "56") == 0
    ev = _read(lake, "events").drop_duplicates("event_id")
    ev["day"] = (ev.event_time - pd.Timestamp(START)).dt.days
    snapshot = 34
    active = ev[ev.event_type.isin(["session", "order"])]
    recent = set(active.loc[active.day.between(snapshot - 27, snapshot), "customer_id"])
    future = set(active.loc[active.day.between(snapshot + 1, snapshot + 21), "customer_id"])
    past = ev[ev.day.between(snapshot - 27, snapshot) & ev.customer_id.isin(recent)]
    counts = past.groupby(["customer_id", "event_type"]).size().unstack(fill_value=0)
    last7 = past[past.day > snapshot - 7].groupby("customer_id").size()
    counts["last7_share"] = last7.reindex(counts.index, fill_value=0) / counts.sum(axis=1)
    churned = ~counts.index.isin(list(future))
    assert 0.1 < churned.mean() < 0.35
    # Churners' activity was falling, and they had more support tickets.
    assert counts.loc[churned, "last7_share"].mean() < counts.loc[~churned, "last7_share"].mean()
    assert (
        counts.loc[churned, "support_ticket"].mean()
        > 1.15 * counts.loc[~churned, "support_ticket"].mean()
    )


def test_core_day_is_pure_and_churn_is_final() -> None:
    config = sim.SimulateConfig(initial_customers=300, signups_per_day=3, drift_day=5)
    start = dt.date(2026, 1, 1)
    state = sim.initial_state()
    seen_dead: set[int] = set()
    for _ in range(15):
        snapshot = {k: np.copy(v) for k, v in dataclasses.asdict(state).items()}
        nxt, _, events = sim.simulate_day(state, seed=3, start=start, config=config)
        for key, value in snapshot.items():
            assert np.array_equal(getattr(state, key), value, equal_nan=True), (
                f"simulate_day mutated {key}"
            )
        day = (start - dt.date(1970, 1, 1)).days + state.next_day
        today = events["event_time"].cast(pa.int64()).to_numpy() // sim.US_PER_DAY == day
        assert not seen_dead & set(events["customer_id"].to_numpy()[today].tolist())
        seen_dead |= set(np.flatnonzero(~nxt.alive) + 1)
        state = nxt
    assert state.next_day == 15 and len(seen_dead) > 0


def test_memory_url_lake_matches_local(tmp_path: Path) -> None:
    params = _params(tmp_path, initial_customers=50)
    url = f"memory://evergreen-test-{tmp_path.name}/lake"
    assert _run(url, params, "--start", START, "--days", "3") == 0
    assert _run(url, params, "--days", "1") == 0
    assert _run(tmp_path / "local", params, "--start", START, "--days", "4") == 0
    lake = sim.Lake(url)
    for rel, data in _files(tmp_path / "local").items():
        assert lake.read(rel) == data, rel


def test_config_from_params_rejects_unknown_keys(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown keys \\['customers'\\]"):
        sim.SimulateConfig.from_params({"customers": 3})
    with pytest.raises(ValueError, match="late_rate"):
        sim.SimulateConfig(late_rate=2.0)
    assert sim.load_config(tmp_path / "missing.yaml") == (sim.SimulateConfig(), 7)


def test_main_with_defaults_and_customers_override(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lake = tmp_path / "lake"
    missing = tmp_path / "no-params.yaml"
    code = simulate_main(
        [
            "--lake",
            str(lake),
            "--params",
            str(missing),
            "--start",
            START,
            "--days",
            "2",
            "--customers",
            "40",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("simulate: wrote 2 days (2026-01-01..2026-01-02)") and str(lake) in out
    meta = json.loads((lake / "_simulator/meta.json").read_text())
    assert meta["knobs"] == {**dataclasses.asdict(sim.SimulateConfig()), "initial_customers": 40}
    day0 = pq.read_table(lake / "landing/customers/date=2026-01-01/part-0000.parquet")
    assert 40 <= day0.num_rows < 40 + 30
