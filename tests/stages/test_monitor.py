from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from stages.cli.monitor import stage_argv
from stages.contract.prediction_log import read_logged
from stages.lib.dataset import dataset_from_params
from stages.lib.monitoring import (
    MonitorConfig,
    expected_roc_auc,
    input_drift,
    monitor,
    performance_reasons,
    realised_performance,
    reference_performance,
    upsert_history,
    windows,
)
from stages.lib.profiling import profile_partition
from tests.conftest import ROOT

D1, D2 = dt.date(2026, 3, 1), dt.date(2026, 3, 8)


def test_realised_performance_matches_a_hand_computed_auc() -> None:
    predictions = pd.DataFrame(
        {
            "customer_id": [1, 2, 3, 4, 5, 9],
            "snapshot_date": [D1] * 5 + [D2],
            "score": [0.9, 0.4, 0.6, 0.2, 0.7, 0.5],
            "model_version": "m1",
        }
    )
    # customer 9's label is another snapshot's; customer 6 was not predicted: both left out
    labels = pd.DataFrame(
        {
            "customer_id": [1, 2, 3, 4, 5, 6, 9],
            "snapshot_date": [D1] * 6 + [D2],
            "churn": [1, 0, 0, 0, 1, 1, 1],
        }
    )
    perf = realised_performance(predictions, labels, "customer_id", "churn")
    m = perf["2026-03-01"]
    # AUC = share of (positive, negative) pairs where the positive scores higher: positives
    # {0.9, 0.7} vs negatives {0.4, 0.6, 0.2}: 6 of 6 pairs
    assert m["roc_auc"] == 1.0 and m["n"] == 5 and m["positives"] == 2
    assert m["observed_rate"] == pytest.approx(0.4)
    assert m["mean_score"] == pytest.approx(0.56)
    assert m["calibration_gap"] == pytest.approx(0.4 - 0.56)
    assert m["brier"] == pytest.approx((0.01 + 0.16 + 0.36 + 0.04 + 0.09) / 5)
    predictions.loc[2, "score"] = 0.8  # a negative now beats the positive 0.7: 5 of 6 pairs
    m = realised_performance(predictions, labels, "customer_id", "churn")["2026-03-01"]
    assert m["roc_auc"] == pytest.approx(5 / 6)
    # one class only: no AUC, the rest still measured
    assert perf["2026-03-08"]["roc_auc"] is None and perf["2026-03-08"]["n"] == 1


# --- what can be a reason, and when: windows that know their sample size -----------------------

CALLS = {
    "name": "calls",
    "tables": {
        "calls": {
            "timestamp": "call_time",
            "partition": "date",
            "format": "parquet",
            "columns": {
                "call_time": {"type": "timestamp", "nullable": False},
                "call_id": {"type": "string", "nullable": False},
                "invoice": {"type": "string"},
                "note": {"type": "string"},
                "age": {"type": "float64"},
                "channel": {"type": "string"},
                "month": {"type": "string"},
                "extra_count": {"type": "int64"},
                "y": {"type": "string", "allowed": ["yes", "no"]},
            },
        }
    },
    "task": {
        "kind": "rows_classification",
        "target": "y",
        "labels": {"yes": 1, "no": 0},
        "time": "call_time",
        "key": "call_id",
        "features": {"numeric": ["age"], "categorical": ["channel", "month"]},
    },
}
INPUTS = ("age", "channel", "month")
CUTOFF = dt.date(2026, 2, 28)  # the model's training data ends here
WORDS = np.array(["great", "call", "back", "later", "no", "answer", "busy", "price", "offer"])


def _day(rng, date, n, *, age_shift=0.0, rate=0.1, extra=5, month="feb", channels=(0.6, 0.4)):
    """One day's calls: ids and free text new every day, the rest drawn as asked."""
    return pd.DataFrame(
        {
            "call_time": pd.Timestamp(date) + pd.to_timedelta(rng.integers(0, 86400, n), "s"),
            "call_id": [f"{date}-{i}" for i in range(n)],
            "invoice": [f"INV{rng.integers(1e9)}" for _ in range(n)],
            "note": [" ".join(rng.choice(WORDS, 4)) + f" #{rng.integers(1e6)}" for _ in range(n)],
            "age": rng.normal(40 + age_shift * 10, 10, n),
            "channel": rng.choice(["cellular", "telephone"], n, p=list(channels)),
            "month": [month] * n,
            "extra_count": rng.poisson(extra, n),
            "y": np.where(rng.random(n) < rate, "yes", "no"),
        }
    )


def _profiles(days: dict[dt.date, pd.DataFrame]) -> dict[str, dict[str, dict]]:
    table = dataset_from_params(CALLS).table("calls")
    return {"calls": {d.isoformat(): profile_partition(f, table) for d, f in days.items()}}


def _history(seed: int, n: int, *, days_after: int = 14, **current) -> dict[str, dict[str, dict]]:
    """28 reference days up to CUTOFF, then `days_after` days drawn with `current`'s knobs."""
    rng = np.random.default_rng(seed)
    days = {}
    for i in range(28):
        date = CUTOFF - dt.timedelta(days=27 - i)
        days[date] = _day(rng, date, n)
    for i in range(days_after):
        date = CUTOFF + dt.timedelta(days=1 + i)
        days[date] = _day(rng, date, n, **current)
    return _profiles(days)


def _input_drift(profiles, cfg: MonitorConfig | None = None) -> dict:
    cfg = cfg or MonitorConfig(seasonal=("month",))
    return input_drift(profiles, dataset_from_params(CALLS), INPUTS, CUTOFF, cfg)


