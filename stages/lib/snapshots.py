"""features: per-entity snapshot features with a fully observed label, plus the prediction set.

For each snapshot date s (several past dates whose label window (s, s + horizon] is fully in the
data, and the latest date for prediction), the population is the entities with activity in
(s - lookback_days, s]. Features use only events up to s; the label is "no activity in
(s, s + horizon]". The label's name, horizon_days and lookback_days are the dataset's (`label:` in
conf/dataset/<name>.yaml). Entity attributes come from an entities table (the version as of s)
or, for a dataset without one, from the entity's latest event up to s. Written as Ibis
expressions, run on the configured engine (`stages/lib/engine.py`: DuckDB by default, within its
memory limit, or Spark) and streamed to the files, so memory does not grow with the data.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import ibis
import ibis.expr.types as ir
import pyarrow as pa
import pyarrow.parquet as pq

from stages.contract.feature_schema import FeatureSchema, save_schema
from stages.lib.dataset import CANCELLATION, PLAIN_EVENT, DatasetConfig, TableSpec
from stages.lib.engine import EngineConfig, collect, connect, read_parquet, write_parquet
from stages.lib.io import PARTITION_COL, write_json
from stages.lib.localtime import Span, time_span
from stages.lib.predictions import SNAPSHOT_COL

# the label is the dataset's: these keys left the features section
MOVED_TO_LABEL = {"horizon_days": "horizon_days", "active_days": "lookback_days"}


@dataclass(frozen=True)
class FeaturesConfig:
    snapshot_every_days: int = 7
    max_snapshots: int = 8
    min_history_days: int = 21
    windows: tuple[int, ...] = (7, 14, 28)
    # features left out of the schema (what the model trains on and serving takes); the frames
    # keep every computed column, so a champion that used them can still be scored on them
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("snapshot_every_days", "max_snapshots", "min_history_days"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"features.{name}: {value} is not a whole number >= 1")
        if not self.windows or any(not isinstance(w, int) or w < 1 for w in self.windows):
            raise ValueError(f"features.windows: {list(self.windows)} must be whole days >= 1")

    @classmethod
    def from_params(cls, raw: dict) -> FeaturesConfig:
        moved = sorted(set(raw) & set(MOVED_TO_LABEL))
        if moved:
            raise ValueError(
                f"params features.{moved[0]}: moved to the dataset, set "
                f"dataset.label.{MOVED_TO_LABEL[moved[0]]} in conf/dataset/<name>.yaml"
            )
        for key in ("windows", "exclude"):
            value = raw.get(key)
            if value is not None and (isinstance(value, str) or not isinstance(value, Sequence)):
                raise ValueError(f"features.{key}: expected a list, got {value!r}")
        return cls(
            **{
                **raw,
                "windows": tuple(raw.get("windows", cls.windows)),
                "exclude": tuple(str(f) for f in raw.get("exclude") or ()),
            }
        )


def snapshot_dates(
    first: dt.date, last: dt.date, cfg: FeaturesConfig, *, horizon_days: int
) -> list[dt.date]:
    """Labelled snapshot dates, oldest first: every `snapshot_every_days` back from the last
    date whose label window (`horizon_days`) is complete, keeping at least `min_history_days`
    of history."""
    newest = last - dt.timedelta(days=horizon_days)
    earliest = first + dt.timedelta(days=cfg.min_history_days)
    dates = []
    for k in range(cfg.max_snapshots):
        s = newest - dt.timedelta(days=k * cfg.snapshot_every_days)
        if s < earliest:
            break
        dates.append(s)
    return sorted(dates)


def truncated_windows_note(first: dt.date, earliest: dt.date, cfg: FeaturesConfig) -> str | None:
    """A line saying the earliest labelled snapshot's longest windows reach back before the
    history starts (None when they do not): its counts cover fewer days than later snapshots',
    and a model learns that. A telco's windows [7, 35, 70] with the default min_history_days
    21 counted 70-day bills over 21 days (0.99 a customer against 2.2 later)."""
    longest = max(cfg.windows)
    held = (earliest - first).days
    if held >= longest:
        return None
    return (
        f"the first labelled snapshot {earliest} is {held} days into the history (from "
        f"{first}), less than the longest window ({longest} days): its {longest}-day features "
        f"count fewer days than later snapshots'; features.min_history_days: {longest} waits "
        "for the window (on a lake long enough for the snapshots)"
    )


def feature_names(dataset: DatasetConfig, cfg: FeaturesConfig) -> tuple[list[str], list[str]]:
    numeric = [f"{prefix}_{w}d" for prefix in dataset.event_features.values() for w in cfg.windows]
    numeric += [
        f"{dataset.event_features[t]}_amount_{w}d"
        for t in dataset.amount_types
        for w in cfg.windows
    ]
    numeric += ["days_since_last_activity", "activity_trend"]
    if dataset.entity_features.signup_date:
        numeric.append("tenure_days")
    numeric += list(dataset.entity_features.numeric)
    return numeric, list(dataset.entity_features.categorical)


def schema_features(dataset: DatasetConfig, cfg: FeaturesConfig) -> tuple[list[str], list[str]]:
    """The computed features minus `cfg.exclude`: (numeric, categorical) of the schema."""
    return without_excluded(*feature_names(dataset, cfg), cfg, "computed features")


def without_excluded(
    numeric: list[str], categorical: list[str], cfg: FeaturesConfig, what: str
) -> tuple[list[str], list[str]]:
    """(numeric, categorical) minus `cfg.exclude`; ValueError names an unknown one (`what`
    the features are) or an exclusion that leaves none."""
    unknown = sorted(set(cfg.exclude) - {*numeric, *categorical})
    if unknown:
        raise ValueError(
            f"features.exclude: {unknown} are not {what} "
            f"(known: {', '.join([*numeric, *categorical])})"
        )
    numeric = [f for f in numeric if f not in cfg.exclude]
    categorical = [f for f in categorical if f not in cfg.exclude]
    if not numeric and not categorical:
        raise ValueError("features.exclude: leaves no feature to train on")
    return numeric, categorical


def _day_number(value: ir.Value) -> ir.IntegerValue:
    """A date's day number (days since 1970-01-01). A timestamp's is its local day's:
    `LocalDays.day_number` of its table's zone."""
    return value.cast("date").epoch_days()


