"""`evergreen publish`: copy the batch predictions to the lake's output area.

    evergreen publish [--lake DIR|s3://bucket/prefix] [--predictions PATH]

The predict stage's `predictions.parquet` goes to

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

import argparse
import hashlib
import io
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from stages.io import PARTITION_RE, write_bytes_atomic
from stages.params import PARAMS_FILE, default_lake

FOLDER = "predictions"
FILE = "predictions.parquet"
SNAPSHOT_COL = "snapshot_date"
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
    table = pq.read_table(io.BytesIO(data), columns=[SNAPSHOT_COL])
    dates = sorted({str(d) for d in table.column(SNAPSHOT_COL).to_pylist()})
    if len(dates) != 1:
        raise ValueError(
            f"{source}: expected predictions of one snapshot date in '{SNAPSHOT_COL}', "
            f"found {dates or 'none'}"
        )
    return dates[0]


def destination(lake: str, date: str) -> str:
    return f"{lake.rstrip('/')}/{FOLDER}/date={date}/{FILE}"


def _s3():
    import s3fs

    # a fresh instance without a listings cache: a second publish sees the first one's object
    return s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)


def publish(data: bytes, lake: str, *, source: str = "predictions") -> Published:
    """Write `data` (a predictions parquet file) to the lake, atomically and idempotently."""
    date = snapshot_date(data, source)
    dest = destination(lake, date)
    md5 = hashlib.md5(data).hexdigest()
    if lake.startswith("s3://"):
        fs = _s3()
        key = dest.removeprefix("s3://")
        bucket = key.split("/", 1)[0]
        if not fs.exists(bucket):
            raise FileNotFoundError(f"lake not found: bucket '{bucket}' of {lake} does not exist")
        if fs.exists(key) and str(fs.info(key).get("ETag", "")).strip('"') == md5:
            return Published(dest, date, md5, written=False)
        fs.pipe_file(key, data, chunksize=SINGLE_PUT_BYTES)
        return Published(dest, date, md5, written=True)
    if "://" in lake:
        raise ValueError(f"--lake {lake!r}: expected a local folder or s3://bucket/prefix")
    if not Path(lake).is_dir():
        raise FileNotFoundError(f"lake not found: {lake} is not a directory")
    path = Path(dest)
    if path.is_file() and hashlib.md5(path.read_bytes()).hexdigest() == md5:
        return Published(dest, date, md5, written=False)
    if path.parent.is_dir():
        for stale in path.parent.glob(f".{FILE}.tmp-*"):  # left by a killed publish
            stale.unlink(missing_ok=True)
    write_bytes_atomic(data, path)
    return Published(dest, date, md5, written=True)


def read_published(lake: str) -> pd.DataFrame:
    """Every published day's predictions, oldest first (an empty frame when there are none).
    Only complete files under their final name are read, never a temporary one."""
    root = f"{lake.rstrip('/')}/{FOLDER}"
    frames = []
    if lake.startswith("s3://"):
        fs = _s3()
        base = root.removeprefix("s3://")
        days = sorted(fs.ls(base, detail=False)) if fs.exists(base) else []
        for day in days:
            name = day.rstrip("/").rsplit("/", 1)[-1]
            if PARTITION_RE.match(name) and fs.exists(f"{day}/{FILE}"):
                frames.append(pd.read_parquet(io.BytesIO(fs.cat_file(f"{day}/{FILE}"))))
    else:
        folder = Path(root)
        for day in sorted(folder.iterdir()) if folder.is_dir() else []:
            if PARTITION_RE.match(day.name) and (day / FILE).is_file():
                frames.append(pd.read_parquet(day / FILE))
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="evergreen publish",
        description="Copy the batch predictions to <lake>/predictions/date=YYYY-MM-DD/.",
    )
    parser.add_argument("--lake", help="lake folder or s3://bucket/prefix (default: lake.path)")
    parser.add_argument(
        "--predictions",
        type=Path,
        default=Path("artifacts/predict") / FILE,
        help="the predict stage's output",
    )
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (for lake.path)")
    args = parser.parse_args(argv)

    lake = default_lake(args.lake, args.params)
    try:
        if not args.predictions.is_file():
            raise FileNotFoundError(
                f"{args.predictions}: predictions not found (run `dvc repro` first)"
            )
        done = publish(args.predictions.read_bytes(), lake, source=str(args.predictions))
    except (FileNotFoundError, ValueError) as exc:
        print(f"evergreen publish: {exc}", file=sys.stderr)
        return 2
    verb = "published" if done.written else "already published (same md5), nothing written"
    print(f"{verb}: {done.destination} ({done.md5})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
