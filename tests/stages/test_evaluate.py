from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from stages.contract.feature_schema import FeatureSchema, save_schema
from stages.evaluate import main
from stages.lib.evaluation import (
    OUT_OF_RANGE,
    EvaluateConfig,
    SliceSpec,
    calibration_table,
    evaluate_model,
    feature_importance,
    slice_labels,
    slice_metrics,
    thin,
)
from stages.lib.model_io import load_model, save_model
from stages.lib.training import ModelConfig, train_model

SCHEMA = FeatureSchema(
    entity_key="customer_id",
    time="snapshot_date",
    label="churn",
    numeric=("tenure",),
    categorical=("plan",),
    categories={"plan": ("basic", "premium")},
)
PLOTS = (
    "roc.json",
    "pr.json",
    "calibration.json",
    "confusion.csv",
    "importance.json",
    "residuals.json",  # actual - predicted (for a classification, label - probability)
)


def make_frame(n: int, seed: int) -> pd.DataFrame:
    """Churn driven by `tenure` (numeric) and `plan` (categorical)."""
    rng = np.random.default_rng(seed)
    tenure = rng.normal(size=n)
    plan = rng.choice(["basic", "premium"], size=n)
    logit = -2.0 * tenure + np.where(plan == "basic", 1.0, -1.0)
    return pd.DataFrame(
        {
            "customer_id": np.arange(n, dtype="int64"),
            "snapshot_date": pd.Timestamp("2024-03-01").date(),
            "tenure": tenure,
            "plan": pd.Series(plan, dtype="str"),
            "churn": (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype("int64"),
        }
    )


@pytest.fixture(params=["logistic_regression", "hist_gradient_boosting"])
def stage_inputs(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Path]:
    cfg = ModelConfig("m", request.param, {"max_iter": 50})
    model = save_model(
        train_model(make_frame(300, seed=1), SCHEMA, cfg, seed=7), tmp_path / "model.skops"
    )
    test = make_frame(250, seed=2)
    # values the model never saw, and a missing one
    test.loc[0:4, "plan"] = "enterprise"
    test.loc[5, "plan"] = None
    test.to_parquet(tmp_path / "test.parquet")
    params = tmp_path / "params.yaml"
    evaluate = {
        "threshold": 0.5,
        "calibration_bins": 10,
        "slices": ["plan", {"name": "tenure_band", "column": "tenure", "bins": [-1, 0, 1]}],
        "importance_repeats": 2,
    }
    params.write_text(yaml.safe_dump({"seed": 7, "evaluate": evaluate}))
    return {
        "model": model,
        "test": tmp_path / "test.parquet",
        "schema": save_schema(SCHEMA, tmp_path / "feature_schema.json"),
        "params": params,
    }


def run_main(inputs: dict[str, Path], out: Path) -> tuple[Path, Path]:
    metrics, plots = out / "evaluate.json", out / "plots"
    argv = [str(inputs[k]) for k in ("model", "test", "schema")]
    options = ["--slices-out", str(out / "slices.json"), "--params", str(inputs["params"])]
    assert main([*argv, str(metrics), str(plots), *options]) == 0
    return metrics, plots


def test_perfect_and_reversed_scorers() -> None:
    y = np.array([0, 0, 1, 1, 0, 1])
    score = np.array([0.1, 0.2, 0.8, 0.9, 0.3, 0.7])
    perfect, _ = evaluate_model(y, score, 0.5, 5)
    assert perfect["roc_auc"] == 1.0
    assert perfect["pr_auc"] == 1.0
    assert perfect["f1"] == perfect["precision"] == perfect["recall"] == 1.0
    reversed_, _ = evaluate_model(y, 1.0 - score, 0.5, 5)
    assert reversed_["roc_auc"] == 0.0
    assert reversed_["f1"] == reversed_["precision"] == reversed_["recall"] == 0.0


def test_threshold_metrics_match_hand_counts() -> None:
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    score = np.array([0.9, 0.6, 0.5, 0.2, 0.7, 0.5, 0.1, 0.1, 0.3, 0.0])
    metrics, tables = evaluate_model(y, score, 0.5, 4)
    # score >= 0.5 predicts 1: tp = 3 (0.9, 0.6, 0.5), fp = 2 (0.7, 0.5), fn = 1 (0.2)
    precision, recall = 3 / 5, 3 / 4
    assert metrics["precision"] == round(precision, 6)
    assert metrics["recall"] == round(recall, 6)
    assert metrics["f1"] == round(2 * precision * recall / (precision + recall), 6)
    assert (metrics["n"], metrics["positives"], metrics["positive_rate"]) == (10, 4, 0.4)
    assert metrics["brier"] == round(float(np.mean((score - y) ** 2)), 6)
    p = np.clip(score, 1e-15, 1 - 1e-15)
    expected_log_loss = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert metrics["log_loss"] == pytest.approx(expected_log_loss, abs=1e-5)
    # rank statistic: fraction of (positive, negative) pairs ordered right, ties count half
    pairs = [(a, b) for a in score[y == 1] for b in score[y == 0]]
    auc = np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs])
    assert metrics["roc_auc"] == round(float(auc), 6)
    confusion = tables.confusion
    assert list(confusion.columns) == ["actual", "predicted"]
    assert len(confusion) == 10
    assert pd.crosstab(confusion["actual"], confusion["predicted"]).to_numpy().tolist() == [
        [4, 2],
        [1, 3],
    ]


