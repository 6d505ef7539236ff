"""validate: check every landed partition against the dataset's schema, losing no row.

Each partition's rows end up either in `<out>/<table>/date=D.parquet` (typed, with the partition
date and row number that `prepare` orders by) or in `<out>/quarantine/<table>/date=D.parquet`
with the file, row, column, check and offending value. Counts are conserved and checked.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pandera.pandas as pa
import pyarrow as pa_arrow
import pyarrow.parquet as pq

from stages.dataset import ColumnSpec, DatasetConfig, TableSpec, dataset_from_params
from stages.io import ARROW_TYPES, list_partitions, write_frame, write_json
from stages.params import load_params, section

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
PARTITION_COL = "_partition"
ROW_COL = "_row"


@dataclass(frozen=True)
class ValidateConfig:
    max_quarantine_fraction: float = 0.2


@dataclass
class PartitionResult:
    table: str
    partition: str
    valid: pd.DataFrame
    quarantine: pd.DataFrame
    rows_in: int
    fault: str | None = None  # a whole-partition fault (unreadable file, missing column)

    @property
    def rows_quarantined(self) -> int:
        return self.rows_in - len(self.valid)

    def summary(self) -> dict:
        checks = Counter(self.quarantine["check"]) if len(self.quarantine) else Counter()
        return {
            "rows_in": self.rows_in,
            "rows_valid": len(self.valid),
            "rows_quarantined": self.rows_quarantined,
            "fault": self.fault,
            "top_checks": dict(checks.most_common(5)),
        }


@dataclass
class ValidationFailed(Exception):
    failures: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return "validation failed:\n  " + "\n  ".join(self.failures)


def _coerce(series: pd.Series, spec: ColumnSpec) -> tuple[pd.Series, pd.Series]:
    """Cast a column to its declared type; returns (typed column, mask of uncastable values)."""
    present = series.notna()
    if spec.type in ("int64", "float64"):
        typed = pd.to_numeric(series, errors="coerce")
        bad = present & typed.isna()
        if spec.type == "int64":
            bad |= typed.notna() & (typed % 1 != 0)
            typed = typed.where(~bad).astype("Int64")
        return typed.astype("Float64") if spec.type == "float64" else typed, bad
    if spec.type in ("date", "timestamp"):
        typed = pd.to_datetime(series, errors="coerce")
        if spec.type == "date":
            typed = typed.dt.normalize()
        return typed, present & typed.isna()
    if spec.type == "bool":
        typed = series.map({True: True, False: False, "true": True, "false": False})
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
        columns[spec.name] = pa.Column(None, checks=checks, nullable=spec.nullable)
    return pa.DataFrameSchema(columns, strict=False)


def _failures(frame: pd.DataFrame, table: TableSpec) -> pd.DataFrame:
    """Row-level failures as (index, column, check, value) rows: type casts, then pandera."""
    records = []
    for spec in table.columns:
        typed, bad = _coerce(frame[spec.name], spec)
        for idx in frame.index[bad]:
            records.append((idx, spec.name, f"type({spec.type})", frame.at[idx, spec.name]))
        frame[spec.name] = typed
    try:
        _pandera_schema(table).validate(frame, lazy=True)
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases
        for idx, column, check, value in zip(
            cases["index"], cases["column"], cases["check"], cases["failure_case"], strict=True
        ):
            if pd.isna(idx):
                raise ValueError(f"column '{column}' fails '{check}' as a whole") from exc
            records.append((int(idx), column, str(check), value))
    out = pd.DataFrame(records, columns=["index", "column", "check", "value"])
    return out.sort_values(["index", "column", "check"], kind="stable").reset_index(drop=True)


def _read_partition(files: Sequence[Path], table: TableSpec) -> pd.DataFrame:
    frames = []
    for path in files:
        try:
            df = pq.read_table(path).to_pandas()
        except Exception as exc:  # any unreadable file quarantines its partition
            raise ValueError(
                f"{path.name}: unreadable parquet ({type(exc).__name__}: {exc})"
            ) from exc
        missing = [c.name for c in table.columns if c.name not in df.columns]
        if missing:
            raise ValueError(f"{path.name}: missing required column(s) {missing}")
        df = df[[c.name for c in table.columns]].astype(object)
        df["_source_file"] = path.name
        df["_file_row"] = range(len(df))
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=[*(c.name for c in table.columns), "_source_file", "_file_row"])
    return pd.concat(frames, ignore_index=True)


def _empty_quarantine() -> pd.DataFrame:
    return QUARANTINE_SCHEMA.empty_table().to_pandas()


def validate_partition(files: Sequence[Path], table: TableSpec, partition: str) -> PartitionResult:
    """Validate one partition's files; never raises for bad data, only reports it."""
    try:
        frame = _read_partition(files, table)
        failures = _failures(frame, table)
    except ValueError as exc:
        rows_in = sum(_row_count(f) for f in files)
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
    return PartitionResult(table.name, partition, valid, quarantine, len(frame))


