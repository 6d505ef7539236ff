"""The core of the `validate` stage (stages/validate.py): check every landed partition against the
dataset's schema, losing no row.

Each partition's rows end up either in `<out>/<table>/date=D.parquet` (typed, with the partition
date and row number that `prepare` orders by) or in `<out>/quarantine/<table>/date=D.parquet`
with the file, row, column, check and offending value. Counts are conserved and checked.

Nothing in the landing zone is skipped without a word: a partition folder whose date is not a
date (`date=2026-13-45`) is quarantined whole, like an unreadable file; a folder that is not a
partition (`date=2026-3-3`, `dt=2026-03-03`) is reported as not read; a file's columns that the
dataset does not declare are reported, then dropped or kept (`validate.extra_columns`).
"""

from __future__ import annotations

import datetime
import json
import math
import re
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pandas as pd
import pandera.pandas as pa
import pyarrow as pa_arrow
import pyarrow.parquet as pq

from stages.lib.dataset import (
    NULL_KEY_CHECK,
    NUMERIC_TYPES,
    Calendar,
    ColumnSpec,
    DatasetConfig,
    TableSpec,
    evaluate_expression,
    surrogate_keys,
)
from stages.lib.engine import EngineConfig, map_tasks
from stages.lib.incremental import (
    MANIFEST,
    MANIFEST_FORMAT,
    SHARED_CODE,
    STAGES_ROOT,
    StatCache,
    content_hash,
    fingerprint,
    load_stat_cache,
    read_manifest,
    remove_temp_files,
    save_stat_cache,
    write_manifest,
)
from stages.lib.io import (
    ARROW_TYPES,
    PARTITION_COL,
    ROW_COL,
    frame_parquet,
    list_partitions,
    partition_form,
    unread_folders,
    validated_file,
    write_bytes_atomic,
    write_json,
)

QUARANTINE_SCHEMA = pa_arrow.schema(
    [
        ("table", pa_arrow.string()),
        ("partition", pa_arrow.string()),
        ("source_file", pa_arrow.string()),
        ("row", pa_arrow.int64()),
        ("column", pa_arrow.string()),
        ("check", pa_arrow.string()),
        ("value", pa_arrow.string()),
    ]
)


EXTRA_COLUMNS = ("drop", "keep")
# the columns validate adds to a partition's frame: a file's column of the same name is reported
# as extra but never kept
RESERVED_COLUMNS = frozenset({PARTITION_COL, ROW_COL, "_source_file", "_file_row"})


