"""Training-serving skew: the logged inputs against the train split, per input."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from stages.contract.prediction_log import log_schema
from stages.lib.shadow import DATE, read_log, served_inputs
from stages.lib.skew import serving_skew, summary_lines

CARD = {
    "numeric": [{"name": "amount", "min": 0.0, "max": 100.0}],
    "categorical": [
        {"name": "plan", "observed": ["basic", "premium", "standard"]},
        # an integer-coded category: the card keeps its codes as numbers, the log as text
        {"name": "weather", "observed": [1, 2, 3]},
    ],
}
THRESHOLDS = {
    "bins": 10,
    "psi_threshold": 0.25,
    "js_threshold": 0.1,
    "confidence": 0.99,
    "min_count": 30,
}


def training(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "snapshot_date": np.repeat(["2026-01-01", "2026-01-08", "2026-01-15"], n // 3),
            "amount": rng.gamma(4.0, 8.0, n).clip(0, 100),
            "plan": rng.choice(["basic", "premium", "standard"], n, p=[0.5, 0.2, 0.3]),
            "weather": rng.choice([1, 2, 3], n, p=[0.6, 0.3, 0.1]),
        }
    )


def write_log(folder: Path, inputs: pd.DataFrame, day: dt.date = dt.date(2026, 3, 1)) -> None:
    """The served inputs as a prediction log file, in the contract's schema."""
    start = dt.datetime.combine(day, dt.time(9), tzinfo=dt.UTC)
    rows = [
        {
            "request_id": f"r{i}",
            "row": 0,
            "time": start + dt.timedelta(seconds=i),
            "authenticated": True,
            "key": str(i),
            "features": {
                "amount": None if pd.isna(r.amount) else float(r.amount),
                "plan": r.plan,
                "weather": str(r.weather),
            },
            "score": 0.5,
        }
        for i, r in enumerate(inputs.itertuples())
    ]
    schema = log_schema("key", ["amount"], ["plan", "weather"], regression=False)
    path = folder / f"date={day.isoformat()}" / "part-1.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def skew_of(tmp_path: Path, served: pd.DataFrame) -> dict:
    write_log(tmp_path / "log", served)
    log, _ = read_log(str(tmp_path / "log"), 7)
    train = training()
    return serving_skew(
        train,
        served_inputs(log),
        CARD,
        train_groups=train["snapshot_date"],
        served_groups=log[DATE],
        **THRESHOLDS,
    )


def test_inputs_drawn_from_the_training_distribution_are_not_skewed(tmp_path):
    skew = skew_of(tmp_path, training(900, seed=1).drop(columns="snapshot_date"))
    assert skew["status"] == "compared"
    assert skew["skewed"] == []
    assert skew["outside_training"] == []
    assert set(skew["inputs"]) == {"amount", "plan", "weather"}
    assert all(c["enough_data"] for c in skew["inputs"].values())


def test_a_shifted_input_is_skewed_and_the_others_are_not(tmp_path):
    served = training(900, seed=1).drop(columns="snapshot_date")
    served["amount"] = (served["amount"] * 1.8).clip(0, 100)  # a unit slip, inside the range
    skew = skew_of(tmp_path, served)
    assert skew["skewed"] == ["amount"]
    amount = skew["inputs"]["amount"]
    assert amount["statistic"] == "psi" and amount["value"] > 0.25
    assert amount["p_value"] < skew["alpha"]
    assert skew["alpha"] == float(f"{0.01 / 3:.3g}")  # Bonferroni over the three inputs


def test_a_shifted_category_mix_is_skewed(tmp_path):
    served = training(900, seed=1).drop(columns="snapshot_date")
    served["plan"] = np.where(np.arange(900) % 10 < 8, "premium", served["plan"])
    skew = skew_of(tmp_path, served)
    assert "plan" in skew["skewed"]
    assert skew["inputs"]["plan"]["statistic"] == "js_distance"


def test_values_outside_training_are_counted(tmp_path):
    served = training(300, seed=2).drop(columns="snapshot_date")
    served.loc[:9, "amount"] = -5.0  # 10 below the training minimum
    served.loc[10:14, "amount"] = 250.0  # 5 above its maximum
    served.loc[15:16, "amount"] = np.nan  # nulls are not out of range
    served.loc[20:26, "plan"] = "platinum"  # 7 unseen
    served.loc[27:28, "plan"] = "gold"  # 2 unseen
    served.loc[30:33, "weather"] = 4  # an unseen code
    skew = skew_of(tmp_path, served)
    outside = {o["input"]: o for o in skew["outside_training"]}
    assert (outside["amount"]["count"], outside["amount"]["below"]) == (15, 10)
    assert outside["amount"]["above"] == 5
    assert outside["amount"]["served_max"] == 250.0
    assert outside["plan"]["count"] == 9
    assert outside["plan"]["values"] == {"platinum": 7, "gold": 2}
    assert outside["weather"]["values"] == {"4": 4}  # 1, 2, 3 are known although numbers
    # the most frequent first
    assert [o["input"] for o in skew["outside_training"]] == ["amount", "plan", "weather"]
    text = "\n".join(summary_lines(skew))
    assert "15 served values outside the training range [0.0, 100.0]" in text
    assert "'platinum' x7" in text


def test_an_input_missing_from_either_side_is_listed():
    train = training(300)
    skew = serving_skew(train.drop(columns="weather"), train, CARD, **THRESHOLDS)
    assert skew["missing"] == ["weather"]
    assert "weather" not in skew["inputs"]
