from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from stages.lib.dataset import dataset_from_params
from stages.lib.incremental import stat_cache_path
from stages.lib.validation import missing_days, validate_partition
from stages.validate import main
from tests.conftest import customers_frame, events_frame, write_params, write_partition


def _events_spec(shop_params):
    return dataset_from_params(shop_params["dataset"]).table("events")


def test_bad_rows_are_quarantined_with_reasons_and_counts_conserved(tmp_path, shop_params):
    frame = events_frame(
        [
            (1, 10, "2026-01-01 10:00", "session", None),
            (2, 10, "2026-01-01 11:00", "teleport", None),  # unknown category
            (3, 11, "2026-01-01 12:00", "order", -5.0),  # out of range
            (4, None, "2026-01-01 13:00", "order", 20.0),  # null key
            (5, 12, "2026-01-01 14:00", "refund", 3.5),
        ]
    )
    path = write_partition(tmp_path, "events", "2026-01-01", frame)
    result = validate_partition([path], _events_spec(shop_params), "2026-01-01")

    assert result.rows_in == 5
    assert sorted(result.valid["event_id"]) == [1, 5]
    q = result.quarantine.set_index("row")
    assert set(q.index) == {1, 2, 3}
    assert q.loc[1, "column"] == "event_type" and "isin" in q.loc[1, "check"]
    assert q.loc[1, "value"] == "teleport"
    assert q.loc[2, "column"] == "amount" and q.loc[2, "value"] == "-5.0"
    assert q.loc[3, "column"] == "customer_id" and q.loc[3, "check"] == "not_nullable"
    assert (result.quarantine["source_file"] == path.name).all()
    assert result.rows_in == len(result.valid) + result.rows_quarantined


def test_uncastable_value_is_a_type_failure(tmp_path, shop_params):
    frame = events_frame([(1, 10, "2026-01-01 10:00", "order", 5.0)]).astype({"amount": object})
    frame.loc[0, "amount"] = "five"
    frame["amount"] = frame["amount"].astype(str)
    path = write_partition(tmp_path, "events", "2026-01-01", frame)
    result = validate_partition([path], _events_spec(shop_params), "2026-01-01")
    assert len(result.valid) == 0
    assert result.quarantine.loc[0, "check"] == "type(float64)"
    assert result.quarantine.loc[0, "value"] == "five"


def test_missing_column_and_unreadable_file_quarantine_the_partition(tmp_path, shop_params):
    spec = _events_spec(shop_params)
    frame = events_frame([(1, 10, "2026-01-01 10:00", "session", None)]).drop(columns="event_type")
    path = write_partition(tmp_path, "events", "2026-01-01", frame)
    result = validate_partition([path], spec, "2026-01-01")
    assert result.fault is not None and "event_type" in result.fault
    assert result.rows_in == 1 and result.rows_quarantined == 1 and len(result.valid) == 0

    broken = tmp_path / "landing/events/date=2026-01-02/part-0000.parquet"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"PAR1 this is not parquet")
    result = validate_partition([broken], spec, "2026-01-02")
    assert "unreadable parquet" in result.fault
    assert result.quarantine.loc[0, "check"] == "partition"


def test_missing_days_are_found():
    assert missing_days(["2026-01-01", "2026-01-04", "2026-01-02"]) == ["2026-01-03"]
    assert missing_days([]) == []


def _tiny_lake(root, bad_rows: int = 0):
    good = [(i, 10 + i % 3, "2026-01-01 10:00", "session", None) for i in range(10)]
    bad = [(100 + i, 10, "2026-01-01 10:00", "nope", None) for i in range(bad_rows)]
    write_partition(root, "events", "2026-01-01", events_frame(good + bad))
    write_partition(
        root,
        "customers",
        "2026-01-01",
        customers_frame(
            [(c, "2025-12-01", "DE", "basic", "ads", 9.0, "2026-01-01 00:00") for c in (10, 11, 12)]
        ),
    )