@dataclass(frozen=True)
class ValidateConfig:
    # row-level: a partition whose quarantined fraction exceeds this fails the stage
    max_quarantine_fraction: float = 0.2
    # whole-partition faults (unreadable file, missing column): a table fails when more than
    # this fraction of its partitions is faulty; below it they are quarantined and reported
    max_faulty_fraction: float = 0.1
    # days without a partition between a table's first and last partition, as a fraction
    max_missing_fraction: float = 0.1
    # a file's columns the dataset does not declare: reported, then dropped or kept (written
    # after the declared ones in the validated partition)
    extra_columns: str = "drop"

    def __post_init__(self) -> None:
        for name in ("max_quarantine_fraction", "max_faulty_fraction", "max_missing_fraction"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise ValueError(f"validate.{name}: {value} is not a fraction in [0, 1]")
        if self.extra_columns not in EXTRA_COLUMNS:
            raise ValueError(
                f"validate.extra_columns: expected one of {list(EXTRA_COLUMNS)}, "
                f"got {self.extra_columns!r}"
            )


@dataclass
class PartitionResult:
    table: str
    partition: str
    valid: pd.DataFrame
    quarantine: pd.DataFrame
    rows_in: int
    fault: str | None = None  # a whole-partition fault (unreadable file, missing column)
    # columns of its files that the dataset does not declare, in the order first seen
    extra_columns: list[str] = field(default_factory=list)
    # rows whose naive local time was in a DST gap (shifted) or overlap (resolved) and kept,
    # and values read as null by their column's missing codes: counts by name
    dst: dict[str, int] = field(default_factory=dict)

    @property
    def rows_quarantined(self) -> int:
        """Rows that ended in quarantine, counted from the quarantine itself (a row failing
        several checks counts once), so `rows_in == valid + quarantined` is a real check."""
        if self.fault is not None:
            return self.rows_in
        if not len(self.quarantine):
            return 0
        return len(self.quarantine[["source_file", "row"]].drop_duplicates())

    @property
    def rows_null_key(self) -> int:
        """Quarantined rows whose entity key is null where the config expects some: counted
        apart, and left out of `max_quarantine_fraction` (they are the data, not a fault)."""
        if self.fault is not None or not len(self.quarantine):
            return 0
        null_key = self.quarantine[self.quarantine["check"] == NULL_KEY_CHECK]
        return len(null_key[["source_file", "row"]].drop_duplicates())

    def summary(self) -> dict:
        checks: Counter[str] = Counter()
        if len(self.quarantine):
            # "column: check": a bound such as greater_than_or_equal_to(0) says nothing alone
            columns = self.quarantine["column"].fillna("").astype(str)
            checks = Counter(
                f"{column}: {check}" if column else str(check)
                for column, check in zip(columns, self.quarantine["check"], strict=True)
            )
        return {
            "rows_in": self.rows_in,
            "rows_valid": len(self.valid),
            "rows_quarantined": self.rows_quarantined,
            "rows_null_key": self.rows_null_key,
            "fault": self.fault,
            "top_checks": dict(sorted(checks.items(), key=lambda kv: (-kv[1], kv[0]))[:5]),
            "extra_columns": list(self.extra_columns),
            **{k: int(v) for k, v in sorted(self.dst.items()) if v},
        }


@dataclass
class ValidationFailed(Exception):
    failures: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return "validation failed:\n  " + "\n  ".join(self.failures)


# a time of day followed by a UTC offset: the string names its own time zone
_OFFSET = re.compile(r"\d{2}:\d{2}(:\d{2}(\.\d*)?)?\s*(Z|[+-]\d{2}(:?\d{2})?)$", re.IGNORECASE)
# the same, keeping the time before its offset (`offsets: ignore` drops the offset)
_TIME_AND_OFFSET = re.compile(
    r"^(.*\d{2}:\d{2}(?::\d{2}(?:\.\d*)?)?)\s*(?:Z|[+-]\d{2}(?::?\d{2})?)$", re.IGNORECASE
)


def _is_aware(value: object) -> bool:
    if isinstance(value, str):
        return bool(_OFFSET.search(value.strip()))
    return getattr(value, "tzinfo", None) is not None


@dataclass(frozen=True)
class DstPolicy:
    """What naive local times in a DST gap or overlap become (TableSpec.dst_*); `counts`
    gathers how many rows were shifted out of a gap or resolved in an overlap."""

    nonexistent: str = "shift_forward"
    ambiguous: str = "earliest"
    counts: Counter = field(default_factory=Counter, compare=False)
    # TableSpec.offsets "ignore": every time is a wall clock in the table's zone, whatever
    # offset or `Z` its text carries (an export that writes local times with a `Z`)
    ignore_offsets: bool = False


DST_SHIFTED = "rows_dst_shifted"
DST_RESOLVED = "rows_dst_resolved"
# of those, rows `ambiguous: infer` could not tell apart by order (read as the earliest)
DST_NOT_INFERRED = "rows_dst_not_inferred"
# values read as null because the column's `missing` codes say so (-200: no reading)
MISSING_CODED = "values_missing_coded"


def _localize(naive: pd.Series, timezone: str, policy: DstPolicy) -> pd.Series:
    """Naive local times in `timezone` as naive UTC, by `policy` (quarantine: NaT)."""
    import numpy as np

    strict = naive.dt.tz_localize(timezone, ambiguous="NaT", nonexistent="NaT")
    odd = naive.notna() & strict.isna()
    if odd.any():
        # either side of an overlap exists; a gap's time exists on neither
        as_dst = naive.dt.tz_localize(
            timezone, ambiguous=np.ones(len(naive), bool), nonexistent="NaT"
        )
        gap, overlap = odd & as_dst.isna(), odd & as_dst.notna()
        ambiguous: str | np.ndarray = "NaT"
        if policy.ambiguous != "quarantine":
            # infer: where the rows' order cannot tell (no repeated hour, rows out of order),
            # the earliest reading, as the default
            ambiguous = np.full(len(naive), policy.ambiguous != "latest")
            policy.counts[DST_RESOLVED] += int(overlap.sum())
        nonexistent = "NaT"
        if policy.nonexistent != "quarantine":
            nonexistent = policy.nonexistent
            policy.counts[DST_SHIFTED] += int(gap.sum())
        strict = naive.dt.tz_localize(timezone, ambiguous=ambiguous, nonexistent=nonexistent)
        if policy.ambiguous == "infer" and overlap.any():
            strict, told = _inferred(naive, timezone, nonexistent, strict)
            if not told:
                policy.counts[DST_NOT_INFERRED] += int(overlap.sum())
    return strict.dt.tz_convert("UTC").dt.tz_localize(None)


def _inferred(
    naive: pd.Series, timezone: str, nonexistent: str, fallback: pd.Series
) -> tuple[pd.Series, bool]:
    """The overlap's readings told apart by the rows' order (first pass summer time, second
    winter time), where a monotonic run of times allows it; else `fallback`. With whether the
    order told them apart (a fallback is counted: it is a guess, not a reading)."""
    present = naive.dropna()
    if not present.is_monotonic_increasing:
        return fallback, False
    try:
        told = present.dt.tz_localize(timezone, ambiguous="infer", nonexistent=nonexistent)
    except ValueError:  # "no repeated times": nothing to tell apart by order
        return fallback, False
    return fallback.where(naive.isna(), told.reindex(naive.index)), True


def _to_utc(series: pd.Series, timezone: str, policy: DstPolicy | None = None) -> pd.Series:
    """Timestamps as naive UTC: tz-aware values are converted, naive ones are read in
    `timezone`; a local time that does not exist (DST gap) or is ambiguous (overlap) there is
    shifted or resolved by `policy`, or becomes NaT (quarantined) where it says so."""
    policy = policy or DstPolicy()
    if isinstance(series.dtype, pd.DatetimeTZDtype):
        if not policy.ignore_offsets:
            return series.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[us]")
        series = series.dt.tz_localize(None)  # the wall clock it was written with
    if pd.api.types.is_datetime64_dtype(series.dtype):
        naive = series
    elif policy.ignore_offsets:
        texts = series.astype("string").str.strip().str.replace(_TIME_AND_OFFSET, r"\1", regex=True)
        naive = pd.to_datetime(texts.astype(object), errors="coerce", format="ISO8601")
    else:
        values = series.astype(object)
        aware = values.map(_is_aware).astype(bool)
        out = pd.Series(pd.NaT, index=series.index, dtype="datetime64[us]")
        if aware.any():
            parsed = pd.to_datetime(values[aware], errors="coerce", utc=True, format="ISO8601")
            out[aware] = parsed.dt.tz_localize(None).astype("datetime64[us]")
        if (~aware).any():
            naive = pd.to_datetime(values[~aware], errors="coerce", format="ISO8601")
            out[~aware] = _to_utc(naive, timezone, policy)
        return out
    if timezone != "UTC":
        naive = _localize(naive, timezone, policy)
    return naive.astype("datetime64[us]")


def _coerce(
    series: pd.Series, spec: ColumnSpec, timezone: str = "UTC", policy: DstPolicy | None = None
) -> tuple[pd.Series, pd.Series]:
    """Cast a column to its declared type; returns (typed column, mask of uncastable values).

    Timestamps come out as naive UTC: see `_to_utc`.
    """
    present = series.notna()
    if spec.type in ("int64", "float64"):
        typed = pd.to_numeric(series, errors="coerce")
        bad = present & typed.isna()
        if spec.type == "int64":
            bad |= typed.notna() & (typed % 1 != 0)
            typed = typed.where(~bad).astype("Int64")
        return typed.astype("Float64") if spec.type == "float64" else typed, bad
    if spec.type == "timestamp":
        typed = _to_utc(series, timezone, policy)
        return typed, present & typed.isna()
    if spec.type == "date":
        typed = pd.to_datetime(series, errors="coerce", format="ISO8601").dt.normalize()
        return typed.astype("datetime64[us]"), present & typed.isna()
    if spec.type == "bool":
        if pd.api.types.is_bool_dtype(series.dtype):
            return series.astype("boolean"), pd.Series(False, index=series.index)
        words = {"true": True, "false": False, "1": True, "0": False}
        typed = series.map(lambda v: v if isinstance(v, bool) else words.get(str(v).lower()))
        return typed.astype("boolean"), present & typed.isna()
    return series.astype("string"), pd.Series(False, index=series.index)


def _pandera_schema(table: TableSpec) -> pa.DataFrameSchema:
    columns = {}
    for spec in table.columns:
        checks = []
        if spec.allowed is not None:
            checks.append(pa.Check.isin(list(spec.allowed)))
        if spec.min is not None:
            checks.append(pa.Check.ge(spec.min))
        if spec.max is not None:
            checks.append(pa.Check.le(spec.max))
        if spec.pattern is not None:
            full = spec.pattern
            checks.append(pa.Check(lambda s, p=full: s.str.fullmatch(p), name=f"pattern({full})"))
        if spec.unique:
            # the first of equal values stays valid; nulls are not duplicates of each other
            checks.append(pa.Check(lambda s: ~(s.duplicated() & s.notna()), name="unique"))
        # an entity key declared nullable: its nulls are quarantined as NULL_KEY_CHECK instead
        columns[spec.name] = pa.Column(None, checks=checks, nullable=spec.nullable)
    return pa.DataFrameSchema(columns, strict=False)


def _typed(frame: pd.DataFrame, table: TableSpec, records: list, dst: Counter | None) -> None:
    """Cast `frame`'s raw columns to their types in place; a value that does not cast is a
    record (index, column, check, value) in `records`."""
    policy = DstPolicy(
        table.dst_nonexistent, table.dst_ambiguous, ignore_offsets=table.offsets == "ignore"
    )
    zone = "" if table.timezone == "UTC" else f" in {table.timezone}"
    for spec in table.raw_columns:
        raw = frame[spec.name]
        texts = [c for c in spec.missing if isinstance(c, str)]
        numbers = [c for c in spec.missing if not isinstance(c, str)]
        coded = 0  # values read as null by a code
        if texts:
            # a code that means "no value" ("?", "NA", a CSV's "NULL" in an int64 column):
            # null before the cast and every check
            as_text = raw.notna() & raw.astype("string").isin(texts).fillna(False).astype(bool)
            raw = raw.mask(as_text)
            coded += int(as_text.sum())
        typed, bad = _coerce(raw, spec, table.timezone, policy)
        if numbers and spec.type in NUMERIC_TYPES:
            # compared as numbers: "-200" in a CSV and -200.0 in a parquet file alike
            as_number = typed.isin(numbers).fillna(False).astype(bool)
            typed = typed.mask(as_number)
            coded += int(as_number.sum())
        if spec.missing and dst is not None:
            dst[MISSING_CODED] += coded
        check = f"type({spec.type}{zone if spec.type == 'timestamp' else ''})"
        for idx in frame.index[bad]:
            records.append((idx, spec.name, check, frame.at[idx, spec.name]))
        frame[spec.name] = typed
    if dst is not None:
        dst.update(policy.counts)


def _failures(
    frame: pd.DataFrame, table: TableSpec, partition: str = "", dst: Counter | None = None
) -> pd.DataFrame:
    """Row-level failures as (index, column, check, value) rows: type casts, null entity keys,
    derived columns, then pandera. Types the columns of `frame` in place and adds the derived
    ones (a surrogate key hashes the row with its `partition`). `dst` receives the counts of
    naive local times shifted out of a DST gap or resolved in an overlap."""
    records = []
    # the columns as read: a quarantined value is reported as the file has it, not as typed
    # (a duplicated local hour was reported as its UTC instant, the text of another row)
    as_read = {c.name: frame[c.name] for c in table.raw_columns}
    _typed(frame, table, records, dst)
    uncastable = {(int(idx), column) for idx, column, _, _ in records}
    key = table.entity_key
    if key is not None and table.column(key).nullable:
        for idx in frame.index[frame[key].isna()]:
            if (int(idx), key) not in uncastable:
                records.append((int(idx), key, NULL_KEY_CHECK, None))
    # a timestamp's calendar parts are its wall clock where the table lives; a date's its own,
    # and in arithmetic a date is its local midnight
    zones = {c.name: table.timezone for c in table.raw_columns if c.type == "timestamp"}
    dates = {c.name: table.timezone for c in table.raw_columns if c.type == "date"}
    for spec in table.derived_columns:
        if spec.surrogate:
            raw = tuple(c.name for c in table.raw_columns)
            frame[spec.name] = surrogate_keys(frame, raw, partition)
            continue
        frame[spec.name] = evaluate_expression(spec.expr, frame, zones, dates)
    try:
        _pandera_schema(table).validate(frame, lazy=True)
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases
        for idx, column, check, value in zip(
            cases["index"], cases["column"], cases["check"], cases["failure_case"], strict=True
        ):
            if pd.isna(idx):
                raise ValueError(f"column '{column}' fails '{check}' as a whole") from exc
            if (int(idx), column) in uncastable:
                continue  # a value that is not of the type is null now: one reason is enough
            if column in as_read:
                value = as_read[column].at[int(idx)]
            records.append((int(idx), column, str(check), value))
    out = pd.DataFrame(records, columns=["index", "column", "check", "value"])
    return out.sort_values(["index", "column", "check"], kind="stable").reset_index(drop=True)


def _castable(arrow_type: pa_arrow.DataType, ctype: str) -> bool:
    """Whether a file's column type can hold values of the declared type (value by value):
    strings always can (each value is parsed, a bad one quarantines its row), a list or a
    timestamp for a number cannot, and quarantines the partition."""
    t = arrow_type.value_type if pa_arrow.types.is_dictionary(arrow_type) else arrow_type
    types = pa_arrow.types
    if types.is_null(t) or types.is_string(t) or types.is_large_string(t):
        return True
    number = types.is_integer(t) or types.is_floating(t) or types.is_decimal(t)
    return {
        "int64": number,
        "float64": number,
        "string": types.is_integer(t),  # ids written as numbers
        "bool": types.is_boolean(t),
        "date": types.is_date(t) or types.is_timestamp(t),
        "timestamp": types.is_timestamp(t) or types.is_date(t),
    }[ctype]


def _extra(names: Sequence[str], table: TableSpec) -> list[str]:
    """A file's columns that the dataset does not declare (raw or derived), in file order."""
    declared = {c.file_name for c in table.raw_columns} | {c.name for c in table.derived_columns}
    return [n for n in dict.fromkeys(names) if n not in declared]


def _kept(extra: Sequence[str], keep_extra: bool, table: TableSpec) -> list[str]:
    # never one that would take a declared column's name (a `source` column read under it)
    taken = set(RESERVED_COLUMNS) | {c.name for c in table.columns}
    return [n for n in extra if n not in taken] if keep_extra else []


def _declared(frame: pd.DataFrame, table: TableSpec) -> pd.DataFrame:
    """A file's columns under their declared names (`source` read as `name`)."""
    renamed = {c.source: c.name for c in table.raw_columns if c.source}
    return frame.rename(columns=renamed) if renamed else frame


def _read_parquet(
    path: Path, table: TableSpec, keep_extra: bool = False
) -> tuple[pd.DataFrame, list[str]]:
    try:
        schema = pq.read_schema(path)
    except Exception as exc:  # truncated, not parquet at all: the partition is quarantined
        raise ValueError(f"{path.name}: unreadable parquet ({type(exc).__name__}: {exc})") from exc
    _check_columns(path, schema.names, table)
    extra = _extra(schema.names, table)
    for spec in table.raw_columns:
        arrow_type = schema.field(spec.file_name).type
        if not _castable(arrow_type, spec.type):
            raise ValueError(
                f"{path.name}: column '{spec.file_name}' is {arrow_type} in the file, which "
                f"cannot be read as {spec.type}"
            )
    columns = [c.file_name for c in table.raw_columns] + _kept(extra, keep_extra, table)
    try:
        data = pq.read_table(path, columns=columns)
    except Exception as exc:  # a footer that reads but pages that do not
        raise ValueError(f"{path.name}: unreadable parquet ({type(exc).__name__}: {exc})") from exc
    for i, arrow_field in enumerate(data.schema):
        if pa_arrow.types.is_dictionary(arrow_field.type):
            data = data.set_column(i, arrow_field.name, data[i].cast(arrow_field.type.value_type))
    # nullable integers stay integers (float64 would round ids above 2**53)
    frame = data.to_pandas(types_mapper={pa_arrow.int64(): pd.Int64Dtype()}.get)
    return _declared(frame, table), extra


def _read_csv(
    path: Path, table: TableSpec, keep_extra: bool = False
) -> tuple[pd.DataFrame, list[str]]:
    try:
        # every value as text: `_coerce` parses it, so a bad value quarantines only its row
        df = pd.read_csv(
            path, dtype=str, keep_default_na=False, na_values=[""], on_bad_lines="error"
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path.name}: unreadable csv ({type(exc).__name__}: {exc})") from exc
    _check_columns(path, list(df.columns), table)
    extra = _extra(list(df.columns), table)
    columns = [c.file_name for c in table.raw_columns] + _kept(extra, keep_extra, table)
    return _declared(df[columns], table), extra


def _check_columns(path: Path, names: Sequence[str], table: TableSpec) -> None:
    missing = [c.file_name for c in table.raw_columns if c.file_name not in names]
    if missing:
        unexpected = _extra(names, table)
        hint = f"; unexpected column(s) {unexpected} (renamed?)" if unexpected else ""
        raise ValueError(f"{path.name}: missing required column(s) {missing}{hint}")


def _data_files(files: Sequence[Path], table: TableSpec) -> list[Path]:
    """The partition's data files; a file of another format is a fault, not something to skip
    silently. Hidden and `_`-prefixed files (`_SUCCESS`, temp files) are markers, not data."""
    data = [f for f in files if not f.name.startswith((".", "_"))]
    other = [f.name for f in data if f.suffix != table.file_suffix]
    if other:
        raise ValueError(f"unexpected file(s) {other}: table '{table.name}' is {table.format}")
    return data


def _read_partition(
    files: Sequence[Path], table: TableSpec, keep_extra: bool = False
) -> tuple[pd.DataFrame, list[str]]:
    """The partition's rows (its files one after the other) and the columns its files hold
    that the dataset does not declare; those are in the frame only with `keep_extra`."""
    frames, extra = [], {}
    read = _read_csv if table.format == "csv" else _read_parquet
    for path in _data_files(files, table):
        df, found = read(path, table, keep_extra)
        extra.update(dict.fromkeys(found))
        df["_source_file"] = path.name
        df["_file_row"] = range(len(df))
        frames.append(df)
    if not frames:
        names = [c.name for c in table.raw_columns]
        return pd.DataFrame(columns=[*names, "_source_file", "_file_row"]), []
    if len(frames) == 1:
        return frames[0], list(extra)
    return pd.concat(frames, ignore_index=True), list(extra)


def is_date(partition: str) -> bool:
    """Whether a partition's name is a real date, written as YYYY-MM-DD (not 2026-13-45)."""
    try:
        return datetime.date.fromisoformat(partition).isoformat() == partition
    except ValueError:
        return False


def _empty_quarantine() -> pd.DataFrame:
    return QUARANTINE_SCHEMA.empty_table().to_pandas()


def validate_partition(
    files: Sequence[Path], table: TableSpec, partition: str, keep_extra: bool = False
) -> PartitionResult:
    """Validate one partition's files; never raises for bad data, only reports it.

    Bad rows go to quarantine with the check they broke; a fault of a whole file (unreadable,
    a required column missing or of a type that cannot hold the declared one) or of the folder
    (a name that is not a date) quarantines the partition, with the reason. Columns the dataset
    does not declare are listed in `extra_columns`, and kept in `valid` with `keep_extra`.
    """
    try:
        if not is_date(partition):
            folder = f"{table.partition}={partition}"
            raise ValueError(
                f"folder '{folder}' is not a date (expected {partition_form(table.partition)})"
            )
        frame, extra = _read_partition(files, table, keep_extra)
        dst: Counter = Counter()
        failures = _failures(frame, table, partition, dst)
    except ValueError as exc:
        rows_in = sum(_row_count(f, table) for f in files)
        source = ",".join(f.name for f in files)
        quarantine = pd.DataFrame(
            [(table.name, partition, source, None, None, "partition", str(exc))],
            columns=QUARANTINE_SCHEMA.names,
        )
        return PartitionResult(
            table.name, partition, frame_empty(table), quarantine, rows_in, str(exc)
        )

    bad_index = set(failures["index"])
    valid = frame.loc[~frame.index.isin(bad_index)].copy()
    valid[PARTITION_COL] = pd.Timestamp(partition)
    valid[ROW_COL] = valid.index.astype("int64")
    src = frame.loc[failures["index"]]
    quarantine = pd.DataFrame(
        {
            "table": table.name,
            "partition": partition,
            "source_file": src["_source_file"].to_numpy(),
            "row": src["_file_row"].to_numpy(dtype="int64"),
            "column": failures["column"].to_numpy(),
            "check": failures["check"].to_numpy(),
            "value": [None if pd.isna(v) else str(v) for v in failures["value"]],
        }
    )
    valid = valid.drop(columns=["_source_file", "_file_row"]).reset_index(drop=True)
    return PartitionResult(
        table.name, partition, valid, quarantine, len(frame), None, extra, dict(dst)
    )


def _row_count(path: Path, table: TableSpec | None = None) -> int:
    """Rows of a file as far as they can be counted (the fault itself is what is reported)."""
    try:
        if table is not None and table.format == "csv":
            with path.open("rb") as f:
                return max(sum(1 for line in f if line.strip()) - 1, 0)
        return pq.ParquetFile(path).metadata.num_rows
    except Exception:
        return 0  # unreadable: we cannot know


def frame_empty(table: TableSpec) -> pd.DataFrame:
    return pd.DataFrame(columns=[c.name for c in table.columns] + [PARTITION_COL, ROW_COL])


def arrow_schema(table: TableSpec) -> pa_arrow.Schema:
    fields = [(c.name, ARROW_TYPES[c.type]) for c in table.columns]
    fields += [(PARTITION_COL, pa_arrow.date32()), (ROW_COL, pa_arrow.int64())]
    return pa_arrow.schema(fields)


def missing_days(partitions: Sequence[str], calendar: Calendar | None = None) -> list[str]:
    """Days between the first and last partition that have no partition; with a `calendar`
    (the dataset's), only the days it is open count. A partition whose name is not a date
    (quarantined whole) is no day."""
    partitions = [p for p in partitions if is_date(p)]
    if not partitions:
        return []
    expected = pd.date_range(min(partitions), max(partitions), freq="D")
    if calendar is not None:
        expected = expected[[calendar.is_open(d.date()) for d in expected]]
    return sorted(set(expected.strftime("%Y-%m-%d")) - set(partitions))


def check_thresholds(
    results: Sequence[PartitionResult], cfg: ValidateConfig, calendar: Calendar | None = None
) -> list[str]:
    """Every broken expectation, one line each naming the table and partition: rows not
    conserved, too many rows quarantined in a partition, too many faulty or missing days."""
    problems = []
    for r in results:
        if r.rows_in != len(r.valid) + r.rows_quarantined:
            problems.append(
                f"{r.table}/date={r.partition}: row counts not conserved ({r.rows_in} in, "
                f"{len(r.valid)} valid, {r.rows_quarantined} quarantined)"
            )
        faulty_rows = r.rows_quarantined - r.rows_null_key
        fraction = faulty_rows / r.rows_in if r.rows_in else 0.0
        if r.fault is None and fraction > cfg.max_quarantine_fraction:
            # by count, then name: the same line whether the summary is fresh or was recorded
            checks = sorted(r.summary()["top_checks"].items(), key=lambda kv: (-kv[1], kv[0]))
            top = ", ".join(f"{k} ({v})" for k, v in checks)
            problems.append(
                f"{r.table}/date={r.partition}: {fraction:.1%} of {r.rows_in} rows quarantined "
                f"(max {cfg.max_quarantine_fraction:.0%}); top failing checks: {top}"
            )
    for table in dict.fromkeys(r.table for r in results):
        mine = [r for r in results if r.table == table]
        faulty = [r for r in mine if r.fault is not None]
        if len(faulty) > cfg.max_faulty_fraction * len(mine):
            listed = "; ".join(f"date={r.partition}: {r.fault}" for r in faulty[:5])
            problems.append(
                f"{table}: {len(faulty)} of {len(mine)} partitions quarantined whole "
                f"(max {cfg.max_faulty_fraction:.0%}): {listed}"
            )
        days = [r.partition for r in mine if is_date(r.partition)]
        missing = missing_days(days, calendar)
        if len(missing) > cfg.max_missing_fraction * (len(days) + len(missing)):
            problems.append(
                f"{table}: {len(missing)} missing day(s) between its first and last partition "
                f"(max {cfg.max_missing_fraction:.0%}): {', '.join(missing[:10])}"
            )
    # by table and partition, whatever order the results came in
    return sorted(problems)


# --- incremental runs: only new or changed partitions are validated (DESIGN.md, principle 2) ---

# The modules whose code decides the stage's outputs, relative to stages/ (its code deps in
# dvc.yaml, tested): an edit to any of them rebuilds every partition rather than mix old and
# new outputs.
CODE_FILES = ("validate.py", "lib/validation.py", *SHARED_CODE)
LIBRARIES = ("numpy", "pandas", "pandera", "pyarrow")
REPORT = "report.json"
QUARANTINE_DIR = "quarantine"
TOTALS = ("rows_in", "rows_valid", "rows_quarantined")


@dataclass
class RecordedResult(PartitionResult):
    """A partition's result as the manifest records it (its summary, not its rows), so the
    thresholds judge every partition alike, whether validated in this run or an earlier one."""

    recorded: dict = field(default_factory=dict)

    @property
    def rows_quarantined(self) -> int:
        return int(self.recorded["rows_quarantined"])

    @property
    def rows_null_key(self) -> int:
        return int(self.recorded.get("rows_null_key", 0))

    def summary(self) -> dict:
        return dict(self.recorded)

    @classmethod
    def from_summary(
        cls, table: str, partition: str, summary: Mapping, no_rows: pd.DataFrame
    ) -> RecordedResult:
        """`no_rows`: an empty quarantine frame, shared (building one per partition costs)."""
        valid = pd.DataFrame(index=pd.RangeIndex(int(summary["rows_valid"])))
        return cls(
            table,
            partition,
            valid,
            no_rows,
            int(summary["rows_in"]),
            summary["fault"],
            recorded=dict(summary),
        )


@dataclass(frozen=True)
class ValidatePlan:
    """What a run does with each (table, partition): validate it, keep it, or drop it."""

    todo: tuple[tuple[str, str], ...]
    keep: tuple[tuple[str, str], ...]
    drop: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ValidateRun:
    entries: dict[str, dict[str, dict]]  # table -> partition -> manifest entry, sorted
    plan: ValidatePlan
    rebuilt: str  # why every partition was validated again ("" for an incremental run)
    # table -> folder of its landing that is not a partition -> the name expected
    unread: dict[str, dict[str, str]] = field(default_factory=dict)


def plan_partitions(
    sources: Mapping[str, Mapping[str, str]], done: Mapping[str, Mapping[str, str]]
) -> ValidatePlan:
    """Compare `sources` (table -> partition -> content hash of its landed files) with `done`
    (the same, for the partitions whose outputs are intact): new or changed partitions are
    validated, unchanged ones kept, the ones no longer landed dropped."""
    todo, keep, drop = [], [], []
    for table, parts in sources.items():
        for partition, digest in parts.items():
            same = done.get(table, {}).get(partition) == digest
            (keep if same else todo).append((table, partition))
    for table, parts in done.items():
        drop += [(table, p) for p in parts if p not in sources.get(table, {})]
    return ValidatePlan(tuple(todo), tuple(keep), tuple(sorted(drop)))


def validate_fingerprint(dataset_params: Mapping, validate_params: Mapping) -> str:
    """What the outputs depend on besides the data: code, the two params sections, libraries."""
    return fingerprint(
        code=[STAGES_ROOT / name for name in CODE_FILES],
        params={"dataset": dataset_params, "validate": validate_params},
        libraries=LIBRARIES,
        version=MANIFEST_FORMAT,
    )


def _output_paths(table: str, partition: str) -> tuple[str, str]:
    return validated_file(table, partition), f"{QUARANTINE_DIR}/{validated_file(table, partition)}"


def _intact(entry: Mapping, out_dir: Path, cache: StatCache) -> bool:
    """Whether every output the entry records is on disk with the recorded content."""
    for rel, recorded in entry["outputs"].items():
        stamp = cache.stamp(out_dir / rel, f"out/{rel}")
        if stamp is None or stamp.to_json() != recorded:
            return False
    return True


@dataclass(frozen=True)
class ValidatedPartition:
    """One partition's outcome as it travels from a worker: its summary and its files."""

    summary: dict
    files: dict[str, bytes]  # path relative to the output directory -> parquet bytes


def _with_extra(
    valid: pd.DataFrame, schema: pa_arrow.Schema
) -> tuple[pd.DataFrame, pa_arrow.Schema]:
    """The schema of a valid frame holding kept extra columns: the declared schema, then each
    extra column as Arrow types it (as text when its files disagree on its type)."""
    extra = [c for c in valid.columns if c not in schema.names]
    if not extra:
        return valid, schema
    valid = valid.copy()
    fields = list(schema)
    for name in extra:
        try:
            typed = pa_arrow.Table.from_pandas(valid[[name]], preserve_index=False).schema
        except (pa_arrow.ArrowInvalid, pa_arrow.ArrowTypeError, pa_arrow.ArrowNotImplementedError):
            valid[name] = [None if _is_null(v) else str(v) for v in valid[name]]
            typed = pa_arrow.schema([(name, pa_arrow.string())])
        fields.append(typed.field(name))
    return valid, pa_arrow.schema(fields)


def _is_null(value: object) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)


