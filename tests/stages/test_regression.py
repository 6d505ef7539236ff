"""rows_regression downstream of features: regression metrics, the regressors of the zoo, their
ONNX export with relative parity, the gate's regression checks and the served response."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from serve.schema import api_models, schema_from_card
from stages import evaluate
from stages.cli.gate import GateConfig, Scores, judge
from stages.contract.feature_schema import FeatureSchema, save_schema
from stages.contract.onnx_predict import OnnxPredictor
from stages.lib import onnx_export as export
from stages.lib.cards import feature_card
from stages.lib.model_io import save_model
from stages.lib.regression import regression_metrics, residual_table
from stages.lib.training import (
    REGRESSORS,
    ModelConfig,
    build_estimator,
    train_model,
    validation_score,
)

SCHEMA = FeatureSchema(
    "hour_start", "snapshot_date", "cnt", ("hour", "temp"), ("weather",), task="regression"
)


def make_frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    hour = rng.integers(0, 24, n).astype(float)
    temp = rng.normal(15, 8, n)
    weather = rng.choice(["clear", "rain"], n)
    peak = np.where((hour >= 7) & (hour <= 9) | (hour >= 16) & (hour <= 19), 30.0, 0.0)
    cnt = 60 + peak + 5 * hour + 4 * temp - 40 * (weather == "rain") + rng.normal(0, 10, n)
    frame = pd.DataFrame({"hour": hour, "temp": temp, "weather": weather, "cnt": cnt.clip(0)})
    frame.loc[3, "temp"] = np.nan
    frame["hour_start"] = [f"h{i}" for i in range(n)]
    return frame


def test_regression_metrics_take_mape_over_nonzero_targets_only() -> None:
    metrics = regression_metrics([0.0, 10.0, 20.0], [1.0, 12.0, 15.0])
    assert metrics["mae"] == round((1 + 2 + 5) / 3, 6)
    assert metrics["rmse"] == round(np.sqrt((1 + 4 + 25) / 3), 6)
    assert metrics["mape"] == round((2 / 10 + 5 / 20) / 2, 6) and metrics["mape_rows"] == 2
    assert regression_metrics([0.0, 0.0], [1.0, 2.0])["mape"] is None
    with pytest.raises(ValueError, match="finite"):
        regression_metrics([1.0, np.nan], [1.0, 2.0])


def test_residual_table_is_ordered_by_prediction_and_thinned() -> None:
    y = np.arange(1000, dtype=float)
    table = residual_table(y, y[::-1], max_points=50)
    assert len(table) == 50 and table["predicted"].is_monotonic_increasing
    assert (table["residual"] == table["actual"] - table["predicted"]).all()


@pytest.mark.parametrize(
    "estimator", ["logistic_regression", "ridge", "hist_gradient_boosting", "random_forest"]
)
def test_each_family_fits_its_regressor_and_exports_with_parity(estimator: str) -> None:
    hyper = {"random_forest": {"n_estimators": 30}, "hist_gradient_boosting": {"max_iter": 60}}
    cfg = ModelConfig("m", estimator, hyper.get(estimator, {}))
    train, test = make_frame(600, 1), make_frame(300, 2)
    model = train_model(train, SCHEMA, cfg, seed=7)
    assert isinstance(model[-1], REGRESSORS[estimator]) and not hasattr(model, "predict_proba")
    assert validation_score(model, test, SCHEMA) > 0.5  # R²
    graph = export.export_onnx(model, SCHEMA).SerializeToString()
    predictor = OnnxPredictor(graph, SCHEMA)
    results = export.verify_parity(model, graph, test, SCHEMA, export.ExportConfig())
    assert results["test"].decision_agreement is None
    assert results["test"].max_abs_diff <= 1e-4
    np.testing.assert_allclose(
        predictor.predict(test), model.predict(test[["hour", "temp", "weather"]]), rtol=1e-5
    )
    with pytest.raises(ValueError, match="no probabilities"):
        predictor.predict_proba(test)


def test_logreg_c_becomes_ridge_alpha_and_the_mlp_has_no_regressor() -> None:
    ridge = build_estimator(ModelConfig("m", "logistic_regression", {"C": 4.0}), 0, regression=True)
    assert type(ridge).__name__ == "Ridge" and ridge.alpha == 0.25
    with pytest.raises(ValueError, match="'torch_mlp' is no estimator for a regression"):
        build_estimator(ModelConfig("m", "torch_mlp", {}), 0, regression=True)
    with pytest.raises(ValueError, match="'ridge' is no estimator for a classification"):
        build_estimator(ModelConfig("m", "ridge", {}), 0)


def test_relative_parity_flags_a_graph_that_drifts() -> None:
    native = np.array([1000.0, 0.5])
    ok = export.parity(native, native * (1 + 5e-5), 0.5, regression=True)
    assert ok.max_abs_diff <= 1e-4 and ok.decision_agreement is None
    bad = export.parity(native, native + np.array([1.0, 0.0]), 0.5, regression=True)
    with pytest.raises(export.ParityError, match=r"\|y_onnx - y_native\| / max\(1, \|y_native\|\)"):
        export.check_parity({"test": bad}, export.ExportConfig(), "Ridge")


def test_evaluate_main_writes_regression_metrics_residuals_and_empty_curves(tmp_path: Path) -> None:
    model = train_model(make_frame(600, 1), SCHEMA, ModelConfig("m", "ridge", {}), seed=7)
    paths = {
        "model": save_model(model, tmp_path / "model.skops"),
        "test": tmp_path / "test.parquet",
        "schema": save_schema(SCHEMA, tmp_path / "schema.json"),
    }
    make_frame(300, 2).to_parquet(paths["test"])
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"seed": 7, "evaluate": {"slices": ["weather"]}}))
    out, plots = tmp_path / "evaluate.json", tmp_path / "plots"
    argv = [str(paths[k]) for k in ("model", "test", "schema")]
    options = ["--slices-out", str(tmp_path / "slices.json"), "--params", str(params)]
    assert evaluate.main([*argv, str(out), str(plots), *options]) == 0
    metrics = json.loads(out.read_text())
    assert {"mae", "rmse", "r2", "mape", "n"} <= set(metrics) and metrics["r2"] > 0.5
    residuals = json.loads((plots / "residuals.json").read_text())["residuals"]
    assert len(residuals) == 300 and set(residuals[0]) == {"predicted", "actual", "residual"}
    assert json.loads((plots / "roc.json").read_text()) == {"roc": []}
    slices = json.loads((tmp_path / "slices.json").read_text())["weather"]
    assert set(slices) == {"clear", "rain"} and slices["rain"]["n"] > 0
    importance = json.loads((plots / "importance.json").read_text())["importance"]
    assert {row["feature"] for row in importance} == {"hour", "temp", "weather"}
    assert min(row["importance"] for row in importance) > 0  # each feature moves R²


def test_gate_floors_of_a_regression_are_r2_and_errors() -> None:
    # the champion and baseline comparisons (on R², with intervals) are tests/stages/test_gate.py's
    cfg = GateConfig(min_r2=0.5, max_mae=10.0, max_rmse=None, baseline=False)
    challenger = Scores({"r2": 0.8, "mae": 12.0, "rmse": 15.0}, regression=True)
    verdict = judge(challenger, None, cfg)
    checks = {c.name: c for c in verdict.checks}
    assert set(checks) == {"min_r2", "max_mae"}
    assert checks["min_r2"].passed and not checks["max_mae"].passed
    assert not verdict.blessed
    with pytest.raises(ValueError, match=r"gate\.max_mae"):
        GateConfig(max_mae=-1.0)


def test_served_response_of_a_regression_is_a_prediction() -> None:
    frame = make_frame(50, 3)
    card = {"features": feature_card(SCHEMA, frame), "label": {"name": "cnt"}}
    schema = schema_from_card(card, range_margin=1.0)
    assert schema.regression and schema.feature_schema().task == "regression"
    response = api_models(schema, 10).response
    body = {
        "request_id": "r",
        "model": {"name": "m", "version": "v"},
        "predictions": [{"hour_start": "h1", "prediction": 12.5}],
    }
    assert response.model_validate(body).predictions[0].prediction == 12.5
    with pytest.raises(ValueError, match=r"features\.task"):
        schema_from_card(
            {**card, "features": {**card["features"], "task": "ranking"}}, range_margin=1.0
        )
