"""Prediction logging off the request path: a bounded buffer and a writer thread per worker.

Every prediction becomes one record (request id, time, latency, model name and version, data
version, git commit, entity key, features, score, decision, and the shadow model's version and
score; a regression logs `prediction` and `shadow_prediction` instead, with no decision). A
request only appends its records to an in-memory buffer, column by column (`Columns`: a lock,
a few list appends); a writer thread
turns the buffer into one file when `flush_records` records wait or the oldest has waited
`flush_seconds`, and at shutdown. Files are never appended to: each is written
whole (locally to a temporary name, then renamed; on S3 one PUT), so a reader never sees half a
file, and the layout is the same on a local folder and an `s3://` prefix:

    <path>/date=YYYY-MM-DD/part-<UTC time>-<pid>-<seq>.parquet|.jsonl

When `max_queued` records already wait (a slow or hung sink), new records are dropped and
counted; a write that fails loses its records, counted as failed, and leaves no file behind
(nor a temporary one). Neither ever reaches the request. The destination is opened by the
writer thread, not when the worker starts: an `s3://` prefix whose bucket region cannot be
looked up (or an object store that is down) fails writes, never the server's start, and is
retried at every write. Counters, and the last failure's message and time, are shared by all
workers of a server (for /info); each worker also logs a warning at most every
`WARN_EVERY_S` seconds while its writes fail.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from serve.schema import ServingSchema, WireBatch
from stages.contract.prediction_log import log_schema, open_destination

log = logging.getLogger("evergreen.serve")

COUNTERS = ("logged", "written", "dropped", "failed", "files", "shadow_errors")
# at most one warning per this many seconds about failing writes, per worker
WARN_EVERY_S = 60.0
# bytes kept of the last failure's message
ERROR_BYTES = 512


class Refusals:
    """Requests the server refused (422) and the fields named, in shared memory as `Counters`:
    a category the model never saw (a new product line, a new vehicle code) is refused before
    any log sees it, so its count here is the only trace of it."""

    # a field the model does not take (a client sending a new column, or the target): any name
    # can come, so they share one count
    EXTRA = "(not a model input)"

    def __init__(self, fields: Sequence[str]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.fields = (*fields, self.EXTRA)
        self._values = ctx.Array("q", len(self.fields) + 1)  # [requests, *by field]

    def add(self, errors: Sequence[Mapping[str, Any]]) -> None:
        """One refused request; each error naming a field counts for it (a batch of 5 rows
        with an unknown category counts 5), a field no model input is counted as EXTRA."""
        with self._values.get_lock():
            self._values[0] += 1
            for err in errors:
                named = [p for p in err.get("loc", ()) if isinstance(p, str) and p in self.fields]
                if err.get("type") == "extra_forbidden":
                    named = [self.EXTRA]
                if named:
                    self._values[1 + self.fields.index(named[-1])] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._values.get_lock():
            values = self._values[:]
        by_field = {f: n for f, n in zip(self.fields, values[1:], strict=True) if n}
        return {"requests": values[0], "by_field": by_field}


class Counters:
    """Integer counters, and the last failure of the log, in shared memory: created before
    the workers start, so every process of the server (inference workers, API servers) sees
    the same values."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._values = ctx.Array("q", len(COUNTERS))
        self._error = ctx.Array("c", ERROR_BYTES)
        self._error_at = ctx.Value("d", 0.0, lock=False)  # guarded by _error's lock

    def add(self, name: str, n: int = 1) -> None:
        i = COUNTERS.index(name)
        with self._values.get_lock():
            self._values[i] += n

    def snapshot(self) -> dict[str, int]:
        with self._values.get_lock():
            return dict(zip(COUNTERS, self._values[:], strict=True))

    def record_error(self, message: str, at: float | None = None) -> None:
        """Keep `message` (its first ERROR_BYTES - 1 bytes) as the last failure, at `at`."""
        data = message.encode("utf-8", "replace").replace(b"\0", b" ")[: ERROR_BYTES - 1]
        with self._error.get_lock():
            self._error.value = data
            self._error_at.value = time.time() if at is None else at

    def last_error(self) -> dict[str, str | None]:
        """{"last_error": message, "last_error_at": ISO time (UTC)}, both None before any."""
        with self._error.get_lock():
            data, at = self._error.value, self._error_at.value
        if not at:
            return {"last_error": None, "last_error_at": None}
        when = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")
        return {"last_error": data.decode("utf-8", "replace"), "last_error_at": when}


@dataclass(frozen=True)
class SinkConfig:
    path: str
    format: Literal["parquet", "jsonl"]
    max_queued: int
    flush_records: int
    flush_seconds: float
    close_timeout_s: float = 3.0


@dataclass(frozen=True)
class LogEntry:
    """One answered request: its rows and what the models said about them."""

    request_id: str
    time: float
    latency_ms: float
    wire: WireBatch
    scores: np.ndarray
    decisions: np.ndarray
    shadow_scores: np.ndarray | None
    # the request carried a valid API key (False: the server runs without one)
    authenticated: bool = False

    def __len__(self) -> int:
        return len(self.wire)


