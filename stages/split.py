"""split: out-of-time split over snapshot dates (the latest labelled snapshot is the test set).

A random split would let the model see the future of the customers it is tested on; splitting by
snapshot date is what production looks like: train on the past, score the next period.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from stages.features import SNAPSHOT_COL
from stages.io import write_frame, write_json
from stages.params import load_params, section

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class SplitConfig:
    strategy: str = "out_of_time"
    valid_snapshots: int = 1
    test_snapshots: int = 1


def split_snapshots(frame: pd.DataFrame, cfg: SplitConfig) -> dict[str, pd.DataFrame]:
    """Newest `test_snapshots` dates: test; the `valid_snapshots` before: valid; rest: train."""
    if cfg.strategy != "out_of_time":
        raise ValueError(f"split.strategy: only 'out_of_time' is supported, got {cfg.strategy!r}")
    dates = sorted(frame[SNAPSHOT_COL].unique())
    needed = cfg.valid_snapshots + cfg.test_snapshots + 1
    if len(dates) < needed:
        raise ValueError(
            f"split: {len(dates)} snapshot date(s) {[str(d) for d in dates]}, need at least "
            f"{needed} (valid_snapshots={cfg.valid_snapshots}, test_snapshots={cfg.test_snapshots}"
            " and one to train on): simulate/ingest more days or lower features.snapshot_every_days"
        )
    test_from = len(dates) - cfg.test_snapshots
    valid_from = test_from - cfg.valid_snapshots
    groups = {
        "train": dates[:valid_from],
        "valid": dates[valid_from:test_from],
        "test": dates[test_from:],
    }
    return {
        name: frame[frame[SNAPSHOT_COL].isin(chosen)].reset_index(drop=True)
        for name, chosen in groups.items()
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.split", description=__doc__)
    parser.add_argument("snapshots", type=Path, help="features' labelled snapshots parquet")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)

    cfg = SplitConfig(**section(load_params(args.params), "split"))
    parts = split_snapshots(pd.read_parquet(args.snapshots), cfg)
    summary = {}
    for name, part in parts.items():
        write_frame(part, args.out_dir / f"{name}.parquet")
        dates = sorted(str(pd.Timestamp(d).date()) for d in part[SNAPSHOT_COL].unique())
        summary[name] = {"rows": len(part), "snapshot_dates": dates}
        print(f"split {name}: {len(part)} rows, snapshots {dates[0]}..{dates[-1]}")
    write_json(summary, args.out_dir / "summary.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
