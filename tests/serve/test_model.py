"""Loading a served model (ONNX + card) and scoring validated requests with it."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from serve.model import concat, load_served_model
from serve.schema import api_models, schema_from_card
from stages.contract.onnx_predict import OnnxPredictor
from tests.serve.artifacts import SCHEMA, Artifacts, write_model


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    return write_model(tmp_path_factory.mktemp("model"))


RECORDS = [
    {"customer_id": 1, "days_since_last_order": 45.0, "orders_28d": 0.0, "plan": "basic"},
    {"customer_id": "c-2", "days_since_last_order": 3.0, "orders_28d": 6, "plan": "premium"},
    {"customer_id": 3, "days_since_last_order": None, "orders_28d": 2.0, "plan": None},
    {"customer_id": 4, "days_since_last_order": 20.0, "orders_28d": None, "plan": "standard"},
]


def wire_of(model, records: list[dict]):
    wire = api_models(model.schema, 100).parse(json.dumps({"records": records}).encode())
    return pickle.loads(pickle.dumps(wire))  # as it crosses LitServe's queue


def test_scores_equal_the_predictor_on_a_frame_and_the_pipeline(artifacts: Artifacts) -> None:
    model = load_served_model(artifacts.onnx, artifacts.card, range_margin=1.0)
    assert model.version == artifacts.version
    assert (model.name, model.data_version) == ("logreg", "d4t4.dir")
    assert model.git_commit == artifacts.card_json["git_commit"]
    got = model.score(model.feed_from(model.schema), wire_of(model, RECORDS))
    frame = pd.DataFrame(RECORDS)
    frame["plan"] = frame["plan"].astype("str")
    by_frame = OnnxPredictor(artifacts.onnx, SCHEMA).predict_proba(frame)
    np.testing.assert_array_equal(got, by_frame)  # the same feed, bit for bit
    native = artifacts.pipe.predict_proba(frame[SCHEMA.features])[:, 1]
    np.testing.assert_allclose(got, native, rtol=0, atol=1e-9)


def test_concatenated_requests_score_as_each_alone(artifacts: Artifacts) -> None:
    model = load_served_model(artifacts.onnx, artifacts.card, range_margin=1.0)
    feed = model.feed_from(model.schema)
    first, second = wire_of(model, RECORDS[:1]), wire_of(model, RECORDS[1:])
    joined = concat([first, second])
    assert joined.keys == [1, "c-2", 3, 4] and len(joined) == 4
    np.testing.assert_array_equal(
        model.score(feed, joined),
        np.concatenate([model.score(feed, first), model.score(feed, second)]),
    )


def test_a_card_describing_another_graph_is_refused(artifacts: Artifacts, tmp_path: Path) -> None:
    card = {**artifacts.card_json, "onnx": {"file": "x.onnx", "md5": "0" * 32}}
    path = tmp_path / "card.json"
    path.write_text(json.dumps(card))
    with pytest.raises(ValueError, match=r"describes ONNX graph 0{32}.*same `dvc repro`"):
        load_served_model(artifacts.onnx, path, range_margin=1.0)


def test_a_graph_whose_inputs_are_not_the_cards_features_is_refused(
    artifacts: Artifacts, tmp_path: Path
) -> None:
    card = json.loads(artifacts.card.read_text())
    del card["onnx"]
    card["features"]["numeric"][0]["name"] = "tenure_days"
    card["features"]["order"][0] = "tenure_days"
    path = tmp_path / "card.json"
    path.write_text(json.dumps(card))
    with pytest.raises(ValueError, match=r"model.onnx: .*missing \['tenure_days'\]"):
        load_served_model(artifacts.onnx, path, range_margin=1.0)


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "model card not found"), ("{", "not valid JSON"), ("[1]", "must be a JSON object")],
)
def test_an_unreadable_card_is_refused_naming_the_file(
    artifacts: Artifacts, tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "card.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_served_model(artifacts.onnx, path, range_margin=1.0)


def test_a_missing_or_broken_graph_is_refused(artifacts: Artifacts, tmp_path: Path) -> None:
    card = json.loads(artifacts.card.read_text())
    del card["onnx"]
    path = tmp_path / "card.json"
    path.write_text(json.dumps(card))
    with pytest.raises(FileNotFoundError, match="ONNX model not found"):
        load_served_model(tmp_path / "none.onnx", path, range_margin=1.0)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a graph")
    with pytest.raises(ValueError, match=r"broken.onnx: .*not a loadable ONNX model"):
        load_served_model(broken, path, range_margin=1.0)


def test_a_shadow_needing_features_requests_lack_is_refused(artifacts: Artifacts) -> None:
    shadow = load_served_model(artifacts.onnx, artifacts.card, range_margin=1.0)
    # the champion's requests carry `country` where the shadow needs `plan`
    card = json.loads(artifacts.card.read_text())
    card["features"]["categorical"][0]["name"] = "country"
    card["features"]["order"][-1] = "country"
    champion_schema = schema_from_card(card, range_margin=1.0)
    with pytest.raises(ValueError, match=r"needs feature\(s\) \['plan'\]"):
        shadow.feed_from(champion_schema)
