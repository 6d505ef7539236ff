"""Local days of naive-UTC timestamps (stages/lib/localtime.py): the features count a table's
days in its own zone, as the lake's partitions and the monitor do."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import ibis
import pandas as pd
import pytest

from stages.lib.localtime import LocalDays, Span, time_span

# DST an hour either way, a half-hour zone, a 45-minute one, a DST of 30 minutes (Lord Howe),
# the southern hemisphere, and one with no DST at all
ZONES = [
    "America/New_York",
    "Europe/Berlin",
    "Asia/Kolkata",
    "America/St_Johns",
    "Pacific/Chatham",
    "Australia/Lord_Howe",
    "America/Sao_Paulo",
]


def local_date(moment: dt.datetime, zone: str) -> dt.date:
    return moment.replace(tzinfo=dt.UTC).astimezone(ZoneInfo(zone)).date()


def test_new_york_changes_twice_a_year_at_the_hour_of_the_law():
    days = LocalDays.between("America/New_York", dt.datetime(2025, 1, 1), dt.datetime(2026, 1, 1))
    assert days.first == -5 * 3600
    # 2 a.m. local: 07:00 UTC in March (EST), 06:00 UTC in November (EDT)
    assert days.changes == (
        (dt.datetime(2025, 3, 9, 7, 0), -4 * 3600),
        (dt.datetime(2025, 11, 2, 6, 0), -5 * 3600),
    )
    assert LocalDays.between("UTC", dt.datetime(2025, 1, 1), dt.datetime(2026, 1, 1)) == (
        LocalDays("UTC")
    )


@pytest.mark.parametrize("zone", ZONES)
def test_the_engine_counts_each_timestamp_on_its_local_day(zone):
    # every 20 minutes across two years (both changes of each year, and midnight on either
    # side of each), plus the last second before each local midnight
    grid = pd.date_range("2025-01-01", "2026-12-31 23:40", freq="20min")
    edges = pd.DatetimeIndex(
        [
            (pd.Timestamp(d).tz_localize(zone) - pd.Timedelta(seconds=1))
            .tz_convert("UTC")
            .tz_localize(None)
            for d in pd.date_range("2025-01-02", "2026-12-30", freq="D")
        ]
    )
    moments = grid.append(edges)
    frame = pd.DataFrame({"t": moments.astype("datetime64[us]")})
    table = ibis.memtable(frame)
    con = ibis.duckdb.connect()
    span = time_span(con, table, "t")
    assert (span.first, span.last) == (moments.min().to_pydatetime(), moments.max().to_pydatetime())
    days = span.days(zone)
    got = con.to_pyarrow(table.select(n=days.day_number(table.t), d=days.local_date(table.t)))
    expected = [local_date(m.to_pydatetime(), zone) for m in moments]
    numbers = [(d - dt.date(1970, 1, 1)).days for d in expected]
    assert got.column("n").to_pylist() == numbers
    assert got.column("d").to_pylist() == expected
    assert [days.date(m.to_pydatetime()) for m in moments[::97]] == expected[::97]


def test_a_utc_table_keeps_the_plain_expression():
    table = ibis.memtable(pd.DataFrame({"t": pd.to_datetime(["2026-03-01 23:59:59"])}))
    days = Span(None, None).days("UTC")
    assert days == LocalDays("UTC")
    assert days.day_number(table.t).equals(table.t.cast("date").epoch_days())
    assert days.local_date(table.t).equals(table.t.cast("date"))


def test_a_date_column_is_a_local_day_already_in_any_zone():
    """An entities table's only date column (`timestamp: signup_date`) in São Paulo: a date has
    no time to shift, its day is itself (it crashed: 'DateColumn' has no attribute 'hour')."""
    dates = [dt.date(2023, 5, 6), dt.date(2025, 1, 1)]
    table = ibis.memtable(pd.DataFrame({"d": dates}))
    days = LocalDays.between("America/New_York", dt.datetime(2025, 1, 1), dt.datetime(2025, 12, 31))
    assert days.changes  # a zone with DST: the shifting expression applies to timestamps
    got = ibis.duckdb.connect().to_pyarrow(
        table.select(n=days.day_number(table.d), d=days.local_date(table.d))
    )
    assert got.column("n").to_pylist() == [(d - dt.date(1970, 1, 1)).days for d in dates]
    assert got.column("d").to_pylist() == dates