def _row_count(path: Path) -> int:
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception:
        return 0  # unreadable: we cannot know; the fault itself is what is reported


def frame_empty(table: TableSpec) -> pd.DataFrame:
    return pd.DataFrame(columns=[c.name for c in table.columns] + [PARTITION_COL, ROW_COL])


def arrow_schema(table: TableSpec) -> pa_arrow.Schema:
    fields = [(c.name, ARROW_TYPES[c.type]) for c in table.columns]
    fields += [(PARTITION_COL, pa_arrow.date32()), (ROW_COL, pa_arrow.int64())]
    return pa_arrow.schema(fields)


def missing_days(partitions: Sequence[str]) -> list[str]:
    """Calendar days between the first and last partition that have no partition."""
    if not partitions:
        return []
    expected = pd.date_range(min(partitions), max(partitions), freq="D").strftime("%Y-%m-%d")
    return sorted(set(expected) - set(partitions))


def check_thresholds(results: Sequence[PartitionResult], cfg: ValidateConfig) -> list[str]:
    problems = []
    for r in results:
        if r.rows_in != len(r.valid) + r.rows_quarantined:
            problems.append(f"{r.table}/date={r.partition}: row counts not conserved")
        fraction = r.rows_quarantined / r.rows_in if r.rows_in else 0.0
        if fraction > cfg.max_quarantine_fraction:
            top = ", ".join(f"{k} ({v})" for k, v in r.summary()["top_checks"].items())
            problems.append(
                f"{r.table}/date={r.partition}: {fraction:.1%} of {r.rows_in} rows quarantined "
                f"(max {cfg.max_quarantine_fraction:.0%}); top failing checks: {top}"
            )
    return problems


def run_validate(landing_dir: Path, out_dir: Path, dataset: DatasetConfig) -> list[PartitionResult]:
    results = []
    for table in dataset.tables:
        for partition, files in list_partitions(landing_dir / table.name).items():
            result = validate_partition(files, table, partition)
            write_frame(
                result.valid,
                out_dir / table.name / f"date={partition}.parquet",
                arrow_schema(table),
            )
            if len(result.quarantine):
                write_frame(
                    result.quarantine,
                    out_dir / "quarantine" / table.name / f"date={partition}.parquet",
                    QUARANTINE_SCHEMA,
                )
            results.append(result)
    return results


def summarize(results: Sequence[PartitionResult], dataset: DatasetConfig) -> tuple[dict, dict]:
    """(metrics: totals per table, report: every partition's counts and top checks)."""
    metrics, report = {}, {}
    for table in dataset.tables:
        mine = [r for r in results if r.table == table.name]
        metrics[table.name] = {
            "partitions": len(mine),
            "partitions_faulty": sum(r.fault is not None for r in mine),
            "rows_in": sum(r.rows_in for r in mine),
            "rows_valid": sum(len(r.valid) for r in mine),
            "rows_quarantined": sum(r.rows_quarantined for r in mine),
            "missing_days": len(missing_days([r.partition for r in mine])),
        }
        report[table.name] = {
            "missing_days": missing_days([r.partition for r in mine]),
            "partitions": {r.partition: r.summary() for r in mine},
        }
    return metrics, report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.validate", description=__doc__)
    parser.add_argument("landing_dir", type=Path, help="ingested landing zone (data/landing)")
    parser.add_argument("out_dir", type=Path, help="validated partitions + quarantine")
    parser.add_argument("metrics", type=Path, help="validation metrics JSON")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    dataset = dataset_from_params(section(params, "dataset"))
    cfg = ValidateConfig(**section(params, "validate"))
    if not args.landing_dir.is_dir():
        print(f"validate: {args.landing_dir} not found (run `evergreen ingest`)", file=sys.stderr)
        return 2
    results = run_validate(args.landing_dir, args.out_dir, dataset)
    metrics, report = summarize(results, dataset)
    write_json(report, args.out_dir / "report.json")
    write_json(metrics, args.metrics)
    for name, m in metrics.items():
        print(
            f"validate {name}: {m['partitions']} partitions, {m['rows_in']} rows in, "
            f"{m['rows_valid']} valid, {m['rows_quarantined']} quarantined"
        )
    problems = check_thresholds(results, cfg)
    if problems:
        print(ValidationFailed(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