def test_ids_free_text_non_inputs_and_seasonal_columns_are_never_reasons() -> None:
    # new ids, new free text, a tripled count the model does not read, a new month: all listed,
    # none a reason
    report = _input_drift(_history(0, 60, extra=15, month="mar"))
    assert report["reasons"] == []
    roles = {name: c["role"] for name, c in report["columns"].items()}
    assert roles == {
        "calls.invoice": "identifier",
        "calls.note": "identifier",
        "calls.age": "input",
        "calls.channel": "input",
        "calls.month": "seasonal",
        "calls.extra_count": "not_input",
    }
    # they did move: the old monitor would have cried "retrain" on each (an id's values differ
    # every day, so no value is counted on every day: it compares as one bin, stages/lib/drift.py
    # exact_values, and its role alone keeps it from being a reason)
    assert report["columns"]["calls.extra_count"]["value"] > 1
    assert report["columns"]["calls.month"]["value"] > 0.5
    # the seasonal input's move is recorded: it explains score drift (see the next test)
    assert report["seasonal_moved"] == ["calls.month"] and report["columns"]["calls.month"]["moved"]
    # an input that moves the same way is a reason, with its statistic and both sample sizes
    shifted = _input_drift(_history(0, 60, age_shift=1.0))
    [reason] = shifted["reasons"]
    assert reason["kind"] == "input_drift" and reason["column"] == "calls.age"
    assert reason["statistic"] == "psi" and reason["value"] > reason["threshold"] == 0.25
    assert (reason["n_reference"], reason["n_current"]) == (28 * 60, 14 * 60)
    assert set(reason) >= {"kind", "column", "statistic", "value", "threshold", "n_reference",
                           "n_current"}  # fmt: skip
    # without `seasonal`, the month is an input like any other: a new month is then a reason
    plain = _input_drift(_history(0, 60, month="mar"), MonitorConfig())
    assert [r["column"] for r in plain["reasons"]] == ["calls.month"]


def test_a_panels_unit_is_an_input_whose_mix_can_drift() -> None:
    """One row per store a day: every partition's store codes are distinct, like ids, but the
    same stores come back every day. They stay an input, and stores closing are a reason."""
    stores = dataset_from_params(
        {
            "name": "stores",
            "tables": {
                "sales": {
                    "key": "row_id",
                    "timestamp": "day",
                    "columns": {
                        "row_id": {"type": "string", "nullable": False},
                        "day": {"type": "timestamp", "nullable": False},
                        "store_id": {"type": "int64", "nullable": False},
                        "sales": {"type": "float64"},
                    },
                }
            },
            "task": {
                "kind": "rows_regression",
                "target": "sales",
                "features": {"categorical": ["store_id"]},
            },
        }
    )
    table = stores.table("sales")

    def day(date: dt.date, open_stores: range) -> dict:
        frame = pd.DataFrame(
            {
                "row_id": [f"{date}-{s}" for s in open_stores],
                "day": pd.Timestamp(date),
                "store_id": list(open_stores),
                "sales": 100.0,
            }
        )
        return profile_partition(frame, table)

    def drift(current: range) -> dict:
        days = {}
        for i in range(28):
            date = CUTOFF - dt.timedelta(days=27 - i)
            days[date] = day(date, range(60))
        for i in range(14):
            date = CUTOFF + dt.timedelta(days=1 + i)
            days[date] = day(date, current)
        profiles = {"sales": {d.isoformat(): p for d, p in days.items()}}
        return input_drift(profiles, stores, ["store_id"], CUTOFF, MonitorConfig())

    same = drift(range(60))
    assert same["columns"]["sales.store_id"]["role"] == "input"
    assert same["reasons"] == []
    closed = drift(range(30))  # half the stores closed
    assert [r["column"] for r in closed["reasons"]] == ["sales.store_id"]


def test_a_24_row_day_flags_a_real_shift_within_a_week_and_noise_rarely() -> None:
    cfg = MonitorConfig(seasonal=("month",), last_days=7)
    flagged = [
        bool(_input_drift(_history(seed, 24, days_after=7, age_shift=1.0), cfg)["reasons"])
        for seed in range(5)
    ]
    assert all(flagged)
    false_alarms = sum(
        bool(_input_drift(_history(seed, 24, days_after=7), cfg)["reasons"]) for seed in range(30)
    )
    assert false_alarms <= 1


def test_the_models_own_days_are_never_the_current_window() -> None:
    """Ages move in the last 14 days up to the cutoff, the days the model was just judged on
    (its test split): right after that training nothing is the current window, so nothing is
    a reason (compared with the 14 days before, a sensor that follows the temperature asked
    for a retraining right after every training). Days after the cutoff are judged."""
    rng = np.random.default_rng(21)
    days = {}
    for i in range(42):
        date = CUTOFF - dt.timedelta(days=41 - i)
        days[date] = _day(rng, date, 60, age_shift=1.0 if i >= 28 else 0.0)
    report = _input_drift(_profiles(days))
    assert report["reasons"] == [] and report["periods"]["calls"]["current"]["days"] == 0
    for i in range(1, 8):
        date = CUTOFF + dt.timedelta(days=i)
        days[date] = _day(rng, date, 60, age_shift=2.0)
    report = _input_drift(_profiles(days))
    assert report["periods"]["calls"]["current"] == {
        "days": 7, "first": "2026-03-01", "last": "2026-03-07", "rows": 420,
    }  # fmt: skip
    assert [r["column"] for r in report["reasons"]] == ["calls.age"]


def test_a_tiny_effect_on_a_large_window_is_significant_but_not_a_reason() -> None:
    report = _input_drift(_history(1, 3000, days_after=7, age_shift=0.1))
    age = report["columns"]["calls.age"]
    assert age["p_value"] < 0.001 and age["value"] < 0.25
    assert report["reasons"] == []