def _event_kind(table: ir.Table, dataset: DatasetConfig) -> ir.StringValue:
    """Each event's type: its type column, or PLAIN_EVENT for a dataset without one; events the
    cancellation marker flags (an invoice number starting with C) are CANCELLATION."""
    if dataset.event_type_column is None:
        kind = ibis.literal(PLAIN_EVENT)
    else:
        kind = table[dataset.event_type_column]
    marker = dataset.cancel_marker
    if marker is None:
        return kind
    flagged = table[marker.column].startswith(marker.prefix).fill_null(False)
    return ibis.ifelse(flagged, ibis.literal(CANCELLATION), kind)


def _snapshot_days(dates: Sequence[dt.date], offsets: range) -> ir.Table:
    """(snapshot_date, _snap_day, _day): each snapshot date with the days `_snap_day + offset`,
    those whose events it reads. Events join it on `_day`, an equality: a hash join with a build
    side of a few hundred rows, where a range condition on `_day` had the engine sort every
    event. Unnested literals, not a memtable: Ibis's memtable imports pandas (0.2-0.3 s), which
    this stage otherwise never loads."""
    one = ibis.literal(0).name("_one").as_table()
    snaps = one.select(**{SNAPSHOT_COL: ibis.literal(list(dates), type="array<date>").unnest()})
    snaps = snaps.mutate(_snap_day=_day_number(snaps[SNAPSHOT_COL]))
    offset = one.select(_offset=ibis.literal(list(offsets), type="array<int64>").unnest())
    band = snaps.cross_join(offset)
    return band.mutate(_day=band._snap_day + band._offset).drop("_offset")