def validate_task(
    specs: Mapping[str, TableSpec],
    task: tuple[str, str, tuple[Path, ...]],
    keep_extra: bool = False,
) -> ValidatedPartition:
    """Validate one (table, partition, files) task; pure, so any engine's worker can run it.

    A partition whose name is not a date has no valid file (it has no valid row, and the
    stages after validate read a partition's date from its file name), only its quarantine."""
    name, partition, files = task
    result = validate_partition(files, specs[name], partition, keep_extra)
    valid_rel, quarantine_rel = _output_paths(name, partition)
    out = {}
    if is_date(partition):
        valid, schema = _with_extra(result.valid, arrow_schema(specs[name]))
        out[valid_rel] = frame_parquet(valid, schema)
    if len(result.quarantine):
        out[quarantine_rel] = frame_parquet(result.quarantine, QUARANTINE_SCHEMA)
    # through JSON, so a summary reads the same fresh and from the manifest
    summary = json.loads(json.dumps(result.summary(), default=str))
    return ValidatedPartition(summary, out)


def _commit(
    done: ValidatedPartition, table: str, partition: str, out_dir: Path, cache: StatCache
) -> dict:
    """Write one validated partition's files; returns its manifest entry (no source), with
    the rows its files hold as read back from disk."""
    for rel, data in done.files.items():
        write_bytes_atomic(data, out_dir / rel)
    outputs = {rel: cache.stamp(out_dir / rel, f"out/{rel}") for rel in done.files}
    rows = {rel: pq.ParquetFile(out_dir / rel).metadata.num_rows for rel in done.files}
    valid_rel, quarantine_rel = _output_paths(table, partition)
    return {
        "outputs": {rel: s.to_json() for rel, s in outputs.items() if s is not None},
        "summary": done.summary,
        "written": {
            "valid_rows": rows.get(valid_rel, 0),
            "quarantine_records": rows.get(quarantine_rel, 0),
        },
    }