def test_a_label_rate_rising_tenfold_on_sparse_days_is_a_label_shift() -> None:
    rng = np.random.default_rng(3)
    days = {}
    for i in range(28):
        date = CUTOFF - dt.timedelta(days=27 - i)
        days[date] = _day(rng, date, int(rng.integers(1, 30)), rate=0.05)
    calm = dict(days)
    for i in range(14):
        date = CUTOFF + dt.timedelta(days=1 + i)
        n = int(rng.integers(1, 10))
        days[date] = _day(rng, date, n, rate=0.5)
        calm[date] = _day(rng, date, n, rate=0.05)
    report = _input_drift(_profiles(days))
    [reason] = report["reasons"]
    assert reason["kind"] == "label_shift" and reason["column"] == "calls.y"
    assert reason["current_rate"] > 5 * reason["reference_rate"]
    assert reason["n_current"] < 140  # a handful of rows a day is enough for a tenfold move
    assert _input_drift(_profiles(calm))["reasons"] == []


def test_with_a_label_delay_the_label_rate_never_reads_outcomes_not_known_yet() -> None:
    """The lake (a historical export) holds the outcomes of the latest days, whose label rate
    jumped; with label_delay_days: 5 nobody knew them yet: no label shift. Without, a shift."""
    rng = np.random.default_rng(5)
    days = {}
    for i in range(42):
        date = CUTOFF - dt.timedelta(days=27 - i)
        days[date] = _day(rng, date, 30, rate=0.6 if i >= 38 else 0.05)
    profiles = _profiles(days)
    cfg = MonitorConfig(seasonal=("month",))
    [reason] = _input_drift(profiles, cfg)["reasons"]
    assert reason["kind"] == "label_shift"
    delayed = json.loads(json.dumps(CALLS))
    delayed["task"]["label_delay_days"] = 5
    report = input_drift(profiles, dataset_from_params(delayed), INPUTS, CUTOFF, cfg)
    assert report["reasons"] == []
    assert report["label_rate"]["current_rate"] < 0.1


def test_with_a_label_delay_inputs_are_judged_on_what_a_retraining_could_learn() -> None:
    """Ages shift in the latest 10 days of a lake whose outcomes come 14 days after the row: a
    retraining now learns rows up to 14 days ago, none of them shifted, so the shift is no
    reason yet (a fraud lake's new device type asked for a retraining, then another, each
    model as blind to it as the last). Once the shifted rows are older than the delay, it is."""
    delayed = json.loads(json.dumps(CALLS))
    delayed["task"]["label_delay_days"] = 14
    dataset, cfg = dataset_from_params(delayed), MonitorConfig(seasonal=("month",))

    def history(shifted_days: int, days_after: int) -> dict:
        rng = np.random.default_rng(9)
        days = {}
        for i in range(28 + days_after):
            date = CUTOFF - dt.timedelta(days=27 - i)
            days[date] = _day(
                rng, date, 60, age_shift=1.0 if i >= 28 + days_after - shifted_days else 0
            )
        return _profiles(days)

    recent = history(shifted_days=10, days_after=24)
    assert [r["column"] for r in _input_drift(recent)["reasons"]] == ["calls.age"]  # no delay
    report = input_drift(recent, dataset, INPUTS, CUTOFF + dt.timedelta(days=14), cfg)
    assert report["reasons"] == [] and report["periods"]["calls"]["moved_back_days"] == 14
    learnable = history(shifted_days=24, days_after=24)
    report = input_drift(learnable, dataset, INPUTS, CUTOFF + dt.timedelta(days=14), cfg)
    assert [r["column"] for r in report["reasons"]] == ["calls.age"]


def test_a_rows_tasks_outcomes_wait_for_the_label_delay(tmp_path: Path) -> None:
    from stages.lib.monitoring import arrived_targets

    raw = yaml.safe_load((ROOT / "conf/dataset/bank.yaml").read_text())
    raw["task"]["label_delay_days"] = 2
    dataset = dataset_from_params(raw)
    assert dataset.label.horizon_days == 2  # the monitor and the backtest wait as long
    history = pd.DataFrame(
        {
            "row_key": ["a", "b", "c", "d", "e"],
            "call_time": pd.date_range("2026-03-01 10:00", periods=5, freq="D"),
            "y": ["yes", "no", "yes", "no", "yes"],
        }
    )
    history.to_parquet(tmp_path / "calls.parquet")
    targets = arrived_targets(tmp_path, dataset, history["row_key"])
    # the latest day is 03-05: outcomes of rows up to 03-03 are known
    assert sorted(targets.itertuples(index=False, name=None)) == [("a", 1), ("b", 0), ("c", 1)]