def _event_aggregates(
    events: ir.Table,
    dates: Sequence[dt.date],
    dataset: DatasetConfig,
    cfg: FeaturesConfig,
    span: Span,
) -> ir.Table:
    """Per (entity, snapshot): counts and amounts per window, recency, activity trend."""
    timestamp = dataset.events.timestamp
    day = span.days(dataset.events.timezone).day_number(events[timestamp])
    # per event, before the join multiplies the rows: its day, type and exact amount
    derived = {"_day": day, "_kind": _event_kind(events, dataset)}
    if dataset.amount_types:
        # decimal sums are exact, so the result does not depend on summation order
        derived["_amount"] = events[dataset.amount_column].cast("decimal(18, 2)")
    ev = events.mutate(**derived)
    # Only the last `span` days before a snapshot can count: every aggregate looks at most that
    # far back, and the population (activity in the lookback) always had its latest activity
    # within it, so days_since_last_activity is the same. A band, not the whole history per
    # snapshot: ~3x fewer rows to aggregate on the demo's 120 days, more on a longer one.
    span = max(*cfg.windows, dataset.label.lookback_days)
    joined = ev.join(_snapshot_days(dates, range(1 - span, 1)), "_day")
    age = joined._snap_day - joined._day  # 0 on the snapshot day itself
    kind = joined._kind
    is_activity = kind.isin(list(dataset.activity_types))
    aggs = {}
    for event_type, prefix in dataset.event_features.items():
        for w in cfg.windows:
            in_window = (kind == event_type) & (age < w)
            # COUNT ... FILTER: about twice as fast in DuckDB as a sum of 0/1, and the same
            # number for every entity in the population (its activity rows are never null)
            aggs[f"{prefix}_{w}d"] = joined._day.count(where=in_window).cast("float64")
            if event_type in dataset.amount_types:
                amount = ibis.ifelse(in_window, joined._amount, 0)
                aggs[f"{prefix}_amount_{w}d"] = amount.sum().cast("float64")
    short, long = min(cfg.windows), max(cfg.windows)
    recent = joined._day.count(where=is_activity & (age < short))
    base = joined._day.count(where=is_activity & (age < long))
    aggs["activity_trend"] = (recent * long / short - base).cast("float64") / (base + 1)
    aggs["days_since_last_activity"] = (
        ibis.ifelse(is_activity, age, ibis.null()).min().cast("float64")
    )
    active = is_activity & (age < dataset.label.lookback_days)
    aggs["_active"] = joined._day.count(where=active)
    grouped = joined.group_by([dataset.entity_key, SNAPSHOT_COL, "_snap_day"]).aggregate(**aggs)
    return grouped.filter(grouped._active > 0).drop("_active")


def _labels(
    events: ir.Table, dates: Sequence[dt.date], dataset: DatasetConfig, span: Span
) -> ir.Table:
    """(entity, snapshot) pairs with activity in (s, s + horizon]: the ones that did not churn."""
    timestamp = dataset.events.timestamp
    ev = events.filter(_event_kind(events, dataset).isin(list(dataset.activity_types)))
    ev = ev.mutate(_day=span.days(dataset.events.timezone).day_number(ev[timestamp]))
    joined = ev.join(_snapshot_days(dates, range(1, dataset.label.horizon_days + 1)), "_day")
    return joined.select(dataset.entity_key, SNAPSHOT_COL).distinct().mutate(_retained=1)


