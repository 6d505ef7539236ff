"""A dataset described by `conf/dataset/<name>.yaml`, as typed, frozen config objects.

Everything the stages know about a dataset comes from here: its tables (role, key, event
timestamp, how the landing zone names partitions, file format, time zone of naive timestamps),
their columns (type and checks), derived columns, which event types count as activity or carry
an amount, where entity attributes come from, and the label. A bad file raises one
`DatasetConfigError` naming `conf/dataset/<name>.yaml`, the key and what was expected.

The `task:` block says what is learnt: `entity_churn` (the default: events -> per-entity
snapshots -> "no activity in the next horizon_days"), or `rows_classification` /
`rows_regression` (each row of one table is an example with a target column).
"""

from __future__ import annotations

import ast
import datetime as dt
import re
import zoneinfo
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from stages.lib.params import DATASET_SECTIONS, known_key

if TYPE_CHECKING:  # pandas costs prepare and features, which never use it, 0.2-0.3 s to import
    import pandas as pd

COLUMN_TYPES = ("int64", "float64", "string", "bool", "date", "timestamp")
NUMERIC_TYPES = ("int64", "float64")
# what the config may declare a categorical input, whatever its storage: text, or integer codes
# (season 1-4), which the model and the request schema then take as they are stored
CATEGORICAL_TYPES = ("string", "bool", "int64")
TABLE_ROLES = ("events", "entities", "rows")
TASK_KINDS = ("entity_churn", "rows_classification", "rows_regression")
ROWS_KINDS = TASK_KINDS[1:]
# the event type of every event when the dataset has no event-type column, and of the events
# the cancellation marker flags
PLAIN_EVENT = "event"
CANCELLATION = "cancellation"
# the quarantine reason of an event whose entity key is null where the config expects some
NULL_KEY_CHECK = "null_entity_key"
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
FILE_FORMATS = ("parquet", "csv")
FILE_SUFFIXES = {"parquet": ".parquet", "csv": ".csv"}
# what validate does with a naive local time in a daylight-saving gap (it never happened on the
# wall clock: shift it past or before the gap) or overlap (it happened twice: the first, DST,
# instant or the second); `quarantine` keeps the old behaviour. Each row so read is counted.
DST_NONEXISTENT = ("shift_forward", "shift_backward", "quarantine")
# infer: an hourly export written in time order repeats the fall-back hour as summer time
# then winter time, and its order tells them apart (pandas' `ambiguous="infer"`)
DST_AMBIGUOUS = ("earliest", "latest", "infer", "quarantine")

_DATASET_KEYS = (
    "name",
    "entity_key",
    "tables",
    "event_type_column",
    "amount_column",
    "activity_types",
    "amount_types",
    "event_features",
    "entity_features",
    "label",
    "task",
    "calendar",
    "cancel_marker",
    # evaluate's slices (conf/config.yaml reads them into evaluate.slices): not the dataset's
    "slices",
    # settings of other sections that depend on the data: composition merges them over conf/'s
    # (stages/lib/params.py merge_dataset_sections); accepted here for a raw file's sake
    *DATASET_SECTIONS,
)
# a rows task's dataset: its one table, the task and the calendar
_ROWS_DATASET_KEYS = ("name", "tables", "task", "calendar", "slices", *DATASET_SECTIONS)
_TASK_KEYS = (
    "kind",
    "table",
    "target",
    "labels",
    "time",
    "key",
    "surrogate_key",
    "features",
    "period_days",
    "max_periods",
    "label_delay_days",
    "pending_days",
)
_ROWS_FEATURE_KEYS = ("numeric", "categorical")
_CALENDAR_KEYS = ("weekdays", "holidays")
_CANCEL_KEYS = ("column", "prefix")
SURROGATE_KEY = "row_key"
_TABLE_KEYS = (
    "role",
    "key",
    "surrogate_key",
    "timestamp",
    "partition",
    "format",
    "timezone",
    "columns",
    "derived",
    "dst",
    "offsets",
)
# how a timestamp's offset is read: `keep` converts a tz-aware time to UTC, `ignore` reads its
# wall clock in the table's zone (an export that writes local times with a literal `Z`)
OFFSETS = ("keep", "ignore")
_DST_KEYS = ("nonexistent", "ambiguous")
_COLUMN_KEYS = (
    "type", "nullable", "allowed", "min", "max", "pattern", "unique", "missing", "source"
)  # fmt: skip
_DERIVED_KEYS = ("expr", "nullable", "min", "max", "unique")
_ENTITY_FEATURE_KEYS = ("table", "categorical", "numeric", "signup_date")
_LABEL_KEYS = ("name", "horizon_days", "lookback_days")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class DatasetConfigError(ValueError):
    """A dataset config that breaks an expectation; the message names the file and the key."""


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    type: str
    nullable: bool = True
    allowed: tuple[str, ...] | None = None
    min: float | None = None
    max: float | None = None
    pattern: str | None = None  # a full match, for string columns
    unique: bool = False  # within one partition (duplicates across days are prepare's job)
    expr: str | None = None  # derived: computed from the table's other columns, not read
    surrogate: bool = False  # derived: a hash of the row's content and partition (a rows key)
    # codes that mean "no value" in the source (-200, -999, "?", "NA"): read as null before any
    # check, so they are neither learnt as numbers nor quarantined by a bound
    missing: tuple[Any, ...] = ()
    # the column's name in the landed files where it is not a name ("No-show", "Customer ID"):
    # validate reads it under `name`, which is what every stage, the card and the server use
    source: str | None = None

    @property
    def derived(self) -> bool:
        return self.expr is not None or self.surrogate

    @property
    def file_name(self) -> str:
        """The column's name in a landed file."""
        return self.source or self.name


