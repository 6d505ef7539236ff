from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import yaml
from onnx import numpy_helper
from sklearn.pipeline import Pipeline

import stages.export as export
from stages.contract.feature_schema import save_schema
from stages.contract.onnx_predict import OnnxPredictor
from stages.export import main
from stages.lib.model_io import save_model
from stages.lib.onnx_export import (
    UNSEEN_CATEGORY,
    ExportConfig,
    Parity,
    ParityError,
    check_parity,
    edge_cases,
    export_onnx,
    parity,
    verify_parity,
)
from stages.lib.training import MISSING_CATEGORY, positive_proba, train_model
from tests.stages.test_train import MODELS, SCHEMA, make_frame


@pytest.fixture(scope="module")
def models() -> dict[str, Pipeline]:
    """One fitted predictor per family, on the same toy data."""
    train, valid = make_frame(300, seed=1), make_frame(200, seed=2)
    return {name: train_model(train, SCHEMA, cfg, 7, valid=valid) for name, cfg in MODELS.items()}


def awkward_rows() -> pd.DataFrame:
    """Every kind of missing and unknown value the server may receive."""
    frame = make_frame(40, seed=3)
    frame["plan"] = frame["plan"].astype(object)
    frame["country"] = frame["country"].astype(object)
    frame.loc[0:3, "tenure"] = np.nan
    frame.loc[4, "plan"] = None
    frame.loc[5, "plan"] = np.nan
    frame.loc[6, "country"] = pd.NA
    frame.loc[7:9, "plan"] = "enterprise"  # a category the model never saw
    frame.loc[10, "country"] = "JP"
    frame.loc[11, "plan"] = MISSING_CATEGORY  # the fill value itself, passed literally
    frame.loc[12, ["tenure", "noise"]] = np.nan
    frame.loc[12, ["plan", "country"]] = None
    frame.loc[13, "tenure"] = 1e6  # far outside the training range
    return frame


@pytest.mark.parametrize("family", sorted(MODELS))
def test_onnx_matches_native_with_nulls_and_unknown_categories(models, family: str) -> None:
    model = models[family]
    graph = export_onnx(model, SCHEMA)
    rows = pd.concat([make_frame(200, seed=4), awkward_rows()], ignore_index=True)
    native = positive_proba(model, rows, SCHEMA)
    exported = OnnxPredictor(graph.SerializeToString(), SCHEMA).predict_proba(rows)
    assert exported.dtype == np.float64 and exported.shape == native.shape
    # float32 inside the trees' and the MLP's ops; the preprocessing and logreg are double
    assert np.max(np.abs(exported - native)) < 1e-6
    np.testing.assert_array_equal(exported >= 0.5, native >= 0.5)


@pytest.mark.parametrize("family", sorted(MODELS))
def test_graph_contract(models, family: str) -> None:
    graph = export_onnx(models[family], SCHEMA)
    inputs = {i.name: i.type.tensor_type for i in graph.graph.input}
    assert list(inputs) == SCHEMA.features
    for name, tensor in inputs.items():
        expected = onnx.TensorProto.DOUBLE if name in SCHEMA.numeric else onnx.TensorProto.STRING
        assert tensor.elem_type == expected, name
        assert [d.dim_value for d in tensor.shape.dim][1:] == [1]
    outputs = {o.name: o.type.tensor_type for o in graph.graph.output}
    assert outputs["probabilities"].elem_type == onnx.TensorProto.DOUBLE
    assert [d.dim_value for d in outputs["probabilities"].shape.dim][1:] == [2]
    meta = {p.key: p.value for p in graph.metadata_props}
    assert meta["evergreen.missing_category"] == MISSING_CATEGORY
    assert meta["evergreen.estimator"] == type(models[family][-1]).__name__
    # the same model always gives the same bytes (DVC sees no change after an identical run)
    assert export_onnx(models[family], SCHEMA).SerializeToString() == graph.SerializeToString()