def _with_entity_attributes(
    table: ir.Table, versions: ir.Table, dataset: DatasetConfig, span: Span
) -> ir.Table:
    """Join each (entity, snapshot) with the entity's latest row up to the snapshot: a version
    of an entities table, or an event when the attributes come from the events table. Reading
    the current state instead would leak changes made after it (a plan change implies the
    customer was still active)."""
    key, ef = dataset.entity_key, dataset.entity_features
    source = dataset.attribute_table
    attrs = list(ef.attributes)
    local = span.days(source.timezone)
    # the source's own key breaks ties between rows with the same timestamp (two events in
    # the same second), so the chosen row does not depend on the engine's scan order
    day = local.day_number(versions[source.timestamp])
    arrived, part = day, day
    if source.role == "entities" and PARTITION_COL in versions.columns:
        part = versions[PARTITION_COL].cast("date").epoch_days()
        # a version is known from the later of its timestamp's day and the day it arrived (its
        # partition): a change exported days after it happened was not known before, and one
        # exported with no time of its own (a daily export keyed by signup date) is known from
        # its export's day
        arrived = ibis.greatest(day, part)
    ents = versions.select(
        _key=versions[key],
        _ts=versions[source.timestamp],
        _tie=versions[source.key],
        _part=part,
        _ts_day=arrived,
        **{a: versions[a] for a in attrs},
    )
    # `table` is used once: joined to itself (its keys, then its rows), the engine computes
    # the whole aggregation twice (DuckDB does not share a subquery used twice)
    joined = table.left_join(ents, [table[key] == ents._key, ents._ts_day <= table._snap_day])
    # the latest known version: by the day it became known, then its time (the tie-breaker
    # key last, so the choice never depends on the engine's scan order)
    order = [ibis.desc("_ts_day"), ibis.desc("_ts"), ibis.desc("_part"), ibis.desc("_tie")]
    ranked = joined.mutate(
        _rank=ibis.row_number().over(group_by=[key, SNAPSHOT_COL], order_by=order)
    )
    dropped = ("_rank", "_key", "_ts", "_tie", "_part", "_ts_day")
    table = ranked.filter(ranked._rank == 0).drop(*dropped)
    if ef.signup_date:
        signup = table[ef.signup_date]
        # a date is a day already; a timestamp is counted on its table's local day
        signed = local.day_number(signup) if signup.type().is_timestamp() else _day_number(signup)
        tenure = table._snap_day - signed
        table = table.mutate(tenure_days=tenure.cast("float64")).drop(ef.signup_date)
    return table


def build_features(
    events: ir.Table,
    entities: ir.Table | None,
    dates: Sequence[dt.date],
    dataset: DatasetConfig,
    cfg: FeaturesConfig,
    *,
    labelled: bool,
    span: Span,
) -> ir.Table:
    """Snapshot features for `dates`; with `labelled`, the label column too. `entities` is the
    table entity attributes come from: every version of each entity (prepare's
    `<table>_versions`), or the events themselves (None: no attributes). Days are each table's
    local days (`timezone`), looked up over the events' `span` (`event_dates`)."""
    key = dataset.entity_key
    table = _event_aggregates(events, dates, dataset, cfg, span)
    if entities is not None:
        table = _with_entity_attributes(table, entities, dataset, span)
    if labelled:
        labels = _labels(events, dates, dataset, span)
        table = table.left_join(labels, [key, SNAPSHOT_COL]).drop(
            f"{key}_right", f"{SNAPSHOT_COL}_right"
        )
        churned = table._retained.isnull().cast("int64")
        table = table.mutate(**{dataset.label.name: churned}).drop("_retained")
    numeric, categorical = feature_names(dataset, cfg)
    label = [dataset.label.name] if labelled else []
    return table.select(key, SNAPSHOT_COL, *numeric, *categorical, *label).order_by(
        [SNAPSHOT_COL, key]
    )


def event_dates(
    con: ibis.BaseBackend, events: ir.Table, dataset: DatasetConfig
) -> tuple[dt.date, dt.date, Span]:
    """The first and last local days of the events (their table's `timezone`: the days the
    lake's partitions and the monitor count) and the span `build_features` reads days over."""
    span = time_span(con, events, dataset.events.timestamp)
    if span.first is None or span.last is None:
        raise ValueError("features: the events history is empty")
    days = span.days(dataset.events.timezone)
    return days.date(span.first), days.date(span.last), span