@dataclass(frozen=True)
class TableSpec:
    name: str
    role: str
    key: str
    timestamp: str
    columns: tuple[ColumnSpec, ...]
    partition: str = "date"  # landing zone: <table>/<partition>=YYYY-MM-DD/
    format: str = "parquet"
    timezone: str = "UTC"  # of naive timestamps; tz-aware ones are converted to UTC
    # naive local times in a DST gap / overlap of `timezone` (DST_NONEXISTENT, DST_AMBIGUOUS)
    dst_nonexistent: str = "shift_forward"
    dst_ambiguous: str = "earliest"
    offsets: str = "keep"  # OFFSETS
    # entity churn: the entity key column, whose null rows validate quarantines as
    # NULL_KEY_CHECK when the column is declared nullable (nulls expected, counted apart)
    entity_key: str | None = None

    def column(self, name: str) -> ColumnSpec:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(f"table '{self.name}' has no column '{name}'")

    @property
    def raw_columns(self) -> tuple[ColumnSpec, ...]:
        """The columns every landed file must carry."""
        return tuple(c for c in self.columns if not c.derived)

    @property
    def derived_columns(self) -> tuple[ColumnSpec, ...]:
        return tuple(c for c in self.columns if c.derived)

    @property
    def file_suffix(self) -> str:
        return FILE_SUFFIXES[self.format]


@dataclass(frozen=True)
class EntityFeatures:
    # where the attributes come from: an entities table (its version as of the snapshot) or the
    # events table (the entity's latest event up to the snapshot)
    table: str | None = None
    categorical: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    signup_date: str | None = None

    @property
    def attributes(self) -> tuple[str, ...]:
        extra = (self.signup_date,) if self.signup_date else ()
        return (*self.categorical, *self.numeric, *extra)


@dataclass(frozen=True)
class LabelSpec:
    """Churn: an entity active in the `lookback_days` up to a snapshot, with no activity in the
    `horizon_days` after it."""

    name: str = "label"
    horizon_days: int = 21
    lookback_days: int = 28


@dataclass(frozen=True)
class Calendar:
    """The days a table is expected to have a partition: open weekdays minus holidays. Missing
    days are counted against it, so a shop closed on Saturdays has no missing Saturdays."""

    weekdays: tuple[int, ...] = tuple(range(7))  # Monday = 0
    holidays: tuple[str, ...] = ()  # YYYY-MM-DD, or MM-DD for every year

    def is_open(self, day: dt.date) -> bool:
        closed = day.isoformat() in self.holidays or day.strftime("%m-%d") in self.holidays
        return day.weekday() in self.weekdays and not closed


@dataclass(frozen=True)
class CancelMarker:
    """Events whose `column` starts with `prefix` are cancellations (event type CANCELLATION)."""

    column: str
    prefix: str


@dataclass(frozen=True)
class TaskSpec:
    """What is learnt. `entity_churn` reads the dataset's label and event settings; the rows
    kinds make each row of `table` an example: `target` (string classes mapped to 0/1 by
    `labels`), `key` (a column, or SURROGATE_KEY hashed from the row), `time` (the out-of-time
    split's clock, cut into periods of `period_days` ending at the latest day) and the feature
    columns."""

    kind: str = "entity_churn"
    table: str | None = None
    target: str | None = None
    labels: dict[str, int] | None = None
    time: str | None = None
    key: str | None = None
    surrogate_key: bool = False
    numeric: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    period_days: int = 7
    # the labelled examples of the latest `max_periods` periods only (None: the whole history):
    # where the label rate or the relation moved, older rows pull the model (and its
    # calibration) towards what no longer holds
    max_periods: int | None = None
    # a row's target is known this many days after its day (its time, in the table's local
    # days), whatever the lake holds: a historical export carries outcomes nobody knew when the
    # row landed (an invoice's paid_late, a loan's default), and training, the monitor and the
    # backtest must not read them sooner. Rows of the latest `label_delay_days` days are the
    # prediction set; the dataset's label horizon is this delay (labels mature after it)
    label_delay_days: int = 0
    # a null target is an outcome still to come (the row is scored) for this many days after
    # its row, then a missing one (neither learnt nor scored: a sensor that read nothing, a
    # survey left blank); None: every null target is pending, however old
    pending_days: int | None = None

    @property
    def rows(self) -> bool:
        return self.kind in ROWS_KINDS

    @property
    def regression(self) -> bool:
        return self.kind == "rows_regression"


@dataclass(frozen=True)
class DatasetConfig:
    name: str
    entity_key: str
    tables: tuple[TableSpec, ...]
    activity_types: tuple[str, ...]
    event_features: dict[str, str]
    amount_types: tuple[str, ...]
    entity_features: EntityFeatures = field(default_factory=EntityFeatures)
    label: LabelSpec = field(default_factory=LabelSpec)
    event_type_column: str | None = "event_type"  # None: every event is PLAIN_EVENT
    amount_column: str | None = "amount"
    task: TaskSpec = field(default_factory=TaskSpec)
    calendar: Calendar = field(default_factory=Calendar)
    cancel_marker: CancelMarker | None = None

    @property
    def event_types(self) -> tuple[str, ...] | None:
        """The event types there can be (None: any value of the event-type column)."""
        if self.event_type_column is None:
            types = (PLAIN_EVENT,)
        else:
            types = self.events.column(self.event_type_column).allowed
        if types is not None and self.cancel_marker is not None:
            types = (*types, CANCELLATION)
        return types

    def table(self, name: str) -> TableSpec:
        for table in self.tables:
            if table.name == name:
                return table
        raise KeyError(f"dataset '{self.name}' has no table '{name}'")

    def table_by_role(self, role: str) -> TableSpec | None:
        return next((t for t in self.tables if t.role == role), None)

    @property
    def events(self) -> TableSpec:
        table = self.table_by_role("events")
        if table is None:  # dataset_from_params guarantees one
            raise KeyError(f"dataset '{self.name}' has no events table")
        return table

    @property
    def categorical_inputs(self) -> tuple[str, ...]:
        """The columns the config declares categorical model inputs (an int64 one included)."""
        if self.task.rows:
            return self.task.categorical
        return self.entity_features.categorical

    @property
    def attribute_table(self) -> TableSpec | None:
        """The table entity attributes are read from (None: no attributes)."""
        if self.entity_features.table is None:
            return None
        return self.table(self.entity_features.table)