class Columns:
    """Buffered entries, column by column: what `submit` keeps of each entry until it is
    written. Only its own lists are objects the garbage collector tracks (the numbers, text
    and numpy arrays in them are not), however many records wait: 20,000 buffered LogEntry
    objects made every full collection in a serving process walk some 100,000 objects, pauses
    of 25-150 ms on the event loop (bench/README.md, "The p99 tail")."""

    def __init__(self, categorical: int) -> None:
        self.request_ids: list[str] = []
        self.times: list[float] = []
        self.latencies: list[float] = []
        self.authenticated: list[bool] = []
        self.sizes: list[int] = []
        self.keys: list[int | str] = []
        self.numeric: list[np.ndarray] = []
        self.categorical: list[list[str | None]] = [[] for _ in range(categorical)]
        self.scores: list[np.ndarray] = []
        self.decisions: list[np.ndarray] = []
        self.shadow: list[np.ndarray | None] = []
        self.rows = 0

    @classmethod
    def of(cls, entries: list[LogEntry], categorical: int) -> Columns:
        columns = cls(categorical)
        for e in entries:
            columns.add(e)
        return columns

    def __len__(self) -> int:
        """Entries (requests) held; `rows` counts their records."""
        return len(self.request_ids)

    def add(self, e: LogEntry) -> None:
        n = len(e)
        self.request_ids.append(e.request_id)
        self.times.append(e.time)
        self.latencies.append(e.latency_ms)
        self.authenticated.append(e.authenticated)
        self.sizes.append(n)
        self.keys.extend(e.wire.keys)
        self.numeric.append(e.wire.numeric)
        for column, values in zip(self.categorical, e.wire.categorical, strict=True):
            column.extend(values)
        self.scores.append(e.scores)
        self.decisions.append(e.decisions)
        self.shadow.append(e.shadow_scores)
        self.rows += n

    def shadow_scores(self) -> np.ndarray:
        """The shadow's outputs, NaN for the requests it did not score."""
        missing = sum(s is None for s in self.shadow)
        if missing == len(self.shadow):
            return np.full(self.rows, np.nan)
        if not missing:
            return np.concatenate(self.shadow)
        pairs = zip(self.shadow, self.sizes, strict=True)
        return np.concatenate([np.full(n, np.nan) if s is None else s for s, n in pairs])


