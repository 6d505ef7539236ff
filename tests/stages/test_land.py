"""`evergreen lake land`: CSV exports split by day into a table's partitions, no row lost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HEADER = "play_id,user_id,played_at,kind,quantity,unit_price,seconds,region,device\n"


@pytest.fixture
def params(tmp_path: Path) -> Path:
    """The committed params with the plays dataset (a CSV table, partition key `day`,
    naive times in Europe/Paris)."""
    composed = yaml.safe_load((ROOT / "params.yaml").read_text())
    composed["dataset"] = yaml.safe_load((ROOT / "tests/data/plays.yaml").read_text())
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(composed))
    return path


def land(params: Path, lake: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stages.cli", "lake", "land", "--params", str(params),
         "--lake", str(lake), *args],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip


def row(play: int, when: str, note: str = "play") -> str:
    # a quoted field with a comma: its text must come out as it went in
    return f'p{play:06d},u0001,{when},{note},,,"12.5",north,web\n'


def test_rows_go_to_the_day_of_their_time_and_a_rerun_writes_nothing(tmp_path, params):
    export = tmp_path / "exports"
    export.mkdir()
    (export / "march.csv").write_text(
        HEADER
        + row(1, "2026-03-01 23:59:00")
        + row(2, "2026-03-02T00:00:01")
        # 23:30 UTC is 00:30 the next day in Paris: the table's local day
        + row(3, "2026-03-01T23:30:00+00:00")
        + "\n"
        + row(4, "2026-03-02 08:00:00")
    )
    lake = tmp_path / "lake"
    done = land(params, lake, str(export), "--table", "activity")
    assert done.returncode == 0, done.stderr
    assert "landed 4 rows of 1 file(s) into table activity: 2 partition file(s) written" in (
        done.stdout
    )
    first = lake / "landing/activity/day=2026-03-01/march.csv"
    second = lake / "landing/activity/day=2026-03-02/march.csv"
    assert first.read_text() == HEADER + row(1, "2026-03-01 23:59:00").replace('"12.5"', "12.5")
    assert second.read_text().splitlines()[1:] == [
        "p000002,u0001,2026-03-02T00:00:01,play,,,12.5,north,web",
        "p000003,u0001,2026-03-01T23:30:00+00:00,play,,,12.5,north,web",
        "p000004,u0001,2026-03-02 08:00:00,play,,,12.5,north,web",
    ]
    again = land(params, lake, str(export / "march.csv"), "--table", "activity")
    assert "0 partition file(s) written, 2 unchanged" in again.stdout
    # a re-sent export replaces the day it changes, and only that day
    (export / "march.csv").write_text(HEADER + row(1, "2026-03-01 23:59:00", "skip"))
    resent = land(params, lake, str(export), "--table", "activity")
    assert "1 partition file(s) written" in resent.stdout
    assert ",skip," in first.read_text() and second.is_file()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (HEADER + row(1, "2026-03-01 10:00:00") + row(2, "03/01/2026 10:00"),
         "bad.csv: line 3: played_at '03/01/2026 10:00' is not an ISO 8601 time"),
        (HEADER + "p000001,u0001,2026-03-01 10:00:00\n",
         "bad.csv: line 2: 3 fields, expected 9 as in the header"),
        ("id,when\n1,2026-03-01\n", "bad.csv: no column 'played_at' (the table's timestamp)"),
        # a quote never closed would swallow every later row into one field: the row is named
        (HEADER + row(1, "2026-03-01 10:00:00") + 'p000002,u0001,2026-03-01 11:00:00,play,,,"12.5'
         + ",north,web\np000003,u0001,2026-03-01 12:00:00,play,,,12,north,web\n",
         "bad.csv: line 3: a quoted field opened in this row is never closed"),
        # ... or until a later quote closes it, which leaves the field going on
        (HEADER + 'p000002,u0001,2026-03-01 11:00:00,play,,,"12.5,north,web\n'
         + row(3, "2026-03-01 12:00:00"),
         "bad.csv: line 2: a '\"' closes a quoted field that goes on"),
        (HEADER + 'p000001,u0001,2026-03-01 10:00:00,play,,,"12"5,north,web\n',
         "bad.csv: line 2: a '\"' closes a quoted field that goes on"),
        ("", "bad.csv: empty file, expected a header line"),
    ],
)  # fmt: skip
def test_a_row_it_cannot_place_stops_it_before_anything_is_written(
    tmp_path, params, content, message
):
    good = tmp_path / "good.csv"
    good.write_text(HEADER + row(9, "2026-03-05 10:00:00"))
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    lake = tmp_path / "lake"
    done = land(params, lake, str(good), str(bad), "--table", "activity")
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not lake.exists()  # the good file was not landed either


def test_rows_resent_with_what_was_learnt_land_on_the_day_they_arrived(tmp_path, params):
    """An export of rows re-sent with their outcomes (`--arrived`): one new partition, the
    day they arrived; the days they were first landed on are left as they were."""
    lake = tmp_path / "lake"
    first = tmp_path / "march.csv"
    first.write_text(HEADER + row(1, "2026-03-01 10:00:00") + row(2, "2026-03-02 10:00:00"))
    assert land(params, lake, str(first), "--table", "activity").returncode == 0
    before = {p: p.read_bytes() for p in lake.rglob("*.csv")}
    resent = tmp_path / "outcomes.csv"
    resent.write_text(
        HEADER + row(1, "2026-03-01 10:00:00", "skip") + row(2, "2026-03-02 10:00:00")
    )
    done = land(params, lake, str(resent), "--table", "activity", "--arrived", "2026-03-09")
    assert done.returncode == 0, done.stderr
    assert "landed 2 rows of 1 file(s) into table activity: 1 partition file(s) written" in (
        done.stdout
    )
    arrived = lake / "landing/activity/day=2026-03-09/outcomes.csv"
    assert arrived.read_text() == resent.read_text().replace('"12.5"', "12.5")
    assert {p: p.read_bytes() for p in lake.rglob("*.csv") if p != arrived} == before
    bad = land(params, lake, str(resent), "--table", "activity", "--arrived", "09/03/2026")
    assert bad.returncode == 2
    assert bad.stderr.strip() == (
        "evergreen lake land: --arrived '09/03/2026': expected a date, YYYY-MM-DD"
    )


def test_a_quoted_field_may_span_lines(tmp_path, params):
    export = tmp_path / "notes.csv"
    export.write_text(
        HEADER + row(1, "2026-03-01 10:00:00", '"two\nlines"') + row(2, "2026-03-01 11:00:00")
    )
    done = land(params, tmp_path / "lake", str(export), "--table", "activity")
    assert done.returncode == 0, done.stderr
    assert "landed 2 rows" in done.stdout


def test_config_mistakes_are_one_line(tmp_path, params):
    export = tmp_path / "a.csv"
    export.write_text(HEADER)
    unknown = land(params, tmp_path / "lake", str(export), "--table", "plays")
    assert unknown.returncode == 2
    assert "dataset 'plays' has no table 'plays' (tables: activity)" in unknown.stderr
    missing = land(params, tmp_path / "lake", str(tmp_path / "nope"), "--table", "activity")
    assert missing.returncode == 2 and "nope: no such file or folder" in missing.stderr
    composed = yaml.safe_load(params.read_text())
    composed["dataset"]["tables"]["activity"]["format"] = "parquet"
    params.write_text(yaml.safe_dump(composed))
    parquet = land(params, tmp_path / "lake", str(export), "--table", "activity")
    assert parquet.returncode == 2
    assert "dataset.tables.activity.format is parquet" in parquet.stderr


def test_a_semicolon_export_with_decimal_commas_lands_as_validate_reads_csv(tmp_path, params):
    """The European export (UCI's Air Quality file: ';' between fields, 2,6 for 2.6): refused
    with a hint at first, landed comma-separated with '.' decimals with --sep and --decimal."""
    export = tmp_path / "readings.csv"
    semi = HEADER.replace(",", ";")
    export.write_text(semi + "p000001;u0001;2026-03-01 10:00:00;play;2;2,5;12,75;north;web\n")
    lake = tmp_path / "lake"
    plain = land(params, lake, str(export), "--table", "activity")
    assert plain.returncode == 2 and len(plain.stderr.strip().splitlines()) == 1
    assert "the header looks ';'-separated: pass --sep ';'" in plain.stderr
    done = land(params, lake, str(export), "--table", "activity", "--sep", ";", "--decimal", ",")
    assert done.returncode == 0, done.stderr
    landed = (lake / "landing/activity/day=2026-03-01/readings.csv").read_text()
    # numbers get '.', and only numbers: the text columns are left as they were
    assert landed == HEADER + "p000001,u0001,2026-03-01 10:00:00,play,2,2.5,12.75,north,web\n"
    same = land(params, lake, str(export), "--table", "activity", "--sep", ",", "--decimal", ",")
    assert same.returncode == 2 and "other than the decimal mark" in same.stderr
    # with ',' decimals a '.' groups thousands: 1.234,5 is 1234.5 (left in, it became 1.234.5)
    export.write_text(semi + "p000002;u0001;2026-03-02 10:00:00;play;2;1.234,5;1.004;north;web\n")
    done = land(params, lake, str(export), "--table", "activity", "--sep", ";", "--decimal", ",")
    assert done.returncode == 0, done.stderr
    landed = (lake / "landing/activity/day=2026-03-02/readings.csv").read_text()
    row = "p000002,u0001,2026-03-02 10:00:00,play,2,1234.5,1004,north,web"
    assert landed.splitlines()[1] == row
    # a '.' that groups no thousands is no number in that export: one line, nothing written
    export.write_text(semi + "p000003;u0001;2026-03-03 10:00:00;play;2;1.5;3;north;web\n")
    odd = land(params, lake, str(export), "--table", "activity", "--sep", ";", "--decimal", ",")
    assert odd.returncode == 2 and len(odd.stderr.strip().splitlines()) == 1
    assert "line 2: unit_price '1.5' has a '.'" in odd.stderr
    assert not (lake / "landing/activity/day=2026-03-03").exists()


def test_a_reexport_under_another_name_is_refused_until_replace(tmp_path, params):
    """A month exported again as `december.csv` over the days' `sessions_<day>.csv`: every row
    would be in its partition twice (validate quarantines one copy of each as a duplicate).
    Refused in one line naming the file; --replace makes the new file its day's only one.
    A key not declared unique (an entities table's versions) repeats by design: landed."""
    composed = yaml.safe_load(params.read_text())
    updates = tmp_path / "updates"
    updates.mkdir()
    (updates / "v1.csv").write_text(HEADER + row(1, "2026-03-01 10:00:00"))
    (updates / "v2.csv").write_text(HEADER + row(1, "2026-03-01 10:00:00", note="skip"))
    for name in ("v1.csv", "v2.csv"):  # one call each: v2 meets v1 in its day
        landed = land(params, tmp_path / "versions", str(updates / name), "--table", "activity")
        assert landed.returncode == 0, landed.stderr
    composed["dataset"]["tables"]["activity"]["columns"]["play_id"]["unique"] = True
    params.write_text(yaml.safe_dump(composed))
    first = tmp_path / "day.csv"
    first.write_text(HEADER + row(1, "2026-03-01 10:00:00") + row(2, "2026-03-01 11:00:00"))
    lake = tmp_path / "lake"
    assert land(params, lake, str(first), "--table", "activity").returncode == 0
    again = tmp_path / "march.csv"
    again.write_text(
        HEADER + row(1, "2026-03-01 10:00:00") + row(2, "2026-03-01 11:00:00")
        + row(3, "2026-03-02 09:00:00")
    )  # fmt: skip
    refused = land(params, lake, str(again), "--table", "activity")
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "day=2026-03-01/day.csv: holds 2 of the keys landed into march.csv" in refused.stderr
    assert "pass --replace" in refused.stderr
    day = lake / "landing/activity/day=2026-03-01"
    assert sorted(p.name for p in day.iterdir()) == ["day.csv"]  # nothing written
    # other rows beside it are another export of the same day, not a re-export: landed
    other = tmp_path / "other.csv"
    other.write_text(HEADER + row(7, "2026-03-01 12:00:00"))
    assert land(params, lake, str(other), "--table", "activity").returncode == 0
    # --replace never loses a row: an old file holding one the new lacks stays, refused
    short = tmp_path / "short" / "march.csv"
    short.parent.mkdir()
    short.write_text(HEADER + row(2, "2026-03-01 11:00:00"))
    lossy = land(params, lake, str(short), "--table", "activity", "--replace")
    assert lossy.returncode == 2 and "--replace would lose 1 row(s)" in lossy.stderr
    done = land(params, lake, str(again), "--table", "activity", "--replace")
    assert done.returncode == 0, done.stderr
    assert "1 replaced file(s) removed" in done.stdout
    assert sorted(p.name for p in day.iterdir()) == ["march.csv", "other.csv"]


def test_an_exports_columns_named_otherwise_are_found_by_their_source(tmp_path, params):
    """A timestamp and a key declared with `source:` ("Played At", "Play-ID") are the export's
    columns the rows are placed and compared by."""
    composed = yaml.safe_load(params.read_text())
    columns = composed["dataset"]["tables"]["activity"]["columns"]
    columns["played_at"]["source"] = "Played At"
    columns["play_id"].update(source="Play-ID", unique=True)
    params.write_text(yaml.safe_dump(composed))
    header = HEADER.replace("played_at", "Played At").replace("play_id", "Play-ID")
    export = tmp_path / "exports"
    export.mkdir()
    (export / "march.csv").write_text(header + row(1, "2026-03-01 10:00:00"))
    lake = tmp_path / "lake"
    done = land(params, lake, str(export), "--table", "activity")
    assert done.returncode == 0, done.stderr
    assert (lake / "landing/activity/day=2026-03-01/march.csv").read_text().startswith(header)
    # the same play re-exported under another name is caught by its key read from `Play-ID`
    (export / "march.csv").rename(export / "again.csv")
    again = land(params, lake, str(export), "--table", "activity")
    assert again.returncode == 2 and "holds 1 of the keys landed into again.csv" in again.stderr
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "x.csv").write_text(HEADER + row(2, "2026-03-01 10:00:00"))
    refused = land(params, lake, str(plain), "--table", "activity")
    assert "no column 'Played At' (the table's timestamp)" in refused.stderr


def test_with_offsets_ignored_a_local_time_written_with_a_z_lands_on_its_own_day(tmp_path, params):
    composed = yaml.safe_load(params.read_text())
    composed["dataset"]["tables"]["activity"]["offsets"] = "ignore"
    params.write_text(yaml.safe_dump(composed))
    export = tmp_path / "exports"
    export.mkdir()
    # 23:30 Paris time written with a Z: read as UTC it is 00:30 on 2 March in Paris, and
    # would land a day late; its wall clock keeps it on 1 March
    (export / "x.csv").write_text(HEADER + row(1, "2026-03-01T23:30:00Z"))
    lake = tmp_path / "lake"
    done = land(params, lake, str(export), "--table", "activity")
    assert done.returncode == 0, done.stderr
    assert (lake / "landing/activity/day=2026-03-01/x.csv").is_file()
    assert not (lake / "landing/activity/day=2026-03-02").exists()


def test_a_header_only_export_lands_nothing_and_says_how_to_land_an_empty_day(tmp_path, params):
    export = tmp_path / "saturday.csv"
    export.write_text(HEADER)
    lake = tmp_path / "lake"
    done = land(params, lake, str(export), "--table", "activity")
    assert done.returncode == 0 and "landed 0 rows" in done.stdout
    assert "landed with --arrived YYYY-MM-DD" in done.stdout
    empty = land(params, lake, str(export), "--table", "activity", "--arrived", "2026-03-07")
    assert empty.returncode == 0 and "--arrived YYYY-MM-DD" not in empty.stdout
    assert (lake / "landing/activity/day=2026-03-07/saturday.csv").read_text() == HEADER