def _remove_unlisted(out_dir: Path, entries: Mapping[str, Mapping[str, Mapping]]) -> list[str]:
    """Delete partition outputs no entry lists: dropped partitions, tables no longer in the
    dataset, the old quarantine file of a partition that has none now."""
    listed = {rel for parts in entries.values() for e in parts.values() for rel in e["outputs"]}
    removed = []
    for path in sorted(out_dir.rglob("date=*.parquet")):
        rel = path.relative_to(out_dir).as_posix()
        if rel not in listed:
            path.unlink()
            removed.append(rel)
    return removed


def _landed(
    landing_dir: Path, dataset: DatasetConfig, cache: StatCache
) -> tuple[dict[str, dict[str, list[Path]]], dict[str, dict[str, dict]]]:
    """(table -> partition -> files, table -> partition -> file name -> stamp) of the landing."""
    files: dict[str, dict[str, list[Path]]] = {}
    stamps: dict[str, dict[str, dict]] = {}
    for table in dataset.tables:
        files[table.name] = list_partitions(landing_dir / table.name, table.partition)
        stamps[table.name] = {}
        for partition, paths in files[table.name].items():
            label = f"landing/{table.name}/{partition}/"
            found = {p.name: cache.stamp(p, label + p.name) for p in paths}
            stamps[table.name][partition] = {n: s for n, s in found.items() if s is not None}
    return files, stamps