def test_calibration_table_by_hand() -> None:
    y = np.array([0, 1, 0, 1, 1, 1])
    score = np.array([0.1, 0.2, 0.3, 0.8, 0.9, 1.0])
    table = calibration_table(y, score, bins=2)
    assert table["bin"].tolist() == [0, 1]
    assert table["bin_lower"].tolist() == [0.0, 0.5]
    assert table["bin_upper"].tolist() == [0.5, 1.0]
    assert table["count"].tolist() == [3, 3]
    np.testing.assert_allclose(table["mean_predicted"], [0.2, 0.9])
    np.testing.assert_allclose(table["observed_rate"], [1 / 3, 1.0])
    # empty bins are left out rather than written as NaN
    assert calibration_table(y, score, bins=10)["bin"].tolist() == [1, 2, 3, 8, 9]


def test_curves_are_thinned_deterministically() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=5000)
    score = np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0, 1)
    _, tables = evaluate_model(y, score, 0.5, 10)
    _, again = evaluate_model(y, score, 0.5, 10)
    for name in ("roc", "pr"):
        curve = getattr(tables, name)
        assert 2 < len(curve) <= 200
        pd.testing.assert_frame_equal(curve, getattr(again, name))
        assert curve["threshold"].between(0, 1).all()
    roc = tables.roc
    assert (roc.iloc[0][["fpr", "tpr"]].tolist(), roc.iloc[-1][["fpr", "tpr"]].tolist()) == (
        [0.0, 0.0],
        [1.0, 1.0],
    )
    assert roc["fpr"].is_monotonic_increasing
    assert roc["tpr"].is_monotonic_increasing
    # the thinned ROC still integrates to the full-resolution AUC
    assert np.trapezoid(roc["tpr"], roc["fpr"]) == pytest.approx(roc_auc_score(y, score), 2e-3)


def test_thin_keeps_short_curves_whole_and_ends_of_long_ones() -> None:
    short = pd.DataFrame({"x": range(5)})
    assert thin(short, 200)["x"].tolist() == [0, 1, 2, 3, 4]
    long = thin(pd.DataFrame({"x": range(1000)}), 200)
    assert len(long) == 200
    assert (long["x"].iloc[0], long["x"].iloc[-1]) == (0, 999)


@pytest.mark.parametrize(
    ("y", "score", "message"),
    [
        ([0, 0, 0], [0.1, 0.2, 0.3], "single class"),
        ([0, 1], [0.1, 0.2, 0.3], "equal length"),
        ([0, 2], [0.1, 0.2], "0/1"),
        ([0, 1], [0.1, 1.2], r"\[0, 1\]"),
        ([0, 1], [0.1, np.nan], r"\[0, 1\]"),
        ([], [], "no examples"),
    ],
)
def test_bad_inputs_are_refused(y: list, score: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        evaluate_model(np.array(y), np.array(score), 0.5, 10)


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError, match="threshold"):
        EvaluateConfig(threshold=1.5)
    with pytest.raises(ValueError, match="calibration_bins"):
        EvaluateConfig.from_params({"threshold": 0.5, "calibration_bins": 0})