# ---------------------------------------------------------------------------------------------
# Derived columns: a tiny arithmetic language over a table's numeric and timestamp columns. It
# is parsed with `ast` and evaluated by walking the whitelisted nodes, never with eval: a config
# file must not be able to run code.

_BINARY = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.divide}
_UNARY = {ast.USub: np.negative, ast.UAdd: np.positive}
# the wall-clock parts of a timestamp in the table's time zone: an hour of demand, a weekday of
# a clinic, follow local time, across DST too (weekday: 0 = Monday)
_PANDAS_PARTS = {
    "hour": "hour", "weekday": "day_of_week", "month": "month", "day": "day",
    "day_of_year": "day_of_year",
}  # fmt: skip
CALENDAR_PARTS = tuple(_PANDAS_PARTS)
# each part's whole-number range: a derived `hour(t)` is 0..23 whatever the training data held
CALENDAR_RANGES = {
    "hour": (0, 23), "weekday": (0, 6), "month": (1, 12), "day": (1, 31),
    "day_of_year": (1, 366),
}  # fmt: skip
EXPRESSION_HELP = (
    "numbers, column names, + - * / and parentheses, and "
    f"{', '.join(f'{p}(timestamp)' for p in CALENDAR_PARTS)}"
)


def parse_expression(text: str) -> ast.expr:
    """Parse a derived-column expression; ValueError names what is not allowed."""
    try:
        tree = ast.parse(str(text).strip(), mode="eval").body
    except SyntaxError as exc:
        raise ValueError(f"not an expression ({exc.msg}); allowed: {EXPRESSION_HELP}") from exc
    for node in ast.walk(tree):
        if isinstance(node, (ast.Load, ast.operator, ast.unaryop)):
            continue  # judged with the node they belong to
        if isinstance(node, ast.BinOp):
            ok = type(node.op) in _BINARY
        elif isinstance(node, ast.UnaryOp):
            ok = type(node.op) in _UNARY
        elif isinstance(node, ast.Constant):
            ok = type(node.value) in (int, float)
        elif isinstance(node, ast.Call):
            ok = (
                isinstance(node.func, ast.Name)
                and node.func.id in CALENDAR_PARTS
                and len(node.args) == 1
                and isinstance(node.args[0], ast.Name)
                and not node.keywords
            )
        else:
            ok = isinstance(node, ast.Name)
        if not ok:
            raise ValueError(f"'{ast.unparse(node)}' is not allowed; allowed: {EXPRESSION_HELP}")
    return tree


def expression_columns(text: str) -> set[str]:
    """The column names an expression reads (a calendar part's timestamp included)."""
    tree = parse_expression(text)
    functions = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and id(n) not in functions}


def calendar_range(text: str) -> tuple[int, int] | None:
    """The whole-number range of an expression that is one calendar part (`hour(t)`), else
    None (an arithmetic over it has no range this can know)."""
    try:
        tree = parse_expression(text)
    except ValueError:
        return None
    if isinstance(tree, ast.Call) and isinstance(tree.func, ast.Name):
        return CALENDAR_RANGES.get(tree.func.id)
    return None


def calendar_columns(text: str) -> set[str]:
    """The columns an expression reads a calendar part of (timestamps)."""
    return {
        n.args[0].id  # type: ignore[attr-defined]
        for n in ast.walk(parse_expression(text))
        if isinstance(n, ast.Call)
    }


def _instants(values: pd.Series) -> pd.Series:
    """Timestamps as naive UTC (validate's typing; a tz-aware column is converted)."""
    import pandas as pd

    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC").dt.tz_localize(None)
    return pd.to_datetime(values)


def _operand(values: pd.Series, date_zone: str | None = None) -> np.ndarray:
    """A column as float64: a timestamp as seconds since 1970-01-01 UTC; a date (`date_zone`:
    its table's zone) as its local midnight's, so that a filing time minus its accident date
    is the time since that day began where both happened."""
    import pandas as pd

    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        instants = _instants(values)
        if date_zone is not None and date_zone != "UTC":
            local = instants.dt.tz_localize(date_zone, ambiguous=True, nonexistent="shift_forward")
            instants = local.dt.tz_convert("UTC").dt.tz_localize(None)
        values = (instants - pd.Timestamp(0)).dt.total_seconds()
    return pd.to_numeric(values).to_numpy(dtype="float64", na_value=np.nan)


def _calendar_part(values: pd.Series, part: str, zone: str) -> np.ndarray:
    stamps = _instants(values)
    if zone != "UTC":
        stamps = stamps.dt.tz_localize("UTC").dt.tz_convert(zone)
    return getattr(stamps.dt, _PANDAS_PARTS[part]).to_numpy(dtype="float64", na_value=np.nan)


