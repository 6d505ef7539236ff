from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from stages.contract.onnx_predict import OnnxPredictor
from stages.lib.onnx_export import export_onnx
from stages.lib.training import positive_proba, train_model
from tests.stages.test_train import MODELS, SCHEMA, make_frame


@pytest.fixture(scope="module")
def model_and_graph():
    model = train_model(make_frame(200, seed=1), SCHEMA, MODELS["logistic_regression"], 7)
    return model, export_onnx(model, SCHEMA).SerializeToString()


def test_scores_from_a_file_match_the_model(tmp_path, model_and_graph) -> None:
    model, graph = model_and_graph
    path = tmp_path / "model.onnx"
    path.write_bytes(graph)
    frame = make_frame(30, seed=2)
    predictor = OnnxPredictor(path, SCHEMA)
    np.testing.assert_allclose(
        predictor.predict_proba(frame), positive_proba(model, frame, SCHEMA), atol=1e-12
    )
    assert predictor.describe()["estimator"] == "LogisticRegression"
    assert predictor.describe()["numeric"] == list(SCHEMA.numeric)
    assert predictor.predict_proba(frame.iloc[0:0]).shape == (0,)


def test_ignores_ids_extra_columns_and_column_order(model_and_graph) -> None:
    _, graph = model_and_graph
    predictor = OnnxPredictor(graph, SCHEMA)
    frame = make_frame(30, seed=3)
    scores = predictor.predict_proba(frame)
    shuffled = frame.assign(customer_id=frame["customer_id"] + 10_000, junk="x")
    shuffled = shuffled[list(reversed(shuffled.columns))]
    np.testing.assert_array_equal(predictor.predict_proba(shuffled), scores)


def test_json_like_records_with_nulls(model_and_graph) -> None:
    model, graph = model_and_graph
    # what a server builds from JSON: object columns, None for missing
    records = pd.DataFrame(
        [
            {"tenure": None, "noise": 0.5, "plan": None, "country": "DE"},
            {"tenure": 1, "noise": None, "plan": "basic", "country": None},
            {"tenure": -2.5, "noise": 0.0, "plan": "gold", "country": "XX"},
        ],
        dtype=object,
    )
    scores = OnnxPredictor(graph, SCHEMA).predict_proba(records)
    native = positive_proba(model, records.astype({"tenure": float, "noise": float}), SCHEMA)
    np.testing.assert_allclose(scores, native, atol=1e-12)


def test_bad_frames_are_named(model_and_graph) -> None:
    _, graph = model_and_graph
    predictor = OnnxPredictor(graph, SCHEMA)
    frame = make_frame(5)
    with pytest.raises(ValueError, match=r"missing feature column\(s\) \['plan'\]"):
        predictor.predict_proba(frame.drop(columns="plan"))
    with pytest.raises(ValueError, match="numeric feature 'tenure'"):
        predictor.predict_proba(frame.assign(tenure="old"))


def test_graph_and_schema_must_agree(tmp_path, model_and_graph) -> None:
    _, graph = model_and_graph
    other = replace(SCHEMA, numeric=("tenure", "age"))
    with pytest.raises(ValueError, match=r"missing \['age'\], unexpected \['noise'\]"):
        OnnxPredictor(graph, other)
    swapped = replace(SCHEMA, numeric=("tenure", "noise", "plan"), categorical=("country",))
    with pytest.raises(ValueError, match=r"wrong type \[\('plan', 'tensor\(string\)'\)\]"):
        OnnxPredictor(graph, swapped)
    with pytest.raises(FileNotFoundError, match=r"nope\.onnx"):
        OnnxPredictor(tmp_path / "nope.onnx", SCHEMA)
    (tmp_path / "junk.onnx").write_bytes(b"not a graph")
    with pytest.raises(ValueError, match=r"junk\.onnx: not a loadable ONNX model"):
        OnnxPredictor(tmp_path / "junk.onnx", SCHEMA)


def test_imports_neither_sklearn_nor_torch() -> None:
    code = (
        "import sys, stages.contract.onnx_predict; "
        "bad = [m for m in ('sklearn', 'torch', 'skl2onnx') if m in sys.modules]; "
        "assert not bad, bad"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
