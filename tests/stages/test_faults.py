"""Faults on demand: every fault the simulator injects ends up where it should.

One 20-day lake with `--faults all` (rates raised so each row fault hits rows) and the same lake
without faults; validate and prepare run on the faulty one. Each test follows one fault's rows:
quarantined with the check they break, deduplicated by prepare, kept as late data, a partition
quarantined whole, a day reported missing, timestamps converted to UTC.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from stages.cli.simulate import main as simulate_main
from stages.prepare import main as prepare_main
from stages.sim import shop as sim
from stages.validate import main as validate_main
from tests.conftest import write_params

START = dt.date(2026, 1, 1)
DAYS = 20
RATES = {
    "null_rate": 0.03,
    "out_of_range_rate": 0.03,
    "unknown_category_rate": 0.03,
    "duplicate_rate": 0.03,
    "late_rate": 0.03,
}
FAULTS = sim.FaultConfig(**RATES)


DAY = {
    "timezone": (START + dt.timedelta(days=FAULTS.timezone_day)).isoformat(),
    "resent_file": (START + dt.timedelta(days=FAULTS.resent_file_day)).isoformat(),
    "renamed_column": (START + dt.timedelta(days=FAULTS.renamed_column_day)).isoformat(),
    "truncated_file": (START + dt.timedelta(days=FAULTS.truncated_file_day)).isoformat(),
    "empty_day": (START + dt.timedelta(days=FAULTS.empty_day)).isoformat(),
    "missing_day": (START + dt.timedelta(days=FAULTS.missing_day)).isoformat(),
}


def _simulate(lake: Path, params: Path, *args: str) -> None:
    assert simulate_main(["--lake", str(lake), "--params", str(params), *args]) == 0


def _landed(lake: Path, table: str) -> pd.DataFrame:
    """Every readable landed row with its partition, file and row number."""
    frames = []
    for path in sorted((lake / "landing" / table).glob("date=*/*.parquet")):
        try:
            frame = pq.read_table(path).to_pandas()
        except Exception:  # the truncated file
            continue
        if frame.event_time.dt.tz is not None if "event_time" in frame else False:
            frame["event_time"] = frame.event_time.dt.tz_convert("UTC").dt.tz_localize(None)
        frame["partition"] = path.parent.name.removeprefix("date=")
        frame["source_file"] = path.name
        frame["row"] = range(len(frame))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def lakes(tmp_path_factory: pytest.TempPathFactory, shop_params_file: Path) -> dict:
    tmp = tmp_path_factory.mktemp("faults")
    params = yaml.safe_load(shop_params_file.read_text())
    params["simulate"] = {**params["simulate"], "initial_customers": 80, "signups_per_day": 3}
    params["simulate"]["faults"] = {**params["simulate"]["faults"], **RATES}
    params["validate"] = {**params["validate"], "max_quarantine_fraction": 0.5}
    params_file = write_params(params, tmp / "params.yaml")
    start = ["--start", START.isoformat(), "--seed", "7"]
    _simulate(tmp / "faulty", params_file, *start, "--days", str(DAYS), "--faults", "all")
    _simulate(tmp / "clean", params_file, *start, "--days", str(DAYS))
    validated, history = tmp / "validated", tmp / "history"
    landing = str(tmp / "faulty/landing")
    metrics = tmp / "validation.json"
    rc = validate_main([landing, str(validated), str(metrics), "--params", str(params_file)])
    assert rc == 0
    assert prepare_main([str(validated), str(history), "--params", str(params_file)]) == 0
    quarantine = pd.concat(
        pd.read_parquet(p) for p in sorted((validated / "quarantine").rglob("*.parquet"))
    )
    return {
        "tmp": tmp,
        "params": params_file,
        "faulty": tmp / "faulty",
        "clean": tmp / "clean",
        "validated": validated,
        "history": history,
        "metrics": json.loads(metrics.read_text()),
        "report": json.loads((validated / "report.json").read_text()),
        "quarantine": quarantine,
    }


def _quarantined(lakes: dict, table: str, column: str, check: str) -> set[tuple]:
    q = lakes["quarantine"]
    hit = q[(q.table == table) & (q.column == column) & (q.check == check)]
    return set(zip(hit.partition, hit.source_file, hit.row, strict=True))


def _where(frame: pd.DataFrame, mask: pd.Series) -> set[tuple]:
    rows = frame[mask]
    return set(zip(rows.partition, rows.source_file, rows.row, strict=True))


def _healthy(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    """Rows of partitions that are not quarantined whole."""
    whole = {"events": {DAY["truncated_file"]}, "customers": {DAY["renamed_column"]}}[table]
    return frame[~frame.partition.isin(whole)]


def test_faults_are_deterministic_and_append_equals_one_run(lakes: dict) -> None:
    tmp, params = lakes["tmp"], lakes["params"]
    start = ["--start", START.isoformat(), "--seed", "7"]
    _simulate(tmp / "stepwise", params, *start, "--days", str(DAYS - 1), "--faults", "all")
    _simulate(tmp / "stepwise", params, "--days", "1", "--faults", "all")
    files = sorted(
        p.relative_to(lakes["faulty"]) for p in lakes["faulty"].rglob("*") if p.is_file()
    )
    assert files == sorted(
        p.relative_to(tmp / "stepwise") for p in (tmp / "stepwise").rglob("*") if p.is_file()
    )
    for rel in files:
        assert (lakes["faulty"] / rel).read_bytes() == (tmp / "stepwise" / rel).read_bytes(), rel
    # the shop under the faults is the same: the simulator state never sees them
    state = "_simulator/state.npz"
    assert (lakes["faulty"] / state).read_bytes() == (lakes["clean"] / state).read_bytes()


def test_faults_option_parses_all_none_and_lists(tmp_path: Path, capsys) -> None:
    assert sim.parse_faults("none") == frozenset()
    assert sim.parse_faults("all") == frozenset(sim.FAULTS)
    assert sim.parse_faults("nulls, late") == {"nulls", "late"}
    rc = simulate_main(["--lake", str(tmp_path / "l"), "--start", "2026-01-01", "--days", "1",
                   "--faults", "nulls,gremlins"])  # fmt: skip
    assert rc == 2 and "gremlins" in capsys.readouterr().err
    assert not (tmp_path / "l").exists()
    with pytest.raises(ValueError, match="late_days"):
        sim.FaultConfig(late_days=(5, 2))
    with pytest.raises(ValueError, match="unknown keys"):
        sim.FaultConfig.from_params({"gremlin_rate": 0.1})


def test_nulls_are_quarantined_as_not_nullable(lakes: dict) -> None:
    events = _healthy(_landed(lakes["faulty"], "events"), "events")
    planted = _where(events, events.customer_id.isna())
    assert planted
    assert _quarantined(lakes, "events", "customer_id", "not_nullable") == planted
    customers = _healthy(_landed(lakes["faulty"], "customers"), "customers")
    planted = _where(customers, customers.country.isna())
    assert planted
    assert _quarantined(lakes, "customers", "country", "not_nullable") == planted


def test_out_of_range_values_are_quarantined_by_their_range_check(lakes: dict) -> None:
    events = _healthy(_landed(lakes["faulty"], "events"), "events")
    planted = _where(events, events.amount < 0)
    assert planted
    check = "greater_than_or_equal_to(0)"
    assert _quarantined(lakes, "events", "amount", check) == planted
    customers = _healthy(_landed(lakes["faulty"], "customers"), "customers")
    planted = _where(customers, customers.monthly_price < 0)
    assert planted
    assert _quarantined(lakes, "customers", "monthly_price", check) == planted


def test_unknown_categories_are_quarantined_by_isin(lakes: dict) -> None:
    events = _healthy(_landed(lakes["faulty"], "events"), "events")
    planted = _where(events, events.event_type == sim.UNKNOWN_EVENT_TYPE)
    assert planted
    q = lakes["quarantine"]
    isin = q[(q.table == "events") & (q.column == "event_type")]
    assert isin.check.str.startswith("isin").all()
    assert set(zip(isin.partition, isin.source_file, isin.row, strict=True)) == planted
    assert set(isin.value) == {sim.UNKNOWN_EVENT_TYPE}


def test_duplicate_and_resent_events_are_kept_by_validate_and_deduplicated_by_prepare(
    lakes: dict,
) -> None:
    events = _healthy(_landed(lakes["faulty"], "events"), "events")
    within = events.groupby(["partition", "source_file"]).event_id.apply(lambda s: s.duplicated())
    assert within.sum() > 0  # the same id twice in one file
    resent = events[events.source_file == sim.RESENT_FILE]
    assert set(resent.partition) == {DAY["resent_file"]}
    day_before = events[events.partition < DAY["resent_file"]]
    assert set(resent.event_id) <= set(day_before.event_id)  # an old file landing again
    valid = pd.concat(
        pq.read_table(p).to_pandas() for p in sorted((lakes["validated"] / "events").glob("*"))
    )
    # validate keeps both copies (event_id is not `unique`: duplicates are prepare's job)
    copies = valid.event_id.value_counts()
    twice = events.loc[within[within].index.get_level_values(-1), "event_id"]
    assert (copies.loc[twice] >= 2).all()
    assert (copies.loc[sorted(set(resent.event_id) & set(copies.index))] >= 2).all()
    history = pq.read_table(lakes["history"] / "events.parquet").to_pandas()
    assert not history.event_id.duplicated().any()
    assert set(history.event_id) == set(valid.event_id)


def test_late_events_are_kept_as_late_data(lakes: dict) -> None:
    events = _healthy(_landed(lakes["faulty"], "events"), "events")
    age = pd.to_datetime(events.partition) - events.event_time.dt.normalize()
    low, _ = FAULTS.late_days
    late = events[(age >= pd.Timedelta(days=low)) & events.customer_id.notna()]
    late = late[late.event_type.isin(["session", "order", "support_ticket", "refund"])]
    late = late[~(late.amount < 0)]
    assert len(late) > 0
    history = pq.read_table(lakes["history"] / "events.parquet").to_pandas().set_index("event_id")
    kept = history.loc[late.event_id]
    assert (kept.event_time.to_numpy() == late.event_time.to_numpy()).all()
    assert (pd.to_datetime(kept["_partition"]) > kept.event_time.dt.normalize()).all()


def test_renamed_column_and_truncated_file_quarantine_their_partition(lakes: dict) -> None:
    report = lakes["report"]
    renamed = report["customers"]["partitions"][DAY["renamed_column"]]
    assert "missing required column(s) ['plan']" in renamed["fault"]
    assert "plan_name" in renamed["fault"]
    assert renamed["rows_valid"] == 0 and renamed["rows_quarantined"] == renamed["rows_in"] > 0
    truncated = report["events"]["partitions"][DAY["truncated_file"]]
    assert "unreadable parquet" in truncated["fault"] and truncated["rows_valid"] == 0
    faulty = {t: [p for p, s in report[t]["partitions"].items() if s["fault"]] for t in report
              if t in ("events", "customers")}  # fmt: skip
    assert faulty == {"events": [DAY["truncated_file"]], "customers": [DAY["renamed_column"]]}
    assert lakes["report"]["events"]["totals"]["partitions_faulty"] == 1


def test_empty_day_is_fine_and_missing_day_is_reported(lakes: dict) -> None:
    report = lakes["report"]
    for table in ("events", "customers"):
        empty = report[table]["partitions"][DAY["empty_day"]]
        assert empty["rows_in"] == 0 and empty["fault"] is None
        assert report[table]["missing_days"] == [DAY["missing_day"]]
        assert report[table]["totals"]["missing_days"] == 1
        assert DAY["missing_day"] not in report[table]["partitions"]


def test_timestamps_in_another_time_zone_are_converted_to_utc(lakes: dict) -> None:
    day = DAY["timezone"]
    path = f"landing/events/date={day}/part-0000.parquet"
    landed = pq.read_schema(lakes["faulty"] / path).field("event_time").type
    assert landed.tz == FAULTS.timezone
    valid = pq.read_table(lakes["validated"] / f"events/date={day}.parquet").to_pandas()
    valid = valid.drop_duplicates("event_id").set_index("event_id").event_time
    landed = pq.read_table(lakes["faulty"] / path).to_pandas().drop_duplicates("event_id")
    landed = landed.set_index("event_id").event_time.loc[valid.index]
    assert str(landed.dt.tz) == FAULTS.timezone
    assert (valid == landed.dt.tz_convert("UTC").dt.tz_localize(None)).all()
    # the same instants as the lake without faults (but for the events made late that day)
    clean = pq.read_table(lakes["clean"] / path).to_pandas().set_index("event_id").event_time
    shift = valid - clean.loc[valid.index]
    assert (shift == pd.Timedelta(0)).sum() > 0.9 * len(valid)
    assert ((shift == pd.Timedelta(0)) | (shift <= -pd.Timedelta(days=FAULTS.late_days[0]))).all()
