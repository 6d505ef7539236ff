"""The dataset config: what it holds, and one clear message for each way it can be wrong."""

from __future__ import annotations

import copy
import importlib

import numpy as np
import pandas as pd
import pytest
import yaml

from stages.lib.dataset import (
    DatasetConfigError,
    dataset_from_params,
    evaluate_expression,
    expression_columns,
    parse_expression,
)

SHOP = "conf/dataset/shop.yaml"


def test_shop_config_holds_tables_checks_label_and_attribute_source(shop_params):
    ds = dataset_from_params(shop_params["dataset"])
    events = ds.events
    assert (events.name, events.key, events.timestamp) == ("events", "event_id", "event_time")
    assert (events.partition, events.format, events.timezone) == ("date", "parquet", "UTC")
    assert events.column("amount").min == 0 and not events.column("event_id").unique
    assert ds.label.name == "churn" and ds.label.horizon_days == 21
    assert ds.label.lookback_days == 28
    assert ds.attribute_table.name == "customers" and ds.event_type_column == "event_type"
    assert ds.entity_features.attributes == ("country", "plan", "channel", "monthly_price",
                                             "signup_date")  # fmt: skip


def _broken(shop_params, edit) -> str:
    raw = copy.deepcopy(shop_params["dataset"])
    edit(raw)
    with pytest.raises(DatasetConfigError) as info:
        dataset_from_params(raw)
    message = str(info.value)
    assert message.startswith(f"{SHOP}: ") and "\n" not in message
    return message


def _set(path: str, value):
    def edit(raw):
        *parents, last = path.split(".")
        node = raw
        for part in parents:
            node = node[part]
        node[last] = value

    return edit


E = "tables.events"
C = "tables.events.columns"
BAD = [
    (f"{C}.amount.type", "float", f"{C}.amount.type: expected one of"),
    (f"{E}.role", "facts", f"{E}.role: expected one of ('events', 'entities'), got 'facts'"),
    (f"{E}.key", "id", f"{E}.key: expected a column of table 'events'"),
    (f"{E}.timestamp", "amount", "a column of type timestamp or date, 'amount' is float64"),
    (f"{E}.format", "xlsx", f"{E}.format: expected one of ('parquet', 'csv')"),
    (f"{E}.timezone", "Mars/Olympus", f"{E}.timezone: expected an IANA time zone"),
    (f"{E}.partition", "da te", f"{E}.partition: expected a name"),
    (f"{C}.amount.maximum", 5, f"{C}.amount.maximum: expected a known key"),
    (f"{C}.event_type.min", 0, "a range only on int64/float64 columns, not string"),
    (f"{C}.amount.allowed", [1], "allowed values only on string columns"),
    (f"{C}.event_type.pattern", "([a-z", f"{C}.event_type.pattern: expected a regular expr"),
    (f"{C}.amount.min", "zero", f"{C}.amount.min: expected a number, got 'zero'"),
    (f"{E}.derived", {"net": "amount * rate"}, f"{E}.derived.net: expected an expression over"),
    (f"{E}.derived", {"net": "amount ** 2"}, "expression: 'amount ** 2' is not allowed"),
    (f"{E}.derived", {"net": "__import__('os')"}, "'__import__('os')' is not allowed"),
    (f"{E}.derived", {"net": "amount *"}, f"{E}.derived.net: expected an arithmetic expression"),
    (f"{E}.derived", {"amount": "amount * 2"}, "derived.amount: expected a new column name"),
    ("entity_features.categorical", ["colour"], "categorical: expected a column of table 'cust"),
    ("entity_features.table", "orders", "entity_features.table: expected a table of the"),
    ("entity_features.numeric", ["plan"], "numeric: expected a column of type int64 or float64"),
    ("activity_types", ["login"], "activity_types: expected event types allowed in events.event"),
    ("event_type_column", "kind", "event_type_column: expected a column of table 'events'"),
    ("amount_column", "event_type", "amount_column: expected a column of type int64 or float64"),
    ("label.horizon_days", 0, "label.horizon_days: expected a whole number of days >= 1, got 0"),
    ("label", {"name": "churn", "horizon_days": 21}, "label.lookback_days: expected a value"),
    ("entity_key", "user_id", f"{C}: expected a column 'user_id'"),
    ("colour", "green", "colour: expected a known key"),
]


