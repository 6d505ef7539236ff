"""Calendar days in a table's time zone, for timestamps stored as naive UTC.

Validate stores every timestamp as naive UTC (naive exports are read in the table's
`timezone`); the lake's partitions, the calendar, the profiles and the monitor count a table's
days in that zone. The features count days too (snapshot days, windows, labels, a rows task's
periods), and a UTC day is not the same day: in New York the evening's rows fall on the next
UTC day, so the latest "day" would hold four hours of data and its windows would miss a
weekday's evening. `LocalDays` turns a naive-UTC timestamp expression into the day number of
its local date, on any engine: the zone's UTC offsets over the data's span are a short list of
changes (two a year for a zone with DST), so the offset is a CASE on the timestamp and the day
is integer arithmetic on the UTC day and the time of day, with no engine time-zone function
(DuckDB's and Spark's differ, and Spark's read naive timestamps in the session's zone). A UTC
table keeps the plain expression.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import ibis
import ibis.expr.types as ir

from stages.lib.engine import collect

DAY = 86_400
EPOCH = dt.date(1970, 1, 1)
EPOCH_DT = dt.datetime(1970, 1, 1)
# offsets are looked up from this far before the data (a signup years before the first event)
# to a little after it; outside, the nearest known offset holds
BEFORE = dt.timedelta(days=3660)
AFTER = dt.timedelta(days=2)


def _offset(zone: ZoneInfo, moment: dt.datetime) -> int:
    """Seconds east of UTC in `zone` at the naive UTC instant `moment`."""
    local = moment.replace(tzinfo=dt.UTC).astimezone(zone)
    offset = local.utcoffset()
    assert offset is not None
    return int(offset.total_seconds())


def _first_change(
    zone: ZoneInfo, lo: dt.datetime, hi: dt.datetime, step: dt.timedelta
) -> dt.datetime:
    """The first `step` after `lo`, up to `hi`, whose offset differs from `lo`'s."""
    before = _offset(zone, lo)
    at = lo + step
    while at < hi and _offset(zone, at) == before:
        at += step
    return min(at, hi)


@dataclass(frozen=True)
class LocalDays:
    """A zone's UTC offsets over a span: `first` seconds east of UTC until the first change,
    then each change's (naive UTC instant, seconds from then on)."""

    zone: str
    first: int = 0
    changes: tuple[tuple[dt.datetime, int], ...] = ()

    @classmethod
    def between(cls, zone: str, start: dt.datetime, end: dt.datetime) -> LocalDays:
        """The offsets of `zone` from `start` to `end` (naive UTC); a change is found to the
        minute (a day's scan, then its hours, then its minutes)."""
        return _between(zone, start, end)

    @property
    def _is_utc(self) -> bool:
        return not self.changes and self.first == 0

    def offset(self, moment: dt.datetime) -> int:
        """Seconds east of UTC at the naive UTC instant `moment` (as `day_number` computes)."""
        seconds = self.first
        for at, value in self.changes:
            if moment >= at:
                seconds = value
        return seconds

    def date(self, moment: dt.datetime) -> dt.date:
        """The local date of the naive UTC instant `moment`."""
        return (moment + dt.timedelta(seconds=self.offset(moment))).date()

    def day_number(self, value: ir.TimestampValue) -> ir.IntegerValue:
        """Days since 1970-01-01 of each naive-UTC timestamp's local date; a date column's
        days as they are (a date is a local day already: no time to shift)."""
        utc_day = value.cast("date").epoch_days()
        if self._is_utc or value.type().is_date():
            return utc_day
        if self.changes:
            offset = ibis.cases(
                *((value >= ibis.literal(at), seconds) for at, seconds in reversed(self.changes)),
                else_=self.first,
            )
        else:
            offset = ibis.literal(self.first)
        seconds = value.hour() * 3600 + value.minute() * 60 + value.second()
        # |offset| < a day, so the sum plus a day is positive: integer division is the floor
        # on every engine, and the local day is the UTC day -1, +0 or +1
        return utc_day - 1 + (seconds + offset + DAY) // DAY

    def local_date(self, value: ir.TimestampValue) -> ir.DateValue:
        """Each naive-UTC timestamp's local date (a date column: itself)."""
        if self._is_utc or value.type().is_date():
            return value.cast("date")
        return (ibis.literal(EPOCH) + self.day_number(value).as_interval("D")).cast("date")


# one scan per (zone, span): a features run asks for the events' zone in every expression that
# counts days (about 20 ms for ten years of a zone with DST)
@functools.cache
def _between(zone: str, start: dt.datetime, end: dt.datetime) -> LocalDays:
    if zone == "UTC":
        return LocalDays(zone)
    tz = ZoneInfo(zone)
    changes: list[tuple[dt.datetime, int]] = []
    at = start.replace(second=0, microsecond=0)
    first = current = _offset(tz, at)
    while at < end:
        day = _first_change(tz, at, end, dt.timedelta(days=1))
        if _offset(tz, day) == current:
            break  # no change before `end`
        hour = _first_change(tz, day - dt.timedelta(days=1), day, dt.timedelta(hours=1))
        minute = _first_change(tz, hour - dt.timedelta(hours=1), hour, dt.timedelta(minutes=1))
        current = _offset(tz, minute)
        changes.append((minute, current))
        at = minute
    return LocalDays(zone, first, tuple(changes))


@dataclass(frozen=True)
class Span:
    """The first and last naive-UTC timestamps of a table's time column (None: no row)."""

    first: dt.datetime | None
    last: dt.datetime | None

    def days(self, zone: str) -> LocalDays:
        """`zone`'s offsets over the span (no row: its offset in 1970, nothing to count)."""
        if self.first is None or self.last is None:
            return LocalDays.between(zone, EPOCH_DT, EPOCH_DT)
        return LocalDays.between(zone, self.first - BEFORE, self.last + AFTER)


def time_span(con: ibis.BaseBackend, table: ir.Table, column: str) -> Span:
    """The span of `table[column]`, one aggregate (read from the files' statistics)."""
    bounds = table.aggregate(first=table[column].min(), last=table[column].max())
    row = collect(con, bounds).to_pylist()[0]
    return Span(_naive(row["first"]), _naive(row["last"]))


def _naive(value: object) -> dt.datetime | None:
    if value is None:
        return None
    if not isinstance(value, dt.datetime):
        raise TypeError(f"expected a timestamp, got {type(value).__name__}")
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC)
    return value.replace(tzinfo=None)
