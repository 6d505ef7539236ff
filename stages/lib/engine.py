"""The engine the table stages run their Ibis expressions on, chosen by config alone.

`engine.name: duckdb` (the default) is DuckDB in this process, with a memory limit and a spill
folder, so a stage's peak memory follows the config, not the data; `engine.name: pyspark` is a
Spark session: local (`spark.master`), a cluster master, or a Spark Connect server
(`spark.remote`). The stages build the same Ibis expressions either way (DESIGN.md, principle 8)
and write their outputs through `write_parquet`, so the files do not depend on the engine.
"""

from __future__ import annotations

import os
import pickle
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from stages.lib.io import PARQUET_OPTIONS, tmp_for

if TYPE_CHECKING:  # Ibis costs validate, which only distributes work, a fifth of a second
    import ibis
    import ibis.expr.types as ir

ENGINES = ("duckdb", "pyspark")
# Rows per parquet row group: what the writer holds in memory (~30 MB for the 28 columns of the
# features), and what lets a reader scan a file on several threads. A file this small or
# smaller is one row group, as `pq.write_table` wrote it before the stages streamed.
ROW_GROUP_ROWS = 128 * 1024


@dataclass(frozen=True)
class SparkConfig:
    # None: the master spark-submit (or SPARK_REMOTE) gives the process
    master: str | None = "local[2]"
    remote: str | None = None  # a Spark Connect URL (sc://host:15002); wins over master
    app_name: str = "evergreen"
    conf: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EngineConfig:
    name: str = "duckdb"
    # DuckDB: beyond memory_limit it spills to temp_directory (None: `evergreen-duckdb` in the
    # system's temporary folder; DuckDB's own default, `.tmp` in the working directory, would
    # land in the repository)
    memory_limit: str | None = "2GB"
    temp_directory: str | None = None
    threads: int | None = None
    spark: SparkConfig = field(default_factory=SparkConfig)

    @classmethod
    def from_params(cls, raw: Mapping[str, Any] | None) -> EngineConfig:
        """From the `engine` params section; a wrong key or engine names what is expected."""
        raw = dict(raw or {})
        _known("engine", raw, cls)
        spark = dict(raw.pop("spark", None) or {})
        _known("engine.spark", spark, SparkConfig)
        name = raw.get("name", cls.name)
        if name not in ENGINES:
            raise ValueError(f"params engine.name: '{name}' is not one of {', '.join(ENGINES)}")
        conf = {str(k): v for k, v in (spark.pop("conf", None) or {}).items()}
        return cls(**raw, spark=SparkConfig(**spark, conf=conf))


def _known(where: str, raw: Mapping[str, Any], kind: type) -> None:
    allowed = {f.name for f in fields(kind)}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ValueError(
            f"params {where}.{unknown[0]}: unknown key (known: {', '.join(sorted(allowed))})"
        )


def connect(cfg: EngineConfig) -> ibis.BaseBackend:
    """An Ibis backend for `cfg`: DuckDB with its limits applied, or a Spark session."""
    import ibis

    if cfg.name == "pyspark":
        return ibis.pyspark.connect(spark_session(cfg.spark))
    settings: dict[str, Any] = {}
    if cfg.memory_limit is not None:
        settings["memory_limit"] = cfg.memory_limit
    spill = Path(cfg.temp_directory or Path(tempfile.gettempdir()) / "evergreen-duckdb")
    spill.mkdir(parents=True, exist_ok=True)
    settings["temp_directory"] = str(spill)
    if cfg.threads is not None:
        settings["threads"] = int(cfg.threads)
    return ibis.duckdb.connect(**settings)


def spark_session(cfg: SparkConfig) -> Any:
    """The Spark session `cfg` describes (the running one, when the process has one)."""
    from pyspark.sql import SparkSession  # only a Spark run pays for importing it

    if not cfg.remote and (cfg.master or "").startswith("local"):
        # local workers run Python functions (validate's checks): this interpreter, with this
        # environment's packages, not whichever `python3` comes first on PATH
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(cfg.app_name)
    if cfg.remote:
        builder = builder.remote(cfg.remote)
    elif cfg.master:
        builder = builder.master(cfg.master)
    for key, value in cfg.conf.items():
        builder = builder.config(key, str(value).lower() if isinstance(value, bool) else value)
    return builder.getOrCreate()