def unlanded_tables(landing_dir: Path, dataset: DatasetConfig, shown: int = 5) -> list[str]:
    """A line per table of the dataset with no partition landed: no folder named as the
    table, or one whose entries match no `<partition>=YYYY-MM-DD` (a table or `partition:`
    key that names nothing). Validate finding nothing to validate is a config mistake; a run
    with no NEW partition still lists the landed ones."""
    problems = []
    for table in dataset.tables:
        folder = landing_dir / table.name
        expected = f"{folder}/{partition_form(table.partition)}/*{table.file_suffix}"
        if list_partitions(folder, table.partition):
            continue
        if not folder.is_dir():
            there = sorted(p.name for p in landing_dir.iterdir() if not p.name.startswith("."))
            found = f"{landing_dir} holds {there[:shown]}" if there else f"{landing_dir} is empty"
            problems.append(
                f"table '{table.name}': no folder {folder} (expected {expected}); {found}"
            )
            continue
        names = sorted(p.name for p in folder.iterdir() if not p.name.startswith((".", "_")))
        more = f" and {len(names) - shown} more" if len(names) > shown else ""
        found = f"found {names[:shown]}{more}" if names else "it is empty"
        problems.append(
            f"table '{table.name}': no partition in {folder} (expected {expected}); {found}"
        )
    return problems


