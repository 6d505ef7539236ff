"""The core of the `prepare` stage (stages/prepare.py): merge validated partitions into the history
of each table (Ibis; `stages/lib/engine.py`).

The merge is an anti-join upsert (DESIGN.md, principle 8): history rows whose key is not in the
increment, plus the increment deduplicated latest-wins. It never re-deduplicates the history.
Events are deduplicated by their id; entities keep their latest row per key, and every version.

Incremental (principle 2): `<out>/manifest.json` records, per table, the validated partitions
(by content hash) its history holds. When the only news are partitions dated after every merged
one, just those are upserted into the history. When a merged partition changed or disappeared,
or a new one is dated at or before the latest merged one (a backfill), the table is rebuilt from
scratch: latest-wins forgot the rows it replaced, so a history cannot be unwound to the affected
date, and such corrections are rare next to daily appends. Late data (a new partition holding
old-dated rows) is just a new partition. Either way the files are byte-identical to a rebuild.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import ibis
import ibis.expr.types as ir
import pyarrow.parquet as pq

from stages.lib.dataset import DatasetConfig, TableSpec
from stages.lib.engine import EngineConfig, connect, read_parquet, write_parquet
from stages.lib.incremental import (
    MANIFEST,
    MANIFEST_FORMAT,
    SHARED_CODE,
    STAGES_ROOT,
    StatCache,
    fingerprint,
    load_stat_cache,
    read_manifest,
    remove_temp_files,
    save_stat_cache,
    write_manifest,
)
from stages.lib.io import PARTITION_COL, ROW_COL, validated_partitions, write_json

Key = str | Sequence[str]

# The modules whose code decides the stage's outputs, relative to stages/ (its code deps in
# dvc.yaml, tested): an edit to any of them rebuilds every history rather than mix old and
# new outputs.
CODE_FILES = ("prepare.py", "lib/merge.py", *SHARED_CODE)
LIBRARIES = ("duckdb", "ibis-framework", "pyarrow")
COUNTS = "counts.json"


def latest_per_key(increment: ir.Table, key: Key, timestamp: str) -> ir.Table:
    """One row per key: the one that landed last (partition, then timestamp, then row)."""
    order = [
        ibis.desc(increment[PARTITION_COL]),
        ibis.desc(increment[timestamp]),
        ibis.desc(increment[ROW_COL]),
    ]
    ranked = increment.mutate(_rank=ibis.row_number().over(group_by=key, order_by=order))
    return ranked.filter(ranked._rank == 0).drop("_rank")


def upsert(history: ir.Table | None, increment: ir.Table, key: Key, timestamp: str) -> ir.Table:
    """History rows whose key the increment does not carry, plus the increment (latest-wins)."""
    fresh = latest_per_key(increment, key, timestamp)
    if history is None:
        return fresh
    kept = history.anti_join(fresh, [key] if isinstance(key, str) else list(key))
    return kept.union(fresh.select(kept.columns))


def history_keys(table: TableSpec) -> dict[str, list[str]]:
    """Output name -> upsert key. Entities also keep every version (key, timestamp, and the
    partition it arrived in), so features can read an entity as it was known at a past
    snapshot instead of leaking its later state. The partition is part of the version: a
    daily export of a users table whose only date is `signup_date` repeats one timestamp for
    every change of a user, and keyed on the timestamp alone each change overwrote the one
    before (a plan from the future read at every past snapshot)."""
    keys = {table.name: [table.key]}
    if table.role == "entities":
        keys[f"{table.name}_versions"] = [table.key, table.timestamp, PARTITION_COL]
    return keys


@dataclass(frozen=True)
class MergePlan:
    """How one table's history is brought up to date."""

    mode: str  # "keep" (nothing new), "append" (upsert the new partitions) or "rebuild"
    partitions: tuple[str, ...]  # the partitions to read: the new ones, or all for a rebuild
    reason: str = ""  # why a rebuild


def plan_merge(merged: Mapping[str, str] | None, current: Mapping[str, str]) -> MergePlan:
    """Compare what the history holds (`merged`: partition -> content hash; None when there is
    no usable history) with the validated partitions now (`current`)."""
    everything = tuple(sorted(current))
    if merged is None:
        return MergePlan("rebuild", everything, "no history to build on")
    changed = sorted(p for p in merged if p in current and current[p] != merged[p])
    removed = sorted(p for p in merged if p not in current)
    if changed or removed:
        what = [f"{p} changed" for p in changed] + [f"{p} removed" for p in removed]
        return MergePlan("rebuild", everything, "partition " + ", ".join(what))
    new = tuple(sorted(p for p in current if p not in merged))
    if not new:
        return MergePlan("keep", ())
    if merged and new[0] <= max(merged):
        return MergePlan("rebuild", everything, f"partition {new[0]} arrived after {max(merged)}")
    return MergePlan("append", new)


