"""features for the rows kinds (`task.kind` rows_classification / rows_regression): each row of
the dataset's one table is an example.

The features stage calls this when the dataset's task is a rows kind; it writes the same files
as for entity churn (`snapshots.parquet`, `predict.parquet`, `feature_schema.json`,
`summary.json`), so split, train, evaluate, export, the card and the server need no kind of
their own beyond what the feature schema's `task` says (classification or regression).

- An example is a row with a target: its key (a column, or the surrogate key validate hashed),
  its `snapshot_date`, its time column, the configured features and the target (string classes
  mapped to 0/1 by `task.labels`; a regression target as float64).
- `snapshot_date` is the end of the row's `task.period_days` period, periods counted back from
  the last day holding a target: the rows of (L - p, L] get L, those of (L - 2p, L - p] get
  L - p, and so on. Split's out-of-time logic then works unchanged: the latest period is the
  test set, the one before it the valid set.
- The prediction set is the rows whose target is still null (outcomes not known yet), dated
  at the latest day of data. Where no target is null (a table whose outcomes always arrive
  with the row, like the sample lakes), it is the latest period's rows, without their target:
  the rows the model would have been asked about last, so batch predictions, the report and
  monitoring always have something to score.
- A target value the config does not map (`labels`) is an error naming it; rows without a time
  are counted in the summary and left out.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import ibis
import ibis.expr.types as ir

from stages.contract.feature_schema import CLASSIFICATION, REGRESSION, FeatureSchema, save_schema
from stages.lib.dataset import DatasetConfig, TaskSpec
from stages.lib.engine import EngineConfig, collect, connect, read_parquet, write_parquet
from stages.lib.io import write_json
from stages.lib.localtime import LocalDays, time_span
from stages.lib.predictions import SNAPSHOT_COL
from stages.lib.snapshots import (
    FeaturesConfig,
    category_types,
    check_champion_features,
    feature_names,
    frame_schema,
    without_excluded,
)

PENDING = "pending targets"
LATEST_PERIOD = "latest period"


def rows_features(dataset: DatasetConfig, cfg: FeaturesConfig) -> tuple[list[str], list[str]]:
    """(numeric, categorical): the task's feature columns minus `features.exclude`."""
    what = f"feature columns of conf/dataset/{dataset.name}.yaml"
    return without_excluded(list(dataset.task.numeric), list(dataset.task.categorical), cfg, what)


def split_columns(dataset: DatasetConfig, cfg: FeaturesConfig) -> list[str]:
    """The columns of the features stage's frames (the splits, the prediction set), target
    aside: a rows task's key, snapshot, time and features (a table keyed by its time has that
    column once); an entity task's key, snapshot and features. Every feature, those
    `features.exclude` leaves out of the model included: a champion that reads one must still
    be scored on the challenger's test split (the gate) and on the prediction set."""
    if not dataset.task.rows:
        numeric, categorical = feature_names(dataset, cfg)
        return [dataset.entity_key, SNAPSHOT_COL, *numeric, *categorical]
    task = dataset.task
    rows_features(dataset, cfg)  # an unknown exclusion fails here, one line naming it
    numeric, categorical = list(task.numeric), list(task.categorical)
    return list(dict.fromkeys([task.key, SNAPSHOT_COL, task.time, *numeric, *categorical]))


def target_value(table: ir.Table, dataset: DatasetConfig) -> ir.Value:
    """The target as the model learns it: 0/1 int64 for a classification (string classes
    through `task.labels`, bools as 0/1), float64 for a regression; null where unknown."""
    task = dataset.task
    raw = table[task.target]
    if task.regression:
        return raw.cast("float64")
    if task.labels is not None:
        return raw.cases(*task.labels.items(), else_=ibis.null("int64")).cast("int64")
    return raw.cast("int64")


def unmapped_targets(con: ibis.BaseBackend, table: ir.Table, dataset: DatasetConfig) -> list[str]:
    """Target values present in the data that `task.labels` does not map (sorted)."""
    task = dataset.task
    if task.labels is None:
        return []
    raw = table[task.target]
    bad = table.filter(raw.notnull() & ~raw.isin(list(task.labels))).select(value=raw).distinct()
    return sorted(str(r["value"]) for r in collect(con, bad).to_pylist())


