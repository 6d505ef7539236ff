"""The profiles stage's run (stages/profiles.py): bring `<out>/<table>/date=D.json` up to date
with the validated partitions, profiling only what changed (the profile itself:
stages/lib/profiling.py, which the readers of profiles import without this bookkeeping).

Incremental, like validate and prepare (stages/lib/incremental.py): the output folder is
persisted and `<out>/manifest.json` records, per table and partition, the md5 of the validated
file a profile was computed from and the size + md5 of the profile written. A run profiles only
the partitions that are new or whose validated file changed (or whose profile is missing or
altered), and removes the profiles of partitions no longer validated: the daily run profiles
one day, not the whole history. A change of the stage's code, of `dataset.tables` or `profile`
(the fingerprint) profiles everything again. The files are byte-identical to a full run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from stages.lib.dataset import DatasetConfig
from stages.lib.incremental import (
    MANIFEST,
    MANIFEST_FORMAT,
    SHARED_CODE,
    STAGES_ROOT,
    fingerprint,
    load_stat_cache,
    read_manifest,
    remove_temp_files,
    save_stat_cache,
    write_manifest,
)
from stages.lib.io import validated_partitions, write_json
from stages.lib.profiling import ProfileConfig, profile_partition

# the profiles stage's code (its deps in dvc.yaml, tested): an edit to any of it re-profiles
CODE_FILES = (
    "profiles.py",
    "lib/profile_store.py",
    "lib/profiling.py",
    *(name for name in SHARED_CODE if name != "lib/engine.py"),  # profiles reads with pyarrow
)
LIBRARIES = ("numpy", "pandas", "pyarrow")


def profiles_fingerprint(tables_params: Mapping, profile_params: Mapping) -> str:
    """What the profiles depend on besides the data: code, `dataset.tables`, `profile`."""
    return fingerprint(
        code=[STAGES_ROOT / name for name in CODE_FILES],
        params={"dataset.tables": tables_params, "profile": profile_params},
        libraries=LIBRARIES,
        version=MANIFEST_FORMAT,
    )


@dataclass(frozen=True)
class ProfileRun:
    """Per table: (partitions, rows, partitions profiled in this run); `rebuilt`: why the
    manifest was not used ("" when it was)."""

    tables: dict[str, tuple[int, int, int]]
    rebuilt: str


def run_profiles(
    validated_dir: Path,
    out_dir: Path,
    dataset: DatasetConfig,
    cfg: ProfileConfig,
    fingerprint_: str,
) -> ProfileRun:
    """Bring `<out>/<table>/date=D.json` up to date with the validated partitions (see the
    module docstring): the profiles first, the manifest last, each written atomically."""
    remove_temp_files(out_dir)
    previous, why = read_manifest(out_dir / MANIFEST, fingerprint_)
    old_tables = (previous or {}).get("tables", {})
    # md5s of the validated files and of the profiles, kept beside the output folder (not
    # validate's own cache: each stage's cache keeps only the files its run looked up)
    cache = load_stat_cache(out_dir)
    entries: dict[str, dict[str, dict]] = {}
    summary = {}
    for table in dataset.tables:
        partitions = validated_partitions(validated_dir, table.name)
        folder = out_dir / table.name
        wanted = {f"date={d}.json" for d in partitions}
        for stale in sorted(folder.glob("date=*.json")) if folder.is_dir() else []:
            if stale.name not in wanted:  # a partition no longer validated
                stale.unlink()
        old = old_tables.get(table.name, {})
        entries[table.name] = {}
        rows = profiled = 0
        for date, path in partitions.items():
            source = cache.stamp(path, f"validated/{table.name}/{date}")
            out = folder / f"date={date}.json"
            label = f"profile/{table.name}/{date}"
            entry = old.get(date)
            if (
                source is not None
                and entry is not None
                and entry["source"] == source.md5
                and (written := cache.stamp(out, label)) is not None
                and written.to_json() == entry["output"]
            ):
                entries[table.name][date] = entry
                rows += int(entry["rows"])
                continue
            profile = profile_partition(
                pq.read_table(path).to_pandas(),
                table,
                top_k=cfg.top_k,
                day=date,
                late_after_days=cfg.late_after_days,
            )
            write_json(profile, out)
            entries[table.name][date] = {
                "source": None if source is None else source.md5,
                "output": cache.stamp(out, label).to_json(),
                "rows": profile["rows"],
            }
            rows += profile["rows"]
            profiled += 1
        summary[table.name] = (len(partitions), rows, profiled)
    write_manifest(out_dir / MANIFEST, fingerprint_, {"tables": entries})
    save_stat_cache(out_dir, cache)
    return ProfileRun(summary, why if previous is None else "")