def run_validate(
    landing_dir: Path,
    out_dir: Path,
    dataset: DatasetConfig,
    fingerprint_: str,
    engine: EngineConfig | None = None,
    extra_columns: str = "drop",
) -> ValidateRun:
    """Validate the partitions new or changed since the last run, keep the others, remove the
    outputs of those no longer landed; write the report, then the manifest, last. A manifest
    of other code or params (another fingerprint) is ignored: every partition is validated.
    `extra_columns` (`drop` or `keep`): what becomes of the columns a dataset does not declare
    (reported either way); the fingerprint must cover it (it is in the validate params).

    On `engine.name: pyspark` the partitions are validated by Spark tasks, each running the
    same checks on its partition; the files they produce are written here, byte for byte the
    ones an in-process run writes.
    """
    remove_temp_files(out_dir)
    previous, why = read_manifest(out_dir / MANIFEST, fingerprint_)
    cache = load_stat_cache(out_dir)
    old = (previous or {}).get("partitions", {})
    files, stamps = _landed(landing_dir, dataset, cache)
    sources = {t: {p: content_hash(s) for p, s in parts.items()} for t, parts in stamps.items()}
    done = {
        table: {p: e["source"] for p, e in parts.items() if _intact(e, out_dir, cache)}
        for table, parts in old.items()
    }
    plan = plan_partitions(sources, done)

    specs = {t.name: t for t in dataset.tables}
    entries: dict[str, dict[str, dict]] = {t.name: {} for t in dataset.tables}
    for table, partition in plan.keep:
        entries[table][partition] = old[table][partition]
    tasks = [(t, p, tuple(files[t][p])) for t, p in plan.todo]
    task = partial(validate_task, specs, keep_extra=extra_columns == "keep")
    results = map_tasks(engine or EngineConfig(), task, tasks)
    for (table, partition, _), validated in zip(tasks, results, strict=True):
        entry = _commit(validated, table, partition, out_dir, cache)
        entry["source"] = sources[table][partition]
        entry["files"] = {n: s.to_json() for n, s in stamps[table][partition].items()}
        entries[table][partition] = entry
    entries = {t: dict(sorted(parts.items())) for t, parts in entries.items()}
    unread = {t.name: unread_folders(landing_dir / t.name, t.partition) for t in dataset.tables}
    _remove_unlisted(out_dir, entries)
    write_json(summarize(entries, dataset.calendar, unread)[1], out_dir / REPORT)
    write_manifest(out_dir / MANIFEST, fingerprint_, {"partitions": entries})
    save_stat_cache(out_dir, cache)
    return ValidateRun(entries, plan, why if previous is None else "", unread)