def test_main_writes_partitions_quarantine_and_metrics(tmp_path, shop_params):
    params = write_params(shop_params, tmp_path / "params.yaml")
    _tiny_lake(tmp_path / "data", bad_rows=1)
    out, metrics = tmp_path / "validated", tmp_path / "validation.json"
    assert (
        main([str(tmp_path / "data/landing"), str(out), str(metrics), "--params", str(params)]) == 0
    )

    # the metrics: the overall totals only (a per-table or per-partition table would be a
    # column of `dvc metrics show` per cell); the tables are the report's
    m = json.loads(metrics.read_text())
    assert m == {
        "partitions": 2,
        "partitions_faulty": 0,
        "missing_days": 0,
        "rows_in": 14,
        "rows_valid": 13,
        "rows_quarantined": 1,
        "rows_null_key": 0,
    }
    report = json.loads((out / "report.json").read_text())
    assert report["events"]["totals"] == {
        "partitions": 1,
        "partitions_faulty": 0,
        "rows_in": 11,
        "rows_valid": 10,
        "rows_quarantined": 1,
        "rows_null_key": 0,
        "missing_days": 0,
    }
    one = report["events"]["partitions"]["2026-01-01"]
    assert (one["rows_in"], one["rows_valid"], one["rows_quarantined"]) == (11, 10, 1)
    assert report["customers"]["totals"]["rows_in"] == 3
    valid = pq.read_table(out / "events/date=2026-01-01.parquet").to_pandas()
    assert len(valid) == 10 and str(valid["_partition"].iloc[0]) == "2026-01-01"
    quarantine = pd.read_parquet(out / "quarantine/events/date=2026-01-01.parquet")
    assert quarantine["value"].tolist() == ["nope"]