def test_main_writes_metrics_and_plots(stage_inputs: dict[str, Path], tmp_path: Path) -> None:
    metrics_path, plots = run_main(stage_inputs, tmp_path / "out")
    metrics = json.loads(metrics_path.read_text())
    assert metrics_path.read_text() == json.dumps(metrics, indent=2, sort_keys=True) + "\n"
    test = pd.read_parquet(stage_inputs["test"])
    scores = load_model(stage_inputs["model"]).predict_proba(test[["tenure", "plan"]])[:, 1]
    assert metrics["roc_auc"] == round(roc_auc_score(test["churn"], scores), 6)
    assert metrics["roc_auc"] > 0.75
    assert metrics["n"] == 250
    assert sorted(p.name for p in plots.iterdir()) == sorted(PLOTS)
    residuals = pd.DataFrame(json.loads((plots / "residuals.json").read_text())["residuals"])
    assert set(residuals["actual"]) == {0, 1} and len(residuals) == 250
    assert np.allclose(
        residuals["residual"], residuals["actual"] - residuals["predicted"], atol=2e-6
    )
    assert np.allclose(np.sort(residuals["predicted"]), np.sort(scores), atol=1e-6)
    roc = json.loads((plots / "roc.json").read_text())["roc"]
    assert set(roc[0]) == {"fpr", "tpr", "threshold"}
    pr = json.loads((plots / "pr.json").read_text())["pr"]
    assert set(pr[0]) == {"precision", "recall", "threshold"}
    calibration = json.loads((plots / "calibration.json").read_text())["calibration"]
    assert sum(row["count"] for row in calibration) == 250
    with (plots / "confusion.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 250
    assert [r["actual"] for r in rows] == [str(v) for v in test["churn"]]
    predicted_positive = sum(r["predicted"] == "1" for r in rows)
    assert predicted_positive == int((scores >= 0.5).sum())


def test_main_is_deterministic(stage_inputs: dict[str, Path], tmp_path: Path) -> None:
    metrics_a, plots_a = run_main(stage_inputs, tmp_path / "a")
    metrics_b, plots_b = run_main(stage_inputs, tmp_path / "b")
    assert metrics_a.read_bytes() == metrics_b.read_bytes()
    assert (tmp_path / "a/slices.json").read_bytes() == (tmp_path / "b/slices.json").read_bytes()
    for name in PLOTS:
        assert (plots_a / name).read_bytes() == (plots_b / name).read_bytes()


def test_main_missing_feature_names_column_and_file(
    stage_inputs: dict[str, Path], tmp_path: Path
) -> None:
    pd.read_parquet(stage_inputs["test"]).drop(columns="tenure").to_parquet(stage_inputs["test"])
    with pytest.raises(ValueError, match=r"test\.parquet: missing column.*'tenure'"):
        run_main(stage_inputs, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_main_schema_that_disagrees_with_model(
    stage_inputs: dict[str, Path], tmp_path: Path
) -> None:
    other = FeatureSchema("customer_id", "snapshot_date", "churn", ("tenure",), ())
    save_schema(other, stage_inputs["schema"])
    with pytest.raises(ValueError, match=r"model\.skops: trained on features"):
        run_main(stage_inputs, tmp_path / "out")


def test_main_missing_model_file(stage_inputs: dict[str, Path], tmp_path: Path) -> None:
    stage_inputs["model"].unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.skops"):
        run_main(stage_inputs, tmp_path / "out")


def test_slice_labels_values_missing_bins_and_out_of_range() -> None:
    frame = pd.DataFrame(
        {
            "plan": pd.Series(["basic", None, "premium"], dtype="str"),
            "tenure": [5.0, np.nan, 400.0],
            "age": [-1.0, 90.0, 1e9],
        }
    )
    assert slice_labels(frame, SliceSpec("plan", "plan")).tolist() == [
        "basic",
        "__missing__",
        "premium",
    ]
    bands = SliceSpec("band", "tenure", (0, 90, 365, float("inf")))
    assert slice_labels(frame, bands).tolist() == ["[0, 90)", "__missing__", "[365, inf)"]
    bounded = SliceSpec("age", "age", (0, 90, 365.5))
    # right-open: 90 falls in the second bin; below the first edge or above the last: neither
    assert slice_labels(frame, bounded).tolist() == [OUT_OF_RANGE, "[90, 365.5)", OUT_OF_RANGE]


def test_slice_metrics_by_hand() -> None:
    frame = pd.DataFrame({"plan": ["a", "a", "a", "a", "b", "b", "c"]})
    y = np.array([1, 0, 1, 0, 0, 0, 1])
    score = np.array([0.9, 0.2, 0.4, 0.6, 0.7, 0.1, 0.8])
    got = slice_metrics(frame, y, score, [SliceSpec("plan", "plan")], threshold=0.5)["plan"]
    assert set(got) == {"a", "b", "c"}
    # a: positives score 0.9, 0.4; negatives 0.2, 0.6 -> 3 of 4 pairs ordered right
    assert got["a"] == {
        "n": 4,
        "positives": 2,
        "roc_auc": 0.75,
        "pr_auc": round((1 / 2) * 1.0 + (1 / 2) * (2 / 3), 6),
        "f1": 0.5,
    }
    # one class: no roc_auc; no positive: no pr_auc either, f1 defined as 0
    assert got["b"] == {"n": 2, "positives": 0, "roc_auc": None, "pr_auc": None, "f1": 0.0}
    assert got["c"] == {"n": 1, "positives": 1, "roc_auc": None, "pr_auc": 1.0, "f1": 1.0}
    assert sum(v["n"] for v in got.values()) == len(y)


def test_slice_on_a_missing_or_non_numeric_column_is_named() -> None:
    frame = pd.DataFrame({"plan": ["a", "b"]})
    y, score = np.array([0, 1]), np.array([0.2, 0.8])
    with pytest.raises(ValueError, match=r"test\.parquet: slice 'country' needs column"):
        slice_metrics(
            frame, y, score, [SliceSpec("country", "country")], 0.5, source="test.parquet"
        )
    with pytest.raises(ValueError, match=r"bins column 'plan', which is not numeric"):
        slice_metrics(frame, y, score, [SliceSpec("p", "plan", (0, 1))], 0.5)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"slices": [{"name": "t", "bins": [5, 1]}]}, r"slices\.t\.bins.*strictly increasing"),
        ({"slices": [{"name": "t", "bins": [5]}]}, r"slices\.t\.bins"),
        ({"slices": ["plan", "plan"]}, r"\['plan'\] used more than once"),
        ({"slices": [{"column": "plan"}]}, r"neither a column name nor a mapping with a 'name'"),
        ({"slices": [{"name": "p", "colum": "plan"}]}, r"slices\.p: unknown key\(s\) \['colum'\]"),
        ({"slices": "plan"}, r"expected a list"),
        ({"importance_repeats": 0}, r"importance_repeats"),
    ],
)
def test_bad_slice_config_is_named(raw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EvaluateConfig.from_params(raw)


def test_project_slices_parse(shop_params: dict) -> None:
    cfg = EvaluateConfig.from_params(shop_params["evaluate"])
    band = next(s for s in cfg.slices if s.bins is not None)
    assert band.bins[-1] == float("inf")
    assert all(s.column for s in cfg.slices)


def test_permutation_importance_ranks_the_signal_over_noise() -> None:
    schema = FeatureSchema(
        "customer_id",
        "snapshot_date",
        "churn",
        ("tenure", "noise"),
        ("plan",),
        {"plan": ("basic", "premium")},
    )
    train = make_frame(400, seed=1).assign(noise=np.random.default_rng(3).normal(size=400))
    test = make_frame(300, seed=2).assign(noise=np.random.default_rng(4).normal(size=300))
    model = train_model(train, schema, ModelConfig("m", "logistic_regression", {}), seed=7)
    table = feature_importance(model, test, schema, repeats=3, seed=7)
    assert list(table.columns) == ["feature", "importance", "std"]
    assert table["feature"].tolist()[0] == "tenure"
    assert set(table["feature"]) == {"tenure", "noise", "plan"}
    assert table.set_index("feature").loc["tenure", "importance"] > 0.1
    assert abs(table.set_index("feature").loc["noise", "importance"]) < 0.02
    again = feature_importance(model, test, schema, repeats=3, seed=7)
    pd.testing.assert_frame_equal(table, again)


def test_main_writes_slices_and_importance(stage_inputs: dict[str, Path], tmp_path: Path) -> None:
    _, plots = run_main(stage_inputs, tmp_path / "out")
    slices = json.loads((tmp_path / "out/slices.json").read_text())
    assert set(slices) == {"plan", "tenure_band"}
    # the test frame holds unknown and missing plans: each gets its own slice
    assert set(slices["plan"]) == {"basic", "premium", "enterprise", "__missing__"}
    assert sum(v["n"] for v in slices["plan"].values()) == 250
    assert sum(v["n"] for v in slices["tenure_band"].values()) == 250
    importance = json.loads((plots / "importance.json").read_text())["importance"]
    assert {row["feature"] for row in importance} == {"tenure", "plan"}
    values = [row["importance"] for row in importance]
    assert values == sorted(values, reverse=True)


def test_main_slice_on_an_absent_column_names_it(
    stage_inputs: dict[str, Path], tmp_path: Path
) -> None:
    params = yaml.safe_load(stage_inputs["params"].read_text())
    params["evaluate"]["slices"] = ["country"]
    stage_inputs["params"].write_text(yaml.safe_dump(params))
    with pytest.raises(ValueError, match=r"test\.parquet: slice 'country' needs column 'country'"):
        run_main(stage_inputs, tmp_path / "out")


def test_a_threshold_no_score_reaches_is_a_warning() -> None:
    from stages.lib.evaluation import threshold_warning

    y = np.array([0, 1, 0, 0, 1])
    low = np.array([0.1, 0.4, 0.2, 0.15, 0.3])
    warning = threshold_warning(low, y, 0.5)
    assert warning is not None and warning.startswith("no test row scores at or above")
    assert "0.100..0.400, label rate 0.400" in warning
    # the two highest scores flag as many rows as there are positives
    assert warning.endswith("(flagging as many test rows as are positive takes 0.3)")
    assert threshold_warning(low, y, 0.25) is None
    assert threshold_warning(low, y, 0.05).startswith("every test row")