def log_table(columns: Columns, schema: ServingSchema, meta: Mapping[str, str | None]) -> pa.Table:
    """Buffered entries as one Arrow table (see `log_schema`); `meta` gives the constant
    columns model_name, model_version, data_version, git_commit, shadow_model_version."""
    n = columns.rows
    sizes = np.asarray(columns.sizes, dtype=np.int64)
    # each record's entry, for the columns logged once per request
    entry = np.repeat(np.arange(len(sizes)), sizes)
    numeric = np.concatenate(columns.numeric)
    children = [
        pa.array(np.ascontiguousarray(numeric[:, j]), from_pandas=True)
        for j in range(len(schema.numeric))
    ]
    children += [pa.array(values, type=pa.string()) for values in columns.categorical]
    names = [f.name for f in schema.numeric] + [f.name for f in schema.categorical]
    starts = np.repeat(np.cumsum(sizes) - sizes, sizes)

    def repeated(value: str | None) -> pa.Array:
        return pa.array([value] * n, type=pa.string())

    times_ms = (np.asarray(columns.times, dtype=np.float64) * 1000).astype(np.int64)
    out = {
        "request_id": pa.array(columns.request_ids, type=pa.string()).take(entry),
        "row": pa.array((np.arange(n) - starts).astype(np.int32)),
        "time": pa.array(times_ms[entry], pa.timestamp("ms", tz="UTC")),
        "latency_ms": pa.array(np.asarray(columns.latencies, dtype=np.float64)[entry]),
        "authenticated": pa.array(np.asarray(columns.authenticated, dtype=bool)[entry]),
        "model_name": repeated(meta.get("model_name")),
        "model_version": repeated(meta.get("model_version")),
        "data_version": repeated(meta.get("data_version")),
        "git_commit": repeated(meta.get("git_commit")),
        schema.entity_key: pa.array([str(k) for k in columns.keys], type=pa.string()),
        "features": pa.StructArray.from_arrays(children, names=names)
        if names
        else pa.nulls(n, pa.struct([])),
        "shadow_model_version": repeated(meta.get("shadow_model_version")),
    }
    outputs = np.concatenate(columns.scores)
    shadow_outputs = pa.array(columns.shadow_scores(), from_pandas=True)
    if schema.regression:
        out.update(prediction=pa.array(outputs), shadow_prediction=shadow_outputs)
    else:
        out.update(score=pa.array(outputs), decision=pa.array(np.concatenate(columns.decisions)))
        out.update(shadow_score=shadow_outputs)
    return pa.Table.from_pydict(
        out,
        schema=log_schema(
            schema.entity_key,
            [f.name for f in schema.numeric],
            [f.name for f in schema.categorical],
            regression=schema.regression,
        ),
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def encode(table: pa.Table, fmt: str) -> bytes:
    """A log table as file bytes: Parquet (zstd) or JSON lines (NaN written as null)."""
    if fmt == "parquet":
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        return sink.getvalue().to_pybytes()
    lines = [json.dumps(row, default=_json_default, allow_nan=False) for row in table.to_pylist()]
    return ("\n".join(lines) + "\n").encode()


class PredictionSink:
    """The buffer and writer thread of one inference worker; see the module doc."""

    def __init__(
        self,
        config: SinkConfig,
        schema: ServingSchema,
        meta: Mapping[str, str | None],
        counters: Counters,
    ) -> None:
        self.config = config
        self.schema = schema
        self.meta = dict(meta)
        self.counters = counters
        # opened by the writer thread (`_destination`); a local folder is known without it
        self.fs: pafs.FileSystem | None = None
        self.base = ""
        self.local = not config.path.startswith("s3://")
        self._pending = self._columns()
        self._oldest = 0.0
        self._closing = False
        self._seq = 0
        self._last_warning = -math.inf
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)

    def _columns(self) -> Columns:
        return Columns(len(self.schema.categorical))

    def start(self) -> PredictionSink:
        self._thread.start()
        return self

    def submit(self, entry: LogEntry) -> bool:
        """Queue an entry for writing; never blocks on the sink. False: dropped (full/closed)."""
        n = len(entry)
        with self._cond:
            accepted = not self._closing and self._pending.rows + n <= self.config.max_queued
            if accepted:
                if not self._pending:
                    self._oldest = time.monotonic()
                    self._cond.notify()
                self._pending.add(entry)
                if self._pending.rows >= self.config.flush_records:
                    self._cond.notify()
        self.counters.add("logged" if accepted else "dropped", n)
        return accepted

    def close(self, timeout: float | None = None) -> None:
        """Write what is buffered and stop; waits at most `timeout` (default: the config's)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(self.config.close_timeout_s if timeout is None else timeout)
        if self._thread.is_alive():
            log.warning(
                "prediction log: %s still writing after %.1f s at shutdown; buffered records "
                "may be lost",
                self.config.path,
                self.config.close_timeout_s if timeout is None else timeout,
            )

    def _due(self) -> bool:
        if not self._pending:
            return False
        if self._pending.rows >= self.config.flush_records:
            return True
        return time.monotonic() - self._oldest >= self.config.flush_seconds

    def _destination(self) -> pafs.FileSystem:
        if self.fs is None:
            self.fs, self.base, self.local = open_destination(self.config.path)
        return self.fs

    def _failed(self, what: str, exc: BaseException) -> None:
        """Record a failure for /info and warn (at most every WARN_EVERY_S per worker)."""
        message = f"{what} {self.config.path}: {type(exc).__name__}: {exc}"
        self.counters.record_error(message)
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY_S:
            self._last_warning = now
            log.warning("prediction log: %s (counted in /info)", message)

    def _run(self) -> None:
        try:  # open early, so that a destination that cannot be reached shows before a flush
            self._destination()
        except Exception as exc:
            self._failed("cannot open", exc)
        while True:
            with self._cond:
                while not self._closing and not self._due():
                    wait = None
                    if self._pending:
                        wait = self.config.flush_seconds - (time.monotonic() - self._oldest)
                    self._cond.wait(timeout=None if wait is None else max(wait, 0.0))
                batch, self._pending = self._pending, self._columns()
                closing = self._closing
            if batch:
                self._write(batch)
            if closing:
                return

    def _file_path(self, first: float) -> str:
        self._seq += 1
        stamp = datetime.fromtimestamp(first, UTC)
        name = f"part-{stamp:%Y%m%dT%H%M%S%f}Z-{os.getpid()}-{self._seq:06d}.{self.config.format}"
        return f"{self.base}/date={stamp:%Y-%m-%d}/{name}"

    def _write(self, batch: Columns) -> None:
        rows = batch.rows
        try:
            data = encode(log_table(batch, self.schema, self.meta), self.config.format)
            fs = self._destination()
            path = self._file_path(batch.times[0])
            directory, name = path.rsplit("/", 1)
            if self.local:
                fs.create_dir(directory, recursive=True)
                tmp = f"{directory}/.{name}.tmp"
                try:
                    with fs.open_output_stream(tmp) as out:
                        out.write(data)
                    fs.move(tmp, path)
                except BaseException:
                    with suppress(Exception):  # a full disk: leave no partial file behind
                        fs.delete_file(tmp)
                    raise
            else:
                with fs.open_output_stream(path) as out:
                    out.write(data)
        except Exception as exc:  # any sink failure: count it, never raise into serving
            self.counters.add("failed", rows)
            self._failed(f"{rows} records lost writing to", exc)
            return
        self.counters.add("written", rows)
        self.counters.add("files", 1)
