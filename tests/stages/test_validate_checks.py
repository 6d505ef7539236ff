"""Per-partition validation: every check of the dataset config, CSV and parquet files, time
zones, and whole-file faults that quarantine a partition with a reason (never a traceback)."""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from stages.lib.dataset import dataset_from_params
from stages.lib.io import unread_folders
from stages.lib.validation import (
    PartitionResult,
    ValidateConfig,
    check_thresholds,
    validate_partition,
    validate_task,
)
from tests.conftest import events_frame, write_partition

PLAYS = Path(__file__).resolve().parents[1] / "data/plays.yaml"
HEADER = "play_id,user_id,played_at,kind,quantity,unit_price,seconds,region,device\n"


def _plays(**derived):
    raw = yaml.safe_load(PLAYS.read_text())
    if derived:
        raw["tables"]["activity"]["derived"] = derived
    return dataset_from_params(raw).table("activity")


def _csv(tmp_path: Path, text: str, name: str = "part-0.csv") -> Path:
    path = tmp_path / "activity" / "day=2026-01-05" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _row(pid="p000001", user="u0001", at="2026-01-05T10:00:00+01:00", kind="play", q="",
         price="", sec="60", region="north", device="ios") -> str:  # fmt: skip
    return f"{pid},{user},{at},{kind},{q},{price},{sec},{region},{device}\n"


def _checks(result: PartitionResult) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for row, column, check in zip(
        result.quarantine["row"], result.quarantine["column"], result.quarantine["check"],
        strict=True,
    ):  # fmt: skip
        out.setdefault(int(row), set()).add(f"{column}:{check}")
    return out


def test_csv_rows_meet_pattern_allowed_range_and_derived_checks(tmp_path):
    table = _plays(spend={"expr": "quantity * unit_price", "max": 100})
    text = HEADER + "".join(
        [
            _row(),  # fine
            _row(pid="x1"),  # pattern
            _row(pid="p000003", kind="dance"),  # allowed
            _row(pid="p000004", kind="purchase", q="20", price="10"),  # derived spend 200 > 100
            _row(pid="p000005", kind="purchase", q="2", price="3.5"),  # fine, spend 7
            _row(pid="p000006", user="", region="mars"),  # two checks, one row
            _row(pid="p000007", q="1.5"),  # not a whole number
        ]
    )
    result = validate_partition([_csv(tmp_path, text)], table, "2026-01-05")
    assert _checks(result) == {
        1: {"play_id:pattern(p[0-9]{6})"},
        2: {"kind:isin(['play', 'purchase', 'skip', 'complaint'])"},
        3: {"spend:less_than_or_equal_to(100)"},
        5: {"user_id:not_nullable", "region:isin(['north', 'south', 'east', 'west'])"},
        6: {"quantity:type(int64)"},
    }
    assert result.rows_in == 7 and result.rows_quarantined == 5 and len(result.valid) == 2
    assert result.valid["spend"].tolist()[1] == 7.0 and pd.isna(result.valid["spend"].iloc[0])


def test_missing_codes_are_read_as_null_before_any_check(tmp_path):
    """A source's "no value" codes (-200 in a sensor file, "?" in a survey) are declared per
    column: read as null, counted, never a bound's failure nor a number learnt."""
    raw = yaml.safe_load(PLAYS.read_text())
    columns = raw["tables"]["activity"]["columns"]
    columns["seconds"]["missing"] = [-200, "NULL"]  # a number, and a CSV's text for none
    columns["quantity"]["missing"] = ["NA", -1]  # an int64 column's too
    columns["device"]["missing"] = ["?", "n/a"]
    table = dataset_from_params(raw).table("activity")
    text = HEADER + "".join(
        [
            _row(sec="-200", device="?"),
            _row(pid="p000002", sec="-200.0", q="-1", device="n/a"),
            _row(pid="p000003", sec="-5"),  # not a code: the bound still holds
            _row(pid="p000004", sec="30", q="3", device="web"),
            _row(pid="p000005", sec="NULL", q="NA"),
        ]
    )
    result = validate_partition([_csv(tmp_path, text)], table, "2026-01-05")
    assert _checks(result) == {2: {"seconds:greater_than_or_equal_to(0)"}}
    valid = result.valid.set_index("play_id")
    assert valid["seconds"].isna().tolist() == [True, True, False, True]
    assert valid["quantity"].isna().tolist() == [True, True, False, True]
    assert valid["device"].tolist()[:2] == [pd.NA, pd.NA]
    assert result.summary()["values_missing_coded"] == 7
    # without the codes, -200 fails the bound, "?" the allowed values, "NULL" the type
    plain = validate_partition([_csv(tmp_path, text)], _plays(), "2026-01-05")
    assert plain.rows_quarantined == 4