def test_parity_figures() -> None:
    native = np.array([0.1, 0.4, 0.6, 0.9])
    assert parity(native, native, 0.5) == Parity(4, 0.0, 1.0)
    moved = parity(native, native + np.array([0.0, 0.0, -0.2, 0.05]), 0.5)
    assert moved.max_abs_diff == pytest.approx(0.2)
    assert moved.decision_agreement == 0.75
    assert parity(native, np.array([0.1, np.nan, 0.6, 0.9]), 0.5).max_abs_diff == np.inf
    with pytest.raises(ValueError, match="equal-length"):
        parity(native, native[:3], 0.5)


def test_check_parity_limits_name_the_model_and_the_figure() -> None:
    cfg = ExportConfig(threshold=0.3)
    check_parity({"test": Parity(1000, 1e-4, 0.999)}, cfg, "M")  # both exactly at the limit
    with pytest.raises(ParityError, match=r"^M: .*test: max \|p_onnx - p_native\| = 0\.0002"):
        check_parity({"test": Parity(1000, 2e-4, 1.0)}, cfg, "M")
    with pytest.raises(ParityError, match=r"edge_cases: same decision at threshold 0\.3 for 99\.8"):
        check_parity(
            {"test": Parity(10, 0.0, 1.0), "edge_cases": Parity(1000, 0.0, 0.998)}, cfg, "M"
        )


def test_tampered_graph_fails_verification(models) -> None:
    model = models["logistic_regression"]
    graph = export_onnx(model, SCHEMA)
    for init in graph.graph.initializer:
        if init.name == "coef":
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5, init.name))
            break
    else:
        pytest.fail("no 'coef' initializer to tamper with")
    frame = make_frame(100, seed=6)
    with pytest.raises(ParityError, match=r"LogisticRegression: ONNX parity broken: test: max"):
        verify_parity(model, graph.SerializeToString(), frame, SCHEMA, ExportConfig())


def test_edge_cases_cover_each_feature_missing_and_unseen() -> None:
    rows = edge_cases(make_frame(20, seed=1), SCHEMA, rows=3)
    # one block per feature missing, one per categorical unseen, one all missing
    assert len(rows) == 3 * (len(SCHEMA.features) + len(SCHEMA.categorical) + 1)
    assert rows["tenure"].isna().sum() == 3 + 3
    assert (rows["plan"] == UNSEEN_CATEGORY).sum() == 3


def test_unsupported_preprocessing_is_named(models) -> None:
    model = models["logistic_regression"]
    imputer = model.named_steps["preprocess"].named_transformers_["numeric"].named_steps["impute"]
    imputer.missing_values = -1.0
    try:
        with pytest.raises(NotImplementedError, match="must impute NaN"):
            export_onnx(model, SCHEMA)
    finally:
        imputer.missing_values = np.nan


# --- main ---------------------------------------------------------------------------------------


def write_inputs(root: Path, model: Pipeline) -> list[str]:
    model_path = save_model(model, root / "model.skops")
    test = root / "test.parquet"
    awkward = awkward_rows().astype({"plan": "str", "country": "str"})
    pd.concat([make_frame(150, seed=8), awkward], ignore_index=True).to_parquet(test)
    schema = save_schema(SCHEMA, root / "feature_schema.json")
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({"evaluate": {"threshold": 0.4}}))
    onnx_out, metrics_out = root / "out" / "model.onnx", root / "out" / "export.json"
    return [str(p) for p in (model_path, test, schema, onnx_out, metrics_out)] + [
        "--params",
        str(params),
        "--report-out",
        str(root / "out" / "parity.json"),
    ]