def results_of(entries: Mapping[str, Mapping[str, Mapping]]) -> list[PartitionResult]:
    """Every partition's result as the manifest records it, in table then date order."""
    no_rows = _empty_quarantine()
    return [
        RecordedResult.from_summary(table, partition, entry["summary"], no_rows)
        for table, parts in entries.items()
        for partition, entry in parts.items()
    ]


# a partition holding under this share of its weekday's usual rows is listed as short (a
# partial export: rows lost upstream, which no check on the rows that did land can see)
SHORT_SHARE = 0.25
# judged only against a weekday seen this often, with at least this many rows usually: a
# Saturday of 2 rows where Saturdays hold 0 to 6 is the data, not a loss
SHORT_MIN_DAYS = 4
SHORT_MIN_TYPICAL = 8


def short_partitions(summaries: Mapping[str, Mapping]) -> dict[str, dict[str, int]]:
    """Partitions (dates) with under SHORT_SHARE of the median rows of their weekday's other
    partitions: {partition: {rows_in, typical}}. Faulty partitions are left out (their reason is
    already listed)."""
    by_weekday: dict[int, list[tuple[str, int]]] = {}
    for part, summary in summaries.items():
        if summary.get("fault") is None and is_date(part):
            day = datetime.date.fromisoformat(part)
            by_weekday.setdefault(day.weekday(), []).append((part, int(summary["rows_in"])))
    out = {}
    for days in by_weekday.values():
        if len(days) < SHORT_MIN_DAYS:
            continue
        counts = [n for _, n in days]
        for part, n in days:
            others = list(counts)
            others.remove(n)
            typical = int(statistics.median(others))
            if typical >= SHORT_MIN_TYPICAL and n < SHORT_SHARE * typical:
                out[part] = {"rows_in": n, "typical": typical}
    return dict(sorted(out.items()))