@pytest.mark.parametrize(
    ("column", "codes", "message"),
    [
        ("seconds", [True], "seconds.missing: expected a list of numbers or strings read as"),
        ("device", [0], "device.missing: expected a list of strings read as null"),
    ],
)
def test_missing_codes_of_the_wrong_type_are_one_line(column, codes, message):
    raw = yaml.safe_load(PLAYS.read_text())
    raw["tables"]["activity"]["columns"][column]["missing"] = codes
    with pytest.raises(ValueError, match=message):
        dataset_from_params(raw)


def test_unique_keeps_the_first_of_equal_values(tmp_path):
    raw = yaml.safe_load(PLAYS.read_text())
    raw["tables"]["activity"]["columns"]["play_id"]["unique"] = True
    table = dataset_from_params(raw).table("activity")
    text = HEADER + _row() + _row(pid="p000002") + _row() + _row()
    result = validate_partition([_csv(tmp_path, text)], table, "2026-01-05")
    assert _checks(result) == {2: {"play_id:unique"}, 3: {"play_id:unique"}}
    assert result.valid["play_id"].tolist() == ["p000001", "p000002"]


def test_timestamps_with_offsets_and_naive_local_times_become_utc(tmp_path):
    text = HEADER + "".join(
        [
            _row(pid="p000001", at="2026-01-05T10:00:00+01:00"),
            _row(pid="p000002", at="2026-01-05T10:00:00"),  # Paris time (UTC+1 in winter)
            _row(pid="p000003", at="2026-01-05T09:00:00Z"),
            _row(pid="p000004", at="2026-07-05T10:00:00"),  # Paris summer time, UTC+2
            # does not exist in Paris: shifted past the gap (tables.<t>.dst's default)
            _row(pid="p000005", at="2026-03-29T02:30:00"),
            _row(pid="p000006", at="yesterday"),
        ]
    )
    result = validate_partition([_csv(tmp_path, text)], _plays(), "2026-01-05")
    times = result.valid.set_index("play_id")["played_at"].astype(str).to_dict()
    assert times == {
        "p000001": "2026-01-05 09:00:00",
        "p000002": "2026-01-05 09:00:00",
        "p000003": "2026-01-05 09:00:00",
        "p000004": "2026-07-05 08:00:00",
        "p000005": "2026-03-29 01:00:00",
    }
    assert _checks(result) == {5: {"played_at:type(timestamp in Europe/Paris)"}}
    assert result.summary()["rows_dst_shifted"] == 1


