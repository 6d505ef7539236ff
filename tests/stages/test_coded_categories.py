"""Integer-coded categories (weather 1-4): the config declares them categorical whatever their
storage type, and they stay integers from the data to the request: the encoder reads each code as
a category (an unseen one as all zeros), the ONNX graph matches the native model on them, the
card records their type and codes, the server takes `"weather": 2` and refuses `"2"`, and drift
compares them as categories."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from pydantic import ValidationError

from serve.model import Feed
from serve.schema import api_models, client_errors, schema_from_card
from stages.contract.feature_schema import FeatureSchema, category_text, load_schema, save_schema
from stages.contract.onnx_predict import OnnxPredictor
from stages.lib.cards import feature_card
from stages.lib.dataset import DatasetConfigError, dataset_from_params
from stages.lib.drift import DriftConfig, table_drift
from stages.lib.onnx_export import UNSEEN_CATEGORY, ExportConfig, export_onnx, verify_parity
from stages.lib.params import compose_params
from stages.lib.profiling import profile_partition
from stages.lib.training import ModelConfig, feature_frame, predictions, train_model

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = FeatureSchema(
    "hour_start",
    "snapshot_date",
    "cnt",
    ("temp",),
    ("season", "weather"),
    task="regression",
    category_types={"weather": "int64"},
)
CLASSIFIER = FeatureSchema(
    "row_key",
    "snapshot_date",
    "y",
    ("temp",),
    ("season", "weather"),
    category_types={"weather": "int64"},
    surrogate_key=True,
)
HGB = ModelConfig("hgb", "hist_gradient_boosting", {"max_iter": 40})
LOGREG = ModelConfig("logreg", "logistic_regression", {"C": 1.0, "max_iter": 500})


def make_frame(n: int, seed: int) -> pd.DataFrame:
    """Rain (codes 3 and 4) empties the streets; code 2 (mist) a little. A null code makes the
    column float, as pandas reads an int64 parquet column with nulls."""
    rng = np.random.default_rng(seed)
    weather = rng.choice([1, 2, 3, 4], n, p=[0.5, 0.3, 0.15, 0.05]).astype(float)
    weather[5] = np.nan
    temp = rng.normal(15, 8, n)
    season = rng.choice(["winter", "summer"], n)
    effect = np.select([weather == 2, weather >= 3], [-30.0, -120.0], 0.0)
    cnt = 200 + 4 * temp + effect + rng.normal(0, 5, n)
    return pd.DataFrame(
        {
            "hour_start": [f"h{i}" for i in range(n)],
            "temp": temp,
            "season": season,
            "weather": weather,
            "cnt": cnt,
            "y": (effect < -50).astype("int64"),
            "row_key": [f"{i:016x}" for i in range(n)],
        }
    )


# --- the config ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bikes_raw(tmp_path_factory: pytest.TempPathFactory) -> dict:
    path = tmp_path_factory.mktemp("bikes") / "params.yaml"
    compose_params(ROOT / "conf", path, ["dataset=bikes"])
    return yaml.safe_load(path.read_text())["dataset"]


def test_the_bikes_config_declares_an_int_coded_and_a_text_category(bikes_raw) -> None:
    bikes = dataset_from_params(copy.deepcopy(bikes_raw))
    rentals = bikes.table("rentals")
    assert rentals.column("weather").type == "int64" and rentals.column("season").type == "string"
    assert bikes.task.categorical == ("season", "weather")
    assert bikes.categorical_inputs == ("season", "weather")


def test_a_float_column_is_no_category(bikes_raw) -> None:
    raw = copy.deepcopy(bikes_raw)
    raw["task"]["features"]["categorical"] = ["season", "temp"]
    with pytest.raises(DatasetConfigError) as info:
        dataset_from_params(raw)
    message = str(info.value)
    assert message.startswith("conf/dataset/bikes.yaml: task.features.categorical: expected a ")
    assert "string or bool or int64, 'temp' is float64" in message and "\n" not in message


def test_an_entity_attribute_category_may_be_int_coded_but_not_float() -> None:
    raw = {
        "name": "toy",
        "entity_key": "customer_id",
        "tables": {
            "events": {
                "role": "events",
                "key": "event_id",
                "timestamp": "ts",
                "columns": {
                    "event_id": {"type": "string"},
                    "customer_id": {"type": "string"},
                    "ts": {"type": "timestamp"},
                    "event_type": {"type": "string", "allowed": ["visit"]},
                    "tier": {"type": "int64", "min": 1, "max": 3},
                    "score": {"type": "float64"},
                },
            }
        },
        "activity_types": ["visit"],
        "event_features": {"visit": "visits"},
        "label": {"name": "churn", "horizon_days": 7, "lookback_days": 7},
        "entity_features": {"categorical": ["tier"]},
    }
    assert dataset_from_params(copy.deepcopy(raw)).categorical_inputs == ("tier",)
    raw["entity_features"]["categorical"] = ["score"]
    with pytest.raises(DatasetConfigError, match=r"entity_features\.categorical: expected a col"):
        dataset_from_params(raw)


# --- training and export ---------------------------------------------------------------------


def test_codes_read_as_their_digits_whatever_the_column_dtype() -> None:
    for values in (
        pd.Series([1, 2]),
        pd.Series([1.0, 2.0]),
        pd.Series([1, 2], dtype="Int64"),
        pd.Series([1, np.int64(2)], dtype=object),
    ):
        assert category_text(values, "int64").tolist() == ["1", "2"]
    missing = category_text(pd.Series([1.0, np.nan, None], dtype=object), "int64")
    assert missing.iloc[0] == "1" and missing.iloc[1:].isna().all()
    assert category_text(pd.Series([3, UNSEEN_CATEGORY], dtype=object), "int64").tolist() == [
        "3",
        UNSEEN_CATEGORY,
    ]


def test_the_encoder_takes_each_code_as_a_category() -> None:
    model = train_model(make_frame(400, 1), SCHEMA, HGB, 7)
    onehot = model.named_steps["preprocess"].named_transformers_["categorical_learned"][-1]
    by_feature = dict(zip(SCHEMA.categorical, onehot.categories_, strict=True))
    # one column per code (and the missing one), never one number
    assert sorted(by_feature["weather"]) == ["1", "2", "3", "4", "__missing__"]
    frame = make_frame(50, 2)
    rain = predictions(model, frame.assign(weather=4), SCHEMA)
    clear = predictions(model, frame.assign(weather=1), SCHEMA)
    assert (clear - rain).mean() > 60  # it learnt the codes' effects
    # an unseen code encodes as all zeros, like an unseen string: no crash, a finite answer
    assert np.isfinite(predictions(model, frame.assign(weather=9), SCHEMA)).all()
    # the column's dtype does not change the encoding: float codes, ints and objects agree
    as_int = frame.assign(weather=frame["weather"].fillna(1).astype("int64"))
    as_float = as_int.assign(weather=as_int["weather"].astype(float))
    np.testing.assert_array_equal(
        feature_frame(as_int, SCHEMA)["weather"], feature_frame(as_float, SCHEMA)["weather"]
    )


@pytest.mark.parametrize(("schema", "config"), [(SCHEMA, HGB), (CLASSIFIER, LOGREG)])
def test_onnx_matches_the_native_model_on_codes(schema: FeatureSchema, config) -> None:
    model = train_model(make_frame(400, 1), schema, config, 7)
    graph = export_onnx(model, schema).SerializeToString()
    test = make_frame(120, 3)
    # parity on the test rows and the edge cases (each code missing, an unseen category)
    results = verify_parity(model, graph, test, schema, ExportConfig())
    assert results["edge_cases"].max_abs_diff <= 1e-4 and results["test"].rows == 120
    predictor = OnnxPredictor(graph, schema)
    assert predictor.describe()["category_types"] == {"weather": "int64"}
    # what a JSON request holds: ints, an unknown code, a null, all in an object column
    records = test.head(4).astype({"weather": object})
    records.loc[0, "weather"], records.loc[1, "weather"] = 9, None
    records.loc[2, "weather"] = 2
    np.testing.assert_allclose(
        predictor.predict(records), predictions(model, records, schema), rtol=1e-5, atol=1e-6
    )


# --- the card and the server -----------------------------------------------------------------


@pytest.fixture(scope="module")
def served():
    """The regression model, its graph, and a card of the shape stages/lib/cards.py writes."""
    train = make_frame(400, 1)
    model = train_model(train, SCHEMA, HGB, 7)
    graph = export_onnx(model, SCHEMA).SerializeToString()
    card = {"features": feature_card(SCHEMA, train), "label": {"name": "cnt"}}
    return model, graph, json.loads(json.dumps(card))


def test_the_card_records_the_codes_as_integers(served) -> None:
    _, _, card = served
    weather, season = (
        next(f for f in card["features"]["categorical"] if f["name"] == n)
        for n in ("weather", "season")
    )
    assert weather["type"] == "int64" and weather["observed"] == [1, 2, 3, 4]
    assert season["type"] == "string" and season["observed"] == ["summer", "winter"]


def test_the_feature_schema_round_trips_its_storage_types(tmp_path: Path) -> None:
    path = save_schema(CLASSIFIER, tmp_path / "feature_schema.json")
    assert load_schema(path) == CLASSIFIER
    old = json.loads(path.read_text())
    del old["category_types"], old["surrogate_key"]
    path.write_text(json.dumps(old))  # a schema written before: text categories, a key column
    assert load_schema(path).category_type("weather") == "string"
    assert not load_schema(path).surrogate_key
    with pytest.raises(ValueError, match=r"category_types\.temp"):
        FeatureSchema("k", "t", "y", ("temp",), (), category_types={"temp": "int64"})


def _errors(models, body: dict) -> list[dict]:
    with pytest.raises(ValidationError) as info:
        models.parse(json.dumps(body).encode())
    return client_errors([{**e, "loc": ("body", *e["loc"])} for e in info.value.errors()], 20)


def test_the_request_takes_the_codes_as_the_data_has_them(served) -> None:
    model, graph, card = served
    schema = schema_from_card(card, range_margin=1.0)
    models = api_models(schema, 10)
    body = {
        "records": [
            {"hour_start": "h1", "temp": 20.0, "season": "summer", "weather": 1},
            {"hour_start": "h2", "temp": 20.0, "season": "summer", "weather": 4},
            {"hour_start": "h3", "temp": 20.0, "season": "winter", "weather": None},
        ]
    }
    wire = models.parse(json.dumps(body).encode())
    assert wire.categorical[1] == ("1", "4", None)  # the digits the model was trained on
    # a worker scores the wire form exactly as the native model scores the data
    predictor = OnnxPredictor(graph, schema.feature_schema())
    feed = Feed((("temp", 0),), (("season", 0), ("weather", 1)), predictor.missing_category)
    (served_out,) = predictor.session.run([predictor.output], feed.inputs(wire))
    frame = pd.DataFrame(body["records"])
    np.testing.assert_allclose(
        served_out.reshape(-1), predictions(model, frame, SCHEMA), rtol=1e-5, atol=1e-6
    )
    assert schema.describe()["categorical"][1] == {
        "name": "weather",
        "type": "integer",
        "allowed": [1, 2, 3, 4],
    }
    record = body["records"][0]
    for bad, expected in (
        ("1", "an integer (a code of the category)"),
        (1.0, "an integer (a code of the category)"),
        (True, "an integer (a code of the category)"),
        (7, "Input should be 1, 2, 3 or 4"),  # an unknown code: refused like an unknown string
    ):
        found = _errors(models, {**record, "weather": bad})
        assert found == [
            {"loc": ["body", "weather"], "msg": found[0]["msg"], "type": found[0]["type"]}
        ]
        assert expected in found[0]["msg"], (bad, found)
    # and a text category still takes text only
    assert _errors(models, {**record, "season": 1})[0]["loc"] == ["body", "season"]


def test_a_card_with_codes_that_are_not_integers_is_refused(served) -> None:
    _, _, card = served
    broken = copy.deepcopy(card)
    weather = next(f for f in broken["features"]["categorical"] if f["name"] == "weather")
    weather["observed"] = ["1", "2"]
    with pytest.raises(
        ValueError,
        match=r"\(weather\) has no allowed or observed values \(a non-empty list of integers\)",
    ):
        schema_from_card(broken, range_margin=1.0)
    weather["type"] = "float64"
    with pytest.raises(ValueError, match=r"\(weather\).type is 'float64'"):
        schema_from_card(broken, range_margin=1.0)


# --- drift -----------------------------------------------------------------------------------


def test_drift_compares_the_codes_as_categories(bikes_raw) -> None:
    dataset = dataset_from_params(copy.deepcopy(bikes_raw))
    table = dataset.table("rentals")
    rng = np.random.default_rng(0)

    def day(codes: list[int]) -> dict:
        n = 200
        frame = pd.DataFrame({c.name: np.zeros(n) for c in table.columns})
        frame["season"] = "summer"
        frame["hour_start"] = pd.Timestamp("2025-06-01")
        frame["weather"] = rng.choice(codes, n)
        return profile_partition(frame, table)

    profile = day([1, 2])
    assert profile["columns"]["weather"]["top"].keys() == {"1", "2"}
    assert profile["columns"]["hour"]["top"] == {"0": 200}  # every integer column counts codes
    profiles = {f"2025-06-{d:02d}": day([1, 2]) for d in range(1, 8)}
    profiles.update({f"2025-06-{d:02d}": day([3, 4]) for d in range(8, 11)})
    cfg = DriftConfig.from_params({"last_days": 3})
    weather = table_drift(profiles, dataset, "rentals", pd.Timestamp("2025-06-07").date(), cfg)
    weather = weather["columns"]["weather"]
    assert weather["metric"] == "js_distance" and weather["drifted"], weather
