"""`evergreen lake land`: CSV exports into the lake's daily partitions of one table.

    evergreen lake land --table TABLE [--lake DIR|s3://bucket/prefix] FILE_OR_FOLDER...
                        [--params params.yaml] [--arrived YYYY-MM-DD] [--sep ';'] [--decimal ',']

Real data seldom arrives as `landing/<table>/date=YYYY-MM-DD/`: an export is one CSV, or one
per month. This splits each CSV's rows by the calendar day of the table's `timestamp` column
and writes them to `landing/<table>/<partition>=<day>/<file stem>.csv`: the header, then that
day's rows with their values' text untouched (validate parses and checks the types, as for a
file any other tool landed). An export written the European way (`;` between fields, `2,5` for
2.5: `--sep ';' --decimal ','`) lands as validate reads CSV: commas between fields, and the
numeric columns' decimal mark a '.'. The day is the one the file writes for a naive time, and
the day in the table's `timezone` for a time with an offset, so a day's partition holds that
local day.

No row is dropped: a row whose timestamp is not an ISO 8601 time (or that has another number of
fields than the header) stops the command before anything is written, with one line naming the
file, the line and what was expected. A partition file with the same bytes is left alone (a
rerun writes nothing); one with other bytes is replaced, as a re-sent day is (ingest then copies
it, validate redoes that partition). The table must be declared `format: csv`.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import re
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

from stages.contract.storage import Lake
from stages.lib.dataset import NUMERIC_TYPES, DatasetConfigError, TableSpec, dataset_from_params
from stages.lib.params import ParamsError, default_lake, load_params


class LandError(ValueError):
    """An input that cannot be landed; the message is one line naming the file."""


def csv_files(inputs: Iterable[str]) -> list[Path]:
    """The CSV files named, and those in the folders named (sorted: the same order each run)."""
    files: list[Path] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*.csv") if p.is_file())
            if not found:
                raise LandError(f"{path}: no *.csv file in this folder")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise LandError(f"{path}: no such file or folder")
    stems = defaultdict(list)
    for path in files:
        stems[path.stem].append(path)
    clash = next((paths for paths in stems.values() if len(paths) > 1), None)
    if clash:
        # each input's rows of a day go to <stem>.csv: two inputs with one stem would overwrite
        raise LandError(f"{clash[0]} and {clash[1]}: two inputs named {clash[0].stem}.csv")
    return files


def day_of(text: str, zone: ZoneInfo, ignore_offsets: bool = False) -> dt.date | None:
    """The calendar day of an ISO 8601 time: its own for a naive time, `zone`'s for an aware one
    (its own again where the table's `offsets: ignore` says its offset is not to be trusted)."""
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if moment.tzinfo is not None and not ignore_offsets:
        moment = moment.astimezone(zone)
    return moment.date()


@dataclass(frozen=True)
class Dialect:
    """How an export writes its CSV: the field separator and the decimal mark of numbers (the
    partitions landed are always comma-separated with '.' decimals, as validate reads them)."""

    sep: str = ","
    decimal: str = "."

    def numbers(self, header: list[str], table: TableSpec) -> list[int]:
        """Positions of the header's numeric columns (their decimal mark is rewritten)."""
        if self.decimal == ".":
            return []
        numeric = {c.file_name for c in table.raw_columns if c.type in NUMERIC_TYPES}
        return [i for i, name in enumerate(header) if name in numeric]


def _other_separator(header: list[str]) -> str | None:
    """The separator a one-field header seems to use instead of a comma, if any."""
    if len(header) != 1:
        return None
    return next((sep for sep in (";", "\t", "|") if sep in header[0]), None)


def split_by_day(
    path: Path, table: TableSpec, dialect: Dialect = Dialect()
) -> tuple[list[str], dict[dt.date, list[list[str]]]]:
    """The header and each day's rows of one CSV file (LandError on a row it cannot place)."""
    zone = ZoneInfo(table.timezone)
    stamp = table.column(table.timestamp).file_name  # as the export names it
    with path.open(newline="", encoding="utf-8-sig") as handle:
        # strict: a quote that is never closed is an error, not a field that swallows every
        # line to the end of the file (the rows after it would be lost as one bad value)
        reader = csv.reader(handle, strict=True, delimiter=dialect.sep)
        try:
            header = next(reader, None)
        except csv.Error as exc:
            raise LandError(f"{path}: line 1: {_csv_problem(exc)}") from None
        if not header:
            raise LandError(f"{path}: empty file, expected a header line")
        if stamp not in header:
            other = _other_separator(header)
            hint = (
                f"; the header looks {other!r}-separated: pass --sep {other!r} (and "
                "--decimal ',' where numbers are written 2,5)"
                if other
                else ""
            )
            raise LandError(
                f"{path}: no column '{stamp}' (the table's timestamp), "
                f"header has {', '.join(header[:8])}{'...' if len(header) > 8 else ''}{hint}"
            )
        at = header.index(stamp)
        numbers = dialect.numbers(header, table)
        days: dict[dt.date, list[list[str]]] = defaultdict(list)
        while True:
            start = reader.line_num + 1  # a quoted field may span lines: name the row's first
            try:
                row = next(reader, None)
            except csv.Error as exc:
                raise LandError(f"{path}: line {start}: {_csv_problem(exc)}") from None
            if row is None:
                break
            if not row:
                continue  # a blank line holds no row
            if len(row) != len(header):
                raise LandError(
                    f"{path}: line {start}: {len(row)} fields, expected "
                    f"{len(header)} as in the header"
                )
            for i in numbers:  # 2,5 -> 2.5: validate reads numbers with a '.' decimal mark
                row[i] = _number_text(row[i], dialect.decimal, f"{path}: line {start}", header[i])
            day = day_of(row[at], zone, table.offsets == "ignore")
            if day is None:
                raise LandError(
                    f"{path}: line {start}: {stamp} {row[at][:40]!r} is "
                    f"not an ISO 8601 time (e.g. 2026-03-01 14:05:00)"
                )
            days[day].append(row)
    return header, days


# a number with '.' thousands separators, as an export with ',' decimals writes it: 1.234,5
_GROUPED = re.compile(r"[+-]?\d{1,3}(\.\d{3})+(,\d*)?")


def _number_text(text: str, decimal: str, where: str, column: str) -> str:
    """A numeric field with a '.' decimal mark. Where the export's mark is another, a '.' can
    only group thousands (1.234,5 is 1234.5; left in, 1.234,5 became 1.234.5 and 1.004 was
    read as 1.004); a '.' that does not group digits by three is refused, one line naming it."""
    if decimal == ".":
        return text
    if "." in text:
        if not _GROUPED.fullmatch(text.strip()):
            raise LandError(
                f"{where}: {column} {text[:40]!r} has a '.' in a number written with "
                f"{decimal!r} decimals that is not a thousands separator (1.234{decimal}5)"
            )
        text = text.replace(".", "")
    return text.replace(decimal, ".")


def _csv_problem(exc: csv.Error) -> str:
    if "unexpected end of data" in str(exc):
        return "a quoted field opened in this row is never closed (an unbalanced '\"')"
    if "expected after" in str(exc):
        return (
            "a '\"' closes a quoted field that goes on: a stray quote, or one opened and not "
            "closed in this row"
        )
    return f"not valid CSV ({exc})"


def to_csv(header: list[str], rows: list[list[str]]) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode("utf-8")


def land(
    files: Sequence[Path],
    table: TableSpec,
    lake: Lake,
    arrived: dt.date | None = None,
    dialect: Dialect = Dialect(),
    replace: bool = False,
) -> dict[str, int]:
    """Write every file's days into `lake`; every file is read (and checked) before one byte
    is written, so a bad row leaves the lake as it was. With `arrived`, every row goes to that
    day's partition instead of its own time's: rows re-sent with what was learnt since (a rows
    task's outcomes) land on the day they arrived, as a new partition, and prepare keeps the
    latest row per key; in their own day's partition they would rewrite history and, under
    `unique`, be quarantined as duplicates."""
    planned: list[tuple[str, bytes]] = []
    rows = 0
    for path in files:
        header, days = split_by_day(path, table, dialect)
        if arrived is not None:
            days = {arrived: [row for day in sorted(days) for row in days[day]]}
        for day, day_rows in sorted(days.items()):
            rel = f"landing/{table.name}/{table.partition}={day.isoformat()}/{path.stem}.csv"
            planned.append((rel, to_csv(header, day_rows)))
            rows += len(day_rows)
    others = _other_files(planned, table, lake, replace)
    written = unchanged = 0
    for rel, data in planned:
        if lake.exists(rel) and lake.read(rel) == data:
            unchanged += 1
            continue
        lake.write(rel, data)
        written += 1
    for rel in others:  # --replace: the files landed are now their days' only ones
        lake.remove(rel)
    return {
        "files": len(files), "rows": rows, "written": written, "unchanged": unchanged,
        "replaced": len(others),
    }  # fmt: skip


def _keys(data: bytes, key: str) -> set[str]:
    """The `key` column's values of a landed CSV file (none: the file has no such column)."""
    reader = csv.reader(io.StringIO(data.decode("utf-8-sig"), newline=""))
    header = next(reader, None) or []
    if key not in header:
        return set()
    at = header.index(key)
    return {row[at] for row in reader if len(row) > at and row[at]}


def _other_files(
    planned: Sequence[tuple[str, bytes]], table: TableSpec, lake: Lake, replace: bool
) -> list[str]:
    """The files already in the partitions `planned` writes, under other names, whose rows
    share a key (declared `unique`) with the rows landed there: a re-export named otherwise
    (`december.csv` over `sessions_2025-12-23.csv`) would land every row twice, and validate
    would quarantine one copy of each as a duplicate. LandError naming them, unless
    `replace`: then the ones to remove once the new files are written, each holding no row
    the new file lacks."""
    ours = {rel for rel, _ in planned}
    clashing: list[str] = []
    if not table.column(table.key).unique:
        # a key that repeats by design (an entities table's versions, re-sent outcomes): two
        # files of one day sharing keys are updates, not copies, and validate takes both
        return clashing
    key = table.column(table.key).file_name  # as the export names it
    for rel, data in planned:
        folder = rel.rsplit("/", 1)[0]
        mine = _keys(data, key)
        for other in lake.files(folder):
            if other in ours or other in clashing or not other.endswith(".csv"):
                continue
            theirs = _keys(lake.read(other), key)
            shared = mine & theirs
            if not shared:
                continue
            if replace and theirs - mine:  # no row is lost: a re-export holds every old row
                raise LandError(
                    f"{other}: --replace would lose {len(theirs - mine)} row(s) the new file "
                    f"{rel.rsplit('/', 1)[-1]} does not hold (e.g. {table.key} "
                    f"{min(theirs - mine)!r}); remove that file yourself if they must go"
                )
            if not replace:
                raise LandError(
                    f"{other}: holds {len(shared)} of the keys landed into "
                    f"{rel.rsplit('/', 1)[-1]} beside it (e.g. {table.key} {min(shared)!r}): "
                    "the rows would be there twice; pass --replace to make the new file its "
                    "day's only one, or land the export under the old file's name (rows "
                    "re-sent with their outcomes land with --arrived YYYY-MM-DD, the day they "
                    "arrived)"
                )
            clashing.append(other)
    return clashing


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="evergreen lake land", description=__doc__.splitlines()[0]
    )
    parser.add_argument("inputs", nargs="+", help="CSV files, or folders of them (recursive)")
    parser.add_argument("--table", required=True, help="the dataset's table they belong to")
    parser.add_argument("--lake", help="lake folder or s3:// prefix (default: params lake.path)")
    parser.add_argument("--params", default="params.yaml", help="params file")
    parser.add_argument(
        "--arrived",
        metavar="YYYY-MM-DD",
        help="land every row in this day's partition, the day the rows arrived (rows re-sent "
        "with their outcomes), instead of the day of each row's time",
    )
    parser.add_argument(
        "--replace",
        action="store_true",
        help="remove the other files of each day landed whose rows share keys with the new "
        "ones (a re-export under another name)",
    )
    parser.add_argument(
        "--sep", default=",", help="the exports' field separator (default ','; ';' or '\\t')"
    )
    parser.add_argument(
        "--decimal",
        default=".",
        choices=(".", ","),
        help="the decimal mark of the exports' numbers (default '.'; ',' for 2,5)",
    )
    args = parser.parse_args(argv)
    try:
        sep = "\t" if args.sep in ("\\t", "tab") else args.sep
        if len(sep) != 1 or sep in ('"', "\n", "\r") or sep == args.decimal:
            raise LandError(
                f"--sep {args.sep!r}: expected one character (',', ';', '\\t' or '|'), "
                "other than the decimal mark"
            )
        dialect = Dialect(sep, args.decimal)
        params = load_params(args.params)
        dataset = dataset_from_params(params["dataset"])
        names = [t.name for t in dataset.tables]
        if args.table not in names:
            raise LandError(
                f"{args.params}: dataset '{dataset.name}' has no table '{args.table}' "
                f"(tables: {', '.join(names)})"
            )
        table = dataset.table(args.table)
        if table.format != "csv":
            raise LandError(
                f"{args.params}: dataset.tables.{table.name}.format is {table.format}; "
                "`lake land` writes CSV partitions: declare format: csv"
            )
        arrived = None
        if args.arrived is not None:
            try:
                arrived = dt.date.fromisoformat(args.arrived)
            except ValueError:
                raise LandError(
                    f"--arrived {args.arrived!r}: expected a date, YYYY-MM-DD"
                ) from None
        lake = Lake(default_lake(args.lake, args.params))
        counts = land(csv_files(args.inputs), table, lake, arrived, dialect, args.replace)
    except (LandError, ParamsError, DatasetConfigError, OSError, UnicodeDecodeError) as exc:
        print(f"evergreen lake land: {exc}", file=sys.stderr)
        return 2
    print(
        f"landed {counts['rows']} rows of {counts['files']} file(s) into table "
        f"{table.name}: {counts['written']} partition file(s) written, "
        f"{counts['unchanged']} unchanged"
        + (f", {counts['replaced']} replaced file(s) removed" if counts["replaced"] else "")
    )
    if not counts["rows"] and arrived is None:
        # a header-only export names no day by its rows: the day stays missing unless told
        print(
            "lake land: no row to place, nothing landed; an export of a day with no rows is "
            "landed with --arrived YYYY-MM-DD (its empty partition: a day the source said was "
            "empty, not a missing one)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