def test_an_export_that_writes_local_times_with_a_z_is_read_by_its_wall_clock(tmp_path):
    """`offsets: ignore`: a clinic's export writes São Paulo times as "2016-04-29T18:38:08Z";
    read as UTC they move every appointment to the evening before. Its wall clock in the
    table's zone is what it means; a bare date stays its day."""
    raw = yaml.safe_load(PLAYS.read_text())
    raw["tables"]["activity"]["timezone"] = "America/Sao_Paulo"
    raw["tables"]["activity"]["offsets"] = "ignore"
    table = dataset_from_params(raw).table("activity")
    text = HEADER + "".join(
        [
            _row(pid="p000001", at="2016-04-29T00:00:00Z"),
            _row(pid="p000002", at="2016-04-29T18:38:08+02:00"),
            _row(pid="p000003", at="2016-04-29 10:00"),
            _row(pid="p000004", at="2016-04-29"),
        ]
    )
    result = validate_partition([_csv(tmp_path, text)], table, "2016-04-29")
    times = result.valid.set_index("play_id")["played_at"].astype(str).to_dict()
    assert times == {  # UTC-3
        "p000001": "2016-04-29 03:00:00",
        "p000002": "2016-04-29 21:38:08",
        "p000003": "2016-04-29 13:00:00",
        "p000004": "2016-04-29 03:00:00",
    }
    kept = validate_partition([_csv(tmp_path, text)], _plays(), "2016-04-29")  # offsets: keep
    assert kept.valid.set_index("play_id")["played_at"].astype(str)["p000001"] == (
        "2016-04-29 00:00:00"
    )
    raw["tables"]["activity"]["offsets"] = "drop"
    with pytest.raises(
        ValueError, match=r"tables\.activity\.offsets: expected one of keep, ignore"
    ):
        dataset_from_params(raw)


def _half_hourly_london(policy: dict | None) -> tuple:
    """A half-hourly naive London series across 2026's spring-forward (29 March, 01:00-02:00
    does not exist) and fall-back (25 October, 01:00-02:00 happens twice) transitions."""
    raw = yaml.safe_load(PLAYS.read_text())
    raw["tables"]["activity"]["timezone"] = "Europe/London"
    if policy is not None:
        raw["tables"]["activity"]["dst"] = policy
    table = dataset_from_params(raw).table("activity")
    stamps = [
        f"2026-{day}T{h:02d}:{m:02d}:00"
        for day in ("03-29", "10-25")
        for h in range(3)
        for m in (0, 30)
    ]
    text = HEADER + "".join(_row(pid=f"p{i:06d}", at=t) for i, t in enumerate(stamps))
    return table, text, stamps


@pytest.mark.parametrize(
    ("policy", "gap", "overlap", "shifted", "resolved"),
    [
        # default: keep every row; the gap's 01:00 and 01:30 become 02:00 BST = 01:00 UTC, the
        # overlap's 01:00 and 01:30 are their first (BST) instant
        (None, ["01:00", "01:00"], ["00:00", "00:30"], 2, 2),
        (
            {"nonexistent": "shift_backward", "ambiguous": "latest"},
            ["00:59:59.999999", "00:59:59.999999"],
            ["01:00", "01:30"],
            2,
            2,
        ),
        ({"nonexistent": "quarantine", "ambiguous": "quarantine"}, [], [], 0, 0),
    ],
)
def test_naive_local_times_in_a_dst_gap_or_overlap_follow_the_policy(
    tmp_path, policy, gap, overlap, shifted, resolved
):
    table, text, stamps = _half_hourly_london(policy)
    result = validate_partition([_csv(tmp_path, text)], table, "2026-03-29")
    times = dict(zip(result.valid["play_id"], result.valid["played_at"], strict=True))
    # every row is valid or quarantined, none lost; only the odd ones depend on the policy
    assert result.rows_in == len(stamps) == len(result.valid) + result.rows_quarantined
    utc = {
        "p000000": "2026-03-29 00:00",  # GMT
        "p000004": "2026-03-29 01:00",  # 02:00 BST
        "p000006": "2026-10-24 23:00",  # 00:00 BST
        "p000011": "2026-10-25 02:30",  # GMT again
    }
    assert {p: times[p] for p in utc} == {p: pd.Timestamp(t) for p, t in utc.items()}
    got_gap = [times[p] for p in ("p000002", "p000003") if p in times]
    got_overlap = [times[p] for p in ("p000008", "p000009") if p in times]
    assert got_gap == [pd.Timestamp(f"2026-03-29 {t}") for t in gap]
    assert got_overlap == [pd.Timestamp(f"2026-10-25 {t}") for t in overlap]
    summary = result.summary()
    assert summary.get("rows_dst_shifted", 0) == shifted
    assert summary.get("rows_dst_resolved", 0) == resolved
    assert result.rows_quarantined == 4 - shifted - resolved