def evaluate_expression(
    text: str,
    frame: pd.DataFrame,
    zones: Mapping[str, str] | None = None,
    dates: Mapping[str, str] | None = None,
) -> pd.Series:
    """Evaluate a derived-column expression over `frame`'s columns, as nullable Float64.

    A timestamp column (naive UTC, as validate types it) reads as seconds since 1970-01-01, so
    a difference of two is a duration in seconds; `hour(ts)` and the other calendar parts read
    its wall clock in `zones[column]` (the table's time zone). A date column reads as its
    midnight in `dates[column]` (the table's zone; absent: UTC), its calendar parts as the date
    itself. A null operand, or a non-finite result (division by zero), gives a null value.
    """
    import pandas as pd

    zones, dates = zones or {}, dates or {}

    def walk(node: ast.expr) -> np.ndarray | float:
        if isinstance(node, ast.Constant):
            return float(node.value)
        if isinstance(node, ast.Name):
            return _operand(frame[node.id], dates.get(node.id))
        if isinstance(node, ast.Call):
            column = node.args[0].id  # type: ignore[attr-defined]
            part = node.func.id  # type: ignore[attr-defined]
            return _calendar_part(frame[column], part, zones.get(column, "UTC"))
        if isinstance(node, ast.UnaryOp):
            return _UNARY[type(node.op)](walk(node.operand))
        if isinstance(node, ast.BinOp):
            return _BINARY[type(node.op)](walk(node.left), walk(node.right))
        raise ValueError(f"'{ast.unparse(node)}' is not allowed")  # parse_expression stops it

    with np.errstate(all="ignore"):
        values = np.broadcast_to(walk(parse_expression(text)), (len(frame),)).astype("float64")
    values = np.where(np.isfinite(values), values, np.nan)
    return pd.Series(pd.array(values, dtype="Float64"), index=frame.index)


def surrogate_keys(frame: pd.DataFrame, columns: tuple[str, ...], partition: str) -> pd.Series:
    """A key for rows that have none: 16 hex digits of a hash of the partition and the row's
    typed values. Deterministic across runs and engines that type alike; identical rows of one
    partition share it, so prepare keeps one of them (a re-sent row, not a new example)."""
    import pandas as pd

    content = frame.loc[:, list(columns)].astype("string")
    content["_partition"] = partition
    hashed = pd.util.hash_pandas_object(content, index=False).to_numpy(dtype="uint64")
    return pd.Series([f"{h:016x}" for h in hashed], index=frame.index, dtype="string")


# ---------------------------------------------------------------------------------------------
# Parsing params' `dataset` section


class _Where:
    """Names the file and key of every error."""

    def __init__(self, dataset: str) -> None:
        self.file = f"conf/dataset/{dataset}.yaml"

    def fail(self, key: str, expected: str, got: Any = ...) -> DatasetConfigError:
        tail = "" if got is ... else f", got {got!r}"
        return DatasetConfigError(f"{self.file}: {key}: expected {expected}{tail}")

    def mapping(
        self, raw: Any, key: str, known: tuple[str, ...] | None = None
    ) -> Mapping[str, Any]:
        """`raw` as a mapping whose keys are all `known` (any keys when None)."""
        if not isinstance(raw, Mapping):
            raise self.fail(key or "(top level)", "a mapping", raw)
        unknown = sorted(str(k) for k in raw if known is not None and k not in known)
        if unknown:
            where = f"{key}.{unknown[0]}" if key else unknown[0]
            raise self.fail(where, known_key(unknown[0], known or ()))
        return raw

    def strings(self, raw: Any, key: str) -> tuple[str, ...]:
        if not isinstance(raw, (list, tuple)) or not all(isinstance(v, str) for v in raw):
            raise self.fail(key, "a list of strings", raw)
        repeated = sorted({v for v in raw if raw.count(v) > 1})
        if repeated:  # a feature listed twice fails at training, in a library's traceback
            raise self.fail(key, f"each value once, got {', '.join(repeated)} more than once")
        return tuple(raw)

    def name(self, raw: Any, key: str) -> str:
        if not isinstance(raw, str) or not _IDENTIFIER.match(raw):
            raise self.fail(key, "a name (letters, digits, _)", raw)
        return raw

    def number(self, raw: Any, key: str) -> float | None:
        if raw is not None and (isinstance(raw, bool) or not isinstance(raw, (int, float))):
            raise self.fail(key, "a number", raw)
        return raw

    def positive_int(self, raw: Any, key: str) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
            raise self.fail(key, "a whole number of days >= 1", raw)
        return raw

    def column_of(self, table: TableSpec, name: Any, key: str, types: tuple[str, ...] = ()) -> None:
        names = [c.name for c in table.columns]
        if name not in names:
            raise self.fail(key, f"a column of table '{table.name}' ({', '.join(names)})", name)
        ctype = table.column(name).type
        if types and ctype not in types:
            raise self.fail(key, f"a column of type {' or '.join(types)}, '{name}' is {ctype}")


def _checks(spec: Mapping[str, Any], ctype: str, key: str, w: _Where) -> dict[str, Any]:
    """The checks of one column, each checked against the column's type."""
    out: dict[str, Any] = {"nullable": spec.get("nullable", True), "unique": spec.get("unique")}
    for flag in ("nullable", "unique"):
        if out[flag] is not None and not isinstance(out[flag], bool):
            raise w.fail(f"{key}.{flag}", "true or false", out[flag])
    out["unique"] = bool(out["unique"])
    for bound in ("min", "max"):
        out[bound] = w.number(spec.get(bound), f"{key}.{bound}")
        if out[bound] is not None and ctype not in NUMERIC_TYPES:
            raise w.fail(f"{key}.{bound}", f"a range only on int64/float64 columns, not {ctype}")
    if out["min"] is not None and out["max"] is not None and out["min"] > out["max"]:
        raise w.fail(f"{key}.min", f"at most max ({out['max']})", out["min"])
    allowed = spec.get("allowed")
    if allowed is not None:
        if ctype != "string":
            raise w.fail(f"{key}.allowed", f"allowed values only on string columns, not {ctype}")
        allowed = w.strings(allowed, f"{key}.allowed")
    out["allowed"] = allowed
    pattern = spec.get("pattern")
    if pattern is not None:
        if ctype != "string":
            raise w.fail(f"{key}.pattern", f"a pattern only on string columns, not {ctype}")
        try:
            re.compile(str(pattern))
        except re.error as exc:
            raise w.fail(f"{key}.pattern", f"a regular expression ({exc})", pattern) from exc
    out["pattern"] = pattern
    out["missing"] = _missing_codes(spec.get("missing"), ctype, f"{key}.missing", w)
    return out


