"""The core of the `split` stage (stages/split.py): out-of-time split over snapshot dates (the
latest labelled snapshot is the test set).

A random split would let the model see the future of the customers it is tested on; splitting by
snapshot date is what production looks like: train on the past, score the next period.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from stages.lib.predictions import SNAPSHOT_COL

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class SplitConfig:
    strategy: str = "out_of_time"
    valid_snapshots: int = 1
    test_snapshots: int = 1

    def __post_init__(self) -> None:
        for name in ("valid_snapshots", "test_snapshots"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"split.{name}: {value} is not a whole number >= 1")


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