@pytest.mark.parametrize(("path", "value", "expected"), BAD)
def test_bad_config_gives_one_message_naming_file_key_and_expectation(
    shop_params, path, value, expected
):
    assert expected in _broken(shop_params, _set(path, value))


def test_tables_need_one_events_table_and_at_most_one_entities_table(shop_params):
    message = _broken(shop_params, _set("tables.customers.role", "events"))
    assert "tables: expected one table with role 'events'" in message


def test_a_dataset_without_entities_reads_attributes_from_events(shop_params):
    raw = copy.deepcopy(shop_params["dataset"])
    del raw["tables"]["customers"]
    raw["entity_features"] = {"categorical": ["event_type"], "numeric": ["amount"]}
    ds = dataset_from_params(raw)
    assert ds.table_by_role("entities") is None
    assert ds.attribute_table.name == "events"


def test_expressions_are_parsed_not_evaluated_by_python():
    assert expression_columns("quantity * (unit_price - 0.5) / -2") == {"quantity", "unit_price"}
    for bad in ("open('x')", "a.b", "a if b else c", "[a]", "a < b", "'text'", "lambda: 1"):
        with pytest.raises(ValueError, match=r"not allowed|not an expression"):
            parse_expression(bad)


def test_expressions_evaluate_with_nulls_and_division_by_zero_as_null():
    frame = pd.DataFrame(
        {"q": pd.array([2, None, 3, 4], dtype="Int64"), "p": [1.5, 2.0, np.nan, 0.0]}
    )
    out = evaluate_expression("q * p + 1", frame)
    assert str(out.dtype) == "Float64"
    assert out.tolist()[0] == 4.0 and out.isna().tolist() == [False, True, True, False]
    ratio = evaluate_expression("q / p", frame)
    assert ratio.isna().tolist() == [False, True, True, True]
    assert evaluate_expression("-q + 10", frame).tolist()[3] == 6.0


@pytest.mark.parametrize("stage", ["validate", "prepare", "features", "profiles"])
def test_stages_report_a_bad_dataset_in_one_line_and_exit_2(tmp_path, shop_params, stage, capsys):
    params = copy.deepcopy(shop_params)
    params["dataset"]["tables"]["events"]["columns"]["amount"]["type"] = "money"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    (tmp_path / "in").mkdir()
    args = [str(tmp_path / "in"), str(tmp_path / "out")]
    args += [str(tmp_path / "m.json")] if stage == "validate" else []
    main = importlib.import_module(f"stages.{stage}").main
    assert main([*args, "--params", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"{stage}: {SHOP}: tables.events.columns.amount.type: expected one of "
        "('int64', 'float64', 'string', 'bool', 'date', 'timestamp'), got 'money'"
    )


def test_a_date_in_arithmetic_is_its_local_midnight_and_its_parts_its_own() -> None:
    """A claim filed at 08:00:52 in Madrid (07:00:52 UTC, as validate stores it) on its accident
    day is 8 hours after that day began, not 7 (a date read as UTC midnight): in summer a
    claim filed at 02:30 would otherwise be negative."""
    frame = pd.DataFrame(
        {
            "filed_at": pd.to_datetime(["2023-03-01 07:00:52", "2023-07-01 00:30:00", None]),
            "accident_date": pd.to_datetime(["2023-03-01", "2023-07-01", "2023-07-01"]),
        }
    )
    zones, dates = {"filed_at": "Europe/Madrid"}, {"accident_date": "Europe/Madrid"}
    hours = evaluate_expression("(filed_at - accident_date) / 3600", frame, zones, dates)
    assert hours.round(4).tolist()[:2] == [8.0144, 2.5] and hours.isna().tolist()[2]
    assert evaluate_expression("weekday(accident_date)", frame, zones, dates).tolist() == [
        2.0, 5.0, 5.0
    ]  # fmt: skip
    # without its zone a date is UTC midnight, as before
    assert evaluate_expression("(filed_at - accident_date) / 3600", frame).round(2)[1] == 0.5