def _missing_codes(raw: Any, ctype: str, key: str, w: _Where) -> tuple[Any, ...]:
    """A column's missing-value codes: strings on any column (a CSV's "NULL" or "NA" in an
    int64 column, read as text before the cast), numbers on a numeric one (-200, compared
    after it: "-200" in a CSV and -200.0 in a parquet file alike)."""
    if raw is None:
        return ()
    codes = raw if isinstance(raw, list) else [raw]
    numeric = ctype in NUMERIC_TYPES
    for code in codes:
        number = isinstance(code, int | float) and not isinstance(code, bool)
        if not (isinstance(code, str) or (numeric and number)):
            what = "numbers or strings" if numeric else "strings"
            raise w.fail(key, f"a list of {what} read as null (a {ctype} column)", raw)
    return tuple(codes)


def _column(name: str, raw: Any, key: str, w: _Where) -> ColumnSpec:
    spec = w.mapping(raw, key, _COLUMN_KEYS)
    ctype = spec.get("type")
    if ctype not in COLUMN_TYPES:
        raise w.fail(f"{key}.type", f"one of {COLUMN_TYPES}", ctype)
    source = spec.get("source")
    if source is not None and (not isinstance(source, str) or not source.strip()):
        raise w.fail(f"{key}.source", "the column's name in the landed files (text)", source)
    return ColumnSpec(name=name, type=ctype, source=source, **_checks(spec, ctype, key, w))


def _column_name(raw: Any, key: str, w: _Where) -> str:
    """A declared column's name; a file's column named otherwise (`No-show`) is declared under
    a name and read with `source`."""
    if isinstance(raw, str) and raw and not _IDENTIFIER.match(raw):
        suggested = re.sub(r"\W+", "_", raw).strip("_") or "column"
        if suggested[0].isdigit():
            suggested = f"c_{suggested}"
        raise w.fail(
            f"{key}.{raw}",
            f"a name (letters, digits, _); read a file's column '{raw}' as "
            f'`{suggested}: {{source: "{raw}", type: ...}}`',
        )
    return w.name(raw, key)


def _derived(name: str, raw: Any, key: str, raw_columns: tuple[ColumnSpec, ...], w: _Where):
    spec = {"expr": raw} if isinstance(raw, str) else w.mapping(raw, key, _DERIVED_KEYS)
    expr = spec.get("expr")
    if not isinstance(expr, str):
        raise w.fail(f"{key}.expr" if not isinstance(raw, str) else key, "an expression", expr)
    try:
        used, stamped = expression_columns(expr), calendar_columns(expr)
    except ValueError as exc:
        raise w.fail(key, f"an arithmetic expression: {exc}", expr) from exc
    timestamps = [c.name for c in raw_columns if c.type in ("timestamp", "date")]
    not_timestamps = sorted(stamped - set(timestamps))
    if not_timestamps:
        listed = ", ".join(timestamps)
        raise w.fail(key, f"a calendar part of a timestamp or date column ({listed})",
                     not_timestamps[0])  # fmt: skip
    readable = [c.name for c in raw_columns if c.type in NUMERIC_TYPES] + timestamps
    unknown = sorted(used - set(readable))
    if unknown:
        raise w.fail(
            key, f"an expression over numeric or timestamp columns ({', '.join(readable)})",
            unknown[0],
        )  # fmt: skip
    return ColumnSpec(name=name, type="float64", expr=expr, **_checks(spec, "float64", key, w))


def _dst(raw: Any, where: str, w: _Where) -> Mapping[str, str]:
    dst = w.mapping(raw or {}, f"{where}.dst", _DST_KEYS)
    for key, choices in (("nonexistent", DST_NONEXISTENT), ("ambiguous", DST_AMBIGUOUS)):
        if dst.get(key, choices[0]) not in choices:
            raise w.fail(f"{where}.dst.{key}", f"one of {', '.join(choices)}", dst[key])
    return dst


def _clock(spec: Mapping[str, Any], where: str, w: _Where) -> tuple[str, Mapping, str]:
    """How a table's times are read: its zone, DST policy and offsets."""
    timezone = spec.get("timezone", "UTC")
    try:
        zoneinfo.ZoneInfo(str(timezone))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise w.fail(
            f"{where}.timezone", "an IANA time zone (UTC, Europe/Paris)", timezone
        ) from exc
    offsets = spec.get("offsets", OFFSETS[0])
    if offsets not in OFFSETS:
        raise w.fail(f"{where}.offsets", f"one of {', '.join(OFFSETS)}", offsets)
    return str(timezone), _dst(spec.get("dst"), where, w), offsets


