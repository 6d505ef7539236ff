"""Small file helpers shared by the stages: atomic writes, partition listing, typed parquet."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stages.contract.storage import PARTITION_RE, tmp_for, write_bytes_atomic

# Columns validate adds to every valid row and prepare orders by: the partition it landed in and
# its row number there (here, not in stages/validate.py, so prepare need not import pandera; and
# not in stages/lib/incremental.py, so the features, which read the partition of an entity's
# version, need not depend on the manifests).
PARTITION_COL = "_partition"
ROW_COL = "_row"

if TYPE_CHECKING:  # pandas costs prepare and features, which never use it, 0.2-0.3 s to import
    import pandas as pd

# metrics are rounded to this many digits: last-bit BLAS differences stay out of the files
DIGITS = 6


ARROW_TYPES: dict[str, pa.DataType] = {
    "int64": pa.int64(),
    "float64": pa.float64(),
    "string": pa.string(),
    "bool": pa.bool_(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us"),
}


# how every parquet file is written (stages/lib/engine.py streams with the same options)
PARQUET_OPTIONS: dict[str, Any] = {"compression": "zstd", "write_statistics": True}


def write_json(obj: Any, path: str | Path) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    return write_bytes_atomic(text.encode(), path)


def write_table(table: pa.Table, path: str | Path) -> Path:
    """Write an Arrow table as parquet, atomically, with deterministic bytes; a failed write
    (a full disk, a read-only folder) leaves no temporary file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_for(path)
    try:
        pq.write_table(table, tmp, **PARQUET_OPTIONS)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def frame_parquet(df: pd.DataFrame, schema: pa.Schema | None = None) -> bytes:
    """A frame as deterministic parquet bytes (what `write_frame` writes)."""
    table = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
    sink = pa.BufferOutputStream()
    # pandas metadata embeds index/dtype details that vary with how the frame was built
    pq.write_table(table.replace_schema_metadata(None), sink, **PARQUET_OPTIONS)
    return sink.getvalue().to_pybytes()


def write_frame(df: pd.DataFrame, path: str | Path, schema: pa.Schema | None = None) -> Path:
    return write_bytes_atomic(frame_parquet(df, schema), path)


def _partition_pattern(key: str) -> re.Pattern[str]:
    return re.compile(PARTITION_RE.pattern.replace("date=", f"{re.escape(key)}=", 1))


def list_partitions(table_dir: str | Path, key: str = "date") -> dict[str, list[Path]]:
    """`<table_dir>/<key>=YYYY-MM-DD/<files>` -> {date: sorted files}, in date order.

    The date is only matched (`date=2026-13-45` is listed): whoever reads it checks it."""
    table_dir = Path(table_dir)
    found: dict[str, list[Path]] = {}
    if not table_dir.is_dir():
        return found
    pattern = _partition_pattern(key)
    for child in sorted(table_dir.iterdir()):
        match = pattern.match(child.name)
        if match and child.is_dir():
            found[match.group(1)] = sorted(p for p in child.iterdir() if p.is_file())
    return found


def partition_form(key: str = "date") -> str:
    """The name a partition folder must have, as people read it: `date=YYYY-MM-DD`."""
    return f"{key}=YYYY-MM-DD"


def unread_folders(table_dir: str | Path, key: str = "date") -> dict[str, str]:
    """The folders of `table_dir` that `list_partitions` does not read (`date=2026-3-3`,
    `dt=2026-03-03`, `Date=2026-03-03`): {name: the form expected}, by name. Hidden and
    `_`-prefixed folders (`_temporary`) are markers, not data."""
    table_dir = Path(table_dir)
    if not table_dir.is_dir():
        return {}
    pattern = _partition_pattern(key)
    return {
        child.name: partition_form(key)
        for child in sorted(table_dir.iterdir())
        if child.is_dir()
        and not child.name.startswith((".", "_"))
        and not pattern.match(child.name)
    }


def round_floats(obj: Any, digits: int = DIGITS) -> Any:
    """Round every float in a nested structure; numpy scalars become Python numbers.

    Rounding keeps last-bit differences between BLAS builds out of the metrics files.
    """
    if isinstance(obj, Mapping):
        return {str(k): round_floats(v, digits) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [round_floats(v, digits) for v in obj]
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        value = float(obj)
        if not math.isfinite(value):
            raise ValueError(f"metrics: non-finite value {value}")
        return round(value, digits) + 0.0  # + 0.0 turns -0.0 into 0.0
    return obj


def write_metrics(path: str | Path, payload: Any) -> Path:
    """Deterministic JSON, atomically: floats rounded, keys sorted, no NaN, trailing newline."""
    text = json.dumps(round_floats(payload), indent=2, sort_keys=True, allow_nan=False)
    return write_bytes_atomic((text + "\n").encode(), path)


def read_frame(path: str | Path) -> pd.DataFrame:
    """Read one parquet file, naming it if it is absent."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: parquet file not found")
    import pandas as pd

    return pd.read_parquet(path)


def read_json(path: str | Path, what: str) -> Any:
    """A JSON file a stage reads; FileNotFoundError/ValueError name the file and what it is."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: {what} is not valid JSON ({exc})") from exc


def validated_file(table: str, partition: str) -> str:
    """Where validate writes a partition's valid rows, relative to its output folder (prepare
    and the profiles read them back with `validated_partitions`)."""
    return f"{table}/date={partition}.parquet"


def validated_partitions(validated_dir: Path, table: str) -> dict[str, Path]:
    """`<validated_dir>/<table>/date=D.parquet` files as {D: path}, in date order."""
    folder = validated_dir / table
    found = {}
    for path in sorted(folder.glob("date=*.parquet")) if folder.is_dir() else []:
        match = PARTITION_RE.match(path.name.removesuffix(".parquet"))
        if match:
            found[match.group(1)] = path
    return found


def github_output(values: Mapping[str, str]) -> None:
    """Step outputs for the workflow, when it runs in GitHub Actions (here, not with the
    commands that set them: `evergreen run` must not import promote's model loading, ~3 s)."""
    path = os.environ.get("GITHUB_OUTPUT")
    if path:
        with open(path, "a") as f:
            f.writelines(f"{k}={v}\n" for k, v in values.items())