def merge_table(
    con: ibis.BaseBackend,
    table: TableSpec,
    files: Sequence[Path],
    out_dir: Path,
    histories: Mapping[str, Path] | None = None,
) -> dict[str, tuple[Path, int]]:
    """Upsert the validated `files` of `table` into its histories (`histories`: output name ->
    the history file to build on; None: start empty), written to `<out_dir>/<name>.parquet`;
    returns name -> (path, rows). Sorted by key, so the bytes of a history depend neither on how
    it was reached nor on the engine; streamed to the file, so memory does not grow with it."""
    if not files:
        raise FileNotFoundError(f"{table.name}: no validated partitions to merge")
    # the validated files' own schema: what every engine's result is written as
    schema = pq.read_schema(files[0]).remove_metadata()
    increment = read_parquet(con, files)
    out = {}
    for name, key in history_keys(table).items():
        history = read_parquet(con, histories[name]) if histories is not None else None
        merged = upsert(history, increment, key, table.timestamp).order_by(key)
        path = out_dir / f"{name}.parquet"
        out[name] = (path, write_parquet(con, merged, path, schema))
    return out


@dataclass(frozen=True)
class PrepareRun:
    tables: dict[str, dict]  # table -> manifest entry (partitions, outputs, rows)
    plans: dict[str, MergePlan]
    rebuilt: str  # why the manifest was not used ("" when it was)


def prepare_fingerprint(tables_params: Mapping, dataset: DatasetConfig) -> str:
    """What the histories depend on besides the data: code, `dataset.tables`, each history's
    upsert key (a rows task's comes from `task.key`, outside `dataset.tables`: another key
    keeps other rows), libraries."""
    keys = {t.name: history_keys(t) for t in dataset.tables}
    return fingerprint(
        code=[STAGES_ROOT / name for name in CODE_FILES],
        params={"dataset.tables": tables_params, "upsert_keys": keys},
        libraries=LIBRARIES,
        version=MANIFEST_FORMAT,
    )


def _intact(entry: Mapping, out_dir: Path, cache: StatCache) -> bool:
    for name, recorded in entry["outputs"].items():
        stamp = cache.stamp(out_dir / name, f"out/{name}")
        if stamp is None or stamp.to_json() != recorded:
            return False
    return True


def run_prepare(
    validated_dir: Path,
    out_dir: Path,
    dataset: DatasetConfig,
    fingerprint_: str,
    engine: EngineConfig | None = None,
) -> PrepareRun:
    """Bring every table's history up to date with the validated partitions (see the module
    docstring), writing the histories, then `counts.json`, then the manifest, last."""
    remove_temp_files(out_dir)
    previous, why = read_manifest(out_dir / MANIFEST, fingerprint_)
    cache = load_stat_cache(out_dir)
    con = None  # an engine costs ~1 s (DuckDB) to ~10 s (Spark) to start: only when needed
    entries: dict[str, dict] = {}
    plans: dict[str, MergePlan] = {}
    for table in dataset.tables:
        files = validated_partitions(validated_dir, table.name)
        current = {}
        for partition, path in files.items():
            stamp = cache.stamp(path, f"validated/{table.name}/{partition}")
            if stamp is not None:
                current[partition] = stamp.md5
        old = (previous or {}).get("tables", {}).get(table.name)
        usable = old is not None and _intact(old, out_dir, cache)
        plan = plan_merge(old["partitions"] if usable else None, current)
        plans[table.name] = plan
        if plan.mode == "keep":
            entries[table.name] = old
            continue
        names = history_keys(table)
        on = {n: out_dir / f"{n}.parquet" for n in names} if plan.mode == "append" else None
        con = con or connect(engine or EngineConfig())
        histories = merge_table(con, table, [files[p] for p in plan.partitions], out_dir, on)
        outputs, rows = {}, {}
        for name, (path, n) in histories.items():
            outputs[path.name] = cache.stamp(path, f"out/{path.name}").to_json()
            rows[name] = n
        entries[table.name] = {"partitions": current, "outputs": outputs, "rows": rows}
    listed = {name for e in entries.values() for name in e["outputs"]}
    for stray in sorted(out_dir.glob("*.parquet")):
        if stray.name not in listed:  # the history of a table no longer in the dataset
            stray.unlink()
    counts = {name: n for e in entries.values() for name, n in e["rows"].items()}
    write_json(dict(sorted(counts.items())), out_dir / COUNTS)
    write_manifest(out_dir / MANIFEST, fingerprint_, {"tables": entries})
    save_stat_cache(out_dir, cache)
    return PrepareRun(entries, plans, why if previous is None else "")