def test_main_fails_naming_partition_when_too_much_is_quarantined(tmp_path, shop_params, capsys):
    params = write_params(shop_params, tmp_path / "params.yaml")
    _tiny_lake(tmp_path / "data", bad_rows=5)  # 5 of 15 > 20 %
    rc = main(
        [
            str(tmp_path / "data/landing"),
            str(tmp_path / "v"),
            str(tmp_path / "m.json"),
            "--params",
            str(params),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1
    assert "events/date=2026-01-01" in err and "isin" in err


def test_main_without_ingested_data_exits_2(tmp_path, shop_params, capsys):
    params = write_params(shop_params, tmp_path / "params.yaml")
    rc = main(
        [
            str(tmp_path / "nothing"),
            str(tmp_path / "v"),
            str(tmp_path / "m.json"),
            "--params",
            str(params),
        ]
    )
    assert rc == 2 and "evergreen ingest" in capsys.readouterr().err


def test_outputs_do_not_depend_on_the_machine(tmp_path, shop_params):
    """The manifest DVC hashes holds no inode or mtime: the same landing copied elsewhere (new
    inodes, new mtimes) validates to the very same bytes; the stat cache lives beside it."""
    params = write_params(shop_params, tmp_path / "params.yaml")
    _tiny_lake(tmp_path / "a", bad_rows=1)
    shutil.copytree(tmp_path / "a", tmp_path / "b", copy_function=shutil.copy)
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name / "validated"
        landing = str(tmp_path / name / "landing")
        assert (
            main([landing, str(out), str(tmp_path / f"{name}.json"), "--params", str(params)]) == 0
        )
        outs.append({p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()})
        assert json.loads(stat_cache_path(out).read_text()) == {}  # just written: too fresh
    assert outs[0] == outs[1]
    assert "stat_cache" not in json.loads(outs[0][Path("manifest.json")])


# --- nothing bad in the lake breaks validate for good (issue 18) -------------------------------


def _run(tmp_path, params, out: str = "validated") -> int:
    args = [tmp_path / "data/landing", tmp_path / out, tmp_path / f"{out}.json", "--params", params]
    return main([str(a) for a in args])


def _outputs(base: Path) -> dict[str, bytes]:
    return {
        p.relative_to(base).as_posix(): p.read_bytes()
        for p in sorted(base.rglob("*"))
        if p.is_file() and not p.name.endswith(".stat-cache.json")
    }


def test_a_partition_folder_that_is_not_a_date_is_quarantined_not_a_crash(
    tmp_path, shop_params, capsys
):
    params = write_params(shop_params, tmp_path / "params.yaml")
    _tiny_lake(tmp_path / "data")
    bad = [(i, 10, "2026-01-01 10:00", "session", None) for i in range(3)]
    write_partition(tmp_path / "data", "events", "2026-13-45", events_frame(bad))
    out, metrics = tmp_path / "validated", tmp_path / "validated.json"

    # 1 of 2 partitions quarantined whole: over max_faulty_fraction, a failure, not a traceback
    assert _run(tmp_path, params) == 1
    err = capsys.readouterr().err
    assert "folder 'date=2026-13-45' is not a date (expected date=YYYY-MM-DD)" in err
    report = json.loads((out / "report.json").read_text())["events"]
    m = report["totals"]
    assert m["partitions"] == 2 and m["partitions_faulty"] == 1 and m["missing_days"] == 0
    bad = report["partitions"]["2026-13-45"]
    assert (bad["rows_in"], bad["rows_valid"], bad["rows_quarantined"]) == (3, 0, 3)
    assert m["rows_in"] == 13 and m["rows_quarantined"] == 3
    assert json.loads(metrics.read_text())["partitions_faulty"] == 1
    assert "is not a date" in report["partitions"]["2026-13-45"]["fault"]
    quarantine = pd.read_parquet(out / "quarantine/events/date=2026-13-45.parquet")
    assert quarantine["check"].tolist() == ["partition"]
    # no valid file: the stages after validate read a partition's date from its name
    assert not (out / "events/date=2026-13-45.parquet").exists()

    # recorded: the next run keeps it and fails the same way, and equals a rebuild
    metrics.unlink()
    assert _run(tmp_path, params) == 1
    assert "0 partition(s) validated, 3 unchanged" in capsys.readouterr().out
    assert json.loads((out / "report.json").read_text())["events"]["totals"] == m
    assert json.loads(metrics.read_text())["partitions_faulty"] == 1
    assert _run(tmp_path, params, "rebuilt") == 1
    assert _outputs(out) == _outputs(tmp_path / "rebuilt")

    # below the threshold it is reported, not fatal
    shop_params["validate"]["max_faulty_fraction"] = 0.5
    assert _run(tmp_path, write_params(shop_params, params)) == 0


def test_missing_days_skip_partitions_that_are_not_dates():
    assert missing_days(["2026-01-01", "2026-13-45", "2026-01-03"]) == ["2026-01-02"]
    assert missing_days(["2026-02-30"]) == []


def test_folders_that_are_not_partitions_are_reported_as_not_read(tmp_path, shop_params, capsys):
    params = write_params(shop_params, tmp_path / "params.yaml")
    _tiny_lake(tmp_path / "data")
    events = tmp_path / "data/landing/events"
    near = ("date=2026-3-3", "dt=2026-03-03", "Date=2026-03-03", "date=2026-03-03.bak")
    for name in (*near, "_temporary", ".hidden"):  # the last two are markers, not data
        (events / name).mkdir()
        events_frame([(1, 10, "2026-03-03 10:00", "session", None)]).to_parquet(
            events / name / "part-0000.parquet"
        )
    assert _run(tmp_path, params) == 0

    expected = dict.fromkeys(sorted(near), "date=YYYY-MM-DD")
    report = json.loads((tmp_path / "validated/report.json").read_text())
    m = report["events"]["totals"]
    assert m["rows_in"] == 10 and m["partitions"] == 1  # none of them read
    assert report["events"]["folders_not_read"] == expected
    assert report["customers"]["folders_not_read"] == {}
    err = capsys.readouterr().err
    assert "validate events: folder 'dt=2026-03-03' not read (expected date=YYYY-MM-DD)" in err


def test_an_extra_column_is_reported_and_dropped_or_kept(tmp_path, shop_params, capsys):
    frame = events_frame([(1, 10, "2026-01-02 10:00", "session", None)] * 2)
    frame["event_id"] = [1, 2]
    frame["coupon"] = ["SPRING", None]
    frame["_row"] = [7, 8]  # a name validate writes itself: reported, never kept
    _tiny_lake(tmp_path / "data")
    write_partition(tmp_path / "data", "events", "2026-01-02", frame)

    params = write_params(shop_params, tmp_path / "params.yaml")
    assert _run(tmp_path, params) == 0  # by default: dropped, and reported
    report = json.loads((tmp_path / "validated/report.json").read_text())["events"]
    assert report["partitions"]["2026-01-02"]["extra_columns"] == ["coupon", "_row"]
    assert report["partitions"]["2026-01-01"]["extra_columns"] == []
    valid = pq.read_table(tmp_path / "validated/events/date=2026-01-02.parquet")
    assert "coupon" not in valid.column_names
    assert "column(s) ['coupon', '_row'] not in the dataset" in capsys.readouterr().err

    shop_params["validate"]["extra_columns"] = "keep"
    assert _run(tmp_path, write_params(shop_params, params), "kept") == 0
    valid = pq.read_table(tmp_path / "kept/events/date=2026-01-02.parquet")
    assert valid.column("coupon").to_pylist() == ["SPRING", None]
    assert valid.column("_row").to_pylist() == [0, 1]  # validate's own row number
    assert valid.schema.names[-1] == "coupon"
    assert "coupon" not in pq.read_schema(tmp_path / "kept/events/date=2026-01-01.parquet").names
    kept = json.loads((tmp_path / "kept/report.json").read_text())["events"]["partitions"]
    assert kept["2026-01-02"]["extra_columns"] == ["coupon", "_row"]

    shop_params["validate"]["extra_columns"] = "rename"
    assert _run(tmp_path, write_params(shop_params, params), "bad") == 2
    assert "validate.extra_columns: expected one of ['drop', 'keep']" in capsys.readouterr().err


# --- a table or partition key that names nothing fails validate (issue 16) ---------------------


def test_a_table_with_no_landed_folder_fails_naming_table_and_folder(tmp_path, shop_params, capsys):
    params = copy.deepcopy(shop_params)
    events = params["dataset"]["tables"].pop("events")
    params["dataset"]["tables"]["sessions"] = events  # the landing folder is still `events`
    _tiny_lake(tmp_path / "data")
    assert _run(tmp_path, write_params(params, tmp_path / "params.yaml")) == 2
    err = capsys.readouterr().err
    landing = tmp_path / "data/landing"
    assert err == (
        f"validate: table 'sessions': no folder {landing}/sessions (expected "
        f"{landing}/sessions/date=YYYY-MM-DD/*.parquet); {landing} holds "
        "['customers', 'events']\n"
    )
    assert not (tmp_path / "validated").exists()  # nothing written, nothing half-done


def test_a_wrong_partition_key_fails_showing_the_names_found(tmp_path, shop_params, capsys):
    params = copy.deepcopy(shop_params)
    params["dataset"]["tables"]["events"]["partition"] = "dt"
    _tiny_lake(tmp_path / "data")
    for day in range(2, 9):  # more names than the message shows
        rows = [(day, 10, f"2026-01-0{day} 10:00", "session", None)]
        write_partition(tmp_path / "data", "events", f"2026-01-0{day}", events_frame(rows))
    assert _run(tmp_path, write_params(params, tmp_path / "params.yaml")) == 2
    err = capsys.readouterr().err
    folder = tmp_path / "data/landing/events"
    assert err.count("\n") == 1 and err.startswith(
        f"validate: table 'events': no partition in {folder} (expected "
        f"{folder}/dt=YYYY-MM-DD/*.parquet); found ['date=2026-01-01', 'date=2026-01-02', "
    )
    assert err.endswith("'date=2026-01-05'] and 3 more\n")


def test_a_run_with_no_new_partition_is_no_error(tmp_path, shop_params, capsys):
    params = write_params(shop_params, tmp_path / "params.yaml")
    _tiny_lake(tmp_path / "data")
    assert _run(tmp_path, params) == 0
    capsys.readouterr()
    assert _run(tmp_path, params) == 0
    assert "0 partition(s) validated, 2 unchanged" in capsys.readouterr().out


def test_dst_shifted_rows_are_counted_in_the_metrics(tmp_path, shop_params):
    params = copy.deepcopy(shop_params)
    params["dataset"]["tables"]["events"]["timezone"] = "Europe/London"
    _tiny_lake(tmp_path / "data")
    gap = events_frame([(500, 10, "2026-03-29 01:30", "session", None)])
    gap["event_time"] = gap["event_time"].astype(str)  # naive local text, as a CSV would have
    write_partition(tmp_path / "data", "events", "2026-01-02", gap)
    assert _run(tmp_path, write_params(params, tmp_path / "params.yaml")) == 0
    metrics = json.loads((tmp_path / "validated.json").read_text())
    assert metrics["rows_dst_shifted"] == 1 and metrics["rows_quarantined"] == 0
    report = json.loads((tmp_path / "validated/report.json").read_text())
    assert report["events"]["partitions"]["2026-01-02"]["rows_dst_shifted"] == 1


def test_the_notes_name_missing_days_new_short_partitions_and_guessed_dst_hours(capsys):
    from stages.validate import _print_notes

    partitions = {
        "2024-11-03": {"rows_dst_not_inferred": 2},
        "2024-11-04": {},
        "2025-11-02": {"rows_dst_not_inferred": 1},
    }
    table_report = {
        "missing_days": ["2024-06-07"],
        "short_partitions": {"2024-10-30": {"rows_in": 3, "typical": 24}},
        "folders_not_read": {},
        "partitions": partitions,
    }
    _print_notes("load", table_report, "drop", {"2024-10-30"})
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "validate load: 1 day(s) with no partition between the first and the last (2024-06-07; "
        "dataset.calendar says which days are expected)",
        "validate load: partition 2024-10-30 holds 3 rows where its weekday usually holds 24 "
        "(a partial export?)",
        "validate load: 3 row(s) in a repeated DST hour could not be told apart by their order "
        "in 2 partition(s) (first 2024-11-03: times out of order?); read as the earliest "
        "(dst.ambiguous)",
    ]
    # a short partition validated on an earlier run is not named again (report.json keeps it)
    quiet = {**table_report, "missing_days": [], "partitions": {}}
    _print_notes("load", quiet, "drop", {"2024-11-04"})
    assert capsys.readouterr().err == ""