def test_served_keys_sent_as_text_find_their_rows_targets(tmp_path: Path) -> None:
    """A served request's key is the text the client sent: an hour as the export writes it
    (a local wall clock, or with an offset), an int64 id as digits. Compared with the history's
    UTC timestamps or integers as they were, none matched and no served request was labelled."""
    from stages.lib.monitoring import arrived_targets

    raw = yaml.safe_load((ROOT / "conf/dataset/bikes.yaml").read_text())
    raw.pop("defaults")
    raw["tables"]["rentals"]["timezone"] = "Europe/Madrid"
    dataset = dataset_from_params(raw)
    table, key = dataset.task.table, dataset.task.key
    history = pd.DataFrame(
        {
            key: pd.to_datetime(["2024-11-03 06:00", "2024-11-03 07:00", "2024-11-03 08:00"]),
            dataset.task.target: [10.0, 20.0, None],
        }
    )
    history.to_parquet(tmp_path / f"{table}.parquet")
    sent = pd.Series(["2024-11-03T07:00:00", "2024-11-03T08:00:00+01:00", "2024-11-03T09:00:00"])
    found = arrived_targets(tmp_path, dataset, sent)
    # 07:00 in Madrid is 06:00 UTC; 08:00+01:00 is 07:00 UTC; 09:00 (08:00 UTC) has no target
    assert found.to_dict("list") == {
        key: ["2024-11-03T07:00:00", "2024-11-03T08:00:00+01:00"],
        "target": [10.0, 20.0],
    }
    # the published keys are the history's own timestamps: matched as they are
    published = arrived_targets(tmp_path, dataset, history[key])
    assert list(published["target"]) == [10.0, 20.0]

    raw = yaml.safe_load((ROOT / "conf/dataset/bikes.yaml").read_text())
    raw.pop("defaults")
    raw["tables"]["rentals"]["key"] = "ride_id"
    raw["tables"]["rentals"]["columns"]["ride_id"] = {"type": "int64", "unique": True}
    dataset = dataset_from_params(raw)
    assert dataset.task.key == "ride_id"
    ids = pd.DataFrame(
        {
            dataset.task.key: [101.0, 102.0],  # an int64 id the history holds as a float
            dataset.task.time: pd.to_datetime(["2026-03-01", "2026-03-02"]),
            dataset.task.target: [5.0, 8.0],
        }
    )
    ids.to_parquet(tmp_path / f"{dataset.task.table}.parquet")
    found = arrived_targets(tmp_path, dataset, pd.Series(["102", "7"]))
    assert found.to_dict("list") == {dataset.task.key: ["102"], "target": [8.0]}


def test_the_windows_are_calendar_days_not_partitions() -> None:
    dates = ["2026-01-05", "2026-01-20", "2026-02-10", "2026-02-27", "2026-03-02", "2026-03-14"]
    cfg = MonitorConfig(last_days=14, reference_days=28)
    reference, current = windows(dates, CUTOFF, cfg)
    assert current == ["2026-03-02", "2026-03-14"]
    assert reference == ["2026-02-10", "2026-02-27"]


def test_the_expected_roc_auc_is_what_labels_drawn_from_the_scores_give() -> None:
    rng = np.random.default_rng(4)
    scores = rng.beta(2, 5, 400)
    expected = expected_roc_auc(scores, scores)
    draws = [roc_auc_score(rng.random(len(scores)) < scores, scores) for _ in range(300)]
    assert abs(float(np.mean(draws)) - expected) < 0.01
    # ties count half: one score for everything says nothing
    assert expected_roc_auc(np.full(50, 0.3), np.full(50, 0.3)) == pytest.approx(0.5)


def _reference(rng, n: int = 2000) -> pd.DataFrame:
    scores = rng.beta(2, 6, n)
    return pd.DataFrame({"score": scores, "label": (rng.random(n) < scores).astype(int)})


NO_INPUTS = {"reasons": [], "psi_max": None, "js_max": None}


def test_prediction_drift_and_performance_flip_the_verdict() -> None:
    rng = np.random.default_rng(0)
    reference = _reference(rng)
    cfg = MonitorConfig(min_labelled=5)
    kwargs = {"inputs": NO_INPUTS, "served_scores": None, "performance": {}, "cfg": cfg}
    calm = monitor(reference=reference, batch_scores=rng.beta(2, 6, 2000), **kwargs)
    assert calm["retrain_recommended"] is False and calm["reasons"] == []
    shifted = monitor(reference=reference, batch_scores=rng.beta(6, 2, 2000), **kwargs)
    kinds = {r["kind"]: r for r in shifted["reasons"]}
    assert kinds["prediction_drift"]["column"] == "score"
    assert kinds["prediction_drift"]["value"] > cfg.score_psi_threshold
    assert kinds["prediction_drift"]["n_current"] == 2000
    served = monitor(
        reference=reference,
        batch_scores=reference["score"].to_numpy(),
        **{**kwargs, "served_scores": rng.beta(6, 2, 500)},
    )
    assert [r["column"] for r in served["reasons"]] == ["served_score"]
    perf = {
        "2026-03-01": {"n": 400, "positives": 80, "roc_auc": 0.9, "calibration_gap": 0.0,
                       "observed_rate": 0.2},
        "2026-03-08": {"n": 400, "positives": 80, "roc_auc": 0.5, "calibration_gap": 0.2,
                       "observed_rate": 0.2},
        "2026-03-15": {"n": 3, "positives": 1, "roc_auc": 0.1, "calibration_gap": 0.5,
                       "observed_rate": 0.3},  # too few to judge
    }  # fmt: skip
    judged = monitor(
        reference=reference, batch_scores=reference["score"].to_numpy(),
        **{**kwargs, "performance": perf},
    )  # fmt: skip
    test = judged["performance"]["test"]
    assert test["n"] == 2000 and abs(test["calibration_gap"]) < 0.02 and test["roc_auc"] > 0.7
    assert [(r["kind"], r["statistic"], r["snapshot"]) for r in judged["reasons"]] == [
        ("performance", "roc_auc_drop", "2026-03-08"),
        ("calibration", "calibration_gap_change", "2026-03-08"),
    ]
    drop, gap = judged["reasons"]
    assert drop["value"] == pytest.approx(test["roc_auc"] - 0.5, abs=1e-6)
    assert drop["ci_low"] > 0.05 and drop["test_roc_auc"] == test["roc_auc"]
    assert gap["value"] == pytest.approx(0.2 - test["calibration_gap"], abs=1e-6)
    # the same point estimates on 40 rows: the intervals reach the thresholds, no reason
    small = {"2026-03-08": {**perf["2026-03-08"], "n": 40, "positives": 8}}
    noisy = monitor(
        reference=reference, batch_scores=reference["score"].to_numpy(),
        **{**kwargs, "performance": small},
    )  # fmt: skip
    assert noisy["reasons"] == []
    off = MonitorConfig(min_labelled=5, max_roc_auc_drop=None, max_calibration_gap=None)
    assert (
        monitor(
            reference=reference,
            batch_scores=reference["score"].to_numpy(),
            **{**kwargs, "performance": perf, "cfg": off},
        )["reasons"]
        == []
    )


