from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from stages.cli.monitor import stage_argv
from stages.contract.prediction_log import read_logged
from stages.lib.monitoring import (
    MonitorConfig,
    data_drift_reasons,
    monitor,
    realised_performance,
    upsert_history,
)
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


def _drift(psi: float, js: float, rows_change: float = 0.0) -> dict:
    def col(metric: str, value: float, threshold: float, enough: bool = True) -> dict:
        return {
            "metric": metric,
            "value": value,
            "threshold": threshold,
            "drifted": enough and value > threshold,
            "enough_data": enough,
        }

    return {
        "tables": {
            "events": {
                "rows": {"change": rows_change, "threshold": 0.5, "drifted": rows_change > 0.5},
                "columns": {"amount": col("psi", psi, 0.25)},
            },
            "customers": {
                "rows": {"change": 0.0, "threshold": 0.5, "drifted": False},
                "columns": {
                    "plan": col("js_distance", js, 0.1),
                    "country": col("js_distance", 0.9, 0.1, enough=False),
                },
            },
        }
    }


def test_reasons_name_kind_column_value_and_threshold() -> None:
    assert data_drift_reasons(_drift(0.1, 0.05)) == []
    reasons = data_drift_reasons(_drift(0.4, 0.05, rows_change=0.8))
    assert reasons == [
        {
            "kind": "data_volume",
            "column": "events",
            "metric": "rows_change",
            "value": 0.8,
            "threshold": 0.5,
        },
        {
            "kind": "data_drift",
            "column": "events.amount",
            "metric": "psi",
            "value": 0.4,
            "threshold": 0.25,
        },
    ]


def test_prediction_drift_and_performance_flip_the_verdict() -> None:
    rng = np.random.default_rng(0)
    reference = rng.beta(2, 6, 2000)
    cfg = MonitorConfig(min_labelled=5)
    kwargs = {"drift": _drift(0.0, 0.0), "served_scores": None, "performance": {}, "cfg": cfg}
    calm = monitor(reference_scores=reference, batch_scores=rng.beta(2, 6, 2000), **kwargs)
    assert calm["retrain_recommended"] is False and calm["reasons"] == []
    shifted = monitor(reference_scores=reference, batch_scores=rng.beta(6, 2, 2000), **kwargs)
    [reason] = shifted["reasons"]
    assert reason["kind"] == "prediction_drift" and reason["column"] == "score"
    assert reason["value"] > cfg.score_psi_threshold
    served = monitor(
        reference_scores=reference,
        batch_scores=reference,
        **{**kwargs, "served_scores": rng.beta(6, 2, 500)},
    )
    assert [r["column"] for r in served["reasons"]] == ["served_score"]
    perf = {
        "2026-03-01": {"n": 50, "roc_auc": 0.9, "calibration_gap": 0.0},
        "2026-03-08": {"n": 50, "roc_auc": 0.6, "calibration_gap": 0.2},
        "2026-03-15": {"n": 3, "roc_auc": 0.1, "calibration_gap": 0.5},  # too few to judge
    }
    judged = monitor(
        reference_scores=reference, batch_scores=reference, **{**kwargs, "performance": perf}
    )
    assert [(r["kind"], r["value"], r["snapshot"]) for r in judged["reasons"]] == [
        ("performance", 0.6, "2026-03-08"),
        ("calibration", 0.2, "2026-03-08"),
    ]
    off = MonitorConfig(min_labelled=5, min_roc_auc=None, max_calibration_gap=None)
    assert (
        monitor(
            reference_scores=reference,
            batch_scores=reference,
            **{**kwargs, "performance": perf, "cfg": off},
        )["reasons"]
        == []
    )


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


def test_history_upserts_one_row_per_date() -> None:
    history = pd.DataFrame()
    for date, psi in (("2026-03-02", 0.1), ("2026-03-01", 0.2), ("2026-03-02", 0.3)):
        history = upsert_history(history, {"date": date, "psi_max": psi})
    assert history["date"].tolist() == ["2026-03-01", "2026-03-02"]
    assert history["psi_max"].tolist() == [0.2, 0.3]


def test_the_command_takes_its_paths_from_dvc_yaml(tmp_path: Path) -> None:
    assert stage_argv(ROOT / "dvc.yaml")[-1] == "metrics/monitor_history.csv"
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
    assert performance_reasons({"2026-03-01": m}, cfg) == []
    # the targets drift away from the predictions: residuals shift, the MAE triples
    late = pd.DataFrame({"k": keys[:300], "target": reference["target"][:300] + 15.0})
    m = realised_regression(predictions, late, "k", reference, cfg)["2026-03-01"]
    assert m["n"] == 300 and m["residual_drifted"] and m["mae_increase"] > 0.5
    reasons = performance_reasons({"2026-03-01": m}, cfg)
    assert [(r["kind"], r["metric"]) for r in reasons] == [
        ("residual_drift", "psi"),
        ("performance", "mae_increase"),
    ]
    report = {
        "data_drift": {"psi_max": 0.1, "js_max": None},
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
