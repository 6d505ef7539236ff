from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pytest

from stages.lib.splitting import SplitConfig, split_snapshots
from stages.split import main
from tests.conftest import write_params


def _snapshots(n_dates: int) -> pd.DataFrame:
    dates = [dt.date(2026, 1, 1) + dt.timedelta(days=7 * i) for i in range(n_dates)]
    return pd.DataFrame(
        {
            "customer_id": [1, 2] * n_dates,
            "snapshot_date": [d for d in dates for _ in (0, 1)],
            "churn": [0, 1] * n_dates,
        }
    )


def test_latest_snapshot_is_test_and_train_is_strictly_older():
    parts = split_snapshots(_snapshots(5), SplitConfig(valid_snapshots=1, test_snapshots=1))
    assert set(parts["test"]["snapshot_date"]) == {dt.date(2026, 1, 29)}
    assert set(parts["valid"]["snapshot_date"]) == {dt.date(2026, 1, 22)}
    assert parts["train"]["snapshot_date"].max() < parts["valid"]["snapshot_date"].min()
    assert sum(len(p) for p in parts.values()) == 10


def test_too_few_snapshots_and_unknown_strategy_are_explained():
    with pytest.raises(ValueError, match="2 snapshot date"):
        split_snapshots(_snapshots(2), SplitConfig())
    with pytest.raises(ValueError, match="only 'out_of_time'"):
        split_snapshots(_snapshots(4), SplitConfig(strategy="random"))


def test_main_writes_three_splits(tmp_path, shop_params):
    params = write_params(shop_params, tmp_path / "params.yaml")
    _snapshots(4).to_parquet(tmp_path / "snapshots.parquet")
    assert (
        main(
            [str(tmp_path / "snapshots.parquet"), str(tmp_path / "split"), "--params", str(params)]
        )
        == 0
    )
    summary = json.loads((tmp_path / "split/summary.json").read_text())
    assert [summary[s]["rows"] for s in ("train", "valid", "test")] == [4, 2, 2]
    assert pd.read_parquet(tmp_path / "split/test.parquet")["churn"].tolist() == [0, 1]
