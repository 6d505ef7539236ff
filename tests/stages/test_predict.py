from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from stages.contract.card import ModelCard, file_md5
from stages.contract.feature_schema import save_schema
from stages.contract.onnx_predict import OnnxPredictor
from stages.lib.onnx_export import export_onnx
from stages.lib.scoring import model_identity, score_frame
from stages.lib.training import train_model
from stages.predict import main
from tests.conftest import write_params
from tests.stages.test_train import MODELS, SCHEMA, make_frame

IDENTITY = {"model_name": "logreg", "model_version": "abc", "data_version": "d1"}


@pytest.fixture(scope="module")
def graph() -> bytes:
    model = train_model(make_frame(200, seed=1), SCHEMA, MODELS["logistic_regression"], 7)
    return export_onnx(model, SCHEMA).SerializeToString()


def test_scores_are_the_onnx_models_and_decisions_use_the_threshold(graph) -> None:
    frame = make_frame(50, seed=3).sample(frac=1.0, random_state=0)
    predictor = OnnxPredictor(graph, SCHEMA)
    out = score_frame(frame, predictor, SCHEMA, 0.3, IDENTITY)
    assert out["customer_id"].is_monotonic_increasing
    expected = pd.Series(predictor.predict_proba(frame), index=frame["customer_id"])
    assert out["score"].tolist() == expected.sort_index().tolist()
    assert (out["decision"] == (out["score"] >= 0.3)).all() and out["decision"].any()
    assert set(out["model_version"]) == {"abc"} and set(out["data_version"]) == {"d1"}
    with pytest.raises(ValueError, match="missing column 'snapshot_date'"):
        score_frame(frame.drop(columns="snapshot_date"), predictor, SCHEMA, 0.5, IDENTITY)


def test_a_card_of_another_model_is_refused(tmp_path: Path) -> None:
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"graph")
    md5 = hashlib.md5(b"graph").hexdigest()
    doc = {"model": {"name": "logreg"}, "onnx": {"md5": md5}, "data": {"landing_md5": "d"}}
    assert model_identity(ModelCard(doc, "card.json"), onnx)["model_version"] == md5
    other = ModelCard({**doc, "onnx": {"md5": "111"}}, "card.json")
    with pytest.raises(ValueError, match=r"card\.json: the card describes ONNX graph 111"):
        model_identity(other, onnx)
    with pytest.raises(ValueError, match=r"lacks data\.landing_md5"):
        model_identity(ModelCard({"onnx": {"md5": md5}}, "card.json"), onnx)


def test_main_writes_predictions_and_reference_scores(
    graph, tmp_path: Path, shop_params, capsys
) -> None:
    (tmp_path / "model.onnx").write_bytes(graph)
    md5 = file_md5(tmp_path / "model.onnx")
    card = {"model": {"name": "logreg"}, "onnx": {"md5": md5}, "data": {"landing_md5": "d9"}}
    (tmp_path / "card.json").write_text(json.dumps(card))
    save_schema(SCHEMA, tmp_path / "schema.json")
    make_frame(40, seed=4).drop(columns="churn").to_parquet(tmp_path / "predict.parquet")
    make_frame(60, seed=5).to_parquet(tmp_path / "test.parquet")
    params = write_params(shop_params, tmp_path / "params.yaml")
    paths = [
        tmp_path / n
        for n in (
            "model.onnx",
            "card.json",
            "schema.json",
            "predict.parquet",
            "test.parquet",
            "out",
        )
    ]
    assert main([*map(str, paths), "--params", str(params)]) == 0
    predictions = pd.read_parquet(tmp_path / "out/predictions.parquet")
    assert len(predictions) == 40 and set(predictions["model_version"]) == {md5}
    assert set(predictions["data_version"]) == {"d9"}
    reference = pd.read_parquet(tmp_path / "out/reference_scores.parquet")
    assert len(reference) == 60 and set(reference["label"]) == {0, 1}
    paths[0] = tmp_path / "missing.onnx"
    assert main([*map(str, paths), "--params", str(params)]) == 2
    assert "missing.onnx: ONNX model not found" in capsys.readouterr().err


def test_a_regression_predicts_a_number_with_no_decision() -> None:
    from stages.lib.scoring import reference_scores
    from tests.stages.test_regression import SCHEMA as REG_SCHEMA
    from tests.stages.test_regression import make_frame as reg_frame

    frame = reg_frame(200, seed=1).assign(snapshot_date=pd.Timestamp("2026-03-01"))
    model = train_model(frame, REG_SCHEMA, MODELS["logistic_regression"], 7)  # Ridge
    predictor = OnnxPredictor(export_onnx(model, REG_SCHEMA).SerializeToString(), REG_SCHEMA)
    out = score_frame(frame.drop(columns="cnt"), predictor, REG_SCHEMA, 0.5, IDENTITY)
    assert list(out.columns) == [
        "hour_start",
        "snapshot_date",
        "prediction",
        "model_name",
        "model_version",
        "data_version",
    ]
    expected = pd.Series(predictor.predict(frame), index=frame["hour_start"]).sort_index()
    assert out["prediction"].tolist() == expected.tolist()
    reference = reference_scores(frame, predictor, REG_SCHEMA)
    assert reference["target"].tolist() == frame["cnt"].tolist()
    assert {"score", "label"}.isdisjoint(reference.columns)