def _table(name: str, raw: Any, entity_key: str | None, w: _Where) -> TableSpec:
    """One table; `entity_key` None for a rows task's table (its key is the task's)."""
    where = f"tables.{name}"
    spec = w.mapping(raw, where, _TABLE_KEYS)
    role = spec.get("role", "rows" if entity_key is None else None)
    roles = ("rows",) if entity_key is None else TABLE_ROLES[:2]
    if role not in roles:
        raise w.fail(f"{where}.role", f"one of {roles}", role)
    fmt = spec.get("format", "parquet")
    if fmt not in FILE_FORMATS:
        raise w.fail(f"{where}.format", f"one of {FILE_FORMATS}", fmt)
    timezone, dst, offsets = _clock(spec, where, w)
    columns_raw = w.mapping(spec.get("columns"), f"{where}.columns")
    if not columns_raw:
        raise w.fail(f"{where}.columns", "at least one column")
    columns = tuple(
        _column(_column_name(c, f"{where}.columns", w), s, f"{where}.columns.{c}", w)
        for c, s in columns_raw.items()
    )
    in_files = Counter(c.file_name for c in columns)
    twice = sorted(n for n, count in in_files.items() if count > 1)
    if twice:
        raise w.fail(f"{where}.columns", "each file column read once (by name or `source`)",
                     twice[0])  # fmt: skip
    derived_raw = w.mapping(spec.get("derived") or {}, f"{where}.derived")
    for d in derived_raw:
        if d in columns_raw:
            raise w.fail(f"{where}.derived.{d}", "a new column name, not a declared column")
    derived = tuple(
        _derived(w.name(d, f"{where}.derived"), s, f"{where}.derived.{d}", columns, w)
        for d, s in derived_raw.items()
    )
    surrogate = spec.get("surrogate_key", False)
    if not isinstance(surrogate, bool):
        raise w.fail(f"{where}.surrogate_key", "true or false", surrogate)
    table = TableSpec(
        name=name,
        role=role,
        key=spec.get("key"),
        timestamp=spec.get("timestamp"),
        columns=columns + derived,
        partition=w.name(spec.get("partition", "date"), f"{where}.partition"),
        format=fmt,
        timezone=str(timezone),
        dst_nonexistent=dst.get("nonexistent", DST_NONEXISTENT[0]),
        dst_ambiguous=dst.get("ambiguous", DST_AMBIGUOUS[0]),
        offsets=offsets,
        entity_key=entity_key if role == "events" else None,
    )
    if surrogate:
        table = _with_surrogate(table, spec.get("key", SURROGATE_KEY), f"{where}.key", w)
    if entity_key is not None or table.key is not None:
        w.column_of(table, table.key, f"{where}.key")
    w.column_of(table, table.timestamp, f"{where}.timestamp", ("timestamp", "date"))
    if entity_key is not None and entity_key not in columns_raw:
        raise w.fail(f"{where}.columns", f"a column '{entity_key}' (the dataset's entity_key)")
    return table


def _with_surrogate(table: TableSpec, key: Any, where: str, w: _Where) -> TableSpec:
    """`table` keyed by a new column `key` that validate hashes from each row (surrogate_keys)."""
    key = w.name(key, where)
    if key in {c.name for c in table.columns}:
        raise w.fail(where, "a new column name for the surrogate key", key)
    column = ColumnSpec(name=key, type="string", nullable=False, surrogate=True)
    return replace(table, key=key, columns=(*table.columns, column))


def _entity_features(raw: Any, tables: tuple[TableSpec, ...], w: _Where) -> EntityFeatures:
    spec = w.mapping(raw or {}, "entity_features", _ENTITY_FEATURE_KEYS)
    default = next((t.name for t in tables if t.role == "entities"), None)
    default = default or next(t.name for t in tables if t.role == "events")
    source = spec.get("table", default)
    by_name = {t.name: t for t in tables}
    if source not in by_name:
        raise w.fail(
            "entity_features.table", f"a table of the dataset ({', '.join(by_name)})", source
        )
    table = by_name[source]
    ef = EntityFeatures(
        table=source,
        categorical=w.strings(spec.get("categorical") or [], "entity_features.categorical"),
        numeric=w.strings(spec.get("numeric") or [], "entity_features.numeric"),
        signup_date=spec.get("signup_date"),
    )
    for name in ef.categorical:
        w.column_of(table, name, "entity_features.categorical", CATEGORICAL_TYPES)
    for name in ef.numeric:
        w.column_of(table, name, "entity_features.numeric", NUMERIC_TYPES)
    if ef.signup_date is not None:
        w.column_of(table, ef.signup_date, "entity_features.signup_date", ("date", "timestamp"))
    return ef


def _label(raw: Any, w: _Where) -> LabelSpec:
    spec = w.mapping(raw, "label", _LABEL_KEYS)
    missing = [k for k in _LABEL_KEYS if k not in spec]
    if missing:
        raise w.fail(
            f"label.{missing[0]}", "a value (label needs name, horizon_days, lookback_days)"
        )
    return LabelSpec(
        name=w.name(spec["name"], "label.name"),
        horizon_days=w.positive_int(spec["horizon_days"], "label.horizon_days"),
        lookback_days=w.positive_int(spec["lookback_days"], "label.lookback_days"),
    )


def _event_types(raw: Mapping[str, Any], allowed: tuple[str, ...] | None, where: str, w: _Where):
    """activity_types, amount_types, event_features, each checked against the `allowed` event
    types (`where` says where those come from)."""
    activity = w.strings(raw.get("activity_types"), "activity_types")
    amount_types = w.strings(raw.get("amount_types") or [], "amount_types")
    features = w.mapping(raw.get("event_features"), "event_features")
    for prefix in features.values():
        w.name(prefix, "event_features")
    if allowed is not None:
        for key, values in (
            ("activity_types", activity),
            ("amount_types", amount_types),
            ("event_features", tuple(features)),
        ):
            bad = [v for v in values if v not in allowed]
            if bad:
                raise w.fail(key, f"event types {where} {allowed}", bad[0])
    return activity, amount_types, {str(k): str(v) for k, v in features.items()}


def _calendar(raw: Any, w: _Where) -> Calendar:
    spec = w.mapping(raw or {}, "calendar", _CALENDAR_KEYS)
    names = w.strings(spec.get("weekdays") or list(WEEKDAYS), "calendar.weekdays")
    bad = [d for d in names if d.lower() not in WEEKDAYS]
    if bad or not names:
        raise w.fail("calendar.weekdays", f"a non-empty list of {', '.join(WEEKDAYS)}", bad)
    holidays = spec.get("holidays") or []
    if not isinstance(holidays, (list, tuple)):
        raise w.fail("calendar.holidays", "a list of dates YYYY-MM-DD", holidays)
    days = []
    for value in holidays:
        text = value.isoformat() if isinstance(value, dt.date) else str(value)
        try:
            dt.date.fromisoformat(text if len(text) == 10 else f"2000-{text}")
        except ValueError as exc:
            expected = "dates YYYY-MM-DD or MM-DD (every year)"
            raise w.fail("calendar.holidays", expected, value) from exc
        days.append(text)
    weekdays = tuple(sorted({WEEKDAYS.index(d.lower()) for d in names}))
    return Calendar(weekdays=weekdays, holidays=tuple(sorted(set(days))))


