"""Request and response models generated from a model card; the wire form of a request."""

from __future__ import annotations

import copy
import json
import math
import pickle
from typing import Any

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError

from serve.schema import (
    ApiModels,
    WireBatch,
    accepted_range,
    api_models,
    client_errors,
    schema_from_card,
)

CARD: dict[str, Any] = {
    "features": {
        "entity_key": "customer_id",
        "time": "snapshot_date",
        "order": ["tenure_days", "activity_trend", "plan", "country"],
        "numeric": [
            {"name": "tenure_days", "type": "float64", "min": 3.0, "max": 400.0},
            {"name": "activity_trend", "type": "float64", "min": -2.0, "max": 3.0},
        ],
        "categorical": [
            {"name": "plan", "type": "string", "allowed": ["basic", "premium"], "observed": []},
            {"name": "country", "type": "string", "allowed": None, "observed": ["DE", "FR"]},
        ],
    },
    "label": {"name": "churn"},
}


def card(**features: Any) -> dict[str, Any]:
    out = copy.deepcopy(CARD)
    out["features"].update(features)
    return out


def record(**overrides: Any) -> dict[str, Any]:
    base = {
        "customer_id": 7,
        "tenure_days": 30.0,
        "activity_trend": -1.0,
        "plan": "basic",
        "country": "FR",
    }
    return {**base, **overrides}


@pytest.fixture(scope="module")
def models() -> ApiModels:
    return api_models(schema_from_card(CARD, range_margin=1.0), 3)


def parse(models: ApiModels, body: Any) -> WireBatch:
    return models.parse(json.dumps(body).encode())


def errors(models: ApiModels, body: Any) -> list[dict[str, Any]]:
    with pytest.raises(ValidationError) as info:
        parse(models, body)
    return client_errors([{**e, "loc": ("body", *e["loc"])} for e in info.value.errors()], 20)


def test_accepted_range_widens_by_the_scale_and_keeps_non_negative_features_non_negative() -> None:
    assert accepted_range(3.0, 400.0, 1.0) == (0.0, 800.0)  # scale 400 (its magnitude)
    assert accepted_range(-2.0, 3.0, 1.0) == (-7.0, 8.0)  # scale 5 (its span)
    assert accepted_range(0.0, 0.0, 0.5) == (0.0, 0.5)  # never-varying: scale 1
    assert accepted_range(0.0, 10.0, None) == (None, None)
    assert accepted_range(None, None, 1.0) == (None, None)  # never observed in training
    # a temperature in °F trained on a mild year, declared `min: -40`: below 0 is a reading
    assert accepted_range(3.0, 96.0, 0.5, declared_min=-40.0) == (-45.0, 144.0)
    assert accepted_range(3.0, 96.0, 0.5, declared_min=0.0) == (0.0, 144.0)