def summarize(
    entries: Mapping[str, Mapping[str, Mapping]],
    calendar: Calendar | None = None,
    unread: Mapping[str, Mapping[str, str]] | None = None,
) -> tuple[dict, dict]:
    """(metrics, report) of every partition the manifest holds.

    metrics: the overall totals a person compares across runs (a DVC metrics file: one value
    per column of `dvc metrics show`, so nothing per table or per partition); report: per table
    its totals, every partition's summary (counts, fault, top failing checks, extra columns),
    the missing days, the short partitions (`short_partitions`) and the folders not read
    (`unread`: table -> folder -> the name expected).
    """
    metrics: dict = {"partitions": 0, "partitions_faulty": 0, "missing_days": 0}
    metrics |= {k: 0 for k in (*TOTALS, "rows_null_key")}
    report = {}
    for table, parts in entries.items():
        summaries = {p: e["summary"] for p, e in parts.items()}
        missing = missing_days(list(summaries), calendar)
        short = short_partitions(summaries)
        totals = {
            "partitions": len(summaries),
            "partitions_faulty": sum(s["fault"] is not None for s in summaries.values()),
            "missing_days": len(missing),
            **{k: sum(int(s[k]) for s in summaries.values()) for k in TOTALS},
            "rows_null_key": sum(int(s.get("rows_null_key", 0)) for s in summaries.values()),
            # naive local times read by the table's DST policy (tables.<t>.dst), never silently
            **{
                k: sum(int(s.get(k, 0)) for s in summaries.values())
                for k in (DST_SHIFTED, DST_RESOLVED, DST_NOT_INFERRED, MISSING_CODED)
                if any(s.get(k) for s in summaries.values())
            },
            **({"partitions_short": len(short)} if short else {}),
        }
        for k, v in totals.items():
            # the DST counts and partitions_short only where there are some
            metrics[k] = metrics.get(k, 0) + v
        report[table] = {
            "totals": totals,
            "missing_days": missing,
            "short_partitions": short,
            "folders_not_read": dict((unread or {}).get(table, {})),
            "partitions": summaries,
        }
    return metrics, report


def conservation_problems(entries: Mapping[str, Mapping[str, Mapping]]) -> list[str]:
    """Every row in is valid or quarantined, and the files hold what the counts say."""
    problems = []
    for table, parts in entries.items():
        for partition, entry in parts.items():
            s = {k: int(entry["summary"][k]) for k in TOTALS}
            w = entry["written"]
            where = f"{table}/date={partition}"
            if s["rows_in"] != s["rows_valid"] + s["rows_quarantined"]:
                problems.append(
                    f"{where}: row counts not conserved ({s['rows_in']} in, "
                    f"{s['rows_valid']} valid, {s['rows_quarantined']} quarantined)"
                )
            if w["valid_rows"] != s["rows_valid"]:
                problems.append(
                    f"{where}: {w['valid_rows']} rows written for {s['rows_valid']} valid"
                )
            if s["rows_quarantined"] and not w["quarantine_records"]:
                problems.append(f"{where}: {s['rows_quarantined']} rows quarantined, no record")
    return problems