def test_an_ordered_hourly_export_tells_the_repeated_hour_apart_with_infer(tmp_path):
    """PJM's hourly load is written in naive New York time, in order: the fall-back's 01:00
    twice, first summer time then winter time. `ambiguous: infer` reads them so (05:00 and
    06:00 UTC), where `earliest` makes them one instant; rows out of order cannot tell, and
    fall back to the earliest reading."""
    raw = yaml.safe_load(PLAYS.read_text())
    raw["tables"]["activity"]["timezone"] = "America/New_York"
    stamps = ["2024-11-03T00:00", "2024-11-03T01:00", "2024-11-03T01:00", "2024-11-03T02:00"]
    text = HEADER + "".join(_row(pid=f"p{i:06d}", at=t) for i, t in enumerate(stamps))

    def utc(policy: str, body: str = text, guessed: int = 0) -> list[str]:
        raw["tables"]["activity"]["dst"] = {"ambiguous": policy}
        table = dataset_from_params(raw).table("activity")
        result = validate_partition([_csv(tmp_path, body)], table, "2024-11-03")
        assert result.summary()["rows_dst_resolved"] == 2
        # a fallback to the earliest reading is a guess, and counted as one
        assert result.summary().get("rows_dst_not_inferred", 0) == guessed
        return [str(t)[11:16] for t in result.valid["played_at"]]

    assert utc("infer") == ["04:00", "05:00", "06:00", "07:00"]
    assert utc("earliest") == ["04:00", "05:00", "05:00", "07:00"]
    shuffled = HEADER + "".join(
        _row(pid=f"p{i:06d}", at=t) for i, t in enumerate([stamps[1], stamps[0], *stamps[2:]])
    )
    assert utc("infer", shuffled, guessed=2) == ["05:00", "04:00", "05:00", "07:00"]


def test_a_dst_policy_that_is_no_choice_is_one_line_naming_the_key():
    raw = yaml.safe_load(PLAYS.read_text())
    raw["tables"]["activity"]["dst"] = {"nonexistent": "skip"}
    with pytest.raises(ValueError, match=r"tables\.activity\.dst\.nonexistent: expected one of"):
        dataset_from_params(raw)


def test_tz_aware_parquet_timestamps_are_converted_to_utc(tmp_path, shop_params):
    spec = dataset_from_params(shop_params["dataset"]).table("events")
    frame = events_frame([(1, 10, "2026-01-01 23:30", "session", None)])
    frame["event_time"] = frame["event_time"].dt.tz_localize("UTC").dt.tz_convert("Asia/Tokyo")
    path = write_partition(tmp_path, "events", "2026-01-02", frame)
    assert pq.read_schema(path).field("event_time").type.tz == "Asia/Tokyo"
    result = validate_partition([path], spec, "2026-01-02")
    assert str(result.valid["event_time"].iloc[0]) == "2026-01-01 23:30:00"
    assert result.valid["event_time"].dt.tz is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "unreadable csv (EmptyDataError"),
        (HEADER + _row() + "p2,u0002,2026-01-05,play,,,1,north,ios,extra,fields\n", "ParserError"),
        (HEADER.replace("kind", "event_kind") + _row(), "missing required column(s) ['kind']"),
    ],
)
def test_whole_csv_faults_quarantine_the_partition(tmp_path, text, reason):
    result = validate_partition([_csv(tmp_path, text)], _plays(), "2026-01-05")
    assert result.fault is not None and reason in result.fault
    assert "part-0.csv" in result.fault and len(result.valid) == 0
    assert result.quarantine["check"].tolist() == ["partition"]
    assert result.rows_in == result.rows_quarantined


def test_a_renamed_column_is_named_with_its_likely_new_name(tmp_path):
    text = HEADER.replace("region", "area") + _row()
    result = validate_partition([_csv(tmp_path, text)], _plays(), "2026-01-05")
    assert "missing required column(s) ['region']; unexpected column(s) ['area']" in result.fault


