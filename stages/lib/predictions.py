"""The batch predictions file: what the predict stage writes, `evergreen publish` copies to the
lake, and the monitor and the insights report read back.

Every row is dated by SNAPSHOT_COL (the feature tables carry the same column). The predict
stage's `predictions.parquet` is published to

    <lake>/predictions/date=YYYY-MM-DD/predictions.parquet

where the date is the predictions' snapshot date. The copy is atomic: locally the bytes go to a
temporary name in the same folder, then are renamed; on S3 they are one PUT of the whole
object, so a reader (or a crash) never leaves half a file under the final key. It is
idempotent: when the lake already holds the same bytes (same md5; on S3 the ETag of a single
PUT is its md5) nothing is written. A run of the same day with other predictions (a retrained
model) replaces the day's file: the lake holds the latest predictions for each date.

`read_published` reads every published day back (monitoring and the report use it).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from stages.contract.storage import PARTITION_RE, s3_filesystem
from stages.lib.io import write_bytes_atomic

SNAPSHOT_COL = "snapshot_date"
# the predict stage's outputs: the batch's predictions and the model's scores on the test split
PREDICTIONS = "predictions.parquet"
REFERENCE = "reference_scores.parquet"
META_COLUMNS = ("model_name", "model_version", "data_version")
# where `evergreen publish` puts them: <lake>/predictions/date=D/predictions.parquet
FOLDER = "predictions"
FILE = PREDICTIONS
# an S3 PUT takes up to 5 GiB in one request; s3fs switches to a multipart upload at twice its
# chunk size, so this keeps any predictions file a single PUT
SINGLE_PUT_BYTES = 5 * 2**30


@dataclass(frozen=True)
class Published:
    destination: str
    date: str
    md5: str
    written: bool  # False: the lake already held these bytes


def snapshot_date(data: bytes, source: str) -> str:
    """The one snapshot date of a predictions file."""
    # one column of a small file: no thread pool. A threaded read of a Python file object can
    # leave an Arrow pool thread alive at interpreter exit, which aborts the process
    # ("terminate called without an active exception", seen in `evergreen publish`;
    # apache/arrow#34314, #50482). `pre_buffer` too: its reads go to Arrow's I/O thread pool
    # whatever `use_threads` says, and the abort came back with use_threads=False alone
    table = pq.read_table(
        io.BytesIO(data), columns=[SNAPSHOT_COL], use_threads=False, pre_buffer=False
    )
    dates = sorted({str(d) for d in table.column(SNAPSHOT_COL).to_pylist()})
    if len(dates) != 1:
        raise ValueError(
            f"{source}: expected predictions of one snapshot date in '{SNAPSHOT_COL}', "
            f"found {dates or 'none'}"
        )
    return dates[0]


def destination(lake: str, date: str) -> str:
    return f"{lake.rstrip('/')}/{FOLDER}/date={date}/{FILE}"


def publish(data: bytes, lake: str, *, source: str = "predictions") -> Published:
    """Write `data` (a predictions parquet file) to the lake, atomically and idempotently."""
    date = snapshot_date(data, source)
    dest = destination(lake, date)
    md5 = hashlib.md5(data).hexdigest()
    if lake.startswith("s3://"):
        fs = s3_filesystem()
        key = dest.removeprefix("s3://")
        bucket = key.split("/", 1)[0]
        if not fs.exists(bucket):
            raise FileNotFoundError(f"lake not found: bucket '{bucket}' of {lake} does not exist")
        if fs.exists(key) and str(fs.info(key).get("ETag", "")).strip('"') == md5:
            return Published(dest, date, md5, written=False)
        try:
            fs.pipe_file(key, data, chunksize=SINGLE_PUT_BYTES)
        except OSError as exc:  # s3fs: PermissionError for AccessDenied, OSError otherwise
            raise _unwritable(dest, exc) from exc
        return Published(dest, date, md5, written=True)
    if "://" in lake:
        raise ValueError(f"--lake {lake!r}: expected a local folder or s3://bucket/prefix")
    if not Path(lake).is_dir():
        raise FileNotFoundError(f"lake not found: {lake} is not a directory")
    path = Path(dest)
    if path.is_file() and hashlib.md5(path.read_bytes()).hexdigest() == md5:
        return Published(dest, date, md5, written=False)
    try:
        if path.parent.is_dir():
            for stale in path.parent.glob(f".{FILE}.tmp-*"):  # left by a killed publish
                stale.unlink(missing_ok=True)
        write_bytes_atomic(data, path)  # a failed write leaves no temporary file
    except OSError as exc:  # a full disk, a read-only folder, a file where a folder should be
        in_the_way = next((p for p in reversed(path.parents) if p.is_file()), None)
        raise _unwritable(dest, exc, in_the_way) from exc
    return Published(dest, date, md5, written=True)


def _unwritable(dest: str, exc: OSError, in_the_way: Path | None = None) -> OSError:
    """A failed write as one line naming the destination (not the temporary file)."""
    why = exc.strerror or str(exc) or type(exc).__name__
    if in_the_way is not None:
        why = f"{in_the_way} is a file, not a folder"
    failed = OSError(f"cannot write {dest}: {why}")
    failed.errno = exc.errno  # kept for callers; the message stays free of "[Errno N]"
    return failed


def read_published(lake: str) -> pd.DataFrame:
    """Every published day's predictions, oldest first (an empty frame when there are none).
    Only complete files under their final name are read, never a temporary one."""
    root = f"{lake.rstrip('/')}/{FOLDER}"
    frames = []
    if lake.startswith("s3://"):
        fs = s3_filesystem()
        base = root.removeprefix("s3://")
        days = sorted(fs.ls(base, detail=False)) if fs.exists(base) else []
        for day in days:
            name = day.rstrip("/").rsplit("/", 1)[-1]
            if PARTITION_RE.match(name) and fs.exists(f"{day}/{FILE}"):
                raw = io.BytesIO(fs.cat_file(f"{day}/{FILE}"))
                frames.append(pd.read_parquet(raw, use_threads=False))
    else:
        folder = Path(root)
        for day in sorted(folder.iterdir()) if folder.is_dir() else []:
            if PARTITION_RE.match(day.name) and (day / FILE).is_file():
                frames.append(pd.read_parquet(day / FILE, use_threads=False))
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True)


def decision_threshold(evaluate_params: Mapping[str, Any]) -> float:
    """`evaluate.threshold`: a score at or above it is a positive decision (the predictions'
    `decision` column, the report's "at risk"); evaluate judges the model with the same one."""
    threshold = float(evaluate_params.get("threshold", 0.5))
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"evaluate.threshold: {threshold} is not in [0, 1]")
    return threshold
