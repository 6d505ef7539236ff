"""Sample lakes of the example datasets besides the shop (`conf/dataset/<name>.yaml`), written by
`evergreen lake simulate --dataset NAME`. Each module generates one day's partition of its table
from `np.random.default_rng([seed, day])` (and a population drawn from `seed` alone), so a lake
is the same bytes whether written in one run or appended day by day. None of them copies
third-party data: they are generated in the shape of well-known public datasets.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa

from stages.contract.storage import Lake
from stages.sim.shop import LANDING, PART_FILE, parquet_bytes

SAMPLES = ("retail", "bank", "bikes")
META_FILE = "_simulator/meta.json"


class SampleLakeMismatch(ValueError):
    """The lake holds another dataset, start or seed than the one asked for."""


@dataclass(frozen=True)
class Sample:
    """One dataset's generator: `day(date, index, seed)` is that day's rows (None: no partition,
    the shop was closed)."""

    table: str
    start: dt.date
    days: int
    day: Callable[[dt.date, int, int], pd.DataFrame | None]
    schema: pa.Schema


def sample(name: str) -> Sample:
    if name not in SAMPLES:
        raise ValueError(f"unknown dataset {name!r} (known: shop, {', '.join(SAMPLES)})")
    return importlib.import_module(f"stages.sim.samples.{name}").SAMPLE


def write_sample(
    name: str, lake_url: str, *, start: dt.date | None, days: int | None, seed: int
) -> str:
    """Write `days` days of dataset `name` to the lake: from `start` on a new lake; on a lake it
    already holds, `days` more (without `start`) or up to day `days - 1` (with the same `start`).
    Returns a one-line summary."""
    gen = sample(name)
    lake = Lake(lake_url)
    meta = json.loads(lake.read(META_FILE)) if lake.exists(META_FILE) else None
    if meta is None:
        first, done = start or gen.start, 0
        end = days or gen.days
    else:
        wanted = {
            "dataset": name,
            "seed": seed,
            "start": (start or dt.date.fromisoformat(meta["start"])).isoformat(),
        }
        held = {k: meta[k] for k in wanted}
        if held != wanted:
            raise SampleLakeMismatch(f"{lake_url} holds {held}, asked for {wanted}")
        first, done = dt.date.fromisoformat(meta["start"]), int(meta["next_day"])
        end = (days or gen.days) if start is not None else done + (days or 1)
    rows = partitions = 0
    for index in range(done, end):
        date = first + dt.timedelta(days=index)
        frame = gen.day(date, index, seed)
        if frame is None:
            continue
        table = pa.Table.from_pandas(frame, schema=gen.schema, preserve_index=False)
        rel = f"{LANDING}/{gen.table}/date={date.isoformat()}/{PART_FILE}"
        lake.write(rel, parquet_bytes(table))
        rows += len(frame)
        partitions += 1
    next_day = max(end, done)
    meta = {"dataset": name, "seed": seed, "start": first.isoformat(), "next_day": next_day}
    lake.write(META_FILE, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    last = first + dt.timedelta(days=next_day - 1)
    return (
        f"lake {lake_url}: dataset {name}, {partitions} partition(s) of {gen.table} written "
        f"({rows} rows), days {first}..{last}"
    )