def _cancel_marker(raw: Any, events: TableSpec, w: _Where) -> CancelMarker | None:
    if raw is None:
        return None
    spec = w.mapping(raw, "cancel_marker", _CANCEL_KEYS)
    w.column_of(events, spec.get("column"), "cancel_marker.column", ("string",))
    prefix = spec.get("prefix")
    if not isinstance(prefix, str) or not prefix:
        raise w.fail("cancel_marker.prefix", "a non-empty string", prefix)
    return CancelMarker(column=spec["column"], prefix=prefix)


def _task_kind(raw: Mapping[str, Any], w: _Where) -> tuple[str, Mapping[str, Any]]:
    task = w.mapping(raw.get("task") or {}, "task", _TASK_KEYS)
    kind = task.get("kind", "entity_churn")
    if kind not in TASK_KINDS:
        raise w.fail("task.kind", f"one of {', '.join(TASK_KINDS)}", kind)
    if kind == "entity_churn":
        extra = sorted(k for k in task if k != "kind")
        if extra:
            raise w.fail(
                f"task.{extra[0]}",
                "only `kind` for task.kind entity_churn (its label is the `label` block)",
            )
    return kind, task


def _rows_features(raw: Any, table: TableSpec, skip: set[str], w: _Where):
    """(numeric, categorical): the listed columns, or every column but `skip` by its type."""
    if raw is None:
        usable = [c for c in table.columns if c.name not in skip and not c.surrogate]
        numeric = tuple(c.name for c in usable if c.type in NUMERIC_TYPES)
        categorical = tuple(c.name for c in usable if c.type in ("string", "bool"))
        return numeric, categorical
    spec = w.mapping(raw, "task.features", _ROWS_FEATURE_KEYS)
    numeric = w.strings(spec.get("numeric") or [], "task.features.numeric")
    categorical = w.strings(spec.get("categorical") or [], "task.features.categorical")
    for name in numeric:
        w.column_of(table, name, "task.features.numeric", NUMERIC_TYPES)
    for name in categorical:
        w.column_of(table, name, "task.features.categorical", CATEGORICAL_TYPES)
    for name in (*numeric, *categorical):
        if name in skip:
            raise w.fail("task.features", "feature columns other than target, key and time", name)
    return numeric, categorical


def _rows_target(task: Mapping[str, Any], kind: str, table: TableSpec, w: _Where):
    """(target column, labels): a numeric target for a regression; for a classification a 0/1
    int or bool column, or a string column with `labels` mapping each class to 0 or 1."""
    target = task.get("target")
    w.column_of(table, target, "task.target")
    ctype = table.column(target).type
    labels = task.get("labels")
    if kind == "rows_regression":
        if labels is not None:
            raise w.fail("task.labels", "no labels for task.kind rows_regression")
        w.column_of(table, target, "task.target", NUMERIC_TYPES)
        return target, None
    if ctype == "string":
        if labels is None:
            raise w.fail("task.labels", f"a mapping of the string target '{target}' to 0/1")
        spec = w.mapping(labels, "task.labels")
        mapped = {str(k): v for k, v in spec.items()}
        codes = list(mapped.values())
        if any(type(v) is not int for v in codes) or sorted(set(codes)) != [0, 1]:
            raise w.fail("task.labels", "each class mapped to 0 or 1, both used", dict(mapped))
        allowed = table.column(target).allowed
        unknown = sorted(set(mapped) - set(allowed or mapped))
        if unknown:
            raise w.fail("task.labels", f"classes allowed in column '{target}' {allowed}", unknown)
        return target, mapped
    if labels is not None:
        raise w.fail("task.labels", f"labels only for a string target ('{target}' is {ctype})")
    if ctype not in ("int64", "bool"):
        raise w.fail("task.target", f"a 0/1 int64, bool or string column, '{target}' is {ctype}")
    return target, None


def _whole(raw: Any, least: int) -> bool:
    return not isinstance(raw, bool) and isinstance(raw, int) and raw >= least


def _rows_timing(task: Mapping[str, Any], w: _Where) -> dict[str, Any]:
    """A rows task's clock: period_days, max_periods, label_delay_days, pending_days."""
    max_periods = task.get("max_periods")
    # the out-of-time split needs a train, a valid and a test period at least
    if max_periods is not None and not _whole(max_periods, 3):
        raise w.fail("task.max_periods", "null or a whole number of periods >= 3", max_periods)
    delay = task.get("label_delay_days", 0)
    if not _whole(delay, 0):
        raise w.fail("task.label_delay_days", "a whole number of days >= 0", delay)
    pending = task.get("pending_days")
    if pending is not None and not _whole(pending, delay):
        raise w.fail(
            "task.pending_days", f"null or a whole number of days >= label_delay_days ({delay})",
            pending,
        )  # fmt: skip
    return {
        "period_days": w.positive_int(task.get("period_days", 7), "task.period_days"),
        "max_periods": max_periods,
        "label_delay_days": delay,
        "pending_days": pending,
    }