def period_end(day: ir.IntegerValue, last: int, period_days: int) -> ir.Value:
    """The end of the `period_days` period holding `day` (a day number <= `last`), periods
    counted back from `last`, as a date."""
    back = ((last - day) // period_days) * period_days
    return (ibis.literal(dt.date(1970, 1, 1)) + (last - back).as_interval("D")).cast("date")


def build_rows(
    table: ir.Table,
    dataset: DatasetConfig,
    cfg: FeaturesConfig,
    *,
    last: dt.date,
    days: LocalDays,
) -> tuple[ir.Table, ir.Table]:
    """(labelled examples, prediction set) of `table`; `last` is the latest day with a target.
    Days (periods, the prediction date) are the table's local days: `days` (`table_days`).

    Columns: key, snapshot_date, the time column, numeric then categorical features, and the
    target in the labelled set. Ordered by snapshot, time, key, so the files' bytes do not
    depend on the engine's scan order.
    """
    task = dataset.task
    last_day = (last - dt.date(1970, 1, 1)).days
    timed = table.filter(table[task.time].notnull())
    day = days.day_number(timed[task.time])
    timed = timed.mutate(_day=day, _target=target_value(timed, dataset))
    columns = split_columns(dataset, cfg)
    order = list(dict.fromkeys([SNAPSHOT_COL, task.time, task.key]))
    newest = timed._day.max().as_scalar()
    timed = timed.mutate(_known=matured_target(timed._target, timed._day, newest, task))
    known = timed.filter(timed._known)
    if task.max_periods is not None:  # the training window: the latest periods only
        known = known.filter(known._day > last_day - task.max_periods * task.period_days)
    labelled = known.mutate(**{SNAPSHOT_COL: period_end(known._day, last_day, task.period_days)})
    labelled = labelled.mutate(**{task.target: labelled._target})
    labelled = labelled.select(*columns, task.target).order_by(order)
    pending = timed.filter(~timed._known)
    if task.pending_days is not None:  # older null targets are missing: neither set holds them
        pending = pending.filter(
            ~outcome_missing(pending._target, pending._day, newest, task.pending_days)
        )
    pending = pending.mutate(
        **{SNAPSHOT_COL: (ibis.literal(dt.date(1970, 1, 1)) + newest.as_interval("D")).cast("date")}
    )
    return labelled, pending.select(*columns).order_by(order)


def matured_target(
    target: ir.Value, day: ir.IntegerValue, newest: ir.IntegerValue, task: TaskSpec
) -> ir.BooleanValue:
    """Whether a row's target is known on the latest day `newest` (day numbers): it is not
    null and, with `task.label_delay_days`, its row is at least that many days older."""
    known = target.notnull()
    if task.label_delay_days:
        known = known & (day <= newest - task.label_delay_days)
    return known


def outcome_missing(
    target: ir.Value, day: ir.IntegerValue, newest: ir.IntegerValue, pending_days: int
) -> ir.BooleanValue:
    """Whether a row's outcome will not come: its target is still null `pending_days` (the
    task's) after its day."""
    return target.isnull() & (day <= newest - pending_days)


# a feature is judged by these only on enough rows: pending ones for "null exactly while the
# outcome is pending", labelled ones (and per value) for "one outcome per value"
LEAK_MIN_PENDING = 20
LEAK_MIN_ROWS = 100
LEAK_MIN_VALUE_ROWS = 10


def leaking_features(
    con: ibis.BaseBackend,
    labelled: ir.Table,
    pending: ir.Table,
    dataset: DatasetConfig,
    numeric: list[str],
    categorical: list[str],
) -> list[str]:
    """Why each input the model cannot have when it predicts is one (empty: none is), one
    phrase per column:
    - present on every labelled row and on no pending one: it arrives with the outcome (a
      booking's reservation_status), so the model would learn what it is asked to predict;
    - (classification) a category whose frequent values each come with one outcome only,
      covering nearly every row: the outcome written another way;
    - a category whose values barely repeat (an id, free text): nothing to learn from, and
      every request a new value."""
    task = dataset.task
    features = [*numeric, *categorical]
    counts = {"rows": labelled.count()}
    for i, f in enumerate(features):
        counts[f"null_{i}"] = labelled[f].isnull().sum()
    for i, f in enumerate(categorical):
        counts[f"distinct_{i}"] = labelled[f].nunique()
    waits = {"pending": pending.count()}
    waits.update({f"present_{i}": pending[f].notnull().sum() for i, f in enumerate(features)})
    found = collect(con, labelled.aggregate(**counts)).to_pylist()[0]
    found.update(collect(con, pending.aggregate(**waits)).to_pylist()[0])
    rows, waiting = int(found["rows"]), int(found["pending"] or 0)
    out: dict[str, str] = {}  # one reason per column, the first found
    for i, f in enumerate(features):
        if waiting >= LEAK_MIN_PENDING and not found[f"null_{i}"] and not found[f"present_{i}"]:
            out[f] = (
                f"'{f}' is set on every labelled row and on none of the {waiting} whose "
                "outcome is pending: it arrives with the outcome"
            )
    for i, f in enumerate(categorical):
        distinct = int(found[f"distinct_{i}"] or 0)
        if f in out or rows < LEAK_MIN_ROWS:
            continue
        if distinct > max(rows // 2, LEAK_MIN_ROWS):
            out[f] = f"'{f}' has {distinct} values in {rows} labelled rows: an id or free text"
        elif not task.regression and _one_outcome_per_value(con, labelled, f, task.target, rows):
            out[f] = f"'{f}': each of its frequent values comes with one outcome only"
    return list(out.values())


def _one_outcome_per_value(
    con: ibis.BaseBackend, labelled: ir.Table, column: str, target: str, rows: int
) -> bool:
    """Whether the values of `column` with at least LEAK_MIN_VALUE_ROWS rows each hold one
    class, both classes among them, and cover 90 % of the rows."""
    present = labelled.filter(labelled[column].notnull())
    groups = present.group_by(column).aggregate(
        n=present.count(), positives=present[target].cast("int64").sum()
    )
    frequent = [g for g in collect(con, groups).to_pylist() if g["n"] >= LEAK_MIN_VALUE_ROWS]
    covered = sum(g["n"] for g in frequent)
    pure = all(g["positives"] in (0, g["n"]) for g in frequent)
    classes = {g["positives"] == 0 for g in frequent}
    return bool(frequent) and pure and classes == {True, False} and covered >= 0.9 * rows


def latest_period(labelled: ir.Table, dataset: DatasetConfig) -> ir.Table:
    """The labelled set's latest period, without its target: the fallback prediction set."""
    newest = labelled[SNAPSHOT_COL].max().as_scalar()
    rows = labelled.filter(labelled[SNAPSHOT_COL] == newest).drop(dataset.task.target)
    return rows.order_by(list(dict.fromkeys([SNAPSHOT_COL, dataset.task.time, dataset.task.key])))


def target_summary(con: ibis.BaseBackend, labelled: ir.Table, dataset: DatasetConfig) -> dict:
    """Rows per snapshot with the label rate (classification) or the target's mean."""
    task = dataset.task
    stat = "target_mean" if task.regression else "label_rate"
    by_date = labelled.group_by(SNAPSHOT_COL).aggregate(
        rows=labelled.count(), total=labelled[task.target].sum()
    )
    out = {}
    for r in sorted(collect(con, by_date).to_pylist(), key=lambda r: r[SNAPSHOT_COL]):
        day = r[SNAPSHOT_COL]
        day = day if isinstance(day, dt.datetime) else dt.datetime.combine(day, dt.time())
        out[str(day)] = {"rows": r["rows"], stat: round(float(r["total"]) / r["rows"], 6)}
    return out


def table_days(con: ibis.BaseBackend, table: ir.Table, dataset: DatasetConfig) -> LocalDays:
    """The task table's local days (its `timezone`), over its time column's span; a UTC
    table reads nothing."""
    zone = dataset.table(dataset.task.table).timezone
    if zone == "UTC":
        return LocalDays(zone)
    return time_span(con, table, dataset.task.time).days(zone)


def _day_bounds(
    con: ibis.BaseBackend, table: ir.Table, dataset: DatasetConfig, days: LocalDays
) -> dict[str, Any]:
    task = dataset.task
    day = days.local_date(table[task.time])
    number = days.day_number(table[task.time])
    target = target_value(table, dataset)
    newest = number.max().as_scalar()
    known = matured_target(target, number, newest, task)
    counted = {}
    if task.pending_days is not None:  # outcomes that will not come: counted where defined
        missing = outcome_missing(target, number, newest, task.pending_days)
        counted["missing"] = missing.cast("int64").sum()
    bounds = table.aggregate(
        rows=table.count(),
        untimed=table[task.time].isnull().cast("int64").sum(),
        last=day.max(),
        last_labelled=ibis.ifelse(known, day, ibis.null("date")).max(),
        **counted,
    )
    return collect(con, bounds).to_pylist()[0]


def _history_source(history_dir: Path, dataset: DatasetConfig) -> Path:
    """prepare's history of the task's table; FileNotFoundError naming it when absent."""
    source = history_dir / f"{dataset.task.table}.parquet"
    if not source.is_file():
        raise FileNotFoundError(
            f"{source}: prepare's history of table '{dataset.task.table}' not found"
        )
    return source


def _prediction_rows(
    con: ibis.BaseBackend, labelled: ir.Table, pending: ir.Table, dataset: DatasetConfig
) -> tuple[ir.Table, str]:
    """The rows to predict and why: those whose target is still null, else the latest labelled
    period's (the module docstring says why)."""
    if collect(con, pending.aggregate(n=pending.count())).to_pylist()[0]["n"]:
        return pending, PENDING
    return latest_period(labelled, dataset), LATEST_PERIOD


def write_rows(
    history_dir: Path,
    out_dir: Path,
    dataset: DatasetConfig,
    cfg: FeaturesConfig,
    engine: EngineConfig,
) -> int:
    """The features stage for a rows kind: read prepare's history of the task's table, write
    the stage's four files to `out_dir`. ValueError names what is wrong."""
    task = dataset.task
    numeric, categorical = rows_features(dataset, cfg)
    con = connect(engine)
    source = _history_source(history_dir, dataset)
    table = read_parquet(con, source)
    unmapped = unmapped_targets(con, table, dataset)
    if unmapped:
        raise ValueError(
            f"{source}: target '{task.target}' holds {unmapped}, which conf/dataset/"
            f"{dataset.name}.yaml task.labels does not map (it maps {sorted(task.labels)})"
        )
    days = table_days(con, table, dataset)
    bounds = _day_bounds(con, table, dataset, days)
    if bounds["last_labelled"] is None:
        raise ValueError(f"{source}: no row has a target '{task.target}' (and a time) to learn")
    labelled, pending = build_rows(table, dataset, cfg, last=bounds["last_labelled"], days=days)
    leaks = leaking_features(con, labelled, pending, dataset, numeric, categorical)
    if leaks:
        raise ValueError(
            f"conf/dataset/{dataset.name}.yaml task.features: not an input the model has when "
            f"it predicts: {'; '.join(leaks)} (list task.features without it, or set "
            "features.exclude)"
        )
    n_labelled = write_parquet(con, labelled, out_dir / "snapshots.parquet", frame_schema(labelled))
    written = read_parquet(con, out_dir / "snapshots.parquet")
    predict, why = _prediction_rows(con, written, pending, dataset)
    n_predict = write_parquet(con, predict, out_dir / "predict.parquet", frame_schema(predict))

    spec = dataset.table(task.table)
    categories = {
        name: tuple(spec.column(name).allowed) for name in categorical if spec.column(name).allowed
    }
    schema = FeatureSchema(
        task.key,
        SNAPSHOT_COL,
        task.target,
        tuple(numeric),
        tuple(categorical),
        categories,
        task=REGRESSION if task.regression else CLASSIFICATION,
        category_types=category_types(spec, categorical),
        surrogate_key=task.surrogate_key,
    )
    save_schema(schema, out_dir / "feature_schema.json")
    summary = {
        "snapshots": target_summary(con, written, dataset),
        "predict": {"date": str(bounds["last"]), "rows": n_predict, "source": why},
        "rows": {"in": bounds["rows"], "without_time": bounds["untimed"], "labelled": n_labelled},
    }
    if task.pending_days is not None:  # only then: other datasets' summaries keep their bytes
        summary["rows"]["outcome_missing"] = bounds["missing"] or 0
    write_json(summary, out_dir / "summary.json")
    periods = len(summary["snapshots"])
    print(
        f"features ({task.kind}): {n_labelled} labelled rows in {periods} periods of "
        f"{task.period_days} days up to {bounds['last_labelled']}, {n_predict} to predict "
        f"({why}); {bounds['untimed']} row(s) without a time left out"
        + (
            f", {bounds['missing'] or 0} whose target is still null after pending_days "
            f"({task.pending_days}) left out"
            if task.pending_days is not None
            else ""
        )
    )
    return 0


def write_rows_predict_set(
    history_dir: Path,
    out_dir: Path,
    dataset: DatasetConfig,
    cfg: FeaturesConfig,
    engine: EngineConfig,
    champion: tuple[FeatureSchema, Path],
) -> int:
    """A rows task's prediction set, as `write_rows` picks it (the rows whose target is still
    null, else the latest period's), with the columns the champion's schema reads."""
    schema, schema_path = champion
    # every feature the config declares is in the frame, excluded ones too (split_columns)
    declared = [*dataset.task.numeric, *dataset.task.categorical]
    check_champion_features(declared, schema, schema_path, dataset.task.key)
    con = connect(engine)
    source = _history_source(history_dir, dataset)
    table = read_parquet(con, source)
    days = table_days(con, table, dataset)
    bounds = _day_bounds(con, table, dataset, days)
    if bounds["last_labelled"] is None:
        raise ValueError(f"{source}: no row has a target '{dataset.task.target}' (and a time)")
    labelled, pending = build_rows(table, dataset, cfg, last=bounds["last_labelled"], days=days)
    predict, why = _prediction_rows(con, labelled, pending, dataset)
    n_predict = write_parquet(con, predict, out_dir / "predict.parquet", frame_schema(predict))
    write_json(
        {"date": str(bounds["last"]), "rows": n_predict, "source": why}, out_dir / "summary.json"
    )
    print(f"predict_set ({dataset.task.kind}): {n_predict} rows to score ({why})")
    return 0