def test_truncated_csv_loses_only_its_last_row_to_quarantine(tmp_path):
    text = HEADER + _row() + _row(pid="p000002")
    result = validate_partition([_csv(tmp_path, text[:-25])], _plays(), "2026-01-05")
    assert result.fault is None and result.rows_in == 2
    assert len(result.valid) == 1 and set(result.quarantine["row"]) == {1}


def test_header_only_csv_is_an_empty_day(tmp_path):
    result = validate_partition([_csv(tmp_path, HEADER)], _plays(), "2026-01-05")
    assert result.fault is None and result.rows_in == 0 and len(result.quarantine) == 0


def _parquet(tmp_path: Path, table: pa.Table) -> Path:
    path = tmp_path / "landing/events/date=2026-01-01/part-0000.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


@pytest.mark.parametrize(
    ("column", "array", "reason"),
    [
        ("event_time", pa.array([1, 2], pa.int64()), "column 'event_time' is int64 in the file"),
        ("customer_id", pa.array([[1], [2]]), "cannot be read as int64"),
        ("event_type", pa.array([1.5, 2.5]), "column 'event_type' is double"),
    ],
)
def test_a_column_type_that_cannot_hold_the_declared_one_quarantines_the_partition(
    tmp_path, shop_params, column, array, reason
):
    spec = dataset_from_params(shop_params["dataset"]).table("events")
    frame = events_frame(
        [(1, 10, "2026-01-01 10:00", "session", None), (2, 10, "2026-01-01 11:00", "order", 3.0)]
    )
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.set_column(table.schema.get_field_index(column), column, array)
    result = validate_partition([_parquet(tmp_path, table)], spec, "2026-01-01")
    assert result.fault is not None and reason in result.fault
    assert result.rows_in == 2 and result.rows_quarantined == 2


def test_numbers_written_as_text_are_checked_value_by_value(tmp_path, shop_params):
    spec = dataset_from_params(shop_params["dataset"]).table("events")
    frame = events_frame([(1, 10, "2026-01-01 10:00", "order", None)] * 2).astype({"amount": str})
    frame["amount"] = ["12.5", "lots"]
    frame["event_id"] = [1, 2]
    result = validate_partition(
        [_parquet(tmp_path, pa.Table.from_pandas(frame))], spec, "2026-01-01"
    )
    assert result.fault is None and result.valid["amount"].tolist() == [12.5]
    assert result.quarantine["check"].tolist() == ["type(float64)"]


def test_a_file_of_another_format_is_a_fault_and_markers_are_ignored(tmp_path, shop_params):
    spec = dataset_from_params(shop_params["dataset"]).table("events")
    frame = events_frame([(1, 10, "2026-01-01 10:00", "session", None)])
    good = write_partition(tmp_path, "events", "2026-01-01", frame)
    marker = good.with_name("_SUCCESS")
    marker.write_text("")
    assert validate_partition([good, marker], spec, "2026-01-01").fault is None
    stray = good.with_name("part-0001.csv")
    stray.write_text("event_id\n1\n")
    result = validate_partition([good, marker, stray], spec, "2026-01-01")
    assert "unexpected file(s) ['part-0001.csv']" in result.fault


def _result(partition: str, rows_in: int, valid: int, fault: str | None = None) -> PartitionResult:
    q = pd.DataFrame(
        {
            "table": "events",
            "partition": partition,
            "source_file": "f",
            "row": range(rows_in - valid),
            "column": "c",
            "check": "x",
            "value": None,
        }
    )
    return PartitionResult("events", partition, pd.DataFrame(index=range(valid)), q, rows_in, fault)