def test_main_writes_graph_and_parity_metrics(tmp_path: Path, models) -> None:
    model = models["hist_gradient_boosting"]
    argv = write_inputs(tmp_path, model)
    assert main(argv) == 0
    metrics_path = tmp_path / "out" / "export.json"
    # the metrics: the parity figures a person compares; the rest is the report's
    headline = json.loads(metrics_path.read_text())
    metrics = json.loads((tmp_path / "out" / "parity.json").read_text())
    assert headline == {
        "decision_agreement": metrics["decision_agreement"],
        "max_abs_diff": metrics["max_abs_diff"],
        "onnx_bytes": metrics["onnx_bytes"],
        "edge_cases": {k: metrics["edge_cases"][k] for k in ("decision_agreement", "max_abs_diff")},
    }
    assert metrics["estimator"] == "HistGradientBoostingClassifier"
    assert metrics["rows"] == 190 and metrics["threshold"] == 0.4
    assert metrics["decision_agreement"] == 1.0
    assert 0.0 <= metrics["max_abs_diff"] <= 1e-6
    assert metrics["edge_cases"]["rows"] > 0 and metrics["edge_cases"]["max_abs_diff"] <= 1e-6
    graph = (tmp_path / "out" / "model.onnx").read_bytes()
    assert metrics["onnx_bytes"] == len(graph)
    test = pd.read_parquet(tmp_path / "test.parquet")
    np.testing.assert_allclose(
        OnnxPredictor(graph, SCHEMA).predict_proba(test),
        positive_proba(model, test, SCHEMA),
        rtol=0,
        atol=1e-6,
    )
    before = metrics_path.read_bytes()
    assert main(argv) == 0
    assert metrics_path.read_bytes() == before
    assert (tmp_path / "out" / "model.onnx").read_bytes() == graph


def test_main_fails_naming_the_model_when_parity_breaks(
    tmp_path: Path, models, monkeypatch, capsys
) -> None:
    real_export = export.export_onnx

    def tampered(model, schema):
        # fault injection: the real graph, its logit shifted by one
        graph = real_export(model, schema)
        for init in graph.graph.initializer:
            if init.name == "intercept":
                init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + 1.0, init.name))
        return graph

    monkeypatch.setattr(export, "export_onnx", tampered)
    argv = write_inputs(tmp_path, models["logistic_regression"])
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "model.skops: LogisticRegression: ONNX parity broken" in err
    assert "max |p_onnx - p_native| = " in err and "same decision at threshold 0.4" in err
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_main_bad_inputs_say_what(tmp_path: Path, models, capsys) -> None:
    argv = write_inputs(tmp_path, models["logistic_regression"])
    Path(argv[1]).unlink()
    assert main(argv) == 1
    assert "test.parquet: parquet file not found" in capsys.readouterr().err
    save_model(models["logistic_regression"][-1], tmp_path / "bare.skops")
    bare = write_inputs(tmp_path, models["logistic_regression"])
    bare[0] = str(tmp_path / "bare.skops")
    assert main(bare) == 1
    assert "expected a Pipeline, found LogisticRegression" in capsys.readouterr().err


# PYTHONHASHSEED values for which skl2onnx 1.20 fills `opset_import` in different orders on
# this logistic regression ('' first under 1 and 2, 'ai.onnx.ml' first under 116 and 122)
HASH_SEEDS = (1, 2, 116, 122)


def test_onnx_bytes_do_not_depend_on_the_hash_seed(tmp_path: Path, models) -> None:
    """An identical retrain publishes no 'new model': the stage writes the same bytes whatever
    Python's hash seed (skl2onnx builds `opset_import` from a set)."""
    argv = write_inputs(tmp_path, models["logistic_regression"])
    root = Path(__file__).resolve().parents[2]
    runs = {}
    for seed in HASH_SEEDS:
        out = tmp_path / f"seed{seed}"
        cmd = [sys.executable, "-m", "stages.export", *argv[:3], str(out / "model.onnx")]
        cmd += [str(out / "export.json"), *argv[5:7]]
        env = {**os.environ, "PYTHONHASHSEED": str(seed)}
        runs[seed] = subprocess.Popen(cmd, cwd=root, env=env, stderr=subprocess.PIPE, text=True)
    graphs = {}
    for seed, proc in runs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        graphs[seed] = (tmp_path / f"seed{seed}" / "model.onnx").read_bytes()
    orders = {
        seed: [o.domain for o in onnx.load_from_string(g).opset_import]
        for seed, g in graphs.items()
    }
    assert len(set(graphs.values())) == 1, f"opset_import order per PYTHONHASHSEED: {orders}"
    assert orders[HASH_SEEDS[0]] == sorted(orders[HASH_SEEDS[0]])
