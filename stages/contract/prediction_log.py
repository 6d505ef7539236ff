"""The server's prediction log: one agreement, written by serve/sink.py and read by the monitor.

    <path>/date=YYYY-MM-DD/part-<UTC time>-<pid>-<seq>.parquet|.jsonl

on a local folder or an `s3://bucket/prefix` (pyarrow's filesystems: the server writes with
them, off the request path). `log_schema` is a file's columns; `read_logged` reads one column
of the latest days back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from stages.contract.storage import PARTITION_RE

# the column of a model's output, by task
SCORE = "score"  # a classification's probability of the positive class
PREDICTION = "prediction"  # a regression's number


def open_destination(path: str) -> tuple[pafs.FileSystem, str, bool]:
    """(filesystem, base path, is_local) for a local folder or an `s3://bucket/prefix`."""
    if path.startswith("s3://"):
        fs, base = pafs.FileSystem.from_uri(path)
        return fs, base.rstrip("/"), False
    if "://" in path:
        raise ValueError(
            f"predictions_path {path!r}: expected a local folder or s3://bucket/prefix"
        )
    return pafs.LocalFileSystem(), os.path.abspath(path), True


def log_schema(
    entity_key: str, numeric: Sequence[str], categorical: Sequence[str], *, regression: bool
) -> pa.Schema:
    """The columns of a prediction log file."""
    features = pa.struct(
        [pa.field(name, pa.float64()) for name in numeric]
        + [pa.field(name, pa.string()) for name in categorical]
    )
    return pa.schema(
        [
            ("request_id", pa.string()),
            ("row", pa.int32()),
            ("time", pa.timestamp("ms", tz="UTC")),
            ("latency_ms", pa.float64()),
            # the request carried a valid API key (always False on a server without one):
            # traffic anyone can send is told apart from the authenticated clients'
            ("authenticated", pa.bool_()),
            ("model_name", pa.string()),
            ("model_version", pa.string()),
            ("data_version", pa.string()),
            ("git_commit", pa.string()),
            # as text: a key may be an integer in one request and a string in another; a
            # record that left out its surrogate key has its request-local id, "#<i>" (its
            # position in the request `request_id`; serve/schema.py `local_id`)
            (entity_key, pa.string()),
            ("features", features),
            *_output_fields(regression),
        ]
    )


def _output_fields(regression: bool) -> list[tuple[str, pa.DataType]]:
    """What the models said: a classification's score and decision, or a regression's
    prediction (it has no decision to log)."""
    if regression:
        return [
            ("prediction", pa.float64()),
            ("shadow_model_version", pa.string()),
            ("shadow_prediction", pa.float64()),
        ]
    return [
        ("score", pa.float64()),
        ("decision", pa.bool_()),
        ("shadow_model_version", pa.string()),
        ("shadow_score", pa.float64()),
    ]


def log_files(
    path: str | None, days: int
) -> tuple[tuple[pafs.FileSystem, list[str]] | None, dict[str, Any]]:
    """The log's files of its latest `days` days with files (parquet or JSON lines, a local
    folder or s3://), in day then name order, with their filesystem; None and why when there
    are none. The info names the path and the days chosen: what every reader of the log
    reports (the monitor's scores, `evergreen shadow`'s rows)."""
    if not path:
        return None, {"status": "absent", "detail": "serve.predictions_path is not set"}
    if path.startswith("s3://"):
        fs, base = pafs.FileSystem.from_uri(path)
    else:
        fs, base = pafs.LocalFileSystem(), str(Path(path).resolve())
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        return None, {"status": "absent", "path": path, "detail": "no prediction log folder"}
    by_day: dict[str, list[str]] = {}
    for info in fs.get_file_info(pafs.FileSelector(base, recursive=True)):
        parent, _, name = info.path.rpartition("/")
        match = PARTITION_RE.match(parent.rpartition("/")[2])
        if match and info.is_file and name.endswith((".parquet", ".jsonl")) and name[0] != ".":
            by_day.setdefault(match.group(1), []).append(info.path)
    if not by_day:
        return None, {"status": "absent", "path": path, "detail": "no prediction log files"}
    chosen = sorted(by_day)[-days:]
    files = [f for day in chosen for f in sorted(by_day[day])]
    return (fs, files), {"status": "read", "path": path, "days": chosen}


def read_logged(
    path: str | None, days: int, column: str = SCORE, *, authenticated_only: bool = False
) -> tuple[np.ndarray | None, dict[str, Any]]:
    """Scores (or a regression's `prediction`: `column`) of the server's prediction log in its
    latest `days` days (parquet or JSON lines, local folder or s3://); None with the reason
    when there is no log. With `authenticated_only`, only the rows of requests that carried the
    API key (`authenticated`; a file written before the column existed counts as
    unauthenticated); the info says how many rows were read and how many were authenticated."""
    found, info = log_files(path, days)
    if found is None:
        return None, info
    fs, files = found
    scores, keyed = [], []
    for file in files:
        values, authenticated = _read_file(fs, file, column)
        scores.append(values)
        keyed.append(authenticated)
    values = np.concatenate(scores).astype("float64")
    authenticated = np.concatenate(keyed).astype(bool)
    info = {
        **info,
        "rows": len(values),
        "authenticated_rows": int(authenticated.sum()),
        "unauthenticated_share": round(float(1 - authenticated.mean()), 6) if len(values) else 0.0,
    }
    if authenticated_only:
        values = values[authenticated]
        if not len(values):
            return None, {**info, "status": "unauthenticated", "detail": (
                "no request carried the API key: unauthenticated traffic never moves the "
                "monitor (anyone could have sent it)")}  # fmt: skip
    return values, info


def _read_file(fs: pafs.FileSystem, file: str, column: str) -> tuple[np.ndarray, np.ndarray]:
    """One log file's `column` (float64, NaN for null) and its `authenticated` flags."""
    if file.endswith(".parquet"):
        names = pq.read_schema(file, filesystem=fs).names
        wanted = [column, *(["authenticated"] if "authenticated" in names else [])]
        table = pq.read_table(file, columns=wanted, filesystem=fs, use_threads=False)
        values = table[column].to_numpy(zero_copy_only=False).astype("float64")
        if "authenticated" in names:
            flags = table["authenticated"].fill_null(False).to_numpy(zero_copy_only=False)
        else:
            flags = np.zeros(len(values), dtype=bool)
        return values, flags.astype(bool)
    with fs.open_input_stream(file) as f:
        rows = [json.loads(line) for line in f.read().splitlines() if line.strip()]
    values = np.array([np.nan if r.get(column) is None else r[column] for r in rows], "float64")
    return values, np.array([r.get("authenticated") is True for r in rows], dtype=bool)