def test_thresholds_on_rows_faulty_partitions_and_missing_days():
    cfg = ValidateConfig(
        max_quarantine_fraction=0.2, max_faulty_fraction=0.1, max_missing_fraction=0.1
    )
    days = [f"2026-01-{d:02d}" for d in range(1, 21)]
    healthy = [_result(d, 10, 10) for d in days]
    assert check_thresholds(healthy, cfg) == []
    one_bad = [*healthy[:-1], _result(days[-1], 10, 7)]
    (problem,) = check_thresholds(one_bad, cfg)
    assert problem.startswith("events/date=2026-01-20: 30.0% of 10 rows quarantined (max 20%)")
    # each failing check names its column: a bound alone does not say where it failed
    assert problem.endswith("top failing checks: c: x (3)")
    # one whole-partition fault in 20 days is reported, not fatal; three are
    faulty = [_result(d, 10, 0, fault="unreadable") if i in (3, 7, 9) else r
              for i, (d, r) in enumerate(zip(days, healthy, strict=True))]  # fmt: skip
    assert check_thresholds([*faulty[:4], *healthy[4:]], cfg) == []
    (problem,) = check_thresholds(faulty, cfg)
    assert problem.startswith("events: 3 of 20 partitions quarantined whole (max 10%)")
    gappy = [r for i, r in enumerate(healthy) if i not in (2, 5, 8)]
    (problem,) = check_thresholds(gappy, cfg)
    assert "3 missing day(s)" in problem and "2026-01-03, 2026-01-06, 2026-01-09" in problem


def test_conservation_is_checked_against_the_quarantine_itself():
    lost = _result("2026-01-01", 10, 8)
    lost.rows_in = 11  # a row that reached neither output
    (problem,) = check_thresholds([lost], ValidateConfig())
    assert "row counts not conserved (11 in, 8 valid, 2 quarantined)" in problem
    twice = copy.copy(_result("2026-01-01", 10, 9))
    twice.quarantine = pd.concat([twice.quarantine] * 2)  # one row, two failed checks
    assert twice.rows_quarantined == 1 and check_thresholds([twice], ValidateConfig()) == []


def test_a_partition_named_with_a_date_that_does_not_exist_is_a_fault(tmp_path):
    path = _csv(tmp_path, HEADER + _row() + _row(pid="p000002"))
    result = validate_partition([path], _plays(), "2026-02-30")
    assert result.fault == "folder 'day=2026-02-30' is not a date (expected day=YYYY-MM-DD)"
    assert result.rows_in == result.rows_quarantined == 2 and len(result.valid) == 0
    assert result.quarantine["check"].tolist() == ["partition"]


def test_folders_not_named_key_equals_date_are_listed_with_the_form_expected(tmp_path):
    for name in ("day=2026-01-05", "day=2026-1-5", "date=2026-01-05", "_temporary", ".git"):
        (tmp_path / "activity" / name).mkdir(parents=True)
    (tmp_path / "activity" / "notes.txt").write_text("a file, not a folder")
    assert unread_folders(tmp_path / "activity", "day") == {
        "date=2026-01-05": "day=YYYY-MM-DD",
        "day=2026-1-5": "day=YYYY-MM-DD",
    }
    assert unread_folders(tmp_path / "absent", "day") == {}


def test_derived_columns_read_a_timestamps_local_calendar_and_durations(tmp_path):
    """`hour(ts)` and the other parts read the table's wall clock (Paris here), across DST; a
    timestamp in arithmetic is seconds, so a difference of two is a duration."""
    table = _plays(
        spend="quantity * unit_price",
        hour={"expr": "hour(played_at)"},
        weekday={"expr": "weekday(played_at)"},
        month={"expr": "month(played_at)", "min": 1, "max": 12},
        day_of_year="day_of_year(played_at)",
        days_since="(played_at - 1767225600) / 86400",  # 2026-01-01T00:00Z
    )
    text = HEADER + "".join(
        [
            _row(pid="p000001", at="2026-01-05T10:00:00+01:00"),  # Monday, winter: UTC+1
            _row(pid="p000002", at="2026-07-05T23:30:00"),  # Sunday night, summer: UTC+2
            _row(pid="p000003", at="2026-03-29T03:15:00"),  # just after spring-forward
            _row(pid="p000004", at="yesterday"),  # no time: no part either
        ]
    )
    result = validate_partition([_csv(tmp_path, text)], table, "2026-01-05")
    valid = result.valid.set_index("play_id")
    assert valid["hour"].tolist() == [10.0, 23.0, 3.0]
    assert valid["weekday"].tolist() == [0.0, 6.0, 6.0]
    assert valid["month"].tolist() == [1.0, 7.0, 3.0] and valid["day_of_year"].iloc[1] == 186.0
    assert valid["days_since"].iloc[0] == pytest.approx(4 + 9 / 24)
    assert _checks(result) == {3: {"played_at:type(timestamp in Europe/Paris)"}}


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("hour(region)", r"derived\.x: expected a calendar part of a timestamp or date column"),
        ("month(played_at, 2)", r"derived\.x: expected an arithmetic expression: 'month"),
        ("week(played_at)", r"derived\.x: expected an arithmetic expression: 'week\(played_at\)'"),
        ("region * 2", r"derived\.x: expected an expression over numeric or timestamp columns"),
    ],
)
def test_a_derived_expression_the_table_cannot_compute_is_one_line(expr, message):
    with pytest.raises(ValueError, match=message):
        _plays(spend="quantity * unit_price", x=expr)