def frame_schema(expr: ir.Table) -> pa.Schema:
    """The Arrow types of the stage's files: those they had when written from pandas (dates as
    timestamp[s], strings as large_string, every column nullable), so split, train and the
    model card read the same files whichever engine computed them."""
    out = []
    for f in expr.schema().to_pyarrow():
        kind = f.type
        if pa.types.is_date(kind):
            kind = pa.timestamp("s")
        elif pa.types.is_string(kind):
            kind = pa.large_string()
        out.append(pa.field(f.name, kind))
    return pa.schema(out)


def label_summary(con: ibis.BaseBackend, snapshots: ir.Table, label: str) -> dict[str, dict]:
    """Rows and label rate per snapshot date, keyed as the pandas version wrote them."""
    by_date = snapshots.group_by(SNAPSHOT_COL).aggregate(
        rows=snapshots.count(), positives=snapshots[label].sum()
    )
    out = {}
    for r in sorted(collect(con, by_date).to_pylist(), key=lambda r: r[SNAPSHOT_COL]):
        day = r[SNAPSHOT_COL]
        if not isinstance(day, dt.datetime):
            day = dt.datetime.combine(day, dt.time())
        # positives / rows is how pandas' mean of an int column computes it: one float division
        out[str(day)] = {"rows": r["rows"], "label_rate": round(r["positives"] / r["rows"], 6)}
    return out


def read_history(
    con: ibis.BaseBackend, history_dir: Path, dataset: DatasetConfig
) -> tuple[ir.Table, ir.Table | None]:
    """(events, the table entity attributes come from) of prepare's history, as `build_features`
    takes them: an entities table's every version, the events themselves, or None."""
    events = read_parquet(con, history_dir / f"{dataset.events.name}.parquet")
    source = dataset.attribute_table
    if source is not None and source.role == "entities":
        return events, read_parquet(con, history_dir / f"{source.name}_versions.parquet")
    return events, events if source is not None else None


def category_types(table: TableSpec, categorical: list[str]) -> dict[str, str]:
    """The integer-coded categorical features (the feature schema's `category_types`): they
    stay integers from the data to the request. (A bool one keeps its text form, "True".)"""
    types = {name: table.column(name).type for name in categorical}
    return {name: kind for name, kind in types.items() if kind == "int64"}


def write_snapshots(
    history_dir: Path,
    out_dir: Path,
    dataset: DatasetConfig,
    cfg: FeaturesConfig,
    engine: EngineConfig,
) -> int:
    """An entity-churn task's feature tables: labelled snapshots, the rows to predict at the
    latest date, the feature schema and a summary, written to `out_dir`."""
    numeric, categorical = schema_features(dataset, cfg)
    con = connect(engine)
    events, entities = read_history(con, history_dir, dataset)
    source_spec = dataset.attribute_table
    first, last, span = event_dates(con, events, dataset)
    horizon = dataset.label.horizon_days
    dates = snapshot_dates(first, last, cfg, horizon_days=horizon)
    if not dates:
        raise SystemExit(
            f"features: history {first}..{last} is too short for a labelled snapshot "
            f"(needs min_history_days={cfg.min_history_days} + label horizon_days={horizon})"
        )
    note = truncated_windows_note(first, dates[0], cfg)
    if note:
        print(f"features: {note}", file=sys.stderr)
    snapshots = build_features(events, entities, dates, dataset, cfg, labelled=True, span=span)
    predict = build_features(events, entities, [last], dataset, cfg, labelled=False, span=span)
    n_snapshots = write_parquet(
        con, snapshots, out_dir / "snapshots.parquet", frame_schema(snapshots)
    )
    n_predict = write_parquet(con, predict, out_dir / "predict.parquet", frame_schema(predict))

    categories = {}
    if source_spec:
        for name in categorical:
            allowed = source_spec.column(name).allowed
            if allowed:
                categories[name] = tuple(allowed)
    schema = FeatureSchema(
        dataset.entity_key,
        SNAPSHOT_COL,
        dataset.label.name,
        tuple(numeric),
        tuple(categorical),
        categories,
        category_types=category_types(source_spec, categorical) if source_spec else {},
    )
    save_schema(schema, out_dir / "feature_schema.json")
    # from the written file, not the expression: a second run of the whole query costs as much
    written = read_parquet(con, out_dir / "snapshots.parquet")
    summary = {
        "snapshots": label_summary(con, written, dataset.label.name),
        "predict": {"date": str(last), "rows": n_predict},
    }
    write_json(summary, out_dir / "summary.json")
    print(
        f"features: {n_snapshots} labelled rows over {len(dates)} snapshots "
        f"({dates[0]}..{dates[-1]}), {n_predict} to predict at {last}"
    )
    return 0