def test_schema_reads_features_allowed_values_and_ranges_from_the_card() -> None:
    schema = schema_from_card(CARD, range_margin=1.0)
    assert schema.features == ["tenure_days", "activity_trend", "plan", "country"]
    assert (schema.entity_key, schema.label) == ("customer_id", "churn")
    tenure = schema.numeric[0]
    assert (tenure.train_min, tenure.train_max, tenure.minimum, tenure.maximum) == (
        3.0,
        400.0,
        0.0,
        800.0,
    )
    # allowed values where the dataset config lists them, else those seen in training
    assert [c.allowed for c in schema.categorical] == [("basic", "premium"), ("DE", "FR")]
    assert schema.feature_schema().categories == {
        "plan": ("basic", "premium"),
        "country": ("DE", "FR"),
    }


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (card(entity_key=None), "features.entity_key"),
        (card(numeric="x"), "features.numeric must be a list"),
        (card(numeric=[{"min": 1}]), r"features.numeric\[0\] lacks a 'name'"),
        (card(numeric=[{"name": "a", "min": "1", "max": 2}]), r"numeric\[0\] \(a\).min is '1'"),
        (card(numeric=[{"name": "a", "min": 3, "max": 2}]), "min 3.0 > max 2.0"),
        (card(categorical=[{"name": "plan", "allowed": None, "observed": []}]), "no allowed"),
        (card(order=["plan"]), "features.order"),
        (card(numeric=[{"name": "score", "min": 0, "max": 1}]), "clashes"),
        (card(numeric=[{"name": "customer_id", "min": 0, "max": 1}]), "clashes"),
        ({"label": {"name": "churn"}}, "no 'features' section"),
        ({**CARD, "label": {}}, "label.name"),
    ],
)
def test_a_broken_card_is_refused_naming_the_key(broken: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        schema_from_card(broken, range_margin=1.0)


def test_one_record_and_a_batch_both_become_columns(models: ApiModels) -> None:
    one = pickle.loads(pickle.dumps(parse(models, record(activity_trend=None))))
    assert isinstance(one, WireBatch)
    assert one.keys == [7]
    np.testing.assert_array_equal(one.numeric, [[30.0, np.nan]])
    assert one.categorical == [("basic",), ("FR",)]
    assert one.received > 0
    body = {"records": [record(), record(customer_id="c-2", plan=None, tenure_days=5)]}
    batch = parse(models, body)
    assert batch.keys == [7, "c-2"]
    assert batch.numeric.dtype == np.float64 and batch.numeric.shape == (2, 2)
    assert batch.categorical == [("basic", None), ("FR", "FR")]


@pytest.mark.parametrize(
    ("body", "loc", "expectation"),
    [
        (record(tenure_days="30"), ["body", "tenure_days"], "valid number"),
        (record(tenure_days=True), ["body", "tenure_days"], "valid number"),
        (record(tenure_days=801), ["body", "tenure_days"], "less than or equal to 800"),
        (record(tenure_days=-1), ["body", "tenure_days"], "greater than or equal to 0"),
        (record(activity_trend=-7.5), ["body", "activity_trend"], "greater than or equal to -7"),
        (record(tenure_days=math.inf), ["body", "tenure_days"], "finite number"),
        (record(plan="gold"), ["body", "plan"], "'basic' or 'premium'"),
        (record(country="IT"), ["body", "country"], "'DE' or 'FR'"),
        (record(plan=1), ["body", "plan"], "'basic' or 'premium'"),
        (record(customer_id=True), ["body", "customer_id"], "integer or a string"),
        (record(customer_id=""), ["body", "customer_id"], "1 to 256 characters"),
        (record(customer_id=[1]), ["body", "customer_id"], "integer or a string"),
        ({k: v for k, v in record().items() if k != "plan"}, ["body", "plan"], "Field required"),
        (record(snapshot_date="2026-01-01"), ["body", "snapshot_date"], "Extra inputs"),
        ({"records": []}, ["body", "records"], "at least 1 item"),
        ({"records": [record()] * 4}, ["body", "records"], "at most 3 items"),
        ({"records": [record(), record(plan="x")]}, ["body", "records", 1, "plan"], "'basic'"),
        ({"records": [1]}, ["body", "records", 0], "an object"),
        ({"records": record()}, ["body", "records"], "valid array"),
        ({"records": [record()], "extra": 1}, ["body", "extra"], "Extra inputs"),
        ([record()], ["body"], "an object"),
    ],
)
def test_bad_input_names_the_field_and_the_expectation(
    models: ApiModels, body: Any, loc: list, expectation: str
) -> None:
    found = errors(models, body)
    assert any(e["loc"] == loc and expectation in e["msg"] for e in found), found


def test_nulls_are_missing_values_and_json_integers_are_numbers(models: ApiModels) -> None:
    body = record(tenure_days=12, activity_trend=None, plan=None, country=None)
    wire = parse(models, body)
    np.testing.assert_array_equal(wire.numeric, [[12.0, np.nan]])
    assert wire.categorical == [(None,), (None,)]


def test_range_check_off_accepts_any_finite_number() -> None:
    models = api_models(schema_from_card(CARD, range_margin=None), 3)
    parse(models, record(tenure_days=1e12, activity_trend=-1e12))
    with pytest.raises(ValidationError):
        parse(models, record(tenure_days=math.nan))


def test_the_datasets_declared_range_caps_what_the_server_accepts() -> None:
    # a share declared in [0, 1] in the dataset's config: the training range widened by the
    # margin would take 1.5, which validate quarantines; the server must not score it
    declared = card(
        numeric=[
            {"name": "tenure_days", "type": "float64", "min": 3.0, "max": 400.0,
             "declared_min": 0.0, "declared_max": 500.0},
            {"name": "activity_trend", "type": "float64", "min": 0.1, "max": 0.9,
             "declared_max": 1.0},
        ]
    )  # fmt: skip
    schema = schema_from_card(declared, range_margin=1.0)
    bounds = {f.name: (f.minimum, f.maximum) for f in schema.numeric}
    assert bounds == {"tenure_days": (0.0, 500.0), "activity_trend": (0.0, 1.0)}
    models = api_models(schema, 3)
    parse(models, record(tenure_days=500.0, activity_trend=1.0))
    for bad in (record(activity_trend=1.5), record(tenure_days=500.5)):
        with pytest.raises(ValidationError):
            parse(models, bad)
    # the training-range check off: the declared range still holds
    off = api_models(schema_from_card(declared, range_margin=None), 3)
    parse(off, record(activity_trend=-40.0))
    with pytest.raises(ValidationError):
        parse(off, record(activity_trend=1.5))


def test_the_documented_union_agrees_with_the_parser(models: ApiModels) -> None:
    adapter = TypeAdapter(models.request)
    for body in (record(), {"records": [record(), record(plan=None)]}):
        adapter.validate_python(body)
        parse(models, body)
    for body in (record(plan="gold"), {"records": []}, [record()]):
        with pytest.raises(ValidationError):
            adapter.validate_python(body)
        with pytest.raises(ValidationError):
            parse(models, body)


def test_client_errors_are_capped_and_never_echo_the_input() -> None:
    raw = [
        {"loc": ("body", "record", f"f{i}"), "msg": "m", "type": "t", "input": "secret"}
        for i in range(30)
    ]
    out = client_errors(raw, 20)
    assert len(out) == 20
    assert out[0] == {"loc": ["body", "f0"], "msg": "m", "type": "t"}
    # the last says what was left out: 30 problems, 19 listed, 11 more
    assert out[-1]["type"] == "too_many_errors" and out[-1]["msg"].startswith("11 more problem")
    assert len(client_errors(raw[:20], 20)) == 20 and client_errors(raw[:20], 20)[-1]["msg"] == "m"


def test_response_model_names_the_key_and_the_label() -> None:
    models = api_models(schema_from_card(CARD, range_margin=1.0), 3)
    ok = {
        "request_id": "r",
        "model": {"name": "m", "version": "v"},
        "predictions": [{"customer_id": 7, "score": 0.25, "churn": False}],
    }
    parsed = models.response.model_validate(ok)
    assert parsed.model_dump(by_alias=True) == ok
    with pytest.raises(ValidationError):
        models.response.model_validate({**ok, "predictions": [{"customer_id": 7, "score": 2.0}]})


def test_a_surrogate_key_is_optional_and_a_keyless_record_gets_its_position() -> None:
    surrogate = card(entity_key="row_key", surrogate_key=True)
    schema = schema_from_card(surrogate, range_margin=1.0)
    assert schema.surrogate_key and schema.describe()["entity_key_required"] is False
    models = api_models(schema, 3)
    keyless = {k: v for k, v in record().items() if k != "customer_id"}
    assert parse(models, keyless).keys == ["#0"]
    body = {"records": [keyless, {**keyless, "row_key": "9f0c3b2a1d4e5f60"}, keyless]}
    # a key the client sends is echoed as sent; the others answer by their position
    assert parse(models, body).keys == ["#0", "9f0c3b2a1d4e5f60", "#2"]
    assert parse(models, {**keyless, "row_key": None}).keys == ["#0"]
    assert "row_key" not in TypeAdapter(models.record).json_schema()["required"]
    found = errors(models, {**keyless, "row_key": True})
    assert found[0]["loc"] == ["body", "row_key"] and "integer or a string" in found[0]["msg"]


def test_a_natural_key_stays_required(models: ApiModels) -> None:
    keyless = {k: v for k, v in record().items() if k != "customer_id"}
    found = errors(models, keyless)
    assert found == [{"loc": ["body", "customer_id"], "msg": "Field required", "type": "missing"}]
    with pytest.raises(ValueError, match=r"features\.surrogate_key is 'yes'"):
        schema_from_card(card(surrogate_key="yes"), range_margin=1.0)


def test_a_string_key_is_a_string_matching_its_declared_pattern() -> None:
    """A key declared `{type: string, pattern: 'S[0-9]{6}'}` (the card's entity_key_type and
    entity_key_pattern): 123 or "S1" could never join the data by key, so they are 422."""
    declared = card(entity_key_type="string", entity_key_pattern="S[0-9]{6}")
    models = api_models(schema_from_card(declared, range_margin=1.0), 3)
    assert parse(models, record(customer_id="S000123")).keys == ["S000123"]
    number = errors(models, record(customer_id=123))
    assert number[0]["loc"] == ["body", "customer_id"] and "a string" in number[0]["msg"]
    off = errors(models, record(customer_id="S1"))
    assert "match the entity key's pattern S[0-9]{6}" in off[0]["msg"]
    schema = TypeAdapter(models.record).json_schema()["properties"]["customer_id"]
    assert schema["pattern"] == "S[0-9]{6}"
    # an int64 key takes an integer or its digits, echoed as sent; "abc", "12 " or a number
    # past int64 could never join the data by key
    ints = api_models(schema_from_card(card(entity_key_type="int64"), range_margin=1.0), 3)
    assert parse(ints, record(customer_id=9000001)).keys == [9000001]
    assert parse(ints, record(customer_id="-9000001")).keys == ["-9000001"]
    for bad in ("abc", "9000001 ", 12345678901234567890, "12345678901234567890", 1.5, True):
        refused = errors(ints, record(customer_id=bad))
        assert refused[0]["loc"] == ["body", "customer_id"] and "int64" in refused[0]["msg"]
    # a timestamp key (an hourly series keyed by its hour) takes an ISO time as text, echoed
    # as sent: "not a time", 12345 or "27/07/2024 08.00.00" could never join the data by key
    times = api_models(schema_from_card(card(entity_key_type="timestamp"), range_margin=1.0), 3)
    for good in ("2024-11-03T07:00:00", "2024-11-03T08:00:00+01:00", "2024-11-03 07:00"):
        assert parse(times, record(customer_id=good)).keys == [good]
    for bad in ("not a time", 12345, "27/07/2024 08.00.00", "", True):
        refused = errors(times, record(customer_id=bad))
        assert refused[0]["loc"] == ["body", "customer_id"] and "ISO 8601" in refused[0]["msg"]
    # a card from before the check takes either, as before
    old = card()
    old["features"].pop("entity_key_type", None)
    either = api_models(schema_from_card(old, range_margin=1.0), 3)
    assert parse(either, record(customer_id="c-2")).keys == ["c-2"]
    with pytest.raises(ValueError, match="entity_key_pattern"):
        schema_from_card(card(entity_key_type="string", entity_key_pattern="("), range_margin=1.0)


def test_a_columns_missing_codes_are_read_as_null_as_validate_reads_them() -> None:
    """The card's missing_codes (the dataset's `missing: [-200]`): a client sending its
    source's rows as they are gets -200 read as null, not a 422 for the range, nor -200
    scored as a reading; "?" likewise for a string category."""
    numeric = copy.deepcopy(CARD["features"]["numeric"])
    numeric[1]["missing_codes"] = [-200]
    categorical = copy.deepcopy(CARD["features"]["categorical"])
    categorical[1]["missing_codes"] = ["?"]
    coded = card(numeric=numeric, categorical=categorical)
    models = api_models(schema_from_card(coded, range_margin=1.0), 3)
    wire = parse(models, record(activity_trend=-200, country="?"))
    assert math.isnan(wire.numeric[0][1]) and wire.categorical[1] == (None,)
    assert parse(models, record(activity_trend=-200.0)).numeric[0][1] != -200.0
    # without the codes: -200 is out of range, "?" no country
    plain = api_models(schema_from_card(card(), range_margin=1.0), 3)
    assert errors(plain, record(activity_trend=-200))[0]["loc"] == ["body", "activity_trend"]
    assert errors(plain, record(country="?"))[0]["loc"] == ["body", "country"]
    # a CSV's text for none in a numeric column, and an int-coded category's codes
    numeric[0]["missing_codes"] = ["NULL", -1]
    categorical[0].update(type="int64", allowed=[1, 2], missing_codes=["NA", 0])
    texts = api_models(
        schema_from_card(card(numeric=numeric, categorical=categorical), range_margin=1.0), 3
    )
    for tenure in ("NULL", -1, None):
        assert math.isnan(parse(texts, record(tenure_days=tenure, plan=1)).numeric[0][0])
    for plan in ("NA", 0, None):
        assert parse(texts, record(plan=plan)).categorical[0] == (None,)
    assert errors(texts, record(tenure_days="NA", plan=1))[0]["loc"] == ["body", "tenure_days"]
    assert errors(texts, record(plan="NULL"))[0]["loc"] == ["body", "plan"]
    with pytest.raises(ValueError, match=r"missing_codes is 'x', expected a list"):
        bad = copy.deepcopy(numeric)
        bad[1]["missing_codes"] = "x"
        schema_from_card(card(numeric=bad), range_margin=1.0)


def test_a_feature_of_a_column_declared_not_nullable_refuses_null() -> None:
    """Validate quarantines a null in a `nullable: false` column: the server refuses it (422
    naming the field), a missing-value code too; other features still take null."""
    numeric = copy.deepcopy(CARD["features"]["numeric"])
    numeric[0]["nullable"] = False
    numeric[1]["missing_codes"] = [-200]
    numeric[1]["nullable"] = False
    categorical = copy.deepcopy(CARD["features"]["categorical"])
    categorical[0]["nullable"] = False
    models = api_models(
        schema_from_card(card(numeric=numeric, categorical=categorical), range_margin=1.0), 3
    )
    names = [numeric[0]["name"], numeric[1]["name"], categorical[0]["name"]]
    for name, value in [(names[0], None), (names[1], None), (names[1], -200), (names[2], None)]:
        found = errors(models, record(**{name: value}))
        assert [e["loc"] for e in found] == [["body", name]], (name, value)
        assert "declared nullable: false" in found[0]["msg"]
    assert parse(models, record(**{categorical[1]["name"]: None})).categorical[1] == (None,)
    with pytest.raises(ValueError, match=r"nullable is 'no', expected a bool"):
        numeric[0]["nullable"] = "no"
        schema_from_card(card(numeric=numeric), range_margin=1.0)


def test_a_category_of_many_values_is_refused_by_their_count_not_their_list() -> None:
    """30,000 card ids as a category: a 422 (and the OpenAPI document) that listed them all
    weighed 0.4 MB; it gives their count and five of them. Known values, null and missing
    codes read as for any category; a few values are still listed."""
    cards = [f"card_{i:06d}" for i in range(30_000)]
    categorical = copy.deepcopy(CARD["features"]["categorical"])
    categorical[1].update(allowed=cards, missing_codes=["?"])
    coded = copy.deepcopy(categorical)
    coded[0].update(type="int64", allowed=list(range(1000, 1100)))
    models = api_models(schema_from_card(card(categorical=categorical), range_margin=1.0), 3)
    assert parse(models, record(country="card_000042")).categorical[1] == ("card_000042",)
    assert parse(models, record(country="?")).categorical[1] == (None,)
    assert parse(models, record(country=None)).categorical[1] == (None,)
    [found] = errors(models, record(country="card_9"))
    assert found["loc"] == ["body", "country"] and len(found["msg"]) < 300
    assert "one of the 30000 values the model knows (e.g. 'card_000000'" in found["msg"]
    assert errors(models, record(country=7))[0]["msg"] == "Input should be a valid string"
    assert len(json.dumps(TypeAdapter(models.record).json_schema())) < 5000
    many_codes = api_models(schema_from_card(card(categorical=coded), range_margin=1.0), 3)
    [found] = errors(many_codes, record(plan=999, country="card_000001"))
    assert "one of the 100 values the model knows (e.g. 1000, 1001" in found["msg"]
    # a few values: listed as before
    few = api_models(schema_from_card(card(), range_margin=1.0), 3)
    assert "'DE'" in errors(few, record(country="XX"))[0]["msg"]


def test_an_int64_columns_feature_takes_whole_numbers_only() -> None:
    """`passenger_count` declared int64 (the card's `integer`): 1.5 is what validate
    quarantines, so a 422; 2 and 2.0 are whole numbers."""
    numeric = copy.deepcopy(CARD["features"]["numeric"])
    numeric[0]["integer"] = True
    models = api_models(schema_from_card(card(numeric=numeric), range_margin=1.0), 3)
    assert parse(models, record(tenure_days=2)).numeric[0][0] == 2.0
    assert parse(models, record(tenure_days=2.0)).numeric[0][0] == 2.0
    found = errors(models, record(tenure_days=1.5))
    assert found[0]["loc"] == ["body", "tenure_days"] and "whole number" in found[0]["msg"]
    assert parse(api_models(schema_from_card(card(), range_margin=1.0), 3),
                 record(tenure_days=1.5)).numeric[0][0] == 1.5  # fmt: skip