def _rows_dataset(raw: Mapping[str, Any], kind: str, task: Mapping[str, Any], w: _Where):
    """A rows task's dataset: one table whose rows are the examples."""
    extra = sorted(k for k in raw if k not in _ROWS_DATASET_KEYS)
    if extra:
        raise w.fail(extra[0], f"no such key for task.kind {kind} (entity_churn only)")
    if "tables" not in raw:
        raise w.fail("tables", "a value (required key)")
    tables_raw = w.mapping(raw["tables"], "tables")
    if len(tables_raw) != 1:
        raise w.fail("tables", f"exactly one table for task.kind {kind}", list(tables_raw))
    (table_name,) = tables_raw
    table = _table(w.name(table_name, "tables"), tables_raw[table_name], None, w)
    if task.get("table", table.name) != table.name:
        raise w.fail("task.table", f"the dataset's table ('{table.name}')", task.get("table"))
    surrogate = task.get("surrogate_key", False)
    if not isinstance(surrogate, bool):
        raise w.fail("task.surrogate_key", "true or false", surrogate)
    key = task.get("key", table.key if not surrogate else SURROGATE_KEY)
    if surrogate and not any(c.surrogate for c in table.columns):
        table = _with_surrogate(table, key, "task.key", w)
    elif key is None:
        raise w.fail("task.key", "a key column, or surrogate_key: true when the rows have none")
    w.column_of(table, key, "task.key")
    time = task.get("time", table.timestamp)
    w.column_of(table, time, "task.time", ("timestamp", "date"))
    table = replace(table, key=key)
    target, labels = _rows_target(task, kind, table, w)
    if target in (key, time):
        raise w.fail("task.target", "a column other than the key and time", target)
    numeric, categorical = _rows_features(task.get("features"), table, {target, key, time}, w)
    if not numeric and not categorical:
        raise w.fail("task.features", "at least one feature column")
    timing = _rows_timing(task, w)
    spec = TaskSpec(
        kind=kind,
        table=table.name,
        target=target,
        labels=labels,
        time=time,
        key=key,
        surrogate_key=surrogate,
        numeric=numeric,
        categorical=categorical,
        **timing,
    )
    return DatasetConfig(
        name=raw["name"],
        entity_key=key,
        tables=(table,),
        activity_types=(),
        event_features={},
        amount_types=(),
        # the target is known with its row, or `label_delay_days` after it: the horizon the
        # monitor and the backtest wait for before a prediction's outcome is read
        label=LabelSpec(name=target, horizon_days=timing["label_delay_days"], lookback_days=0),
        event_type_column=None,
        amount_column=None,
        task=spec,
        calendar=_calendar(raw.get("calendar"), w),
    )


def dataset_from_params(raw: Mapping[str, Any]) -> DatasetConfig:
    """Build the dataset config from params' `dataset` section.

    Raises `DatasetConfigError` naming `conf/dataset/<name>.yaml`, the key and the expectation.
    """
    name = raw.get("name") if isinstance(raw, Mapping) else None
    w = _Where(name if isinstance(name, str) else "<name>")
    raw = w.mapping(raw, "", _DATASET_KEYS)
    if "name" not in raw:
        raise w.fail("name", "a value (required key)")
    w.name(name, "name")
    kind, task = _task_kind(raw, w)
    if kind != "entity_churn":
        return _rows_dataset(raw, kind, task, w)
    required = ("entity_key", "tables", "activity_types", "event_features", "label")
    missing = [k for k in required if k not in raw]
    if missing:
        raise w.fail(missing[0], "a value (required key)")
    entity_key = w.name(raw["entity_key"], "entity_key")
    tables_raw = w.mapping(raw["tables"], "tables")
    tables = tuple(_table(w.name(t, "tables"), s, entity_key, w) for t, s in tables_raw.items())
    roles = [t.role for t in tables]
    if roles.count("events") != 1 or roles.count("entities") > 1:
        raise w.fail(
            "tables", "one table with role 'events' and at most one with role 'entities'", roles
        )
    events = next(t for t in tables if t.role == "events")
    cancel = _cancel_marker(raw.get("cancel_marker"), events, w)
    # an explicit null: the events have no type column, each is PLAIN_EVENT (or CANCELLATION)
    type_col = raw.get("event_type_column", "event_type")
    if type_col is None:
        allowed: tuple[str, ...] | None = (PLAIN_EVENT,)
        where = "(no event_type_column: every event is 'event')"
    else:
        w.column_of(events, type_col, "event_type_column", ("string",))
        allowed = events.column(type_col).allowed
        where = f"allowed in {events.name}.{type_col}"
    if allowed is not None and cancel is not None:
        allowed = (*allowed, CANCELLATION)
        where += " or 'cancellation' (cancel_marker)"
    amount_col = raw.get("amount_column")
    if amount_col is not None:
        w.column_of(events, amount_col, "amount_column", NUMERIC_TYPES)
    activity, amount_types, features = _event_types(raw, allowed, where, w)
    if amount_types and amount_col is None:
        raise w.fail("amount_column", "a numeric events column since amount_types is set")
    return DatasetConfig(
        name=name,
        entity_key=entity_key,
        tables=tables,
        activity_types=activity,
        event_features=features,
        amount_types=amount_types,
        entity_features=_entity_features(raw.get("entity_features"), tables, w),
        label=_label(raw["label"], w),
        event_type_column=type_col,
        amount_column=amount_col,
        calendar=_calendar(raw.get("calendar"), w),
        cancel_marker=cancel,
    )


def settings_for(params: Mapping[str, Any], name: str) -> dict[str, Any]:
    """Section `name` of params as this dataset wants it: conf/'s defaults (`params[name]`),
    then the keys the dataset's own config sets under the same name (`dataset.<name>`), which
    win. Composition (and `load_params`) already merged them, so on params.yaml this is
    `params[name]`; kept for params built by hand."""
    if name not in DATASET_SECTIONS:
        raise ValueError(f"params: a dataset cannot override section '{name}'")
    base = params.get(name) or {}
    dataset = params.get("dataset") or {}
    own = dataset.get(name) or {}
    for where, value in ((name, base), (f"dataset.{name}", own)):
        if not isinstance(value, Mapping):
            raise ValueError(f"params: '{where}' must be a mapping, got {type(value).__name__}")
    return {**base, **own}
