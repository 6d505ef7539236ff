"""prepare: merge validated increments into the history of each table (Ibis on DuckDB).

The merge is an anti-join upsert (DESIGN.md, principle 8): history rows whose key is not in the
increment, plus the increment deduplicated latest-wins. It never re-deduplicates the history.
Events are deduplicated by their id; entities keep their latest row per key.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import ibis
import ibis.expr.types as ir
import pyarrow as pa

from stages.dataset import DatasetConfig, TableSpec, dataset_from_params
from stages.io import write_json, write_table
from stages.params import load_params, section
from stages.validate import PARTITION_COL, ROW_COL

Key = str | Sequence[str]


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


def merge_table(
    con: ibis.BaseBackend,
    validated_dir: Path,
    table: TableSpec,
    key: Key,
    history: ir.Table | None = None,
) -> ir.Table | None:
    """Upsert every validated partition of `table` into `history` (None: start empty)."""
    files = sorted((validated_dir / table.name).glob("date=*.parquet"))
    if not files:
        return history
    increment = con.read_parquet([str(f) for f in files])
    return upsert(history, increment, key, table.timestamp)


def history_keys(table: TableSpec) -> dict[str, list[str]]:
    """Output name -> upsert key. Entities also keep every version (key, timestamp), so features
    can read an entity as it was at a past snapshot instead of leaking its later state."""
    keys = {table.name: [table.key]}
    if table.role == "entities":
        keys[f"{table.name}_versions"] = [table.key, table.timestamp]
    return keys


def prepare_history(
    con: ibis.BaseBackend, validated_dir: Path, dataset: DatasetConfig
) -> dict[str, pa.Table]:
    """The merged history of every table, sorted by key so the bytes are reproducible."""
    out = {}
    for table in dataset.tables:
        for name, key in history_keys(table).items():
            merged = merge_table(con, validated_dir, table, key)
            if merged is None:
                raise FileNotFoundError(f"{validated_dir / table.name}: no validated partitions")
            out[name] = merged.order_by(key).to_pyarrow()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.prepare", description=__doc__)
    parser.add_argument("validated_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)

    dataset = dataset_from_params(section(load_params(args.params), "dataset"))
    con = ibis.duckdb.connect()
    histories = prepare_history(con, args.validated_dir, dataset)
    counts = {}
    for name, table in histories.items():
        write_table(table, args.out_dir / f"{name}.parquet")
        counts[name] = table.num_rows
        print(f"prepare {name}: {table.num_rows} rows in history")
    write_json(counts, args.out_dir / "counts.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