def test_score_drift_that_seasonal_inputs_explain_is_listed_not_a_reason() -> None:
    """A week before Christmas scores higher: the batch's scores moved because a seasonal input
    (SpecialDay) did, which retraining cannot fix. Listed with what explains it; the same move
    with the seasonal inputs where they were is a reason."""
    rng = np.random.default_rng(0)
    reference = _reference(rng)
    kwargs = {"served_scores": None, "performance": {}, "cfg": MonitorConfig()}
    shifted = rng.beta(6, 2, 2000)
    seasonal = {**NO_INPUTS, "seasonal_moved": ["sessions.SpecialDay"]}
    explained = monitor(reference=reference, batch_scores=shifted, inputs=seasonal, **kwargs)
    assert explained["reasons"] == [] and explained["retrain_recommended"] is False
    batch = explained["prediction_drift"]["batch"]
    assert batch["drifted"] and batch["explained_by_seasonal"] == ["sessions.SpecialDay"]
    alone = monitor(reference=reference, batch_scores=shifted, inputs=NO_INPUTS, **kwargs)
    assert [r["kind"] for r in alone["reasons"]] == ["prediction_drift"]


def test_performance_is_judged_against_the_models_own_test_split() -> None:
    # a model the gate blessed at ROC AUC ~0.62 whose scores sit ~0.2 under the label rate (it
    # moved inside the training window): live rows that perform as the test rows did are no
    # reason, where an absolute floor (0.7) and an absolute gap (0.1) said "retrain" the day
    # after every training, and retraining alike gives the same model
    rng = np.random.default_rng(1)
    n = 3000
    scores = rng.beta(2, 6, n)
    labels = (rng.random(n) < np.clip(0.5 * scores + 0.3, 0, 1)).astype(int)
    reference = pd.DataFrame({"score": scores, "label": labels})
    test = reference_performance(reference)
    assert test is not None and 0.55 < test["roc_auc"] < 0.68 and test["calibration_gap"] > 0.1
    from sklearn.metrics import roc_auc_score

    assert test["roc_auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    positives = round(test["observed_rate"] * 1000)
    live = {"2026-03-08": {"n": 1000, "positives": positives, "roc_auc": test["roc_auc"],
                           "observed_rate": positives / 1000,
                           "calibration_gap": test["calibration_gap"]}}  # fmt: skip
    cfg = MonitorConfig(min_labelled=200)
    assert performance_reasons(live, cfg, n, test) == []
    floors = MonitorConfig(min_labelled=200, min_roc_auc=0.7)
    assert [r["statistic"] for r in performance_reasons(live, floors, n, test)] == ["roc_auc"]
    # the same live snapshot against a test split that was calibrated and sharper: both reasons
    sharp = {**test, "roc_auc": 0.8, "calibration_gap": 0.0}
    given = performance_reasons(live, cfg, n, sharp)
    assert [r["statistic"] for r in given] == ["roc_auc_drop", "calibration_gap_change"]
    # and on 30 live rows the same drop is within the noise
    few = {"2026-03-08": {**live["2026-03-08"], "n": 30, "positives": 9, "observed_rate": 0.3}}
    assert performance_reasons(few, MonitorConfig(min_labelled=30), n, sharp) == []
    # no labels on the reference (a regression's): nothing to compare a snapshot with
    assert reference_performance(reference[["score"]]) is None


def test_served_logs_absent_are_reported_and_present_ones_read(tmp_path: Path) -> None:
    assert read_logged(None, 7)[1]["status"] == "absent"
    scores, info = read_logged(str(tmp_path / "logs"), 7)
    assert scores is None and info["detail"] == "no prediction log folder"
    logs = tmp_path / "logs"
    for day, values in (("2026-03-01", [0.1, 0.2]), ("2026-03-02", [0.3]), ("2026-03-03", [0.9])):
        (logs / f"date={day}").mkdir(parents=True)
        pd.DataFrame({"score": values}).to_parquet(logs / f"date={day}" / "part-1.parquet")
    lines = "\n".join(json.dumps({"score": v}) for v in (0.4, 0.5))
    (logs / "date=2026-03-03" / "part-2.jsonl").write_text(lines + "\n")
    (logs / "date=2026-03-03" / ".part-3.parquet.tmp").write_bytes(b"half a file")
    scores, info = read_logged(str(logs), 2)
    assert info["days"] == ["2026-03-02", "2026-03-03"] and info["rows"] == 4
    assert sorted(scores.tolist()) == [0.3, 0.4, 0.5, 0.9]
    # files before the `authenticated` column count as unauthenticated: none is kept
    scores, info = read_logged(str(logs), 2, authenticated_only=True)
    assert scores is None and info["status"] == "unauthenticated"
    assert info["unauthenticated_share"] == 1.0


def test_only_authenticated_requests_move_the_served_score_drift(tmp_path: Path) -> None:
    # 400 extreme requests without the key, and 300 ordinary ones with it
    rng = np.random.default_rng(5)
    day = tmp_path / "logs" / "date=2026-03-03"
    day.mkdir(parents=True)
    extreme = pd.DataFrame({"score": rng.beta(8, 1, 400), "authenticated": False})
    ordinary = pd.DataFrame({"score": rng.beta(2, 6, 300), "authenticated": True})
    extreme.to_parquet(day / "part-1.parquet")
    ordinary.to_parquet(day / "part-2.parquet")
    rows = [{"score": 0.99, "authenticated": False}, {"score": 0.2, "authenticated": True}]
    (day / "part-3.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    every, _ = read_logged(str(tmp_path / "logs"), 7)
    keyed, info = read_logged(str(tmp_path / "logs"), 7, authenticated_only=True)
    assert len(every) == 702 and len(keyed) == 301
    assert info["authenticated_rows"] == 301 and info["unauthenticated_share"] == round(
        401 / 702, 6
    )
    reference = _reference(rng)
    kwargs = {"inputs": NO_INPUTS, "performance": {}, "cfg": MonitorConfig()}
    batch = reference["score"].to_numpy()
    poisoned = monitor(reference=reference, batch_scores=batch, served_scores=every, **kwargs)
    assert [r["column"] for r in poisoned["reasons"]] == ["served_score"]
    honest = monitor(reference=reference, batch_scores=batch, served_scores=keyed, **kwargs)
    assert honest["reasons"] == []


def test_history_upserts_one_row_per_date() -> None:
    history = pd.DataFrame()
    for date, psi in (("2026-03-02", 0.1), ("2026-03-01", 0.2), ("2026-03-02", 0.3)):
        history = upsert_history(history, {"date": date, "psi_max": psi})
    assert history["date"].tolist() == ["2026-03-01", "2026-03-02"]
    assert history["psi_max"].tolist() == [0.2, 0.3]


def test_the_command_takes_its_paths_from_dvc_yaml(tmp_path: Path) -> None:
    argv = stage_argv(ROOT / "dvc.yaml")
    assert "metrics/monitor_history.csv" in argv
    # the seventh position: the whole report (metrics/monitor.json is its headline)
    assert [a for a in argv if not a.startswith("-")][4:7] == [
        "metrics/monitor.json",
        "metrics/monitor_history.csv",
        "artifacts/monitor/report.json",
    ]
    # the serving skew's reference is an option, not one of the positions: the champion's
    # train split (the model in production, not the one last trained)
    assert argv[argv.index("--train") + 1] == "models/champion/train.parquet"
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        stage_argv(tmp_path / "nope.yaml")
    (tmp_path / "dvc.yaml").write_text("stages: {train: {cmd: python -m stages.train}}\n")
    with pytest.raises(ValueError, match="has no 'monitor' stage"):
        stage_argv(tmp_path / "dvc.yaml")


def test_unknown_monitor_params_are_named() -> None:
    with pytest.raises(ValueError, match="unknown keys \\['psi'\\]"):
        MonitorConfig.from_params({"psi": 0.1})


def test_a_regressions_realised_performance_and_residual_drift() -> None:
    from stages.lib.monitoring import history_row, performance_reasons, realised_regression

    rng = np.random.default_rng(0)
    n = 400
    ref_pred = rng.normal(100, 20, n)
    reference = pd.DataFrame({"prediction": ref_pred, "target": ref_pred + rng.normal(0, 5, n)})
    keys = np.arange(n)
    predictions = pd.DataFrame(
        {"k": keys, "snapshot_date": D1, "prediction": ref_pred, "model_version": "m1"}
    )
    cfg = MonitorConfig(min_labelled=100)
    same = pd.DataFrame({"k": keys, "target": reference["target"]})
    m = realised_regression(predictions, same, "k", reference, cfg)["2026-03-01"]
    residuals = reference["target"] - reference["prediction"]
    assert m["n"] == n and m["mae"] == pytest.approx(residuals.abs().mean(), abs=1e-6)
    assert m["rmse"] == pytest.approx(np.sqrt((residuals**2).mean()), abs=1e-6)
    assert m["mae_increase"] == pytest.approx(0.0, abs=1e-6) and not m["residual_drifted"]
    assert performance_reasons({"2026-03-01": m}, cfg, n) == []
    # the targets drift away from the predictions: residuals shift, the MAE triples
    late = pd.DataFrame({"k": keys[:300], "target": reference["target"][:300] + 15.0})
    m = realised_regression(predictions, late, "k", reference, cfg)["2026-03-01"]
    assert m["n"] == 300 and m["residual_drifted"] and m["mae_increase"] > 0.5
    assert m["mae_increase_ci_low"] > 0.5
    reasons = performance_reasons({"2026-03-01": m}, cfg, n)
    assert [(r["kind"], r["statistic"], r["n_reference"], r["n_current"]) for r in reasons] == [
        ("residual_drift", "psi", n, 300),
        ("performance", "mae_increase", n, 300),
    ]
    # residuals that moved while the errors shrank (a week the model gets better): listed,
    # not a reason
    better = pd.DataFrame({"k": keys, "target": ref_pred + rng.normal(0, 1, n)})
    b = realised_regression(predictions, better, "k", reference, cfg)["2026-03-01"]
    assert b["residual_drifted"] and b["mae_increase"] < -0.5
    assert performance_reasons({"2026-03-01": b}, cfg, n) == []
    report = {
        "inputs": {"psi_max": 0.1, "js_max": None},
        "performance": {"snapshots": {"2026-03-01": m}},
        "prediction_drift": {"batch": {"value": 0.0}, "served": None},
        "retrain_recommended": True,
        "reasons": reasons,
    }
    row = history_row(report, "2026-03-02", "m1", regression=True)
    assert row["live_mae"] == m["mae"] and row["residual_psi"] == m["residual_psi"]
    assert row["live_roc_auc"] is None
    assert list(upsert_history(pd.DataFrame(), row).columns)[-3:] == [
        "live_mae",
        "live_rmse",
        "residual_psi",
    ]
    # metrics/monitor.json: the row's scalars, without the identifiers or the columns a
    # regression never fills; the verdict a boolean
    from stages.lib.monitoring import headline

    top = headline(row, regression=True)
    assert top["retrain_recommended"] is True and top["reasons"] == 2
    assert top["live_mae"] == m["mae"] and top["date"] == "2026-03-02"
    assert not {"model_version", "live_snapshot", "live_roc_auc", "estimated_roc_auc"} & set(top)
    assert all(not isinstance(v, dict | list) for v in top.values())
    classification = headline({**row, "retrain_recommended": 0, "live_roc_auc": 0.8})
    assert classification["retrain_recommended"] is False
    assert classification["live_roc_auc"] == 0.8


def test_a_rows_tasks_targets_arrive_by_key_from_prepares_history(
    tmp_path: Path, shop_params
) -> None:
    from stages.lib.dataset import dataset_from_params
    from stages.lib.monitoring import arrived_targets, live_performance

    raw = yaml.safe_load((ROOT / "conf/dataset/bank.yaml").read_text())
    dataset = dataset_from_params(raw)
    history = pd.DataFrame(
        {
            "row_key": ["a", "b", "c", "d", "e"],
            "call_time": pd.date_range("2026-03-01", periods=5, freq="h"),
            "y": ["yes", "no", None, "no", "yes"],
        }
    )
    history.to_parquet(tmp_path / "calls.parquet")
    published = pd.DataFrame(
        {
            "row_key": ["a", "b", "c", "e"],
            "snapshot_date": D1,
            "score": [0.8, 0.3, 0.5, 0.2],
            "model_version": "m1",
        }
    )
    targets = arrived_targets(tmp_path, dataset, published["row_key"])
    # c's outcome has not arrived; d was not published
    assert sorted(targets.itertuples(index=False, name=None)) == [("a", 1), ("b", 0), ("e", 1)]
    features = None  # a rows task does not build churn labels
    perf = live_performance(
        tmp_path, dataset, features, published, [D1], pd.DataFrame(), MonitorConfig()
    )["2026-03-01"]
    assert perf["n"] == 3 and perf["positives"] == 2 and perf["roc_auc"] == 0.5
    with pytest.raises(FileNotFoundError, match=r"calls\.parquet"):
        arrived_targets(tmp_path / "nope", dataset, published["row_key"])


def test_a_rows_task_is_never_judged_on_its_test_split_rows() -> None:
    """A day after a training, a rows task's latest period (its prediction set when no target
    is pending) still holds six days of the test split: those rows are not live evidence."""
    from stages.lib.monitoring import judged_predictions

    dataset = dataset_from_params(yaml.safe_load((ROOT / "conf/dataset/bank.yaml").read_text()))
    key = dataset.entity_key
    evaluated = dt.date(2026, 3, 7)  # the test split's period
    reference = pd.DataFrame({key: ["t1", "t2", "t3"], "snapshot_date": evaluated})
    # today's batch: the latest period, 03-02..03-08, two test rows and two new ones
    batch = pd.DataFrame(
        {key: ["t2", "t3", "n1", "n2"], "snapshot_date": dt.date(2026, 3, 8), "score": 0.5}
    )
    # published earlier: a period after the test split, one of its rows a test row
    published = pd.DataFrame(
        {key: ["t1", "p1"], "snapshot_date": dt.date(2026, 3, 8), "score": 0.4}
    )
    judged, matured = judged_predictions(
        published, batch, evaluated, dt.date(2026, 3, 9), dataset, reference
    )
    assert sorted(judged[key]) == ["n1", "n2", "p1"]
    assert matured == [dt.date(2026, 3, 8)]
    # nothing new: nothing judged
    judged, matured = judged_predictions(
        published.iloc[:1], batch.iloc[:2], evaluated, dt.date(2026, 3, 9), dataset, reference
    )
    assert judged.empty and matured == []


def test_the_monitor_stage_starts_without_scipy_stats_or_scikit_learn():
    """The daily monitor run starts in ~1 s: scipy.stats and scikit-learn (~1.5 s to import)
    are imported only when matured labels are judged; the scipy.special functions it uses are
    scipy.stats' own, value for value."""
    import subprocess
    import sys

    import numpy as np
    from scipy import special
    from scipy.stats import chi2, norm

    heavy = "('scipy.stats', 'sklearn')"
    code = f"import sys, stages.monitor; print(*(m in sys.modules for m in {heavy}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]
    x, df, q = np.linspace(0.01, 80, 200), np.arange(1, 201), np.linspace(0.001, 0.999, 200)
    assert np.array_equal(special.chdtrc(df, x), chi2.sf(x, df))
    assert np.array_equal(special.ndtr(-x / 10), norm.sf(x / 10))
    assert np.array_equal(special.ndtri(q), norm.ppf(q))


def test_a_regressions_mae_rise_is_a_reason_only_beyond_its_confidence_interval() -> None:
    """A rise of the MAE past max_mae_increase (0.5) is a reason on a large snapshot (errors
    x1.7), and not on 30 rows, whose interval still holds the threshold."""
    from stages.lib.monitoring import performance_reasons, realised_regression

    rng = np.random.default_rng(3)
    n = 2000
    pred = rng.normal(100, 20, n)
    residuals = rng.normal(0, 5, n)
    reference = pd.DataFrame({"prediction": pred, "target": pred + residuals})
    cfg = MonitorConfig(min_labelled=30, residual_psi_threshold=None)

    def judged(rows: int) -> tuple[dict, list]:
        keys = np.arange(rows)
        published = pd.DataFrame({"k": keys, "snapshot_date": D1, "prediction": pred[:rows]})
        # the rows' errors scaled to a MAE exactly 1.7 times the test split's
        scale = 1.7 * np.abs(residuals).mean() / np.abs(residuals[:rows]).mean()
        live = pd.DataFrame({"k": keys, "target": pred[:rows] + scale * residuals[:rows]})
        m = realised_regression(published, live, "k", reference, cfg)["2026-03-01"]
        return m, performance_reasons({"2026-03-01": m}, cfg, n)

    small, none = judged(30)
    large, some = judged(2000)
    assert small["mae_increase"] == pytest.approx(0.7, abs=1e-5) == large["mae_increase"]
    assert small["mae_increase_ci_low"] < 0.5 and none == []
    assert large["mae_increase_ci_low"] > 0.5
    assert [(r["kind"], r["statistic"]) for r in some] == [("performance", "mae_increase")]
    # the report's performance.test holds the test split's measures, as a classification's does
    report = monitor(
        inputs=NO_INPUTS, reference=reference, batch_scores=pred, served_scores=None,
        performance={"2026-03-01": large}, cfg=cfg, output="prediction",
    )  # fmt: skip
    test = report["performance"]["test"]
    assert test["n"] == n and test["mae"] == pytest.approx(large["reference_mae"], abs=1e-6)
    assert set(test) == {"n", "mae", "rmse", "mean_residual"}


def test_a_rows_tasks_sparse_daily_snapshots_are_pooled_until_they_can_be_judged() -> None:
    """A clinic's daily run publishes ~60 new appointments a day: no single day reaches
    `min_labelled` (200), so the monitor never judged realised performance. The latest days
    are pooled until they do, within the current window; a row published twice counts once,
    with its first prediction; dense days are judged alone, as before."""
    from stages.lib.monitoring import performance_by_kind

    dataset = dataset_from_params(yaml.safe_load((ROOT / "conf/dataset/bank.yaml").read_text()))
    key = dataset.entity_key
    rng = np.random.default_rng(3)
    days = [dt.date(2026, 3, d) for d in range(1, 11)]
    frames, targets = [], []
    for i, day in enumerate(days):
        keys = [f"r{i}-{j}" for j in range(60)]
        y = rng.random(60) < 0.2
        # the model has stopped knowing who says yes: its scores are noise
        frames.append(pd.DataFrame({key: keys, "snapshot_date": day, "score": rng.random(60)}))
        targets.append(pd.DataFrame({key: keys, "target": y.astype(int)}))
    # the latest day republishes two rows of the day before, scored anew: counted once
    again = frames[-2].iloc[:2].assign(snapshot_date=days[-1], score=0.99)
    published = pd.concat([*frames, again], ignore_index=True)
    labels = pd.concat(targets, ignore_index=True)
    reference = pd.DataFrame({"score": np.r_[np.full(500, 0.9), np.full(500, 0.1)],
                              "label": np.r_[np.ones(500), np.zeros(500)]})  # fmt: skip
    cfg = MonitorConfig(min_labelled=200, last_days=14)
    performance = performance_by_kind(dataset, published, labels, reference, cfg)
    latest = performance["2026-03-10"]
    assert latest["n"] == 240 and latest["pooled_from"] == "2026-03-07"
    assert "2026-03-06" in performance and "2026-03-07" not in performance
    reasons = performance_reasons(performance, cfg, 1000, reference_performance(reference))
    assert [r["statistic"] for r in reasons] == ["roc_auc_drop", "calibration_gap_change"]
    # never beyond the current window: 3 days of it hold only 180 rows, judged by no one
    short = MonitorConfig(min_labelled=200, last_days=3)
    narrow = performance_by_kind(dataset, published, labels, reference, short)
    assert narrow["2026-03-10"]["n"] == 180
    assert performance_reasons(narrow, short, 1000, reference_performance(reference)) == []
    # a dense day is judged alone
    dense = MonitorConfig(min_labelled=50, last_days=14)
    alone = performance_by_kind(dataset, published, labels, reference, dense)
    assert alone["2026-03-10"]["n"] == 62 and "pooled_from" not in alone["2026-03-10"]


def test_re_sent_outcomes_count_on_their_rows_day_not_the_day_they_arrived(tmp_path: Path) -> None:
    """Outcomes re-sent after their rows (`lake land --arrived`): the latest partitions hold
    rows whose outcome is not in yet, and the outcomes that land hold older rows'. Read from
    the partitions, the label rate of the window's own rows is never seen; read from the
    history by each row's day, its tenfold rise is a label shift."""
    from stages.lib.monitoring import label_days

    dataset = dataset_from_params(CALLS)
    rng = np.random.default_rng(11)
    days, history = {}, []
    for i in range(42):
        date = CUTOFF - dt.timedelta(days=27 - i)
        day = _day(rng, date, 40, rate=0.5 if i >= 28 else 0.05)
        history.append(day)
        landed = day.copy()
        landed["y"] = None  # the day's rows land without their outcome
        days[date] = landed
    pd.concat(history, ignore_index=True).to_parquet(tmp_path / "calls.parquet")
    cfg = MonitorConfig(seasonal=("month",))
    profiles = _profiles(days)
    assert input_drift(profiles, dataset, INPUTS, CUTOFF, cfg)["reasons"] == []

    by_day = label_days(tmp_path, dataset)
    assert by_day is not None and len(by_day) == 42
    assert sum(n for _, n in by_day.values()) == 42 * 40
    report = input_drift(profiles, dataset, INPUTS, CUTOFF, cfg, by_day)
    [reason] = report["reasons"]
    assert reason["kind"] == "label_shift" and reason["current_rate"] > 0.3
    assert report["label_rate"]["read"] == "history, by row day"
    # a regression, or no history: nothing to read (the profiles are)
    assert label_days(tmp_path / "nope", dataset) is None