def check_champion_features(
    computed: Sequence[str], schema: FeatureSchema, schema_path: Path, key: str
) -> None:
    """ValueError naming the champion's features (or key) that today's config does not
    compute: its schema, not the config, says what it reads, so a config change that drops one
    needs a training run before the prediction run can score with it."""
    if schema.entity_key != key:
        raise ValueError(
            f"{schema_path}: the champion is keyed by '{schema.entity_key}', the dataset by "
            f"'{key}': run `evergreen run training --promote`"
        )
    missing = [f for f in schema.features if f not in computed]
    if missing:
        raise ValueError(
            f"{schema_path}: the champion reads {missing}, which the features config does not "
            "compute now: run `evergreen run training --promote`"
        )


def write_predict_set(
    history_dir: Path,
    out_dir: Path,
    dataset: DatasetConfig,
    cfg: FeaturesConfig,
    engine: EngineConfig,
    champion: tuple[FeatureSchema, Path],
) -> int:
    """An entity-churn task's prediction set: the entities active at the latest date, with the
    features the champion's schema reads. One snapshot: the events of its band only (the
    aggregates' longest window or the lookback), however long the history."""
    schema, schema_path = champion
    numeric, categorical = feature_names(dataset, cfg)
    check_champion_features([*numeric, *categorical], schema, schema_path, dataset.entity_key)
    con = connect(engine)
    events, entities = read_history(con, history_dir, dataset)
    _, last, span = event_dates(con, events, dataset)
    predict = build_features(events, entities, [last], dataset, cfg, labelled=False, span=span)
    n_predict = write_parquet(con, predict, out_dir / "predict.parquet", frame_schema(predict))
    blank = entities_without_attributes(out_dir / "predict.parquet", dataset)
    summary = {"date": str(last), "rows": n_predict}
    write_json(summary | ({"without_attributes": blank} if blank else {}), out_dir / "summary.json")
    print(f"predict_set: {n_predict} entities active at {last} to score")
    source = dataset.attribute_table
    if blank and source is not None:
        print(
            f"predict_set: {blank} of {n_predict} entities have no row in table "
            f"'{source.name}' up to {last} (every attribute null: scored on their events "
            "alone; has its export stopped?)",
            file=sys.stderr,
        )
    return 0


def entities_without_attributes(predict_path: Path, dataset: DatasetConfig) -> int:
    """Rows of a prediction set whose every attribute is null: entities the attributes table
    has no row for. A customers export that stopped while the events went on left 46 new
    customers scored on their events alone, without a word."""
    source = dataset.attribute_table
    if source is None or source.role != "entities":  # an events table's: the entity's events
        return 0
    present = set(pq.read_schema(predict_path).names)
    attributes = (*dataset.entity_features.categorical, *dataset.entity_features.numeric)
    names = [c for c in attributes if c in present]
    if not names:
        return 0
    frame = pq.read_table(predict_path, columns=names).to_pandas()
    return int(frame.isna().all(axis=1).sum()) if len(frame) else 0