def test_a_files_column_named_otherwise_is_read_under_its_declared_name(tmp_path):
    """A real export's "No-show" or "Customer ID" is no name a model input or a server field
    can have: declared under a name with `source:`, it is read as that name."""
    raw = yaml.safe_load(PLAYS.read_text())
    columns = raw["tables"]["activity"]["columns"]
    columns["device"]["source"] = "Device Type"
    columns["seconds"]["source"] = "play-seconds"
    table = dataset_from_params(raw).table("activity")
    header = HEADER.replace("device", "Device Type").replace("seconds", "play-seconds")
    text = header + _row() + _row(pid="p000002", sec="-5", device="fax")
    result = validate_partition([_csv(tmp_path, text)], table, "2026-01-05")
    assert result.valid["device"].tolist() == ["ios"] and result.valid["seconds"].tolist() == [60]
    assert _checks(result) == {
        1: {"seconds:greater_than_or_equal_to(0)", "device:isin(['ios', 'android', 'web'])"}
    }
    assert result.extra_columns == []
    raw["tables"]["activity"]["format"] = "parquet"
    parquet = tmp_path / "pq" / "part-0.parquet"
    parquet.parent.mkdir()
    pd.read_csv(_csv(tmp_path, text, "again.csv"), dtype=str).to_parquet(parquet)
    as_parquet = dataset_from_params(raw).table("activity")
    from_parquet = validate_partition([parquet], as_parquet, "2026-01-05")
    assert from_parquet.valid["device"].tolist() == ["ios"] and from_parquet.fault is None
    # a file with the declared name instead of the source's: the source is what is missing
    plain = validate_partition([_csv(tmp_path, HEADER + _row(), "plain.csv")], table, "2026-01-05")
    assert "missing required column(s) ['play-seconds', 'Device Type']" in plain.fault
    assert "unexpected column(s) ['seconds', 'device']" in plain.fault


def test_a_column_name_that_is_not_a_name_suggests_source():
    raw = yaml.safe_load(PLAYS.read_text())
    columns = raw["tables"]["activity"]["columns"]
    columns["No-show"] = {"type": "string"}
    suggestion = r"columns\.No-show: expected a name .*`No_show: \{source: \"No-show\""
    with pytest.raises(ValueError, match=suggestion):
        dataset_from_params(raw)
    del columns["No-show"]
    columns["region"]["source"] = "device"  # read twice: once as device, once as region
    with pytest.raises(ValueError, match=r"each file column read once .*got 'device'"):
        dataset_from_params(raw)


def test_csv_columns_the_dataset_does_not_declare_are_reported_then_dropped_or_kept(tmp_path):
    text = HEADER.replace("\n", ",note\n") + _row().replace("\n", ",hello\n")
    path = _csv(tmp_path, text)
    dropped = validate_partition([path], _plays(), "2026-01-05")
    assert dropped.extra_columns == ["note"] and "note" not in dropped.valid.columns
    assert dropped.summary()["extra_columns"] == ["note"] and dropped.fault is None
    kept = validate_partition([path], _plays(), "2026-01-05", keep_extra=True)
    assert kept.extra_columns == ["note"] and kept.valid["note"].tolist() == ["hello"]