def map_tasks(cfg: EngineConfig, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
    """`fn(item)` for each item, in order: here on DuckDB; on Spark, one Spark task per item on
    the executors, each result streamed back to this process.

    `fn` and the items travel pickled, so they must be importable functions and plain data; an
    exception `fn` raises on an executor is raised here as itself, as it would be in-process.
    """
    if cfg.name != "pyspark":
        yield from map(fn, items)
        return
    if not items:
        return
    session = spark_session(cfg.spark)
    # a few Spark partitions per core, each a range of ids: each is one job for the iterator
    # below (~0.2 s apiece locally), and what this process holds at a time is one partition's
    # results. The items travel with the function (a few hundred bytes each).
    slices = min(len(items), 4 * _parallelism(session))
    ids = session.range(0, len(items), 1, numPartitions=slices)
    results = ids.mapInPandas(_run_pickled(fn, list(items)), "id long, ok boolean, result binary")
    waiting: dict[int, tuple[bool, bytes]] = {}
    done = 0
    for row in results.toLocalIterator(prefetchPartitions=True):
        waiting[row["id"]] = (row["ok"], row["result"])
        while done in waiting:  # partitions are id ranges in order: little waits here
            ok, payload = waiting.pop(done)
            value = pickle.loads(payload)
            if not ok:
                raise value
            yield value
            done += 1
    if done != len(items):
        raise RuntimeError(f"Spark returned {done} of {len(items)} task results")


def _parallelism(session: Any) -> int:
    try:
        return int(session.sparkContext.defaultParallelism)
    except Exception:  # Spark Connect has no SparkContext to ask; its servers' usual default
        return 8


def _run_pickled(fn: Callable[[Any], Any], items: list[Any]) -> Callable[[Iterator[Any]], Any]:
    def run(frames: Iterator[Any]) -> Iterator[Any]:
        import pandas as pd

        for frame in frames:
            oks, results = [], []
            for i in frame["id"]:
                try:
                    ok, value = True, fn(items[i])
                except Exception as exc:  # raised again in the driver, where it is reported
                    ok, value = False, exc
                oks.append(ok)
                results.append(pickle.dumps(value))
            yield pd.DataFrame({"id": frame["id"], "ok": oks, "result": results})

    return run


def is_spark(con: ibis.BaseBackend) -> bool:
    return con.name == "pyspark"


def read_parquet(con: ibis.BaseBackend, paths: str | Path | Sequence[str | Path]) -> ir.Table:
    """One table from one or several parquet files, read by the engine itself: the data does
    not pass through this process."""
    many = [paths] if isinstance(paths, str | Path) else list(paths)
    if not many:
        raise FileNotFoundError("no parquet file to read")
    if is_spark(con):
        import ibis

        # one DataFrame over every file (Ibis's read_parquet takes one path)
        frame = con._session.read.parquet(*[str(p) for p in many])
        name = ibis.util.gen_name("read_parquet")
        frame.createOrReplaceTempView(name)
        return con.table(name)
    return con.read_parquet([str(p) for p in many])


def batches(con: ibis.BaseBackend, expr: ir.Table, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """The rows of `expr`, in its order, as record batches of `schema`.

    DuckDB streams them (memory stays within its limit whatever the result's size); Spark
    hands its result to this process as Arrow (`toArrow`).
    """
    # Ibis's own streaming call registers in-memory tables first, then queries; on these
    # versions it does not serve (its DuckDB one calls a method DuckDB 2 removed; its PySpark
    # one collects through pandas and back to Arrow, where Spark's `toArrow` goes direct)
    con._run_pre_execute_hooks(expr)
    sql = con.compile(expr)
    if is_spark(con):
        table = con._session.sql(sql).toArrow()
        yield from _conform(table, schema).to_batches(max_chunksize=ROW_GROUP_ROWS)
        return
    reader = con.con.sql(sql).to_arrow_reader(ROW_GROUP_ROWS // 4)
    for batch in reader:
        yield _conform(pa.Table.from_batches([batch]), schema).combine_chunks().to_batches()[0]


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with `schema`'s column names and types (an engine's own types, e.g. Spark's
    UTC-zoned timestamps, cast to the declared ones)."""
    table = table.rename_columns(schema.names)
    return table.cast(schema) if table.schema != schema else table


def collect(con: ibis.BaseBackend, expr: ir.Table) -> pa.Table:
    """A small result (a summary, a date range) as one Arrow table."""
    schema = expr.schema().to_pyarrow()
    found = list(batches(con, expr, schema))
    return pa.Table.from_batches(found, schema=schema)


def write_parquet(
    con: ibis.BaseBackend, expr: ir.Table, path: str | Path, schema: pa.Schema
) -> int:
    """Write `expr` (rows in its order) to one parquet file, atomically; returns its rows.

    Row groups of `ROW_GROUP_ROWS` rows are written as they fill, so memory holds one row group
    at most, and the bytes equal those of the whole table written by
    `pq.write_table(..., row_group_size=ROW_GROUP_ROWS)`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_for(path)
    rows = 0
    try:
        with pq.ParquetWriter(tmp, schema, **PARQUET_OPTIONS) as writer:
            pending: list[pa.RecordBatch] = []
            held = 0
            for batch in batches(con, expr, schema):
                pending.append(batch)
                held += batch.num_rows
                while held >= ROW_GROUP_ROWS:
                    group = pa.Table.from_batches(pending, schema=schema)
                    # one chunk per row group: the writer cuts pages per chunk, so the bytes
                    # would otherwise depend on how the engine batched its result
                    writer.write_table(group.slice(0, ROW_GROUP_ROWS).combine_chunks())
                    rest = group.slice(ROW_GROUP_ROWS)
                    pending, held = rest.to_batches(), rest.num_rows
                    rows += ROW_GROUP_ROWS
            if held or not rows:  # an empty result is written like `pq.write_table` does
                writer.write_table(pa.Table.from_batches(pending, schema=schema).combine_chunks())
                rows += held
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return rows