def test_a_kept_extra_column_whose_files_disagree_on_its_type_is_kept_as_text(
    tmp_path, shop_params
):
    spec = dataset_from_params(shop_params["dataset"]).table("events")
    first = events_frame([(1, 10, "2026-01-01 10:00", "session", None)]).assign(coupon=[5])
    second = events_frame([(2, 10, "2026-01-01 11:00", "session", None)]).assign(coupon=["X"])
    files = (
        write_partition(tmp_path, "events", "2026-01-01", first),
        write_partition(tmp_path, "events", "2026-01-01", second, name="part-0001.parquet"),
    )
    done = validate_task({"events": spec}, ("events", "2026-01-01", files), keep_extra=True)
    valid = pq.read_table(pa.BufferReader(done.files["events/date=2026-01-01.parquet"]))
    assert valid.schema.field("coupon").type == pa.string()
    assert valid.column("coupon").to_pylist() == ["5", "X"]
    assert done.summary["extra_columns"] == ["coupon"]
    alone = validate_task({"events": spec}, ("events", "2026-01-01", files[:1]), keep_extra=True)
    typed = pq.read_table(pa.BufferReader(alone.files["events/date=2026-01-01.parquet"]))
    assert typed.schema.field("coupon").type == pa.int64()


def test_a_partial_export_is_listed_as_a_short_partition_and_a_sparse_weekday_is_not() -> None:
    """An hourly export that failed partway lands 3 of its 24 rows: every row that landed is
    valid, and nothing else would say rows were lost upstream. A clinic's Saturdays of 0 to 6
    rows are the data: too few usually to judge."""
    from stages.lib.validation import short_partitions, summarize

    def day(n: int) -> dict:
        return {"rows_in": n, "rows_valid": n, "rows_quarantined": 0, "fault": None}

    summaries = {f"2024-10-{d:02d}": day(24) for d in range(1, 29)}  # four of each weekday
    summaries["2024-10-30"] = day(3)  # a Wednesday
    summaries |= {f"2024-10-{d:02d}": day(d % 3) for d in (5, 12, 19, 26)}  # sparse Saturdays
    summaries["2024-10-31"] = {**day(0), "fault": "unreadable csv"}  # its reason is listed
    assert short_partitions(summaries) == {"2024-10-30": {"rows_in": 3, "typical": 24}}
    entries = {"load": {p: {"summary": s} for p, s in summaries.items()}}
    metrics, report = summarize(entries)
    assert metrics["partitions_short"] == 1 and report["load"]["totals"]["partitions_short"] == 1
    assert list(report["load"]["short_partitions"]) == ["2024-10-30"]
    whole = {p: s for p, s in summaries.items() if p != "2024-10-30"}
    assert short_partitions(whole) == {}
    assert "partitions_short" not in summarize({"load": {p: {"summary": s}
                                                for p, s in whole.items()}})[0]  # fmt: skip


def test_a_quarantined_value_is_reported_as_the_file_has_it(tmp_path):
    """A naive local time written twice (`unique`), and a number over its bound: the report
    names the text in the file, not the typed value (the duplicated hour was reported as its
    UTC instant, which is the text of another row of the file)."""
    raw = yaml.safe_load(PLAYS.read_text())
    raw["tables"]["activity"]["columns"]["played_at"]["unique"] = True
    table = dataset_from_params(raw).table("activity")
    text = HEADER + "".join(
        [
            _row(pid="p000001", at="2026-01-05T09:00:00"),
            _row(pid="p000002", at="2026-01-05T10:00:00"),
            _row(pid="p000003", at="2026-01-05T10:00:00", sec="4000"),
        ]
    )
    result = validate_partition([_csv(tmp_path, text)], table, "2026-01-05")
    found = sorted(zip(result.quarantine["check"], result.quarantine["value"], strict=True))
    assert found == [("less_than_or_equal_to(3600)", "4000"), ("unique", "2026-01-05T10:00:00")]
